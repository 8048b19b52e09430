//! Fine-tuning (`ddpm train --init-from SRC`): a fresh run whose network and EMA start from the
//! weights of SRC, anything [`sample::PipelineSpec::resolve`] accepts (a run directory, a
//! checkpoint or a diffusers folder), with a fresh optimizer.
//!
//! The configuration's network, schedule and prediction come from SRC
//! ([`TrainConfig::starting_from`]) unless the front end's flags set them; a setting the
//! weights or their meaning depend on that differs from SRC's is refused naming its key
//! ([`check_source`]). Two settings may differ: `model.dropout`, and `model.num_classes` when
//! SRC is unconditional, whose class embedding then starts at zero (so that every label starts
//! as SRC's unconditional network). The configuration records `init_from`, so that a resume
//! reads its own checkpoints and never SRC again.

use std::path::{Path, PathBuf};

use tch::nn::VarStore;

use sample::{Pipeline, PipelineSpec, Weights};

use super::Trainer;
use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::TrainError;

/// What [`Trainer::open`] took from the source of a run with `init_from` set.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// The checkpoint directory or diffusers folder the weights came from.
    pub source: PathBuf,
    /// The file the network's weights came from.
    pub weights_file: PathBuf,
    /// The file the EMA weights came from: a checkpoint's EMA file, or for a source with one set
    /// of weights (a diffusers folder), `weights_file`.
    pub ema_file: PathBuf,
    /// Variables of the run's network that the source lacks, started at zero (the class
    /// embedding when a class-conditional run fine-tunes an unconditional network).
    pub zeroed: Vec<String>,
}

impl TrainConfig {
    /// This configuration set to fine-tune `spec`, read from `path`: `spec`'s network (keeping
    /// this configuration's dropout), schedule and prediction, and `init_from = path`. A front
    /// end applies its flags after this, and [`Trainer::open`] checks the result against the
    /// source ([`check_source`]).
    pub fn starting_from(&self, path: &Path, spec: &PipelineSpec) -> TrainConfig {
        let mut config = self.clone();
        config.model = spec.model.clone();
        if let (model::ModelConfig::Ddpm(ours), model::ModelConfig::Ddpm(theirs)) =
            (&self.model, &mut config.model)
        {
            theirs.dropout = ours.dropout;
        }
        config.schedule = spec.schedule.clone();
        config.objective.prediction = spec.prediction;
        config.init_from = Some(path.to_path_buf());
        config
    }
}

/// Checks that a run of `config` can start from the weights of `spec`: the same network (but
/// for `model.dropout`, and `model.num_classes` when `spec` is unconditional), the same
/// schedule and the same prediction.
///
/// # Errors
/// [`TrainError::Config`] naming the first key that differs, with both values.
pub fn check_source(config: &TrainConfig, spec: &PipelineSpec) -> Result<(), TrainError> {
    // The source as a configuration that differs from `config` only where the source does.
    let mut source = config.clone();
    source.model = spec.model.clone();
    if let (model::ModelConfig::Ddpm(ours), model::ModelConfig::Ddpm(theirs)) =
        (&config.model, &mut source.model)
    {
        theirs.dropout = ours.dropout;
    }
    if spec.model.num_classes().is_none() {
        source.model.set_num_classes(config.model.num_classes());
    }
    source.schedule = spec.schedule.clone();
    source.objective.prediction = spec.prediction;
    match source.changes(config).into_iter().next() {
        None => Ok(()),
        Some(change) => Err(TrainError::Config(format!(
            "`{}` = {} but the --init-from source {} has {}: the run must keep the source's \
             network, schedule and prediction (drop the setting)",
            change.key,
            change.given,
            spec.config_file.display(),
            change.saved
        ))),
    }
}

impl Trainer {
    /// Loads the network and EMA weights of `path` into a freshly built run (see the module
    /// docs), after [`check_source`].
    ///
    /// # Errors
    /// [`TrainError::Sample`] when `path` is no source or its weights do not load,
    /// [`TrainError::Config`] from [`check_source`].
    pub(super) fn init_from(&mut self, path: &Path) -> Result<InitReport, TrainError> {
        let spec = PipelineSpec::resolve(path, Weights::Model)?;
        check_source(&self.config, &spec)?;
        let ema_spec = PipelineSpec::resolve(path, Weights::Ema)?;
        let device = self.device;
        let zeroed = copy_weights(Pipeline::from_spec(spec.clone(), device)?, &self.model_vs);
        if ema_spec.weights_file == spec.weights_file {
            // One set of weights: the average starts at the live ones, as in any fresh run.
            self.ema = Ema::new(self.config.ema.clone(), &self.ema_vs, &self.model_vs)?;
        } else {
            copy_weights(Pipeline::from_spec(ema_spec.clone(), device)?, &self.ema_vs);
        }
        Ok(InitReport {
            source: spec.dir,
            weights_file: spec.weights_file,
            ema_file: ema_spec.weights_file,
            zeroed,
        })
    }
}

/// Copies every variable of `source`'s network into the same-named variable of `vs`, and
/// zeroes those of `vs` that `source` lacks; returns their names. [`check_source`] has made sure
/// that the shapes agree and that `source` has nothing `vs` lacks.
fn copy_weights(source: Pipeline, vs: &VarStore) -> Vec<String> {
    let theirs = source.vs.variables();
    let mut zeroed = Vec::new();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            match theirs.get(&name) {
                Some(src) => {
                    var.copy_(src);
                }
                None => {
                    let _ = var.zero_();
                    zeroed.push(name);
                }
            }
        }
    });
    zeroed.sort();
    zeroed
}
