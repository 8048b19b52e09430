//! `ddpm train` as a user runs it: stop signals, crashes mid-checkpoint, the run-directory lock,
//! fresh runs into old directories, resume rules and fallbacks, a full disk, logs without a
//! terminal, bad flags.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    complete_checkpoints, ddpm, fill, kill, metric_lines, path_arg, run, run_ok, sample_cpu, spawn,
    stderr_of, synthetic_cifar, tiny_model, tiny_train_args, train_tiny, wait_exit, wait_for,
    Tmpfs,
};

/// Overrides that make the seed preset tiny: a 2-level SimpleUnet, batches of 8, no sampling,
/// a checkpoint every 2 steps.
fn tiny_args(data: &Path, run_dir: &Path) -> Vec<String> {
    args_with(data, run_dir, &[])
}

/// [`tiny_args`], then `extra`.
fn args_with(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--threads", "1", "--set", "checkpoint_every=2"];
    args.extend_from_slice(extra);
    tiny_train_args(data, run_dir, &args)
}

/// `ddpm sample` of a 2-image DDIM-2 grid from the run's newest complete checkpoint, which
/// must succeed.
fn sample_a_grid(run_dir: &Path, grid: &Path) {
    let args = [
        "--threads",
        "1",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "-n",
        "2",
    ];
    let sampled = sample_cpu(run_dir, &[&args[..], &["--grid", path_arg(grid)]].concat());
    assert!(sampled.status.success(), "{}", stderr_of(&sampled));
}

fn signal(child: &Child, sig: &str) {
    kill(child.id(), sig);
}

fn state_step(run_dir: &Path, name: &str) -> u64 {
    let text =
        std::fs::read_to_string(run_dir.join("checkpoints").join(name).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["step"].as_u64().unwrap()
}

/// Resuming proves a checkpoint loadable: weights, EMA and optimizer state all read back.
fn resume_for(data: &Path, run_dir: &Path, max_steps: u64) {
    let mut args = tiny_args(data, run_dir);
    args.extend([
        "--resume".into(),
        "--max-steps".into(),
        max_steps.to_string(),
    ]);
    let out = run(&args);
    assert!(out.status.success(), "resume failed: {}", stderr_of(&out));
    let names = complete_checkpoints(run_dir);
    assert_eq!(state_step(run_dir, names.last().unwrap()), max_steps);
}

/// Starts a long run, waits for its first checkpoint, sends `sig`, and checks that it exits 0
/// with a checkpoint that a resume loads.
fn stop_with(sig: &str, announced: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend([
        "--max-steps".into(),
        "100000".into(),
        "--epochs".into(),
        "100000".into(),
    ]);
    let mut child = spawn(&args, &[]);
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    signal(&child, sig);
    let status = wait_exit(&mut child, Duration::from_secs(60), sig);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{sig}: exit status {status}: {stderr}");
    assert!(
        stderr.contains(&format!("{announced}: finishing the current step")),
        "{sig}: not announced: {stderr}"
    );
    assert!(
        stderr.contains("interrupted: checkpoint at step"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--resume"),
        "{sig}: no hint to resume: {stderr}"
    );
    let names = complete_checkpoints(&run_dir);
    let interrupted_at = state_step(&run_dir, names.last().unwrap());
    assert!(interrupted_at >= 2);
    resume_for(&data, &run_dir, interrupted_at + 2);
}

#[test]
fn sigint_finishes_the_step_writes_a_checkpoint_and_exits_zero() {
    stop_with("-INT", "Ctrl-C (SIGINT)");
}

/// SLURM, Kubernetes and systemd stop jobs with SIGTERM; SLURM's `--signal=USR1@90` warns with
/// SIGUSR1; a closed terminal sends SIGHUP. Each one stops the run as Ctrl-C does.
#[test]
fn sigterm_sigusr1_and_sighup_checkpoint_and_exit_zero() {
    for (sig, name) in [
        ("-TERM", "SIGTERM"),
        ("-USR1", "SIGUSR1"),
        ("-HUP", "SIGHUP"),
    ] {
        if sig == "-HUP" && sighup_ignored_here() {
            hup_stays_ignored_under_nohup();
            continue;
        }
        stop_with(sig, name);
    }
}

/// Whether this process ignores SIGHUP (it runs under `nohup`): children inherit that, and
/// `ddpm train` then keeps it ignored by design.
fn sighup_ignored_here() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}

/// Under `nohup` a SIGHUP must not stop the run: it keeps training after the signal.
fn hup_stays_ignored_under_nohup() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend(["--max-steps".into(), "100000".into()]);
    let mut child = spawn(&args, &[]);
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    signal(&child, "-HUP");
    std::thread::sleep(Duration::from_secs(2));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        still_running,
        "SIGHUP stopped a run started under nohup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_signal_exits_at_once_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend([
        "--max-steps".into(),
        "100000".into(),
        "--epochs".into(),
        "100000".into(),
        "--set".into(),
        "checkpoint_every=100000".into(),
        "--set".into(),
        "log_every=1".into(),
    ]);
    // The interrupt's checkpoint pauses between its files, so the second signal lands inside it.
    let mut child = spawn(&args, &[("DDPM_FAULT_CHECKPOINT_PAUSE_MS", "3000")]);
    wait_for("the first metrics line", Duration::from_secs(120), || {
        std::fs::read_to_string(run_dir.join("metrics.jsonl")).is_ok_and(|t| !t.is_empty())
    });
    signal(&child, "-TERM");
    let checkpoints = run_dir.join("checkpoints");
    wait_for(
        "the interrupt's checkpoint to start",
        Duration::from_secs(60),
        || std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()),
    );
    // A second request, not the first delivered twice (`REPEAT_WINDOW`, 200 ms).
    std::thread::sleep(Duration::from_millis(400));
    signal(&child, "-TERM");
    let second = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(30), "the second SIGTERM");
    assert!(
        second.elapsed() < Duration::from_millis(2500),
        "the second signal waited for the checkpoint ({:?})",
        second.elapsed()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(
        stderr.contains("second SIGTERM: exiting now without a checkpoint"),
        "{stderr}"
    );
    assert!(complete_checkpoints(&run_dir).is_empty());
}

