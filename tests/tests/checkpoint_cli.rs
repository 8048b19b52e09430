//! Checksummed checkpoints as a user meets them: a flipped bit in the newest checkpoint is
//! found on resume (which falls back past it, or refuses it when picked by name) and by `ddpm
//! checkpoint verify`; `ddpm sample`, `ddpm export` and `train --init-from` refuse weights that
//! do not match their digest; a checkpoint written before digests existed still loads, with a
//! note; a SIGTERM while a checkpoint is written in the background leaves it complete.

use std::path::Path;
use std::time::Duration;

use e2e::{
    complete_checkpoints, kill, path_arg, run, run_err, run_ok, sample_cpu, spawn, stderr_of,
    stdout_of, synthetic_cifar, tiny_train_args, wait_exit, wait_for,
};

/// The tiny run of `train_cli`: a checkpoint every 2 steps, to `max_steps`, then `extra`.
fn train_args(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--threads", "1", "--set", "checkpoint_every=2"];
    args.extend_from_slice(extra);
    tiny_train_args(data, run_dir, &args)
}

/// [`train_args`] for a run that only a signal ends, keeping its last 10 checkpoints.
fn endless_train_args(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--max-steps",
        "100000",
        "--epochs",
        "100000",
        "--set",
        "keep_last=10",
    ];
    args.extend_from_slice(extra);
    train_args(data, run_dir, &args)
}

/// Flips the lowest bit of the mantissa of the file's last float: a finite weight that
/// safetensors reads without complaint.
fn flip_a_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 4;
    bytes[at] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

fn verify(run_dir: &Path) -> std::process::Output {
    run(&["checkpoint", "verify", path_arg(run_dir)])
}

#[test]
fn a_flipped_bit_in_the_newest_model_is_named_by_verify_and_resume_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    run_ok(&train_args(&data, &run_dir, &["--max-steps", "4"]));
    let out = verify(&run_dir);
    let stdout = stdout_of(&out);
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    assert_eq!(stdout.matches("(3 files match)").count(), 2, "{stdout}");

    let newest = run_dir.join("checkpoints/step-00000004/model.safetensors");
    flip_a_bit(&newest);
    let out = verify(&run_dir);
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let named = format!("{}: digest mismatch", newest.display());
    assert!(stdout.contains(&named), "`{named}` not in: {stdout}");
    assert!(stdout.contains("ok          ") && stdout.contains("step-00000002"));
    assert!(stderr.contains("1 of 2 checkpoints"), "{stderr}");
    // One checkpoint, given its directory, is checked alone.
    let out = verify(&run_dir.join("checkpoints/step-00000002"));
    let stdout = stdout_of(&out);
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    assert_eq!(stdout.matches("(3 files match)").count(), 1, "{stdout}");
    let out = verify(newest.parent().unwrap());
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&named), "`{named}` not in: {stdout}");
    assert!(stderr.contains("1 of 1 checkpoints"), "{stderr}");

    // Picked by name, the damaged checkpoint is refused.
    let stderr = run_err(&train_args(
        &data,
        &run_dir,
        &["--resume-from", "step-00000004", "--max-steps", "6"],
    ));
    assert!(stderr.contains(&named), "`{named}` not in: {stderr}");
    // Picked as the newest, it is passed over with a warning naming the file.
    let out = run(&train_args(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "6"],
    ));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: skipped checkpoint")
            && stderr.contains(&named)
            && stderr.contains("from step 2"),
        "{stderr}"
    );
    assert!(!stderr.contains("unverified"), "{stderr}");
}

/// Every command that loads a checkpoint's weights checks them against their digest first: a
/// flipped bit in the EMA weights stops `ddpm sample`, `ddpm export` and `train --init-from`,
/// each naming the file and writing nothing; the checkpoint's live weights, which are whole,
/// still sample.
#[test]
fn sample_export_and_init_from_refuse_weights_that_do_not_match_their_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    run_ok(&train_args(&data, &run_dir, &["--max-steps", "2"]));
    let ema = run_dir.join("checkpoints/step-00000002/ema.safetensors");
    flip_a_bit(&ema);
    let named = format!("{}: digest mismatch", ema.display());

    let grid = dir.path().join("grid.png");
    let sample_args = [
        "--threads",
        "1",
        "-n",
        "1",
        "--sampler",
        "ddim",
        "--steps",
        "2",
    ];
    let mut args = sample_args.to_vec();
    args.extend(["--grid", path_arg(&grid)]);
    let out = sample_cpu(&run_dir, &args);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "sampled damaged weights: {stderr}");
    assert!(stderr.contains(&named), "`{named}` not in: {stderr}");
    assert!(!grid.exists(), "an image was written");
    args.extend(["--weights", "model"]);
    let out = sample_cpu(&run_dir, &args);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(grid.exists());

    let folder = dir.path().join("export");
    let out = run(&[
        "export",
        "--checkpoint",
        path_arg(&run_dir),
        "--diffusers",
        path_arg(&folder),
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "exported damaged weights: {stderr}");
    assert!(stderr.contains(&named), "`{named}` not in: {stderr}");
    assert!(
        !folder.join("unet").exists(),
        "the export wrote a network folder"
    );

    let tuned = dir.path().join("tuned");
    let out = run(&train_args(
        &data,
        &tuned,
        &["--init-from", path_arg(&run_dir), "--max-steps", "1"],
    ));
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "fine-tuned from damaged weights: {stderr}"
    );
    assert!(stderr.contains(&named), "`{named}` not in: {stderr}");
    assert!(complete_checkpoints(&tuned).is_empty());
}

