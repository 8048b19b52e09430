//! FID in the training loop through `ddpm train --eval-every`: the evaluation lines, the best
//! checkpoint and the loss curve's FID panel, the training set's reference statistics cached
//! beside the dataset (reused, recomputed for another resolution or changed images), and the
//! errors before training. The feature network is the tiny TorchScript stand-in for the
//! Inception (`crates/eval/tests/fixtures/tiny_inception.pt`, 16×16 input).

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use e2e::{
    complete_checkpoints, kill, metric_lines, run, sample_cpu, spawn, stderr_of, synthetic_cifar,
    tiny_inception, tiny_train_args_at, wait_exit, wait_for,
};

/// `ddpm train` of the tiny seed preset at `size`×`size` on `data` with FID in the loop every 2
/// steps (4 DDIM-3 samples), scored by the tiny network, for 4 steps; `extra` comes last (a
/// flag may be given once: `--max-steps N` overrides the 4).
fn train(data: &Path, run_dir: &Path, size: usize, extra: &[&str]) -> std::process::Output {
    train_with(data, run_dir, size, &tiny_inception(), "3", extra)
}

/// [`train`] with another `--inception` and `--eval-steps`.
fn train_with(
    data: &Path,
    run_dir: &Path,
    size: usize,
    inception: &str,
    eval_steps: &str,
    extra: &[&str],
) -> std::process::Output {
    run(&train_args(
        data, run_dir, size, inception, eval_steps, extra,
    ))
}

/// The arguments of [`train_with`].
fn train_args(
    data: &Path,
    run_dir: &Path,
    size: usize,
    inception: &str,
    eval_steps: &str,
    extra: &[&str],
) -> Vec<String> {
    let transform = format!("transform.size=[{size},{size}]");
    let mut args = vec![
        "--threads",
        "1",
        "--offline",
        "--set",
        "max_steps=4",
        "--set",
        &transform,
        "--set",
        "log_every=1",
        "--eval-every",
        "2",
        "--set",
        "eval_samples=4",
        "--eval-sampler",
        "ddim",
        "--eval-steps",
        eval_steps,
        "--inception",
        inception,
        "--inception-input-size",
        "16",
    ];
    args.extend_from_slice(extra);
    tiny_train_args_at(size, data, run_dir, &args)
}

