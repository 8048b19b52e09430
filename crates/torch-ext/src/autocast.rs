//! The dtype autocast casts to (`at::autocast::{set,get}_autocast_dtype`), per device type, and
//! autocast itself on any device type ([`AutocastGuard`]).
//!
//! `tch::autocast` turns autocast on for CUDA only and cannot choose its dtype; libtorch's
//! defaults are f16 on CUDA and bf16 on CPU. These are thread-local settings of libtorch_cpu:
//! they can be read and written without a GPU, for the CUDA device type too, and each thread has
//! its own.

use crate::ffi;
use crate::Result;
use tch::{Device, Kind};
use torch_sys::C_tensor;

/// Sets the dtype autocast uses on `device`'s device type, for the calling thread (the device
/// index is ignored: the setting is per type).
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) when libtorch refuses the dtype for that device type.
pub fn set_autocast_dtype(device: Device, kind: Kind) -> Result<()> {
    let carrier = ffi::dtype_carrier(kind);
    // SAFETY: a live tensor handle; the shim only reads its dtype.
    ffi::torch("set_autocast_dtype", unsafe {
        ffi::te_set_autocast_dtype(ffi::device_type(device), ffi::handle(&carrier))
    })
}

/// The dtype autocast uses on `device`'s device type, for the calling thread.
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) when libtorch has no autocast setting for that device type.
pub fn get_autocast_dtype(device: Device) -> Result<Kind> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; on success it holds a new handle that we own.
    ffi::torch("get_autocast_dtype", unsafe {
        ffi::te_get_autocast_dtype(ffi::device_type(device), &mut out)
    })?;
    let carrier = unsafe { ffi::from_handle(out) };
    Ok(carrier.kind())
}

/// Sets the autocast dtype of a device type and restores the previous one when dropped (also
/// when unwinding from a panic).
///
/// ```no_run
/// # fn main() -> torch_ext::Result<()> {
/// use tch::{Device, Kind};
/// let _bf16 = torch_ext::AutocastDtypeGuard::new(Device::Cuda(0), Kind::BFloat16)?;
/// let ys = tch::autocast(true, || { /* forward pass */ });
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the previous dtype is restored when the guard is dropped"]
pub struct AutocastDtypeGuard {
    device: Device,
    previous: Kind,
}

impl AutocastDtypeGuard {
    /// Sets `kind` for `device`'s type on this thread and remembers the dtype it replaces.
    ///
    /// # Errors
    /// As [`set_autocast_dtype`] and [`get_autocast_dtype`].
    pub fn new(device: Device, kind: Kind) -> Result<Self> {
        let previous = get_autocast_dtype(device)?;
        set_autocast_dtype(device, kind)?;
        Ok(Self { device, previous })
    }

    /// The dtype that is restored on drop.
    pub fn previous(&self) -> Kind {
        self.previous
    }
}

impl Drop for AutocastDtypeGuard {
    fn drop(&mut self) {
        // Restoring a dtype that was in effect before cannot be refused.
        if let Err(err) = set_autocast_dtype(self.device, self.previous) {
            debug_assert!(false, "restoring the autocast dtype failed: {err}");
        }
    }
}

/// Autocast to `kind` on `device`'s device type for this thread, as `torch.autocast(device_type,
/// dtype)` sets it up: the dtype, the enabled flag and the nesting depth, all restored when the
/// guard drops (when the outermost region ends, autocast's cache of cast weights is cleared, as
/// `tch::autocast` does on CUDA). Unlike `tch::autocast` it works for the CPU too.
///
/// ```no_run
/// # fn main() -> torch_ext::Result<()> {
/// use tch::{Device, Kind};
/// let _fp16 = torch_ext::AutocastGuard::new(Device::Cpu, Kind::Half)?;
/// // convolutions and matmuls now run in f16
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device: Device,
    _dtype: AutocastDtypeGuard,
    was_enabled: bool,
    /// The settings are thread-local: the guard must drop on the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

fn set_autocast_enabled(device: Device, enabled: bool) -> Result<bool> {
    let mut previous = 0;
    // SAFETY: a thread-local setter and a valid out-pointer.
    ffi::torch("set_autocast_enabled", unsafe {
        ffi::te_set_autocast_enabled(
            ffi::device_type(device),
            std::ffi::c_int::from(enabled),
            &mut previous,
        )
    })?;
    Ok(previous != 0)
}

