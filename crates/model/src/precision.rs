//! bf16 mixed precision on CUDA through libtorch's autocast.
//!
//! `tch::autocast` turns CUDA autocast on but cannot choose its dtype, and libtorch's CUDA default
//! is f16. bf16 has f32's exponent range, so training needs no loss scaling; this module sets the
//! autocast dtype through libtorch's own C++ API (`at::autocast::set_autocast_dtype`, exported by
//! `libtorch_cpu`) for the duration of a closure. Under autocast, convolutions, linear layers and
//! attention run in bf16 while group norm, softmax and losses stay in f32; the weights themselves
//! stay f32, so the optimizer updates f32 master weights.

use tch::{Device, Kind};

// libtorch's C++ ABI for two free functions of `ATen/autocast_mode.h`. `c10::DeviceType` and
// `c10::ScalarType` are `enum class : int8_t`, so the arguments are plain `i8`s, and the Itanium
// C++ ABI passes them like C does.
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_autocast_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_autocast_get_autocast_dtype(device_type: i8) -> i8;
}

/// `c10::DeviceType::CUDA`.
const DEVICE_TYPE_CUDA: i8 = 1;
/// `c10::ScalarType` codes of the dtypes autocast can use (`c10/core/ScalarType.h`).
const SCALAR_TYPES: [(i8, Kind); 3] = [(5, Kind::Half), (6, Kind::Float), (15, Kind::BFloat16)];

/// The dtype CUDA autocast casts to (libtorch's default is `Kind::Half`).
pub fn cuda_autocast_kind() -> Kind {
    // SAFETY: a getter of a thread-local setting, declared with its exact C++ signature above.
    let code = unsafe { at_autocast_get_autocast_dtype(DEVICE_TYPE_CUDA) };
    SCALAR_TYPES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, kind)| *kind)
        .unwrap_or_else(|| panic!("unexpected CUDA autocast dtype code {code}"))
}

fn set_cuda_autocast_kind(kind: Kind) {
    let code = SCALAR_TYPES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(code, _)| *code)
        .unwrap_or_else(|| panic!("autocast cannot use {kind:?}"));
    // SAFETY: a setter of a thread-local setting, declared with its exact C++ signature above.
    unsafe { at_autocast_set_autocast_dtype(DEVICE_TYPE_CUDA, code) }
}

/// Runs `f` under bf16 autocast when `device` is a CUDA device, and as it is otherwise.
///
/// The CPU path stays f32 on purpose: CPUs without AVX512-BF16 or AMX emulate bf16 and run it
/// slower than f32. The previous autocast dtype is restored afterwards, also when `f` panics.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    if !device.is_cuda() {
        return f();
    }
    struct Restore(Kind);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_cuda_autocast_kind(self.0);
        }
    }
    let _restore = Restore(cuda_autocast_kind());
    set_cuda_autocast_kind(Kind::BFloat16);
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
        // The setting is a plain thread-local in libtorch_cpu: readable without CUDA.
        assert_eq!(cuda_autocast_kind(), Kind::Half);
        set_cuda_autocast_kind(Kind::BFloat16);
        assert_eq!(cuda_autocast_kind(), Kind::BFloat16);
        set_cuda_autocast_kind(Kind::Half);
    }
}
