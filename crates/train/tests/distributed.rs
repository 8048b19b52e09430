//! Data-parallel training with two processes over 127.0.0.1 and Gloo: the test binary runs
//! itself again as rank 1 (environment `DDPM_TEST_RANK=1`, `--exact` the same test), and rank 0
//! checks that rank 1 succeeded. Tiny networks, CPU, one thread per rank.

mod common;
use common::{
    clipped_config, fresh, last_checkpoint, metrics, relative_difference,
    relative_difference_named, resume, simple_unet, tiny_unet, toy_dataset_of,
};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use torch_ext::dist::{Distributed, GradSync, LaunchEnv};
use train::checkpoint::{self, named_tensors};
use train::config::TrainConfig;
use train::trainer::{NoHooks, OpenOptions, Start};
use train::{RunDir, Trainer};

const RANK_VAR: &str = "DDPM_TEST_RANK";
const PORTS_VAR: &str = "DDPM_TEST_PORTS";
const DIR_VAR: &str = "DDPM_TEST_DIR";
/// Bounds the rendezvous: generous, for a loaded machine where rank 1 (a fresh copy of this
/// binary, loading libtorch) starts slowly.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Kills rank 1 on every exit path of rank 0 (a failed assertion included).
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `body(rank, ports, dir)` on two ranks: here as rank 0, and in a child as rank 1. Each of
/// the `n_ports` ports serves one rendezvous; `dir` is a temporary directory both share.
fn two_ranks(test: &str, n_ports: usize, body: impl FnOnce(usize, &[u16], &Path)) {
    tch::set_num_threads(1);
    if let Ok(rank) = std::env::var(RANK_VAR) {
        let ports: Vec<u16> = std::env::var(PORTS_VAR)
            .unwrap()
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        let dir = PathBuf::from(std::env::var(DIR_VAR).unwrap());
        body(rank.parse().unwrap(), &ports, &dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..n_ports).map(|_| free_port()).collect();
    let joined = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(RANK_VAR, "1")
        .env(PORTS_VAR, &joined)
        .env(DIR_VAR, dir.path())
        .spawn()
        .unwrap();
    let mut peer = Peer(child);
    body(0, &ports, dir.path());
    let status = peer.0.wait().unwrap();
    assert!(status.success(), "rank 1 failed: {status}");
}

/// Rank `rank` of two, meeting on `port`.
fn connect(rank: usize, port: u16) -> Distributed {
    let env = LaunchEnv {
        rank,
        world_size: 2,
        local_rank: rank,
        local_world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
    };
    Distributed::connect(env, Device::Cpu, TIMEOUT).unwrap()
}

/// Rank 0 holds the run directory `path`. Rank 1 follows a directory of its own that nobody
/// makes (`<path>-rank1`), so that [`assert_rank1_wrote_nothing`] sees any file it writes.
fn run_dir(rank: usize, path: &Path) -> RunDir {
    if rank == 0 {
        RunDir::lock(path).unwrap()
    } else {
        RunDir::follow(&rank1_dir(path))
    }
}

fn rank1_dir(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-rank1", path.display()))
}

/// Rank 1 writes nothing into the run directory but where it is (`ranks/rank-1.*`, #29).
fn assert_rank1_wrote_nothing(rank: usize, path: &Path) {
    if rank != 1 {
        return;
    }
    let dir = rank1_dir(path);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        assert_eq!(
            entry.file_name(),
            train::elastic::RANKS_DIR,
            "rank 1 wrote {} into its run directory",
            entry.path().display()
        );
        for own in std::fs::read_dir(entry.path()).unwrap() {
            let name = own.unwrap().file_name().into_string().unwrap();
            assert!(name.starts_with("rank-1."), "rank 1 wrote ranks/{name}");
        }
    }
}

/// The paper's U-Net made tiny (two levels of 8 and 16 channels, attention at 4×4), without
/// dropout: nothing random inside the network, no batch statistics.
fn unet_config() -> TrainConfig {
    clipped_config(tiny_unet(0.0))
}