/// The `metrics.jsonl` lines with `fid`.
fn fid_lines(run_dir: &Path) -> Vec<serde_json::Value> {
    metric_lines(run_dir)
        .into_iter()
        .filter(|v| v.get("fid").is_some())
        .collect()
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// The cache files of the synthetic CIFAR file's directory, by name.
fn caches(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".npz") || n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[test]
fn evaluations_write_fid_lines_a_best_checkpoint_and_reuse_the_cached_reference() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("cifar");
    std::fs::create_dir(&data_dir).unwrap();
    let data = synthetic_cifar(&data_dir, 16);
    let run_dir = dir.path().join("run");

    let out = train(&data, &run_dir, 28, &[]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reference statistics: computed from 16 images"),
        "{log}"
    );
    assert!(
        log.contains("step 2: FID ") && log.contains("step 4: FID "),
        "{log}"
    );
    // The cache sits beside the dataset, its name records the key (the stand-in network's
    // sha256 starts with its first 8 hex digits; its input size is not the Inception's).
    let names = caches(&data_dir);
    assert_eq!(names.len(), 2, "{names:?}");
    let npz = names.iter().find(|n| n.ends_with(".npz")).unwrap();
    assert!(
        npz.starts_with("cifar10-file-synthetic_batch-28px-tf-") && npz.ends_with("-in16.npz"),
        "{npz}"
    );
    let npz = data_dir.join(npz);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(npz.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(record["n_images"], 16);
    assert_eq!(record["key"]["size"], serde_json::json!([28, 28]));
    assert_eq!(record["key"]["resize"], "tf");

    // Two evaluation lines; best/ is the lower one's checkpoint, with its FID recorded.
    let lines = fid_lines(&run_dir);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4]);
    assert!(lines
        .iter()
        .all(|l| l["kid"].is_f64() && l["n_samples"] == 4));
    let fids: Vec<f64> = lines.iter().map(|l| l["fid"].as_f64().unwrap()).collect();
    let best_dir = run_dir.join("checkpoints/best");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best_dir.join("fid.json")).unwrap()).unwrap();
    let lowest = fids.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(best["fid"].as_f64().unwrap(), lowest);
    let best_step = steps[fids.iter().position(|&f| f == lowest).unwrap()];
    assert_eq!(best["step"].as_u64().unwrap(), best_step);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best_dir.join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64().unwrap(), best_step);
    assert!(best_dir.join("ema.safetensors").is_file());
    // The loss curve has a second panel, the FID's (960×420 per panel).
    let curve = image::open(run_dir.join("loss_curve.png")).unwrap();
    assert_eq!((curve.width(), curve.height()), (960, 840));
    // The best checkpoint samples like any other.
    let grid = dir.path().join("best.png");
    let sampled = sample_cpu(
        &best_dir,
        &[
            "-n",
            "2",
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--grid",
            grid.to_str().unwrap(),
        ],
    );
    assert!(sampled.status.success(), "{}", stderr_of(&sampled));

    // Resumed: the cache is reused as it is (not rewritten), and the best record is kept.
    let written = (mtime(&npz), mtime(&npz.with_extension("json")));
    let out = train(&data, &run_dir, 28, &["--resume", "--max-steps", "6"]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reference statistics: 16 images, reused") && !log.contains("computed"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "the best checkpoint so far: FID {lowest:.4} at step {best_step}"
        )),
        "{log}"
    );
    assert_eq!((mtime(&npz), mtime(&npz.with_extension("json"))), written);
    let steps: Vec<u64> = fid_lines(&run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 4, 6]);

    // Another resolution is another reference: computed and cached under its own name.
    let out = train(&data, &dir.path().join("run24"), 24, &["--max-steps", "2"]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reference statistics: computed from 16 images"),
        "{log}"
    );
    let names = caches(&data_dir);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| n.contains("-24px-")), "{names:?}");
    assert_eq!(mtime(&npz), written.0, "the 28px cache is left alone");

    // Changed images under the same name: the cache does not match and is rebuilt, saying so.
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let out = train(
        &data,
        &dir.path().join("run-changed"),
        28,
        &["--max-steps", "2"],
    );
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("did not match (the dataset's images changed since it was written)")
            && log.contains("recomputed from 16 images"),
        "{log}"
    );
}

#[test]
fn a_missing_inception_fails_before_training_and_bad_eval_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    // Where `cargo xtask fetch-inception --dest DIR` puts it: fetched if not for --offline.
    let missing = dir.path().join("nets/inception/default_1.pt");
    let out = train_with(&data, &run_dir, 28, missing.to_str().unwrap(), "3", &[]);
    let log = stderr_of(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&missing.display().to_string())
            && log.contains("cargo xtask fetch-inception")
            && log.contains("--offline"),
        "{log}"
    );
    // Nothing trained, nothing written but the lock.
    for file in ["config.json", "metrics.jsonl", "checkpoints"] {
        assert!(!run_dir.join(file).exists(), "{file} exists: {log}");
    }
    assert!(!missing.exists());

    let out = train_with(&data, &run_dir, 28, &tiny_inception(), "400", &[]);
    let log = stderr_of(&out);
    assert!(!out.status.success());
    assert!(log.contains("--eval-steps 400"), "{log}");
    let out = train(&data, &run_dir, 28, &["--eval-samples", "1"]);
    let log = stderr_of(&out);
    assert!(!out.status.success());
    assert!(log.contains("eval_samples = 1"), "{log}");
    assert!(!run_dir.join("config.json").exists());
}

#[test]
fn two_ranks_evaluate_on_rank_0_while_the_other_waits() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = train(&data, &run_dir, 28, &["--nproc-per-node", "2"]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("rank 0 samples and scores alone"), "{log}");
    let steps: Vec<u64> = fid_lines(&run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 4], "one line per evaluation, from rank 0 alone");
    assert!(run_dir.join("checkpoints/best/fid.json").is_file());
}

