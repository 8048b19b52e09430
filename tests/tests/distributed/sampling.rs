//! Sampling and FID across two ranks: the files of one process, the same samples scored, and
//! the sampling launcher's stops and dead ranks.

use super::*;

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
            // 7 images in 7 batches of 1, chains in the first three: rank 0 draws batches 0,
            // 1, 2, 4 and 6, in two rounds of up to four (`sample::shard`), rank 1 batches 3
            // and 5, in one.
            "-n",
            "7",
            "--batch",
            "1",
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
        stderr.contains("(2 ranks, 5 batches on rank 0)"),
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
    let (status, took) = wait_output(rank0, Duration::from_secs(120), "rank 0");
    let stderr = read(&log);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    // Noticed at the end of the round, within four batches (the dead rank's connection is
    // closed, so the broadcast fails at once), not after drawing the rest of its 1,024 images
    // first: 20.5 s on a quiet machine and 56 s on a loaded one before the ranks went in rounds,
    // 0.4–0.9 s on the loaded one after.
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
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
