//! Two-rank tests over 127.0.0.1: the test binary runs itself again as rank 1 (environment
//! `TORCH_EXT_RANK=1`, `--exact` the same test), and rank 0 checks that rank 1 succeeded.

use super::*;
use crate::Generator;
use std::process::{Child, Command};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const RANK_VAR: &str = "TORCH_EXT_RANK";
const PORT_VAR: &str = "TORCH_EXT_PORT";
/// Bounds the rendezvous of the two processes: generous, for a loaded machine where the
/// second process (a fresh copy of this binary, loading libtorch) starts slowly. The tests
/// of failures use short timeouts of their own.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The group timeout of the tests in which a peer fails.
const SHORT_TIMEOUT: Duration = Duration::from_secs(5);
const HOST: &str = "127.0.0.1";

/// Kills the child on every exit path of rank 0 (a failed assertion included).
struct Peer(Child);

impl Peer {
    fn wait_success(mut self) {
        let status = self.0.wait().unwrap();
        assert!(status.success(), "rank 1 failed: {status}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind((HOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// When this process is rank 1 of `test`: its rank and port. Otherwise `None`.
fn as_peer() -> Option<(usize, u16)> {
    let rank = std::env::var(RANK_VAR).ok()?.parse().unwrap();
    let port = std::env::var(PORT_VAR).unwrap().parse().unwrap();
    Some((rank, port))
}

/// Starts rank 1 of `test` (the test's name within this module) on `port`.
fn spawn_peer(test: &str, port: u16) -> Peer {
    let name = format!("dist::tests::{test}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(RANK_VAR, "1")
        .env(PORT_VAR, port.to_string())
        .spawn()
        .unwrap();
    Peer(child)
}

/// Runs `body(rank, group)` on two ranks: here as rank 0 and in a child as rank 1.
fn two_ranks(test: &str, body: impl FnOnce(usize, &ProcessGroup)) {
    two_ranks_with_store(test, |rank, _, group| body(rank, group));
}

/// [`two_ranks`] with the store the group was made from.
fn two_ranks_with_store(test: &str, body: impl FnOnce(usize, &TcpStore, &ProcessGroup)) {
    let (rank, port, peer) = match as_peer() {
        Some((rank, port)) => (rank, port, None),
        None => {
            let port = free_port();
            (0, port, Some(spawn_peer(test, port)))
        }
    };
    let store = TcpStore::new(HOST, port, 2, rank == 0, TIMEOUT).unwrap();
    let options = GlooOptions {
        device: GlooDevice::Hostname(HOST.into()),
        ..GlooOptions::new(TIMEOUT)
    };
    let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
    assert_eq!(
        (group.rank(), group.world_size(), group.backend()),
        (rank, 2, Backend::Gloo)
    );
    body(rank, &store, &group);
    drop(group);
    if let Some(peer) = peer {
        peer.wait_success();
    }
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&xs.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Rank `rank`'s contribution: `(rank + 1) · (0, 1, 2, …)`, integers exact in f32.
fn contribution(rank: usize, shape: &[i64], kind: Kind) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (kind, Device::Cpu)) * (rank as i64 + 1)).reshape(shape)
}

#[test]
fn allreduce_sums_and_averages_exactly() {
    two_ranks("allreduce_sums_and_averages_exactly", |rank, group| {
        let shapes: [&[i64]; 2] = [&[3, 4], &[5]];
        let mut xs: Vec<Tensor> = shapes
            .iter()
            .map(|s| contribution(rank, s, Kind::Float))
            .collect();
        xs.push(contribution(rank, &[4], Kind::Int64));
        group.allreduce(&mut xs, ReduceOp::Sum).unwrap();
        for x in &xs {
            // (1 + 2) · i
            let expected: Vec<f64> = (0..x.numel()).map(|i| 3.0 * i as f64).collect();
            assert_eq!(values(x), expected);
        }
        assert_eq!(xs[2].kind(), Kind::Int64);

        let mut ys = vec![contribution(rank, &[6], Kind::Float)];
        group.allreduce(&mut ys, ReduceOp::Avg).unwrap();
        let expected: Vec<f64> = (0..6).map(|i| 1.5 * i as f64).collect();
        assert_eq!(values(&ys[0]), expected);

        // An integer mean is refused on both ranks before anything is sent, and the group
        // still works afterwards.
        let mut ints = vec![contribution(rank, &[2], Kind::Int64)];
        let err = group.allreduce(&mut ints, ReduceOp::Avg).unwrap_err();
        assert!(err.to_string().contains("floating-point"), "{err}");
        assert_eq!(
            values(&ints[0]),
            values(&contribution(rank, &[2], Kind::Int64))
        );
        group.allreduce(&mut ints, ReduceOp::Sum).unwrap();
        assert_eq!(values(&ints[0]), [0.0, 3.0]);
    });
}

#[test]
fn broadcast_copies_the_roots_values() {
    two_ranks("broadcast_copies_the_roots_values", |rank, group| {
        let mut xs = vec![
            contribution(rank, &[2, 3], Kind::Float),
            contribution(rank, &[4], Kind::Double),
        ];
        group.broadcast(&mut xs, 0).unwrap();
        assert_eq!(
            values(&xs[0]),
            values(&contribution(0, &[2, 3], Kind::Float))
        );
        assert_eq!(values(&xs[1]), values(&contribution(0, &[4], Kind::Double)));
        // From rank 1 too.
        let mut ys = vec![contribution(rank, &[3], Kind::Float)];
        group.broadcast(&mut ys, 1).unwrap();
        assert_eq!(values(&ys[0]), [0.0, 2.0, 4.0]);
        assert!(matches!(
            group.broadcast(&mut ys, 2),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn barrier_waits_for_the_slower_rank() {
    two_ranks("barrier_waits_for_the_slower_rank", |rank, group| {
        group.barrier().unwrap();
        let start = Instant::now();
        if rank == 1 {
            std::thread::sleep(Duration::from_millis(600));
        }
        group.barrier().unwrap();
        if rank == 0 {
            assert!(
                start.elapsed() >= Duration::from_millis(500),
                "{:?}",
                start.elapsed()
            );
        }
    });
}

#[test]
fn store_set_get_add_across_ranks() {
    two_ranks_with_store("store_set_get_add_across_ranks", |rank, store, group| {
        store
            .set(
                &format!("from{rank}"),
                format!("hello from {rank}").as_bytes(),
            )
            .unwrap();
        // `get` waits until the other rank has set its key.
        let other = 1 - rank;
        assert_eq!(
            store.get(&format!("from{other}")).unwrap(),
            format!("hello from {other}").as_bytes()
        );
        store.add("arrived", 1).unwrap();
        group.barrier().unwrap();
        assert_eq!(store.add("arrived", 0).unwrap(), 2);
    });
}

#[test]
fn bucketed_allreduce_averages_every_tensor() {
    two_ranks("bucketed_allreduce_averages_every_tensor", |rank, group| {
        // Different gradients per rank; a 64-byte bucket forces several buckets, and a
        // tensor bigger than a bucket, and two dtypes.
        let shapes: [&[i64]; 5] = [&[3], &[4, 2], &[40], &[2], &[1, 1]];
        let mut grads: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                contribution(rank, s, if i == 3 { Kind::Double } else { Kind::Float }) + i as f64
            })
            .collect();
        let expected: Vec<Vec<f64>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let kind = if i == 3 { Kind::Double } else { Kind::Float };
                values(&((contribution(0, s, kind) + contribution(1, s, kind)) / 2.0 + i as f64))
            })
            .collect();
        group
            .allreduce_bucketed(&mut grads, ReduceOp::Avg, 64)
            .unwrap();
        for (i, g) in grads.iter().enumerate() {
            assert_eq!(values(g), expected[i], "tensor {i}");
            assert_eq!(g.size(), shapes[i].to_vec());
        }
        assert_eq!(grads[3].kind(), Kind::Double);
        // One big bucket gives the same, and SUM works too.
        let mut sums = vec![
            contribution(rank, &[7], Kind::Float),
            contribution(rank, &[2, 2], Kind::Float),
        ];
        group
            .allreduce_bucketed(&mut sums, ReduceOp::Sum, DEFAULT_BUCKET_BYTES)
            .unwrap();
        assert_eq!(values(&sums[1]), [0.0, 3.0, 6.0, 9.0]);
    });
}

#[test]
fn broadcast_coalesced_makes_all_ranks_equal_to_the_root() {
    two_ranks(
        "broadcast_coalesced_makes_all_ranks_equal_to_the_root",
        |rank, group| {
            let make = |seed| {
                let mut gen = Generator::cpu(seed);
                vec![
                    gen.randn(&[10, 3], (Kind::Float, Device::Cpu)).unwrap(),
                    gen.randn(&[7], (Kind::Float, Device::Cpu)).unwrap(),
                    gen.randn(&[2, 2, 2], (Kind::Double, Device::Cpu)).unwrap(),
                ]
            };
            let mut params = make(rank as u64);
            let expected = make(0);
            // A small buffer: several coalesced broadcasts.
            group.broadcast_coalesced(&mut params, 0, 64).unwrap();
            for (p, e) in params.iter().zip(&expected) {
                assert!(p.equal(e));
            }
        },
    );
}

#[test]
fn reducer_averages_gradients_during_backward() {
    two_ranks(
        "reducer_averages_gradients_during_backward",
        |rank, group| {
            // loss = Σ_j Σ_i w_j[i] · x_j[i] (rank-dependent x): dloss/dw_j = x_j, so after the
            // reduced backward every rank's grad must be (x_j(rank 0) + x_j(rank 1)) / 2.
            let shapes: [&[i64]; 3] = [&[300], &[4, 5], &[1000]];
            let params: Vec<Tensor> = shapes
                .iter()
                .map(|s| Tensor::zeros(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true))
                .collect();
            let mut gen = Generator::cpu(17);
            let mut start = params
                .iter()
                .map(|p| gen.randn_like(p).unwrap())
                .collect::<Vec<_>>();
            if rank == 1 {
                start = start.iter().map(|t| t + 1.0).collect();
            }
            tch::no_grad(|| {
                for (p, s) in params.iter().zip(&start) {
                    p.shallow_clone().copy_(s);
                }
            });
            let mut weights = params.iter().map(Tensor::shallow_clone).collect::<Vec<_>>();
            group
                .broadcast_coalesced(&mut weights, 0, DEFAULT_BROADCAST_BYTES)
                .unwrap();
            let inputs = |r: usize, step: usize| -> Vec<Tensor> {
                let mut gen = Generator::cpu(100 * step as u64 + r as u64);
                params.iter().map(|p| gen.randn_like(p).unwrap()).collect()
            };
            let options = ReducerOptions {
                // Small buckets: several of them, reduced while backward runs.
                bucket_bytes: 2048,
                first_bucket_bytes: 1024,
                ..ReducerOptions::default()
            };
            let mut reducer = Reducer::new(group, &params, options).unwrap();
            let mut rebuilt = vec![];
            for step in 0..3 {
                rebuilt.push(reducer.prepare_for_forward().unwrap());
                for p in &params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                let xs = inputs(rank, step);
                let loss = params
                    .iter()
                    .zip(&xs)
                    .map(|(w, x)| (w * x).sum(Kind::Float))
                    .reduce(|a, b| a + b)
                    .unwrap();
                reducer.prepare_for_backward(&[&loss]).unwrap();
                loss.backward();
                let (x0, x1) = (inputs(0, step), inputs(1, step));
                for j in 0..params.len() {
                    let expected = (&x0[j] + &x1[j]) / 2.0;
                    let diff = (params[j].grad() - expected).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "step {step}, param {j}: {diff}");
                }
            }
            // DDP rebuilds the buckets once, before the second forward pass.
            assert_eq!(rebuilt, [false, true, false]);
            // The parameters started equal to rank 0's after the broadcast.
            let rank0_start = {
                let mut gen = Generator::cpu(17);
                params
                    .iter()
                    .map(|p| gen.randn_like(p).unwrap())
                    .collect::<Vec<_>>()
            };
            for (p, s) in params.iter().zip(&rank0_start) {
                assert!(p.detach().equal(s));
            }
        },
    );
}

#[test]
fn a_collective_fails_within_the_timeout_when_the_peer_is_killed() {
    let test = "a_collective_fails_within_the_timeout_when_the_peer_is_killed";
    if let Some((rank, port)) = as_peer() {
        let store = TcpStore::new(HOST, port, 2, false, TIMEOUT).unwrap();
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(SHORT_TIMEOUT)
        };
        let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
        group.barrier().unwrap();
        // Rank 0 kills this process here.
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let port = free_port();
    let mut peer = spawn_peer(test, port);
    let store = TcpStore::new(HOST, port, 2, true, TIMEOUT).unwrap();
    let options = GlooOptions {
        device: GlooDevice::Hostname(HOST.into()),
        ..GlooOptions::new(SHORT_TIMEOUT)
    };
    let group = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap();
    group.barrier().unwrap();
    peer.0.kill().unwrap();
    peer.0.wait().unwrap();
    let start = Instant::now();
    let mut xs = vec![Tensor::ones([4], (Kind::Float, Device::Cpu))];
    let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(
            err,
            Error::Distributed {
                op: "allreduce",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        elapsed < SHORT_TIMEOUT + Duration::from_secs(3),
        "took {elapsed:?}: {err}"
    );
    // The group stays usable for an error report: the next collective fails too, promptly.
    let start = Instant::now();
    assert!(group.barrier().is_err());
    assert!(start.elapsed() < SHORT_TIMEOUT + Duration::from_secs(3));
}

#[test]
fn a_collective_times_out_when_the_peer_stalls() {
    let test = "a_collective_times_out_when_the_peer_stalls";
    let timeout = Duration::from_secs(2);
    let options = GlooOptions {
        device: GlooDevice::Hostname(HOST.into()),
        ..GlooOptions::new(timeout)
    };
    if let Some((rank, port)) = as_peer() {
        let store = TcpStore::new(HOST, port, 2, false, TIMEOUT).unwrap();
        let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
        group.barrier().unwrap();
        // Alive, connected, and never joining the next collective (rank 0 kills us).
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let port = free_port();
    let _peer = spawn_peer(test, port);
    let store = TcpStore::new(HOST, port, 2, true, TIMEOUT).unwrap();
    let group = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap();
    group.barrier().unwrap();
    let start = Instant::now();
    let mut xs = vec![Tensor::ones([4], (Kind::Float, Device::Cpu))];
    let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, Error::Distributed { .. }), "{err}");
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "failed before the timeout ({elapsed:?}): {err}"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?}: {err}"
    );
}