/// A 2-level SimpleUnet: BatchNorm, whose running statistics are buffers.
fn simple_config() -> TrainConfig {
    clipped_config(simple_unet())
}

/// Checks, with an all-reduce of the weights' bit patterns, that every rank holds exactly the
/// same live and EMA weights: Σ_ranks bits == 2 · own bits, elementwise, only when they agree.
/// (BatchNorm's running statistics are not compared: each rank's hold its own last update
/// until rank 0's are broadcast before the next forward pass.)
fn assert_identical_across_ranks(trainer: &Trainer) {
    let dist = trainer.distributed().unwrap();
    for (what, vs) in [
        ("weights", trainer.model_vs()),
        ("EMA weights", trainer.ema_vs()),
    ] {
        let flat: Vec<Tensor> = named_tensors(vs)
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t.detach().flatten(0, -1))
            .collect();
        let bits = Tensor::cat(&flat, 0)
            .view_dtype(Kind::Int)
            .to_kind(Kind::Int64);
        let mut sum = vec![bits.copy()];
        dist.sum(&mut sum, "the consistency check").unwrap();
        assert!(
            sum[0].equal(&(&bits * 2)),
            "rank {}: the ranks' {what} differ",
            dist.rank()
        );
    }
}

/// Trains `config` for its steps as one rank of two, in `dir`, and checks that both ranks end
/// with the same weights. Returns the trainer (rank 0's has written the final checkpoint).
fn train_two_ranks(rank: usize, port: u16, dir: &Path, config: TrainConfig) -> Trainer {
    let mut trainer = Trainer::open(
        run_dir(rank, dir),
        Start::Fresh(config),
        toy_dataset_of(64, 2),
        OpenOptions::new(Device::Cpu).distributed(Some(connect(rank, port))),
    )
    .unwrap();
    assert_eq!(trainer.world_size(), 2);
    assert_eq!(
        trainer.loader().batch_shape()[0],
        8,
        "each rank's share of 16"
    );
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    assert_rank1_wrote_nothing(rank, dir);
    trainer
}

#[test]
fn two_ranks_with_half_batches_match_one_rank_with_the_whole_batch() {
    two_ranks(
        "two_ranks_with_half_batches_match_one_rank_with_the_whole_batch",
        2,
        |rank, ports, dir| {
            let (bucketed, overlap) = (dir.join("bucketed"), dir.join("overlap"));
            let trainer = train_two_ranks(rank, ports[0], &bucketed, unet_config());
            assert_identical_across_ranks(&trainer);
            drop(trainer);
            let mut config = unet_config();
            config.distributed.grad_sync = GradSync::Overlap;
            let trainer = train_two_ranks(rank, ports[1], &overlap, config);
            assert_identical_across_ranks(&trainer);
            drop(trainer);
            if rank == 1 {
                return;
            }

            let single = dir.join("single");
            let mut trainer =
                fresh(unet_config(), toy_dataset_of(64, 2), &single, Device::Cpu).unwrap();
            trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
            drop(trainer);

            let one = metrics(&single);
            for (name, two) in [("bucketed", &bucketed), ("overlap", &overlap)] {
                let two_metrics = metrics(two);
                assert_eq!(two_metrics.len(), 3);
                for (a, b) in one.iter().zip(&two_metrics) {
                    assert_eq!((a.step, a.world_size, b.world_size), (b.step, 1, 2));
                    let rel = (a.loss - b.loss).abs() / a.loss.abs();
                    assert!(
                        rel < 1e-5,
                        "{name} step {}: loss {} vs {}",
                        a.step,
                        a.loss,
                        b.loss
                    );
                    let rel = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
                    assert!(
                        rel < 1e-5,
                        "{name} step {}: grad norm {} vs {}",
                        a.step,
                        a.grad_norm,
                        b.grad_norm
                    );
                    assert!(
                        a.grad_norm > 0.05,
                        "the clip must bind: grad norm {}",
                        a.grad_norm
                    );
                }
                for file in [
                    checkpoint::MODEL_FILE,
                    checkpoint::EMA_FILE,
                    checkpoint::OPTIMIZER_FILE,
                ] {
                    let (worst, overall, max_abs, worst_name) = relative_difference_named(
                        &last_checkpoint(&single, file),
                        &last_checkpoint(two, file),
                    );
                    eprintln!(
                        "equivalence ({name}, {file}): ‖Δ‖/‖w‖ over all values {overall:.3e}, \
                         max |Δ| {max_abs:.3e}; largest per-tensor ‖Δ‖/‖w‖ {worst:.3e} ({worst_name})"
                    );
                    assert!(
                        overall < 1e-5,
                        "{name} {file}: relative difference {overall:e}"
                    );
                }
            }
            // The weights moved: the comparison is not between two untouched copies.
            let fresh = fresh(
                unet_config(),
                toy_dataset_of(64, 2),
                &dir.join("fresh"),
                Device::Cpu,
            )
            .unwrap();
            let (_, moved, _) = relative_difference(
                &last_checkpoint(&single, checkpoint::MODEL_FILE),
                &named_tensors(fresh.model_vs()),
            );
            assert!(moved > 1e-4, "the weights barely moved: {moved:e}");
        },
    );
}

