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
mod tests;
