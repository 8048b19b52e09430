//! Training across two ranks: the launch, stop signals, a rank that dies or hangs, settings
//! that differ between ranks, the errors that come before training, and torchrun.

use super::*;

#[test]
fn nproc_per_node_2_trains_writes_one_set_of_files_and_sample_reads_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let args = tiny_args(
        &data,
        &run_dir,
        &[
            "--nproc-per-node",
            "2",
            "--max-steps",
            "6",
            "--set",
            "checkpoint_every=3",
        ],
    );
    let out = command(&args, &[]).output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("data-parallel: 2 ranks, 4 images each per step (global batch 8)"),
        "{stderr}"
    );
    // Rank 0 alone reports: one summary, one line per checkpoint.
    assert_eq!(stderr.matches("done: 6 steps").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("checkpoint ").count(), 2, "{stderr}");
    assert_eq!(
        checkpoint_entries(&run_dir),
        ["step-00000003", "step-00000006"]
    );
    let records = metric_lines(&run_dir);
    assert_eq!(records.len(), 6, "one line per step, written once");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        assert_eq!(r["world_size"], 2, "{r}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&read(&run_dir.join("checkpoints/step-00000006/state.json"))).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["world_size"].as_u64()),
        (Some(6), Some(2))
    );
    // 32 images, global batches of 8: 4 steps per epoch whatever the number of ranks.
    assert_eq!(
        (state["epoch"].as_u64(), state["batch_in_epoch"].as_u64()),
        (Some(1), Some(2))
    );

    let grid = dir.path().join("grid.png");
    let checkpoint = run_dir.join("checkpoints/step-00000006");
    let out = sample_cpu(
        &checkpoint,
        &[
            "--threads",
            "1",
            "-n",
            "2",
            "--steps",
            "5",
            "--sampler",
            "ddim",
            "--grid",
            grid.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ddpm sample: {}", stderr_of(&out));
    let image = image::open(&grid).expect("the grid decodes");
    assert_eq!((image.width(), image.height()), (2 * 30 + 2, 32));
}

#[test]
fn sigint_to_the_launcher_stops_both_ranks_after_one_step_with_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let log = dir.path().join("launcher.log");
    let mut extra = vec!["--nproc-per-node", "2", "--dist-timeout", "10"];
    extra.extend(LONG);
    let launcher = spawn_launcher(&tiny_args(&data, &run_dir, &extra), &log);
    wait_for("the first metrics lines", Duration::from_secs(60), || {
        metric_lines(&run_dir).len() >= 3
    });
    kill(launcher.id(), "-INT");
    let (out, _) = wait_output(
        launcher,
        Duration::from_secs(30),
        "the launcher after SIGINT",
    );
    let stderr = read(&log);
    assert!(out.status.success(), "exit status {}: {stderr}", out.status);
    // Announced once (rank 0), one checkpoint, at the step every rank stopped after.
    assert_eq!(
        stderr
            .matches("Ctrl-C (SIGINT): finishing the current step")
            .count(),
        1,
        "{stderr}"
    );
    let names = checkpoint_entries(&run_dir);
    assert_eq!(names.len(), 1, "{names:?}");
    let step: u64 = names[0].trim_start_matches("step-").parse().unwrap();
    assert!(
        stderr.contains(&format!("interrupted: checkpoint at step {step}")),
        "{stderr}"
    );
    assert_eq!(metric_lines(&run_dir).last().unwrap()["step"], step);

    // It resumes under the launcher.
    let resumed = tiny_args(
        &data,
        &run_dir,
        &[
            "--nproc-per-node",
            "2",
            "--resume",
            "--max-steps",
            &(step + 2).to_string(),
        ],
    );
    let out = command(&resumed, &[]).output().unwrap();
    assert!(out.status.success(), "resume: {}", stderr_of(&out));
    assert_eq!(metric_lines(&run_dir).last().unwrap()["step"], step + 2);
}

