//! Times one data-parallel training step's gradient all-reduce both ways torch-ext offers, on
//! the same MLP: `ProcessGroup::allreduce_bucketed` after `backward()`, and DDP's `Reducer`,
//! which all-reduces buckets during `backward()`. Also checks that both give the same gradients.
//!
//! ```sh
//! # two ranks on this machine (the example starts its second rank itself), Gloo on CPU:
//! cargo run --release -p torch-ext --example ddp_bench
//! # or under torchrun, any number of ranks:
//! torchrun --no-python --nproc_per_node=4 target/release/examples/ddp_bench
//! ```
//!
//! Options (environment): `DDP_BENCH_STEPS` (default 20), `DDP_BENCH_WIDTH` (512),
//! `DDP_BENCH_DEPTH` (8), `DDP_BENCH_BATCH` (128).

use std::process::Command;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use torch_ext::dist::DEFAULT_BUCKET_BYTES;
use torch_ext::{Generator, LaunchEnv, ProcessGroup, ReduceOp, Reducer, ReducerOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Mlp {
    weights: Vec<Tensor>,
}

impl Mlp {
    fn new(width: i64, depth: usize) -> Self {
        let mut gen = Generator::cpu(0);
        let weights = (0..depth)
            .map(|_| {
                let w = gen
                    .randn(&[width, width], (Kind::Float, Device::Cpu))
                    .unwrap()
                    / (width as f64).sqrt();
                w.set_requires_grad(true)
            })
            .collect();
        Self { weights }
    }

    fn loss(&self, xs: &Tensor) -> Tensor {
        let ys = self
            .weights
            .iter()
            .fold(xs.shallow_clone(), |h, w| h.matmul(w).relu());
        ys.square().mean(Kind::Float)
    }

    fn zero_grad(&self) {
        for w in &self.weights {
            let mut g = w.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn grads(&self) -> Vec<Tensor> {
        self.weights.iter().map(Tensor::grad).collect()
    }
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

fn run(env: &LaunchEnv) -> torch_ext::Result<()> {
    let timeout = Duration::from_secs(60);
    let store = env.store(timeout)?;
    let group = ProcessGroup::gloo(&store, env.rank, env.world_size, timeout)?;
    let steps = env_usize("DDP_BENCH_STEPS", 20);
    let width = env_usize("DDP_BENCH_WIDTH", 512) as i64;
    let depth = env_usize("DDP_BENCH_DEPTH", 8);
    let batch = env_usize("DDP_BENCH_BATCH", 128) as i64;
    let model = Mlp::new(width, depth);
    let mut params: Vec<Tensor> = model.weights.iter().map(Tensor::shallow_clone).collect();
    group.broadcast_coalesced(&mut params, 0, torch_ext::dist::DEFAULT_BROADCAST_BYTES)?;
    let mut gen = Generator::cpu(1000 + env.rank as u64);
    let inputs: Vec<Tensor> = (0..steps)
        .map(|_| {
            gen.randn(&[batch, width], (Kind::Float, Device::Cpu))
                .unwrap()
        })
        .collect();

    // Local backward only: the floor both methods add communication to.
    let mut local = vec![];
    for xs in &inputs {
        model.zero_grad();
        group.barrier()?;
        let start = Instant::now();
        model.loss(xs).backward();
        local.push(start.elapsed());
    }

    let mut bucketed = vec![];
    let mut bucketed_grads = vec![];
    for xs in &inputs {
        model.zero_grad();
        group.barrier()?;
        let start = Instant::now();
        model.loss(xs).backward();
        let mut grads = model.grads();
        group.allreduce_bucketed(&mut grads, ReduceOp::Avg, DEFAULT_BUCKET_BYTES)?;
        bucketed.push(start.elapsed());
        bucketed_grads = grads.iter().map(Tensor::copy).collect();
    }

    let mut reduced = vec![];
    let mut reducer = Reducer::new(&group, &model.weights, ReducerOptions::default())?;
    for xs in &inputs {
        model.zero_grad();
        group.barrier()?;
        let start = Instant::now();
        reducer.prepare_for_forward()?;
        let loss = model.loss(xs);
        reducer.prepare_for_backward(&[&loss])?;
        loss.backward();
        reduced.push(start.elapsed());
    }
    let max_diff = model
        .grads()
        .iter()
        .zip(&bucketed_grads)
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);

    if env.rank == 0 {
        let n_params: i64 = model
            .weights
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        println!(
            "{} ranks, {n_params} parameters ({:.1} MiB), batch {batch}, {steps} steps, median ms/step (forward + backward + all-reduce):",
            env.world_size,
            n_params as f64 * 4.0 / (1024.0 * 1024.0)
        );
        println!("  local only (no all-reduce)      {:8.2}", median_ms(local));
        println!(
            "  allreduce_bucketed after backward {:6.2}",
            median_ms(bucketed)
        );
        println!(
            "  Reducer (overlapped)            {:8.2}",
            median_ms(reduced)
        );
        println!("  max |grad difference| of the last step: {max_diff:e}");
    }
    Ok(())
}

fn main() -> torch_ext::Result<()> {
    tch::set_num_threads(env_usize("DDP_BENCH_THREADS", 1) as i32);
    if let Some(env) = LaunchEnv::from_env()? {
        return run(&env);
    }
    // Alone: become rank 0 of two, with rank 1 a copy of this program.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let vars = |rank: usize| {
        [
            ("WORLD_SIZE", "2".to_string()),
            ("RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let get = |name: &str| {
        vars(0)
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let env = LaunchEnv::from_vars(get)?.expect("two ranks");
    let mut peer = Command::new(std::env::current_exe().expect("the example's path"))
        .envs(vars(1))
        .spawn()
        .expect("starting rank 1");
    let result = run(&env);
    let status = peer.wait().expect("waiting for rank 1");
    assert!(status.success(), "rank 1 failed: {status}");
    result
}
