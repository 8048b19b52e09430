//! One sampling step, end to end: the network's forward pass in eval mode without autograd, a
//! fresh noise draw and the sampler's update, on the samplers' standard shapes: the notebook's
//! SimpleUnet at batch 128, 28×28×3, and the paper's U-Net at batch 4, 32×32×3 (a small CPU
//! batch), both on the Ho et al. 2020 schedule at t = 500.
//!
//! `cargo xtask bench` runs the same step beside PyTorch eager on the same libtorch
//! (`examples/bench_serve.rs`, `scripts/bench/peer.py`), alternating, and reports the ratios.
//!
//! ```text
//! cargo bench -p sample --bench sampling
//! DDPM_BENCH_THREADS=2 DDPM_BENCH_DEVICE=cuda cargo bench -p sample --bench sampling
//! ```
//!
//! A whole DDPM sample is T = 1000 of these steps and a DDIM-50 sample 50, so images/s follow
//! as batch / (steps × time per step).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use model::{Denoiser, ModelConfig, Prediction, SimpleUnetConfig, UNetConfig};
use sample::{Sampler, SamplerConfig};
use schedule::tensor::ScheduleTensors;
use schedule::{BetaSchedule, Schedule, TimestepSpacing, VarianceType};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn device() -> Device {
    match std::env::var("DDPM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn bench_model(
    c: &mut Criterion,
    name: &str,
    config: ModelConfig,
    batch: i64,
    samplers: &[(&str, SamplerConfig)],
) {
    let device = device();
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net: Box<dyn Denoiser> = config.build(&vs.root()).unwrap();
    let sched = ScheduleTensors::new(&Schedule::new(&BetaSchedule::ho2020()).unwrap(), device);
    let (ch, size) = (config.in_channels(), config.image_size());
    let x = Tensor::randn([batch, ch, size, size], (Kind::Float, device));
    let mut group = c.benchmark_group(format!("sampling_step/{name}/batch{batch}"));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for (label, sampler_config) in samplers {
        let mut sampler = Sampler::new(&sched, sampler_config, Prediction::Eps, false).unwrap();
        // The step at t = 500, or the nearest below it; a multistep solver's steps in chain
        // order, over and over, so that each runs at the order its history allows (the mean
        // step of a chain).
        let fixed = sampler.timesteps().iter().position(|&t| t <= 500).unwrap();
        let multistep = matches!(
            sampler_config,
            SamplerConfig::DpmSolverPp { .. } | SamplerConfig::UniPc { .. }
        );
        let mut k = 0;
        group.bench_function(*label, |b| {
            b.iter(|| {
                let i = if multistep { k % sampler.nfe() } else { fixed };
                k += 1;
                let t = sampler.timesteps()[i];
                let prev = tch::no_grad(|| {
                    let t_batch = Tensor::full([batch], t as i64, (Kind::Int64, device));
                    let out = model::forward(net.as_ref(), &x, &t_batch, false, None);
                    let noise = sampler.needs_noise(i).then(|| Tensor::randn_like(&x));
                    sampler.step(i, &out, &x, noise.as_ref()).prev_sample
                });
                sync(device);
                prev
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let threads = std::env::var("DDPM_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let gpu = device().is_cuda();
    let ddpm = ("ddpm", SamplerConfig::ddpm(VarianceType::FixedLarge));
    let ddim = (
        "ddim50",
        SamplerConfig::Ddim {
            steps: 50,
            eta: 0.0,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        },
    );
    // The solvers for about 10 network evaluations, with a full history.
    let dpm3 = (
        "dpm_solver_pp3_10",
        SamplerConfig::DpmSolverPp {
            steps: 10,
            spacing: TimestepSpacing::Trailing,
            order: 3,
            sde: false,
            timesteps: None,
        },
    );
    let unipc3 = (
        "unipc3_10",
        SamplerConfig::UniPc {
            steps: 10,
            spacing: TimestepSpacing::Trailing,
            order: 3,
            variant: sample::UniPcVariant::Bh2,
            timesteps: None,
        },
    );
    let all = [ddpm, ddim, dpm3, unipc3];
    bench_model(
        c,
        "simple_unet",
        ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
        128,
        &all,
    );
    bench_model(
        c,
        "ddpm_unet",
        ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
        if gpu { 128 } else { 4 },
        &all,
    );
}

criterion_group! {
    name = sampling;
    config = Criterion::default().warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    targets = benches
}
criterion_main!(sampling);
