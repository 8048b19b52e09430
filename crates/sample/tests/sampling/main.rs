//! The samplers against diffusers (golden fixtures), against each other in distribution on a
//! model whose ε_θ is exact, and their reproducibility from a seed.
//!
//! One test binary in four parts: `golden` (one step against diffusers), `gaussian` (a model with
//! the exact ε_θ), `seeded` (reproducibility with a real network, and noise files) and `guidance`
//! (classifier-free guidance). The helpers they share are here.

mod gaussian;
mod golden;
mod guidance;
mod seeded;

use std::path::Path;

use model::{Denoiser, ModelConfig, Prediction, SimpleUnetConfig};
use sample::{
    batch_seed, guide, sample, sample_batches, BatchPlan, ClassConditioning, Generator,
    SampleOptions, Sampler, SamplerConfig, SigmaSpacing,
};
use schedule::tensor::{extract, ScheduleTensors};
use schedule::{BetaSchedule, Schedule, TimestepSpacing, VarianceType};
use serde::Deserialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// One intra-op thread: the tests' small elementwise ops run many times slower when several
/// tests' thread pools share a loaded machine's cores. (No lock: every sampler draws from its
/// own generator, so tests on parallel threads cannot disturb each other's noise.)
fn one_thread() {
    tch::set_num_threads(1);
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(xs.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn options() -> SampleOptions {
    SampleOptions {
        prediction: Prediction::Eps,
        clip_x0: false,
        n_snapshots: 0,
        autocast: None,
        class_cond: None,
        initial_noise: None,
    }
}

fn tiny_unet() -> (VarStore, Box<dyn Denoiser>) {
    let config = ModelConfig::Simple(SimpleUnetConfig {
        in_channels: 3,
        out_channels: 3,
        image_size: 8,
        down_channels: vec![8, 16],
        up_channels: vec![16, 8],
        time_emb_dim: 16,
        ..SimpleUnetConfig::seed_cifar10()
    });
    let vs = VarStore::new(Device::Cpu);
    let net = config
        .build_with(&vs.root(), &mut Generator::cpu(11))
        .unwrap();
    (vs, net)
}

fn small_schedule() -> ScheduleTensors {
    ScheduleTensors::new(
        &Schedule::new(&BetaSchedule::Linear {
            n_steps: 20,
            start: 1e-4,
            end: 0.2,
        })
        .unwrap(),
        Device::Cpu,
    )
}

fn bits(xs: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(xs.reshape([-1]))
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}
