//! Multi-tensor ops on lists of tensors (`at::_foreach_*`) and the fused Adam/AdamW step
//! (`at::_fused_adam_`, `at::_fused_adamw_`), as `torch.optim.Adam(foreach=True)` /
//! `(fused=True)`, `torch.nn.utils.clip_grad_norm_` and `torch.optim.swa_utils`' EMA call them.
//!
//! On CUDA each call updates the whole list in one or a few kernel launches instead of one per
//! tensor; on CPU they loop, with the same results. Nothing here reads a value back to the host,
//! so a training step that uses them stays free of device synchronisations.
//!
//! In-place ops take the lists they write to as `&mut [Tensor]`. An empty list is a no-op.

use crate::ffi;
use crate::{Error, Result};
use std::ffi::c_int;
use tch::Tensor;
use torch_sys::C_tensor;

/// `selfs[i] += weight * (ends[i] - selfs[i])` for every `i` (`torch._foreach_lerp_`).
///
/// An exponential moving average of parameters is `foreach_lerp_(ema, params, 1 - decay)`:
/// `ema ← ema + (1 − decay)·(p − ema) = decay·ema + (1 − decay)·p`.
///
/// # Errors
/// [`Error::InvalidArgument`] when the lists differ in length; [`Error::Torch`] when shapes,
/// dtypes or devices do not match.
pub fn foreach_lerp_(selfs: &mut [Tensor], ends: &[Tensor], weight: f64) -> Result<()> {
    same_len("foreach_lerp_", selfs.len(), ends.len())?;
    if selfs.is_empty() {
        return Ok(());
    }
    let (xs, es) = (ffi::handles(selfs), ffi::handles(ends));
    // SAFETY: live handles, with the lengths passed alongside.
    ffi::torch("foreach_lerp_", unsafe {
        ffi::te_foreach_lerp_scalar_(xs.as_ptr(), xs.len(), es.as_ptr(), es.len(), weight)
    })
}

/// `selfs[i] += weight * (ends[i] - selfs[i])` for a one-element tensor `weight` that may live on
/// the device: an EMA whose decay (or whose skipping, with a weight of 0) is decided on the device,
/// without reading it back.
///
/// `weight` has the tensors' dtype. On CUDA this runs three multi-tensor kernels
/// (`_foreach_sub`, `_foreach_mul_`, `_foreach_add_`) with one temporary list, since ATen's
/// `_foreach_lerp_` takes a tensor weight only as one full-size weight per tensor; on the CPU one
/// `lerp_` per tensor.
///
/// # Errors
/// [`Error::InvalidArgument`] when the lists differ in length; [`Error::Torch`] when `weight` has
/// more than one element or shapes, dtypes or devices do not match.
pub fn foreach_lerp_tensor_(selfs: &mut [Tensor], ends: &[Tensor], weight: &Tensor) -> Result<()> {
    same_len("foreach_lerp_tensor_", selfs.len(), ends.len())?;
    if selfs.is_empty() {
        return Ok(());
    }
    let (xs, es) = (ffi::handles(selfs), ffi::handles(ends));
    // SAFETY: live handles, with the lengths passed alongside.
    ffi::torch("foreach_lerp_tensor_", unsafe {
        ffi::te_foreach_lerp_tensor_(
            xs.as_ptr(),
            xs.len(),
            es.as_ptr(),
            es.len(),
            ffi::handle(weight),
        )
    })
}

/// The `ord`-norm of every tensor (`torch._foreach_norm`): 0-dim tensors on each tensor's
/// device, in the tensors' dtype.
///
/// # Errors
/// [`Error::Torch`] for an unsupported `ord` or dtype.
pub fn foreach_norm(xs: &[Tensor], ord: f64) -> Result<Vec<Tensor>> {
    if xs.is_empty() {
        return Ok(vec![]);
    }
    let handles = ffi::handles(xs);
    let mut out: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); xs.len()];
    // SAFETY: live handles and room for one output handle each.
    ffi::torch("foreach_norm", unsafe {
        ffi::te_foreach_norm(handles.as_ptr(), handles.len(), ord, out.as_mut_ptr())
    })?;
    // SAFETY: on success every slot holds a new handle that we now own.
    Ok(out
        .into_iter()
        .map(|ptr| unsafe { ffi::from_handle(ptr) })
        .collect())
}

