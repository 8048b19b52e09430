//! The on-disk layout of a training checkpoint, as far as inference needs it: the file names,
//! and how to find the newest complete checkpoint. The `train` crate writes this layout (and
//! re-exports these items); this module only reads it.
//!
//! ```text
//! <run>/checkpoints/step-00001000/
//!     model.safetensors       live weights (diffusers key names)
//!     ema.safetensors         averaged weights
//!     optimizer.safetensors   Adam moments (training only)
//!     state.json              step, counters, and the resolved training config under `config`
//! ```

use std::fs;
use std::path::{Path, PathBuf};

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
