//! Helpers for the end-to-end tests: find the `ddpm` binary that cargo built beside us, run it
//! on tiny synthetic runs, and read what it wrote. The one home for test helpers that more than
//! one test target needs, `crates/sample/tests` included (it dev-depends on this crate for
//! [`python_with_diffusers`] and [`copy_dir`]).
//!
//! Also the doctest host of the documentation: the Rust snippets of `README.md` and `docs/*.md`
//! compile (and, unless marked `no_run`, run) under `cargo test -p e2e --doc`, so a snippet that
//! no longer compiles against the crates fails a test. `tests/docs.rs` checks that every
//! markdown file with Rust in it is listed here.

pub mod hub;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `ddpm` binary of the same profile as this test (`target/<profile>/ddpm`).
///
/// `cargo xtask test` builds it before the tests; a plain `cargo test --workspace` builds it too,
/// because the `cli` package has integration tests of its own.
pub fn ddpm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/ddpm
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("ddpm");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cli` (cargo xtask test does it)",
        bin.display()
    );
    bin
}

/// A `Command` for `ddpm` with the given arguments.
pub fn ddpm<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(ddpm_bin());
    cmd.args(args);
    cmd
}

/// Runs `ddpm` and returns its output, whatever the exit status.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    ddpm(args).output().expect("cannot start ddpm")
}

/// Runs `ddpm` and returns its output; panics with its stderr unless it exited 0.
#[track_caller]
pub fn run_ok<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "{}", stderr_of(&out));
    out
}

/// Runs `ddpm`, which must fail, and returns its stderr; panics with it if `ddpm` exited 0.
#[track_caller]
pub fn run_err<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = run(args);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "ddpm exited 0: {stderr}");
    stderr
}

/// Runs `ddpm sample --checkpoint CHECKPOINT --device cpu`, then `extra`.
pub fn sample_cpu(checkpoint: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "sample",
        "--checkpoint",
        path_arg(checkpoint),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Starts `ddpm` with `envs` added to its environment, stdout and stderr piped.
pub fn spawn<S: AsRef<OsStr>>(args: &[S], envs: &[(&str, &str)]) -> Child {
    ddpm(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ddpm")
}

/// What a finished command wrote to stderr, lossily decoded.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a finished command wrote to stdout, lossily decoded.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as a command-line argument (the tests' temporary paths are UTF-8).
pub fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Waits for `child` to exit, at most `timeout`. Past it, kills the child and fails the test
/// naming `what`, with what the child wrote to stderr if that was piped.
pub fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("{what}: still running after {timeout:?}: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_exit`], then the child's output and how long it took to exit.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> (Output, Duration) {
    let start = Instant::now();
    wait_exit(&mut child, timeout, what);
    let took = start.elapsed();
    (child.wait_with_output().unwrap(), took)
}

/// Sends `signal` (`-INT`, `-TERM`, `-9`, …) to the process `pid` with kill(1).
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// The repository's `shared/` folder (a sibling of the checkout), holding small real data.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Writes a CIFAR-10 binary file `synthetic_batch.bin` in `dir` with `n` records of smooth
/// images (labels `i % 10`) and returns its path.
pub fn synthetic_cifar(dir: &Path, n: usize) -> PathBuf {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        for c in 0..3 {
            for p in 0..1024 {
                bytes.push(((p / 32 + p % 32) * (c + 1) * 3 + i * 17) as u8);
            }
        }
    }
    let path = dir.join("synthetic_batch.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The model override (`--set model=…`) that makes the seed preset tiny: a 2-level SimpleUnet
/// for `image_size`×`image_size` images (the seed preset's are 28×28).
pub fn tiny_model(image_size: usize) -> String {
    format!(
        r#"{{"arch":"simple","in_channels":3,"out_channels":3,"image_size":{image_size},"down_channels":[8,16],"up_channels":[16,8],"time_emb_dim":16,"batch_norm_eps":0.001,"batch_norm_momentum":0.01}}"#
    )
}

/// The TorchScript stand-in for the Inception (`crates/eval/tests/fixtures/tiny_inception.pt`:
/// 16×16 input, 32 features), as a `--inception` argument.
pub fn tiny_inception() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/eval/tests/fixtures/tiny_inception.pt")
        .display()
        .to_string()
}

