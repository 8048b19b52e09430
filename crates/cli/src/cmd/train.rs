//! `ddpm train`: train a preset, optionally overridden by a config file and flags, with a
//! progress bar (plain progress lines when stderr is not a terminal), stop signals that
//! checkpoint, a locked run directory, a loss curve and sample pictures; data-parallel over
//! several processes under torchrun or `--nproc-per-node N` (see [`train::distributed`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::device::DeviceSpec;
use torch_ext::dist::{DistError, LaunchEnv};
use train::config::parse_set;
use train::{OpenOptions, Preset, RunDir, Start, TrainConfig, TrainError, Trainer};

/// Arguments of `ddpm train`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = resume_help())]
pub struct TrainArgs {
    /// The starting configuration: seed (the notebook; the default), ddpm-cifar10 (the paper),
    /// fashion-mnist, fashion-mnist-learned (its learned-variance variant), and the paper's 256² runs on an image folder (--data DIR):
    /// ddpm-church-256, ddpm-bedroom-256, ddpm-cat-256, ddpm-celebahq-256. Not with --resume: a run keeps the configuration it started with.
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
    /// Fine-tune: start the network and its EMA from the weights of a run, a checkpoint or a
    /// diffusers folder (the EMA from its EMA weights where it has them), with a fresh
    /// optimizer. The network, schedule and prediction are the source's: a --set or --config
    /// value that differs is refused naming the key, but for model.dropout and, with
    /// --class-cond, model.num_classes (the class embedding then starts at zero). The run's
    /// config.json records the source.
    #[arg(long, value_name = "SRC", conflicts_with_all = ["resume", "resume_from"])]
    init_from: Option<PathBuf>,
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
    /// Gradient accumulation: each step sums K micro-batches of batch-size / (K · ranks)
    /// images, the step the whole batch takes in less memory. Shortcut for --set grad_accum=K.
    #[arg(long, value_name = "K")]
    grad_accum: Option<usize>,
    /// f32, bf16 (autocast on CUDA; f32 on the CPU) or fp16 (autocast on CUDA and the CPU, with
    /// a dynamic loss scale as torch.amp.GradScaler). Shortcut for --set precision=P.
    #[arg(long, value_name = "P")]
    precision: Option<String>,
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
    /// Shortcut for --set objective.p_uncond=P: the label dropout of --class-cond, in [0, 1].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
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
    /// With --nproc-per-node: when a rank dies, start all the ranks again, at most R times;
    /// they continue from the run's newest complete checkpoint (torchrun's --max-restarts does
    /// the same for the ranks it starts). 0: the run stops, naming the rank.
    #[arg(long, value_name = "R", default_value_t = 0)]
    max_restarts: u32,
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
    /// Activation checkpointing: each residual and attention block keeps only its input in the
    /// forward pass and recomputes its activations in backward (less memory, about one more
    /// forward pass of time; same results). Shortcut for --set model.gradient_checkpointing=true.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Write no TensorBoard event files (by default they go to RUN_DIR/tb/, for `tensorboard
    /// --logdir runs/`). Shortcut for --set tensorboard=false.
    #[arg(long)]
    no_tensorboard: bool,
    /// When stderr is not a terminal (batch jobs, nohup, CI): print a progress line every N
    /// steps instead of the progress bar.
    #[arg(long, default_value_t = 100, value_name = "N")]
    progress_every: u64,
    /// Do not download a missing dataset (or, with --eval-every, the Inception); fail instead.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    fid: crate::fid_loop::FidLoopArgs,
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
        None => {
            let preset = Preset::from_name(args.preset.as_deref().unwrap_or(DEFAULT_PRESET))
                .context("--preset")?
                .config();
            match &args.init_from {
                Some(src) => {
                    let spec = sample::PipelineSpec::resolve(src, sample::Weights::Ema)
                        .with_context(|| format!("--init-from {}", src.display()))?;
                    preset.starting_from(src, &spec)
                }
                None => preset,
            }
        }
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
    let shortcuts: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("epochs", args.epochs.map(Into::into)),
        ("max_steps", args.max_steps.map(Into::into)),
        ("batch_size", args.batch_size.map(Into::into)),
        ("grad_accum", args.grad_accum.map(Into::into)),
        ("precision", args.precision.clone().map(Into::into)),
        ("optim.lr", args.lr.map(Into::into)),
        ("seed", args.seed.map(Into::into)),
        ("objective.p_uncond", args.p_uncond.map(Into::into)),
        (
            "model.gradient_checkpointing",
            args.gradient_checkpointing.then_some(true.into()),
        ),
        ("tensorboard", args.no_tensorboard.then_some(false.into())),
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

/// Runs `ddpm train`: as the launcher of `--nproc-per-node` ranks, as one rank of a run that
/// torchrun (or the launcher) started, or alone.
pub fn run(mut args: TrainArgs) -> Result<()> {
    args.init_from = crate::checkpoint_arg::local_opt(&args.init_from, "--init-from")?;
    let launched = crate::launch::is_launched_rank();
    if let Some(n) = args.nproc_per_node {
        if !launched {
            // A fresh run's batch split is known now: refused once, before any rank starts.
            if !args.resumes() {
                check_split(&resolve_config(&args, None)?, n)?;
            }
            let run_dir = args.run_dir();
            return crate::launch::launch_with(crate::launch::LaunchPlan {
                work: "training",
                n,
                device: args.device,
                max_restarts: args.max_restarts,
                run_dir: Some(&run_dir),
            });
        }
    }
    if args.max_restarts > 0 && !launched {
        bail!(
            "--max-restarts restarts the ranks that --nproc-per-node N starts: add \
             --nproc-per-node (under torchrun, pass torchrun's own --max-restarts)"
        );
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
                Some(TrainError::Dist(
                    DistError::Collective { .. } | DistError::Rendezvous { rank: Some(_), .. }
                ))
            )
        });
        if named {
            err
        } else {
            err.context(format!("rank {rank} of {world}"))
        }
    })
}

