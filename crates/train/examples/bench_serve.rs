//! The Rust side of `cargo xtask bench`'s side-by-side timings: builds one benchmark case, then
//! runs one step per line of stdin and answers each with its wall time in milliseconds.
//!
//! ```text
//! bench_serve --case simple_unet|ddpm_unet|ddpm_unet_256 --batch N [--device cpu|cuda] [--threads N] [--bf16]
//!             [--cudnn-benchmark true|false]
//!             [--cuda-graph] [--layout nchw|channels_last] [--sampling]
//! stdin:  forward | train_step | loop_step | optimizer_step | ddpm_step | ddim_step
//!         | dpmpp_2m_step | dpmpp_3m_step | unipc_bh2_step | euler_step | heun_step | plms_step
//!         [COUNT] | memory | quit
//! stdout: `ready <layout>` (nchw or channels_last), then one number per request: the
//!         milliseconds of COUNT (default 1) runs of the step, the device synchronised once at
//!         the end; for `memory`, the peak bytes the CUDA caching allocator held in live
//!         tensors since the previous `memory` request (NaN on the CPU)
//! ```
//!
//! The network's kernels are laid out in the model's training preference, or with `--sampling`
//! (which also sets glibc's allocator as for sampling, not training) in the layout `ddpm sample`
//! loads it in (`ModelConfig::inference_memory_format`: channels-last
//! for the paper's U-Net on the CPU), or in `--layout` (`model::set_memory_format`); the input
//! follows the kernels.
//!
//! `--cuda-graph` (a build with train's `cuda` feature) runs `loop_step` as a CUDA graph
//! (`Trainer::enable_cuda_graph`). `--loop-only` builds the trainer alone and serves only
//! `loop_step` and `memory`, so that the peak memory is the training run's.
//!
//! `scripts/bench/peer.py` serves the same requests (all but `loop_step`) from PyTorch eager on
//! the same libtorch, and the xtask alternates single requests between the two, so that both are
//! timed under the same machine load.
//!
//! - `forward`: eval mode, no autograd.
//! - `train_step`: the bare step: the closed-form x_t, a train-mode forward, the preset's loss
//!   (L1 for the notebook's model, L2 for the paper's), backward and the Adam update, on one batch
//!   already on the device.
//! - `loop_step`: `Trainer::train_step` on the next batch of a loader with background workers, as
//!   `Trainer::run` gets it: the bare step plus data, the per-step reseeding and t/ε draws, the
//!   NaN guard's device-side check and counters, gradient clipping where the preset clips, and the
//!   EMA update.
//! - `optimizer_step`: what follows `backward()` in `Trainer::train_step`, on gradients that are
//!   already there: the global gradient norm (`_foreach_norm`), the device-side non-finite flag,
//!   the learning rate from the device step count, the fused Adam update with the clipping folded
//!   into its `grad_scale`, and the EMA's multi-tensor lerp (decay 0.9999, warm-up on) — for the
//!   paper's U-Net, 35.7M parameters. The peer times `clip_grad_norm_`, `torch.optim.Adam`
//!   (`foreach=True` or `fused=True`) and `torch._foreach_lerp_` on the same parameter shapes.
//! - `ddpm_step` / `ddim_step`: one sampling step at t = 500 (Ho et al. Alg. 2 with σ² = β; DDIM
//!   η = 0 with 50 leading-spaced steps): an eval forward, a noise draw and the update.
//! - `dpmpp_2m_step`, `dpmpp_3m_step`, `unipc_bh2_step`, `euler_step`, `heun_step`, `plms_step`:
//!   one network evaluation and `Sampler::step` of DPM-Solver++ 2M and 3M, UniPC (B(h) = e^h − 1,
//!   order 2), Euler and Heun in σ-space, and PLMS, each a chain of 50 leading-spaced steps taken
//!   in order from its first evaluation at or below t = 500, so that the multistep solvers run at
//!   their full order with their history (the earlier evaluations are replayed untimed, on a
//!   stand-in output; a chain that nears its last step is replayed again before the request).
//!   The input is the scaled sample and the fractional timestep where the solver asks for them.
//!
//! Each answer is taken after the device has finished the step (CUDA is synchronised).

use std::io::{BufRead, Write};
use std::time::Instant;

use model::{Denoiser, MemoryFormat, Precision, Prediction};
use sample::{Sampler, SamplerConfig, SigmaSpacing, UniPcVariant};
use schedule::tensor::ScheduleTensors;
use schedule::{Schedule, TimestepSpacing, VarianceType};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use torch_ext::host_memory;
use train::ema::{Ema, EmaConfig};
use train::objective::training_loss;
use train::optim::Adam;
use train::{Preset, TrainConfig, Trainer};