/// The L2 norm of all tensors taken together, `sqrt(Σᵢ ‖xsᵢ‖²)`, as a 0-dim tensor on the
/// tensors' device (the norm of the per-tensor norms; no host synchronisation).
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty list; [`Error::Torch`] when the tensors are on
/// different devices or of different dtypes.
pub fn global_norm(xs: &[Tensor]) -> Result<Tensor> {
    if xs.is_empty() {
        return Err(Error::InvalidArgument(
            "global_norm of an empty list".into(),
        ));
    }
    let norms = foreach_norm(xs, 2.0)?;
    Tensor::f_stack(&norms, 0)
        .and_then(|stacked| stacked.f_norm())
        .map_err(|e| Error::Torch {
            op: "global_norm",
            message: e.to_string(),
        })
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`, and returns the
/// norm before clipping (`torch.nn.utils.clip_grad_norm_`, including its `1e-6` in the
/// denominator). The scale factor stays on the device: no host synchronisation.
///
/// # Errors
/// As [`global_norm`]; [`Error::InvalidArgument`] when `max_norm` is not positive.
pub fn clip_grad_norm_(grads: &mut [Tensor], max_norm: f64) -> Result<Tensor> {
    if !(max_norm > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "clip_grad_norm_ needs a positive max_norm, got {max_norm}"
        )));
    }
    let total = global_norm(grads)?;
    let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
    foreach_mul_tensor_(grads, &coef)?;
    Ok(total)
}

/// `xs[i] *= scalar` (`torch._foreach_mul_(xs, scalar)`).
///
/// # Errors
/// [`Error::Torch`] when libtorch rejects the dtypes.
pub fn foreach_mul_scalar_(xs: &mut [Tensor], scalar: f64) -> Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let handles = ffi::handles(xs);
    // SAFETY: live handles with their length.
    ffi::torch("foreach_mul_scalar_", unsafe {
        ffi::te_foreach_mul_scalar_(handles.as_ptr(), handles.len(), scalar)
    })
}

/// `xs[i] *= scalar` for a 0-dim (or one-element) tensor `scalar` that may live on the device
/// (`torch._foreach_mul_(xs, tensor)`): scaling by a device-side value without reading it.
///
/// # Errors
/// [`Error::Torch`] when `scalar` has more than one element or devices do not match.
pub fn foreach_mul_tensor_(xs: &mut [Tensor], scalar: &Tensor) -> Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let handles = ffi::handles(xs);
    // SAFETY: live handles with their length.
    ffi::torch("foreach_mul_tensor_", unsafe {
        ffi::te_foreach_mul_tensor_(handles.as_ptr(), handles.len(), ffi::handle(scalar))
    })
}

/// `xs[i] += scalar` (`torch._foreach_add_(xs, scalar)`).
///
/// # Errors
/// [`Error::Torch`] when libtorch rejects the dtypes.
pub fn foreach_add_scalar_(xs: &mut [Tensor], scalar: f64) -> Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let handles = ffi::handles(xs);
    // SAFETY: live handles with their length.
    ffi::torch("foreach_add_scalar_", unsafe {
        ffi::te_foreach_add_scalar_(handles.as_ptr(), handles.len(), scalar)
    })
}

/// `xs[i] += alpha * others[i]` (`torch._foreach_add_(xs, others, alpha=alpha)`).
///
/// # Errors
/// [`Error::InvalidArgument`] when the lists differ in length; [`Error::Torch`] when shapes,
/// dtypes or devices do not match.
pub fn foreach_add_(xs: &mut [Tensor], others: &[Tensor], alpha: f64) -> Result<()> {
    same_len("foreach_add_", xs.len(), others.len())?;
    if xs.is_empty() {
        return Ok(());
    }
    let (hs, os) = (ffi::handles(xs), ffi::handles(others));
    // SAFETY: live handles with their lengths.
    ffi::torch("foreach_add_", unsafe {
        ffi::te_foreach_add_list_(hs.as_ptr(), hs.len(), os.as_ptr(), os.len(), alpha)
    })
}

/// `xs[i] = 0` (`torch._foreach_zero_`), e.g. to clear gradients in one call.
///
/// # Errors
/// [`Error::Torch`] for an undefined tensor in the list.
pub fn foreach_zero_(xs: &mut [Tensor]) -> Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let handles = ffi::handles(xs);
    // SAFETY: live handles with their length.
    ffi::torch("foreach_zero_", unsafe {
        ffi::te_foreach_zero_(handles.as_ptr(), handles.len())
    })
}

/// Hyper-parameters of [`fused_adam_`] and [`fused_adamw_`] (those of `torch.optim.Adam`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// L2 penalty (Adam: added to the gradient) or decoupled decay (AdamW: `p *= 1 - lr·wd`).
    pub weight_decay: f64,
    /// Added to `sqrt(v̂)` in the denominator.
    pub eps: f64,
    /// Keep the running maximum of the second moment (then `max_exp_avg_sqs` is needed).
    pub amsgrad: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
            amsgrad: false,
            maximize: false,
        }
    }
}

/// The tensor lists a fused Adam step reads and updates, one entry per parameter.
///
/// `state_steps` are f32 tensors (one element each, on the parameters' device for CUDA) that
/// hold the step number `t` used for the bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`. The kernels
/// only read them: as `torch.optim.Adam` does, add 1 to them before each step
/// ([`foreach_add_scalar_`]), starting from 0.
#[derive(Debug)]
pub struct AdamTensors<'a> {
    /// The parameters, updated in place.
    pub params: &'a mut [Tensor],
    /// Their gradients (unscaled in place by the kernel when a `grad_scale` is given).
    pub grads: &'a mut [Tensor],
    /// First moments `m`, updated in place (zeros at the start).
    pub exp_avgs: &'a mut [Tensor],
    /// Second moments `v`, updated in place (zeros at the start).
    pub exp_avg_sqs: &'a mut [Tensor],
    /// Running maxima of `v` for amsgrad; empty otherwise.
    pub max_exp_avg_sqs: &'a mut [Tensor],
    /// Step numbers, see above.
    pub state_steps: &'a mut [Tensor],
}

