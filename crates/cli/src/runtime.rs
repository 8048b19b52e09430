//! What libtorch this process runs on: the facts `ddpm doctor` prints.
//!
//! The libtorch directory is read from the libraries actually mapped into the process
//! (`/proc/self/maps`), not from the build environment, so a binary run against another
//! libtorch through `LD_LIBRARY_PATH` reports the one it really uses.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Turns cuDNN's autotuner on or off for this process when `device` is a CUDA device
/// (`torch.backends.cudnn.benchmark`). On, the first convolution of each shape times cuDNN's
/// algorithms and keeps the fastest: faster steady-state steps for the fixed shapes of training
/// and sampling, at the cost of a slower first step and of results that may differ in the last
/// bits between processes (the chosen algorithm can change). The commands turn it on by default
/// on CUDA (`--cudnn-benchmark false` turns it off); it does nothing on the CPU.
pub fn configure_cudnn(device: tch::Device, benchmark: bool) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(benchmark);
    }
}

/// The tch crate this workspace pins.
pub const TCH_VERSION: &str = "0.24.0";
/// The libtorch release that tch [`TCH_VERSION`] is built against; other versions are ABI-incompatible.
pub const EXPECTED_LIBTORCH_VERSION: &str = "2.11.0";

/// A CUDA device as the driver names it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CudaDevice {
    /// The CUDA ordinal.
    pub index: usize,
    /// The marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// Total device memory in bytes.
    pub total_memory_bytes: u64,
}

/// Everything `ddpm doctor` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The tch crate version.
    pub tch_version: String,
    /// The libtorch version found in the loaded libtorch directory, e.g. "2.11.0+cu130".
    pub libtorch_version: Option<String>,
    /// The libtorch version tch needs.
    pub expected_libtorch_version: String,
    /// The directory holding the loaded `lib/libtorch_cpu.so`.
    pub libtorch_dir: Option<PathBuf>,
    /// The libtorch directory the binary was linked against (its rpath).
    pub build_libtorch_dir: Option<PathBuf>,
    /// Whether that directory ships `lib/libtorch_cuda.so`.
    pub libtorch_has_cuda: bool,
    /// Whether `libtorch_cuda.so` is mapped into this process.
    pub libtorch_cuda_loaded: bool,
    /// `torch::cuda::is_available()`.
    pub cuda_available: bool,
    /// `torch::cuda::device_count()`.
    pub cuda_device_count: usize,
    /// Names and memory of the CUDA devices.
    pub cuda_devices: Vec<CudaDevice>,
    /// `torch::cuda::cudnn_is_available()`.
    pub cudnn_available: bool,
    /// The number of intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
}

impl RuntimeInfo {
    /// Gathers the facts from the running process.
    pub fn collect() -> Self {
        // Touch libtorch first so that its libraries are certainly mapped.
        let cpu_threads = tch::get_num_threads();
        let cuda_available = tch::Cuda::is_available();
        let cuda_device_count = if cuda_available {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let libtorch_dir = loaded_library(&maps, "libtorch_cpu.so")
            .and_then(|lib| lib.parent()?.parent().map(Path::to_path_buf));
        let libtorch_version = libtorch_dir.as_deref().and_then(read_libtorch_version);
        let libtorch_has_cuda = libtorch_dir
            .as_deref()
            .is_some_and(|d| d.join("lib/libtorch_cuda.so").exists());
        Self {
            tch_version: TCH_VERSION.to_string(),
            libtorch_version,
            expected_libtorch_version: EXPECTED_LIBTORCH_VERSION.to_string(),
            libtorch_dir,
            build_libtorch_dir: option_env!("DDPM_LIBTORCH_DIR").map(PathBuf::from),
            libtorch_has_cuda,
            libtorch_cuda_loaded: loaded_library(&maps, "libtorch_cuda.so").is_some(),
            cuda_available,
            cuda_device_count,
            cuda_devices: if cuda_available {
                cuda_devices()
            } else {
                Vec::new()
            },
            cudnn_available: cuda_available && tch::Cuda::cudnn_is_available(),
            cpu_threads,
        }
    }

    /// Problems that make this installation unusable or silently degraded, as messages that
    /// say what to do. Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.libtorch_version {
            None => problems.push(
                "cannot tell the libtorch version (no version.py or build-version beside the loaded \
                 libtorch): run `cargo xtask setup`"
                    .to_string(),
            ),
            Some(v) if base_version(v) != self.expected_libtorch_version => problems.push(format!(
                "libtorch {v} is loaded but tch {} needs {}: run `cargo xtask setup`, or point \
                 LIBTORCH at a libtorch {}",
                self.tch_version, self.expected_libtorch_version, self.expected_libtorch_version
            )),
            Some(_) => {}
        }
        if self.libtorch_has_cuda && !self.libtorch_cuda_loaded {
            problems.push(
                "libtorch has libtorch_cuda.so but this binary did not load it, so CUDA is \
                 unavailable: rebuild through cargo so that build-support links it with --no-as-needed"
                    .to_string(),
            );
        }
        problems
    }
}

