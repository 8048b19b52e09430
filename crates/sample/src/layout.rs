//! The on-disk layout of a training checkpoint, as far as inference needs it: the file names,
//! how to find the newest complete checkpoint, and the digests of its files. The `train` crate
//! writes this layout (and re-exports these items); this module only reads it.
//!
//! ```text
//! <run>/checkpoints/step-00001000/
//!     model.safetensors       live weights (diffusers key names)
//!     ema.safetensors         averaged weights
//!     optimizer.safetensors   Adam moments (training only)
//!     state.json              step, counters, the resolved training config under `config`,
//!                             and each file's digest under `digests`
//! ```
//!
//! **Digests.** The XXH3-128 hash of every file's bytes ([`file_digest`]). safetensors checks a
//! file's header, not its data: a flipped bit in a weight, or a copy cut short by a file-system
//! sync that still holds a whole header, reads without an error, but its digest does not match.
//! XXH3 (`xxhash-rust`) is not cryptographic: it guards against damage, not against someone who
//! rewrites both a file and `state.json`. It hashes at memory speed, so checking the weights
//! costs little beside reading them. `state.json` itself is not digested (it holds the digests);
//! a damaged one fails to parse or to match its files.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

/// The version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;
/// The live weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// The averaged weights.
pub const EMA_FILE: &str = "ema.safetensors";
/// The JSON state; its presence marks a complete checkpoint (it is written last).
pub const STATE_FILE: &str = "state.json";
/// The folder of checkpoints inside a run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The prefix of every digest: the algorithm, so that another one can follow.
pub const DIGEST_ALGORITHM: &str = "xxh3-128";

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
    Ok(format!("{DIGEST_ALGORITHM}:{:032x}", hasher.digest128()))
}

/// Why a file failed [`check_digest`].
#[derive(Debug)]
pub enum DigestError {
    /// The recorded digest is of another algorithm than [`DIGEST_ALGORITHM`] (`state.json`'s
    /// fault, not the file's).
    Algorithm(String),
    /// The file could not be read.
    Io(std::io::Error),
    /// The file's bytes hash to something else than the record.
    Mismatch {
        /// The recorded digest.
        want: String,
        /// The file's.
        got: String,
    },
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Algorithm(want) => {
                write!(
                    f,
                    "digest `{want}`: this build checks only {DIGEST_ALGORITHM}"
                )
            }
            Self::Io(e) => write!(f, "{e}"),
            Self::Mismatch { want, got } => write!(
                f,
                "digest mismatch: {STATE_FILE} records {want}, the file hashes to {got}; it \
                 changed after it was written (a flipped bit or a truncated copy)"
            ),
        }
    }
}

/// Checks that the file `path` hashes to the recorded digest `want` ([`file_digest`]).
///
/// # Errors
/// The [`DigestError`] that says which of the record, the read or the bytes is at fault.
pub fn check_digest(path: &Path, want: &str) -> Result<(), DigestError> {
    if !want.starts_with(&format!("{DIGEST_ALGORITHM}:")) {
        return Err(DigestError::Algorithm(want.to_string()));
    }
    let got = file_digest(path).map_err(DigestError::Io)?;
    if got == want {
        Ok(())
    } else {
        Err(DigestError::Mismatch {
            want: want.to_string(),
            got,
        })
    }
}

/// The checkpoint directory name for a step.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoint directories under `root` (`<run>/checkpoints`), oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(STATE_FILE).exists().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Option<PathBuf> {
    list(root).pop().map(|(_, p)| p)
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
        assert!(check_digest(&path, &first).is_ok());
        bytes[7_654_321] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_ne!(file_digest(&path).unwrap(), first);
        let err = check_digest(&path, &first).unwrap_err();
        assert!(matches!(err, DigestError::Mismatch { .. }), "{err}");
        let err = check_digest(&path, "sha256:00").unwrap_err();
        assert!(matches!(err, DigestError::Algorithm(_)), "{err}");
        let err = check_digest(&dir.path().join("gone"), &first).unwrap_err();
        assert!(matches!(err, DigestError::Io(_)), "{err}");
    }
}
