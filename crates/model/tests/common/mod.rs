//! Helpers shared by the integration tests: fixture paths and tensor comparisons.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// A file under `tests/fixtures/`, written by `scripts/golden/model_*.py`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The tensors of a safetensors fixture, by name.
pub fn read_tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name)).unwrap().into_iter().collect()
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
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/model-export").join(name),
    }
}