/// The version without a local suffix: "2.11.0+cu130" gives "2.11.0".
pub fn base_version(version: &str) -> &str {
    version.split('+').next().unwrap_or(version).trim()
}

/// The path of the first mapped file whose name is `file_name`.
fn loaded_library(maps: &str, file_name: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|path| path.file_name().is_some_and(|n| n == file_name))
        .map(Path::to_path_buf)
}

/// Reads the version from a pip torch's `version.py` or a libtorch archive's `build-version`.
pub fn read_libtorch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("__version__"))?;
        let value = line.split_once('=')?.1.trim();
        return Some(value.trim_matches(|c| c == '\'' || c == '"').to_string());
    }
    std::fs::read_to_string(dir.join("build-version"))
        .ok()
        .map(|v| v.trim().to_string())
}

/// Device names from the CUDA driver API. libtorch does not expose them through tch, and the
/// driver library is present wherever CUDA is available.
fn cuda_devices() -> Vec<CudaDevice> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    // SAFETY: the signatures match the CUDA driver API (cuda.h); every call checks its status.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else {
            return Vec::new();
        };
        let (Ok(init), Ok(count_fn), Ok(name_fn), Ok(mem_fn)) = (
            lib.get::<CuInit>(b"cuInit\0"),
            lib.get::<CuDeviceGetCount>(b"cuDeviceGetCount\0"),
            lib.get::<CuDeviceGetName>(b"cuDeviceGetName\0"),
            lib.get::<CuDeviceTotalMem>(b"cuDeviceTotalMem_v2\0"),
        ) else {
            return Vec::new();
        };
        let mut count = 0;
        if init(0) != 0 || count_fn(&mut count) != 0 {
            return Vec::new();
        }
        (0..count)
            .map(|ordinal| {
                let mut buf = [0 as std::ffi::c_char; 256];
                let name = if name_fn(buf.as_mut_ptr(), buf.len() as i32, ordinal) == 0 {
                    std::ffi::CStr::from_ptr(buf.as_ptr())
                        .to_string_lossy()
                        .into_owned()
                } else {
                    "unknown".to_string()
                };
                let mut bytes = 0usize;
                let total_memory_bytes = if mem_fn(&mut bytes, ordinal) == 0 {
                    bytes as u64
                } else {
                    0
                };
                CudaDevice {
                    index: ordinal as usize,
                    name,
                    total_memory_bytes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mapped_libraries_by_file_name() {
        let maps = "7f00-7f01 r-xp 00000000 08:01 42 /opt/torch/lib/libtorch_cpu.so\n\
                    7f02-7f03 r--p 00000000 08:01 43 /opt/torch/lib/libtorch_cuda_linalg.so\n";
        assert_eq!(
            loaded_library(maps, "libtorch_cpu.so"),
            Some(PathBuf::from("/opt/torch/lib/libtorch_cpu.so"))
        );
        assert_eq!(loaded_library(maps, "libtorch_cuda.so"), None);
    }

    #[test]
    fn reads_versions_from_pip_and_archive_layouts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ngit_version = 'x'\n",
        )
        .unwrap();
        assert_eq!(
            read_libtorch_version(dir.path()).as_deref(),
            Some("2.11.0+cu130")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build-version"), "2.11.0+cpu\n").unwrap();
        assert_eq!(
            read_libtorch_version(dir.path()).as_deref(),
            Some("2.11.0+cpu")
        );
        assert_eq!(base_version("2.11.0+cpu"), "2.11.0");
    }

    #[test]
    fn this_process_runs_on_the_expected_libtorch() {
        let info = RuntimeInfo::collect();
        assert!(
            info.libtorch_dir.is_some(),
            "libtorch_cpu.so not found in /proc/self/maps"
        );
        assert_eq!(info.problems(), Vec::<String>::new());
        // The acceptance point of the foundation: a libtorch with CUDA is really linked.
        if info.libtorch_has_cuda {
            assert!(
                info.libtorch_cuda_loaded,
                "libtorch_cuda.so was dropped by the linker"
            );
        }
    }
}
