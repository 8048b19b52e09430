//! Opening a run: [`Trainer::open`] starts a fresh run in a run directory, replaces an earlier
//! one, or resumes one from a checkpoint, alone or as one rank of a data-parallel run
//! ([`OpenOptions::distributed`]); and the checks of a configuration against its dataset.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tch::{nn::VarStore, Device, Tensor};
use torch_ext::dist::{Distributed, LaunchEnv};
use torch_ext::Generator;

use data::{Loader, LoaderConfig, Source};
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;

use super::{dropout_seed, evaluation, step, Trainer};
use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::objective::TimestepSampling;
use crate::optim::Adam;
use crate::run_dir::RunDir;
use crate::scaler::LossScaler;
use crate::stats::DeviceStats;
use crate::{SkippedCheckpoint, TrainError};

/// How [`Trainer::open`] starts in its run directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A new run of this configuration; the directory must hold no run files
    /// ([`RunDir::ensure_fresh`]).
    Fresh(TrainConfig),
    /// A new run of this configuration that replaces an earlier one: the directory's
    /// [`crate::run_dir::RUN_FILES`] are deleted once the configuration and the dataset have been
    /// checked, so that a mistake in them costs no run ([`Trainer::deleted_files`] lists them).
    Overwrite(TrainConfig),
    /// Continues the run from a checkpoint.
    Resume {
        /// The checkpoint directory; `None`: the newest checkpoint that loads. A newer one that
        /// does not (a truncated or damaged file, non-finite weights) is passed over and listed
        /// in [`Trainer::skipped_checkpoints`].
        from: Option<PathBuf>,
        /// Replaces the configuration saved in the checkpoint; only the settings in
        /// [`crate::config::RESUME_MUTABLE`] may differ. `None`: the saved one.
        config: Option<TrainConfig>,
    },
}

impl Start {
    /// [`Start::Resume`] from the newest checkpoint that loads, with its saved configuration.
    pub fn resume_newest() -> Self {
        Self::Resume {
            from: None,
            config: None,
        }
    }
}

/// Where a run trains: its device, and the data-parallel rank group it is one rank of. The
/// options of [`Trainer::open`], as `std::fs::OpenOptions` are those of opening a file.
#[derive(Debug)]
pub struct OpenOptions {
    device: Device,
    dist: Option<Distributed>,
}

impl OpenOptions {
    /// A run alone on `device`.
    pub fn new(device: Device) -> Self {
        Self { device, dist: None }
    }

    /// One rank of the data-parallel run `dist` (`None`: alone). Rank 0 passes the locked
    /// directory ([`RunDir::lock`]) and checks and writes the files; the other ranks pass
    /// [`RunDir::follow`]. Every rank opens at the same time: opening ends by checking that the
    /// ranks start at the same step and broadcasting rank 0's weights. A failed collective's
    /// message then advises `--resume` ([`Distributed::set_next_step`]).
    pub fn distributed(mut self, mut dist: Option<Distributed>) -> Self {
        if let Some(dist) = &mut dist {
            dist.set_next_step("resume from the last checkpoint with --resume");
        }
        self.dist = dist;
        self
    }

    /// One rank of the launch that `env` describes (`None`: alone), joined now: rank 0 hosts
    /// the rendezvous store at `MASTER_ADDR:MASTER_PORT`, the ranks form a Gloo group (CPU) or
    /// an NCCL group (CUDA, feature `nccl`) on this device, and every collective then waits at
    /// most `timeout` (the run's [`crate::DistConfig::timeout`]). What `ddpm train` does on
    /// each rank; see [`OpenOptions::distributed`] for how the ranks then open the run.
    ///
    /// # Errors
    /// [`TrainError::Dist`] when the rendezvous fails: `MASTER_ADDR` does not resolve,
    /// `MASTER_PORT` is taken, a rank does not arrive within `timeout`, or the device does not
    /// suit the backend.
    pub fn launch(self, env: Option<LaunchEnv>, timeout: Duration) -> Result<Self, TrainError> {
        let dist = match env {
            Some(env) => Some(Distributed::connect(env, self.device, timeout)?),
            None => None,
        };
        Ok(self.distributed(dist))
    }