/// `timeout 2h ddpm train …` delivers its SIGTERM twice, microseconds apart (to the command,
/// then to its process group): that is one request, which checkpoints and exits 0.
#[test]
fn one_sigterm_delivered_twice_at_once_still_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend(["--max-steps".into(), "100000".into()]);
    args.extend(["--set".into(), "checkpoint_every=100000".into()]);
    let mut child = spawn(&args, &[]);
    wait_for("the first metrics line", Duration::from_secs(120), || {
        std::fs::read_to_string(run_dir.join("metrics.jsonl")).is_ok_and(|t| !t.is_empty())
    });
    // Sent twice 30 ms apart: near enough to be one request, far enough apart that the signal
    // thread has taken the first (two at once may merge into one wake-up and prove nothing).
    for pause in [30, 0] {
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(pause));
    }
    let status = wait_exit(&mut child, Duration::from_secs(60), "the SIGTERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("second SIGTERM"), "{stderr}");
    assert_eq!(complete_checkpoints(&run_dir).len(), 1, "{stderr}");
}

#[test]
fn kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend([
        "--max-steps".into(),
        "100000".into(),
        "--epochs".into(),
        "100000".into(),
    ]);
    // Each checkpoint pauses between its files, so the kill lands inside a write.
    let mut child = spawn(&args, &[("DDPM_FAULT_CHECKPOINT_PAUSE_MS", "1500")]);
    let tmp = run_dir.join("checkpoints").join("step-00000004.tmp");
    wait_for(
        "a half-written second checkpoint",
        Duration::from_secs(180),
        || tmp.join("model.safetensors").exists(),
    );
    signal(&child, "-9");
    child.wait().unwrap();
    assert!(
        tmp.exists(),
        "the partial checkpoint should be left as .tmp"
    );
    assert_eq!(complete_checkpoints(&run_dir), ["step-00000002"]);
    resume_for(&data, &run_dir, 3);
}

