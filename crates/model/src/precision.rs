//! The network's arithmetic precision ([`Precision`]) and mixed precision through libtorch's
//! autocast: bf16 on CUDA, fp16 on CUDA and the CPU ([`autocast_to`], [`autocast_bf16`], and
//! [`forward`] / [`forward_cond`], which run a network under it and hand back f32).
//!
//! fp16 has a narrow exponent range: small gradients underflow unless the loss is scaled up
//! before backward, which the training crate's loss scaler does (`torch.amp.GradScaler`'s
//! dynamic scale). bf16 needs none.
//!
//! `tch::autocast` turns CUDA autocast on but cannot choose its dtype, and libtorch's CUDA default
//! is f16. bf16 has f32's exponent range, so training needs no loss scaling; this module sets the
//! autocast dtype through torch-ext ([`torch_ext::AutocastDtypeGuard`], which calls libtorch's
//! `at::autocast::set_autocast_dtype`) for the duration of a closure. Under autocast,
//! convolutions, linear layers and attention run in bf16 while group norm, softmax and losses
//! stay in f32; the weights themselves stay f32, so the optimizer updates f32 master weights.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

use crate::Denoiser;

/// Arithmetic precision of the network.
///
/// Serialised in lower case (`"f32"`, `"bf16"`, `"fp16"`), as training configs and checkpoints
/// record it under `precision`; inference reads the same key to sample a network under the
/// autocast it was trained with (the samplers' own arithmetic stays f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// bf16 autocast for the network on CUDA, f32 master weights, optimizer and sampler
    /// arithmetic. On the CPU this falls back to f32.
    Bf16,
    /// fp16 autocast for the network, on CUDA and on the CPU (where libtorch's CPU autocast
    /// supports f16: [`check_autocast`]), f32 master weights, optimizer and sampler arithmetic;
    /// training scales the loss dynamically so that f16 gradients neither underflow nor
    /// overflow.
    Fp16,
}

impl Precision {
    /// The dtype the network runs in under autocast on `device`: bf16 on CUDA for
    /// [`Precision::Bf16`], f16 anywhere for [`Precision::Fp16`], `None` (f32) otherwise.
    pub fn autocast_kind(self, device: Device) -> Option<Kind> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => device.is_cuda().then_some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }

    /// The autocast dtype a network trained at this precision samples with on `device`: the
    /// training one on CUDA, `None` (f32) on the CPU, where f16 and bf16 kernels are emulated
    /// and slower than f32.
    pub fn sampling_kind(self, device: Device) -> Option<Kind> {
        self.autocast_kind(device).filter(|_| device.is_cuda())
    }

    /// Whether the network runs under autocast on `device` ([`Precision::autocast_kind`]).
    pub fn autocast(self, device: Device) -> bool {
        self.autocast_kind(device).is_some()
    }

    /// Whether training needs a dynamic loss scale: fp16.
    pub fn loss_scaling(self) -> bool {
        self == Precision::Fp16
    }
}

/// Checks that libtorch runs autocast at `precision`'s dtype on `device`: one small convolution
/// under it must come out in that dtype (libtorch's CPU autocast supports f16 since PyTorch 2.3).
///
/// # Errors
/// A message naming the precision and the device, and what to pass instead.
pub fn check_autocast(precision: Precision, device: Device) -> Result<(), String> {
    let Some(kind) = precision.autocast_kind(device) else {
        return Ok(());
    };
    let probe = || {
        let guard = torch_ext::AutocastGuard::new(device, kind).map_err(|e| e.to_string())?;
        let xs = Tensor::f_ones([1, 1, 3, 3], (Kind::Float, device)).map_err(|e| e.to_string())?;
        let ys = xs
            .f_conv2d::<Tensor>(&xs, None, 1, 0, 1, 1)
            .map_err(|e| e.to_string())?;
        drop(guard);
        Ok::<Kind, String>(ys.kind())
    };
    match probe() {
        Ok(k) if k == kind => Ok(()),
        Ok(k) => Err(format!(
            "{precision:?} autocast does not run on {device:?} with this libtorch (a convolution \
             under it came out as {k:?}): pass --precision f32, or train on CUDA"
        )),
        Err(e) => Err(format!(
            "{precision:?} autocast is not supported on {device:?} by this libtorch ({e}): pass \
             --precision f32, or train on CUDA"
        )),
    }
}

