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
//!
//! It also fetches the C++ headers that `crates/torch-ext` compiles against and libtorch does
//! not ship, into the git-ignored `.deps/`:
//! - `.deps/gloo/usr/include`: Gloo's headers (libtorch has Gloo linked in, without headers),
//!   from Debian's `libgloo-dev` (`apt-get download` + `dpkg -x`: no root needed; as root,
//!   an empty package list is refreshed with `apt-get update` first). `DDPM_GLOO_INCLUDE`
//!   replaces them. Only torch-ext's `dist` feature (c10d), which `train` and `cli` turn on,
//!   needs them; `model`, `sample` and `eval` build without. `DDPM_GLOO_INCLUDE=` (empty) says
//!   that there are none: torch-ext's build script then skips `.deps/gloo`, and a build that
//!   needs c10d fails at once (CI builds the Gloo-free crates this way).
//! - `.deps/cuda-headers`: the CUDA `crt/` and `nv/target` headers that torch's wheel does not
//!   pull in (`pip install --target` of `nvidia-cuda-crt`, `nvidia-cuda-cccl`). Only torch-ext's
//!   `nccl` and `cuda` features need them, so a failure here is a warning.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch release tch 0.24.0 needs.
pub const TORCH_VERSION: &str = "2.11.0";

/// Debian's Gloo headers package (`0.0~git20220518.5b14351` in bookworm: ProcessGroupGloo holds
/// Gloo types only behind pointers, so headers close to PyTorch's pinned Gloo are enough).
const GLOO_PACKAGE: &str = "libgloo-dev";
/// The CUDA header wheels matching torch 2.11.0's CUDA 13.0 (`nvidia/cu13/include/{crt,nv}`).
const CUDA_HEADER_WHEELS: [&str; 2] = ["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];

/// Provides libtorch (see [`libtorch`]) and the headers torch-ext needs (see the module docs);
/// returns the libtorch directory.
pub fn setup(root: &Path) -> Result<PathBuf> {
    let dir = libtorch(root)?;
    gloo_headers(root)?;
    if let Err(err) = cuda_headers(root) {
        eprintln!(
            "setup: warning: {err:#} (only torch-ext's `nccl` and `cuda` features need these headers)"
        );
    }
    Ok(dir)
}

/// Makes `.libtorch` point at a libtorch 2.11.0 and returns that directory.
pub fn libtorch(root: &Path) -> Result<PathBuf> {
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

/// The directory torch-ext's build script looks in for `gloo/config.h` by default.
pub fn gloo_include_dir(root: &Path) -> PathBuf {
    root.join(".deps/gloo/usr/include")
}

/// Fetches Debian's libgloo-dev into `.deps/gloo` unless `DDPM_GLOO_INCLUDE` points at headers,
/// is empty (no Gloo wanted), or they are there already.
fn gloo_headers(root: &Path) -> Result<()> {
    if std::env::var_os("DDPM_GLOO_INCLUDE").is_some_and(|dir| dir.is_empty()) {
        eprintln!(
            "setup: DDPM_GLOO_INCLUDE is empty: no Gloo headers (train and cli, which need c10d, \
             will not build)"
        );
        return Ok(());
    }
    if let Some(dir) = std::env::var_os("DDPM_GLOO_INCLUDE").map(PathBuf::from) {
        if !dir.join("gloo/config.h").exists() {
            bail!(
                "DDPM_GLOO_INCLUDE={} has no gloo/config.h: point it at the directory that holds gloo/, or unset it \
                 and let `cargo xtask setup` fetch the headers",
                dir.display()
            );
        }
        return Ok(());
    }
    if gloo_include_dir(root).join("gloo/config.h").exists() {
        return Ok(());
    }
    eprintln!("setup: fetching the Gloo headers ({GLOO_PACKAGE}) into .deps/gloo");
    let deps = root.join(".deps");
    let download = deps.join("download");
    let staging = deps.join("gloo.partial");
    for dir in [&download, &staging] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    let deb = apt_download(&download, GLOO_PACKAGE)?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&staging)
        .status()
        .with_context(|| {
            format!(
                "cannot run `dpkg -x {} {}`",
                deb.display(),
                staging.display()
            )
        })?;
    if !status.success() {
        bail!(
            "`dpkg -x {} {}` failed with {status}",
            deb.display(),
            staging.display()
        );
    }
    if !staging.join("usr/include/gloo/config.h").exists() {
        bail!(
            "{} has no usr/include/gloo/config.h: not the Gloo headers",
            deb.display()
        );
    }
    // Renamed into place last: an interrupted set-up leaves no half-filled .deps/gloo.
    let dest = deps.join("gloo");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("cannot move the headers to {}", dest.display()))?;
    std::fs::remove_dir_all(&download)
        .with_context(|| format!("cannot remove {}", download.display()))?;
    eprintln!(
        "setup: Gloo headers in {}",
        gloo_include_dir(root).display()
    );
    Ok(())
}