/// The global batch splits over `world_size` ranks, and each rank's share into `grad_accum`
/// micro-batches; otherwise the numbers are named.
fn check_split(config: &TrainConfig, world_size: usize) -> Result<()> {
    if !config.batch_size.is_multiple_of(world_size) {
        bail!(
            "--batch-size {} is the global batch and does not split over {world_size} ranks: \
             pick a multiple of {world_size}",
            config.batch_size,
        );
    }
    config
        .check_micro_batch(world_size)
        .context("--batch-size and --grad-accum")?;
    Ok(())
}

/// The checks of the flags that need no file: `--preset` on resume, `--cuda-graph` on this
/// device and world size.
fn check_flags(args: &TrainArgs, device: tch::Device) -> Result<()> {
    if let Some(p) = args.p_uncond.filter(|p| !(0.0..=1.0).contains(p)) {
        bail!(
            "--p-uncond {p} is invalid: it is the probability of dropping a label, in [0, 1] \
             (0.1 drops one label in ten)"
        );
    }
    if args.resumes() && args.preset.is_some() {
        bail!(
            "--preset cannot be combined with --resume: a resumed run keeps the configuration it \
             started with (see `ddpm train --help` for the settings that may change)"
        );
    }
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
    Ok(())
}

impl TrainArgs {
    /// Whether the run continues from a checkpoint (`--resume` or `--resume-from`).
    fn resumes(&self) -> bool {
        self.resume || self.resume_from.is_some()
    }

    /// `--run-dir`, or `runs/PRESET`.
    fn run_dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| {
            Path::new("runs").join(self.preset.as_deref().unwrap_or(DEFAULT_PRESET))
        })
    }
}

/// The run directory (locked by the writer, followed by the other ranks) and how the run
/// starts in it, with the configuration resolved from the preset or the saved one and the flags.
/// A fresh run's flags are checked before anything touches the disk; the lock comes before the
/// run's files are looked at.
fn plan_start(args: &TrainArgs, run_dir: &Path, writer: bool) -> Result<(RunDir, Start)> {
    let restart = crate::elastic::restart_count()?;
    if restart > 0 && !args.resumes() {
        return plan_restart(args, run_dir, writer, restart);
    }
    if !args.resumes() {
        let config = resolve_config(args, None)?;
        check_p_uncond(args, &config)?;
        let run = lock_run_dir(run_dir, writer)?;
        if args.overwrite {
            return Ok((run, Start::Overwrite(config)));
        }
        if writer {
            run.ensure_fresh()?;
        }
        return Ok((run, Start::Fresh(config)));
    }
    if !run_dir.is_dir() {
        bail!(
            "--resume: no checkpoint under {} ({} does not exist): pass the --run-dir of the run \
             to continue, or start a new run without --resume",
            run_dir.join(train::checkpoint::CHECKPOINTS_DIR).display(),
            run_dir.display()
        );
    }
    let run = lock_run_dir(run_dir, writer)?;
    let from = match &args.resume_from {
        Some(dir) => Some(resume_from_dir(dir, run_dir)?),
        None => None,
    };
    let saved = match train::trainer::saved_config(run_dir, from.as_deref()) {
        Err(err @ TrainError::NoCheckpoint { .. }) => return Err(err).context("--resume"),
        saved => saved?,
    };
    if args.class_cond && saved.model.num_classes().is_none() {
        bail!(
            "--class-cond: the run in {} is unconditional, and a resumed run keeps its \
             model: start a new run (another --run-dir, or --overwrite) with --class-cond",
            run_dir.display()
        );
    }
    let config = resolve_config(args, Some(saved.clone()))?;
    check_p_uncond(args, &config)?;
    for change in saved.check_resume(&config)? {
        if writer {
            eprintln!("resume changes {change}");
        }
    }
    let config = Some(config);
    Ok((run, Start::Resume { from, config }))
}

