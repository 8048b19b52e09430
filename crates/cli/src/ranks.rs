//! `ddpm sample` and `ddpm eval fid --checkpoint` across the ranks of a launch (torchrun, or
//! `--nproc-per-node N`): this process's place in the launch and its device. The sampling itself
//! is `sample::shard` (rank r draws batches r, r + W, …, in rounds; rank 0 gathers each round).

use std::time::Duration;

use anyhow::Result;
use torch_ext::dist::{Distributed, LaunchEnv};

use crate::device::DeviceSpec;

/// The default of `--dist-timeout` for sampling: at the end of each round a rank waits for the
/// others' batches of the round (`sample::shard`).
pub const SAMPLE_TIMEOUT_SECS: u64 = 1800;

/// This process's place in a launch, and its device.
pub struct Joined {
    /// `None` alone.
    pub dist: Option<Distributed>,
    /// `--device`, or `cuda:LOCAL_RANK` in a launch.
    pub device: tch::Device,
}

impl Joined {
    /// Whether this process writes the outputs: alone, or rank 0.
    pub fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(Distributed::is_main)
    }
}

/// Joins the launch this process is part of (torchrun's variables), or runs alone.
///
/// # Errors
/// Malformed variables, a device a rank cannot have, or a rendezvous that fails.
pub fn join(device: DeviceSpec, threads: Option<i32>, timeout: Duration) -> Result<Joined> {
    let env = LaunchEnv::from_env()?;
    let device = crate::launch::rank_device(device, env.as_ref())?;
    crate::launch::set_rank_threads(threads, env.as_ref(), device);
    // Sampling and evaluation never checkpoint activations.
    torch_ext::host_memory::configure(device, torch_ext::host_memory::Work::Sampling);
    let dist = match env {
        Some(env) => Some(Distributed::connect(env, device, timeout)?),
        None => None,
    };
    Ok(Joined { dist, device })
}
