//! Peak resident memory and time of training passes of a reduced-width 256² U-Net (or, with
//! `--full`, the 114M `UNetConfig::ho2020_256`) at batch 1, with or without activation
//! checkpointing, in a process of its own (so that the high-water mark is this
//! configuration's): `scripts/bench/checkpoint_memory.sh` runs it beside diffusers'
//! `UNet2DModel` with `enable_gradient_checkpointing()` on and off
//! (`scripts/bench/checkpoint_memory_peer.py`, the same configuration from `--print-config`).
//! `--return-freed` first sets the allocator as training does
//! ([`torch_ext::host_memory::return_large_blocks`]).
//!
//! ```text
//! checkpoint_memory [--full] [--checkpointing] [--return-freed] [--steps N] [--batch B]
//!                   [--device cpu|cuda] [--print-config]
//! stdout: rss_before_mib=… peak_rss_mib=… step_ms=… (the median of N forward+backward passes)
//!         and, on CUDA, cuda_before_mib=… peak_cuda_mib=… (bytes in live tensors)
//! ```
//!
//! `--device cuda` needs the feature `cuda` (`cargo xtask gpu-bundle` builds it so, and its
//! `run.sh` runs the 114M network both ways beside diffusers).

use std::time::Instant;

use model::{ModelConfig, UNetConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

/// The reduced-width 256² U-Net: the paper's 256² layout (6 levels, attention at 16×16) at
/// width 32.
fn config() -> UNetConfig {
    UNetConfig {
        image_size: 256,
        channels: 32,
        channel_mult: vec![1, 1, 2, 2, 4, 4],
        attention_resolutions: vec![16],
        dropout: 0.0,
        ..UNetConfig::ho2020_cifar10()
    }
}

/// `VmRSS` or `VmHWM` of this process in MiB.
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .expect("the key is listed");
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let mut unet = if flag("--full") {
        UNetConfig {
            dropout: 0.0,
            ..UNetConfig::ho2020_256()
        }
    } else {
        config()
    };
    if flag("--print-config") {
        println!("{}", unet.to_diffusers_config());
        return;
    }
    unet.gradient_checkpointing = flag("--checkpointing");
    if flag("--return-freed") {
        assert!(torch_ext::host_memory::return_large_blocks(
            torch_ext::host_memory::LARGE_BLOCK_BYTES
        ));
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: usize = value("--steps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let batch: i64 = value("--batch").and_then(|v| v.parse().ok()).unwrap_or(1);
    let device = match value("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => panic!("--device {other}: cpu or cuda"),
    };
    tch::set_num_threads(2);
    let vs = VarStore::new(device);
    let net = ModelConfig::Ddpm(unet)
        .build_with(&vs.root(), &mut Generator::cpu(0))
        .expect("a valid configuration");
    let mut data = Generator::cpu(1);
    let xs = data
        .randn(&[batch, 3, 256, 256], (Kind::Float, Device::Cpu))
        .unwrap()
        .to_device(device);
    let t = Tensor::full([batch], 500i64, (Kind::Int64, device));
    let rss_before = status_mib("VmRSS");
    let cuda_before = cuda_mib(device, false);
    let mut dropout = Generator::cpu(2);
    let mut times = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        let out = net.forward_train(&xs, &t, None, &mut dropout);
        out.square().mean(Kind::Float).backward();
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mut line = format!(
        "rss_before_mib={rss_before:.1} peak_rss_mib={:.1} step_ms={:.1}",
        status_mib("VmHWM"),
        times[times.len() / 2]
    );
    if let (Some(before), Some(peak)) = (cuda_before, cuda_mib(device, true)) {
        line += &format!(" cuda_before_mib={before:.1} peak_cuda_mib={peak:.1}");
    }
    println!("{line}");
}

/// Bytes in live CUDA tensors on `device` in MiB, now or (`peak`) the most since the start;
/// `None` on the CPU.
#[cfg(feature = "cuda")]
fn cuda_mib(device: Device, peak: bool) -> Option<f64> {
    let Device::Cuda(index) = device else {
        return None;
    };
    let stats = torch_ext::cuda::memory_stats(index).expect("CUDA memory statistics");
    let bytes = if peak {
        stats.peak_allocated
    } else {
        stats.allocated
    };
    Some(bytes as f64 / (1 << 20) as f64)
}

/// Without the feature `cuda` there are no CUDA counters to read.
#[cfg(not(feature = "cuda"))]
fn cuda_mib(device: Device, _peak: bool) -> Option<f64> {
    assert!(
        device == Device::Cpu,
        "--device cuda needs the example built with --features model/cuda"
    );
    None
}
