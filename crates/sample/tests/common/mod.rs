//! What the sampling tests that read golden JSON fixtures share.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

/// A JSON array of numbers, from a golden fixture.
pub fn floats(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