#[test]
fn a_checkpoint_without_digests_loads_with_a_note_and_verifies_as_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&train_args(&data, &run_dir, &["--max-steps", "2"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    // What the writer wrote before digests existed: the same state.json without them.
    let digests = e2e::drop_digests(&run_dir.join("checkpoints/step-00000002"));
    assert_eq!(digests.as_object().unwrap().len(), 3, "{digests}");

    let out = verify(&run_dir);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("unverified  "),
        "{}",
        stdout_of(&out)
    );
    let out = run(&train_args(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "4"],
    ));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: resumed from a checkpoint written before checkpoints had digests"),
        "{stderr}"
    );
    // The checkpoints it writes have them.
    let out = verify(&run_dir);
    assert!(
        stdout_of(&out).contains("(3 files match)"),
        "{}",
        stdout_of(&out)
    );
}

#[test]
fn verify_of_a_folder_without_checkpoints_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = verify(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no checkpoint under"),
        "{}",
        stderr_of(&out)
    );
}

/// Checkpoints are written off the training thread; a stop request waits for the write in
/// flight before it writes its own.
#[test]
fn sigterm_during_a_background_write_leaves_it_and_the_previous_one_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let args = endless_train_args(&data, &run_dir, &[]);
    // Each write pauses between its files, so the signal lands inside the second one.
    let mut child = spawn(&args, &[("DDPM_FAULT_CHECKPOINT_PAUSE_MS", "1500")]);
    let tmp = run_dir.join("checkpoints/step-00000004.tmp");
    wait_for(
        "the second checkpoint half-written",
        Duration::from_secs(180),
        || tmp.join("model.safetensors").exists(),
    );
    kill(child.id(), "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(120), "SIGTERM");
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted: checkpoint at step"),
        "{stderr}"
    );
    let complete = complete_checkpoints(&run_dir);
    assert_eq!(
        complete[..2],
        ["step-00000002", "step-00000004"],
        "{complete:?}"
    );
    assert!(!run_dir.join("checkpoints/step-00000004.tmp").exists());
    let out = verify(&run_dir);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(!stdout_of(&out).contains("BAD"), "{}", stdout_of(&out));
}

/// A stop request that comes while a step waits for the writer (the previous checkpoint is
/// still being written) lets the step's own write finish and stops: that step is not written a
/// second time, which would double the stop time.
#[test]
fn a_stop_while_a_step_waits_for_the_writer_writes_that_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let args = endless_train_args(&data, &run_dir, &["--set", "log_every=1"]);
    // Each write pauses 2.5 s between its files (about 5 s a write), so steps 5 and 6 finish
    // while step 4's is written, and step 6 then waits for it.
    let mut child = spawn(&args, &[("DDPM_FAULT_CHECKPOINT_PAUSE_MS", "2500")]);
    let metrics = run_dir.join("metrics.jsonl");
    let step_4 = run_dir.join("checkpoints/step-00000004");
    wait_for("step 6 logged", Duration::from_secs(240), || {
        std::fs::read_to_string(&metrics).is_ok_and(|t| t.contains("\"step\":6,"))
    });
    assert!(
        !step_4.exists(),
        "step 4's checkpoint was complete before step 6: the write was not slow enough"
    );
    std::thread::sleep(Duration::from_millis(300));
    kill(child.id(), "-TERM");
    let signalled = std::time::Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(120), "SIGTERM");
    let stop_time = signalled.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    eprintln!("stop time {:.1} s", stop_time.as_secs_f64());
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted: checkpoint at step 6 "),
        "{stderr}"
    );
    for step in ["step-00000004", "step-00000006"] {
        let reports = stderr
            .lines()
            .filter(|l| l.starts_with("checkpoint ") && l.trim_end().ends_with(step))
            .count();
        assert_eq!(reports, 1, "{step} reported {reports} times: {stderr}");
    }
    assert_eq!(
        complete_checkpoints(&run_dir),
        ["step-00000002", "step-00000004", "step-00000006"]
    );
    // The rest of step 4's write and step 6's (about 10 s here), not a third write.
    assert!(stop_time < Duration::from_secs(14), "{stop_time:?}");
}
