//! `ddpm train`: train a preset, optionally overridden by a config file and flags, with a
//! progress bar (plain progress lines when stderr is not a terminal), stop signals that
//! checkpoint, a locked run directory, a loss curve and sample pictures; data-parallel over
//! several processes under torchrun or `--nproc-per-node N` (see [`train::distributed`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::DeviceSpec;
use data::DatasetSpec;
use torch_ext::dist::{Distributed, LaunchEnv};
use train::config::parse_set;
use train::trainer::{MetricsRecord, NoHooks, StepOutcome, TrainHooks};
use train::EvalRecord;
use train::{Preset, RunDir, RunEnd, TrainConfig, TrainError, Trainer};

/// Arguments of `ddpm train`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = resume_help())]
pub struct TrainArgs {
    /// The starting configuration: seed (the notebook; the default), ddpm-cifar10 (the paper),
    /// fashion-mnist. Not with --resume: a run keeps the configuration it started with.
    #[arg(long)]
    preset: Option<String>,
    /// A JSON file whose keys override the preset's (deep-merged; unknown keys are errors).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config value: --set optim.lr=2e-4 (JSON values; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The dataset directory (default: data/DATASET under the current directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the run writes config.json, metrics.jsonl, checkpoints/ and samples/
    /// (default: runs/PRESET). One trainer at a time: the directory is locked.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its newest checkpoint that loads.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Continue the run in --run-dir from this checkpoint directory (a path, or a name under
    /// RUN_DIR/checkpoints such as step-00001000); implies --resume.
    #[arg(long, value_name = "DIR", conflicts_with = "overwrite")]
    resume_from: Option<PathBuf>,
    /// Start afresh in a --run-dir that holds an earlier run, deleting its config.json,
    /// metrics.jsonl, loss_curve.png, checkpoints/ and samples/.
    #[arg(long)]
    overwrite: bool,
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
    /// Train a class-conditional model for classifier-free guidance: model.num_classes becomes
    /// the dataset's number of classes (unless set), and each label is replaced by the null
    /// label with probability objective.p_uncond (default 0.1). The dataset must have labels.
    #[arg(long)]
    class_cond: bool,
    /// Shortcut for --set objective.p_uncond=P: the label dropout of --class-cond.
    #[arg(long, value_name = "P")]
    p_uncond: Option<f64>,
    /// libtorch intra-op CPU threads (default: libtorch's choice; in a data-parallel run on the
    /// CPU, that divided by the number of ranks on this machine).
    #[arg(long)]
    threads: Option<i32>,
    /// Data-parallel training on this machine: start N ranks (processes) on a free loopback
    /// port, as `torchrun --nproc-per-node N` does; one GPU each on CUDA (cuda:0 … cuda:N-1),
    /// threads/N CPU threads each on the CPU. --batch-size stays the global batch.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Seconds a data-parallel rank waits for the others (rendezvous, every collective) before
    /// the run stops with an error. Shortcut for --set distributed.timeout_secs=N (default 300).
    #[arg(long, value_name = "SECS")]
    dist_timeout: Option<u64>,
    /// How data-parallel ranks average gradients: bucketed (all-reduce after backward) or
    /// overlap (DDP's Reducer, during backward). Shortcut for --set distributed.grad_sync=MODE.
    #[arg(long, value_name = "MODE")]
    grad_sync: Option<String>,
    /// cuDNN's autotuner on CUDA: times the convolution algorithms once per shape and keeps
    /// the fastest (faster steps; last-bit differences between processes). No effect on the CPU.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    cudnn_benchmark: bool,
    /// Run each training step as one CUDA graph, replayed with a single launch after a few
    /// eager warm-up steps (CUDA only; needs a build with the `cuda` feature; not with
    /// distributed training).
    #[arg(long)]
    cuda_graph: bool,
    /// When stderr is not a terminal (batch jobs, nohup, CI): print a progress line every N
    /// steps instead of the progress bar.
    #[arg(long, default_value_t = 100, value_name = "N")]
    progress_every: u64,
    /// Do not download a missing dataset (or, with --eval-every, the Inception); fail instead.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    fid: super::fid_loop::FidLoopArgs,
}