#[test]
fn bad_flags_and_config_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "optim.lrr=1"], "unknown config key `optim.lrr`"),
        (&["--set", "optim.lr=-1"], "optim.lr = -1"),
        (&["--preset", "nope"], "unknown preset `nope`"),
        (&["--batch-size", "0"], "batch_size = 0"),
        (&["--resume"], "no checkpoint under"),
    ];
    for (extra, want) in cases {
        let out = run(&args_with(&data, &run_dir, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(
            stderr.contains(want),
            "{extra:?}: expected `{want}` in: {stderr}"
        );
    }
    let config = dir.path().join("bad.json");
    std::fs::write(&config, r#"{"optim": {"beta3": 0.5}}"#).unwrap();
    let args = args_with(&data, &run_dir, &["--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run(&args).stderr).into_owned();
    assert!(
        stderr.contains("bad.json") && stderr.contains("optim.beta3"),
        "{stderr}"
    );
    let missing = run(&["train", "--offline", "--run-dir", run_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("cargo xtask fetch-cifar"), "{stderr}");
}

/// The steps of `metrics.jsonl`; every line must parse.
fn metric_steps(run_dir: &Path) -> Vec<u64> {
    metric_lines(run_dir)
        .iter()
        .map(|record| record["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_second_trainer_on_one_run_dir_fails_fast_and_leaves_the_first_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut first = spawn(
        &args_with(
            &data,
            &run_dir,
            &["--max-steps", "100000", "--epochs", "100000"],
        ),
        &[],
    );
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    let config_before = std::fs::read(run_dir.join("config.json")).unwrap();
    let pid = format!("PID {}", first.id());
    // A fresh start, a resume and an overwrite all meet the lock before they touch a file.
    for extra in [
        &["--max-steps", "5", "--lr", "5e-4"][..],
        &["--resume", "--max-steps", "100001"],
        &["--overwrite", "--max-steps", "5"],
    ] {
        let started = Instant::now();
        let out = run(&args_with(&data, &run_dir, extra));
        let stderr = stderr_of(&out);
        assert!(
            !out.status.success(),
            "{extra:?} ran beside the first trainer"
        );
        assert!(
            stderr.contains(&run_dir.display().to_string())
                && stderr.contains("is in use by another `ddpm train`")
                && stderr.contains(&pid),
            "{extra:?}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{extra:?} took {:?} to fail",
            started.elapsed()
        );
    }
    // Readers take no lock: sampling a locked run reads its newest complete checkpoint.
    let grid = dir.path().join("grid.png");
    sample_a_grid(&run_dir, &grid);
    assert!(grid.is_file());
    signal(&first, "-INT");
    let status = wait_exit(&mut first, Duration::from_secs(60), "SIGINT");
    assert!(status.success());
    assert_eq!(
        std::fs::read(run_dir.join("config.json")).unwrap(),
        config_before,
        "config.json was rewritten"
    );
    let steps = metric_steps(&run_dir);
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "metrics steps repeat: {steps:?}"
    );
}

#[test]
fn a_fresh_run_refuses_an_earlier_runs_files_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--max-steps", "4", "--set", "log_every=1"],
    ));
    assert!(out.status.success(), "{}", stderr_of(&out));
    // A run that died before its first checkpoint leaves config.json, metrics.jsonl and its
    // TensorBoard files only.
    std::fs::remove_dir_all(run_dir.join("checkpoints")).unwrap();
    std::fs::remove_file(run_dir.join("loss_curve.png")).ok();
    let metrics_before = std::fs::read(run_dir.join("metrics.jsonl")).unwrap();
    let out = run(&args_with(&data, &run_dir, &["--max-steps", "2"]));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "a fresh run appended to a dead one");
    assert!(
        stderr.contains("already holds a run (config.json, metrics.jsonl, tb)")
            && stderr.contains("--overwrite")
            && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(run_dir.join("metrics.jsonl")).unwrap(),
        metrics_before
    );
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--max-steps", "2", "--overwrite", "--set", "log_every=1"],
    ));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--overwrite: deleted config.json, metrics.jsonl, tb"));
    assert_eq!(metric_steps(&run_dir), [1, 2], "one run's curve only");
}

