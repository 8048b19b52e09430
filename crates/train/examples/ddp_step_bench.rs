//! Data-parallel training of the paper's U-Net (35.7M parameters, CIFAR-10 32×32, the
//! `ddpm-cifar10` preset) on the CPU over loopback Gloo, every figure against its peers measured
//! in the same run.
//!
//! 1. The all-reduce of the U-Net's gradients alone (35.7M f32 values, 25 MiB buckets, 2 ranks).
//! 2. Training steps in interleaved rounds, so that the machine's drift hits every variant alike.
//!    Each round times one step of each of:
//!    - `alone`: rank 0 by itself, 2 intra-op threads, the global batch B (rank 1 waits);
//!    - `local`: both ranks at once, 1 thread each, B/2 images each, no communication (the
//!      compute floor of the two below);
//!    - `bucketed`: data-parallel, 1 thread each, gradients all-reduced in 25 MiB buckets after
//!      backward (what `ddpm train` does by default); the all-reduce is also timed inside the
//!      step;
//!    - `overlap`: data-parallel with DDP's Reducer, which all-reduces during backward.
//!
//!    A step is the trainer's (`Trainer::train_step`): t and ε drawn from the step's seed, the
//!    loss, backward, the gradient average, the small all-reduce of the loss, the norm and the
//!    clip, Adam and the EMA update, on one resident batch (no loader).
//!    The communication share of a step is `(T − T_local) / T`: what it loses to communication
//!    beyond the same computation without it.
//! 3. A cross-check through `Trainer::run` itself (loader included): 2 ranks × 1 thread,
//!    bucketed and overlap, against 1 rank × 2 threads, one phase after the other.
//!
//! ```sh
//! cargo run --release -p train --example ddp_step_bench      # starts its rank 1 itself
//! DDP_BENCH_BATCH=16 DDP_BENCH_ROUNDS=7 cargo run -p train --example ddp_step_bench
//! ```
//!
//! Options (environment): `DDP_BENCH_BATCH` (global batch, default 8), `DDP_BENCH_ROUNDS` (5),
//! `DDP_BENCH_STEPS` (steps per `Trainer::run` phase after a warm-up step, 4),
//! `DDP_BENCH_ALLREDUCE_REPS` (5).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use data::Dataset;
use model::{Denoiser, Precision};
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;
use tch::{nn::VarStore, Device, Kind, Tensor};
use torch_ext::dist::DEFAULT_BUCKET_BYTES;
use torch_ext::dist::{Distributed, GradSync, LaunchEnv};
use torch_ext::{ReduceOp, Reducer, ReducerOptions};
use train::ema::Ema;
use train::objective::training_loss;
use train::optim::Adam;
use train::trainer::{step_seed, StepOutcome, TrainHooks};
use train::{Preset, RunDir, TrainConfig, Trainer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    assert!(!xs.is_empty());
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 64 random 32×32 RGB images (a fixed LCG: the same bytes on every rank).
fn dataset() -> Dataset {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let pixels = (0..64 * 3 * 32 * 32)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    Dataset::new(pixels, vec![0; 64], 3, 32, 32, vec!["x".into()]).expect("a dataset")
}

/// The paper's setup, `steps` steps of batch `batch`, nothing written but the final checkpoint.
fn config(batch: usize, steps: u64, grad_sync: GradSync) -> TrainConfig {
    let mut config = Preset::DdpmCifar10.config();
    config.batch_size = batch;
    config.max_steps = Some(steps);
    config.checkpoint_every = 1_000_000;
    config.sample_every_epochs = 0;
    config.log_every = 1_000_000;
    config.precision = Precision::F32;
    config.n_workers = 1;
    config.distributed.grad_sync = grad_sync;
    config.distributed.timeout_secs = 1800;
    config
}

/// How a bare step averages its gradients.
#[derive(Clone, Copy, PartialEq)]
enum Sync {
    None,
    Bucketed,
    Overlap,
}

/// The trainer's step on a resident batch, with its parts exposed for timing.
struct BareStep {
    config: TrainConfig,
    sched: ScheduleTensors,
    _vs: VarStore,
    model: Box<dyn Denoiser>,
    _ema_vs: VarStore,
    _ema_model: Box<dyn Denoiser>,
    ema: Ema,
    adam: Adam,
    params: Vec<Tensor>,
    step: u64,
}

impl BareStep {
    fn new(config: TrainConfig) -> Result<Self> {
        let schedule = Schedule::new(&config.schedule)?;
        let sched = ScheduleTensors::new(&schedule, Device::Cpu);
        tch::manual_seed(config.seed as i64);
        let vs = VarStore::new(Device::Cpu);
        let model = config.model.build(&vs.root())?;
        let ema_vs = VarStore::new(Device::Cpu);
        let ema_model = config.model.build(&ema_vs.root())?;
        let ema = Ema::new(config.ema.clone(), &ema_vs, &vs)?;
        let adam = Adam::new(&vs, config.optim.clone());
        let params = vs.trainable_variables();
        Ok(Self {
            config,
            sched,
            _vs: vs,
            model,
            _ema_vs: ema_vs,
            _ema_model: ema_model,
            ema,
            adam,
            params,
            step: 0,
        })
    }

    /// One step on `n` images of `x_0`; returns the step's time and the time of its gradient
    /// all-reduce (bucketed only).
    fn run(
        &mut self,
        x_0: &Tensor,
        sync: Sync,
        dist: &Distributed,
        reducer: &mut Reducer<'_>,
    ) -> Result<(Duration, Duration)> {
        let start = Instant::now();
        tch::manual_seed(step_seed(self.config.seed, self.step));
        let n = x_0.size()[0];
        let t = Tensor::randint(1000, [n], (Kind::Int64, Device::Cpu));
        let noise = Tensor::randn_like(x_0);
        self.adam.zero_grad();
        if sync == Sync::Overlap {
            reducer.prepare_for_forward()?;
        }
        let loss = training_loss(
            self.model.as_ref(),
            &self.sched,
            &self.config.objective,
            x_0,
            &noise,
            &t,
            false,
        );
        if sync == Sync::Overlap {
            reducer.prepare_for_backward(&[&loss])?;
        }
        loss.backward();
        let mut comm = Duration::ZERO;
        let mut stats = loss.detach().reshape([1]);
        if sync == Sync::Bucketed {
            let started = Instant::now();
            let mut grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
            dist.average(&mut grads, "the gradients")?;
            comm = started.elapsed();
        }
        if sync != Sync::None {
            let mut shared = vec![stats];
            dist.sum(&mut shared, "the loss")?;
            stats = shared.pop().expect("one tensor");
        }
        let norm = self.adam.grad_norm();
        // The one host read of a data-parallel step (its stop vote travels with the loss).
        let _read = Vec::<f64>::try_from(
            Tensor::cat(&[stats, norm.reshape([1])], 0).to_kind(Kind::Double),
        )?;
        if let Some(max) = self.config.optim.grad_clip {
            self.adam.clip_grad_norm(&norm, max);
        }
        self.adam.step(self.config.optim.lr_at(self.step, 800_000));
        self.ema.update();
        self.step += 1;
        Ok((start.elapsed(), comm))
    }
}

/// The time between consecutive steps of [`Trainer::run`].
#[derive(Default)]
struct StepTimes {
    last: Option<Instant>,
    times: Vec<Duration>,
}

impl TrainHooks for StepTimes {
    fn on_start(&mut self, _total: u64, _start: u64, _per_epoch: usize) {
        self.last = Some(Instant::now());
    }

    fn on_step(&mut self, _step: u64, _epoch: u64, _outcome: &StepOutcome) {
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            self.times.push(now - last);
        }
    }
}

