//! `cargo xtask quality`: the quality race on a fixed wall-clock budget (issue #16, item 3).
//!
//! 1. The reference: Inception features of the first N Fashion-MNIST test images
//!    (`ddpm eval stats --features`, PyTorch resize), computed once and scored against by every
//!    set below; the FID floor is the first N training images against them.
//! 2. Rust: `ddpm train --preset P` (release build, `--threads T`, previews off) is sent SIGTERM
//!    after M minutes; the trainer finishes its step, writes a checkpoint and exits. Its EMA
//!    weights draw N images with each sampler and are scored (`ddpm eval fid --checkpoint`).
//! 3. PyTorch: `scripts/quality/train_peer.py` reads the Rust run's resolved `config.json`, trains
//!    the same recipe on the same data with the same threads, and gets SIGTERM after the same M
//!    minutes; its EMA samples (uint8 `.npz`) are scored by the same `ddpm eval fid`.
//!
//! The two trainings run one after the other (each has the machine's T threads to itself); the
//! report records the load average around each, since other work on the machine slows a side.
//!
//! Writes `xtask/bench/results/<date>-quality[-TAG].json` and `.md` and one PNG grid per side and
//! sampler beside them (with `--quick`: `target/quality-quick/`, so that a smoke run never lands
//! in the committed reports). The runs and sample files stay under `target/quality/`.

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, root, run_checked};

/// Arguments of `cargo xtask quality`.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Wall-clock minutes of training for each side [default: 30, or 1 with --quick].
    #[arg(long)]
    minutes: Option<f64>,
    /// The `ddpm train` preset (its dataset must be Fashion-MNIST).
    #[arg(long, default_value = "fashion-mnist")]
    preset: String,
    /// Samples per sampler and side, and images of each real set [default: 2000, or 200 with
    /// --quick].
    #[arg(long)]
    samples: Option<usize>,
    /// A smoke run: 1 minute, 200 samples, DDIM-50 only, the report under target/quality-quick.
    #[arg(long)]
    quick: bool,
    /// Samplers, comma-separated [default: ddim50,ddpm, or ddim50 with --quick].
    #[arg(long, value_enum, value_delimiter = ',')]
    samplers: Vec<SamplerChoice>,
    /// Override a config value of both sides: passed to `ddpm train --set` (repeatable); the peer
    /// reads the resolved configuration.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Intra-op threads for each side [default: the machine's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Seeds both trainings and the samplers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only the Rust side (for ablations of the preset).
    #[arg(long)]
    no_peer: bool,
    /// Train both sides at the same time, each with --threads [default: half the cores], instead
    /// of one after the other: on a machine that other work shares, both then see the same load.
    #[arg(long, conflicts_with = "no_peer")]
    concurrent: bool,
    /// The profile of the `ddpm` binary.
    #[arg(long, default_value = "release", value_parser = ["release", "dev"])]
    profile: String,
    /// Added to the report's file names: DATE-quality-TAG.
    #[arg(long)]
    tag: Option<String>,
    /// Where the report and grids go [default: xtask/bench/results, or target/quality-quick
    /// with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A sampler of the race, as both sides spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerChoice {
    /// DDIM, 50 steps, η = 0, leading spacing (the `ddpm sample --sampler ddim` default).
    Ddim50,
    /// DDIM, 50 steps, η = 0, trailing spacing (starts at t = T − 1).
    #[value(name = "ddim50-trailing")]
    Ddim50Trailing,
    /// Ancestral DDPM over all T steps, σ² = β̃ (the issue's baseline).
    Ddpm,
    /// Ancestral DDPM over all T steps, σ² = β.
    #[value(name = "ddpm-large")]
    DdpmLarge,
}

