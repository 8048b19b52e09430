//! Elastic restarts and where each rank was: a killed rank survived with the files of an
//! uninterrupted run, a stalled rank shown behind, a restarted rank resuming its own run.

use super::*;

/// The final checkpoint's weights, EMA and optimizer files of `run_dir`, by name.
fn final_state_files(run_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let last = checkpoint_entries(run_dir)
        .into_iter()
        .rfind(|name| name.starts_with("step-") && !name.ends_with(".tmp"))
        .expect("a checkpoint");
    ["model", "ema", "optimizer"]
        .iter()
        .map(|name| {
            let file = format!("{last}/{name}.safetensors");
            let bytes = std::fs::read(run_dir.join("checkpoints").join(&file)).unwrap();
            (file, bytes)
        })
        .collect()
}

/// A rank killed after a checkpoint under `--max-restarts 1`: the launcher starts both ranks
/// again, they continue from the newest complete checkpoint without `--resume`, and the run
/// ends at its step count with the files of a run that was never interrupted.
#[test]
fn max_restarts_1_survives_a_killed_rank_with_the_files_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let extra = [
        "--nproc-per-node",
        "2",
        "--threads",
        "1",
        "--max-steps",
        "40",
        "--epochs",
        "100",
        "--set",
        "checkpoint_every=4",
        "--set",
        "keep_last=20",
    ];
    let reference = dir.path().join("reference");
    let out = command(&tiny_args(&data, &reference, &extra), &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));

    let run_dir = dir.path().join("run");
    let log = dir.path().join("launcher.log");
    let mut restarted = extra.to_vec();
    restarted.extend(["--max-restarts", "1"]);
    let launcher = spawn_launcher(&tiny_args(&data, &run_dir, &restarted), &log);
    wait_for("the first checkpoint", Duration::from_secs(60), || {
        !e2e::complete_checkpoints(&run_dir).is_empty()
    });
    let pids = launcher_pids(&read(&log)).expect("the launcher prints the ranks' PIDs");
    kill(pids[1], "-KILL");
    let (out, _) = wait_output(launcher, Duration::from_secs(120), "the restarted launcher");
    let stderr = read(&log);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rank 1 (PID {}) was killed by signal 9 (SIGKILL)",
            pids[1]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("restart 1 of 1 (--max-restarts)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("restart 1: continuing from step "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("done: 40 steps").count(), 1, "{stderr}");
    let records = metric_lines(&run_dir);
    let restart = records
        .iter()
        .find(|r| r.get("restart").is_some())
        .expect("a restart record in metrics.jsonl");
    assert_eq!(restart["restart"], 1, "{restart}");
    let resumed = restart["step"].as_u64().unwrap();
    assert!(
        resumed >= 4 && resumed % 4 == 0 && resumed < 40,
        "{restart}"
    );
    assert!(restart["steps_redone"].as_u64().is_some(), "{restart}");
    assert_eq!(records.last().unwrap()["step"], 40);

    let (ours, theirs) = (final_state_files(&run_dir), final_state_files(&reference));
    assert_eq!(ours.len(), 3);
    for ((name, a), (other, b)) in ours.iter().zip(&theirs) {
        assert_eq!(name, other);
        assert!(a == b, "{name} differs from the uninterrupted run's");
    }
}