#[test]
fn resume_under_two_ranks_replays_the_uninterrupted_run_bit_for_bit() {
    two_ranks(
        "resume_under_two_ranks_replays_the_uninterrupted_run_bit_for_bit",
        2,
        |rank, ports, dir| {
            // BatchNorm buffers, flips and the data order over 2 epochs (4 global batches each),
            // checkpoints every 3 steps: the resume starts mid-epoch.
            let config = TrainConfig {
                max_steps: Some(7),
                checkpoint_every: 3,
                ..simple_config()
            };
            let (full, resumed) = (dir.join("full"), dir.join("resumed"));
            drop(train_two_ranks(rank, ports[0], &full, config));
            let from = full
                .join(checkpoint::CHECKPOINTS_DIR)
                .join(checkpoint::dir_name(3));
            let start = Start::Resume {
                from: Some(from.clone()),
                config: None,
            };
            let mut trainer = Trainer::open(
                run_dir(rank, &resumed),
                start,
                toy_dataset_of(64, 2),
                OpenOptions::new(Device::Cpu).distributed(Some(connect(rank, ports[1]))),
            )
            .unwrap();
            assert_eq!((trainer.step(), trainer.resumed_world_size()), (3, Some(2)));
            trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
            assert_identical_across_ranks(&trainer);
            drop(trainer);
            assert_rank1_wrote_nothing(rank, &resumed);
            if rank == 1 {
                return;
            }

            let (uninterrupted, replayed) = (metrics(&full), metrics(&resumed));
            assert_eq!((uninterrupted.len(), replayed.len()), (7, 4));
            for (a, b) in uninterrupted[3..].iter().zip(&replayed) {
                assert_eq!((a.step, a.epoch, b.world_size), (b.step, b.epoch, 2));
                assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
                assert_eq!(
                    a.grad_norm.to_bits(),
                    b.grad_norm.to_bits(),
                    "step {}",
                    a.step
                );
            }
            for file in [
                checkpoint::MODEL_FILE,
                checkpoint::EMA_FILE,
                checkpoint::OPTIMIZER_FILE,
            ] {
                let (a, b) = (
                    last_checkpoint(&full, file),
                    last_checkpoint(&resumed, file),
                );
                assert!(
                    a.iter().any(|(n, _)| n.contains("running_mean"))
                        || file != checkpoint::MODEL_FILE
                );
                assert_eq!(a.len(), b.len(), "{file}");
                for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                    assert_eq!(na, nb);
                    assert!(ta.equal(tb), "{file}: {na} differs after the resume");
                }
            }
            let state = checkpoint::read_state(
                &checkpoint::latest(&resumed.join(checkpoint::CHECKPOINTS_DIR)).unwrap(),
            )
            .unwrap();
            assert_eq!((state.step, state.world_size), (7, 2));

            // Another world size resumes with the same global batch: here one process continues
            // the two ranks' checkpoint (not bit for bit: BatchNorm sees 16 images, not 8).
            let alone = dir.join("alone");
            let mut trainer = resume(
                &alone,
                Some(&from),
                None,
                toy_dataset_of(64, 2),
                Device::Cpu,
            )
            .unwrap();
            assert_eq!((trainer.step(), trainer.resumed_world_size()), (3, Some(2)));
            assert_eq!(trainer.loader().batch_shape()[0], 16);
            trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
            let alone_metrics = metrics(&alone);
            assert_eq!(alone_metrics.len(), 4);
            assert!(alone_metrics
                .iter()
                .all(|r| r.world_size == 1 && r.loss.is_finite()));
        },
    );
}

