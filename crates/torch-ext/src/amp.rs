//! The fused kernels of `torch.amp.GradScaler` (fp16 training with a dynamic loss scale):
//! libtorch's `_amp_foreach_non_finite_check_and_unscale_`, which tch 0.24 does not bind (it
//! takes a list of tensors to modify in place), and `_amp_update_scale_`, which tch binds as
//! `Tensor::internal_amp_update_scale_`. Both run on the device without a host read: the scale,
//! the growth tracker and `found_inf` are tensors.

use crate::{ffi, Result};
use tch::Tensor;

/// `grads[i] *= inv_scale` for every gradient, and `found_inf = 1` when any of their values is
/// NaN or infinite (`found_inf` is left as it was otherwise), in one pass per dtype and device
/// (what `GradScaler.unscale_` calls).
///
/// # Shapes
/// `found_inf` and `inv_scale`: one-element f32 tensors on the gradients' device.
///
/// # Errors
/// [`crate::Error::Torch`] when the gradients are not on `found_inf`'s device, or `found_inf`
/// or `inv_scale` is not a one-element f32 tensor.
pub fn non_finite_check_and_unscale_(
    grads: &mut [Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) -> Result<()> {
    if grads.is_empty() {
        return Ok(());
    }
    let handles = ffi::handles(grads);
    // SAFETY: live handles with their length; the shim writes into the tensors they point at.
    ffi::torch("_amp_foreach_non_finite_check_and_unscale_", unsafe {
        ffi::te_amp_foreach_non_finite_check_and_unscale_(
            handles.as_ptr(),
            handles.len(),
            ffi::handle(found_inf),
            ffi::handle(inv_scale),
        )
    })
}

/// `GradScaler.update`'s kernel: when `found_inf` is set, `scale *= backoff_factor` and the
/// growth tracker restarts at 0; otherwise the tracker counts one more finite step and, on
/// reaching `growth_interval`, `scale *= growth_factor` and it restarts. In place, on the device.
///
/// # Shapes
/// `scale`: one-element f32; `growth_tracker`: one-element i32; `found_inf`: one-element f32.
///
/// # Errors
/// [`crate::Error::Torch`] when libtorch rejects the dtypes or devices.
pub fn update_scale_(
    scale: &mut Tensor,
    growth_tracker: &Tensor,
    found_inf: &Tensor,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
) -> Result<()> {
    scale
        .f_internal_amp_update_scale_(
            growth_tracker,
            found_inf,
            growth_factor,
            backoff_factor,
            growth_interval,
        )
        .map(|_| ())
        .map_err(|e| crate::Error::Torch {
            op: "_amp_update_scale_",
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn unscales_in_place_and_flags_non_finite_values() {
        let opts = (Kind::Float, Device::Cpu);
        let mut grads = vec![
            Tensor::from_slice(&[2.0f32, 4.0]),
            Tensor::from_slice(&[8.0f32]),
        ];
        let mut found_inf = Tensor::zeros([1], opts);
        let inv_scale = Tensor::full([1], 0.25, opts);
        non_finite_check_and_unscale_(&mut grads, &found_inf, &inv_scale).unwrap();
        assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), [0.5, 1.0]);
        assert_eq!(Vec::<f32>::try_from(&grads[1]).unwrap(), [2.0]);
        assert_eq!(found_inf.double_value(&[0]), 0.0);
        let mut bad = vec![Tensor::from_slice(&[1.0f32, f32::INFINITY])];
        non_finite_check_and_unscale_(&mut bad, &found_inf, &inv_scale).unwrap();
        assert_eq!(found_inf.double_value(&[0]), 1.0);

        let mut scale = Tensor::full([1], 8.0, opts);
        let tracker = Tensor::zeros([1], (Kind::Int, Device::Cpu));
        update_scale_(&mut scale, &tracker, &found_inf, 2.0, 0.5, 2).unwrap();
        assert_eq!(scale.double_value(&[0]), 4.0, "backoff on found_inf");
        let _ = found_inf.zero_();
        for expected in [4.0, 8.0] {
            update_scale_(&mut scale, &tracker, &found_inf, 2.0, 0.5, 2).unwrap();
            assert_eq!(scale.double_value(&[0]), expected);
        }
    }
}