/// One Adam step over all parameters (`torch._fused_adam_`), with L2 weight decay.
///
/// `grad_scale` (a 1-element f32 tensor) divides the gradients first, as for a `GradScaler`.
/// `found_inf` (a 1-element f32 tensor): when it holds 1.0 the kernel returns without touching
/// anything (parameters, moments and steps stay as they were), which is how a step with
/// non-finite gradients is skipped without a host synchronisation; `torch.optim.Adam` then
/// subtracts `found_inf` from the steps it incremented.
///
/// # Errors
/// [`Error::InvalidArgument`] when the lists differ in length or `max_exp_avg_sqs` does not
/// match `amsgrad`; [`Error::Torch`] when libtorch rejects the tensors (dtypes, devices, steps
/// that are not f32).
pub fn fused_adam_(
    tensors: AdamTensors<'_>,
    config: &AdamConfig,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    fused(false, tensors, config, None, grad_scale, found_inf)
}

/// One AdamW step over all parameters (`torch._fused_adamw_`): as [`fused_adam_`], but the
/// weight decay is decoupled (`p ← p·(1 − lr·weight_decay)` before the Adam update).
///
/// # Errors
/// As [`fused_adam_`].
pub fn fused_adamw_(
    tensors: AdamTensors<'_>,
    config: &AdamConfig,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    fused(true, tensors, config, None, grad_scale, found_inf)
}

/// [`fused_adam_`] with the learning rate in a one-element tensor (the `tensor_lr` overload of
/// `torch._fused_adam_`): a schedule computed on the device, or a value a CUDA graph reads at
/// replay. `config.lr` is not used. On CUDA, `lr` is an f32 tensor on the parameters' device
/// (or any dtype on the CPU, which is read once); on the CPU it is read as a double.
///
/// # Errors
/// As [`fused_adam_`].
pub fn fused_adam_tensor_lr_(
    tensors: AdamTensors<'_>,
    config: &AdamConfig,
    lr: &Tensor,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    fused(false, tensors, config, Some(lr), grad_scale, found_inf)
}

/// [`fused_adamw_`] with the learning rate in a tensor, as [`fused_adam_tensor_lr_`].
///
/// # Errors
/// As [`fused_adam_`].
pub fn fused_adamw_tensor_lr_(
    tensors: AdamTensors<'_>,
    config: &AdamConfig,
    lr: &Tensor,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    fused(true, tensors, config, Some(lr), grad_scale, found_inf)
}