#[path = "../benches/support/random_dataset.rs"]
mod random_dataset;
use random_dataset::random_dataset;

struct Args {
    case: String,
    batch: usize,
    device: Device,
    threads: Option<i32>,
    bf16: bool,
    cudnn_benchmark: bool,
    cuda_graph: bool,
    loop_only: bool,
    layout: Option<MemoryFormat>,
    sampling: bool,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        })
    };
    let device = match value("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => panic!("--device {other}: expected cpu or cuda"),
    };
    Args {
        case: value("--case").expect("--case simple_unet|ddpm_unet|ddpm_unet_256"),
        batch: value("--batch")
            .expect("--batch N")
            .parse()
            .expect("--batch: a number"),
        device,
        threads: value("--threads").map(|n| n.parse().expect("--threads: a number")),
        bf16: args.iter().any(|a| a == "--bf16"),
        // As the `ddpm` commands: cuDNN's autotuner on unless told otherwise (CUDA only).
        cudnn_benchmark: value("--cudnn-benchmark").is_none_or(|v| v == "true"),
        cuda_graph: args.iter().any(|a| a == "--cuda-graph"),
        loop_only: args.iter().any(|a| a == "--loop-only"),
        layout: value("--layout").map(|l| match l.as_str() {
            "nchw" => MemoryFormat::Contiguous,
            "channels_last" => MemoryFormat::ChannelsLast,
            other => panic!("--layout {other}: expected nchw or channels_last"),
        }),
        sampling: args.iter().any(|a| a == "--sampling"),
    }
}

/// The training configuration of a case: the preset its model comes from, at `batch`.
fn case_config(args: &Args) -> TrainConfig {
    let preset = match args.case.as_str() {
        "simple_unet" => Preset::Seed,
        "ddpm_unet" => Preset::DdpmCifar10,
        // The paper's 114M U-Net at 256² (`ddpm-church-256`).
        "ddpm_unet_256" => Preset::DdpmChurch256,
        other => panic!("--case {other}: expected simple_unet, ddpm_unet or ddpm_unet_256"),
    };
    let mut config = preset.config();
    config.batch_size = args.batch;
    config.precision = if args.bf16 {
        Precision::Bf16
    } else {
        Precision::F32
    };
    config
}

/// The peak bytes in live tensors on `device` since the last call (NaN off CUDA or without
/// the `cuda` feature), and a restart of the peak.
fn peak_memory(device: Device) -> f64 {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(index) = device {
        let stats = torch_ext::cuda::memory_stats(index).expect("CUDA memory stats");
        torch_ext::cuda::reset_peak_memory_stats(index).expect("a reset of the peak");
        return stats.peak_allocated as f64;
    }
    let _ = device;
    f64::NAN
}

/// A trainer fed by a loader with background workers, as `Trainer::run` has it.
fn loop_trainer(
    args: &Args,
    config: &TrainConfig,
    dir: &std::path::Path,
) -> (Trainer, data::Loader) {
    let run = train::RunDir::lock(dir).expect("the run directory");
    let start = train::Start::Fresh(config.clone());
    let options = train::OpenOptions::new(args.device);
    let mut trainer =
        Trainer::open(run, start, random_dataset(config), options).expect("a trainer");
    if args.cuda_graph {
        if let Err(err) = trainer.enable_cuda_graph() {
            eprintln!("bench_serve: --cuda-graph: {err}");
            std::process::exit(2);
        }
    }
    let loader = data::Loader::new(
        random_dataset(config),
        &config.transform,
        trainer.loader().config().clone(),
    )
    .expect("a loader");
    (trainer, loader)
}

/// The layout the model chose (its measured preference), for the peer to use the same.
fn layout(vs: &VarStore) -> &'static str {
    if vs.variables().values().any(model::is_channels_last) {
        "channels_last"
    } else {
        "nchw"
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `--loop-only`: the trainer alone, serving `loop_step [COUNT]` and `memory`.
fn serve_loop_only(args: &Args, config: &TrainConfig) {
    let dir = tempfile::tempdir().expect("a temporary run directory");
    let (mut trainer, loader) = loop_trainer(args, config, dir.path());
    let mut batches = (0u64..).flat_map(|e| loader.epoch(e));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready {}", layout(trainer.model_vs())).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a request line");
        let mut words = line.split_whitespace();
        let answer = match (words.next().unwrap_or(""), words.next()) {
            ("memory", _) => peak_memory(args.device),
            ("loop_step", count) => {
                let count: usize = count.map_or(1, |n| n.parse().expect("a count"));
                let start = Instant::now();
                for _ in 0..count {
                    let batch = batches.next().expect("endless epochs");
                    trainer.train_step(&batch).expect("a finite step");
                }
                sync(args.device);
                start.elapsed().as_secs_f64() * 1e3
            }
            ("quit" | "", _) => return,
            (other, _) => panic!("--loop-only serves loop_step and memory, not {other:?}"),
        };
        writeln!(out, "{answer:.4}").unwrap();
        out.flush().unwrap();
    }
}