/// The arguments of `ddpm train` on `data` into `run_dir` for the seed preset made tiny (the
/// 2-level SimpleUnet, batches of 8, no sampling, one loader worker), then `extra`.
pub fn tiny_train_args<S: AsRef<str>>(data: &Path, run_dir: &Path, extra: &[S]) -> Vec<String> {
    tiny_train_args_at(28, data, run_dir, extra)
}

/// [`tiny_train_args`] with the network made for `image_size`×`image_size` images.
pub fn tiny_train_args_at<S: AsRef<str>>(
    image_size: usize,
    data: &Path,
    run_dir: &Path,
    extra: &[S],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--device",
        "cpu",
        "--data",
        path_arg(data),
        "--run-dir",
        path_arg(run_dir),
        "--set",
        "batch_size=8",
        "--set",
        &format!("model={}", tiny_model(image_size)),
        "--set",
        "sample_every_epochs=0",
        "--set",
        "n_workers=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.as_ref().to_string()));
    args
}

/// Trains the seed preset, made tiny (the 2-level SimpleUnet, T = 50, 2 steps of batch 8 on
/// 16 synthetic CIFAR images), into `dir/run`, and returns the run directory.
pub fn train_tiny(dir: &Path) -> PathBuf {
    train_tiny_with(dir, 16, &[])
}

/// [`train_tiny`] made class-conditional (`--class-cond`: the 10 CIFAR-10 classes of 20
/// synthetic images, two of each).
pub fn train_tiny_class_cond(dir: &Path) -> PathBuf {
    train_tiny_with(dir, 20, &["--class-cond"])
}

/// [`train_tiny`] on `n_images` synthetic images, with `extra` arguments.
pub fn train_tiny_with(dir: &Path, n_images: usize, extra: &[&str]) -> PathBuf {
    let data = synthetic_cifar(dir, n_images);
    let run_dir = dir.join("run");
    let mut args = vec![
        "--threads",
        "1",
        "--max-steps",
        "2",
        "--set",
        r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#,
    ];
    args.extend_from_slice(extra);
    let out = run(&tiny_train_args(&data, &run_dir, &args));
    assert!(
        out.status.success(),
        "ddpm train failed: {}",
        stderr_of(&out)
    );
    run_dir
}

/// The lines of `run_dir/metrics.jsonl` (none while the file does not exist); every line must
/// parse.
pub fn metric_lines(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("unparsable metrics line `{line}`: {e}"))
        })
        .collect()
}

/// Every entry of `run_dir/checkpoints`, finished or not, by name (none while it does not exist).
pub fn checkpoint_entries(run_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The finished checkpoints of `run_dir` by name: those with a `state.json`, not `.tmp`.
pub fn complete_checkpoints(run_dir: &Path) -> Vec<String> {
    let checkpoints = run_dir.join("checkpoints");
    checkpoint_entries(run_dir)
        .into_iter()
        .filter(|n| !n.ends_with(".tmp") && checkpoints.join(n).join("state.json").exists())
        .collect()
}

/// Overwrites the first value of the tensor `name` in a safetensors file with NaN (the tensor
/// must be float32); `None` picks the first float32 tensor in name order. Returns the tensor's
/// name. Written against the file format (an 8-byte header length, a JSON header, the data), so
/// the tests need no libtorch.
pub fn poison_safetensors(path: &Path, name: Option<&str>) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut names: Vec<&String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, _)| k)
        .collect();
    names.sort();
    let name = match name {
        Some(n) => names
            .into_iter()
            .find(|k| *k == n)
            .expect("a float32 tensor of that name"),
        None => names[0],
    }
    .clone();
    let begin = header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + header_len + begin;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
    name
}

