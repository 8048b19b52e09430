//! The network's arithmetic precision ([`Precision`]) and bf16 mixed precision on CUDA through
//! libtorch's autocast ([`autocast_bf16`], and [`forward`] / [`forward_cond`], which run a network
//! under it and hand back f32).
//!
//! `tch::autocast` turns CUDA autocast on but cannot choose its dtype, and libtorch's CUDA default
//! is f16. bf16 has f32's exponent range, so training needs no loss scaling; this module sets the
//! autocast dtype through torch-ext ([`torch_ext::AutocastDtypeGuard`], which calls libtorch's
//! `at::autocast::set_autocast_dtype`) for the duration of a closure. Under autocast,
//! convolutions, linear layers and attention run in bf16 while group norm, softmax and losses
//! stay in f32; the weights themselves stay f32, so the optimizer updates f32 master weights.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use torch_ext::{AutocastDtypeGuard, Generator};

use crate::Denoiser;

/// Arithmetic precision of the network.
///
/// Serialised in lower case (`"f32"`, `"bf16"`), as training configs and checkpoints record it
/// under `precision`; inference reads the same key to sample a bf16-trained network under bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// bf16 autocast for the network on CUDA, f32 master weights, optimizer and sampler
    /// arithmetic. On the CPU this falls back to f32.
    Bf16,
}

impl Precision {
    /// Whether the network runs under bf16 autocast on `device`: bf16 on a CUDA device.
    pub fn autocast(self, device: Device) -> bool {
        self == Precision::Bf16 && device.is_cuda()
    }
}

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

/// Runs the network, under bf16 autocast when `autocast` is set (CUDA only), and returns its
/// output in f32: losses and samplers always compute in f32.
///
/// # Shapes
/// As [`Denoiser::forward_t`]; the output is f32.
pub fn forward(
    model: &dyn Denoiser,
    xs: &Tensor,
    t: &Tensor,
    train: bool,
    autocast: bool,
) -> Tensor {
    forward_cond(model, xs, t, None, train, autocast)
}

/// [`forward`] for the classes `class_labels` ([`Denoiser::forward_cond`]; `None` is the null
/// label of a class-conditional network).
///
/// # Shapes
/// As [`Denoiser::forward_cond`]; the output is f32.
pub fn forward_cond(
    model: &dyn Denoiser,
    xs: &Tensor,
    t: &Tensor,
    class_labels: Option<&Tensor>,
    train: bool,
    autocast: bool,
) -> Tensor {
    let run = || model.forward_cond(xs, t, class_labels, train);
    let out = if autocast {
        autocast_bf16(xs.device(), run)
    } else {
        run()
    };
    out.to_kind(Kind::Float)
}

/// [`forward_cond`] in training mode with dropout masks from `dropout`
/// ([`Denoiser::forward_train`]).
///
/// # Shapes
/// As [`Denoiser::forward_cond`]; the output is f32.
pub fn forward_train(
    model: &dyn Denoiser,
    xs: &Tensor,
    t: &Tensor,
    class_labels: Option<&Tensor>,
    dropout: &mut Generator,
    autocast: bool,
) -> Tensor {
    let out = if autocast {
        autocast_bf16(xs.device(), || {
            model.forward_train(xs, t, class_labels, dropout)
        })
    } else {
        model.forward_train(xs, t, class_labels, dropout)
    };
    out.to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_json_names_are_the_ones_checkpoints_record() {
        for (precision, name) in [(Precision::F32, "\"f32\""), (Precision::Bf16, "\"bf16\"")] {
            assert_eq!(serde_json::to_string(&precision).unwrap(), name);
            assert_eq!(serde_json::from_str::<Precision>(name).unwrap(), precision);
        }
        assert!(serde_json::from_str::<Precision>("\"fp16\"").is_err());
        assert!(Precision::Bf16.autocast(Device::Cuda(0)));
        assert!(!Precision::Bf16.autocast(Device::Cpu));
        assert!(!Precision::F32.autocast(Device::Cuda(0)));
    }

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
