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
//! Writes `docs/results/<date>-quality[-TAG].json` and `.md` and one PNG grid per side and
//! sampler beside them (with `--quick`: `target/quality-quick/`, so that a smoke run never lands
//! in the committed reports). The runs and sample files stay under `target/quality/`.

use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{cargo, root, run_checked};

mod report;
mod score;
mod train;

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
    /// Where the report and grids go [default: docs/results, or target/quality-quick
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
                root.join("docs/results")
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

/// What every step of the race shares: the arguments, the plan, the binary, and where things go.
struct Race<'a> {
    args: &'a QualityArgs,
    plan: Plan,
    root: PathBuf,
    /// The `ddpm` binary of `--profile`.
    ddpm: PathBuf,
    /// Fashion-MNIST, fetched.
    data_dir: PathBuf,
    /// `target/quality/STEM`: the runs, samples and scores.
    work: PathBuf,
    /// The Rust run directory, under `work`.
    run_dir: PathBuf,
    /// The peer's output folder, under `work`.
    peer_dir: PathBuf,
    /// Intra-op threads of each side.
    threads: usize,
    /// The peer's python; `None` with `--no-peer`.
    python: Option<PathBuf>,
}

impl Race<'_> {
    /// The wall-clock training budget of each side.
    fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.plan.minutes * 60.0)
    }

    /// The Rust run's resolved configuration, which the peer reads.
    fn config_path(&self) -> PathBuf {
        self.run_dir.join("config.json")
    }
}

/// Seconds spent in each phase of the race, in order, for the report.
#[derive(Default)]
struct Phases(serde_json::Map<String, Value>);

impl Phases {
    /// Records the seconds since `since` as phase `name`.
    fn record(&mut self, name: &str, since: Instant) {
        self.0
            .insert(name.into(), json!(since.elapsed().as_secs_f64()));
    }
}

/// What the Rust run left: its resolved configuration, its final loss and its last step.
struct RustRun {
    config: Value,
    final_loss: f64,
    steps: u64,
    batch: u64,
}

impl RustRun {
    fn read(run_dir: &Path, config_path: &Path) -> Result<Self> {
        let config = score::read_json(config_path)?;
        ensure!(
            config["dataset"]["kind"] == "fashion-mnist",
            "the race scores against Fashion-MNIST, but the run trains on {}",
            config["dataset"]
        );
        let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .with_context(|| format!("{}: no metrics", run_dir.display()))?;
        let (final_loss, _) =
            report::final_loss(&metrics, 100).context("the Rust run logged no metrics")?;
        let steps =
            report::last_checkpoint_step(run_dir).context("the Rust run wrote no checkpoint")?;
        let batch = config["batch_size"].as_u64().unwrap_or(0);
        Ok(Self {
            config,
            final_loss,
            steps,
            batch,
        })
    }
}

/// Builds `ddpm` in `profile` and returns its path and the seconds the build took.
pub(crate) fn build_ddpm(profile: &str) -> Result<(PathBuf, f64)> {
    eprintln!("== building ddpm ({profile} profile)");
    let started = Instant::now();
    run_checked(cargo().args(["build", "--profile", profile, "-p", "cli", "--bin", "ddpm"]))?;
    let dir = if profile == "dev" { "debug" } else { "release" };
    Ok((
        root().join("target").join(dir).join("ddpm"),
        started.elapsed().as_secs_f64(),
    ))
}

/// Fetches Fashion-MNIST and the Inception weights (nothing when they are there).
fn fetch_inputs() -> Result<()> {
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
    Ok(())
}

/// Empties `target/quality/STEM` and creates the report's folder.
fn prepare_dirs(work: &Path, out_dir: &Path) -> Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))
}

/// Runs the race and writes its report.
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
    crate::setup::setup(&root)?;
    let python = if args.no_peer {
        None
    } else {
        Some(train::peer_python(&root)?)
    };
    let (ddpm, build_seconds) = build_ddpm(&args.profile)?;
    fetch_inputs()?;
    let work = root.join("target/quality").join(&plan.stem);
    prepare_dirs(&work, &plan.out_dir)?;
    let race = Race {
        args: &args,
        data_dir: root.join("data/fashion-mnist"),
        run_dir: work.join("rust-run"),
        peer_dir: work.join("peer"),
        work,
        plan,
        root,
        ddpm,
        threads,
        python,
    };
    let started = Instant::now();
    let mut phases = Phases::default();

    // 1. and 2. Rust, then the PyTorch peer (or both at once), each for the budget.
    let trained = train::train_sides(&race, &mut phases)?;
    let rust_run = RustRun::read(&race.run_dir, &race.config_path())?;
    let peer_result = match trained.peer_seconds {
        Some(_) => score::read_json(&race.peer_dir.join("result.json"))?,
        None => Value::Null,
    };
    // 3. and 4. The reference, the floor, and the samples' scores.
    let scores = score::score_all(&race, &peer_result, &mut phases)?;

    let seconds = json!({
        "build": build_seconds,
        "after_build": started.elapsed().as_secs_f64(),
        "total": all_started.elapsed().as_secs_f64(),
        "phases": phases.0,
    });
    let report = report::Record {
        race: &race,
        date: &date,
        commit: &commit,
        trained: &trained,
        rust_run: &rust_run,
        peer_result: &peer_result,
        scores,
        seconds,
    }
    .into_json();
    let (json_path, md_path) = report::write(&race.plan, &report)?;
    eprintln!(
        "== wrote {} and {} ({:.0} s in all, {:.0} s after the build)",
        json_path.display(),
        md_path.display(),
        all_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
        assert_eq!(full.out_dir, Path::new("/repo/docs/results"));
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
}
