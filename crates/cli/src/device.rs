//! Device selection: `--device auto|cpu|cuda[:N]`, parsed once from the command line, resolved
//! against what libtorch sees, then passed down to the libraries as a [`tch::Device`]. Its
//! errors name the flag and `ddpm doctor`, so it lives in the binary that has both.

use std::fmt;
use std::str::FromStr;

/// A device as the user names it: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when one is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// Errors from parsing or resolving a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The text is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{0}`: use auto, cpu, cuda or cuda:N")]
    Unknown(String),
    /// CUDA was asked for but libtorch sees no CUDA device.
    #[error("--device {0} was asked for but CUDA is not available (run `ddpm doctor` to see why), or pass --device cpu")]
    CudaUnavailable(DeviceSpec),
    /// The CUDA ordinal is past the last device.
    #[error("--device cuda:{index} was asked for but only {count} CUDA device(s) are visible")]
    NoSuchCuda {
        /// The ordinal asked for.
        index: usize,
        /// How many devices libtorch sees.
        count: usize,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves the choice against what libtorch sees.
    ///
    /// # Errors
    /// [`DeviceError::CudaUnavailable`] or [`DeviceError::NoSuchCuda`] when CUDA is asked for
    /// explicitly and cannot be had; `auto` never fails.
    pub fn resolve(self) -> Result<tch::Device, DeviceError> {
        match self {
            Self::Auto => Ok(tch::Device::cuda_if_available()),
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Cuda(index) => {
                if !tch::Cuda::is_available() {
                    return Err(DeviceError::CudaUnavailable(self));
                }
                let count = tch::Cuda::device_count() as usize;
                if index >= count {
                    return Err(DeviceError::NoSuchCuda { index, count });
                }
                Ok(tch::Device::Cuda(index))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown device `tpu`: use auto, cpu, cuda or cuda:N"
        );
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_always_resolves_and_cuda_errors_without_a_gpu() {
        assert_eq!(DeviceSpec::Cpu.resolve(), Ok(tch::Device::Cpu));
        if !tch::Cuda::is_available() {
            let err = DeviceSpec::Cuda(0).resolve().unwrap_err();
            assert!(err.to_string().contains("CUDA is not available"), "{err}");
            assert_eq!(DeviceSpec::Auto.resolve(), Ok(tch::Device::Cpu));
        }
    }
}
