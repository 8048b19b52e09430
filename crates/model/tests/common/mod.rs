//! Helpers shared by the integration tests: fixture paths and tensor comparisons.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// A file under `tests/fixtures/`, written by `scripts/golden/model_*.py`; under
/// `$DDPM_MODEL_FIXTURES` instead when that is set (test binaries run away from the source tree,
/// as in `cargo xtask gpu-bundle`).
pub fn fixture(name: &str) -> PathBuf {
    std::env::var_os("DDPM_MODEL_FIXTURES")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
            PathBuf::from,
        )
        .join(name)
}

/// The tensors of a safetensors fixture, by name.
pub fn read_tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name))
        .unwrap()
        .into_iter()
        .collect()
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Where the `export` tests put models for the golden scripts' `--verify`.
pub fn export_dir(name: &str) -> PathBuf {
    match std::env::var_os("DDPM_EXPORT_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/model-export")
            .join(name),
    }
}

/// Relative tolerance of a gradient against the fixture's: `max|ours − ref| ≤ GRAD_RTOL ·
/// max|ref| + GRAD_ATOL`, per tensor.
///
/// Both sides are f32 (the fixtures are PyTorch's f32 gradients on the CPU), so they differ by
/// the rounding of long sums in different orders. Measured on these fixtures, the worst
/// per-tensor error is 3.1e-6 of the tensor's largest entry
/// (`up_blocks.1.attentions.2.group_norm.bias`, channels-last); 2e-5 leaves a factor of 6 for
/// other CPUs' kernels and thread counts, and still catches a gradient that is 0.01 % off.
///
/// The bound is per tensor rather than per element (`allclose`): entries far below the tensor's
/// largest come out of cancellation in those sums, and carry f32 noise of up to 1 % of their own
/// size (measured: 9.7e-3 on `down_blocks.1.resnets.0.conv_shortcut.weight`), which says nothing
/// about the backward pass.
pub const GRAD_RTOL: f64 = 2e-5;

/// The absolute floor of [`GRAD_RTOL`]'s bound, for a reference gradient that is (nearly) zero.
pub const GRAD_ATOL: f64 = 1e-7;

/// Checks the gradients of `sum(out * probe)` against the fixture's `grad.<name>` tensors with
/// the relative bound of [`GRAD_RTOL`], and prints the worst relative error.
pub fn assert_gradients_match(
    vars: &HashMap<String, Tensor>,
    out: &Tensor,
    io: &HashMap<String, Tensor>,
    context: &str,
) {
    let names: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    assert!(names.len() >= 10, "the fixture records gradients");
    let params: Vec<&Tensor> = names.iter().map(|name| &vars[*name]).collect();
    let loss = (out * &io["probe"]).sum(tch::Kind::Float);
    let grads = Tensor::run_backward(&[&loss], &params, false, false);
    assert_eq!(grads.len(), names.len(), "one gradient per parameter");
    let mut worst = (0.0f64, "");
    for (name, grad) in names.iter().zip(&grads) {
        let expected = &io[&format!("grad.{name}")];
        let scale = expected.abs().max().double_value(&[]);
        let err = max_abs_diff(grad, expected);
        let bound = GRAD_RTOL * scale + GRAD_ATOL;
        assert!(
            err <= bound,
            "{context}: gradient of {name}: max abs error {err:e} > {bound:e} \
             (relative {:e} of max |grad| {scale:e})",
            err / scale
        );
        let relative = if scale > 0.0 { err / scale } else { err };
        if relative >= worst.0 {
            worst = (relative, name);
        }
    }
    eprintln!(
        "{context}: {} gradients, worst relative error {:e} ({})",
        names.len(),
        worst.0,
        worst.1
    );
}