impl AutocastGuard {
    /// Turns autocast to `kind` on for `device`'s type on this thread.
    ///
    /// # Errors
    /// [`Error::Torch`](crate::Error::Torch) when libtorch refuses the dtype for that device
    /// type.
    pub fn new(device: Device, kind: Kind) -> Result<Self> {
        let dtype = AutocastDtypeGuard::new(device, kind)?;
        let was_enabled = set_autocast_enabled(device, true)?;
        // SAFETY: a thread-local counter; the matching decrement is in Drop.
        unsafe { torch_sys::at_autocast_increment_nesting() };
        Ok(Self {
            device,
            _dtype: dtype,
            was_enabled,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: thread-local counters, raised by `new` on this thread (the guard is not Send).
        unsafe {
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
        }
        if let Err(err) = set_autocast_enabled(self.device, self.was_enabled) {
            debug_assert!(false, "restoring autocast's enabled flag failed: {err}");
        }
    }
}

/// Turns autocast's cache of cast leaf tensors (the bf16 copies of the weights, kept for the
/// rest of the outermost autocast region) on or off, for the calling thread
/// (`torch.autocast(cache_enabled=...)`). CUDA graph captures need it off.
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) if libtorch throws.
pub fn set_autocast_cache_enabled(enabled: bool) -> Result<()> {
    // SAFETY: a thread-local setter.
    ffi::torch("set_autocast_cache_enabled", unsafe {
        ffi::te_set_autocast_cache_enabled(std::ffi::c_int::from(enabled))
    })
}

/// Whether autocast caches the casts of leaf tensors on this thread (libtorch's default: yes).
///
/// # Errors
/// [`Error::Torch`](crate::Error::Torch) if libtorch throws.
pub fn is_autocast_cache_enabled() -> Result<bool> {
    let mut out = 0;
    // SAFETY: a thread-local getter and a valid out-pointer.
    ffi::torch("is_autocast_cache_enabled", unsafe {
        ffi::te_is_autocast_cache_enabled(&mut out)
    })?;
    Ok(out != 0)
}

/// Sets autocast's cache on or off and restores the previous setting when dropped.
#[derive(Debug)]
#[must_use = "the previous setting is restored when the guard is dropped"]
pub struct AutocastCacheGuard {
    previous: bool,
}

impl AutocastCacheGuard {
    /// Sets the cache for this thread, remembering the setting it replaces.
    ///
    /// # Errors
    /// As [`set_autocast_cache_enabled`].
    pub fn new(enabled: bool) -> Result<Self> {
        let previous = is_autocast_cache_enabled()?;
        set_autocast_cache_enabled(enabled)?;
        Ok(Self { previous })
    }
}

impl Drop for AutocastCacheGuard {
    fn drop(&mut self) {
        if let Err(err) = set_autocast_cache_enabled(self.previous) {
            debug_assert!(false, "restoring the autocast cache setting failed: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_setting_round_trips_without_a_gpu() {
        // Tests run on their own threads, and the setting is thread-local: this thread starts
        // from libtorch's default.
        assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::Half);
        set_autocast_dtype(Device::Cuda(0), Kind::BFloat16).unwrap();
        assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::BFloat16);
        assert_eq!(
            get_autocast_dtype(Device::Cuda(3)).unwrap(),
            Kind::BFloat16,
            "per type, not per index"
        );
        // The CPU setting is separate.
        assert_eq!(get_autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        set_autocast_dtype(Device::Cpu, Kind::Half).unwrap();
        assert_eq!(get_autocast_dtype(Device::Cpu).unwrap(), Kind::Half);
        assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::BFloat16);
        set_autocast_dtype(Device::Cuda(0), Kind::Half).unwrap();
        set_autocast_dtype(Device::Cpu, Kind::BFloat16).unwrap();
    }

    #[test]
    fn the_setting_is_per_thread() {
        set_autocast_dtype(Device::Cuda(0), Kind::BFloat16).unwrap();
        let other = std::thread::spawn(|| get_autocast_dtype(Device::Cuda(0)).unwrap())
            .join()
            .unwrap();
        assert_eq!(other, Kind::Half);
        set_autocast_dtype(Device::Cuda(0), Kind::Half).unwrap();
    }

    #[test]
    fn the_cache_setting_round_trips_and_the_guard_restores_it() {
        assert!(is_autocast_cache_enabled().unwrap(), "libtorch's default");
        {
            let _off = AutocastCacheGuard::new(false).unwrap();
            assert!(!is_autocast_cache_enabled().unwrap());
        }
        assert!(is_autocast_cache_enabled().unwrap());
        set_autocast_cache_enabled(false).unwrap();
        assert!(!is_autocast_cache_enabled().unwrap());
        set_autocast_cache_enabled(true).unwrap();
    }

    #[test]
    fn the_autocast_guard_runs_cpu_matmuls_in_f16_and_restores_everything() {
        let xs = tch::Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        {
            let _fp16 = AutocastGuard::new(Device::Cpu, Kind::Half).unwrap();
            assert_eq!(get_autocast_dtype(Device::Cpu).unwrap(), Kind::Half);
            assert_eq!(xs.matmul(&xs).kind(), Kind::Half);
        }
        assert_eq!(xs.matmul(&xs).kind(), Kind::Float);
        assert_eq!(get_autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        assert!(
            !set_autocast_enabled(Device::Cpu, false).unwrap(),
            "off again"
        );
    }

    #[test]
    fn the_guard_restores_the_previous_dtype_also_on_panic() {
        {
            let guard = AutocastDtypeGuard::new(Device::Cuda(0), Kind::BFloat16).unwrap();
            assert_eq!(guard.previous(), Kind::Half);
            assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::BFloat16);
        }
        assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::Half);
        let result = std::panic::catch_unwind(|| {
            let _guard = AutocastDtypeGuard::new(Device::Cuda(0), Kind::BFloat16).unwrap();
            panic!("inside the guard");
        });
        assert!(result.is_err());
        assert_eq!(get_autocast_dtype(Device::Cuda(0)).unwrap(), Kind::Half);
    }
}
