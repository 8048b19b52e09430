//! Checkpoint writes off the training thread: [`CheckpointWriter`] takes a
//! [`Snapshot`] already copied to host memory and writes it on a
//! thread of its own ([`crate::checkpoint::save_snapshot`]: a temporary directory, the digests,
//! a rename, the `keep_last` pruning), while training goes on.
//!
//! At most one write is in flight: [`CheckpointWriter::start`] waits for the previous one
//! first. The trainer polls after every step ([`CheckpointWriter::poll`]),
//! so a write error (a full disk) stops the run at the next step with the error the write gave,
//! and waits ([`CheckpointWriter::wait`]) before a stop, at the end of training, and when it is
//! dropped.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crate::checkpoint::{self, Snapshot};
use crate::TrainError;

/// The write in flight: its step and its thread.
struct InFlight {
    step: u64,
    handle: JoinHandle<Result<PathBuf, TrainError>>,
}

/// A checkpoint written by [`CheckpointWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
}

/// Writes checkpoints on a thread, one at a time.
#[derive(Default)]
pub struct CheckpointWriter {
    in_flight: Option<InFlight>,
}

impl CheckpointWriter {
    /// The step of the write in flight, if there is one.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|w| w.step)
    }

    /// Waits for the write in flight, if any (and returns it), then starts writing `snapshot`
    /// under `root` (`<run>/checkpoints`) on a new thread, pruning to the newest `keep_last`
    /// after it.
    ///
    /// # Errors
    /// The previous write's error (nothing new is started then); [`TrainError::Io`] when no
    /// thread can be started.
    pub fn start(
        &mut self,
        root: PathBuf,
        snapshot: Snapshot,
        keep_last: usize,
    ) -> Result<Option<Written>, TrainError> {
        let previous = self.wait()?;
        let step = snapshot.state.step;
        let name = checkpoint::dir_name(step);
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-{step}"))
            .spawn(move || checkpoint::save_snapshot(&root, &snapshot, keep_last))
            .map_err(|e| TrainError::io(&PathBuf::from(name), e))?;
        self.in_flight = Some(InFlight { step, handle });
        Ok(previous)
    }

    /// The write that finished since the last call, if one did; never waits.
    ///
    /// # Errors
    /// Its error.
    pub fn poll(&mut self) -> Result<Option<Written>, TrainError> {
        match &self.in_flight {
            Some(w) if w.handle.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Waits for the write in flight, if any.
    ///
    /// # Errors
    /// Its error.
    pub fn wait(&mut self) -> Result<Option<Written>, TrainError> {
        let Some(InFlight { step, handle }) = self.in_flight.take() else {
            return Ok(None);
        };
        let dir = handle.join().unwrap_or_else(|_| {
            Err(TrainError::Checkpoint {
                path: PathBuf::from(checkpoint::dir_name(step)),
                message: "the checkpoint writer thread panicked".into(),
            })
        })?;
        Ok(Some(Written { step, dir }))
    }
}

impl Drop for CheckpointWriter {
    /// A trainer that is dropped with a write in flight (after an error) lets it finish: the
    /// checkpoint stays complete, or its `.tmp` directory is removed.
    fn drop(&mut self) {
        let _ = self.wait();
    }
}