    /// Whether this process writes the run's files: alone, or rank 0 of the launch. It locks
    /// the run directory ([`RunDir::lock`]); the other ranks follow it ([`RunDir::follow`]).
    pub fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(Distributed::is_main)
    }

    /// How many ranks train together (1 alone).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, Distributed::world_size)
    }

    /// [`OpenOptions::launch`] with the launch that torchrun's variables describe (`WORLD_SIZE`,
    /// `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); alone when `WORLD_SIZE` is unset or 1.
    ///
    /// # Errors
    /// [`TrainError::Dist`] for malformed variables, then as [`OpenOptions::launch`].
    pub fn launch_from_env(self, timeout: Duration) -> Result<Self, TrainError> {
        let dist = Distributed::from_env(self.device, timeout)?;
        Ok(self.distributed(dist))
    }
}

impl Trainer {
    /// Opens a run of `dataset` in the run directory `run`: a fresh run, one that replaces an
    /// earlier run, or one resumed from a checkpoint ([`Start`]). `config.json` is written (by
    /// rank 0 of a data-parallel run) once the configuration has been checked and, on resume,
    /// once the checkpoint has loaded; a resume also cuts `metrics.jsonl` back to the
    /// checkpoint's step, and the TensorBoard event files (`tb/`) with it. A refused open leaves
    /// the run's files as they were.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] when a fresh run finds run files; [`TrainError::Config`] when the
    /// dataset does not fit the model (channels, size, labels), the configuration is invalid or
    /// the world size does not divide `batch_size`; [`TrainError::Io`] when the run directory
    /// cannot be written or a file cannot be deleted. On resume: [`TrainError::NoCheckpoint`]
    /// when there is none; [`TrainError::ResumeChange`] when the configuration changes a setting
    /// that must stay fixed; [`TrainError::NoLoadableCheckpoint`] when none loads; with `from`,
    /// [`TrainError::AnotherRun`] when it is another run's, or the error of that checkpoint ([`TrainError::Checkpoint`], [`TrainError::Model`],
    /// [`TrainError::OptimizerState`], …). Data-parallel: [`TrainError::Dist`] when the
    /// broadcast fails, also when the ranks' settings differ
    /// ([`crate::distributed::check_same_config`]) or they resumed at different steps.
    ///
    /// # Panics
    /// When rank 0's (or a lone process's) `run` is not locked.
    pub fn open(
        run: RunDir,
        start: Start,
        dataset: impl Into<Source>,
        options: OpenOptions,
    ) -> Result<Self, TrainError> {
        let OpenOptions { device, dist } = options;
        let dataset = dataset.into();
        if let Some(dist) = &dist {
            check_same_start(&run, &start, dist)?;
        }
        let mut trainer = match start {
            Start::Fresh(config) => {
                if dist.as_ref().is_none_or(Distributed::is_main) {
                    run.ensure_fresh()?;
                }
                Self::build_fresh(run, config, dataset, device, dist)?
            }
            Start::Overwrite(config) => {
                let mut trainer = Self::build_fresh(run, config, dataset, device, dist)?;
                if trainer.is_writer() {
                    trainer.deleted_files = trainer.run.run_files();
                    trainer.run.clear()?;
                }
                trainer
            }
            Start::Resume { from, config } => {
                let trainer = Self::resume(run, from.as_deref(), config, dataset, device, dist)?;
                trainer.truncate_metrics()?;
                trainer
            }
        };
        trainer.write_config()?;
        trainer.open_tensorboard()?;
        trainer.sync_start()?;
        Ok(trainer)
    }

    /// [`Trainer::build`], then for a run with `init_from` set, the source's weights
    /// (`init_from.rs`).
    fn build_fresh(
        run: RunDir,
        config: TrainConfig,
        dataset: Source,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        let source = config.init_from.clone();
        let mut trainer = Self::build(run, config, dataset, device, dist)?;
        if let Some(path) = source {
            trainer.init_report = Some(trainer.init_from(&path)?);
        }
        Ok(trainer)
    }

