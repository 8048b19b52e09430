//! The Python readers that the end-to-end tests check the toolkit's files with, beside the
//! diffusers of the PyTorch peer (`bench::python`): `cargo xtask test` installs each one the
//! set-up's python cannot import, from the requirements file its scripts name.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::run_checked;

/// (module to import, requirements file that installs it, what reads with it).
pub const READERS: [(&str, &str, &str); 1] = [(
    "tensorboard.backend.event_processing.event_accumulator",
    "scripts/tensorboard/requirements.txt",
    "TensorBoard's EventAccumulator (tests/tests/tensorboard.rs)",
)];

/// Installs into `python`'s environment every [`READERS`] entry it cannot import.
///
/// # Errors
/// When `pip install -r FILE` fails, naming the file and the reader.
pub fn install(root: &Path, python: &Path) -> Result<()> {
    for (module, requirements, what) in READERS {
        let has = Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has {
            continue;
        }
        eprintln!("== installing {what} ({requirements})");
        run_checked(Command::new(python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            &root.join(requirements).to_string_lossy(),
        ]))
        .with_context(|| format!("pip install -r {requirements} (for {what})"))?;
    }
    Ok(())
}
