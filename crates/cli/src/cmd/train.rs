//! `ddpm train`: train a preset, optionally overridden by a config file and flags, with a
//! progress bar, Ctrl-C that checkpoints, a loss curve and sample pictures in the run directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use data::DatasetSpec;
use model::device::DeviceSpec;
use train::config::parse_set;
use train::trainer::{MetricsRecord, StepOutcome, TrainHooks};
use train::{Preset, RunEnd, TrainConfig, Trainer};

/// Arguments of `ddpm train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The starting configuration: seed (the notebook), ddpm-cifar10 (the paper), fashion-mnist.
    #[arg(long, default_value = "seed")]
    preset: String,
    /// A JSON file whose keys override the preset's (deep-merged; unknown keys are errors).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config value: --set optim.lr=2e-4 (JSON values; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The dataset directory (default: data/<dataset> under the current directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the run writes config.json, metrics.jsonl, checkpoints/ and samples/
    /// (default: runs/<preset>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Shortcut for --set epochs=N.
    #[arg(long)]
    epochs: Option<u64>,
    /// Shortcut for --set max_steps=N.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Shortcut for --set batch_size=N.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Shortcut for --set optim.lr=X.
    #[arg(long)]
    lr: Option<f64>,
    /// Shortcut for --set seed=N.
    #[arg(long)]
    seed: Option<u64>,
    /// libtorch intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Do not download a missing dataset; fail instead.
    #[arg(long)]
    offline: bool,
}

/// The preset (or, on resume, the saved config) with `--config`, `--set` and the shortcut flags
/// applied.
fn resolve_config(args: &TrainArgs, base: Option<TrainConfig>) -> Result<TrainConfig> {
    let base = match base {
        Some(config) => config,
        None => Preset::from_name(&args.preset)
            .context("--preset")?
            .config(),
    };
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?,
            )
        }
        None => None,
    };
    let mut sets = Vec::new();
    for text in &args.sets {
        sets.push(parse_set(text).with_context(|| format!("--set {text}"))?);
    }
    let shortcuts: [(&str, Option<serde_json::Value>); 5] = [
        ("epochs", args.epochs.map(Into::into)),
        ("max_steps", args.max_steps.map(Into::into)),
        ("batch_size", args.batch_size.map(Into::into)),
        ("optim.lr", args.lr.map(Into::into)),
        ("seed", args.seed.map(Into::into)),
    ];
    sets.extend(
        shortcuts
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
    );
    let config = base.with_overrides(file.as_ref(), &sets);
    match &args.config {
        Some(path) => {
            config.with_context(|| format!("in --config {} or the flags", path.display()))
        }
        None => config.context("in the flags"),
    }
}

/// The default directory of a dataset under `data/`, as `cargo xtask fetch-*` lays it out.
pub fn default_data_dir(spec: &DatasetSpec) -> Option<PathBuf> {
    let name = match spec {
        DatasetSpec::Cifar10 { .. } => "cifar-10-batches-bin",
        DatasetSpec::Cifar100 { .. } => "cifar-100-binary",
        DatasetSpec::FashionMnist { .. } => "fashion-mnist",
        DatasetSpec::Mnist { .. } => "mnist",
        _ => return None,
    };
    Some(Path::new("data").join(name))
}

/// Finds (and, for CIFAR and Fashion-MNIST, fetches when missing) the dataset directory.
pub fn ensure_data(spec: &DatasetSpec, given: Option<&Path>, offline: bool) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.exists() {
            bail!("--data {} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let Some(dir) = default_data_dir(spec) else {
        bail!("this dataset has no default location: pass --data DIR");
    };
    if dir.exists() {
        return Ok(dir);
    }
    let dest = Path::new("data");
    let options = fetch::FetchOptions::default();
    let fetched = match spec {
        DatasetSpec::Cifar10 { .. } if !offline => {
            eprintln!("{} is missing: fetching CIFAR-10 (as `cargo xtask fetch-cifar`)", dir.display());
            fetch::Tarball::cifar10().fetch(dest, &options)
        }
        DatasetSpec::Cifar100 { .. } if !offline => {
            eprintln!("{} is missing: fetching CIFAR-100", dir.display());
            fetch::Tarball::cifar100().fetch(dest, &options)
        }
        DatasetSpec::FashionMnist { .. } if !offline => {
            eprintln!("{} is missing: fetching Fashion-MNIST", dir.display());
            fetch::FileSet::fashion_mnist().fetch(dest, &options)
        }
        _ => bail!(
            "{} is missing: run `cargo xtask fetch-cifar` (or fetch-fashion-mnist), or pass --data DIR",
            dir.display()
        ),
    };
    fetched.with_context(|| format!("{} is missing and could not be fetched", dir.display()))
}