    /// Everything but the files: the network, EMA, optimizer, schedule and loader.
    fn build(
        run: RunDir,
        config: TrainConfig,
        dataset: Source,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        assert!(
            !dist.as_ref().is_none_or(Distributed::is_main) || run.is_locked(),
            "the trainer that writes the run (rank 0) must hold the run directory's lock"
        );
        check_fits(&config, &dataset, dist.as_ref())?;
        model::check_autocast(config.precision, device)
            .map_err(|e| TrainError::Config(format!("precision: {e}")))?;
        let scaler = config
            .precision
            .loss_scaling()
            .then(|| LossScaler::new(device));
        let loader = run_loader(dataset, &config, dist.as_ref())?;
        let schedule = Schedule::new(&config.schedule)
            .map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        let sched = ScheduleTensors::new(&schedule, device);
        let importance = step::Importance::for_objective(&config.objective, schedule.n_steps());
        let gen = run_generator(config.seed, device)?;
        let dropout_gen = run_generator(dropout_seed(config.seed, 0) as u64, device)?;
        let model_vs = VarStore::new(device);
        let model = config
            .model
            .build_with(&model_vs.root(), &mut Generator::cpu(config.seed))
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // The EMA network starts as a copy of the live one (Ema::new): its own weights never matter.
        let ema_vs = VarStore::new(device);
        let ema_model = config
            .model
            .build(&ema_vs.root())
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let ema = Ema::new(config.ema.clone(), &ema_vs, &model_vs)?;
        let optim = Adam::new(&model_vs, config.optim.clone());
        let buffers = checkpoint::named_tensors(&model_vs)
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(_, t)| (t.shallow_clone(), t.copy()))
            .collect();
        let run_dir = run.path().to_path_buf();
        let params = model_vs.trainable_variables();
        let class_names = Some(loader.dataset().class_names().to_vec())
            .filter(|_| config.model.num_classes().is_some())
            .unwrap_or_default();
        Ok(Self {
            config,
            run,
            run_dir,
            device,
            model_vs,
            model,
            ema_vs,
            ema_model,
            ema,
            optim,
            sched,
            loader,
            gen,
            dropout_gen,
            scaler,
            importance,
            step: 0,
            skipped_steps: 0,
            stats: DeviceStats::new(device, 0, 0),
            last_read: None,
            #[cfg(feature = "cuda")]
            graphed: None,
            buffers,
            skipped_checkpoints: Vec::new(),
            deleted_files: Vec::new(),
            init_report: None,
            dist,
            params,
            stop_local: false,
            stop_agreed: false,
            resumed_world_size: None,
            resumed_verified: None,
            writer: Default::default(),
            checkpoint_wait: None,
            checkpointed_step: None,
            class_names,
            quality: evaluation::QualityState::default(),
            position: None,
            summaries: None,
        })
    }

    pub(super) fn write_config(&self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let config_path = self.run_dir.join("config.json");
        let json = serde_json::to_vec_pretty(&self.config).expect("configs serialise");
        fs::write(&config_path, json).map_err(|e| self.write_err(&config_path, e))
    }

    /// The trainer of the run in `run` at the checkpoint `from`, or at the newest checkpoint that
    /// loads, with the configuration `config` or the saved one (see [`Start::Resume`]).
    fn resume(
        run: RunDir,
        from: Option<&Path>,
        config: Option<TrainConfig>,
        dataset: Source,
        device: Device,
        mut dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        let root = run.path().join(checkpoint::CHECKPOINTS_DIR);
        let candidates: Vec<PathBuf> = match from {
            Some(dir) => vec![dir.to_path_buf()],
            None => checkpoint::list(&root)
                .into_iter()
                .rev()
                .map(|(_, dir)| dir)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(no_checkpoint(root));
        }
        let explicit = from.is_some();
        let mut skipped = Vec::new();
        let mut run = run;
        for dir in candidates {
            let state = match read_resume_state(&dir) {
                Ok(state) => state,
                Err(err) if !explicit => {
                    skipped.push(SkippedCheckpoint {
                        dir,
                        reason: err.to_string(),
                    });
                    continue;
                }
                Err(err) => return Err(err),
            };
            if explicit {
                check_same_run(run.path(), &dir, &state.1)?;
            }
            let resolved = match &config {
                Some(given) => {
                    state.1.check_resume(given)?;
                    given.clone()
                }
                None => state.1.clone(),
            };
            let mut trainer = Self::build(run, resolved, dataset.clone(), device, dist.take())?;
            match trainer.load_checkpoint(&dir, &state.0) {
                Ok(()) if trainer.step > trainer.total_steps() => {
                    // Going on would rewrite the checkpoint and config.json and train nothing.
                    return Err(TrainError::Config(format!(
                        "{} is at step {}, past the run's last step {} (max_steps / epochs): \
                         pass a larger --max-steps, or --resume-from an earlier checkpoint",
                        dir.display(),
                        trainer.step,
                        trainer.total_steps()
                    )));
                }
                Ok(()) => {
                    trainer.skipped_checkpoints = skipped;
                    trainer.resumed_world_size = Some(state.0.world_size);
                    trainer.load_best()?;
                    return Ok(trainer);
                }
                Err(err) if !explicit => {
                    skipped.push(SkippedCheckpoint {
                        dir,
                        reason: err.to_string(),
                    });
                    run = trainer.run;
                    dist = trainer.dist;
                }
                Err(err) => return Err(err),
            }
        }
        Err(TrainError::NoLoadableCheckpoint {
            dir: root,
            tried: skipped,
        })
    }

    /// Loads weights, EMA weights, optimizer moments and counters; every file is first checked
    /// against its digest ([`crate::digest::verify`]), every tensor is checked to be finite.
    pub(super) fn load_checkpoint(
        &mut self,
        dir: &Path,
        state: &CheckpointState,
    ) -> Result<(), TrainError> {
        self.resumed_verified = Some(crate::digest::verify(dir, state)?);
        model::load_safetensors(&mut self.model_vs, &dir.join(checkpoint::MODEL_FILE))?;
        model::load_safetensors(&mut self.ema_vs, &dir.join(checkpoint::EMA_FILE))?;
        let optim_path = dir.join(checkpoint::OPTIMIZER_FILE);
        let optim_state = checkpoint::read_tensors(&optim_path)?;
        model::check_finite_named(&optim_state, &optim_path)?;
        let optim_state: Vec<(String, Tensor)> = optim_state
            .into_iter()
            .map(|(n, t)| (n, t.to_device(self.device)))
            .collect();
        let adam_steps =
            state
                .step
                .checked_sub(state.skipped_steps)
                .ok_or_else(|| TrainError::Checkpoint {
                    path: dir.join(checkpoint::STATE_FILE),
                    message: format!(
                        "skipped_steps {} is more than step {}",
                        state.skipped_steps, state.step
                    ),
                })?;
        self.optim.load_state(&optim_state, adam_steps)?;
        if let Some(scaler) = self.scaler.as_mut() {
            // A checkpoint of an fp16 run has its scale; precision is fixed for a run, so one
            // without it was written before fp16 existed, and starts from the initial scale.
            if let Some(loss_scale) = state.loss_scale {
                scaler
                    .load_state(loss_scale)
                    .map_err(|e| TrainError::Checkpoint {
                        path: dir.join(checkpoint::STATE_FILE),
                        message: e.to_string(),
                    })?;
            }
        }
        if let Some(importance) = self.importance.as_mut() {
            importance.load(
                state.timestep_history.clone(),
                &dir.join(checkpoint::STATE_FILE),
            )?;
        }
        self.ema.set_updates(state.ema_updates);
        self.step = state.step;
        self.skipped_steps = state.skipped_steps;
        self.stats = DeviceStats::new(self.device, state.step, state.skipped_steps);
        Ok(())
    }

    /// Drops metrics lines past the current step (written after the checkpoint we resume from).
    pub(super) fn truncate_metrics(&self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let path = self.run_dir.join("metrics.jsonl");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                // Training lines and evaluation lines alike carry their step.
                serde_json::from_str::<evaluation::StepOf>(line).is_ok_and(|r| r.step <= self.step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(&path, kept).map_err(|e| self.write_err(&path, e))
    }
}

