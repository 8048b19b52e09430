//! The variational bound in bits per dimension against `scripts/golden/nll_bpd.py` (numpy
//! float64 re-typing the official `calc_bpd_loop` formulas): every per-t term, the prior and the
//! total of each image to 1e-6 relative, for fixed-small, fixed-large (with and without clipping
//! x̂_0) and learned-range variances, on fixed images (with pixels 0 and 255) and fixed noise;
//! and the discretized decoder alone at its edge bins.

use e2e::floats;
use model::{Denoiser, Prediction};
use sample::likelihood::{vb_term_bits, BoundOptions, ModelVariance};
use schedule::likelihood::{discretized_gaussian_log_likelihood, prior_bits, BoundTables};
use schedule::{Schedule, VarianceType};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// The script's stand-in network: ε = x_t · (0.875 − t/(2T)), and for learned range a second
/// half of channels v = clamp(0.5 x_t, −1, 1), in f32.
#[derive(Debug)]
struct StandIn {
    n_steps: f64,
    learned: bool,
}

impl Denoiser for StandIn {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, _train: bool) -> Tensor {
        let a =
            (timesteps.to_kind(Kind::Float) * (-0.5 / self.n_steps) + 0.875).reshape([-1, 1, 1, 1]);
        let eps = xs * a;
        if self.learned {
            let v = (xs * 0.5).clamp(-1.0, 1.0);
            Tensor::cat(&[eps, v], 1)
        } else {
            eps
        }
    }
}

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nll_golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(xs.reshape([-1])).unwrap()
}

fn assert_rel(ours: &[f64], expected: &[f64], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        let rel = (a - b).abs() / b.abs().max(1e-300);
        assert!(rel <= 1e-6, "{what}[{i}]: {a} vs {b} (relative {rel:e})");
    }
}

#[test]
fn every_term_and_the_total_match_the_reference() {
    let golden = fixture();
    let schedule = Schedule::from_betas(floats(&golden["schedule_betas"])).unwrap();
    let tables = BoundTables::new(&schedule, Device::Cpu);
    let n_steps = schedule.n_steps();
    let shape: Vec<i64> = golden["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let x_0 =
        Tensor::from_slice(&floats(&golden["pixels"])).reshape(shape.as_slice()) / 127.5 - 1.0;
    let mut noise_shape = vec![n_steps as i64];
    noise_shape.extend(&shape);
    let noise = Tensor::from_slice(&floats(&golden["noise"])).reshape(noise_shape);
    for case in golden["cases"].as_array().unwrap() {
        let name = case["variance"].as_str().unwrap();
        let variance = match name {
            "fixed_small" => ModelVariance::Fixed(VarianceType::FixedSmall),
            "fixed_large" => ModelVariance::Fixed(VarianceType::FixedLarge),
            _ => ModelVariance::LearnedRange,
        };
        let clip = case["clip"].as_bool().unwrap();
        let net = StandIn {
            n_steps: n_steps as f64,
            learned: variance == ModelVariance::LearnedRange,
        };
        let options = BoundOptions {
            prediction: Prediction::Eps,
            variance,
            clip_x0: clip,
            autocast: None,
        };
        let prior = prior_bits(&schedule, &x_0);
        assert_rel(
            &values(&prior),
            &floats(&case["prior"]),
            &format!("{name} prior"),
        );
        let mut total = prior;
        for (t, expected) in case["terms"].as_array().unwrap().iter().enumerate() {
            let bits = vb_term_bits(&net, &tables, &x_0, t, &noise.get(t as i64), &options);
            assert_eq!(bits.kind(), Kind::Double);
            let what = format!("{name} clip={clip} t={t}");
            assert_rel(&values(&bits), &floats(expected), &what);
            total += bits;
        }
        assert_rel(
            &values(&total),
            &floats(&case["total"]),
            &format!("{name} total"),
        );
    }
}

#[test]
fn the_decoder_matches_at_its_edge_bins() {
    let golden = fixture();
    let decoder = &golden["decoder"];
    let tensor = |key: &str| Tensor::from_slice(&floats(&decoder[key])).to_device(Device::Cpu);
    let ours =
        discretized_gaussian_log_likelihood(&tensor("x"), &tensor("means"), &tensor("log_scales"));
    assert_rel(
        &values(&ours),
        &floats(&decoder["log_likelihood"]),
        "decoder log-likelihood",
    );
}