#[test]
fn resume_cuts_metrics_written_after_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    run_ok(&args_with(
        &data,
        &run_dir,
        &["--max-steps", "3", "--set", "log_every=1"],
    ));
    // As if the run had died after logging step 3 but before its checkpoint.
    std::fs::remove_dir_all(run_dir.join("checkpoints/step-00000003")).unwrap();
    assert_eq!(metric_steps(&run_dir), [1, 2, 3]);
    resume_for(&data, &run_dir, 4);
    assert_eq!(metric_steps(&run_dir), [1, 2, 3, 4]);
}

#[test]
fn resume_refuses_changes_to_what_the_run_learns_and_leaves_config_json_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    run_ok(&args_with(&data, &run_dir, &["--max-steps", "2"]));
    let config_path = run_dir.join("config.json");
    let before = std::fs::read(&config_path).unwrap();
    let wider = tiny_model(28)
        .replace("[8,16]", "[8,32]")
        .replace("[16,8]", "[32,8]");
    let wider_model = format!("model={wider}");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--set", "schedule.n_steps=1000"],
            &["`schedule.n_steps`", "the run has 300", "gives 1000"],
        ),
        (
            &["--batch-size", "4"],
            &["`batch_size`", "has 8", "gives 4"],
        ),
        (&["--set", "seed=5"], &["`seed`"]),
        (&["--set", &wider_model], &["`model.down_channels`"]),
        (
            &["--preset", "ddpm-cifar10"],
            &["--preset cannot be combined with --resume"],
        ),
    ];
    for (extra, wants) in cases {
        let mut args = tiny_args(&data, &run_dir);
        args.push("--resume".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run(&args);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "{extra:?} was accepted");
        for want in wants {
            assert!(
                stderr.contains(want),
                "{extra:?}: `{want}` not in: {stderr}"
            );
        }
        assert_eq!(std::fs::read(&config_path).unwrap(), before, "{extra:?}");
    }
    // Weights that do not fit the saved config: refused after the load, config.json untouched.
    let state_path = run_dir.join("checkpoints/step-00000002/state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(
        &state_path,
        state.replace("\"time_emb_dim\": 16", "\"time_emb_dim\": 32"),
    )
    .unwrap();
    // (Without `--set model=…`, which would itself be a change.)
    let mut args = args_with(
        &data,
        &run_dir,
        &["--resume-from", "step-00000002", "--max-steps", "3"],
    );
    let model_set = args.iter().position(|a| a.starts_with("model=")).unwrap();
    args.drain(model_set - 1..=model_set);
    let out = run(&args);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("do not fit"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&config_path).unwrap(), before);
    std::fs::write(&state_path, state).unwrap();
    // What may change does, and the command says so.
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "3", "--lr", "0.0005"],
    ));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resume changes max_steps: 2 -> 3")
            && stderr.contains("resume changes optim.lr: 0.001 -> 0.0005"),
        "{stderr}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(config["optim"]["lr"], 0.0005);
}

#[test]
fn a_corrupt_newest_checkpoint_resumes_from_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&args_with(&data, &run_dir, &["--max-steps", "4"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let newest = run_dir.join("checkpoints/step-00000004/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    // Picked explicitly, the bad checkpoint is an error naming the file.
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--resume-from", "step-00000004", "--max-steps", "6"],
    ));
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains(&newest.display().to_string()),
        "{}",
        stderr_of(&out)
    );
    // Picked automatically, it is skipped with a warning naming it.
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "6"],
    ));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: skipped checkpoint")
            && stderr.contains("step-00000004")
            && stderr.contains("from step 2"),
        "{stderr}"
    );
    assert_eq!(
        state_step(&run_dir, complete_checkpoints(&run_dir).last().unwrap()),
        6
    );
}