/// [`TrainError::NoCheckpoint`] for the run's checkpoint directory `root`, with what to do: when
/// only `best/` (FID in the loop's best checkpoint, which a newest-first resume does not take)
/// holds a checkpoint, resuming from it by name.
fn no_checkpoint(root: PathBuf) -> TrainError {
    let best = root
        .join(crate::quality::BEST_DIR)
        .join(checkpoint::STATE_FILE);
    let hint = if best.is_file() {
        "only checkpoints/best/ holds one: resume from it with --resume-from best, or start a \
         new run (another --run-dir, or --overwrite)"
    } else {
        "start a new run without --resume"
    };
    TrainError::NoCheckpoint { dir: root, hint }
}

/// The configuration a resume of the run in `run_dir` starts from: the one saved in the
/// checkpoint directory `from`, or in the newest checkpoint under `run_dir` whose `state.json`
/// reads (the trainer then loads that one or, when its weights do not load, an older one). A
/// front end resolves its flags against it before [`Trainer::open`] with [`Start::Resume`].
///
/// # Errors
/// [`TrainError::NoCheckpoint`] when there is none; with `from`, that checkpoint's
/// [`TrainError::Checkpoint`] or [`TrainError::Io`], or [`TrainError::AnotherRun`] when it is
/// another run's; [`TrainError::NoLoadableCheckpoint`] when no `state.json` reads.
pub fn saved_config(run_dir: &Path, from: Option<&Path>) -> Result<TrainConfig, TrainError> {
    if let Some(dir) = from {
        let config = read_resume_state(dir)?.1;
        check_same_run(run_dir, dir, &config)?;
        return Ok(config);
    }
    let root = run_dir.join(checkpoint::CHECKPOINTS_DIR);
    let all = checkpoint::list(&root);
    if all.is_empty() {
        return Err(no_checkpoint(root));
    }
    let mut tried = Vec::new();
    for (_, dir) in all.into_iter().rev() {
        match read_resume_state(&dir) {
            Ok((_, config)) => return Ok(config),
            Err(err) => tried.push(SkippedCheckpoint {
                dir,
                reason: err.to_string(),
            }),
        }
    }
    Err(TrainError::NoLoadableCheckpoint { dir: root, tried })
}

