//! Data-parallel training of the paper's U-Net (35.7M parameters, CIFAR-10 32×32, the
//! `ddpm-cifar10` preset) on the CPU over loopback Gloo, every figure against its peers measured
//! in the same run. Every step timed is the trainer's own (`Trainer::train_step`, what
//! `ddpm train` runs), so the benchmark cannot drift from the step it measures.
//!
//! 1. The all-reduce of the U-Net's gradients alone (35.7M f32 values, 25 MiB buckets, 2 ranks).
//! 2. `Trainer::train_step` on one resident batch (no loader), in interleaved rounds, so that the
//!    machine's drift hits every variant alike. Each round times one step of each of:
//!    - `alone`: rank 0 by itself, 2 intra-op threads, the global batch B (rank 1 waits);
//!    - `local`: both ranks at once, 1 thread each, a trainer of B/2 images each that is not
//!      data-parallel (the compute floor of the one below);
//!    - `bucketed`: data-parallel, 1 thread each, B/2 images each, gradients all-reduced in
//!      25 MiB buckets after backward (what a bare `train_step` of a data-parallel run does).
//!
//!    The communication share of a step is `(T − T_local) / T`: what it loses to communication
//!    beyond the same computation without it.
//! 3. `Trainer::run` itself (loader included): 2 ranks × 1 thread, bucketed and overlap (DDP's
//!    Reducer, which all-reduces during backward, as `ddpm train` does by default for
//!    `grad_sync = "overlap"`), against 1 rank × 2 threads, one phase after the other.
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

use data::{Batch, Dataset};
use model::Precision;
use tch::{Device, Tensor};
use torch_ext::dist::DEFAULT_BUCKET_BYTES;
use torch_ext::dist::{Distributed, GradSync, LaunchEnv};
use torch_ext::ReduceOp;
use train::trainer::TrainHooks;
use train::{OpenOptions, Preset, RunDir, Start, StepOutcome, TrainConfig, Trainer};

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

