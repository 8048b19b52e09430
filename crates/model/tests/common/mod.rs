//! Helpers shared by the integration tests: fixture paths and tensor comparisons.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// A file under `tests/fixtures/`, written by `scripts/golden/model_*.py`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
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

/// Checks the gradients of `sum(out * probe)` against the fixture's `grad.<name>` tensors, with a
/// tolerance relative to each gradient's scale.
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
    for (name, grad) in names.iter().zip(&grads) {
        let expected = &io[&format!("grad.{name}")];
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let err = max_abs_diff(grad, expected);
        assert!(
            err <= 1e-4 * scale,
            "{context}: gradient of {name}: max abs error {err:e} (scale {scale:.3})"
        );
    }
}
