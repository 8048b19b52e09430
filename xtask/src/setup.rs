//! `cargo xtask setup`: find or install libtorch 2.11.0 and link it as `.libtorch`.
//!
//! tch 0.24.0 is ABI-bound to libtorch 2.11.0. The sources, in order:
//! 1. `$LIBTORCH`, when the user exported it (it must be 2.11.0);
//! 2. a `python3` on the PATH whose torch is 2.11.0;
//! 3. a `.venv` in the repository, created with `pip install torch==2.11.0` (the Linux wheel
//!    carries CUDA 13 and runs on CPU-only machines too).
//!
//! `.cargo/config.toml` points `LIBTORCH` at the `.libtorch` link, so plain `cargo build`
//! works afterwards with nothing exported. Running it again is cheap and changes nothing.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch release tch 0.24.0 needs.
pub const TORCH_VERSION: &str = "2.11.0";

/// Makes `.libtorch` point at a libtorch 2.11.0 and returns that directory.
pub fn setup(root: &Path) -> Result<PathBuf> {
    let link = root.join(".libtorch");
    let dir = find_or_install(root, &link)?;
    let current = std::fs::read_link(&link).ok();
    if current.as_deref() != Some(dir.as_path()) {
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&dir, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), dir.display()))?;
        eprintln!("setup: .libtorch -> {}", dir.display());
    }
    Ok(dir)
}

fn find_or_install(root: &Path, link: &Path) -> Result<PathBuf> {
    // `cargo xtask` itself runs with the LIBTORCH of .cargo/config.toml, which is the link:
    // only a different value is the user's own.
    if let Some(user) = std::env::var_os("LIBTORCH").map(PathBuf::from) {
        if user != link && !user.as_os_str().is_empty() {
            let dir = user.canonicalize().with_context(|| {
                format!("LIBTORCH={} does not exist: unset it or point it at a libtorch {TORCH_VERSION}", user.display())
            })?;
            check_libtorch(&dir).with_context(|| format!("LIBTORCH={}", user.display()))?;
            return Ok(dir);
        }
    }
    if let Ok(dir) = link.canonicalize() {
        if check_libtorch(&dir).is_ok() {
            return Ok(dir);
        }
    }
    match python_torch(Path::new("python3")) {
        Ok(dir) => return Ok(dir),
        Err(err) => eprintln!("setup: the python3 on PATH has no usable torch ({err:#})"),
    }
    let venv_python = root.join(".venv/bin/python");
    if venv_python.exists() {
        if let Ok(dir) = python_torch(&venv_python) {
            return Ok(dir);
        }
    } else {
        eprintln!("setup: creating .venv");
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join(".venv"))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(_) => bail!(
                "`python3 -m venv .venv` failed: install the venv module (`apt-get install python3-venv`), \
                 or export LIBTORCH=<a libtorch {TORCH_VERSION} directory>"
            ),
            Err(_) => bail!(
                "python3 was not found: install python3 (with pip and venv) so that setup can install \
                 torch=={TORCH_VERSION}, or export LIBTORCH=<a libtorch {TORCH_VERSION} directory>"
            ),
        }
    }
    eprintln!("setup: installing torch=={TORCH_VERSION} into .venv (a large download, once)");
    let status = Command::new(&venv_python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            &format!("torch=={TORCH_VERSION}"),
            "numpy",
        ])
        .status()
        .with_context(|| format!("cannot run {}", venv_python.display()))?;
    if !status.success() {
        bail!(
            "`pip install torch=={TORCH_VERSION}` into .venv failed: check the network and disk space, then rerun \
             `cargo xtask setup`, or export LIBTORCH=<a libtorch {TORCH_VERSION} directory>"
        );
    }
    python_torch(&venv_python)
}

/// The torch package directory of a Python interpreter, when its torch is 2.11.0.
fn python_torch(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("{} cannot import torch", python.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(dir)) = (lines.next(), lines.next()) else {
        bail!("unexpected output from {}: {text}", python.display())
    };
    if base_version(version) != TORCH_VERSION {
        bail!(
            "{} has torch {version}, but tch 0.24.0 needs {TORCH_VERSION}",
            python.display()
        );
    }
    let dir = PathBuf::from(dir);
    check_libtorch(&dir)?;
    Ok(dir)
}

/// Checks that `dir` holds a libtorch 2.11.0 (a pip torch package or a libtorch archive).
pub fn check_libtorch(dir: &Path) -> Result<()> {
    if !dir.join("lib/libtorch_cpu.so").exists() || !dir.join("include").is_dir() {
        bail!(
            "{} is not a libtorch directory (no lib/libtorch_cpu.so and include/)",
            dir.display()
        );
    }
    let version = read_version(dir).with_context(|| {
        format!(
            "cannot tell the libtorch version in {} (no version.py or build-version)",
            dir.display()
        )
    })?;
    if base_version(&version) != TORCH_VERSION {
        bail!(
            "{} holds libtorch {version}, but tch 0.24.0 needs {TORCH_VERSION}: `pip install torch=={TORCH_VERSION}` \
             or unset LIBTORCH and run `cargo xtask setup`",
            dir.display()
        );
    }
    Ok(())
}

fn read_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("__version__"))?;
        return Some(
            line.split_once('=')?
                .1
                .trim()
                .trim_matches(['\'', '"'])
                .to_string(),
        );
    }
    std::fs::read_to_string(dir.join("build-version"))
        .ok()
        .map(|v| v.trim().to_string())
}

fn base_version(version: &str) -> &str {
    version.split('+').next().unwrap_or(version).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_libtorch(version_py: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("include")).unwrap();
        std::fs::write(dir.path().join("lib/libtorch_cpu.so"), b"").unwrap();
        std::fs::write(dir.path().join("version.py"), version_py).unwrap();
        dir
    }

    #[test]
    fn accepts_2_11_0_with_any_local_suffix() {
        let dir = fake_libtorch("__version__ = '2.11.0+cu130'\n");
        check_libtorch(dir.path()).unwrap();
    }

    #[test]
    fn rejects_another_version_with_the_fix() {
        let dir = fake_libtorch("__version__ = '2.5.1+cpu'\n");
        let err = format!("{:#}", check_libtorch(dir.path()).unwrap_err());
        assert!(
            err.contains("libtorch 2.5.1+cpu, but tch 0.24.0 needs 2.11.0"),
            "{err}"
        );
        assert!(err.contains("pip install torch==2.11.0"), "{err}");
    }

    #[test]
    fn rejects_a_directory_that_is_not_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_libtorch(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a libtorch directory"), "{err}");
    }
}