/// The rules of `--resume`, at the end of `ddpm train --help`.
fn resume_help() -> String {
    format!(
        "Interrupting and resuming:
  SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGUSR1 finish the current step, write a checkpoint and
  exit 0; a second one exits at once. The run directory is locked: a second `ddpm train` on it
  fails. `--resume` continues from the newest checkpoint that loads (a damaged newer one is
  skipped with a warning); `--resume-from DIR` picks one.
  On resume only these settings may change: {}, and the flags --device, --threads and --cudnn-benchmark.

Multiple processes (data-parallel):
  `ddpm train --nproc-per-node N …` starts N ranks on this machine; under
  `torchrun --no-python --nproc_per_node=N ddpm train …` (one or many machines) each process reads
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. --batch-size is the global batch;
  rank 0 writes the run's files. A stop signal on any rank stops all of them after the same step,
  with one checkpoint. When a rank dies or hangs, the others stop within --dist-timeout seconds.
  --resume works with any number of ranks (bit for bit with the same number, on the CPU).",
        train::config::RESUME_MUTABLE.join(", ")
    )
}

/// The preset without --preset.
const DEFAULT_PRESET: &str = "seed";

/// The preset (or, on resume, the saved config) with `--config`, `--set` and the shortcut flags
/// applied.
fn resolve_config(args: &TrainArgs, base: Option<TrainConfig>) -> Result<TrainConfig> {
    let base = match base {
        Some(config) => config,
        None => Preset::from_name(args.preset.as_deref().unwrap_or(DEFAULT_PRESET))
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
    let shortcuts: [(&str, Option<serde_json::Value>); 8] = [
        ("epochs", args.epochs.map(Into::into)),
        ("max_steps", args.max_steps.map(Into::into)),
        ("batch_size", args.batch_size.map(Into::into)),
        ("optim.lr", args.lr.map(Into::into)),
        ("seed", args.seed.map(Into::into)),
        ("objective.p_uncond", args.p_uncond.map(Into::into)),
        (
            "distributed.timeout_secs",
            args.dist_timeout.map(Into::into),
        ),
        (
            "distributed.grad_sync",
            args.grad_sync.clone().map(Into::into),
        ),
    ];
    sets.extend(
        shortcuts
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
    );
    sets.extend(args.fid.sets());
    let resolve = |sets: &[(String, serde_json::Value)]| {
        let config = base.with_overrides(file.as_ref(), sets);
        match &args.config {
            Some(path) => {
                config.with_context(|| format!("in --config {} or the flags", path.display()))
            }
            None => config.context("in the flags"),
        }
    };
    // --eval-sampler/--eval-steps depend on the schedule's T, known once the rest is resolved
    // (with FID in the loop off for that, so that the sampler they replace is not checked).
    let mut without_eval = sets.clone();
    without_eval.push(("eval_every".to_string(), 0.into()));
    match args.fid.sampler_set(&resolve(&without_eval)?)? {
        Some(set) => {
            sets.push(set);
            resolve(&sets)
        }
        None => resolve(&sets),
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

/// Progress bar (or, when stderr is not a terminal, plain progress lines), loss curve and
/// messages.
struct CliHooks {
    /// The progress bar on a terminal; `None` when stderr is a file or a pipe, where indicatif
    /// draws nothing and prints nothing.
    bar: Option<ProgressBar>,
    run_dir: PathBuf,
    /// The loss of the metrics lines, smoothed.
    smoothed: Option<f64>,
    /// The step of the last metrics line, and the steps skipped by then.
    metrics_step: u64,
    skipped_steps: u64,
    started: Instant,
    images: u64,
    batch_size: usize,
    /// Plain progress lines every this many steps.
    progress_every: u64,
    total_steps: u64,
    start_step: u64,
}

impl CliHooks {
    /// A line for the user: above the bar on a terminal, else straight to stderr.
    fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1h02m03s`, `4m05s` or `6s`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

impl TrainHooks for CliHooks {
    fn on_start(&mut self, total_steps: u64, start_step: u64, batches_per_epoch: usize) {
        self.total_steps = total_steps;
        self.start_step = start_step;
        self.metrics_step = start_step;
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.reset_eta();
        }
        self.say(&format!(
            "training {} steps ({} per epoch), from step {start_step}; run directory {}",
            total_steps,
            batches_per_epoch,
            self.run_dir.display()
        ));
    }

    fn on_step(&mut self, step: u64, epoch: u64, _outcome: &StepOutcome) {
        // The loss and the skips come from the metrics lines (`on_metrics`): reading the step's
        // outcome here would make every step wait for the device.
        self.images += self.batch_size as u64;
        let elapsed = self.started.elapsed();
        let rate = self.images as f64 / elapsed.as_secs_f64().max(1e-9);
        let skipped = if self.skipped_steps > 0 {
            format!(" ({} non-finite steps skipped)", self.skipped_steps)
        } else {
            String::new()
        };
        // No metrics line yet (the first `log_every` steps): a dash, not "NaN", which reads as a
        // diverged run.
        let loss = self
            .smoothed
            .map_or_else(|| "–".to_string(), |l| format!("{l:.4}"));
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!(
                    "epoch {epoch} loss {loss} {rate:.0} img/s{skipped}"
                ));
            }
            None => {
                let first = step == self.start_step + 1;
                if first
                    || step == self.total_steps
                    || step.is_multiple_of(self.progress_every.max(1))
                {
                    let done = step - self.start_step;
                    let left = self.total_steps.saturating_sub(step);
                    let eta = elapsed.mul_f64(left as f64 / done.max(1) as f64);
                    eprintln!(
                        "step {step}/{} ({:.1}%) epoch {epoch} loss {loss} {rate:.0} img/s elapsed {} ETA {}{skipped}",
                        self.total_steps,
                        100.0 * step as f64 / self.total_steps.max(1) as f64,
                        format_duration(elapsed),
                        format_duration(eta),
                    );
                }
            }
        }
    }

    fn on_checkpoint(&mut self, dir: &Path) {
        if let Err(err) = draw_loss_curve(&self.run_dir) {
            self.say(&format!("warning: loss curve not drawn: {err:#}"));
        }
        self.say(&format!("checkpoint {}", dir.display()));
    }

    fn on_metrics(&mut self, record: &MetricsRecord) {
        // The line's loss is the mean of its window of steps: weigh it as that many steps of a
        // per-step average with a memory of about 50 steps.
        let steps = record.step.saturating_sub(self.metrics_step).max(1);
        self.metrics_step = record.step;
        if record.loss.is_finite() {
            let keep = 0.98f64.powi(steps.min(10_000) as i32);
            self.smoothed = Some(match self.smoothed {
                Some(s) => keep * s + (1.0 - keep) * record.loss,
                None => record.loss,
            });
        }
        self.skipped_steps = record.skipped_steps;
    }

    fn on_evaluation(&mut self, record: &EvalRecord) {
        let kid = record
            .kid
            .map_or_else(String::new, |k| format!(", KID {k:.5}"));
        let best = if record.best {
            " (new best: checkpoints/best)"
        } else {
            ""
        };
        self.say(&format!(
            "step {}: FID {:.4}{kid} of {} samples (sampled in {:.1} s, scored in {:.1} s){best}",
            record.step, record.fid, record.n_samples, record.sample_seconds, record.score_seconds
        ));
        if let Err(err) = draw_loss_curve(&self.run_dir) {
            self.say(&format!("warning: loss curve not drawn: {err:#}"));
        }
    }

    fn on_samples(&mut self, files: &[PathBuf]) {
        for f in files {
            self.say(&format!("samples {}", f.display()));
        }
    }

    fn message(&mut self, text: &str) {
        self.say(text);
    }
}

/// What FID in the loop will do.
fn report_fid_loop(c: &TrainConfig, world_size: usize) {
    eprintln!(
        "FID in the loop: every {} steps and at the end, {} samples with the EMA weights ({}); \
         lowest FID in checkpoints/best",
        c.eval_every,
        c.eval_samples,
        describe_sampler(&c.eval_sampler)
    );
    if world_size > 1 {
        eprintln!(
            "FID in the loop: rank 0 samples and scores alone while the other ranks wait at a \
             barrier of --dist-timeout ({} s): raise it if an evaluation takes longer",
            c.distributed.timeout_secs
        );
    }
}

/// The best checkpoint a resumed run has.
fn report_best(trainer: &Trainer) {
    if let Some(best) = trainer.best() {
        match trainer.best_is_comparable() {
            Some(false) => eprintln!(
                "the best checkpoint so far (FID {:.4} at step {}) was scored with other samples, \
                 sampler or reference: the next evaluation replaces it",
                best.fid, best.step
            ),
            _ => eprintln!(
                "the best checkpoint so far: FID {:.4} at step {}",
                best.fid, best.step
            ),
        }
    }
}

/// `DDIM, 50 steps` and the like.
fn describe_sampler(sampler: &sample::SamplerConfig) -> String {
    match sampler {
        sample::SamplerConfig::Ddpm { variance } => format!("DDPM, all steps, {variance:?}"),
        sample::SamplerConfig::Ddim { steps, eta, .. } => format!("DDIM, {steps} steps, eta {eta}"),
        sample::SamplerConfig::DpmSolverPp { steps, .. } => format!("DPM-Solver++, {steps} steps"),
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
    // FID in the loop's lines, the ones with `fid`.
    let fids: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok())
        .filter(|r| r.fid.is_finite())
        .map(|r| (r.step as f64, r.fid))
        .collect();
    let series = [crate::plot::Series {
        label: "loss".into(),
        points,
    }];
    let mut charts = vec![crate::plot::Chart {
        title: "training loss",
        x_label: "step",
        y_label: "loss",
        series: &series,
    }];
    let fid_series = [crate::plot::Series {
        label: "FID".into(),
        points: fids,
    }];
    if !fid_series[0].points.is_empty() {
        charts.push(crate::plot::Chart {
            title: "FID of the EMA samples (lower is better)",
            x_label: "step",
            y_label: "FID",
            series: &fid_series,
        });
    }
    crate::plot::line_charts(&run_dir.join("loss_curve.png"), &charts)
}

/// `--resume-from DIR` as a checkpoint directory: the path itself, or a name under
/// `<run>/checkpoints`.
fn resume_from_dir(dir: &Path, run_dir: &Path) -> Result<PathBuf> {
    if dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    let under = run_dir.join(train::checkpoint::CHECKPOINTS_DIR).join(dir);
    if dir.is_relative() && under.is_dir() {
        return Ok(under);
    }
    bail!(
        "--resume-from {}: no such checkpoint directory (nor {})",
        dir.display(),
        under.display()
    )
}

/// The configuration saved in `from`, or in the newest checkpoint under `run_dir` whose
/// `state.json` reads (the trainer then loads that one or an older one).
fn saved_config(run_dir: &Path, from: Option<&Path>) -> Result<TrainConfig> {
    let parse = |dir: &Path| -> Result<TrainConfig, TrainError> {
        let state = train::checkpoint::read_state(dir)?;
        serde_json::from_value(state.config).map_err(|e| TrainError::Checkpoint {
            path: dir.join(train::checkpoint::STATE_FILE),
            message: format!("config: {e}"),
        })
    };
    if let Some(dir) = from {
        return Ok(parse(dir)?);
    }
    let root = run_dir.join(train::checkpoint::CHECKPOINTS_DIR);
    let all = train::checkpoint::list(&root);
    if all.is_empty() {
        bail!(
            "--resume: no checkpoint under {}: start a new run without --resume",
            root.display()
        );
    }
    let mut tried = Vec::new();
    for (_, dir) in all.into_iter().rev() {
        match parse(&dir) {
            Ok(config) => return Ok(config),
            Err(err) => tried.push(train::SkippedCheckpoint {
                dir,
                reason: err.to_string(),
            }),
        }
    }
    Err(TrainError::NoLoadableCheckpoint { dir: root, tried }.into())
}

/// Runs `ddpm train`: as the launcher of `--nproc-per-node` ranks, as one rank of a run that
/// torchrun (or the launcher) started, or alone.
pub fn run(args: TrainArgs) -> Result<()> {
    let launched = crate::launch::is_launched_rank();
    if let Some(n) = args.nproc_per_node {
        if !launched {
            return crate::launch::launch(n, args.device);
        }
    }
    let launch = LaunchEnv::from_env().context("the torchrun variables")?;
    let Some(env) = launch else {
        return run_rank(args, None);
    };
    let (rank, world) = (env.rank, env.world_size);
    run_rank(args, Some(env)).map_err(|err| {
        // Name the rank, unless the error already does.
        let named = err.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<TrainError>(),
                Some(TrainError::Distributed { .. } | TrainError::Rendezvous { rank: Some(_), .. })
            )
        });
        if named {
            err
        } else {
            err.context(format!("rank {rank} of {world}"))
        }
    })
}

/// One process of `ddpm train`; `env` places it in a data-parallel run.
fn run_rank(args: TrainArgs, env: Option<LaunchEnv>) -> Result<()> {
    if args.nproc_per_node.is_some_and(|n| n > 1)
        && env.is_some()
        && !crate::launch::is_launched_rank()
    {
        bail!(
            "--nproc-per-node starts ranks itself, but WORLD_SIZE is set (torchrun?): drop \
             --nproc-per-node, or run `ddpm train --nproc-per-node N` outside torchrun"
        );
    }
    let device = crate::launch::rank_device(args.device, env.as_ref())?;
    crate::launch::set_rank_threads(args.threads, env.as_ref(), device);
    // Rank 0 (or a process alone) writes the run's files.
    let writer = env.as_ref().is_none_or(|e| e.rank == 0);
    let resume = args.resume || args.resume_from.is_some();
    if resume && args.preset.is_some() {
        bail!(
            "--preset cannot be combined with --resume: a resumed run keeps the configuration it \
             started with (see `ddpm train --help` for the settings that may change)"
        );
    }
    crate::runtime::configure_cudnn(device, args.cudnn_benchmark);
    if args.cuda_graph {
        train::trainer::check_cuda_graph(device).context("--cuda-graph")?;
        let world: usize = std::env::var("WORLD_SIZE")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(1);
        if world > 1 {
            bail!("--cuda-graph: not with distributed training yet (WORLD_SIZE = {world}): drop --cuda-graph");
        }
    }
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        Path::new("runs").join(args.preset.as_deref().unwrap_or(DEFAULT_PRESET))
    });
    if resume && !run_dir.is_dir() {
        bail!(
            "--resume: no checkpoint under {} ({} does not exist): pass the --run-dir of the run \
             to continue, or start a new run without --resume",
            run_dir.join(train::checkpoint::CHECKPOINTS_DIR).display(),
            run_dir.display()
        );
    }
    // A fresh run's flags are checked before anything touches the disk.
    let fresh = if resume {
        None
    } else {
        Some(resolve_config(&args, None)?)
    };
    // The lock comes before anything is written, and before the run's files are looked at. The
    // other ranks of a data-parallel run leave the directory to rank 0.
    let run = if writer {
        RunDir::lock(&run_dir)?
    } else {
        RunDir::follow(&run_dir)
    };
    let (config, from) = match fresh {
        Some(config) => {
            if writer && !args.overwrite {
                run.ensure_fresh()?;
            }
            (config, None)
        }
        None => {
            let from = match &args.resume_from {
                Some(dir) => Some(resume_from_dir(dir, &run_dir)?),
                None => None,
            };
            let saved = saved_config(&run_dir, from.as_deref())?;
            if args.class_cond && saved.model.num_classes().is_none() {
                bail!(
                    "--class-cond: the run in {} is unconditional, and a resumed run keeps its \
                     model: start a new run (another --run-dir, or --overwrite) with --class-cond",
                    run_dir.display()
                );
            }
            let config = resolve_config(&args, Some(saved.clone()))?;
            for change in saved.check_resume(&config)? {
                if writer {
                    eprintln!("resume changes {change}");
                }
            }
            (config, from)
        }
    };
    if let Some(env) = &env {
        if !config.batch_size.is_multiple_of(env.world_size) {
            bail!(
                "--batch-size {} is the global batch and does not split over {} ranks: pick a \
                 multiple of {}",
                config.batch_size,
                env.world_size,
                env.world_size
            );
        }
    }
    // The ranks of one machine would download into the same folder at once: a data-parallel
    // run expects its data in place.
    let offline = args.offline || env.is_some();
    // FID in the loop: the Inception is there (or fetched) and loads before any data is read,
    // so that a missing file fails now, not at the first evaluation. Rank 0 alone scores.
    let fid = match writer && config.eval_every > 0 {
        true => Some(args.fid.prepare(offline, device)?),
        false => None,
    };
    let data_dir = ensure_data(&config.dataset, args.data.as_deref(), offline)?;
    let (dataset, report) = config
        .dataset
        .load(&data_dir)
        .with_context(|| format!("cannot load the dataset from {}", data_dir.display()))?;
    let dataset = Arc::new(dataset);
    if writer {
        for skipped in &report.skipped {
            eprintln!("skipped {}: {}", skipped.path.display(), skipped.reason);
        }
    }
    let mut config = config;
    if args.class_cond && config.model.num_classes().is_none() {
        let k = dataset.n_classes();
        if k == 0 {
            bail!(
                "--class-cond: the {} dataset in {} has no class labels (an image folder has \
                 classes when its images sit in one sub-folder per class): train without \
                 --class-cond",
                config.dataset.name(),
                data_dir.display()
            );
        }
        config.model.set_num_classes(Some(k as i64));
    }
    if writer {
        if let Some(k) = config.model.num_classes() {
            let names = dataset.class_names();
            eprintln!(
                "class-conditional: {k} classes ({}), label dropout p_uncond = {}",
                if names.is_empty() {
                    "unnamed".to_string()
                } else {
                    names.join(", ")
                },
                config.objective.p_uncond
            );
        }
    }
    let dist = match env {
        // As a TrainError, which names the rank (see `run`).
        Some(env) => Some(
            Distributed::connect(env, device, config.distributed.timeout())
                .map_err(TrainError::from)?,
        ),
        None => None,
    };
    let world_size = dist.as_ref().map_or(1, Distributed::world_size);
    let batch_size = config.batch_size;
    let mut trainer = if resume {
        Trainer::resume_distributed(
            run,
            from.as_deref(),
            Some(config),
            dataset.clone(),
            device,
            dist,
        )?
    } else if args.overwrite {
        let (trainer, deleted) =
            Trainer::overwrite_distributed(run, config, dataset.clone(), device, dist)?;
        if !deleted.is_empty() {
            let names: Vec<String> = deleted
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            eprintln!(
                "--overwrite: deleted {} of the earlier run in {}",
                names.join(", "),
                run_dir.display()
            );
        }
        trainer
    } else {
        Trainer::create_distributed(run, config, dataset.clone(), device, dist)?
    };
    if writer && world_size > 1 {
        eprintln!(
            "data-parallel: {world_size} ranks, {} images each per step (global batch {}), {}",
            batch_size / world_size,
            batch_size,
            match device {
                tch::Device::Cuda(_) => "NCCL, one GPU per rank".to_string(),
                _ => format!("Gloo, {} CPU thread(s) per rank", tch::get_num_threads()),
            }
        );
    }
    if writer {
        for skipped in trainer.skipped_checkpoints() {
            eprintln!(
                "warning: skipped checkpoint {}, which does not load: {}",
                skipped.dir.display(),
                skipped.reason
            );
        }
        if let Some(before) = trainer.resumed_world_size().filter(|&w| w != world_size) {
            eprintln!(
                "resuming a run trained on {before} rank(s) with {world_size}: the global batch \
                 ({batch_size}), the data order and the noise stay the same; the gradient sums \
                 round differently, dropout masks and BatchNorm batch statistics change"
            );
        }
    }
    if args.cuda_graph {
        trainer.enable_cuda_graph().context("--cuda-graph")?;
    }
    if let Some(prepared) = fid {
        report_fid_loop(trainer.config(), world_size);
        let scorer = prepared.into_scorer(&dataset, &data_dir, trainer.config())?;
        trainer.set_scorer(Box::new(scorer));
        report_best(&trainer);
    }
    drop(dataset);

    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::stop_on_signals(stop.clone(), writer)?;
    if !writer {
        // Rank 0 reports progress, checkpoints and the summary for all ranks.
        trainer.run(&mut NoHooks, &stop)?;
        return Ok(());
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] step {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut hooks = CliHooks {
        bar,
        run_dir: run_dir.clone(),
        smoothed: None,
        metrics_step: 0,
        skipped_steps: 0,
        started: Instant::now(),
        images: 0,
        batch_size,
        progress_every: args.progress_every,
        total_steps: 0,
        start_step: 0,
    };
    let end = trainer.run(&mut hooks, &stop);
    hooks.finish();
    let end = end?;
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