/// A stalled rank (SIGSTOP) under `--dist-timeout`: the surviving rank writes where it was to
/// `ranks/rank-0.json`, and the launcher's summary shows the stalled rank behind it, with a
/// lower collective sequence number.
#[test]
fn a_stalled_rank_shows_behind_in_the_launchers_summary_of_where_each_rank_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let log = dir.path().join("launcher.log");
    let mut extra = vec![
        "--nproc-per-node",
        "2",
        "--dist-timeout",
        "5",
        "--threads",
        "1",
    ];
    extra.extend(LONG);
    let launcher = spawn_launcher(&tiny_args(&data, &run_dir, &extra), &log);
    wait_for("the first metrics lines", Duration::from_secs(60), || {
        metric_lines(&run_dir).len() >= 2
    });
    let pids = launcher_pids(&read(&log)).expect("the launcher prints the ranks' PIDs");
    kill(pids[1], "-STOP");
    let (out, _) = wait_output(launcher, Duration::from_secs(60), "the launcher");
    let stderr = read(&log);
    assert!(!out.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&read(&run_dir.join("ranks/rank-0.json"))).expect("rank-0.json");
    assert_eq!(report["rank"], 0, "{report}");
    let phases = [
        "data",
        "forward",
        "backward",
        "all-reduce",
        "optimizer",
        "checkpoint",
        "evaluation",
    ];
    assert!(
        phases.contains(&report["phase"].as_str().unwrap()),
        "{report}"
    );
    assert!(report["step"].as_u64().unwrap() >= 2, "{report}");
    let started = report["collectives_started"].as_u64().unwrap();
    assert!(
        started > report["last_completed_collective"].as_u64().unwrap(),
        "rank 0 failed in a collective it started: {report}"
    );
    assert!(
        stderr.contains("rank 0 was at step "),
        "rank 0 prints where it was: {stderr}"
    );
    // "  rank K: step S, PHASE, collective #N (…)": one line per rank.
    let reached = |rank: usize| -> (u64, String) {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("  rank {rank}: step ")))
            .unwrap_or_else(|| panic!("no summary line for rank {rank}: {stderr}"));
        let n = line.split("collective #").nth(1).unwrap();
        let n = n.split(' ').next().unwrap().parse().unwrap();
        (n, line.to_string())
    };
    let ((n0, line0), (n1, line1)) = (reached(0), reached(1));
    assert!(stderr.contains("where each rank was ("), "{stderr}");
    assert_eq!(n0, started, "{line0}");
    assert!(n1 < n0, "the stalled rank is not behind: {line0} / {line1}");
    assert!(
        line1.ends_with("<- behind") && line1.contains("stopped"),
        "{line1}"
    );
    assert!(!alive(pids[1]), "the stalled rank outlived the launcher");
}

/// A rank that was restarted (`TORCHELASTIC_RESTART_COUNT` > 0, as torchrun sets it) resumes
/// its own run without `--resume`, from its newest complete checkpoint, bit for bit; and still
/// refuses a directory that holds another run.
#[test]
fn a_restarted_rank_resumes_its_own_run_without_resume_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let args = |lr: &str| {
        tiny_args(
            &data,
            &run_dir,
            &[
                "--max-steps",
                "4",
                "--set",
                "checkpoint_every=2",
                "--lr",
                lr,
                "--threads",
                "1",
            ],
        )
    };
    let out = command(&args("1e-3"), &[]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // As if the run had died after step 4, before its checkpoint was complete.
    let last = run_dir.join("checkpoints/step-00000004");
    let uninterrupted = std::fs::read(last.join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(&last).unwrap();
    let restarted = [("TORCHELASTIC_RESTART_COUNT", "1".to_string())];
    let out = command(&args("1e-3"), &restarted).output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("restart 1: continuing from step 2; 2 step(s) of the previous attempt"),
        "{stderr}"
    );
    let records = metric_lines(&run_dir);
    let steps: Vec<_> = records
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 2, 3, 4], "{records:?}");
    assert_eq!(
        records[2],
        serde_json::json!({"step": 2, "restart": 1, "steps_redone": 2})
    );
    assert!(
        std::fs::read(last.join("model.safetensors")).unwrap() == uninterrupted,
        "the restarted run's weights differ from the uninterrupted run's"
    );
    // Another run's directory: refused, naming the key.
    let out = command(&args("2e-3"), &restarted).output().unwrap();
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds another run: its config.json has optim.lr = 0.001, this run 0.002"),
        "{stderr}"
    );
    assert_eq!(
        metric_lines(&run_dir),
        records,
        "the refused start wrote metrics"
    );
}