/// [`plan_start`] for a rank that was restarted (`TORCHELASTIC_RESTART_COUNT` > 0) without
/// `--resume`: this run's directory continues from its newest complete checkpoint (or starts
/// over when it has none yet); another run's is refused ([`crate::elastic::restart_plan`]).
fn plan_restart(
    args: &TrainArgs,
    run_dir: &Path,
    writer: bool,
    restart: u64,
) -> Result<(RunDir, Start)> {
    let mut config = resolve_config(args, None)?;
    check_p_uncond(args, &config)?;
    let run = lock_run_dir(run_dir, writer)?;
    let saved = crate::elastic::saved_run_config(run_dir)?;
    if let Some(saved) = &saved {
        // --class-cond takes the number of classes from the dataset, as the first start did.
        if args.class_cond && config.model.num_classes().is_none() {
            config.model.set_num_classes(saved.model.num_classes());
        }
    }
    Ok(
        match crate::elastic::restart_plan(run_dir, restart, saved.as_ref(), &config)? {
            None => {
                if writer {
                    run.ensure_fresh()?;
                }
                (run, Start::Fresh(config))
            }
            Some(true) => (
                run,
                Start::Resume {
                    from: None,
                    config: Some(config),
                },
            ),
            Some(false) => (run, Start::Overwrite(config)),
        },
    )
}

/// `--p-uncond` only for a class-conditional run (`--class-cond`, or classes in the
/// configuration): elsewhere there are no labels to drop.
fn check_p_uncond(args: &TrainArgs, config: &TrainConfig) -> Result<()> {
    if args.p_uncond.is_some() && !args.class_cond && config.model.num_classes().is_none() {
        bail!(
            "--p-uncond is the label dropout of a class-conditional run, and this run is \
             unconditional: add --class-cond, or drop --p-uncond"
        );
    }
    Ok(())
}

/// The run directory as this process holds it: locked by the writer, followed by the others.
fn lock_run_dir(run_dir: &Path, writer: bool) -> Result<RunDir> {
    Ok(match writer {
        true => RunDir::lock(run_dir)?,
        false => RunDir::follow(run_dir),
    })
}

/// The configuration a [`Start`] trains with.
fn start_config(start: &mut Start) -> &mut TrainConfig {
    match start {
        Start::Fresh(config) | Start::Overwrite(config) => config,
        Start::Resume { config, .. } => config.as_mut().expect("a resolved configuration"),
    }
}