#[test]
fn the_launcher_names_a_killed_rank_and_stops_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let log = dir.path().join("launcher.log");
    let mut extra = vec!["--nproc-per-node", "2", "--dist-timeout", "10"];
    extra.extend(LONG);
    let launcher = spawn_launcher(&tiny_args(&data, &run_dir, &extra), &log);
    wait_for("the first metrics lines", Duration::from_secs(60), || {
        metric_lines(&run_dir).len() >= 2
    });
    let pids = launcher_pids(&read(&log)).expect("the launcher prints the ranks' PIDs");
    assert_eq!(pids.len(), 2);
    kill(pids[1], "-KILL");
    let (out, took) = wait_output(launcher, Duration::from_secs(30), "the launcher");
    let stderr = read(&log);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rank 1 (PID {}) was killed by signal 9 (SIGKILL); stopping the other ranks",
            pids[1]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("data-parallel training failed: rank 1"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!alive(pids[0]), "rank 0 outlived the launcher");
}

/// Starts two ranks by hand, as torchrun would, with `--dist-timeout 5`.
fn two_ranks_by_hand(dir: &Path, run_dir: &Path) -> (Child, Child) {
    let data = synthetic_cifar(dir, 32);
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut extra = LONG.to_vec();
    extra.extend(["--dist-timeout", "5", "--threads", "1"]);
    let args = tiny_args(&data, run_dir, &extra);
    let env = |rank: usize| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let rank0 = command(&args, &env(0)).spawn().unwrap();
    let rank1 = command(&args, &env(1)).spawn().unwrap();
    (rank0, rank1)
}

#[test]
fn when_one_rank_is_killed_the_other_exits_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let (rank0, mut rank1) = two_ranks_by_hand(dir.path(), &run_dir);
    wait_for("the first metrics lines", Duration::from_secs(60), || {
        metric_lines(&run_dir).len() >= 2
    });
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let (out, took) = wait_output(rank0, Duration::from_secs(30), "rank 0 after rank 1 died");
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: rank 0 of 2: ") && stderr.contains(" failed ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("rank 1 (the other rank) exited"),
        "{stderr}"
    );
    // A dead peer closes its connections: no need to wait for the timeout.
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
}

#[test]
fn when_one_rank_hangs_the_other_stops_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let (rank0, mut rank1) = two_ranks_by_hand(dir.path(), &run_dir);
    wait_for("the first metrics lines", Duration::from_secs(60), || {
        metric_lines(&run_dir).len() >= 2
    });
    kill(rank1.id(), "-STOP");
    let (out, took) = wait_output(rank0, Duration::from_secs(30), "rank 0 after rank 1 hung");
    kill(rank1.id(), "-KILL");
    rank1.wait().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: rank 0 of 2: "), "{stderr}");
    // Gloo says "Timed out waiting 5000ms for recv …" or "Read timeout […]".
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("timed out") || lower.contains("timeout ["),
        "{stderr}"
    );
    assert!(stderr.contains("at most 5 s, --dist-timeout"), "{stderr}");
    assert!(
        took >= Duration::from_secs(4),
        "failed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn ranks_started_with_different_settings_are_all_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = |rank: usize, lr: &str| {
        let extra = ["--max-steps", "2", "--dist-timeout", "10", "--threads", "1"];
        let mut args = tiny_args(&data, &run_dir, &extra);
        args.extend(["--lr".to_string(), lr.to_string()]);
        let env = [
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ];
        command(&args, &env).spawn().unwrap()
    };
    let (rank0, rank1) = (spawn(0, "1e-3"), spawn(1, "5e-3"));
    for (rank, child) in [(0, rank0), (1, rank1)] {
        let (out, _) = wait_output(child, Duration::from_secs(60), "a rank with other settings");
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "rank {rank}: {stderr}");
        for want in [
            format!("rank {rank} of 2: "),
            "`optim.lr` is 0.001 on rank 0 and 0.005 on rank 1".to_string(),
        ] {
            assert!(
                stderr.contains(&want),
                "rank {rank}: `{want}` not in: {stderr}"
            );
        }
        for trace in ["frame #", "Exception raised from", "EnforceNotMet"] {
            assert!(
                !stderr.contains(trace),
                "rank {rank}: a C++ trace: {stderr}"
            );
        }
    }
    assert!(
        !run_dir.join("metrics.jsonl").exists(),
        "a refused rank trained"
    );
}

