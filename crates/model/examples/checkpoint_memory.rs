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
//! checkpoint_memory [--full] [--checkpointing] [--return-freed] [--steps N] [--print-config]
//! stdout: rss_before_mib=… peak_rss_mib=… step_ms=… (the median of N forward+backward passes)
//! ```

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
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    tch::set_num_threads(2);
    let vs = VarStore::new(Device::Cpu);
    let net = ModelConfig::Ddpm(unet)
        .build_with(&vs.root(), &mut Generator::cpu(0))
        .expect("a valid configuration");
    let mut data = Generator::cpu(1);
    let xs = data
        .randn(&[1, 3, 256, 256], (Kind::Float, Device::Cpu))
        .unwrap();
    let t = Tensor::from_slice(&[500i64]);
    let rss_before = status_mib("VmRSS");
    let mut dropout = Generator::cpu(2);
    let mut times = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        let out = net.forward_train(&xs, &t, None, &mut dropout);
        out.square().mean(Kind::Float).backward();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "rss_before_mib={rss_before:.1} peak_rss_mib={:.1} step_ms={:.1}",
        status_mib("VmHWM"),
        times[times.len() / 2]
    );
}