/// Loads the dataset of `config` (fetching it when missing and allowed), and for
/// `--class-cond` sets `model.num_classes` to its number of classes. Returns the dataset and
/// its directory.
fn load_dataset(
    args: &TrainArgs,
    config: &mut TrainConfig,
    offline: bool,
    writer: bool,
) -> Result<(data::Source, PathBuf)> {
    let data_dir = crate::datasets::ensure_data(&config.dataset, args.data.as_deref(), offline)?;
    // LMDB and TFRecord datasets stream: opened here, decoded by the loader's workers.
    let (dataset, report) = config
        .dataset
        .open(&data_dir)
        .with_context(|| format!("cannot load the dataset from {}", data_dir.display()))?;
    if writer {
        for skipped in &report.skipped {
            eprintln!("skipped {}: {}", skipped.path.display(), skipped.reason);
        }
    }
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
    // Announced only when the labels fit; otherwise the trainer refuses, naming both counts.
    let labels_fit = |k: i64| dataset.n_classes() > 0 && i64::from(dataset.max_label()) < k;
    if writer {
        if let Some(k) = config.model.num_classes().filter(|&k| labels_fit(k)) {
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
    Ok((dataset, data_dir))
}

/// What opening the run did that the user should know: deleted files, the ranks, skipped
/// checkpoints, a changed world size.
fn report_open(trainer: &Trainer, run_dir: &Path, device: tch::Device) {
    let deleted = trainer.deleted_files();
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
    let (world_size, batch_size) = (trainer.world_size(), trainer.config().batch_size);
    if world_size > 1 {
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
    if trainer.resumed_verification() == Some(train::digest::Verified::Unverified) {
        eprintln!(
            "note: resumed from a checkpoint written before checkpoints had digests: its files \
             are unverified"
        );
    }
    for skipped in trainer.skipped_checkpoints() {
        eprintln!(
            "warning: skipped checkpoint {}, which does not load: {}",
            skipped.dir.display(),
            skipped.reason
        );
    }
    if let Some(init) = trainer.init_report() {
        eprintln!(
            "--init-from: the network starts from {}, its EMA from {}; the optimizer starts fresh",
            init.weights_file.display(),
            init.ema_file.display()
        );
        if !init.zeroed.is_empty() {
            eprintln!(
                "--init-from: the source has no {} (it is unconditional): added, initialised to \
                 zeros, so every label starts as the source's unconditional network",
                init.zeroed.join(", ")
            );
        }
    }
    if let Some(before) = trainer.resumed_world_size().filter(|&w| w != world_size) {
        eprintln!(
            "resuming a run trained on {before} rank(s) with {world_size}: the global batch \
             ({batch_size}), the data order and the noise stay the same; the gradient sums \
             round differently, dropout masks and BatchNorm batch statistics change"
        );
    }
}

/// One process of `ddpm train`; `env` places it in a data-parallel run.
/// The run directory a fresh start makes, removed again when the start fails before the
/// trainer is open while it holds nothing but its lock file (dropped after the lock is released,
/// so declared before the `RunDir`). A directory that existed before is never removed.
struct MadeRunDir(Option<PathBuf>);

impl MadeRunDir {
    /// Armed when this process writes the run and `dir` does not exist yet.
    fn arm(dir: &Path, writer: bool) -> Self {
        Self((writer && dir.symlink_metadata().is_err()).then(|| dir.to_path_buf()))
    }

    /// The trainer is open: the directory is the run's.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for MadeRunDir {
    fn drop(&mut self) {
        let Some(dir) = &self.0 else { return };
        let only_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
                .is_ok_and(|names| names == [train::run_dir::LOCK_FILE])
        });
        if only_lock {
            let _ = std::fs::remove_file(dir.join(train::run_dir::LOCK_FILE));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

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
    check_flags(&args, device)?;
    crate::runtime::configure_cudnn(device, args.cudnn_benchmark);
    let run_dir = args.run_dir();
    let mut made_dir = MadeRunDir::arm(&run_dir, writer);
    let (run, mut start) = plan_start(&args, &run_dir, writer)?;
    let config = start_config(&mut start);
    let gradient_checkpointing = config.model.gradient_checkpointing();
    torch_ext::host_memory::configure(
        device,
        torch_ext::host_memory::Work::Training {
            gradient_checkpointing,
        },
    );
    if let Some(env) = &env {
        // Before any rank loads data.
        check_split(config, env.world_size)?;
    }
    // The ranks of one machine would download into the same folder at once: a data-parallel
    // run expects its data in place.
    let offline = args.offline || env.is_some();
    // FID in the loop: the Inception is there (or fetched) and loads before any data is read,
    // so that a missing file fails now, not at the first evaluation. Rank 0 alone scores.
    let fid = match writer && config.eval_every > 0 {
        true => Some(crate::fid_loop::prepare(config, offline, device)?),
        false => None,
    };
    let (dataset, data_dir) = load_dataset(&args, config, offline, writer)?;
    // As a TrainError, which names the rank (see `run`).
    let options = OpenOptions::new(device).launch(env, config.distributed.timeout())?;
    // How far the previous attempt of a restarted run got, before this one's ranks move on.
    let furthest = train::elastic::furthest_step(&run_dir);
    let mut trainer = Trainer::open(run, start, dataset.clone(), options)?;
    made_dir.disarm();
    if writer {
        report_open(&trainer, &run_dir, device);
    }
    let restart = crate::elastic::restart_count()?;
    if restart > 0 {
        let record = trainer.record_restart(restart, furthest)?;
        if writer {
            eprintln!(
                "restart {restart}: continuing from step {}; {} step(s) of the previous attempt \
                 redone",
                record.step, record.steps_redone
            );
        }
    }
    if args.cuda_graph {
        trainer.enable_cuda_graph().context("--cuda-graph")?;
    }
    if let Some(prepared) = fid {
        crate::train_report::report_fid_loop(trainer.config(), trainer.world_size());
        let scorer = prepared.into_scorer(&dataset, &data_dir, trainer.config())?;
        trainer.set_scorer(Box::new(scorer));
        crate::train_report::report_best(&trainer);
    }
    drop(dataset);
    crate::train_report::train_with_hooks(trainer, &run_dir, writer, args.progress_every)
}