/// Trains and returns the median step time, the first (warm-up) step not counted.
fn time_steps(mut trainer: Trainer) -> Result<Duration> {
    let mut hooks = StepTimes::default();
    trainer.run(&mut hooks, &AtomicBool::new(false))?;
    Ok(median(hooks.times[1..].to_vec()))
}

fn alone(dir: &Path, batch: usize, steps: u64) -> Result<Duration> {
    let trainer = Trainer::new(
        config(batch, steps, GradSync::Bucketed),
        dataset(),
        dir,
        Device::Cpu,
    )?;
    time_steps(trainer)
}

fn data_parallel(
    dist: Distributed,
    dir: &Path,
    batch: usize,
    steps: u64,
    grad_sync: GradSync,
) -> Result<Duration> {
    let run = if dist.is_main() {
        RunDir::lock(dir)?
    } else {
        RunDir::follow(dir)
    };
    let trainer = Trainer::create_distributed(
        run,
        config(batch, steps, grad_sync),
        dataset(),
        Device::Cpu,
        Some(dist),
    )?;
    time_steps(trainer)
}

fn connect(env: &LaunchEnv) -> Result<Distributed> {
    Ok(Distributed::connect(
        env.clone(),
        Device::Cpu,
        Duration::from_secs(1800),
    )?)
}