/// A class-conditional run on two ranks drops the labels one process with the whole batch
/// drops (the drops are drawn for the global batch and sliced, as the noise is): the same
/// losses and, up to the order of the gradient sums, the same weights.
#[test]
fn two_class_conditional_ranks_match_one_rank_with_the_whole_batch() {
    two_ranks(
        "two_class_conditional_ranks_match_one_rank_with_the_whole_batch",
        1,
        |rank, ports, dir| {
            let config = || {
                let mut config = unet_config();
                config.model.set_num_classes(Some(2));
                config.objective.p_uncond = 0.5;
                config
            };
            let two = dir.join("two");
            let trainer = train_two_ranks(rank, ports[0], &two, config());
            assert_identical_across_ranks(&trainer);
            drop(trainer);
            if rank == 1 {
                return;
            }
            let single = dir.join("single");
            let mut trainer = fresh(config(), toy_dataset_of(64, 2), &single, Device::Cpu).unwrap();
            trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
            drop(trainer);
            for (a, b) in metrics(&single).iter().zip(&metrics(&two)) {
                let rel = (a.loss - b.loss).abs() / a.loss.abs();
                assert!(rel < 1e-5, "step {}: loss {} vs {}", a.step, a.loss, b.loss);
            }
            let (_, overall, _) = relative_difference(
                &last_checkpoint(&single, checkpoint::MODEL_FILE),
                &last_checkpoint(&two, checkpoint::MODEL_FILE),
            );
            eprintln!("class-conditional, 2 ranks vs 1: ‖Δw‖/‖w‖ {overall:.3e}");
            assert!(overall < 1e-5, "{overall:e}");
        },
    );
}

/// Activation checkpointing under two ranks, through both gradient paths (the bucketed
/// all-reduce after backward, and DDP's `Reducer` during it, whose hooks on the gradient
/// accumulators would throw if a recomputation marked a parameter ready twice): the averaged
/// gradients of a step of the U-Net with dropout 0.1 are those of the run without checkpointing,
/// per tensor within 1e-6 relative.
#[test]
fn two_ranks_checkpointing_gives_the_gradients_of_plain_training() {
    two_ranks(
        "two_ranks_checkpointing_gives_the_gradients_of_plain_training",
        4,
        |rank, ports, dir| {
            let mut port = ports.iter();
            for sync in [GradSync::Bucketed, GradSync::Overlap] {
                let mut grads = Vec::new();
                for on in [false, true] {
                    let mut config = TrainConfig {
                        max_steps: Some(1),
                        ..clipped_config(tiny_unet(0.1))
                    };
                    config.distributed.grad_sync = sync;
                    config.model.set_gradient_checkpointing(on);
                    let run = dir.join(format!("{sync:?}-{on}"));
                    let trainer = train_two_ranks(rank, *port.next().unwrap(), &run, config);
                    assert_identical_across_ranks(&trainer);
                    let named: Vec<(String, Tensor)> = named_tensors(trainer.model_vs())
                        .into_iter()
                        .filter(|(_, t)| t.requires_grad())
                        .map(|(n, t)| (n, t.grad().copy()))
                        .collect();
                    grads.push(named);
                }
                let scale = grads[0]
                    .iter()
                    .map(|(_, g)| g.norm().double_value(&[]))
                    .fold(0.0, f64::max);
                for ((name, plain), (_, ckpt)) in grads[0].iter().zip(&grads[1]) {
                    let diff = (ckpt - plain).norm().double_value(&[]);
                    let norm = plain.norm().double_value(&[]);
                    if name.ends_with("to_k.bias") {
                        // No gradient in exact arithmetic (softmax ignores a per-row constant).
                        assert!(diff <= 1e-6 * scale, "{sync:?} {name}: {diff:e}");
                    } else {
                        // A fresh network's residual branches end in near-zero layers, so most
                        // gradients are small: compared relatively, at their own scale.
                        assert!(norm > 0.0, "{sync:?} {name}: no gradient");
                        assert!(diff <= 1e-6 * norm, "{sync:?} {name}: {:e}", diff / norm);
                    }
                }
            }
        },
    );
}

