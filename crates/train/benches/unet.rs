//! Forward and training-step time of both networks at their standard shapes, in both memory
//! formats: the notebook's SimpleUnet at batch 128, 28×28×3, and the paper's U-Net at batch 16,
//! 32×32×3 (its CPU shape).
//!
//! `forward` is inference (eval mode, no autograd); `train_step` is forward in train mode, an MSE
//! loss against a fixed target, backward, and the trainer's Adam update (`train::optim::Adam`,
//! the paper's settings). It lives in `train` rather than `model` because it needs that
//! optimizer, and dependencies point down. `cargo xtask bench` runs the same models beside
//! PyTorch eager on the same libtorch, step by step, and reports the ratios.
//!
//! ```text
//! cargo bench -p train --bench unet -- --warm-up-time 2 --measurement-time 10
//! DDPM_BENCH_THREADS=2 DDPM_BENCH_DEVICE=cuda cargo bench -p train --bench unet
//! ```
//!
//! Threads default to 2 (the reference machine's cores); `DDPM_BENCH_DEVICE=cuda` runs on the GPU
//! (synchronising before the clock is read) and adds bf16-autocast variants.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use model::{
    autocast_bf16, set_memory_format, Denoiser, MemoryFormat, ModelConfig, SimpleUnetConfig,
    UNetConfig,
};
use std::time::Duration;

use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};
use train::optim::{Adam, OptimConfig};

struct Case {
    name: &'static str,
    config: ModelConfig,
    batch: i64,
}

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

fn bench_case(c: &mut Criterion, case: &Case, format: MemoryFormat, autocast: bool) {
    let device = device();
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net: Box<dyn Denoiser> = case.config.build(&vs.root()).unwrap();
    set_memory_format(&vs, format);
    let (ch, size) = (case.config.in_channels(), case.config.image_size());
    let xs = Tensor::randn([case.batch, ch, size, size], (Kind::Float, device));
    let target = Tensor::randn([case.batch, ch, size, size], (Kind::Float, device));
    let ts = Tensor::randint(1000, [case.batch], (Kind::Int64, device));
    let run = |train: bool| {
        let f = || net.forward_t(&xs, &ts, train);
        if autocast {
            autocast_bf16(device, f)
        } else {
            f()
        }
    };
    let mut group = c.benchmark_group(format!("{}/batch{}", case.name, case.batch));
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    let id = |what: &str| {
        let layout = match format {
            MemoryFormat::Contiguous => "nchw",
            MemoryFormat::ChannelsLast => "channels_last",
        };
        format!("{what}/{layout}{}", if autocast { "/bf16" } else { "" })
    };
    group.bench_function(id("forward"), |b| {
        b.iter(|| {
            let out = tch::no_grad(|| run(false));
            sync(device);
            out
        })
    });
    let optim = OptimConfig::ho2020();
    let lr = optim.lr;
    let mut adam = Adam::new(&vs, optim);
    group.bench_function(id("train_step"), |b| {
        b.iter(|| {
            adam.zero_grad();
            let loss = run(true)
                .to_kind(Kind::Float)
                .mse_loss(&target, Reduction::Mean);
            loss.backward();
            adam.step(lr);
            sync(device);
            loss
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let threads = std::env::var("DDPM_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let gpu = device().is_cuda();
    let cases = [
        Case {
            name: "simple_unet",
            config: ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
            batch: 128,
        },
        Case {
            name: "ddpm_unet",
            config: ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
            batch: if gpu { 128 } else { 16 },
        },
    ];
    let only = std::env::var("DDPM_BENCH_FORMAT").ok();
    for case in &cases {
        for format in [MemoryFormat::ChannelsLast, MemoryFormat::Contiguous] {
            let name = if format == MemoryFormat::ChannelsLast {
                "channels_last"
            } else {
                "nchw"
            };
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            bench_case(c, case, format, false);
            if gpu {
                bench_case(c, case, format, true);
            }
        }
    }
}

criterion_group! {
    name = unet;
    config = Criterion::default().warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    targets = benches
}
criterion_main!(unet);