/// The bare steps' state: the network and its optimizer and EMA outside a trainer, fixed
/// inputs, and the two samplers at t = 500.
struct Bare<'a> {
    config: TrainConfig,
    device: Device,
    /// bf16 when the request asked for autocast (CUDA).
    autocast: Option<Kind>,
    sched: ScheduleTensors,
    vs: VarStore,
    net: Box<dyn Denoiser>,
    adam: Adam,
    _ema_vs: VarStore,
    _ema_net: Box<dyn Denoiser>,
    ema: Ema,
    x_0: Tensor,
    noise: Tensor,
    t: Tensor,
    /// DDPM and DDIM-50, each with the index of its first timestep at or below 500.
    samplers: Vec<(Sampler<'a>, usize)>,
    /// The other solvers' chains, by request name.
    chains: Vec<(&'static str, Chain<'a>)>,
}

impl<'a> Bare<'a> {
    /// Builds everything from libtorch's global generator, seeded by the caller (the network
    /// from its own).
    fn new(
        config: TrainConfig,
        device: Device,
        autocast: bool,
        samplers: Vec<(Sampler<'a>, usize)>,
    ) -> Self {
        let schedule = Schedule::new(&config.schedule).expect("the preset's schedule");
        let sched = ScheduleTensors::new(&schedule, device);
        let vs = VarStore::new(device);
        let net = config
            .model
            .build_with(&vs.root(), &mut sample::Generator::cpu(0))
            .expect("the preset's model");
        let adam = Adam::new(&vs, config.optim.clone());
        // For `optimizer_step`: an EMA of the weights, and gradients of a typical size (the
        // request leaves them as they are, so every update sees the same ones).
        let ema_vs = VarStore::new(device);
        let ema_net = config
            .model
            .build(&ema_vs.root())
            .expect("the preset's model");
        let ema = Ema::new(EmaConfig::ho2020(), &ema_vs, &vs).expect("an EMA of the model");
        // d/dp Σ p·r = r: gradients N(0, 1e-6), whose global norm (about 6 for 35.7M of them) is
        // clipped to 1 as in the paper's runs.
        let surrogate = vs
            .trainable_variables()
            .iter()
            .map(|p| (p * (p.randn_like() * 1e-3)).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, device)), |acc, x| acc + x);
        surrogate.backward();
        let (ch, size) = (config.model.in_channels(), config.model.image_size());
        let b = config.batch_size as i64;
        let x_0 = Tensor::rand([b, ch, size, size], (Kind::Float, device)) * 2.0 - 1.0;
        let noise = Tensor::randn_like(&x_0);
        let t = Tensor::randint(schedule.n_steps() as i64, [b], (Kind::Int64, device));
        Self {
            config,
            device,
            autocast: autocast.then_some(Kind::BFloat16),
            sched,
            vs,
            net,
            adam,
            _ema_vs: ema_vs,
            _ema_net: ema_net,
            ema,
            x_0,
            noise,
            t,
            samplers,
            chains: Vec::new(),
        }
    }

    /// Readies `count` runs of `request` untimed: a solver chain near its end is replayed.
    fn prepare(&mut self, request: &str, count: usize) {
        if let Some((_, chain)) = self.chains.iter_mut().find(|(n, _)| *n == request) {
            chain.ready(&self.x_0, count);
        }
    }

    /// One bare step; `false` for a request it does not serve.
    fn step(&mut self, request: &str) -> bool {
        let (net, x_0, autocast) = (self.net.as_ref(), &self.x_0, self.autocast);
        match request {
            "forward" => {
                let _ = tch::no_grad(|| model::forward(net, x_0, &self.t, false, autocast));
            }
            "train_step" => {
                self.adam.zero_grad();
                let loss = training_loss(
                    net,
                    &self.sched,
                    &self.config.objective,
                    x_0,
                    &self.noise,
                    &self.t,
                    autocast,
                );
                loss.backward();
                self.adam.step(self.config.optim.lr);
            }
            "optimizer_step" => {
                let total_steps = 800_000;
                let adam = &mut self.adam;
                let norm = adam.grad_norm();
                let lr = self
                    .config
                    .optim
                    .lr_tensor(adam.steps_tensor(), total_steps);
                let (_, found_inf) = train::stats::non_finite(&norm, &norm);
                let scale = Adam::clip_scale(&norm, 1.0);
                adam.step_on_device(&lr, &found_inf, Some(&scale));
                self.ema.update_unless(Some(&found_inf));
            }
            "ddpm_step" => self.sample_step(0),
            "ddim_step" => self.sample_step(1),
            other => match self.chains.iter_mut().find(|(n, _)| *n == other) {
                Some((_, chain)) => chain.step(net, x_0, autocast),
                None => return false,
            },
        }
        true
    }

    /// One step of sampler `which` at its timestep nearest below 500.
    fn sample_step(&mut self, which: usize) {
        let (sampler, i) = &mut self.samplers[which];
        let t = sampler.timesteps()[*i];
        let x_0 = &self.x_0;
        let _ = tch::no_grad(|| {
            let t_batch = Tensor::full([x_0.size()[0]], t as i64, (Kind::Int64, self.device));
            let eps = model::forward(self.net.as_ref(), x_0, &t_batch, false, self.autocast);
            let z = sampler.needs_noise(*i).then(|| Tensor::randn_like(x_0));
            sampler.step(*i, &eps, x_0, z.as_ref()).prev_sample
        });
    }
}