/// `apt-get download PACKAGE` into `dir`; returns the `.deb`. As root, an `apt-get update`
/// is run first when apt does not know the package (a fresh container has no package lists).
fn apt_download(dir: &Path, package: &str) -> Result<PathBuf> {
    let run = || {
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(dir)
            .output()
            .with_context(|| {
                format!(
                    "cannot run `apt-get download {package}` (not a Debian-based system?): provide Gloo headers \
                     (pytorch/gloo at the commit PyTorch 2.11.0 pins) and set DDPM_GLOO_INCLUDE to the directory \
                     that holds gloo/"
                )
            })
    };
    let mut out = run()?;
    if !out.status.success() && is_root() {
        eprintln!(
            "setup: `apt-get download {package}` failed, running `apt-get update` and retrying"
        );
        let status = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("cannot run `apt-get update`")?;
        if !status.success() {
            bail!("`apt-get update` failed with {status}: check the network, then rerun `cargo xtask setup`");
        }
        out = run()?;
    }
    if !out.status.success() {
        bail!(
            "`apt-get download {package}` failed ({}): {}\nrun `sudo apt-get update` and rerun `cargo xtask setup`, \
             or set DDPM_GLOO_INCLUDE to a directory with Gloo's headers",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.extension().is_some_and(|ext| ext == "deb")
                && path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{package}_")))
        });
    deb.with_context(|| {
        format!(
            "`apt-get download {package}` left no {package}_*.deb in {}",
            dir.display()
        )
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The directory torch-ext's build script looks in for `crt/` and `nv/target` by default.
pub fn cuda_headers_dir(root: &Path) -> PathBuf {
    root.join(".deps/cuda-headers/nvidia/cu13/include")
}

/// Installs the CUDA header wheels into `.deps/cuda-headers` (with `pip install --target`, so
/// no environment is modified) unless they are there already.
fn cuda_headers(root: &Path) -> Result<()> {
    let include = cuda_headers_dir(root);
    if include.join("crt/host_defines.h").exists() && include.join("nv/target").exists() {
        return Ok(());
    }
    let venv_python = root.join(".venv/bin/python");
    let python = if venv_python.exists() {
        venv_python
    } else {
        PathBuf::from("python3")
    };
    let deps = root.join(".deps");
    let staging = deps.join("cuda-headers.partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    eprintln!(
        "setup: installing the CUDA headers ({}) into .deps/cuda-headers",
        CUDA_HEADER_WHEELS.join(", ")
    );
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
            "--quiet",
            "--target",
        ])
        .arg(&staging)
        .args(CUDA_HEADER_WHEELS)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!(
            "`{} -m pip install --no-deps --target {} {}` failed with {status}",
            python.display(),
            staging.display(),
            CUDA_HEADER_WHEELS.join(" ")
        );
    }
    let dest = deps.join("cuda-headers");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)
            .with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("cannot move the headers to {}", dest.display()))?;
    Ok(())
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
