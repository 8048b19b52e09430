//! Data-parallel `ddpm train` as a user launches it: `--nproc-per-node 2` end to end, stop
//! signals through the launcher, a rank that dies or hangs, and the errors that must come
//! before training. Two ranks over 127.0.0.1 with Gloo, the tiny SimpleUnet, one thread each.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    checkpoint_entries, ddpm, kill, metric_lines, sample_cpu, stderr_of, synthetic_cifar,
    tiny_train_args, wait_for, wait_output,
};

/// The tiny seed preset: batches of 8 (4 per rank), no sampling, a metrics line per step.
fn tiny_args(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--set", "log_every=1"];
    args.extend_from_slice(extra);
    tiny_train_args(data, run_dir, &args)
}

/// A run that would go on for hours, unless stopped.
const LONG: [&str; 6] = [
    "--max-steps",
    "100000",
    "--epochs",
    "100000",
    "--set",
    "checkpoint_every=100000",
];

fn command(args: &[String], envs: &[(&str, String)]) -> Command {
    let mut cmd = ddpm(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn alive(pid: u32) -> bool {
    // A zombie still answers `kill -0`; its state in /proc says it is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
}

/// The PIDs the launcher prints: `rank 0 PID 123, rank 1 PID 124`.
fn launcher_pids(stderr: &str) -> Option<Vec<u32>> {
    let line = stderr.lines().find(|l| l.contains("ranks meet on"))?;
    let pids: Vec<u32> = line
        .split("PID ")
        .skip(1)
        .map(|rest| {
            rest.trim_end_matches(')')
                .split([',', ')'])
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    Some(pids)
}

/// Starts the launcher with stderr in a file (so that the test can read it while it runs).
fn spawn_launcher(args: &[String], log: &Path) -> Child {
    ddpm(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sample_across_two_ranks_writes_the_files_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny(dir.path());
    let sample_into = |out: &Path, extra: &[&str]| {
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = [
            "sample",
            "--checkpoint",
            &s(&run_dir),
            "--device",
            "cpu",
            // 7 images in 4 batches: the last one short; chains in the first two.
            "-n",
            "7",
            "--batch",
            "2",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--seed",
            "4",
            "--gif-chains",
            "3",
            "--gif-frames",
            "4",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for (flag, file) in [
            ("--grid", "grid.png"),
            ("--png-dir", "pngs"),
            ("--strip", "strip.png"),
            ("--gif", "chains.gif"),
            ("--npz", "x.npz"),
        ] {
            args.push(flag.into());
            args.push(s(&out.join(file)));
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = command(&args, &[]).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        stderr_of(&out)
    };
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    sample_into(&one, &["--threads", "1"]);
    let stderr = sample_into(&two, &["--nproc-per-node", "2"]);
    assert!(
        stderr.contains("(2 ranks, 3 batches on rank 0)"),
        "{stderr}"
    );
    let (a, b) = (files(&one), files(&two));
    assert_eq!(
        a.len(),
        11,
        "grid, strip, gif, npz and 7 PNGs: {:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs between one process and two ranks");
    }
}

#[test]
fn fid_of_a_checkpoint_across_two_ranks_scores_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny(dir.path());
    let reference = dir.path().join("ref.npz");
    // The reference: a one-process sample with another seed.
    let out = sample_cpu(
        &run_dir,
        &[
            "--threads",
            "1",
            "-n",
            "6",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--seed",
            "99",
            "--npz",
            reference.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/eval/tests/fixtures/tiny_inception.pt");
    let fid = |name: &str, extra: &[&str]| -> (serde_json::Value, Vec<u8>) {
        let json = dir.path().join(format!("{name}.json"));
        let saved = dir.path().join(format!("{name}.npz"));
        let mut args: Vec<String> = [
            "eval",
            "fid",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--n",
            "6",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--sample-batch-size",
            "2",
            "--seed",
            "3",
            "--ref",
            reference.to_str().unwrap(),
            "--kid-subset-size",
            "4",
            "--inception",
            tiny.to_str().unwrap(),
            "--no-verify",
            "--input-size",
            "16",
            "--device",
            "cpu",
            "--out",
            json.to_str().unwrap(),
            "--save-samples",
            saved.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = command(&args, &[]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", stderr_of(&out));
        let result = serde_json::from_str(&read(&json)).unwrap();
        (result, std::fs::read(&saved).unwrap())
    };
    let (one, one_samples) = fid("one", &["--threads", "1"]);
    let (two, two_samples) = fid("two", &["--nproc-per-node", "2"]);
    assert!(
        one_samples == two_samples,
        "the two ranks drew other samples"
    );
    assert!(one["fid"].as_f64().unwrap() > 0.0, "{one}");
    assert_eq!(two["fid"], one["fid"], "{one}\n{two}");
    assert_eq!(two["kid"], one["kid"], "{one}\n{two}");
    assert_eq!(
        (
            one["samples"]["details"]["ranks"].as_u64(),
            two["samples"]["details"]["ranks"].as_u64()
        ),
        (Some(1), Some(2))
    );
}

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

/// `ddpm sample` arguments for a long draw from `run_dir` (DDPM, 2048 images in batches of 2: the
/// tests stop it early, and 64 took 1.7 s on a quiet machine, less than a signal needs to land),
/// then `extra`.
fn long_sample_args(run_dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "sample",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--device",
        "cpu",
        "-n",
        "2048",
        "--batch",
        "2",
        "--sampler",
        "ddpm",
        "--threads",
        "1",
        "--npz",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The launcher speaks of the work it launched: a Ctrl-C to sharded sampling is a stop, not
/// a failure of training (status 130, as the shell reports SIGINT), and a sampling rank that
/// dies fails "sampling".
#[test]
fn the_launcher_of_sampling_reports_a_ctrl_c_as_a_stop_and_a_dead_rank_as_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny(dir.path());
    let out = dir.path().join("x.npz");
    let args = long_sample_args(&run_dir, &out, &["--nproc-per-node", "2"]);

    let log = dir.path().join("sigint.log");
    // Started as a shell starts a background job, with SIGINT ignored: the ranks must not
    // inherit that, or the Ctrl-C the launcher forwards would not stop them.
    let launcher = {
        use std::os::unix::process::CommandExt;
        let mut cmd = ddpm(&args);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: signal(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    wait_for("the sampling line", Duration::from_secs(60), || {
        read(&log).contains("(2 ranks, ")
    });
    kill(launcher.id(), "-INT");
    let (status, _) = wait_output(launcher, Duration::from_secs(30), "the launcher");
    let stderr = read(&log);
    assert_eq!(status.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("error: sampling stopped by Ctrl-C (SIGINT) (rank "),
        "{stderr}"
    );
    assert!(!stderr.contains("training"), "{stderr}");
    assert!(!out.exists());

    let log = dir.path().join("kill.log");
    let launcher = spawn_launcher(&args, &log);
    wait_for("the sampling line", Duration::from_secs(60), || {
        read(&log).contains("(2 ranks, ")
    });
    let pids = launcher_pids(&read(&log)).expect("the launcher prints the ranks' PIDs");
    kill(pids[1], "-KILL");
    let (status, _) = wait_output(launcher, Duration::from_secs(30), "the launcher");
    let stderr = read(&log);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: data-parallel sampling failed: rank 1 was killed by signal 9"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("training") && !stderr.contains("--resume"),
        "{stderr}"
    );
}

/// When a sampling rank dies, rank 0's error names the other rank (not itself) and says to run
/// the command again: a sampling command has nothing to `--resume`.
#[test]
fn a_sampling_rank_that_dies_is_named_by_rank_0_without_resume_advice() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny(dir.path());
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = |rank: usize| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let out = dir.path().join("x.npz");
    let args = long_sample_args(&run_dir, &out, &["--dist-timeout", "10"]);
    let log = dir.path().join("rank0.log");
    let mut cmd = ddpm(&args);
    for (k, v) in env(0) {
        cmd.env(k, v);
    }
    let rank0 = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut rank1 = command(&args, &env(1)).spawn().unwrap();
    wait_for("the sampling line", Duration::from_secs(60), || {
        read(&log).contains("(2 ranks, ")
    });
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let (status, _) = wait_output(rank0, Duration::from_secs(60), "rank 0");
    let stderr = read(&log);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: rank 0 of 2: ") && stderr.contains(" of the samples "),
        "{stderr}"
    );
    assert!(
        stderr.contains("rank 1 (the other rank) exited"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("from rank 0") && !stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(stderr.contains("then run the command again"), "{stderr}");
}