/// DDPM and DDIM-50 on `sampling_sched`, each at its first timestep at or below 500.
fn samplers_at_500(sampling_sched: &ScheduleTensors) -> Vec<(Sampler<'_>, usize)> {
    let ddpm = SamplerConfig::ddpm(VarianceType::FixedLarge);
    let ddim = SamplerConfig::Ddim {
        steps: 50,
        eta: 0.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    [ddpm, ddim]
        .iter()
        .map(|c| {
            let sampler = Sampler::new(sampling_sched, c, Prediction::Eps, false).expect("sampler");
            let i = sampler
                .timesteps()
                .iter()
                .position(|&t| t <= 500)
                .expect("t <= 500");
            (sampler, i)
        })
        .collect()
}

/// One solver's chain of 50 leading-spaced steps, stepped in order from its first evaluation at
/// or below t = 500.
struct Chain<'a> {
    sched: &'a ScheduleTensors,
    config: SamplerConfig,
    sampler: Sampler<'a>,
    /// The first timed evaluation.
    start: usize,
    /// The next evaluation.
    cursor: usize,
}

impl<'a> Chain<'a> {
    fn new(sched: &'a ScheduleTensors, config: SamplerConfig) -> Self {
        let sampler = Sampler::new(sched, &config, Prediction::Eps, false).expect("sampler");
        let start = sampler
            .timesteps()
            .iter()
            .position(|&t| t <= 500)
            .expect("t <= 500");
        let n = sampler.nfe();
        Self {
            sched,
            config,
            sampler,
            start,
            cursor: n,
        }
    }

    /// Replays evaluations 0..start (on `x` as a stand-in output) unless `count` evaluations
    /// remain before the last two, so that no timed step is one of the lower-order final ones.
    fn ready(&mut self, x: &Tensor, count: usize) {
        if self.cursor + count + 2 <= self.sampler.nfe() {
            return;
        }
        assert!(
            self.start + count + 2 <= self.sampler.nfe(),
            "a chain of {} evaluations serves at most {} in one request",
            self.sampler.nfe(),
            self.sampler.nfe() - self.start - 2
        );
        self.sampler =
            Sampler::new(self.sched, &self.config, Prediction::Eps, false).expect("sampler");
        tch::no_grad(|| {
            for i in 0..self.start {
                let z = self.sampler.needs_noise(i).then(|| Tensor::randn_like(x));
                let _ = self.sampler.step(i, x, x, z.as_ref());
            }
        });
        self.cursor = self.start;
    }

