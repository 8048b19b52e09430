//! bf16 mixed precision on CUDA through libtorch's autocast.
//!
//! `tch::autocast` turns CUDA autocast on but cannot choose its dtype, and libtorch's CUDA default
//! is f16. bf16 has f32's exponent range, so training needs no loss scaling; this module sets the
//! autocast dtype through torch-ext ([`torch_ext::AutocastDtypeGuard`], which calls libtorch's
//! `at::autocast::set_autocast_dtype`) for the duration of a closure. Under autocast,
//! convolutions, linear layers and attention run in bf16 while group norm, softmax and losses
//! stay in f32; the weights themselves stay f32, so the optimizer updates f32 master weights.

use tch::{Device, Kind};
use torch_ext::AutocastDtypeGuard;

/// The dtype CUDA autocast casts to on this thread (libtorch's default is `Kind::Half`).
pub fn cuda_autocast_kind() -> Kind {
    torch_ext::get_autocast_dtype(Device::Cuda(0))
        .expect("libtorch has an autocast dtype for CUDA, with or without a GPU")
}

/// Runs `f` under bf16 autocast when `device` is a CUDA device, and as it is otherwise.
///
/// The CPU path stays f32 on purpose: CPUs without AVX512-BF16 or AMX emulate bf16 and run it
/// slower than f32. The previous autocast dtype is restored afterwards, also when `f` panics.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    if !device.is_cuda() {
        return f();
    }
    let _bf16 = AutocastDtypeGuard::new(device, Kind::BFloat16)
        .expect("CUDA autocast accepts bf16, with or without a GPU");
    tch::autocast(true, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_path_runs_the_closure_unchanged() {
        let xs = tch::Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let ys = autocast_bf16(Device::Cpu, || xs.matmul(&xs));
        assert_eq!(ys.kind(), Kind::Float);
    }

    #[test]
    fn reads_and_restores_the_cuda_autocast_dtype_without_a_gpu() {
        // The setting is a plain thread-local in libtorch_cpu: readable without CUDA. A closure
        // on the CUDA path sees bf16 (it fails to run CUDA ops here, so it only reads the dtype)
        // and the default comes back afterwards, also after a panic.
        assert_eq!(cuda_autocast_kind(), Kind::Half);
        let inside = autocast_bf16(Device::Cuda(0), cuda_autocast_kind);
        assert_eq!(inside, Kind::BFloat16);
        assert_eq!(cuda_autocast_kind(), Kind::Half);
        let result = std::panic::catch_unwind(|| {
            autocast_bf16(Device::Cuda(0), || panic!("inside autocast"));
        });
        assert!(result.is_err());
        assert_eq!(cuda_autocast_kind(), Kind::Half);
    }
}