fn fused(
    adamw: bool,
    t: AdamTensors<'_>,
    config: &AdamConfig,
    lr_tensor: Option<&Tensor>,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let op = if adamw { "fused_adamw_" } else { "fused_adam_" };
    let n = t.params.len();
    for (name, len) in [
        ("grads", t.grads.len()),
        ("exp_avgs", t.exp_avgs.len()),
        ("exp_avg_sqs", t.exp_avg_sqs.len()),
        ("state_steps", t.state_steps.len()),
    ] {
        if len != n {
            return Err(Error::InvalidArgument(format!(
                "{op}: {n} params but {len} {name}"
            )));
        }
    }
    let n_max = t.max_exp_avg_sqs.len();
    if (config.amsgrad && n_max != n) || (!config.amsgrad && n_max != 0) {
        return Err(Error::InvalidArgument(format!(
            "{op}: max_exp_avg_sqs must have one tensor per param with amsgrad and be empty without, got {n_max} for {n} params (amsgrad = {})",
            config.amsgrad
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let params = ffi::handles(t.params);
    let grads = ffi::handles(t.grads);
    let exp_avgs = ffi::handles(t.exp_avgs);
    let exp_avg_sqs = ffi::handles(t.exp_avg_sqs);
    let max_exp_avg_sqs = ffi::handles(t.max_exp_avg_sqs);
    let steps = ffi::handles(t.state_steps);
    let optional = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), ffi::handle);
    // SAFETY: live handles; every list but max_exp_avg_sqs has `n` entries (checked above).
    ffi::torch(op, unsafe {
        ffi::te_fused_adam_(
            c_int::from(adamw),
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            max_exp_avg_sqs.as_ptr(),
            n_max,
            steps.as_ptr(),
            n,
            config.lr,
            optional(lr_tensor),
            config.beta1,
            config.beta2,
            config.weight_decay,
            config.eps,
            c_int::from(config.amsgrad),
            c_int::from(config.maximize),
            optional(grad_scale),
            optional(found_inf),
        )
    })
}

fn same_len(op: &str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{op}: the lists differ in length ({a} and {b})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Generator;
    use tch::{Device, Kind};

    const CPU_F32: (Kind, Device) = (Kind::Float, Device::Cpu);

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    fn shallow(xs: &[Tensor]) -> Vec<Tensor> {
        xs.iter().map(Tensor::shallow_clone).collect()
    }

    #[test]
    fn lerp_is_an_ema_update() {
        let mut gen = Generator::cpu(0);
        let params: Vec<Tensor> = [vec![3i64, 4], vec![5]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let mut ema: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect();
        let decay = 0.9;
        let expected: Vec<Tensor> = ema
            .iter()
            .zip(&params)
            .map(|(e, p)| e * decay + p * (1.0 - decay))
            .collect();
        foreach_lerp_(&mut ema, &params, 1.0 - decay).unwrap();
        for (e, x) in ema.iter().zip(&expected) {
            assert!(max_abs_diff(e, x) < 1e-7);
        }
        assert!(
            ema[0].abs().sum(Kind::Double).double_value(&[]) > 0.0,
            "ema moved"
        );
        assert!(matches!(
            foreach_lerp_(&mut ema, &params[..1], 0.5),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_tensor_weight_lerps_as_a_scalar_one_and_zero_leaves_the_list() {
        let mut gen = Generator::cpu(2);
        let ends: Vec<Tensor> = [vec![3i64, 4], vec![5]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let start: Vec<Tensor> = ends.iter().map(|e| gen.randn_like(e).unwrap()).collect();
        for weight in [0.25, 0.9] {
            let mut by_scalar: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
            let mut by_tensor: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
            foreach_lerp_(&mut by_scalar, &ends, weight).unwrap();
            foreach_lerp_tensor_(&mut by_tensor, &ends, &Tensor::from(weight as f32)).unwrap();
            for (a, b) in by_scalar.iter().zip(&by_tensor) {
                assert!(max_abs_diff(a, b) < 1e-7, "weight {weight}");
            }
            assert!(max_abs_diff(&by_tensor[0], &start[0]) > 1e-3, "moved");
        }
        let mut untouched: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
        foreach_lerp_tensor_(&mut untouched, &ends, &Tensor::from(0.0f32)).unwrap();
        for (a, b) in untouched.iter().zip(&start) {
            assert!(a.equal(b), "a weight of 0 changed a tensor");
        }
        let two = Tensor::from_slice(&[0.5f32, 0.5]);
        assert!(foreach_lerp_tensor_(&mut untouched, &ends, &two).is_err());
        assert!(matches!(
            foreach_lerp_tensor_(&mut untouched, &ends[..1], &Tensor::from(0.5f32)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn norms_and_the_global_norm() {
        let xs = vec![
            Tensor::from_slice(&[3.0f32, 4.0]),
            Tensor::from_slice(&[12.0f32]).reshape([1, 1]),
        ];
        let norms: Vec<f64> = foreach_norm(&xs, 2.0)
            .unwrap()
            .iter()
            .map(|n| n.double_value(&[]))
            .collect();
        assert_eq!(norms, vec![5.0, 12.0]);
        let total = global_norm(&xs).unwrap();
        assert_eq!(total.dim(), 0);
        assert_eq!(total.double_value(&[]), 13.0);
        let l1: Vec<f64> = foreach_norm(&xs, 1.0)
            .unwrap()
            .iter()
            .map(|n| n.double_value(&[]))
            .collect();
        assert_eq!(l1, vec![7.0, 12.0]);
        assert!(global_norm(&[]).is_err());
    }

    #[test]
    fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
        let mut grads = vec![
            Tensor::from_slice(&[3.0f32, 4.0]),
            Tensor::from_slice(&[12.0f32]),
        ];
        let total = clip_grad_norm_(&mut grads, 1.3).unwrap();
        assert_eq!(total.double_value(&[]), 13.0);
        let after = global_norm(&grads).unwrap().double_value(&[]);
        assert!((after - 1.3).abs() < 1e-5, "{after}");
        assert!((grads[0].double_value(&[0]) - 0.3).abs() < 1e-5);

        let mut small = vec![Tensor::from_slice(&[0.3f32, 0.4])];
        let _ = clip_grad_norm_(&mut small, 1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&small[0]).unwrap(), vec![0.3, 0.4]);
        assert!(clip_grad_norm_(&mut small, 0.0).is_err());
    }

    #[test]
    fn mul_add_zero_update_in_place() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]);
        let b = Tensor::from_slice(&[10.0f32]);
        // Shallow clones share storage: the in-place ops must reach the originals.
        let mut xs = vec![a.shallow_clone(), b.shallow_clone()];
        foreach_mul_scalar_(&mut xs, 3.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![3.0, 6.0]);
        foreach_mul_tensor_(&mut xs, &Tensor::from(0.5f32)).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![1.5, 3.0]);
        foreach_add_scalar_(&mut xs, 1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![16.0]);
        let others = vec![
            Tensor::from_slice(&[1.0f32, 1.0]),
            Tensor::from_slice(&[2.0f32]),
        ];
        foreach_add_(&mut xs, &others, -2.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![0.5, 2.0]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![12.0]);
        foreach_zero_(&mut xs).unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![0.0, 0.0]);
        // Shape mismatches are libtorch errors, not aborts.
        let err = foreach_add_(
            &mut xs,
            &[Tensor::zeros([3], CPU_F32), Tensor::zeros([1], CPU_F32)],
            1.0,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Torch {
                    op: "foreach_add_",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Bias-corrected Adam (or AdamW), written with plain tch ops, as `torch.optim.Adam` documents it.
    struct ReferenceAdam {
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        t: i32,
    }

    impl ReferenceAdam {
        fn new(params: &[Tensor]) -> Self {
            Self {
                m: params.iter().map(Tensor::zeros_like).collect(),
                v: params.iter().map(Tensor::zeros_like).collect(),
                t: 0,
            }
        }

        fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], c: &AdamConfig, adamw: bool) {
            self.t += 1;
            let bc1 = 1.0 - c.beta1.powi(self.t);
            let bc2 = 1.0 - c.beta2.powi(self.t);
            for i in 0..params.len() {
                let mut g = grads[i].shallow_clone();
                if adamw {
                    params[i] = &params[i] * (1.0 - c.lr * c.weight_decay);
                } else {
                    g = &g + &params[i] * c.weight_decay;
                }
                self.m[i] = &self.m[i] * c.beta1 + &g * (1.0 - c.beta1);
                self.v[i] = &self.v[i] * c.beta2 + (&g * &g) * (1.0 - c.beta2);
                let denom = self.v[i].sqrt() / bc2.sqrt() + c.eps;
                params[i] = &params[i] - (&self.m[i] / denom) * (c.lr / bc1);
            }
        }
    }

    struct FusedState {
        params: Vec<Tensor>,
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        steps: Vec<Tensor>,
    }

    impl FusedState {
        fn new(params: &[Tensor]) -> Self {
            Self {
                params: params.iter().map(|p| p.copy()).collect(),
                m: params.iter().map(Tensor::zeros_like).collect(),
                v: params.iter().map(Tensor::zeros_like).collect(),
                steps: params.iter().map(|_| Tensor::from(0.0f32)).collect(),
            }
        }

        fn step(
            &mut self,
            grads: &[Tensor],
            c: &AdamConfig,
            adamw: bool,
            found_inf: Option<&Tensor>,
        ) {
            // As torch.optim.Adam(fused=True): increment the steps, then the fused kernel.
            foreach_add_scalar_(&mut self.steps, 1.0).unwrap();
            let mut grads = shallow(grads);
            let tensors = AdamTensors {
                params: &mut self.params,
                grads: &mut grads,
                exp_avgs: &mut self.m,
                exp_avg_sqs: &mut self.v,
                max_exp_avg_sqs: &mut [],
                state_steps: &mut self.steps,
            };
            if adamw {
                fused_adamw_(tensors, c, None, found_inf).unwrap();
            } else {
                fused_adam_(tensors, c, None, found_inf).unwrap();
            }
        }
    }

    fn check_against_reference(adamw: bool) {
        let mut gen = Generator::cpu(5);
        let params: Vec<Tensor> = [vec![4i64, 3], vec![7], vec![2, 2, 2]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let config = AdamConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..AdamConfig::default()
        };
        let mut fused = FusedState::new(&params);
        let mut reference = ReferenceAdam::new(&params);
        let mut expected: Vec<Tensor> = params.iter().map(|p| p.copy()).collect();
        for _ in 0..3 {
            let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
            fused.step(&grads, &config, adamw, None);
            reference.step(&mut expected, &grads, &config, adamw);
        }
        for i in 0..params.len() {
            assert!(
                max_abs_diff(&fused.params[i], &expected[i]) < 1e-6,
                "param {i}"
            );
            assert!(
                max_abs_diff(&fused.m[i], &reference.m[i]) < 1e-6,
                "exp_avg {i}"
            );
            assert!(
                max_abs_diff(&fused.v[i], &reference.v[i]) < 1e-6,
                "exp_avg_sq {i}"
            );
            assert!(
                max_abs_diff(&fused.params[i], &params[i]) > 1e-3,
                "param {i} moved"
            );
            assert_eq!(
                fused.steps[i].double_value(&[]),
                3.0,
                "the kernel does not count steps itself"
            );
        }
    }

    #[test]
    fn fused_adam_matches_a_hand_written_adam_for_three_steps() {
        check_against_reference(false);
    }

    #[test]
    fn fused_adamw_matches_a_hand_written_adamw_for_three_steps() {
        check_against_reference(true);
    }

    #[test]
    fn a_tensor_learning_rate_gives_the_scalar_ones_results() {
        let mut gen = Generator::cpu(9);
        let params: Vec<Tensor> = [vec![4i64, 3], vec![7]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let config = AdamConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..AdamConfig::default()
        };
        for adamw in [false, true] {
            let mut scalar = FusedState::new(&params);
            let mut tensor = FusedState::new(&params);
            for _ in 0..3 {
                let grads: Vec<Tensor> =
                    params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
                scalar.step(&grads, &config, adamw, None);
                // A double on the CPU: read exactly as the scalar.
                foreach_add_scalar_(&mut tensor.steps, 1.0).unwrap();
                let mut grads = shallow(&grads);
                let tensors = AdamTensors {
                    params: &mut tensor.params,
                    grads: &mut grads,
                    exp_avgs: &mut tensor.m,
                    exp_avg_sqs: &mut tensor.v,
                    max_exp_avg_sqs: &mut [],
                    state_steps: &mut tensor.steps,
                };
                let lr = Tensor::from(0.01f64);
                let ignored = AdamConfig { lr: 5.0, ..config };
                if adamw {
                    fused_adamw_tensor_lr_(tensors, &ignored, &lr, None, None).unwrap();
                } else {
                    fused_adam_tensor_lr_(tensors, &ignored, &lr, None, None).unwrap();
                }
            }
            for (a, b) in scalar.params.iter().zip(&tensor.params) {
                assert!(
                    a.equal(b),
                    "adamw {adamw}: the tensor lr changed the update"
                );
            }
        }
    }

    #[test]
    fn found_inf_skips_the_step_entirely() {
        let mut gen = Generator::cpu(6);
        let params: Vec<Tensor> = [vec![5i64], vec![2, 3]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let config = AdamConfig::default();
        let mut fused = FusedState::new(&params);
        let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
        fused.step(&grads, &config, false, None);
        let before: Vec<Vec<Tensor>> = [&fused.params, &fused.m, &fused.v]
            .iter()
            .map(|l| l.iter().map(|t| t.copy()).collect())
            .collect();

        let found_inf = Tensor::ones([1], CPU_F32);
        fused.step(&grads, &config, false, Some(&found_inf));
        for (list, old) in [&fused.params, &fused.m, &fused.v].iter().zip(&before) {
            for (t, o) in list.iter().zip(old) {
                assert!(t.equal(o), "found_inf = 1 changed a tensor");
            }
        }
        // found_inf = 0 does step.
        let found_inf = Tensor::zeros([1], CPU_F32);
        fused.step(&grads, &config, false, Some(&found_inf));
        assert!(!fused.params[0].equal(&before[0][0]));
    }

    #[test]
    fn grad_scale_divides_the_gradients_first() {
        let mut gen = Generator::cpu(8);
        let params: Vec<Tensor> = [vec![6i64], vec![3, 2]]
            .iter()
            .map(|s| gen.randn(s, CPU_F32).unwrap())
            .collect();
        let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
        let config = AdamConfig::default();
        let mut plain = FusedState::new(&params);
        plain.step(&grads, &config, false, None);

        let mut scaled = FusedState::new(&params);
        foreach_add_scalar_(&mut scaled.steps, 1.0).unwrap();
        let mut scaled_grads: Vec<Tensor> = grads.iter().map(|g| g * 1024.0).collect();
        let grad_scale = Tensor::from_slice(&[1024.0f32]);
        let tensors = AdamTensors {
            params: &mut scaled.params,
            grads: &mut scaled_grads,
            exp_avgs: &mut scaled.m,
            exp_avg_sqs: &mut scaled.v,
            max_exp_avg_sqs: &mut [],
            state_steps: &mut scaled.steps,
        };
        fused_adam_(tensors, &config, Some(&grad_scale), None).unwrap();
        for i in 0..params.len() {
            assert!(max_abs_diff(&scaled.params[i], &plain.params[i]) < 1e-6);
            assert!(max_abs_diff(&scaled.m[i], &plain.m[i]) < 1e-6);
        }
        // The kernel unscales the gradients in place, as AdamTensors documents.
        for (s, g) in scaled_grads.iter().zip(&grads) {
            assert!(max_abs_diff(s, g) < 1e-6);
        }
    }

    #[test]
    fn fused_adam_checks_its_lists() {
        let mut params = vec![Tensor::zeros([2], CPU_F32)];
        let mut grads = vec![];
        let mut m = vec![Tensor::zeros([2], CPU_F32)];
        let mut v = vec![Tensor::zeros([2], CPU_F32)];
        let mut steps = vec![Tensor::from(0.0f32)];
        let tensors = AdamTensors {
            params: &mut params,
            grads: &mut grads,
            exp_avgs: &mut m,
            exp_avg_sqs: &mut v,
            max_exp_avg_sqs: &mut [],
            state_steps: &mut steps,
        };
        let err = fused_adam_(tensors, &AdamConfig::default(), None, None).unwrap_err();
        assert!(err.to_string().contains("1 params but 0 grads"), "{err}");
    }
}