#[test]
fn messages_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&args_with(&data, &run_dir, &["--set", "optim.lr=abc"]));
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`optim.lr`") && stderr.contains("invalid type: string \"abc\""),
        "{stderr}"
    );
    let out = run(&args_with(
        &data,
        &run_dir,
        &["--batch-size", "20000", "--max-steps", "1"],
    ));
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the dataset has 16 images, fewer than one batch of 20000")
            && stderr.contains("--batch-size")
            && !stderr.contains("drop_last"),
        "{stderr}"
    );
    // One Fashion-MNIST file where its folder is needed.
    let fmnist = dir.path().join("fmnist");
    std::fs::create_dir_all(&fmnist).unwrap();
    let file = fmnist.join("train-images-idx3-ubyte.gz");
    std::fs::write(&file, b"\x1f\x8b").unwrap();
    let out = run(&[
        "train",
        "--preset",
        "fashion-mnist",
        "--offline",
        "--data",
        file.to_str().unwrap(),
        "--run-dir",
        dir.path().join("fm-run").to_str().unwrap(),
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{} is a file, not a folder", file.display()))
            && stderr.contains(&format!("pass that folder, here {}", fmnist.display()))
            && !stderr.contains("cannot find"),
        "{stderr}"
    );
}

#[test]
fn a_redirected_stderr_run_prints_progress_lines_checkpoints_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let log = dir.path().join("train.log");
    let args = args_with(
        &data,
        &run_dir,
        &["--max-steps", "6", "--progress-every", "2"],
    );
    let status = ddpm(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    for step in [1, 2, 4, 6] {
        let prefix = format!("step {step}/6 (");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no progress line for step {step}: {text}"));
        for part in [" loss ", " img/s", " ETA "] {
            assert!(line.contains(part), "`{part}` not in `{line}`");
        }
    }
    assert!(!text.contains("step 3/6"), "one line every 2 steps: {text}");
    for want in [
        "training 6 steps",
        "checkpoint ",
        "step-00000002",
        "step-00000006",
        "done: 6 steps",
    ] {
        assert!(text.contains(want), "`{want}` not in: {text}");
    }
}

/// Needs root (Linux) to mount a small tmpfs; skipped with a message otherwise.
#[test]
fn a_full_disk_is_reported_readably_and_the_previous_checkpoint_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let tmpfs = match Tmpfs::mount(&mnt, "8m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs to fill ({why}); run as root on Linux");
            return;
        }
    };
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = tmpfs.0.join("run");
    let mut child = spawn(
        &args_with(
            &data,
            &run_dir,
            &["--max-steps", "100000", "--epochs", "100000"],
        ),
        &[],
    );
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    fill(&tmpfs.0);
    let status = wait_exit(&mut child, Duration::from_secs(120), "the disk filled up");
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("no space left on device while writing")
            && stderr.contains(") is intact: free some space and resume"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("StorageFull") && !stderr.contains("IoError"),
        "{stderr}"
    );
    // No half-written checkpoint is left behind, and the newest complete one loads.
    let leftovers: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let newest = complete_checkpoints(&run_dir).last().unwrap().clone();
    let named = format!("(step {}) is intact", state_step(&run_dir, &newest));
    assert!(stderr.contains(&named), "`{named}` not in: {stderr}");
    let grid = dir.path().join("grid.png");
    sample_a_grid(&run_dir, &grid);
}

/// `nohup ddpm train …` asked to survive the terminal's hangup: SIGHUP stays ignored there.
#[test]
fn under_nohup_sighup_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let args = args_with(
        &data,
        &run_dir,
        &["--max-steps", "100000", "--epochs", "100000"],
    );
    let mut child = std::process::Command::new("nohup")
        .arg(e2e::ddpm_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nohup ddpm train");
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    signal(&child, "-HUP");
    let after_hup = complete_checkpoints(&run_dir).last().unwrap().clone();
    wait_for("a checkpoint after SIGHUP", Duration::from_secs(60), || {
        complete_checkpoints(&run_dir).last().unwrap() > &after_hup
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped a nohup run"
    );
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(60), "SIGINT");
    let stderr = stderr_of(&child.wait_with_output().unwrap());
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("SIGHUP"), "{stderr}");
    assert!(stderr.contains("Ctrl-C (SIGINT): finishing"), "{stderr}");
}

