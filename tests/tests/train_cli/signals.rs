//! Stop signals (SIGINT, SIGTERM, SIGUSR1, SIGHUP, a second signal, one delivered twice), nohup,
//! and `kill -9` in the middle of a checkpoint write.

use super::*;

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