/// One rank's part. `env.master_port` and the next two ports serve the three rendezvous.
fn rank(env: &LaunchEnv, batch: usize, steps: u64, tmp: &Path) -> Result<()> {
    tch::set_num_threads(1);
    let with_port = |offset: u16| LaunchEnv {
        master_port: env.master_port + offset,
        ..env.clone()
    };
    let dist = connect(&with_port(0))?;
    let main = env.rank == 0;
    let per_rank = batch / env.world_size;

    // 1. The gradients' all-reduce alone.
    let mut bare = BareStep::new(config(batch, steps, GradSync::Bucketed))?;
    let mut grads: Vec<Tensor> = bare
        .params
        .iter()
        .map(|p| Tensor::randn_like(p).set_requires_grad(false))
        .collect();
    let n_values: i64 = grads.iter().map(|g| g.numel() as i64).sum();
    let mut allreduce = Vec::new();
    for _ in 0..env_usize("DDP_BENCH_ALLREDUCE_REPS", 5) + 1 {
        dist.barrier("sync")?;
        let start = Instant::now();
        dist.group()
            .allreduce_bucketed(&mut grads, ReduceOp::Avg, DEFAULT_BUCKET_BYTES)?;
        allreduce.push(start.elapsed());
    }
    let allreduce = median(allreduce[1..].to_vec());
    drop(grads);

    // 2. Interleaved rounds of bare steps.
    let x_global = Tensor::rand([batch as i64, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let x_local = x_global.narrow(0, (env.rank * per_rank) as i64, per_rank as i64);
    let mut reducer = Reducer::new(dist.group(), &bare.params, ReducerOptions::default())?;
    let (mut t_alone, mut t_local, mut t_bucketed, mut t_comm, mut t_overlap) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..=env_usize("DDP_BENCH_ROUNDS", 5) {
        dist.barrier("sync")?;
        if main {
            tch::set_num_threads(2);
            let (t, _) = bare.run(&x_global, Sync::None, &dist, &mut reducer)?;
            tch::set_num_threads(1);
            t_alone.push(t);
        }
        dist.barrier("sync")?;
        let (t, _) = bare.run(&x_local, Sync::None, &dist, &mut reducer)?;
        t_local.push(t);
        dist.barrier("sync")?;
        let (t, comm) = bare.run(&x_local, Sync::Bucketed, &dist, &mut reducer)?;
        t_bucketed.push(t);
        t_comm.push(comm);
        dist.barrier("sync")?;
        let (t, _) = bare.run(&x_local, Sync::Overlap, &dist, &mut reducer)?;
        t_overlap.push(t);
        if round == 0 {
            // Warm-up (and the Reducer's bucket rebuild before its second step).
            for ts in [
                &mut t_alone,
                &mut t_local,
                &mut t_bucketed,
                &mut t_comm,
                &mut t_overlap,
            ] {
                ts.clear();
            }
        }
    }
    let rounds = t_local.len();
    drop(reducer);
    drop(bare);

    // 3. Through Trainer::run.
    dist.barrier("sync")?;
    let run_alone = if main {
        tch::set_num_threads(2);
        let t = alone(&tmp.join("alone"), batch, steps)?;
        tch::set_num_threads(1);
        Some(t)
    } else {
        None
    };
    dist.barrier("sync")?;
    drop(dist);
    let run_bucketed = data_parallel(
        connect(&with_port(1))?,
        &tmp.join("bucketed"),
        batch,
        steps,
        GradSync::Bucketed,
    )?;
    let run_overlap = data_parallel(
        connect(&with_port(2))?,
        &tmp.join("overlap"),
        batch,
        steps,
        GradSync::Overlap,
    )?;
    if !main {
        return Ok(());
    }

    let mb = n_values as f64 * 4.0 / 1e6;
    let fastest = |ts: &[Duration]| ms(*ts.iter().min().expect("rounds"));
    println!(
        "fastest of the rounds (ms): alone {:.1}, local {:.1}, bucketed {:.1} (all-reduce {:.1}), overlap {:.1}",
        fastest(&t_alone),
        fastest(&t_local),
        fastest(&t_bucketed),
        fastest(&t_comm),
        fastest(&t_overlap)
    );
    let (alone_ms, local_ms) = (ms(median(t_alone)), ms(median(t_local)));
    let (bucketed_ms, comm_ms, overlap_ms) = (
        ms(median(t_bucketed)),
        ms(median(t_comm)),
        ms(median(t_overlap)),
    );
    println!(
        "paper U-Net ({n_values} parameters), global batch {batch}, {} ranks over loopback Gloo, CPU",
        env.world_size
    );
    println!(
        "gradient all-reduce alone ({mb:.1} MB f32, 25 MiB buckets): {:.1} ms ({:.2} GB/s of gradients)",
        ms(allreduce),
        mb / 1e3 / allreduce.as_secs_f64()
    );
    println!("training steps, median of {rounds} interleaved rounds:");
    println!("  alone     1 rank  x 2 threads, batch {batch:<3}          {alone_ms:8.1} ms");
    println!("  local     2 ranks x 1 thread, {per_rank} each, no comm.    {local_ms:8.1} ms");
    println!(
        "  bucketed  2 ranks x 1 thread, {per_rank} each             {bucketed_ms:8.1} ms  {:.2}x alone; communication {:.0}% of the step (all-reduce inside it: {comm_ms:.1} ms = {:.0}%)",
        bucketed_ms / alone_ms,
        100.0 * (bucketed_ms - local_ms) / bucketed_ms,
        100.0 * comm_ms / bucketed_ms
    );
    println!(
        "  overlap   2 ranks x 1 thread, {per_rank} each (Reducer)    {overlap_ms:8.1} ms  {:.2}x alone; communication {:.0}% of the step",
        overlap_ms / alone_ms,
        100.0 * (overlap_ms - local_ms) / overlap_ms
    );
    let run_alone = ms(run_alone.expect("rank 0 ran it"));
    println!(
        "Trainer::run, median of {} steps after a warm-up, one phase after the other:",
        steps - 1
    );
    println!("  1 rank  x 2 threads              {run_alone:8.1} ms");
    for (name, t) in [("bucketed", run_bucketed), ("overlap", run_overlap)] {
        println!(
            "  2 ranks x 1 thread, {name:<9}    {:8.1} ms  {:.2}x the 1-rank step",
            ms(t),
            ms(t) / run_alone
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let batch = env_usize("DDP_BENCH_BATCH", 8);
    // One warm-up step, then the measured ones.
    let steps = env_usize("DDP_BENCH_STEPS", 4) as u64 + 1;
    let tmp = tempfile::tempdir()?;
    if let Some(env) = LaunchEnv::from_env()? {
        let dir = std::env::var("DDP_BENCH_DIR").map_or(tmp.path().to_path_buf(), Into::into);
        return rank(&env, batch, steps, &dir);
    }
    // Alone: become rank 0 of two, with rank 1 a copy of this program. Three consecutive free
    // ports, for the three rendezvous.
    let port = (20_000..60_000)
        .step_by(7)
        .find(|&p| (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("three free ports");
    let vars = |rank: usize| {
        [
            ("WORLD_SIZE", "2".to_string()),
            ("RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
            ("DDP_BENCH_DIR", tmp.path().display().to_string()),
        ]
    };
    let mut peer = Command::new(std::env::current_exe()?)
        .envs(vars(1))
        .spawn()?;
    let get = |name: &str| {
        vars(0)
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let env = LaunchEnv::from_vars(get)?.expect("two ranks");
    let result = rank(&env, batch, steps, tmp.path());
    let status = peer.wait()?;
    assert!(status.success(), "rank 1 failed: {status}");
    result
}