/// SLURM's `USR1@90` warning leaves 90 s: a stop signal must not wait for an evaluation of a
/// thousand samples (minutes on a CPU). It abandons the evaluation, records nothing for it, writes
/// the checkpoint at once and exits 0; the resumed run evaluates that step again.
#[test]
fn a_stop_signal_during_an_evaluation_abandons_it_and_checkpoints_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let inception = tiny_inception();
    let common = [
        "--threads",
        "1",
        "--offline",
        "--set",
        "log_every=1",
        "--eval-every",
        "2",
        "--eval-sampler",
        "ddim",
        "--eval-steps",
        "10",
        "--inception",
        &inception,
        "--inception-input-size",
        "16",
    ];
    // 20,000 samples of 10 DDIM steps: far longer than the test waits.
    let mut args = common.to_vec();
    args.extend(["--max-steps", "4", "--set", "eval_samples=20000"]);
    let mut child = spawn(&tiny_train_args_at(28, &data, &run_dir, &args), &[]);
    let log = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let reader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_for("the evaluation at step 2", Duration::from_secs(120), || {
        log.lock()
            .unwrap()
            .contains("step 2: evaluating 20000 EMA samples")
    });
    // Well into the sampling.
    std::thread::sleep(Duration::from_secs(1));
    kill(child.id(), "-TERM");
    let signalled = Instant::now();
    let status = wait_exit(
        &mut child,
        Duration::from_secs(60),
        "SIGTERM in an evaluation",
    );
    let took = signalled.elapsed();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "exit status {status}: {log}");
    assert!(
        took < Duration::from_secs(15),
        "the stop took {took:?}: {log}"
    );
    assert!(
        log.contains("the evaluation of step 2 was abandoned")
            && log.contains("interrupted: checkpoint at step 2"),
        "{log}"
    );
    let names = complete_checkpoints(&run_dir);
    let newest = run_dir.join("checkpoints").join(names.last().unwrap());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2);
    assert!(newest.join("ema.safetensors").is_file());
    assert!(
        fid_lines(&run_dir).is_empty(),
        "no record of the abandoned evaluation"
    );
    assert!(!run_dir.join("checkpoints/best").exists());

    // The resumed run evaluates step 2 first (with fewer samples now), then step 4.
    let mut args = common.to_vec();
    args.extend(["--resume", "--max-steps", "4", "--set", "eval_samples=4"]);
    let out = run(&tiny_train_args_at(28, &data, &run_dir, &args));
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    let steps: Vec<u64> = fid_lines(&run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 4], "{log}");
}

/// The reference is the run's setting: `--eval-reference-images` goes to `config.json`, a
/// `--resume` without it keeps it (rather than switching to the whole training set), and a
/// resume with another N names the change.
#[test]
fn the_reference_size_is_kept_by_the_run_and_a_change_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("cifar");
    std::fs::create_dir(&data_dir).unwrap();
    let data = synthetic_cifar(&data_dir, 16);
    let run_dir = dir.path().join("run");
    let reference = |run_dir: &Path| {
        let text = std::fs::read_to_string(run_dir.join("config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config["eval_reference"].clone()
    };

    let out = train(
        &data,
        &run_dir,
        28,
        &["--max-steps", "2", "--eval-reference-images", "8"],
    );
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reference statistics: computed from 8 images"),
        "{log}"
    );
    assert_eq!(reference(&run_dir)["images"], 8);
    assert_eq!(reference(&run_dir)["input_size"], 16);

    // Without the flag: the same 8-image reference, reused from its cache.
    let out = train(&data, &run_dir, 28, &["--resume", "--max-steps", "4"]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reference statistics: 8 images, reused"),
        "{log}"
    );
    assert!(!log.contains("resume changes eval_reference"), "{log}");
    assert_eq!(reference(&run_dir)["images"], 8);
    let names = caches(&data_dir);
    assert_eq!(names.len(), 2, "one reference only: {names:?}");

    // Another N is a change, named as one, and kept from then on.
    let out = train(
        &data,
        &run_dir,
        28,
        &[
            "--resume",
            "--max-steps",
            "6",
            "--eval-reference-images",
            "12",
        ],
    );
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("resume changes eval_reference.images: 8 -> 12")
            && log.contains("reference statistics: computed from 12 images"),
        "{log}"
    );
    assert_eq!(reference(&run_dir)["images"], 12);
}