/// The check that every rank of `dist` starts with the same settings
/// ([`crate::distributed::check_same_config`]), before any file or collective is touched.
fn check_same_start(run: &RunDir, start: &Start, dist: &Distributed) -> Result<(), TrainError> {
    let saved;
    let config = match start {
        Start::Fresh(config) | Start::Overwrite(config) => config,
        Start::Resume {
            config: Some(config),
            ..
        } => config,
        Start::Resume { from, config: None } => {
            saved = saved_config(run.path(), from.as_deref())?;
            &saved
        }
    };
    crate::distributed::check_same_config(config, dist)
}

/// Refuses the checkpoint `dir`, whose configuration is `config`, when the run in `run_dir`
/// (its `config.json`) differs from it in a setting outside
/// [`crate::config::RESUME_MUTABLE`]: resuming it there would mix two runs in one directory.
/// A directory without `config.json` holds no run yet, and takes any checkpoint; the run's own
/// checkpoints (under its `checkpoints/`) were written under the same rule, and are not checked
/// again (a damaged one fails when its weights load).
fn check_same_run(run_dir: &Path, dir: &Path, config: &TrainConfig) -> Result<(), TrainError> {
    let own = run_dir
        .join(checkpoint::CHECKPOINTS_DIR)
        .canonicalize()
        .ok();
    let parent = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf));
    if own.is_some() && own == parent {
        return Ok(());
    }
    let path = run_dir.join("config.json");
    let Ok(text) = fs::read(&path) else {
        return Ok(());
    };
    let run_config: TrainConfig = serde_json::from_slice(&text).map_err(|e| {
        TrainError::Config(format!(
            "{} does not read as a run's configuration ({e}), so the checkpoint {} cannot be \
             checked against it: resume into another --run-dir",
            path.display(),
            dir.display()
        ))
    })?;
    let first = run_config
        .changes(config)
        .into_iter()
        .find(|change| !change.allowed_on_resume());
    match first {
        Some(change) => Err(TrainError::AnotherRun {
            checkpoint: dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            key: change.key,
            checkpoint_value: change.given.to_string(),
            run_value: change.saved.to_string(),
        }),
        None => Ok(()),
    }
}