#[test]
fn setup_errors_are_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let args = tiny_args(
        &data,
        &run_dir,
        &["--max-steps", "2", "--dist-timeout", "3"],
    );
    let rank = |rank: usize, addr: &str, port: u16| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", addr.to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let check = |args: &[String], env: &[(&str, String)], expected: &[&str]| {
        let start = Instant::now();
        let out = command(args, env).output().unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for text in expected {
            assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
        }
        assert!(
            !stderr.contains(" per epoch), from step"),
            "training started: {stderr}"
        );
        // One line, without libtorch's log lines and their C++ backtraces.
        assert!(
            !stderr.contains("frame #") && !stderr.contains("Exception raised from"),
            "{stderr}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    };

    // The port is taken.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    check(
        &args,
        &rank(0, "127.0.0.1", port),
        &[&format!("rank 0 of 2: cannot host the rendezvous store at 127.0.0.1:{port}: MASTER_PORT={port} is already in use")],
    );
    drop(taken);
    // MASTER_ADDR does not resolve.
    check(
        &args,
        &rank(1, "no-such-host.invalid", 29500),
        &["rank 1 of 2: MASTER_ADDR=no-such-host.invalid does not resolve"],
    );
    // Nobody hosts the store.
    let free = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    check(
        &args,
        &rank(1, "127.0.0.1", free),
        &[&format!(
            "rank 1 of 2: cannot reach the rendezvous store at 127.0.0.1:{free}"
        )],
    );
    // A lone rank 0: nobody joins it.
    check(
        &args,
        &rank(0, "127.0.0.1", free),
        &["rank 0 of 2: not all 2 ranks joined the rendezvous store"],
    );
    // torchrun's agent store, missing (TORCHELASTIC_USE_AGENT_STORE without torchrun).
    let mut agent = rank(0, "127.0.0.1", free);
    agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True".to_string()));
    check(
        &args,
        &agent,
        &[&format!(
            "rank 0 of 2: cannot reach the rendezvous store at 127.0.0.1:{free}"
        )],
    );
    // The global batch does not split over the ranks.
    let three = tiny_args(
        &data,
        &run_dir,
        &["--max-steps", "2", "--nproc-per-node", "3"],
    );
    check(
        &three,
        &[],
        &["--batch-size 8 is the global batch and does not split over 3 ranks: pick a multiple of 3"],
    );
    // --nproc-per-node under torchrun.
    let nested = tiny_args(
        &data,
        &run_dir,
        &["--max-steps", "2", "--nproc-per-node", "2"],
    );
    check(
        &nested,
        &rank(0, "127.0.0.1", 29500),
        &["--nproc-per-node starts ranks itself, but WORLD_SIZE is set"],
    );
    // More ranks than GPUs (here: no GPU at all).
    if !Path::new("/dev/nvidia0").exists() {
        let cuda = tiny_args(&data, &run_dir, &["--nproc-per-node", "2"]);
        let mut cuda: Vec<String> = cuda.into_iter().filter(|a| a != "cpu").collect();
        let at = cuda.iter().position(|a| a == "--device").unwrap();
        cuda.insert(at + 1, "cuda".into());
        check(
            &cuda,
            &[],
            &["--device cuda:0 was asked for but CUDA is not available"],
        );
    }
    assert!(
        !run_dir.join("metrics.jsonl").exists(),
        "a failed setup wrote metrics"
    );
}

/// torchrun from the set-up's python (`.venv`, as `cargo xtask setup` makes it) or the PATH.
fn torchrun() -> Option<std::path::PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("torchrun"))
        .find(|p| p.is_file())
}

/// torchrun hosts the store in its agent (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank,
/// rank 0 included, joins it as a client.
#[test]
fn torchrun_no_python_runs_two_ranks_through_its_agent_store() {
    let Some(torchrun) = torchrun() else {
        eprintln!("skipped: no torchrun in .venv or on the PATH (cargo xtask setup installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 32);
    let run_dir = dir.path().join("run");
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(torchrun);
    cmd.args([
        "--no-python",
        "--nproc_per_node=2",
        &format!("--master_port={port}"),
    ])
    .arg(e2e::ddpm_bin())
    .args(tiny_args(&data, &run_dir, &["--max-steps", "4"]));
    let out = cmd.output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("data-parallel: 2 ranks, 4 images each per step"),
        "{stderr}"
    );
    let records = metric_lines(&run_dir);
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r["world_size"] == 2));
    assert_eq!(checkpoint_entries(&run_dir), ["step-00000004"]);
}
