//! `ddpm train` as a user runs it: interrupts, crashes mid-checkpoint, resume, bad flags.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use e2e::{ddpm, run, synthetic_cifar, TINY_MODEL};

/// Overrides that make the seed preset tiny: a 2-level SimpleUnet, batches of 8, no sampling.
fn tiny_args(data: &Path, run_dir: &Path) -> Vec<String> {
    [
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        data.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--set",
        "batch_size=8",
        "--set",
        &format!("model={TINY_MODEL}"),
        "--set",
        "sample_every_epochs=0",
        "--set",
        "checkpoint_every=2",
        "--set",
        "n_workers=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(args: &[String], envs: &[(&str, &str)]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = ddpm(&args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ddpm train")
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn complete_checkpoints(run_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    names
}

fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = complete_checkpoints(run_dir);
    assert_eq!(state_step(run_dir, names.last().unwrap()), max_steps);
}

#[test]
fn sigint_finishes_the_step_writes_a_checkpoint_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend(["--max-steps".into(), "100000".into()]);
    let mut child = spawn(&args, &[]);
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        !complete_checkpoints(&run_dir).is_empty()
    });
    signal(&child, "-INT");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ddpm train did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(stderr.contains("--resume"), "no hint to resume: {stderr}");
    let names = complete_checkpoints(&run_dir);
    let interrupted_at = state_step(&run_dir, names.last().unwrap());
    assert!(interrupted_at >= 2);
    resume_for(&data, &run_dir, interrupted_at + 2);
}

#[test]
fn kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let mut args = tiny_args(&data, &run_dir);
    args.extend(["--max-steps".into(), "100000".into()]);
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
        let mut args: Vec<String> = tiny_args(&data, &run_dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(
            stderr.contains(want),
            "{extra:?}: expected `{want}` in: {stderr}"
        );
    }
    let config = dir.path().join("bad.json");
    std::fs::write(&config, r#"{"optim": {"beta3": 0.5}}"#).unwrap();
    let mut args = tiny_args(&data, &run_dir);
    args.extend(["--config".into(), config.to_str().unwrap().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = String::from_utf8_lossy(&run(&args).stderr).into_owned();
    assert!(
        stderr.contains("bad.json") && stderr.contains("optim.beta3"),
        "{stderr}"
    );
    let missing = run(&["train", "--offline", "--run-dir", run_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("cargo xtask fetch-cifar"), "{stderr}");
}