impl SamplerChoice {
    /// The name in file names and the report.
    fn name(self) -> &'static str {
        match self {
            SamplerChoice::Ddim50 => "ddim50",
            SamplerChoice::Ddim50Trailing => "ddim50-trailing",
            SamplerChoice::Ddpm => "ddpm",
            SamplerChoice::DdpmLarge => "ddpm-large",
        }
    }

    /// In words, for the report.
    fn label(self) -> &'static str {
        match self {
            SamplerChoice::Ddim50 => "DDIM-50 (η = 0, leading)",
            SamplerChoice::Ddim50Trailing => "DDIM-50 (η = 0, trailing)",
            SamplerChoice::Ddpm => "DDPM, all T steps, σ² = β̃",
            SamplerChoice::DdpmLarge => "DDPM, all T steps, σ² = β",
        }
    }

    /// The flags of `ddpm eval fid --checkpoint` (spelled out, not left to the defaults).
    fn rust_flags(self) -> Vec<&'static str> {
        match self {
            SamplerChoice::Ddim50 | SamplerChoice::Ddim50Trailing => vec![
                "--sampler",
                "ddim",
                "--steps",
                "50",
                "--eta",
                "0",
                "--spacing",
                if self == SamplerChoice::Ddim50 {
                    "leading"
                } else {
                    "trailing"
                },
            ],
            SamplerChoice::Ddpm => vec!["--sampler", "ddpm", "--variance", "small"],
            SamplerChoice::DdpmLarge => vec!["--sampler", "ddpm", "--variance", "large"],
        }
    }

    /// The same sampler as the Rust `SamplerConfig` JSON, which the peer implements.
    fn peer_config(self) -> Value {
        match self {
            SamplerChoice::Ddim50 => {
                json!({"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "leading"})
            }
            SamplerChoice::Ddim50Trailing => {
                json!({"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "trailing"})
            }
            SamplerChoice::Ddpm => json!({"kind": "ddpm", "variance": "fixed_small"}),
            SamplerChoice::DdpmLarge => json!({"kind": "ddpm", "variance": "fixed_large"}),
        }
    }
}

/// The arguments with the --quick defaults filled in.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    minutes: f64,
    samples: usize,
    samplers: Vec<SamplerChoice>,
    out_dir: PathBuf,
    stem: String,
}

impl Plan {
    fn new(args: &QualityArgs, root: &Path, date: &str) -> Result<Self> {
        let minutes = args.minutes.unwrap_or(if args.quick { 1.0 } else { 30.0 });
        ensure!(
            minutes > 0.0 && minutes.is_finite(),
            "--minutes {minutes}: give a positive number of minutes"
        );
        let samples = args.samples.unwrap_or(if args.quick { 200 } else { 2000 });
        ensure!(
            samples >= 2,
            "--samples {samples}: FID needs at least 2 images"
        );
        let mut samplers = if args.samplers.is_empty() {
            if args.quick {
                vec![SamplerChoice::Ddim50]
            } else {
                vec![SamplerChoice::Ddim50, SamplerChoice::Ddpm]
            }
        } else {
            args.samplers.clone()
        };
        samplers.dedup();
        let out_dir = args.out.clone().unwrap_or_else(|| {
            if args.quick {
                root.join("target/quality-quick")
            } else {
                root.join("xtask/bench/results")
            }
        });
        let mut stem = format!("{date}-quality");
        if args.quick {
            stem += "-quick";
        }
        if let Some(tag) = &args.tag {
            ensure!(
                !tag.is_empty()
                    && tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "--tag {tag:?}: use letters, digits, '-', '_' and '.'"
            );
            stem = format!("{stem}-{tag}");
        }
        Ok(Self {
            minutes,
            samples,
            samplers,
            out_dir,
            stem,
        })
    }
}

/// The 1-minute load average, or NaN where /proc is missing.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A training process that gets SIGTERM `budget` after it started.
struct Timed {
    child: Child,
    what: &'static str,
    started: Instant,
    /// How long it may take to exit after the signal (the peer samples then).
    grace: Duration,
    /// Seconds from the start to the signal.
    signalled: Option<f64>,
    /// Seconds from the start to the signal, or to its exit when it ended by itself.
    seconds: Option<f64>,
}

impl Timed {
    fn spawn(cmd: &mut Command, what: &'static str, grace: Duration) -> Result<Self> {
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(Self {
            child,
            what,
            started,
            grace,
            signalled: None,
            seconds: None,
        })
    }

    /// Signals it when its time is up; returns whether it has exited (successfully).
    fn poll(&mut self, budget: Duration) -> Result<bool> {
        if self.seconds.is_some() {
            return Ok(true);
        }
        if let Some(status) = self.child.try_wait()? {
            ensure!(status.success(), "{} failed with {status}", self.what);
            let own = self.started.elapsed().as_secs_f64();
            self.seconds = Some(self.signalled.unwrap_or(own));
            return Ok(true);
        }
        let elapsed = self.started.elapsed();
        match self.signalled {
            None if elapsed >= budget => {
                eprintln!(
                    "== {}: {:.0} s are up, SIGTERM",
                    self.what,
                    budget.as_secs_f64()
                );
                run_checked(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
                self.signalled = Some(elapsed.as_secs_f64());
            }
            Some(at) if elapsed.as_secs_f64() >= at + self.grace.as_secs_f64() => {
                let _ = self.child.kill();
                bail!(
                    "{} did not exit within {} s of SIGTERM",
                    self.what,
                    self.grace.as_secs()
                );
            }
            _ => {}
        }
        Ok(false)
    }
}

/// Polls every process until all have exited; returns their seconds (see [`Timed::seconds`]).
fn supervise(procs: &mut [Timed], budget: Duration) -> Result<Vec<f64>> {
    loop {
        let mut done = true;
        for p in procs.iter_mut() {
            done &= p.poll(budget)?;
        }
        if done {
            return Ok(procs
                .iter()
                .map(|p| p.seconds.unwrap_or(f64::NAN))
                .collect());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The step of the newest checkpoint under `<run>/checkpoints` (`step-00000229`).
fn last_checkpoint_step(run_dir: &Path) -> Option<u64> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
}

/// The mean loss of the metrics records of the last `last_steps` steps of a run (each record is
/// the mean over the `log_every` steps before it), and the step of the last record.
fn final_loss(metrics_jsonl: &str, last_steps: u64) -> Option<(f64, u64)> {
    let records: Vec<Value> = metrics_jsonl
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = records.last()?["step"].as_u64()?;
    let losses: Vec<f64> = records
        .iter()
        .filter(|r| r["step"].as_u64().is_some_and(|s| s + last_steps > last))
        .filter_map(|r| r["loss"].as_f64())
        .collect();
    (!losses.is_empty()).then(|| (losses.iter().sum::<f64>() / losses.len() as f64, last))
}

/// A PNG grid of the first 64 images of a uint8 NHWC `.npz` (`arr_0`), 8 per row, ×2.
fn write_grid(npz: &Path, png: &Path) -> Result<()> {
    let images = data::images::read_samples_npz(npz)?;
    let [n, c, h, w] = images.shape;
    let n = n.min(64);
    let spec = data::images::GridSpec {
        scale: 2,
        ..Default::default()
    };
    data::images::make_grid(&images.pixels[..n * c * h * w], [n, c, h, w], &spec)?.save_png(png)?;
    Ok(())
}

/// `ddpm eval …` with the Inception settings every score of the race shares.
fn eval_cmd(ddpm: &Path, sub: &str, threads: usize) -> Command {
    let mut cmd = Command::new(ddpm);
    cmd.current_dir(root()).args([
        "eval",
        sub,
        "--resize",
        "pytorch",
        "--device",
        "cpu",
        "--threads",
        &threads.to_string(),
    ]);
    cmd
}

/// Reads the `--out` JSON of `ddpm eval fid`.
fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// FID and KID of a score, for the report.
fn score_summary(fid_json: &Value) -> Value {
    json!({
        "fid": fid_json["fid"],
        "kid": fid_json["kid"]["mean"],
        "kid_std": fid_json["kid"]["std"],
        "n": fid_json["samples"]["n"],
    })
}

/// The python that has the set-up's torch and numpy (the peer needs nothing else).
fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let ok = Command::new(&python)
        .args(["-c", "import torch, numpy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "{} cannot import torch and numpy: run `cargo xtask setup`",
        python.display()
    );
    Ok(python)
}

pub fn run(args: QualityArgs) -> Result<()> {
    let all_started = Instant::now();
    let root = root();
    let date = crate::bench::today();
    // Read before the run: a commit made while the race trains is not what it measured.
    let commit = crate::bench::git_commit(&root);
    let plan = Plan::new(&args, &root, &date)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(if args.concurrent {
        (cores / 2).max(1)
    } else {
        cores
    });
    let n = plan.samples;
    let budget = Duration::from_secs_f64(plan.minutes * 60.0);
    crate::setup::setup(&root)?;
    let python = if args.no_peer {
        None
    } else {
        Some(peer_python(&root)?)
    };

    eprintln!("== building ddpm ({} profile)", args.profile);
    let build_started = Instant::now();
    run_checked(cargo().args([
        "build",
        "--profile",
        &args.profile,
        "-p",
        "cli",
        "--bin",
        "ddpm",
    ]))?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    let ddpm = root
        .join("target")
        .join(if args.profile == "dev" {
            "debug"
        } else {
            "release"
        })
        .join("ddpm");
    for command in [
        crate::fetch::FetchCommand::FashionMnist {
            dest: None,
            url: None,
        },
        crate::fetch::FetchCommand::Inception {
            dest: None,
            url: None,
        },
    ] {
        crate::fetch::run(command)?;
    }
    let data_dir = root.join("data/fashion-mnist");
    let work = root.join("target/quality").join(&plan.stem);
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&plan.out_dir)
        .with_context(|| format!("cannot create {}", plan.out_dir.display()))?;
    let started = Instant::now();
    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, since: Instant| {
        phases.insert(name.into(), json!(since.elapsed().as_secs_f64()));
    };

    // 1. and 2. Rust, then the PyTorch peer (or both at once), each for the budget.
    let run_dir = work.join("rust-run");
    let peer_dir = work.join("peer");
    let mut train = Command::new(&ddpm);
    train.current_dir(&root).args([
        "train",
        "--preset",
        &args.preset,
        "--run-dir",
        &run_dir.to_string_lossy(),
        "--data",
        &data_dir.to_string_lossy(),
        "--device",
        "cpu",
        "--threads",
        &threads.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--offline",
        "--progress-every",
        "500",
        // The budget ends the run, not the epochs; no preview grids inside the budget.
        "--set",
        "epochs=100000",
        "--set",
        "sample_every_epochs=0",
    ]);
    for set in &args.sets {
        train.args(["--set", set]);
    }
    let config_path = run_dir.join("config.json");
    let mut peer = python.as_ref().map(|python| {
        let mut peer = Command::new(python);
        peer.current_dir(&root)
            .arg(root.join("scripts/quality/train_peer.py"))
            .args(["--config", &config_path.to_string_lossy()])
            .args(["--data", &data_dir.to_string_lossy()])
            .args(["--out", &peer_dir.to_string_lossy()])
            .args(["--threads", &threads.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--samples", &n.to_string()]);
        for s in &plan.samplers {
            peer.arg("--sampler")
                .arg(format!("{}={}", s.name(), s.peer_config()));
        }
        peer
    });
    // The peer's grace covers its sampling, which comes after the signal.
    let (rust_grace, peer_grace) = (Duration::from_secs(300), Duration::from_secs(6 * 3600));
    let wait_for_config = || -> Result<()> {
        let since = Instant::now();
        while !config_path.exists() {
            ensure!(
                since.elapsed() < Duration::from_secs(120),
                "ddpm train wrote no {} within 2 minutes",
                config_path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    let t0 = Instant::now();
    let (rust_train_seconds, peer_seconds, rust_load, peer_load);
    if args.concurrent {
        eprintln!(
            "== Rust and PyTorch at once, {threads} threads each, for {} min",
            plan.minutes
        );
        let before = load_average();
        let mut procs = vec![Timed::spawn(&mut train, "ddpm train", rust_grace)?];
        if let Some(peer) = peer.as_mut() {
            wait_for_config()?;
            procs.push(Timed::spawn(peer, "train_peer.py", peer_grace)?);
        }
        let seconds = supervise(&mut procs, budget)?;
        let load = [before, load_average()];
        (rust_train_seconds, peer_seconds) = (seconds[0], seconds.get(1).copied());
        (rust_load, peer_load) = (load, load);
        phase("train_both_and_peer_sample", t0);
    } else {
        eprintln!(
            "== Rust: ddpm train --preset {} for {} min on {threads} threads",
            args.preset, plan.minutes
        );
        let before = load_average();
        let mut procs = [Timed::spawn(&mut train, "ddpm train", rust_grace)?];
        rust_train_seconds = supervise(&mut procs, budget)?[0];
        rust_load = [before, load_average()];
        phase("rust_train", t0);
        peer_seconds = match peer.as_mut() {
            Some(peer) => {
                eprintln!(
                    "== PyTorch: scripts/quality/train_peer.py for {} min on {threads} threads",
                    plan.minutes
                );
                let t0 = Instant::now();
                let before = load_average();
                let mut procs = [Timed::spawn(peer, "train_peer.py", peer_grace)?];
                let seconds = supervise(&mut procs, budget)?[0];
                peer_load = [before, load_average()];
                phase("peer_train_and_sample", t0);
                Some(seconds)
            }
            None => {
                peer_load = [f64::NAN; 2];
                None
            }
        };
    }
    let config = read_json(&config_path)?;
    ensure!(
        config["dataset"]["kind"] == "fashion-mnist",
        "the race scores against Fashion-MNIST, but the run trains on {}",
        config["dataset"]
    );
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .with_context(|| format!("{}: no metrics", run_dir.display()))?;
    let (rust_loss, _) = final_loss(&metrics, 100).context("the Rust run logged no metrics")?;
    let rust_steps = last_checkpoint_step(&run_dir).context("the Rust run wrote no checkpoint")?;
    let batch = config["batch_size"].as_u64().unwrap_or(0);
    let peer_result = match peer_seconds {
        Some(_) => read_json(&peer_dir.join("result.json"))?,
        None => Value::Null,
    };

    // 3. The reference features and the floor.
    let t0 = Instant::now();
    let reference = work.join("ref-test-features.npz");
    let n_text = n.to_string();
    eprintln!("== the reference: Inception features of the first {n} Fashion-MNIST test images");
    run_checked(eval_cmd(&ddpm, "stats", threads).args([
        "--dataset",
        "fashion-mnist",
        "--split",
        "test",
        "--data",
        &data_dir.to_string_lossy(),
        "--offline",
        "--n",
        &n_text,
        "--features",
        "--out",
        &reference.to_string_lossy(),
    ]))?;
    let score = |extra: &[&str], json_out: &Path| -> Result<Value> {
        let mut cmd = eval_cmd(&ddpm, "fid", threads);
        cmd.args(["--ref", &reference.to_string_lossy(), "--n", &n_text])
            .args(["--seed", &args.seed.to_string()])
            .args(["--out", &json_out.to_string_lossy()])
            .args(extra);
        run_checked(&mut cmd)?;
        read_json(json_out)
    };
    eprintln!("== the floor: the first {n} training images against the reference");
    let floor = score(
        &[
            "--samples-dataset",
            "fashion-mnist",
            "--samples-split",
            "train",
            "--samples-data",
            &data_dir.to_string_lossy(),
            "--offline",
        ],
        &work.join("floor.json"),
    )?;
    phase("reference_and_floor", t0);

    // 4. Samples and scores.
    let mut rust_scores = serde_json::Map::new();
    let mut peer_scores = serde_json::Map::new();
    for &sampler in &plan.samplers {
        let name = sampler.name();
        eprintln!("== Rust: {n} samples, {}", sampler.label());
        let t0 = Instant::now();
        let npz = work.join(format!("rust-{name}.npz"));
        let mut extra = vec![
            "--checkpoint".to_string(),
            run_dir.to_string_lossy().into_owned(),
            "--sample-batch-size".into(),
            "250".into(),
            "--save-samples".into(),
            npz.to_string_lossy().into_owned(),
        ];
        extra.extend(sampler.rust_flags().into_iter().map(String::from));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let result = score(&extra, &work.join(format!("rust-{name}.json")))?;
        let grid = plan.out_dir.join(format!("{}-rust-{name}.png", plan.stem));
        write_grid(&npz, &grid)?;
        let mut summary = score_summary(&result);
        summary["seconds_sample_and_score"] = json!(t0.elapsed().as_secs_f64());
        summary["grid"] = json!(grid.file_name().map(|f| f.to_string_lossy().into_owned()));
        rust_scores.insert(name.into(), summary);
        phase(&format!("rust_{name}"), t0);
        if python.is_some() {
            eprintln!("== PyTorch: scoring its {n} samples, {}", sampler.label());
            let t0 = Instant::now();
            let npz = peer_dir.join(format!("samples-{name}.npz"));
            let result = score(
                &["--samples", &npz.to_string_lossy()],
                &work.join(format!("peer-{name}.json")),
            )?;
            let grid = plan
                .out_dir
                .join(format!("{}-pytorch-{name}.png", plan.stem));
            write_grid(&npz, &grid)?;
            let mut summary = score_summary(&result);
            summary["seconds_sample"] = peer_result["samplers"][name]["seconds"].clone();
            summary["grid"] = json!(grid.file_name().map(|f| f.to_string_lossy().into_owned()));
            peer_scores.insert(name.into(), summary);
            phase(&format!("peer_{name}_score"), t0);
        }
    }

    let per_s = |steps: f64, seconds: f64| steps * batch as f64 / seconds;
    let rust = json!({
        "steps": rust_steps,
        "images": rust_steps * batch,
        "train_seconds": rust_train_seconds,
        "images_per_s": per_s(rust_steps as f64, rust_train_seconds),
        "final_loss": rust_loss,
        "load_average": rust_load,
        "scores": rust_scores,
    });
    let peer = if python.is_some() {
        let steps = peer_result["steps"].as_f64().unwrap_or(f64::NAN);
        json!({
            "steps": peer_result["steps"],
            "images": peer_result["images"],
            "train_seconds": peer_seconds,
            "images_per_s": per_s(steps, peer_seconds.unwrap_or(f64::NAN)),
            "final_loss": peer_result["final_loss"],
            "skipped_steps": peer_result["skipped_steps"],
            "torch": peer_result["torch"],
            "load_average": peer_load,
            "scores": peer_scores,
        })
    } else {
        Value::Null
    };
    let report = json!({
        "date": date,
        "commit": commit,
        "device": crate::bench::describe_device("cpu", threads).0,
        "mode": if args.quick { "quick" } else { "full" },
        "preset": args.preset,
        "sets": args.sets,
        "minutes": plan.minutes,
        "samples": n,
        "threads": threads,
        "concurrent": args.concurrent,
        "seed": args.seed,
        "profile": args.profile,
        "samplers": plan.samplers.iter().map(|s| json!({"name": s.name(), "label": s.label(), "config": s.peer_config()})).collect::<Vec<_>>(),
        "config": config,
        "floor": score_summary(&floor),
        "rust": rust,
        "pytorch": peer,
        "seconds": {
            "build": build_seconds,
            "after_build": started.elapsed().as_secs_f64(),
            "total": all_started.elapsed().as_secs_f64(),
            "phases": phases,
        },
    });
    let json_path = plan.out_dir.join(format!("{}.json", plan.stem));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = plan.out_dir.join(format!("{}.md", plan.stem));
    std::fs::write(&md_path, markdown(&report))
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    eprintln!(
        "== wrote {} and {} ({:.0} s in all, {:.0} s after the build)",
        json_path.display(),
        md_path.display(),
        all_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

/// The hyper-parameters both sides train with, from the Rust run's resolved configuration.
fn recipe_rows(c: &Value) -> Vec<(&'static str, String)> {
    let o = &c["optim"];
    let warmup = match o["warmup_steps"].as_u64() {
        Some(0) | None => "none".to_string(),
        Some(w) => format!("linear over {w} updates"),
    };
    vec![
        (
            "dataset",
            format!("{}, transform {}", c["dataset"], c["transform"]),
        ),
        ("network", c["model"].to_string()),
        ("schedule", c["schedule"].to_string()),
        ("objective", c["objective"].to_string()),
        ("batch", c["batch_size"].to_string()),
        (
            "optimizer",
            format!(
                "{} lr {} (β₁ {}, β₂ {}, ε {}, weight decay {}), warm-up {warmup}, decay {}",
                o["kind"].as_str().unwrap_or_default(),
                o["lr"],
                o["beta1"],
                o["beta2"],
                o["eps"],
                o["weight_decay"],
                o["decay"].as_str().unwrap_or_default(),
            ),
        ),
        ("gradient clip", format!("global norm {}", o["grad_clip"])),
        (
            "EMA",
            format!(
                "decay {}{}",
                c["ema"]["decay"],
                if c["ema"]["warmup"] == true {
                    ", warm-up min(d, (1 + n)/(10 + n))"
                } else {
                    ""
                }
            ),
        ),
        ("precision", c["precision"].to_string()),
    ]
}

/// The report as markdown.
pub fn markdown(r: &Value) -> String {
    let mut s = format!(
        "# Quality race {} ({})\n\n- device: {}\n- commit: {}, `ddpm` {} profile, {} threads each side, {}\n- preset `{}`{}; {} minutes of wall-clock training per side (SIGTERM at the deadline, previews off), seed {}\n- {} EMA samples per sampler, scored with `ddpm eval fid --resize pytorch` against the Inception features of the first {} Fashion-MNIST test images\n\n",
        r["date"].as_str().unwrap_or_default(),
        r["mode"].as_str().unwrap_or_default(),
        r["device"].as_str().unwrap_or_default(),
        r["commit"].as_str().unwrap_or_default(),
        r["profile"].as_str().unwrap_or_default(),
        r["threads"],
        if r["pytorch"].is_null() {
            "the Rust side only (--no-peer)"
        } else if r["concurrent"] == true {
            "both sides at the same time"
        } else {
            "one side after the other"
        },
        r["preset"].as_str().unwrap_or_default(),
        match r["sets"].as_array() {
            Some(sets) if !sets.is_empty() => format!(
                " with {}",
                sets.iter()
                    .map(|v| format!("`--set {}`", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        },
        r["minutes"],
        r["seed"],
        r["samples"],
        r["samples"],
    );
    let samplers: Vec<(String, String)> = r["samplers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            (
                x["name"].as_str().unwrap_or_default().to_string(),
                x["label"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    s += "| side | steps | images/s | final loss |";
    for (_, label) in &samplers {
        s += &format!(" FID {label} | KID ×10³ |");
    }
    s += " load average (before, after) |\n|---|---:|---:|---:|";
    for _ in &samplers {
        s += "---:|---:|";
    }
    s += "---|\n";
    for (side, name) in [
        ("rust", "Rust (`ddpm train`)"),
        ("pytorch", "PyTorch (`train_peer.py`)"),
    ] {
        let x = &r[side];
        if x.is_null() {
            continue;
        }
        s += &format!(
            "| {name} | {} | {} | {} |",
            x["steps"],
            f(&x["images_per_s"], 1),
            f(&x["final_loss"], 4)
        );
        for (sampler, _) in &samplers {
            let sc = &x["scores"][sampler];
            let kid = sc["kid"]
                .as_f64()
                .map(|k| json!(k * 1e3))
                .unwrap_or(Value::Null);
            s += &format!(" **{}** | {} |", f(&sc["fid"], 1), f(&kid, 2));
        }
        let load = &x["load_average"];
        s += &format!(" {}, {} |\n", f(&load[0], 2), f(&load[1], 2));
    }
    let floor = &r["floor"];
    s += &format!(
        "\nThe floor (the first {} training images against the reference): FID **{}**, KID ×10³ {}.\n",
        r["samples"],
        f(&floor["fid"], 1),
        f(&floor["kid"].as_f64().map_or(Value::Null, |k| json!(k * 1e3)), 2)
    );
    s += "\nFinal loss: the mean training loss of the last 100 steps. Images/s: steps × batch over the wall time from the start of the process to the signal (start-up included).\n";
    s += "\n## Grids (first 64 samples)\n\n";
    for (side, name) in [("rust", "Rust"), ("pytorch", "PyTorch")] {
        for (sampler, label) in &samplers {
            if let Some(grid) = r[side]["scores"][sampler]["grid"].as_str() {
                s += &format!("- {name}, {label}: [`{grid}`]({grid})\n");
            }
        }
    }
    s += "\n## The recipe (both sides, from the Rust run's `config.json`)\n\n| | |\n|---|---|\n";
    for (k, v) in recipe_rows(&r["config"]) {
        s += &format!("| {k} | `{}` |\n", v.replace('|', "\\|"));
    }
    let secs = &r["seconds"];
    s += &format!(
        "\n## Time\n\n{} s in all: {} s building `ddpm`, {} s after it",
        f(&secs["total"], 0),
        f(&secs["build"], 0),
        f(&secs["after_build"], 0)
    );
    if let Some(phases) = secs["phases"].as_object() {
        let parts: Vec<String> = phases
            .iter()
            .map(|(k, v)| format!("{k} {}", f(v, 0)))
            .collect();
        s += &format!(" ({} s)", parts.join(", "));
    }
    s += ".\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: QualityArgs,
    }

    fn plan(argv: &[&str]) -> Plan {
        let cli = Cli::try_parse_from([&["quality"], argv].concat()).unwrap();
        Plan::new(&cli.args, Path::new("/repo"), "2026-12-01").unwrap()
    }

    #[test]
    fn quick_and_full_defaults() {
        let full = plan(&[]);
        assert_eq!((full.minutes, full.samples), (30.0, 2000));
        assert_eq!(full.samplers, [SamplerChoice::Ddim50, SamplerChoice::Ddpm]);
        assert_eq!(full.out_dir, Path::new("/repo/xtask/bench/results"));
        assert_eq!(full.stem, "2026-12-01-quality");
        let quick = plan(&["--quick"]);
        assert_eq!((quick.minutes, quick.samples), (1.0, 200));
        assert_eq!(quick.samplers, [SamplerChoice::Ddim50]);
        assert_eq!(quick.out_dir, Path::new("/repo/target/quality-quick"));
        assert_eq!(quick.stem, "2026-12-01-quality-quick");
        // Explicit values win over --quick's.
        let p = plan(&[
            "--quick",
            "--minutes",
            "2.5",
            "--samples",
            "500",
            "--samplers",
            "ddpm,ddim50-trailing",
            "--tag",
            "t1000",
            "--out",
            "o",
        ]);
        assert_eq!((p.minutes, p.samples), (2.5, 500));
        assert_eq!(
            p.samplers,
            [SamplerChoice::Ddpm, SamplerChoice::Ddim50Trailing]
        );
        assert_eq!(p.out_dir, Path::new("o"));
        assert_eq!(p.stem, "2026-12-01-quality-quick-t1000");
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let err = |argv: &[&str]| {
            let cli = Cli::try_parse_from([&["quality"], argv].concat()).unwrap();
            Plan::new(&cli.args, Path::new("/r"), "d")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--minutes", "0"]).contains("--minutes"));
        assert!(err(&["--samples", "1"]).contains("--samples"));
        assert!(err(&["--tag", "a/b"]).contains("--tag"));
        assert!(Cli::try_parse_from(["quality", "--samplers", "euler"]).is_err());
        assert!(Cli::try_parse_from(["quality", "--profile", "bench"]).is_err());
    }

    /// Both sides must run the same sampler: the CLI flags and the peer's JSON say the same.
    #[test]
    fn each_sampler_is_spelled_alike_for_both_sides() {
        for s in SamplerChoice::value_variants() {
            let flags = s.rust_flags().join(" ");
            let c = s.peer_config();
            match c["kind"].as_str().unwrap() {
                "ddim" => {
                    assert!(
                        flags.contains("--sampler ddim --steps 50 --eta 0"),
                        "{flags}"
                    );
                    assert!(flags.ends_with(c["spacing"].as_str().unwrap()), "{flags}");
                    assert_eq!(c["steps"], 50);
                }
                "ddpm" => {
                    let variance = if c["variance"] == "fixed_small" {
                        "small"
                    } else {
                        "large"
                    };
                    assert_eq!(flags, format!("--sampler ddpm --variance {variance}"));
                }
                other => panic!("{other}"),
            }
            assert_eq!(
                SamplerChoice::from_str(s.name(), false).unwrap(),
                *s,
                "the name parses back"
            );
        }
    }

    #[test]
    fn the_final_loss_is_the_mean_of_the_last_hundred_steps() {
        let lines: String = (1..=30)
            .map(|i| format!("{{\"step\":{},\"loss\":{}}}\n", i * 10, i as f64))
            .collect();
        // Records at steps 210..=300 cover the last 100 steps: losses 21..=30.
        let (loss, step) = final_loss(&lines, 100).unwrap();
        assert_eq!(step, 300);
        assert!((loss - 25.5).abs() < 1e-12, "{loss}");
        assert_eq!(final_loss("", 100), None);
        // A run shorter than the window averages everything it logged.
        assert_eq!(
            final_loss("{\"step\":10,\"loss\":2.0}\n", 100),
            Some((2.0, 10))
        );
    }

    #[test]
    fn the_markdown_shows_every_figure() {
        let side = |fid: f64, steps: u64| {
            json!({"steps": steps, "images_per_s": 400.0, "final_loss": 0.0791,
                "load_average": [2.0, 2.5],
                "scores": {"ddim50": {"fid": fid, "kid": 0.0123, "grid": format!("g-{steps}.png")}}})
        };
        let report = json!({
            "date": "2026-12-01", "mode": "full", "device": "cpu", "commit": "abc",
            "profile": "release", "threads": 2, "preset": "fashion-mnist",
            "sets": ["schedule.n_steps=1000"], "minutes": 30.0, "samples": 2000, "seed": 0,
            "samplers": [{"name": "ddim50", "label": "DDIM-50 (η = 0, leading)"}],
            "config": crate::quality::tests::config(),
            "floor": {"fid": 3.21, "kid": 0.0001},
            "rust": side(41.04, 10821), "pytorch": side(43.5, 11000),
            "seconds": {"total": 4000.0, "build": 10.0, "after_build": 3990.0,
                "phases": {"rust_train": 1800.0}},
        });
        let md = markdown(&report);
        for needle in [
            "| Rust (`ddpm train`) | 10821 | 400.0 | 0.0791 | **41.0** | 12.30 | 2.00, 2.50 |",
            "| PyTorch (`train_peer.py`) | 11000 |",
            "**43.5**",
            "FID **3.2**",
            "`--set schedule.n_steps=1000`",
            "[`g-10821.png`](g-10821.png)",
            "| optimizer | `adam lr 0.002 (β₁ 0.9, β₂ 0.999, ε 1e-7, weight decay 0.0), warm-up linear over 200 updates, decay constant` |",
            "| EMA | `decay 0.995, warm-up min(d, (1 + n)/(10 + n))` |",
            "rust_train 1800",
        ] {
            assert!(md.contains(needle), "{needle} missing from\n{md}");
        }
        assert!(md.contains("one side after the other"), "{md}");
        let mut concurrent = report.clone();
        concurrent["concurrent"] = json!(true);
        assert!(markdown(&concurrent).contains("both sides at the same time"));
        // Without a peer, its row is left out.
        let mut rust_only = report.clone();
        rust_only["pytorch"] = Value::Null;
        let md = markdown(&rust_only);
        assert!(!md.contains("PyTorch (`train_peer.py`)"), "{md}");
        assert!(md.contains("the Rust side only"), "{md}");
    }

    pub(super) fn config() -> Value {
        json!({
            "dataset": {"kind": "fashion-mnist", "split": "train"},
            "transform": {"size": null, "flip_p": 0.5, "normalize": true},
            "batch_size": 64,
            "model": {"arch": "simple", "down_channels": [16, 32, 64]},
            "schedule": {"kind": "linear", "n_steps": 300, "start": 0.0001, "end": 0.02},
            "objective": {"prediction": "eps", "loss": "l2"},
            "optim": {"kind": "adam", "lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                "weight_decay": 0.0, "warmup_steps": 200, "decay": "constant", "min_lr": 0.0,
                "grad_clip": 1.0},
            "ema": {"decay": 0.995, "warmup": true},
            "precision": "bf16",
        })
    }
}