/// `n` bytes from a fixed LCG: the same on every rank.
fn lcg_bytes(n: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// 64 random 32×32 RGB images.
fn dataset() -> Dataset {
    let pixels = lcg_bytes(64 * 3 * 32 * 32);
    Dataset::new(pixels, vec![0; 64], 3, 32, 32, vec!["x".into()]).expect("a dataset")
}

/// Images `first..first + n` of a random global batch, on [-1, 1], as the loader hands them
/// to the trainer.
fn resident_batch(batch: usize, first: usize, n: usize) -> Batch {
    let image = 3 * 32 * 32;
    let bytes = lcg_bytes(batch * image);
    let images = bytes[first * image..(first + n) * image]
        .iter()
        .map(|&b| b as f32 / 127.5 - 1.0)
        .collect();
    Batch {
        images,
        labels: vec![0; n],
        shape: [n, 3, 32, 32],
        epoch: 0,
        index: 0,
    }
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

/// A trainer of this process alone.
fn open_alone(dir: &Path, config: TrainConfig) -> Result<Trainer> {
    let options = OpenOptions::new(Device::Cpu);
    Ok(Trainer::open(
        RunDir::lock(dir)?,
        Start::Fresh(config),
        dataset(),
        options,
    )?)
}

/// This rank's trainer of a data-parallel run; every rank opens it at the same time.
fn open_rank(dist: Distributed, dir: &Path, config: TrainConfig) -> Result<Trainer> {
    let run = if dist.is_main() {
        RunDir::lock(dir)?
    } else {
        RunDir::follow(dir)
    };
    let options = OpenOptions::new(Device::Cpu).distributed(Some(dist));
    Ok(Trainer::open(
        run,
        Start::Fresh(config),
        dataset(),
        options,
    )?)
}

fn connect(env: &LaunchEnv) -> Result<Distributed> {
    Ok(Distributed::connect(
        env.clone(),
        Device::Cpu,
        Duration::from_secs(1800),
    )?)
}

/// The median time of the gradients' all-reduce alone, after one warm-up, and the number of
/// values all-reduced.
fn allreduce_alone(dist: &Distributed, params: &[Tensor]) -> Result<(Duration, i64)> {
    let mut grads: Vec<Tensor> = params
        .iter()
        .map(|p| Tensor::randn_like(p).set_requires_grad(false))
        .collect();
    let n_values = grads.iter().map(|g| g.numel() as i64).sum();
    let mut times = Vec::new();
    for _ in 0..env_usize("DDP_BENCH_ALLREDUCE_REPS", 5) + 1 {
        dist.barrier("sync")?;
        let start = Instant::now();
        dist.group()
            .allreduce_bucketed(&mut grads, ReduceOp::Avg, DEFAULT_BUCKET_BYTES)?;
        times.push(start.elapsed());
    }
    Ok((median(times[1..].to_vec()), n_values))
}

/// One `Trainer::train_step`, timed.
fn timed_step(trainer: &mut Trainer, batch: &Batch) -> Result<Duration> {
    let start = Instant::now();
    trainer.train_step(batch)?;
    Ok(start.elapsed())
}

/// Median step times of the interleaved rounds (`alone` is empty on rank 1).
struct StepRounds {
    alone: Vec<Duration>,
    local: Vec<Duration>,
    bucketed: Vec<Duration>,
}

/// Part 2: interleaved rounds of `Trainer::train_step`, the first a warm-up.
fn step_rounds(
    env: &LaunchEnv,
    dist: &Distributed,
    bucketed: &mut Trainer,
    tmp: &Path,
    batch: usize,
) -> Result<StepRounds> {
    let main = env.rank == 0;
    let per_rank = batch / env.world_size;
    // Never the last step of a run: that one reads the statistics on the host.
    let endless = 1_000_000;
    let mut alone = if main {
        Some(open_alone(
            &tmp.join("steps-alone"),
            config(batch, endless, GradSync::Bucketed),
        )?)
    } else {
        None
    };
    let mut local = open_alone(
        &tmp.join(format!("steps-local-{}", env.rank)),
        config(per_rank, endless, GradSync::Bucketed),
    )?;
    let global = resident_batch(batch, 0, batch);
    let shard = resident_batch(batch, env.rank * per_rank, per_rank);
    let mut rounds = StepRounds {
        alone: vec![],
        local: vec![],
        bucketed: vec![],
    };
    for round in 0..=env_usize("DDP_BENCH_ROUNDS", 5) {
        dist.barrier("sync")?;
        if let Some(alone) = alone.as_mut() {
            tch::set_num_threads(2);
            let t = timed_step(alone, &global)?;
            tch::set_num_threads(1);
            rounds.alone.push(t);
        }
        dist.barrier("sync")?;
        rounds.local.push(timed_step(&mut local, &shard)?);
        dist.barrier("sync")?;
        rounds.bucketed.push(timed_step(bucketed, &shard)?);
        if round == 0 {
            rounds.alone.clear();
            rounds.local.clear();
            rounds.bucketed.clear();
        }
    }
    Ok(rounds)
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
fn time_run(mut trainer: Trainer) -> Result<Duration> {
    let mut hooks = StepTimes::default();
    trainer.run(&mut hooks, &AtomicBool::new(false))?;
    Ok(median(hooks.times[1..].to_vec()))
}

/// Median step times of `Trainer::run`, one phase after the other.
struct RunPhases {
    /// Rank 0 alone, 2 threads (`None` on rank 1).
    alone: Option<Duration>,
    bucketed: Duration,
    overlap: Duration,
}

/// Part 3: `Trainer::run` alone on rank 0, then data-parallel with each way of averaging the
/// gradients, each over its own rendezvous (`with_port(2)`, `with_port(3)`).
fn run_phases(
    env: &LaunchEnv,
    dist: Distributed,
    with_port: impl Fn(u16) -> LaunchEnv,
    tmp: &Path,
    batch: usize,
    steps: u64,
) -> Result<RunPhases> {
    dist.barrier("sync")?;
    let alone = if env.rank == 0 {
        tch::set_num_threads(2);
        let trainer = open_alone(
            &tmp.join("run-alone"),
            config(batch, steps, GradSync::Bucketed),
        )?;
        let t = time_run(trainer)?;
        tch::set_num_threads(1);
        Some(t)
    } else {
        None
    };
    dist.barrier("sync")?;
    drop(dist);
    let data_parallel = |port: u16, name: &str, grad_sync: GradSync| -> Result<Duration> {
        let trainer = open_rank(
            connect(&with_port(port))?,
            &tmp.join(name),
            config(batch, steps, grad_sync),
        )?;
        time_run(trainer)
    };
    Ok(RunPhases {
        alone,
        bucketed: data_parallel(2, "run-bucketed", GradSync::Bucketed)?,
        overlap: data_parallel(3, "run-overlap", GradSync::Overlap)?,
    })
}

/// One rank's part. `env.master_port` and the next three ports serve the four rendezvous: the
/// benchmark's own barriers, the data-parallel trainer of part 2, and the two of part 3.
fn rank(env: &LaunchEnv, batch: usize, steps: u64, tmp: &Path) -> Result<()> {
    tch::set_num_threads(1);
    let with_port = |offset: u16| LaunchEnv {
        master_port: env.master_port + offset,
        ..env.clone()
    };
    let dist = connect(&with_port(0))?;
    let mut bucketed = open_rank(
        connect(&with_port(1))?,
        &tmp.join("steps-bucketed"),
        config(batch, 1_000_000, GradSync::Bucketed),
    )?;
    let params = bucketed.model_vs().trainable_variables();
    let (allreduce, n_values) = allreduce_alone(&dist, &params)?;
    drop(params);
    let rounds = step_rounds(env, &dist, &mut bucketed, tmp, batch)?;
    drop(bucketed);
    let runs = run_phases(env, dist, with_port, tmp, batch, steps)?;
    if env.rank == 0 {
        report(env, batch, steps, (allreduce, n_values), rounds, runs);
    }
    Ok(())
}

/// Prints rank 0's figures.
fn report(
    env: &LaunchEnv,
    batch: usize,
    steps: u64,
    (allreduce, n_values): (Duration, i64),
    rounds: StepRounds,
    runs: RunPhases,
) {
    let per_rank = batch / env.world_size;
    let n_rounds = rounds.local.len();
    let mb = n_values as f64 * 4.0 / 1e6;
    let fastest = |ts: &[Duration]| ms(*ts.iter().min().expect("rounds"));
    println!(
        "fastest of the rounds (ms): alone {:.1}, local {:.1}, bucketed {:.1}",
        fastest(&rounds.alone),
        fastest(&rounds.local),
        fastest(&rounds.bucketed),
    );
    let alone_ms = ms(median(rounds.alone));
    let local_ms = ms(median(rounds.local));
    let bucketed_ms = ms(median(rounds.bucketed));
    println!(
        "paper U-Net ({n_values} parameters), global batch {batch}, {} ranks over loopback Gloo, CPU",
        env.world_size
    );
    println!(
        "gradient all-reduce alone ({mb:.1} MB f32, 25 MiB buckets): {:.1} ms ({:.2} GB/s of gradients)",
        ms(allreduce),
        mb / 1e3 / allreduce.as_secs_f64()
    );
    println!("Trainer::train_step, median of {n_rounds} interleaved rounds:");
    println!("  alone     1 rank  x 2 threads, batch {batch:<3}          {alone_ms:8.1} ms");
    println!("  local     2 ranks x 1 thread, {per_rank} each, no comm.    {local_ms:8.1} ms");
    println!(
        "  bucketed  2 ranks x 1 thread, {per_rank} each             {bucketed_ms:8.1} ms  {:.2}x alone; communication {:.0}% of the step",
        bucketed_ms / alone_ms,
        100.0 * (bucketed_ms - local_ms) / bucketed_ms,
    );
    let run_alone = ms(runs.alone.expect("rank 0 ran it"));
    println!(
        "Trainer::run, median of {} steps after a warm-up, one phase after the other:",
        steps - 1
    );
    println!("  1 rank  x 2 threads              {run_alone:8.1} ms");
    for (name, t) in [("bucketed", runs.bucketed), ("overlap", runs.overlap)] {
        println!(
            "  2 ranks x 1 thread, {name:<9}    {:8.1} ms  {:.2}x the 1-rank step",
            ms(t),
            ms(t) / run_alone
        );
    }
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
    // Alone: become rank 0 of two, with rank 1 a copy of this program. Four consecutive free
    // ports, for the four rendezvous.
    let port = (20_000..60_000)
        .step_by(7)
        .find(|&p| (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("four free ports");
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