/// The dtype CUDA autocast casts to on this thread (libtorch's default is `Kind::Half`).
pub fn cuda_autocast_kind() -> Kind {
    torch_ext::get_autocast_dtype(Device::Cuda(0))
        .expect("libtorch has an autocast dtype for CUDA, with or without a GPU")
}

/// Runs `f` under autocast to `kind` on `device` ([`torch_ext::AutocastGuard`]), or as it is for
/// `None`. The previous autocast settings are restored afterwards, also when `f` panics.
///
/// # Panics
/// When libtorch refuses `kind` for `device`'s type ([`check_autocast`] asks beforehand).
pub fn autocast_to<T>(device: Device, kind: Option<Kind>, f: impl FnOnce() -> T) -> T {
    let Some(kind) = kind else {
        return f();
    };
    let _guard = torch_ext::AutocastGuard::new(device, kind)
        .unwrap_or_else(|e| panic!("autocast to {kind:?} on {device:?}: {e}"));
    f()
}

/// Runs `f` under bf16 autocast when `device` is a CUDA device, and as it is otherwise.
///
/// The CPU path stays f32 on purpose: CPUs without AVX512-BF16 or AMX emulate bf16 and run it
/// slower than f32. The previous autocast dtype is restored afterwards, also when `f` panics.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    autocast_to(device, Precision::Bf16.autocast_kind(device), f)
}

/// Runs the network, under autocast to `autocast`'s dtype when set
/// ([`Precision::autocast_kind`]), and returns its output in f32: losses and samplers always
/// compute in f32.
///
/// # Shapes
/// As [`Denoiser::forward_t`]; the output is f32.
pub fn forward(
    model: &dyn Denoiser,
    xs: &Tensor,
    t: &Tensor,
    train: bool,
    autocast: Option<Kind>,
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
    autocast: Option<Kind>,
) -> Tensor {
    let run = || model.forward_cond(xs, t, class_labels, train);
    autocast_to(xs.device(), autocast, run).to_kind(Kind::Float)
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
    autocast: Option<Kind>,
) -> Tensor {
    let run = || model.forward_train(xs, t, class_labels, dropout);
    autocast_to(xs.device(), autocast, run).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_json_names_are_the_ones_checkpoints_record() {
        for (precision, name) in [
            (Precision::F32, "\"f32\""),
            (Precision::Bf16, "\"bf16\""),
            (Precision::Fp16, "\"fp16\""),
        ] {
            assert_eq!(serde_json::to_string(&precision).unwrap(), name);
            assert_eq!(serde_json::from_str::<Precision>(name).unwrap(), precision);
        }
        assert!(serde_json::from_str::<Precision>("\"f16\"").is_err());
        assert_eq!(Precision::Fp16.autocast_kind(Device::Cpu), Some(Kind::Half));
        assert_eq!(
            Precision::Bf16.autocast_kind(Device::Cuda(0)),
            Some(Kind::BFloat16)
        );
        assert!(Precision::Fp16.loss_scaling() && !Precision::Bf16.loss_scaling());
        assert!(Precision::Bf16.autocast(Device::Cuda(0)));
        assert!(!Precision::Bf16.autocast(Device::Cpu));
        assert!(!Precision::F32.autocast(Device::Cuda(0)));
    }

    #[test]
    fn fp16_autocast_runs_on_the_cpu_and_returns_f32() {
        check_autocast(Precision::Fp16, Device::Cpu).unwrap();
        let xs = tch::Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let inner = autocast_to(Device::Cpu, Some(Kind::Half), || xs.matmul(&xs).kind());
        assert_eq!(inner, Kind::Half);
        assert_eq!(
            xs.matmul(&xs).kind(),
            Kind::Float,
            "autocast ends with the closure"
        );
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
