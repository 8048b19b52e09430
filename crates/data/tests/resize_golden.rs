//! `data::resize` against golden `tf.image.resize` values (bilinear, half-pixel centres, no
//! antialiasing) written by `scripts/golden/resize.py`.

use data::resize::resize_bilinear;
use data::{Transform, TransformConfig};

const FIXTURE: &str = include_str!("fixtures/resize_bilinear.json");

struct Case {
    name: String,
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    input: Vec<u8>,
    expected: Vec<f32>,
}

fn cases() -> (f32, Vec<Case>) {
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(fixture["layout"], "chw");
    let tolerance = fixture["tolerance"].as_f64().unwrap() as f32;
    let usize_of = |case: &serde_json::Value, key: &str| case[key].as_u64().unwrap() as usize;
    let cases = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_string(),
            channels: usize_of(case, "channels"),
            in_size: [usize_of(case, "in_height"), usize_of(case, "in_width")],
            out_size: [usize_of(case, "out_height"), usize_of(case, "out_width")],
            input: case["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect(),
            expected: case["expected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect();
    (tolerance, cases)
}

#[test]
fn resize_matches_tf_image_resize_golden_values() {
    let (tolerance, cases) = cases();
    assert_eq!(tolerance, 1e-4);
    assert!(cases.iter().any(|c| c.name == "cifar_32_to_28_rgb"));
    assert!(
        cases.iter().any(|c| c.out_size[0] > c.in_size[0]),
        "no upsampling case"
    );
    for case in &cases {
        let out = resize_bilinear(&case.input, case.channels, case.in_size, case.out_size).unwrap();
        assert_eq!(out.len(), case.expected.len(), "{}", case.name);
        for (idx, (&got, &want)) in out.iter().zip(&case.expected).enumerate() {
            assert!(
                (got - want).abs() <= tolerance,
                "{}: value {idx} is {got}, expected {want}",
                case.name
            );
        }
    }
}

#[test]
fn notebook_transform_is_the_golden_resize_scaled_to_unit_range() {
    let (tolerance, cases) = cases();
    let case = cases
        .iter()
        .find(|c| c.name == "cifar_32_to_28_rgb")
        .unwrap();
    let transform = Transform::new(&TransformConfig::seed_cifar10(), 3, [32, 32]).unwrap();
    let out = transform.apply(&case.input, false);
    assert_eq!(out.len(), case.expected.len());
    for (&got, &want) in out.iter().zip(&case.expected) {
        // tf: tf.image.resize(...) / 127.5 - 1.0
        assert!(
            (got - (want / 127.5 - 1.0)).abs() <= tolerance / 127.5 + f32::EPSILON,
            "{got} vs {want}"
        );
    }
}