/// Removes the file digests from the `state.json` of `checkpoint` (a `step-N` directory), so that
/// it reads as a checkpoint written before checkpoints had digests; returns them.
pub fn drop_digests(checkpoint: &Path) -> serde_json::Value {
    let state_path = checkpoint.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let digests = state.as_object_mut().unwrap().remove("digests").unwrap();
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    digests
}

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The python that has torch and diffusers (the set-up's `.venv`, or `DDPM_PYTHON`), or `None`.
pub fn python_with_diffusers() -> Option<PathBuf> {
    let python = std::env::var_os("DDPM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    Command::new(&python)
        .args(["-c", "import diffusers, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(python)
}

/// Runs `scripts/golden/diffusers_folders.py --verify-export FOLDER IO` (diffusers loads the
/// folder and reproduces IO's `out`; a pipeline folder is also loaded by `DDPMPipeline` and
/// `DDIMPipeline`, which draw an image, and its model card is parsed) and returns the model
/// card's front matter as the script printed it (`Null` without a card), or `None`, saying that
/// `what` was skipped, when there is no python with diffusers.
pub fn verify_in_diffusers(folder: &Path, io: &Path, what: &str) -> Option<serde_json::Value> {
    let Some(python) = python_with_diffusers() else {
        eprintln!(
            "skipped: the diffusers half of {what} (no python with diffusers; `cargo xtask test` \
             installs it)"
        );
        return None;
    };
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/golden/diffusers_folders.py");
    let result = Command::new(python)
        .arg(script)
        .arg("--verify-export")
        .arg(folder)
        .arg(io)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    eprintln!("{what}: {stdout}");
    assert!(
        result.status.success(),
        "diffusers refused {what}: {stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let card = stdout.lines().find_map(|l| l.strip_prefix("CARD "));
    Some(card.map_or(serde_json::Value::Null, |c| {
        serde_json::from_str(c).unwrap()
    }))
}

/// The python that has TensorBoard (`scripts/tensorboard/requirements.txt`; the set-up's `.venv`,
/// or `DDPM_PYTHON`), or `None`.
pub fn python_with_tensorboard() -> Option<PathBuf> {
    let python = std::env::var_os("DDPM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    Command::new(&python)
        .args([
            "-c",
            "import tensorboard.backend.event_processing.event_accumulator",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(python)
}

/// Copies the directory `from` to `to`, subdirectories included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The markdown documentation, one item per file, each documented by the file itself so that
/// rustdoc tests its Rust snippets. Compiled only for doctests.
#[cfg(doctest)]
pub mod markdown {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/setup.md")]
    pub struct Setup;
    #[doc = include_str!("../../docs/training.md")]
    pub struct Training;
    #[doc = include_str!("../../docs/sampling.md")]
    pub struct Sampling;
    #[doc = include_str!("../../docs/class-conditional.md")]
    pub struct ClassConditional;
    #[doc = include_str!("../../docs/evaluation.md")]
    pub struct Evaluation;
    #[doc = include_str!("../../docs/multi-gpu.md")]
    pub struct MultiGpu;
    #[doc = include_str!("../../docs/library.md")]
    pub struct Library;
    #[doc = include_str!("../../docs/benchmarks.md")]
    pub struct Benchmarks;
    #[doc = include_str!("../../docs/datasets.md")]
    pub struct Datasets;
}

/// Unmounts a tmpfs when dropped, whatever the test did.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`) on `dir`, made if missing; the error is `mount`'s
    /// (not root, not Linux).
    pub fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Self(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let done = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Fills the file system under `dir` until a write fails with "no space left".
pub fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            return;
        }
    }
}

/// A JSON array of numbers, from a golden fixture.
pub fn floats(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}
