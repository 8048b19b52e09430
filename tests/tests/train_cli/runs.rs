//! The run directory as a user meets it: the lock, fresh runs into old directories, resume rules
//! and fallbacks, a full disk, logs without a terminal, bad flags and config keys.

use super::*;

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
    let stderr = run_err(&tiny_train_args(&data, &file, &["--max-steps", "1"]));
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
    let stderr = run_err(&tiny_train_args(&data, &run_dir, &["--max-steps", "1"]));
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
    let stderr = run_err(&tiny_train_args(
        &data,
        &run_dir,
        &["--resume", "--max-steps", "1", "--set", schedule],
    ));
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
    let stderr = run_err(&tiny_train_args(
        &data,
        &run_dir,
        &["--max-steps", "1", "--set", "batch_size=32"],
    ));
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
    let stderr = run_err(&tiny_train_args(
        &data,
        &run_dir,
        &["--max-steps", "1", "--nproc-per-node", "3"],
    ));
    assert_eq!(
        stderr.matches("does not split over 3 ranks").count(),
        1,
        "{stderr}"
    );
    assert!(!run_dir.exists());
}