    /// One network evaluation and the solver's step at the cursor.
    fn step(&mut self, net: &dyn Denoiser, x: &Tensor, autocast: Option<Kind>) {
        let (i, sampler) = (self.cursor, &mut self.sampler);
        let n = x.size()[0];
        let _ = tch::no_grad(|| {
            let eps = if sampler.integer_timesteps() {
                let t_batch = Tensor::full(
                    [n],
                    sampler.timesteps()[i] as i64,
                    (Kind::Int64, x.device()),
                );
                model::forward(net, x, &t_batch, false, autocast)
            } else {
                let t = sampler.model_timesteps()[i];
                let t_batch = Tensor::full([n], t, (Kind::Float, x.device()));
                model::forward(
                    net,
                    &(x * sampler.input_scale(i)),
                    &t_batch,
                    false,
                    autocast,
                )
            };
            let z = sampler.needs_noise(i).then(|| Tensor::randn_like(x));
            sampler.step(i, &eps, x, z.as_ref()).prev_sample
        });
        self.cursor += 1;
    }
}

/// The solver chains `bench_serve` serves beside DDPM and DDIM, by request name.
fn chains(sched: &ScheduleTensors) -> Vec<(&'static str, Chain<'_>)> {
    let (steps, spacing, timesteps) = (50, TimestepSpacing::Leading, None);
    let dpm = |order| SamplerConfig::DpmSolverPp {
        steps,
        spacing,
        timesteps: None,
        order,
        sde: false,
    };
    let sigma = SigmaSpacing::Leading;
    [
        ("dpmpp_2m_step", dpm(2)),
        ("dpmpp_3m_step", dpm(3)),
        (
            "unipc_bh2_step",
            SamplerConfig::UniPc {
                steps,
                spacing,
                timesteps: None,
                order: 2,
                variant: UniPcVariant::Bh2,
            },
        ),
        (
            "euler_step",
            SamplerConfig::Euler {
                steps,
                spacing: sigma,
                timesteps: None,
            },
        ),
        (
            "heun_step",
            SamplerConfig::Heun {
                steps,
                spacing: sigma,
                timesteps,
            },
        ),
        (
            "plms_step",
            SamplerConfig::Pndm {
                steps,
                spacing,
                prk: false,
            },
        ),
    ]
    .into_iter()
    .map(|(name, config)| (name, Chain::new(sched, config)))
    .collect()
}

fn main() {
    let args = parse_args();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = args.device;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(args.cudnn_benchmark);
    }
    let config = case_config(&args);
    // glibc's allocator as the `ddpm` commands set it for this work.
    let work = if args.sampling {
        host_memory::Work::Sampling
    } else {
        host_memory::Work::Training {
            gradient_checkpointing: config.model.gradient_checkpointing(),
        }
    };
    host_memory::configure(device, work);
    if args.loop_only {
        tch::manual_seed(0);
        serve_loop_only(&args, &config);
        return;
    }
    let autocast = args.bf16 && device.is_cuda();
    // The inputs (and the random dataset) from the global generator; the network from its own.
    tch::manual_seed(0);
    // The sampling steps run on the ho2020 schedule (T = 1000) at t = 500 for both cases.
    let sampling_sched = ScheduleTensors::new(
        &Schedule::new(&schedule::BetaSchedule::ho2020()).expect("ho2020"),
        device,
    );
    let samplers = samplers_at_500(&sampling_sched);
    let mut bare = Bare::new(config.clone(), device, autocast, samplers);
    let sampling = args
        .sampling
        .then(|| config.model.inference_memory_format(device));
    if let Some(format) = args.layout.or(sampling) {
        model::set_memory_format(&bare.vs, format);
    }
    bare.chains = chains(&sampling_sched);
    let dir = tempfile::tempdir().expect("a temporary run directory");
    // A loader like the trainer's own, whose workers make batches while the steps run.
    let (mut trainer, loader) = loop_trainer(&args, &config, dir.path());
    let mut batches = (0u64..).flat_map(|e| loader.epoch(e));

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready {}", layout(&bare.vs)).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a request line");
        let mut words = line.split_whitespace();
        let request = words.next().unwrap_or("");
        let count: usize = words
            .next()
            .map_or(1, |n| n.parse().expect("a request's count is a number"));
        match request {
            "memory" => {
                writeln!(out, "{}", peak_memory(device)).unwrap();
                out.flush().unwrap();
                continue;
            }
            "quit" | "" => return,
            _ => {}
        }
        bare.prepare(request, count);
        let start = Instant::now();
        for _ in 0..count {
            if request == "loop_step" {
                let batch = batches.next().expect("endless epochs");
                trainer.train_step(&batch).expect("a finite step");
            } else if !bare.step(request) {
                panic!("unknown request {request:?}");
            }
        }
        sync(device);
        writeln!(out, "{:.4}", start.elapsed().as_secs_f64() * 1e3).unwrap();
        out.flush().unwrap();
    }
}