/// `--resume` on a run whose only checkpoint is `checkpoints/best/` says to resume from it by
/// name (#31: the hint was "start a new run without --resume", which the run then refuses).
#[test]
fn resume_with_only_the_best_checkpoint_names_resume_from_best() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny(dir.path());
    let checkpoints = run_dir.join("checkpoints");
    let newest = complete_checkpoints(&run_dir).pop().unwrap();
    for name in complete_checkpoints(&run_dir) {
        if name != newest {
            std::fs::remove_dir_all(checkpoints.join(&name)).unwrap();
        }
    }
    std::fs::rename(checkpoints.join(&newest), checkpoints.join("best")).unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let out = run(&tiny_train_args(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "4", "--threads", "1"],
    ));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--resume-from best") && !stderr.contains("without --resume"),
        "{stderr}"
    );
}

/// A `--run-dir` that is a file is named as such, once, with what to do (#31: the OS error
/// twice, no hint).
#[test]
fn a_run_dir_that_is_a_file_is_named_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let file = dir.path().join("afile");
    std::fs::write(&file, b"not a run").unwrap();
    let out = run(&tiny_train_args(&data, &file, &["--max-steps", "1"]));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is a file, not a run directory")
            && stderr.contains("--run-dir")
            && !stderr.contains("os error"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a run");
}

/// A run directory whose `.lock` is a directory is named as such, once, with what to do (#31:
/// the OS error twice, no hint), and the directory is left as it was.
#[test]
fn a_lock_file_that_is_a_directory_is_named_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(run_dir.join(".lock")).unwrap();
    let out = run(&tiny_train_args(&data, &run_dir, &["--max-steps", "1"]));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(".lock is a directory, not the run's lock file")
            && stderr.contains("rmdir")
            && !stderr.contains("os error"),
        "{stderr}"
    );
    let entries: Vec<_> = std::fs::read_dir(&run_dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "only .lock");
}

/// `--resume --max-steps N` below the checkpoint's step is refused, naming both steps, and
/// leaves the run as it was (#31: it rewrote the checkpoint and config.json and exited 0).
#[test]
fn resume_with_max_steps_below_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let config = std::fs::read(run_dir.join("config.json")).unwrap();
    let data = dir.path().join("synthetic_batch.bin");
    let schedule = r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#;
    let out = run(&tiny_train_args(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "1", "--set", schedule],
    ));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is at step 2, past the run's last step 1")
            && stderr.contains("--max-steps"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(run_dir.join("config.json")).unwrap(), config);
    assert_eq!(complete_checkpoints(&run_dir), ["step-00000002"]);
}

/// A fresh start that fails (here: fewer images than one batch) leaves no run directory holding
/// only `.lock` behind (#31).
#[test]
fn a_failed_fresh_start_leaves_no_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&tiny_train_args(
        &data,
        &run_dir,
        &["--max-steps", "1", "--set", "batch_size=32"],
    ));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("fewer than one batch"), "{stderr}");
    assert!(
        !run_dir.exists(),
        "{:?}",
        std::fs::read_dir(&run_dir).map(|d| d.count())
    );
}

/// A global batch that does not split over the ranks of `--nproc-per-node` is refused once, by
/// the launcher, before any rank starts or the run directory is made (#31: once per rank, after
/// every rank had loaded the data).
#[test]
fn an_uneven_batch_is_refused_once_before_the_ranks_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&tiny_train_args(
        &data,
        &run_dir,
        &["--max-steps", "1", "--nproc-per-node", "3"],
    ));
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("does not split over 3 ranks").count(),
        1,
        "{stderr}"
    );
    assert!(!run_dir.exists());
}
