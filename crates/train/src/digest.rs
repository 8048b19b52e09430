//! Digests of checkpoint files: the XXH3-128 hash of every file's bytes, recorded in the
//! checkpoint's `state.json` under `digests` when it is written, and checked when a run resumes
//! from it and by `ddpm checkpoint verify` ([`verify_run`]).
//!
//! safetensors checks a file's header, not its data: a flipped bit in a weight, or a copy cut
//! short by a file-system sync that still holds a whole header, reads without an error. Its
//! digest does not match. XXH3 (`xxhash-rust`) is not cryptographic: it guards against damage,
//! not against someone who rewrites both a file and `state.json`. It hashes at memory speed, so
//! checking the 1.8 GB of a 256² checkpoint costs little beside reading it.
//!
//! `state.json` itself is not digested (it holds the digests); serde reads it strictly, and a
//! damaged one fails to parse or to match its files.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::checkpoint::{self, CheckpointState};
use crate::TrainError;

/// The prefix of every digest: the algorithm, so that another one can follow.
pub const ALGORITHM: &str = "xxh3-128";

/// The digest of a file's bytes, `xxh3-128:<32 hex digits>`.
///
/// # Errors
/// The IO error of reading it.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 22];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{ALGORITHM}:{:032x}", hasher.digest128()))
}

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
        if !want.starts_with(&format!("{ALGORITHM}:")) {
            return Err(bad(
                &dir.join(checkpoint::STATE_FILE),
                format!("digest `{want}` of {name}: this build checks only {ALGORITHM}"),
            ));
        }
        let got = file_digest(&path).map_err(|e| TrainError::io(&path, e))?;
        if got != *want {
            return Err(bad(
                &path,
                format!(
                    "digest mismatch: state.json records {want}, the file hashes to {got}; it \
                     changed after it was written (a flipped bit or a truncated copy)"
                ),
            ));
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
/// when there is one: its `state.json` reads, and every file matches its digest.
///
/// # Errors
/// [`TrainError::NoCheckpoint`] when the run holds no checkpoint at all. A damaged checkpoint
/// is not an error of this call: it is in its [`CheckpointCheck::outcome`].
pub fn verify_run(run_dir: &Path) -> Result<Vec<CheckpointCheck>, TrainError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_have_the_algorithm_and_32_hex_digits_and_see_one_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let mut bytes: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let first = file_digest(&path).unwrap();
        assert!(
            first.starts_with("xxh3-128:") && first.len() == 9 + 32,
            "{first}"
        );
        // The chunked read hashes what one call over the whole buffer hashes.
        let whole = xxhash_rust::xxh3::xxh3_128(&bytes);
        assert_eq!(first, format!("xxh3-128:{whole:032x}"));
        bytes[7_654_321] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_ne!(file_digest(&path).unwrap(), first);
    }
}
