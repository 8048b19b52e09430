//! torchrun's launch variables ([`LaunchEnv`]) and the rendezvous store they lead to.

use super::{check_rank, TcpStore};
use crate::{Error, Result};
use std::time::Duration;

/// Where this process stands in a run launched by torchrun (or anything that sets the same
/// variables): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
/// `MASTER_PORT` and `TORCHELASTIC_USE_AGENT_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process's rank among all processes.
    pub rank: usize,
    /// The number of processes.
    pub world_size: usize,
    /// This process's rank on its machine (its GPU index, one process per GPU).
    pub local_rank: usize,
    /// The number of processes on this machine.
    pub local_world_size: usize,
    /// The store's host.
    pub master_addr: String,
    /// The store's port.
    pub master_port: u16,
    /// torchrun's agent hosts the store: every rank, rank 0 included, connects as a client.
    pub agent_store: bool,
}

impl LaunchEnv {
    /// Reads the launch variables of this process. `None` when the process runs alone
    /// (`WORLD_SIZE` unset or 1), as a plain `cargo run` does.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `WORLD_SIZE` > 1 but a variable is missing or malformed.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`LaunchEnv::from_env`] with the variables looked up by `var`.
    ///
    /// # Errors
    /// As [`LaunchEnv::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let parse = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(value) => value.trim().parse().map(Some).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{name}={value:?} is not a non-negative integer"
                    ))
                }),
            }
        };
        let required = |name: &str| -> Result<usize> {
            parse(name)?.ok_or_else(|| {
                Error::InvalidArgument(format!("WORLD_SIZE is set but {name} is not"))
            })
        };
        let world_size = match parse("WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => return Err(Error::InvalidArgument("WORLD_SIZE=0".into())),
            Some(n) => n,
        };
        let rank = required("RANK")?;
        check_rank(rank, world_size)?;
        let master_addr = var("MASTER_ADDR")
            .filter(|addr| !addr.trim().is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("WORLD_SIZE is set but MASTER_ADDR is not".into())
            })?;
        let port = required("MASTER_PORT")?;
        let master_port = u16::try_from(port)
            .map_err(|_| Error::InvalidArgument(format!("MASTER_PORT={port} is not a port")))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank: parse("LOCAL_RANK")?.unwrap_or(rank),
            local_world_size: parse("LOCAL_WORLD_SIZE")?.unwrap_or(world_size),
            master_addr: master_addr.trim().to_string(),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }))
    }

    /// The store this rank meets the others through, as `torch.distributed` makes it: a
    /// client of torchrun's agent store when there is one, otherwise hosted by rank 0.
    ///
    /// # Errors
    /// As [`TcpStore::new`].
    pub fn store(&self, timeout: Duration) -> Result<TcpStore> {
        if self.agent_store {
            TcpStore::connect(&self.master_addr, self.master_port, timeout)
        } else {
            TcpStore::new(
                &self.master_addr,
                self.master_port,
                self.world_size,
                self.rank == 0,
                timeout,
            )
        }
    }
}