/// `ddpm eval fid --ref` on the loop's own reference cache scores the KID too: the file holds
/// `kid_features` beside `mu` and `sigma`.
#[test]
fn eval_fid_against_the_loops_reference_cache_reports_the_kid() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("cifar");
    std::fs::create_dir(&data_dir).unwrap();
    let data = synthetic_cifar(&data_dir, 16);
    let run_dir = dir.path().join("run");
    let out = train(&data, &run_dir, 28, &["--max-steps", "2"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let cache = caches(&data_dir)
        .into_iter()
        .find(|n| n.ends_with(".npz"))
        .map(|n| data_dir.join(n))
        .expect("the reference cache");
    let samples = dir.path().join("samples.npz");
    let out = sample_cpu(
        &run_dir,
        &[
            "-n",
            "8",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--npz",
            samples.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let tiny = tiny_inception();
    let out = run(&[
        "eval",
        "fid",
        "--samples",
        samples.to_str().unwrap(),
        "--ref",
        cache.to_str().unwrap(),
        "--inception",
        &tiny,
        "--no-verify",
        "--input-size",
        "16",
        "--device",
        "cpu",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout.contains("FID "), "{stdout}");
    assert!(
        stdout.contains("KID ") && !stdout.contains("KID n/a"),
        "{stdout}"
    );
}

/// A truncated Inception file stops `ddpm train` before training with one line naming the file,
/// without libtorch's C++ backtrace.
#[test]
fn a_truncated_inception_file_is_refused_in_one_line_without_a_cpp_trace() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let bytes = std::fs::read(tiny_inception()).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let run_dir = dir.path().join("run");
    let out = train_with(&data, &run_dir, 28, truncated.to_str().unwrap(), "3", &[]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("truncated.pt") && error.contains("not a loadable TorchScript module"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("frame #") && !stderr.contains("Exception raised from"),
        "{stderr}"
    );
    assert!(!run_dir.join("checkpoints").exists());
}

/// `DDPM_FID_CACHE` puts the reference cache elsewhere; a dataset folder that cannot be written
/// (a read-only bind mount, which needs root; skipped otherwise) has its cache in the user's
/// cache folder, with a note, and the next run reuses it.
#[test]
fn the_reference_cache_goes_where_ddpm_fid_cache_says_or_to_the_user_cache_when_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("cifar");
    std::fs::create_dir(&data_dir).unwrap();
    let data = synthetic_cifar(&data_dir, 16);
    let train_env = |run_dir: &Path, envs: &[(&str, &Path)]| {
        let args = train_args(
            &data,
            run_dir,
            28,
            &tiny_inception(),
            "3",
            &["--max-steps", "2"],
        );
        let mut cmd = e2e::ddpm(&args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = stderr_of(&out);
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let elsewhere = dir.path().join("elsewhere");
    let stderr = train_env(&dir.path().join("a"), &[("DDPM_FID_CACHE", &elsewhere)]);
    assert!(stderr.contains("computed from 16 images"), "{stderr}");
    assert_eq!(caches(&elsewhere).len(), 2, "{stderr}");
    assert!(caches(&data_dir).is_empty());
    let stderr = train_env(&dir.path().join("b"), &[("DDPM_FID_CACHE", &elsewhere)]);
    assert!(stderr.contains("reused"), "{stderr}");

    // Read-only: bind-mount the dataset's folder read-only over itself.
    let mounted = std::process::Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&data_dir)
        .arg(&data_dir)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped the read-only half: cannot bind-mount read-only (needs root on Linux)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&data_dir);
    if std::fs::write(data_dir.join("probe"), b"").is_ok() {
        eprintln!("skipped the read-only half: the read-only mount can be written");
        return;
    }
    let home = dir.path().join("xdg");
    let stderr = train_env(&dir.path().join("c"), &[("XDG_CACHE_HOME", &home)]);
    assert!(
        stderr.contains("cannot be written") && stderr.contains("DDPM_FID_CACHE=DIR"),
        "{stderr}"
    );
    assert!(stderr.contains("computed from 16 images"), "{stderr}");
    let user: Vec<_> = std::fs::read_dir(home.join("ddpm/fid-stats"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(user.len(), 1, "{user:?}");
    assert_eq!(caches(&user[0]).len(), 2);
    let stderr = train_env(&dir.path().join("d"), &[("XDG_CACHE_HOME", &home)]);
    assert!(stderr.contains("reused"), "{stderr}");
}