/// The collectives rank `trainer` has started so far.
fn collectives(trainer: &Trainer) -> u64 {
    trainer
        .distributed()
        .unwrap()
        .group()
        .collectives_started()
        .unwrap()
}

/// Gradient accumulation across ranks: 2 ranks of 2 micro-batches of 4 images take the step of
/// one process with the whole batch of 16, through both gradient paths, and synchronise the
/// gradients once per step, not once per micro-batch: a run with K = 2 starts exactly as many
/// collectives as the same run with K = 1 (with the Reducer, the first micro-batch's backward
/// runs with its hooks unarmed, as under DDP's `no_sync`).
#[test]
fn two_ranks_accumulating_micro_batches_match_one_rank_and_sync_once_per_step() {
    two_ranks(
        "two_ranks_accumulating_micro_batches_match_one_rank_and_sync_once_per_step",
        4,
        |rank, ports, dir| {
            let config = |grad_accum, grad_sync| {
                let mut config = TrainConfig {
                    grad_accum,
                    ..unet_config()
                };
                config.distributed.grad_sync = grad_sync;
                config
            };
            let mut counts = Vec::new();
            let runs = [
                ("bucketed", GradSync::Bucketed),
                ("overlap", GradSync::Overlap),
            ];
            for (idx, (name, sync)) in runs.into_iter().enumerate() {
                for k in [1, 2] {
                    let port = ports[2 * idx + k - 1];
                    let trainer = train_two_ranks(
                        rank,
                        port,
                        &dir.join(format!("{name}-{k}")),
                        config(k, sync),
                    );
                    assert_identical_across_ranks(&trainer);
                    counts.push(collectives(&trainer));
                }
                let (one, two) = (counts[2 * idx], counts[2 * idx + 1]);
                eprintln!("rank {rank}, {name}: {one} collectives with K = 1, {two} with K = 2");
                assert_eq!(
                    one, two,
                    "{name}: K = 2 started other collectives than K = 1 over 3 steps"
                );
            }
            if rank == 1 {
                return;
            }
            let single = dir.join("single");
            let mut trainer =
                fresh(unet_config(), toy_dataset_of(64, 2), &single, Device::Cpu).unwrap();
            trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
            drop(trainer);
            for name in ["bucketed", "overlap"] {
                let two = dir.join(format!("{name}-2"));
                for (a, b) in metrics(&single).iter().zip(&metrics(&two)) {
                    let rel = (a.loss - b.loss).abs() / a.loss.abs();
                    assert!(
                        rel <= 1e-6,
                        "{name} step {}: loss {} vs {}",
                        a.step,
                        a.loss,
                        b.loss
                    );
                    assert!(a.grad_norm > 0.05, "the clip must bind: {}", a.grad_norm);
                }
                for file in [checkpoint::MODEL_FILE, checkpoint::EMA_FILE] {
                    let (_, overall, max_abs) = relative_difference(
                        &last_checkpoint(&single, file),
                        &last_checkpoint(&two, file),
                    );
                    eprintln!(
                        "2 ranks × K = 2 ({name}) vs 1 × K = 1, {file}: ‖Δ‖/‖w‖ {overall:.3e}, \
                         max |Δ| {max_abs:.3e}"
                    );
                    assert!(overall <= 1e-6, "{name} {file}: {overall:e}");
                }
            }
        },
    );
}