/// A checkpoint's state and the configuration saved in it.
fn read_resume_state(dir: &Path) -> Result<(CheckpointState, TrainConfig), TrainError> {
    let state = checkpoint::read_state(dir)?;
    let config =
        serde_json::from_value(state.config.clone()).map_err(|e| TrainError::Checkpoint {
            path: dir.join(checkpoint::STATE_FILE),
            message: format!("config: {e}"),
        })?;
    Ok((state, config))
}

/// The checks of `config` against `dataset` and the rank group, before anything is built: the
/// config is valid, the global batch splits over the ranks, and the images fit the model.
fn check_fits(
    config: &TrainConfig,
    dataset: &Source,
    dist: Option<&Distributed>,
) -> Result<(), TrainError> {
    config.validate()?;
    // The global batch splits over the ranks, and each rank's share into micro-batches.
    let world_size = dist.map_or(1, Distributed::world_size);
    config.check_micro_batch(world_size)?;
    if world_size > 1 && config.objective.timestep_sampling == TimestepSampling::Importance {
        return Err(TrainError::Config(format!(
            "objective.timestep_sampling = \"importance\" runs in one process: its loss history \
             would need every rank's losses each step, which this toolkit does not gather yet \
             ({world_size} ranks here); train with one process or timestep_sampling = \"uniform\""
        )));
    }
    if dataset.channels() as i64 != config.model.in_channels() {
        return Err(TrainError::Config(format!(
            "the dataset has {} channel(s) but model.in_channels is {}: pick a matching model",
            dataset.channels(),
            config.model.in_channels()
        )));
    }
    let out_size = config
        .transform
        .size
        .map_or([dataset.height(), dataset.width()], |s| s);
    let size = config.model.image_size();
    if out_size != [size as usize, size as usize] {
        return Err(TrainError::Config(format!(
            "images are {}x{} after the transform but the model expects {size}x{size}: set transform.size",
            out_size[0], out_size[1]
        )));
    }
    if let Some(k) = config.model.num_classes() {
        check_labels(config, dataset, k)?;
    }
    // Checked here, before the loader, whose message would speak of its `drop_last`: training
    // always drops the last partial batch, and that is no config key.
    if dataset.len() < config.batch_size {
        return Err(TrainError::Config(format!(
            "the dataset has {} images, fewer than one batch of {}: lower batch_size (--batch-size)",
            dataset.len(),
            config.batch_size
        )));
    }
    Ok(())
}

/// The checks of a class-conditional run's dataset: it has labels, and they are below
/// `num_classes`.
fn check_labels(
    config: &TrainConfig,
    dataset: &Source,
    num_classes: i64,
) -> Result<(), TrainError> {
    let name = config.dataset.name();
    if dataset.n_classes() == 0 {
        return Err(TrainError::Config(format!(
            "model.num_classes = {num_classes} (--class-cond) needs class labels, but the {name} \
             dataset has none (an image folder has classes when its images sit in one \
             sub-folder per class): train it without classes"
        )));
    }
    let max = dataset.max_label();
    if i64::from(max) >= num_classes {
        return Err(TrainError::Config(format!(
            "the {name} dataset has labels up to {max} ({} classes) but model.num_classes is \
             {num_classes}: set model.num_classes to {} (or use --class-cond, which takes the \
             dataset's count)",
            dataset.n_classes(),
            dataset.n_classes()
        )));
    }
    Ok(())
}

/// A generator of the run on `device`, seeded with `seed`.
/// The run's loader: shuffled, whole batches, this rank's share of them in a data-parallel run.
fn run_loader(
    dataset: Source,
    config: &TrainConfig,
    dist: Option<&Distributed>,
) -> Result<Loader, TrainError> {
    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        shuffle: true,
        drop_last: true,
        seed: config.seed,
        n_workers: config.n_workers,
        prefetch: 2 * config.n_workers.max(1),
    };
    let loader = Loader::new(dataset, &config.transform, loader_config)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    match dist {
        Some(dist) => loader
            .sharded(dist.rank(), dist.world_size())
            .map_err(|e| TrainError::Config(e.to_string())),
        None => Ok(loader),
    }
}

fn run_generator(seed: u64, device: Device) -> Result<Generator, TrainError> {
    Generator::new(seed, device)
        .map_err(|e| TrainError::Config(format!("a random generator for {device:?}: {e}")))
}