#[test]
fn the_rendezvous_fails_within_the_timeout_when_the_peer_never_starts() {
    if as_peer().is_some() {
        return;
    }
    let timeout = Duration::from_secs(2);
    // The store's server waits for both ranks' clients.
    let start = Instant::now();
    let err = TcpStore::new(HOST, free_port(), 2, true, timeout).unwrap_err();
    assert!(
        matches!(err, Error::Distributed { op: "TcpStore", .. }),
        "{err}"
    );
    assert!(
        start.elapsed() < timeout + Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // A client finds no server (libtorch's randomised connect backoff can overshoot the
    // timeout by up to about as much again).
    let start = Instant::now();
    assert!(TcpStore::connect(HOST, free_port(), timeout).is_err());
    assert!(
        start.elapsed() < 2 * timeout + Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // A store that does not wait for workers, and a group whose rank 1 never arrives.
    let store = TcpStore::new(HOST, free_port(), 1, true, timeout).unwrap();
    let options = GlooOptions {
        device: GlooDevice::Hostname(HOST.into()),
        ..GlooOptions::new(timeout)
    };
    let start = Instant::now();
    let err = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Distributed {
                op: "ProcessGroup::gloo",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        start.elapsed() < timeout + Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_launch_environment_is_read_like_torchrun_writes_it() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
    assert_eq!(
        LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
        None
    );
    let env = LaunchEnv::from_vars(vars(&[
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        env,
        LaunchEnv {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            local_world_size: 2,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: true,
        }
    );
    let env = LaunchEnv::from_vars(vars(&[
        ("WORLD_SIZE", "2"),
        ("RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1234"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (env.local_rank, env.local_world_size, env.agent_store),
        (1, 2, false)
    );
    for bad in [
        &[
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ][..],
        &[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ],
        &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")],
        &[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "70000"),
        ],
        &[("WORLD_SIZE", "two")],
    ] {
        let err = LaunchEnv::from_vars(vars(bad)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
    }
}

#[test]
fn bad_arguments_are_rejected_before_c10d() {
    if as_peer().is_some() {
        return;
    }
    assert!(matches!(
        TcpStore::new(HOST, 1, 0, true, TIMEOUT),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        TcpStore::new(HOST, 1, 1, true, Duration::ZERO),
        Err(Error::InvalidArgument(_))
    ));
    let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
    assert!(matches!(
        ProcessGroup::gloo(&store, 2, 2, TIMEOUT),
        Err(Error::InvalidArgument(_))
    ));
    store.set("k", b"v").unwrap();
    assert_eq!(store.get("k").unwrap(), b"v");
    assert_eq!(store.add("n", 2).unwrap(), 2);
    assert_eq!(store.add("n", 3).unwrap(), 5);
}

#[cfg(feature = "cuda-tests")]
#[test]
fn a_single_rank_nccl_group_runs_collectives_on_the_gpu() {
    if as_peer().is_some() {
        return;
    }
    // One GPU: NCCL allows one rank per device, so a world of one.
    let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
    let mut group = ProcessGroup::nccl(&store, 0, 1, 0, TIMEOUT).unwrap();
    assert_eq!(group.backend(), Backend::Nccl);
    let cuda = (Kind::Float, Device::Cuda(0));
    let mut xs = vec![Tensor::arange(6, cuda), Tensor::ones([3, 3], cuda)];
    group.allreduce(&mut xs, ReduceOp::Avg).unwrap();
    group
        .allreduce_bucketed(&mut xs, ReduceOp::Sum, 16)
        .unwrap();
    group
        .broadcast_coalesced(&mut xs, 0, DEFAULT_BROADCAST_BYTES)
        .unwrap();
    group.barrier().unwrap();
    assert_eq!(values(&xs[0]), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(xs[1].device(), Device::Cuda(0));
    group.shutdown().unwrap();
}

#[test]
fn a_single_rank_group_reduces_to_itself() {
    if as_peer().is_some() {
        return;
    }
    let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
    let options = GlooOptions {
        device: GlooDevice::Hostname(HOST.into()),
        ..GlooOptions::new(TIMEOUT)
    };
    let mut group = ProcessGroup::gloo_with_options(&store, 0, 1, &options).unwrap();
    let mut xs = vec![Tensor::from_slice(&[1.0f32, 2.0])];
    group.allreduce(&mut xs, ReduceOp::Avg).unwrap();
    assert_eq!(values(&xs[0]), [1.0, 2.0]);
    group.barrier().unwrap();
    group.shutdown().unwrap();
    let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}
