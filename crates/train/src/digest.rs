//! Digests of checkpoint files: the XXH3-128 hash of every file's bytes
//! ([`sample::layout::file_digest`], whose module says what they guard against), recorded in the
//! checkpoint's `state.json` under `digests` when it is written, and checked when a run resumes
//! from it and by `ddpm checkpoint verify` ([`verify_run`]). Inference checks the weights file it
//! loads ([`sample::Pipeline::from_spec`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use sample::layout::{check_digest, file_digest, DigestError, DIGEST_ALGORITHM as ALGORITHM};

use crate::checkpoint::{self, CheckpointState};
use crate::TrainError;

/// The digests of the files `names` in `dir`, by name.
///
/// # Errors
/// [`TrainError::Io`] naming a file that cannot be read.
pub fn digest_files(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, String>, TrainError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let digest = file_digest(&path).map_err(|e| TrainError::io(&path, e))?;
            Ok((name.to_string(), digest))
        })
        .collect()
}

/// What checking a checkpoint's digests found when nothing was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Every file recorded in `state.json` matches its digest (the count).
    Checked(usize),
    /// The checkpoint was written before digests existed: nothing to check.
    Unverified,
}

/// Checks the files of the checkpoint `dir` against the digests its `state` records.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the first file whose bytes do not match (or a digest of an
/// unknown algorithm, or a name that is not a file of the directory); [`TrainError::Io`] naming
/// a recorded file that is missing or unreadable.
pub fn verify(dir: &Path, state: &CheckpointState) -> Result<Verified, TrainError> {
    if state.digests.is_empty() {
        return Ok(Verified::Unverified);
    }
    for (name, want) in &state.digests {
        let path = dir.join(name);
        let plain = Path::new(name).file_name() == Some(name.as_ref());
        if !plain {
            return Err(bad(
                &dir.join(checkpoint::STATE_FILE),
                format!("digest of `{name}`, which is not a file name"),
            ));
        }
        match check_digest(&path, want) {
            Ok(()) => {}
            Err(DigestError::Io(e)) => return Err(TrainError::io(&path, e)),
            Err(e @ DigestError::Algorithm(_)) => {
                return Err(bad(
                    &dir.join(checkpoint::STATE_FILE),
                    format!("{e} (of {name})"),
                ))
            }
            Err(e @ DigestError::Mismatch { .. }) => return Err(bad(&path, e.to_string())),
        }
    }
    Ok(Verified::Checked(state.digests.len()))
}

fn bad(path: &Path, message: String) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}

/// One checkpoint's line of [`verify_run`].
#[derive(Debug)]
pub struct CheckpointCheck {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// What the check found: the error names the file at fault.
    pub outcome: Result<Verified, TrainError>,
}

/// Checks every complete checkpoint under `<run_dir>/checkpoints`, oldest first, then `best/`
/// when there is one: its `state.json` reads, and every file matches its digest. `run_dir` may
/// also be one checkpoint directory (it holds a `state.json`), which is checked alone.
///
/// # Errors
/// [`TrainError::NoCheckpoint`] when the run holds no checkpoint at all. A damaged checkpoint
/// is not an error of this call: it is in its [`CheckpointCheck::outcome`].
pub fn verify_run(run_dir: &Path) -> Result<Vec<CheckpointCheck>, TrainError> {
    if run_dir.join(checkpoint::STATE_FILE).is_file() {
        let outcome = checkpoint::read_state(run_dir).and_then(|state| verify(run_dir, &state));
        return Ok(vec![CheckpointCheck {
            dir: run_dir.to_path_buf(),
            outcome,
        }]);
    }
    let root = run_dir.join(checkpoint::CHECKPOINTS_DIR);
    let mut dirs: Vec<PathBuf> = checkpoint::list(&root)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let best = root.join(crate::quality::BEST_DIR);
    if best.join(checkpoint::STATE_FILE).is_file() {
        dirs.push(best);
    }
    if dirs.is_empty() {
        return Err(TrainError::NoCheckpoint {
            dir: root,
            hint: "is this a run directory (the folder given to `ddpm train --run-dir`)?",
        });
    }
    Ok(dirs
        .into_iter()
        .map(|dir| {
            let outcome = checkpoint::read_state(&dir).and_then(|state| verify(&dir, &state));
            CheckpointCheck { dir, outcome }
        })
        .collect())
}