/// Progress bar, loss curve and messages.
struct CliHooks {
    bar: ProgressBar,
    run_dir: PathBuf,
    smoothed: Option<f64>,
    started: Instant,
    images: u64,
    batch_size: usize,
}

impl TrainHooks for CliHooks {
    fn on_start(&mut self, total_steps: u64, start_step: u64, batches_per_epoch: usize) {
        self.bar.set_length(total_steps);
        self.bar.set_position(start_step);
        self.bar.reset_eta();
        self.bar.println(format!(
            "training {} steps ({} per epoch), from step {start_step}; run directory {}",
            total_steps,
            batches_per_epoch,
            self.run_dir.display()
        ));
    }

    fn on_step(&mut self, step: u64, epoch: u64, outcome: &StepOutcome) {
        self.images += self.batch_size as u64;
        if outcome.loss.is_finite() {
            self.smoothed = Some(match self.smoothed {
                Some(s) => 0.98 * s + 0.02 * outcome.loss,
                None => outcome.loss,
            });
        }
        let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(step);
        self.bar.set_message(format!(
            "epoch {epoch} loss {:.4} {rate:.0} img/s{}",
            self.smoothed.unwrap_or(f64::NAN),
            if outcome.skipped {
                " (skipped non-finite step)"
            } else {
                ""
            }
        ));
    }

    fn on_checkpoint(&mut self, dir: &Path) {
        if let Err(err) = draw_loss_curve(&self.run_dir) {
            self.bar
                .println(format!("warning: loss curve not drawn: {err:#}"));
        }
        self.bar.println(format!("checkpoint {}", dir.display()));
    }

    fn on_metrics(&mut self, _record: &MetricsRecord) {}

    fn on_samples(&mut self, files: &[PathBuf]) {
        for f in files {
            self.bar.println(format!("samples {}", f.display()));
        }
    }

    fn message(&mut self, text: &str) {
        self.bar.println(text);
    }
}

/// Draws `loss_curve.png` from `metrics.jsonl`.
pub fn draw_loss_curve(run_dir: &Path) -> Result<()> {
    let path = run_dir.join("metrics.jsonl");
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricsRecord>(l).ok())
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.len() < 2 {
        return Ok(());
    }
    let series = [crate::plot::Series {
        label: "loss".into(),
        points,
    }];
    let chart = crate::plot::Chart {
        title: "training loss",
        x_label: "step",
        y_label: "loss",
        series: &series,
    };
    crate::plot::line_charts(&run_dir.join("loss_curve.png"), &[chart])
}

/// Runs `ddpm train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = args.device.resolve()?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&args.preset));
    let checkpoints = run_dir.join("checkpoints");
    let latest = train::checkpoint::latest(&checkpoints);
    let config = match (&latest, args.resume) {
        (None, true) => bail!("--resume: no checkpoint under {}", checkpoints.display()),
        (Some(_), false) => bail!(
            "{} already holds checkpoints: pass --resume to continue it, or another --run-dir",
            run_dir.display()
        ),
        (Some(dir), true) => {
            let state = train::checkpoint::read_state(dir)?;
            let saved: TrainConfig = serde_json::from_value(state.config)
                .with_context(|| format!("the config saved in {}", dir.display()))?;
            resolve_config(&args, Some(saved))?
        }
        (None, false) => resolve_config(&args, None)?,
    };
    let data_dir = ensure_data(&config.dataset, args.data.as_deref(), args.offline)?;
    let (dataset, report) = config
        .dataset
        .load(&data_dir)
        .with_context(|| format!("cannot load the dataset from {}", data_dir.display()))?;
    for skipped in &report.skipped {
        eprintln!("skipped {}: {}", skipped.path.display(), skipped.reason);
    }
    let batch_size = config.batch_size;
    let mut trainer = if args.resume {
        Trainer::resume(&run_dir, None, Some(config), dataset, device)?
    } else {
        Trainer::new(config, dataset, &run_dir, device)?
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("second Ctrl-C: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] step {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut hooks = CliHooks {
        bar,
        run_dir: run_dir.clone(),
        smoothed: None,
        started: Instant::now(),
        images: 0,
        batch_size,
    };
    let end = trainer.run(&mut hooks, &stop)?;
    hooks.bar.finish_and_clear();
    draw_loss_curve(&run_dir)?;
    match end {
        RunEnd::Finished => eprintln!(
            "done: {} steps; run directory {}",
            trainer.step(),
            run_dir.display()
        ),
        RunEnd::Interrupted => eprintln!(
            "stopped at step {}; continue with `ddpm train --resume --run-dir {}`",
            trainer.step(),
            run_dir.display()
        ),
    }
    Ok(())
}
