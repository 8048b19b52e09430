//! ms/step of the benchmark cases, timed exactly as `scripts/bench/model_pytorch.py` times them
//! (two warm-up steps, then the mean and median of `--iters` steps):
//!
//! ```text
//! cargo run --release -p model --example step_time -- --only simple_unet --layout channels_last
//! ```
//!
//! `--compare-layouts CASE` alternates steps of the channels-last and NCHW variants of one case
//! in one process, the fair way to choose a layout on a machine whose load drifts.
//!
//! With `--serve CASE LAYOUT` it builds one case and then runs one step per line of stdin
//! (`forward` or `train`), answering each with its milliseconds. `model_pytorch.py --lockstep`
//! drives it that way, alternating Rust and PyTorch steps, so that on a shared, noisy machine
//! both see the same background load and their ratio stays meaningful.

use model::{set_memory_format, Denoiser, MemoryFormat, ModelConfig, SimpleUnetConfig, UNetConfig};
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

#[path = "../benches/support/adam.rs"]
mod adam;

fn time_it(iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..2 {
        f();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let mean = times.iter().sum::<f64>() / iters as f64;
    times.sort_by(f64::total_cmp);
    let median = if iters % 2 == 1 {
        times[iters / 2]
    } else {
        (times[iters / 2 - 1] + times[iters / 2]) / 2.0
    };
    (mean, median)
}

/// One benchmark case, built and ready to step.
struct Bench {
    _vs: VarStore,
    net: Box<dyn Denoiser>,
    xs: Tensor,
    target: Tensor,
    ts: Tensor,
    params: Vec<Tensor>,
    opt: adam::Adam,
}

impl Bench {
    fn new(config: &ModelConfig, batch: i64, format: MemoryFormat) -> Self {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net: Box<dyn Denoiser> = config.build(&vs.root()).unwrap();
        set_memory_format(&vs, format);
        let size = config.image_size();
        let xs = Tensor::randn(
            [batch, config.in_channels(), size, size],
            (Kind::Float, Device::Cpu),
        );
        let target = xs.randn_like();
        let ts = Tensor::randint(1000, [batch], (Kind::Int64, Device::Cpu));
        let params = vs.trainable_variables();
        let opt = adam::Adam::new(&vs, 1e-4);
        Self {
            _vs: vs,
            net,
            xs,
            target,
            ts,
            params,
            opt,
        }
    }

    /// Inference: eval mode, no autograd.
    fn forward(&self) {
        let _ = tch::no_grad(|| self.net.forward_t(&self.xs, &self.ts, false));
    }

    /// Train-mode forward, MSE, backward, Adam.
    fn train_step(&mut self) {
        let loss = self
            .net
            .forward_t(&self.xs, &self.ts, true)
            .mse_loss(&self.target, Reduction::Mean);
        let grads = Tensor::run_backward(&[&loss], &self.params, false, false);
        self.opt.update(&grads);
    }
}

fn cases() -> [(&'static str, ModelConfig, i64); 2] {
    [
        (
            "simple_unet",
            ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
            128,
        ),
        (
            "ddpm_unet",
            ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
            16,
        ),
    ]
}

fn format_named(name: &str) -> MemoryFormat {
    match name {
        "channels_last" => MemoryFormat::ChannelsLast,
        "nchw" => MemoryFormat::Contiguous,
        other => panic!("unknown layout {other}: channels_last or nchw"),
    }
}

fn serve(case: &str, layout: &str) {
    use std::io::{BufRead, Write};
    let (_, config, batch) = cases()
        .into_iter()
        .find(|(name, _, _)| *name == case)
        .expect("unknown case");
    let mut bench = Bench::new(&config, batch, format_named(layout));
    println!("ready");
    let mut stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let start = Instant::now();
        match line.unwrap().trim() {
            "forward" => bench.forward(),
            "train" => bench.train_step(),
            _ => break,
        }
        writeln!(stdout, "{}", start.elapsed().as_secs_f64() * 1e3).unwrap();
        stdout.flush().unwrap();
    }
}

/// Alternates single steps of the two layouts of one case (CL, NCHW, NCHW, CL, ...), so that
/// the comparison does not depend on how the machine's load drifts.
fn compare_layouts(case: &str, iters: usize) {
    let (_, config, batch) = cases()
        .into_iter()
        .find(|(name, _, _)| *name == case)
        .expect("unknown case");
    let mut cl = Bench::new(&config, batch, MemoryFormat::ChannelsLast);
    let mut nchw = Bench::new(&config, batch, MemoryFormat::Contiguous);
    let timed = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e3
    };
    for train in [false, true] {
        let step = |b: &mut Bench| if train { b.train_step() } else { b.forward() };
        for _ in 0..2 {
            step(&mut cl);
            step(&mut nchw);
        }
        let (mut cl_ms, mut nchw_ms) = (Vec::new(), Vec::new());
        for i in 0..iters {
            if i % 2 == 0 {
                cl_ms.push(timed(&mut || step(&mut cl)));
                nchw_ms.push(timed(&mut || step(&mut nchw)));
            } else {
                nchw_ms.push(timed(&mut || step(&mut nchw)));
                cl_ms.push(timed(&mut || step(&mut cl)));
            }
        }
        let mut ratios: Vec<f64> = cl_ms.iter().zip(&nchw_ms).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{case}/batch{batch}/{}: channels_last median {:.1} ms, nchw median {:.1} ms, \
             channels_last/nchw median ratio {:.3} ({iters} rounds)",
            if train { "train_step" } else { "forward" },
            median(&mut cl_ms),
            median(&mut nchw_ms),
            ratios[ratios.len() / 2]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let threads: i32 = flag("--threads").map_or(2, |s| s.parse().unwrap());
    let iters: usize = flag("--iters").map_or(10, |s| s.parse().unwrap());
    tch::set_num_threads(threads);
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve(&args[i + 1], &args[i + 2]);
    }
    if let Some(case) = flag("--compare-layouts") {
        return compare_layouts(&case, iters);
    }
    let only = flag("--only");
    let layout = flag("--layout");
    println!("tch, {} threads", tch::get_num_threads());
    for (name, config, batch) in cases() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        for format_name in ["channels_last", "nchw"] {
            if layout.as_deref().is_some_and(|l| l != format_name) {
                continue;
            }
            let mut bench = Bench::new(&config, batch, format_named(format_name));
            let (mean, median) = time_it(iters, || bench.forward());
            println!("{name}/batch{batch}/forward/{format_name}: mean {mean:.1} ms, median {median:.1} ms");
            let (mean, median) = time_it(iters, || bench.train_step());
            println!("{name}/batch{batch}/train_step/{format_name}: mean {mean:.1} ms, median {median:.1} ms");
        }
    }
}
