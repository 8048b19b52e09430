//! DDPM over a respaced chain (`SamplerConfig::Ddpm { steps: Some(10), .. }`) against
//! `scripts/golden/respaced_ddpm.py` (float64 numpy re-typing Improved DDPM's respacing): every
//! step of the chain over 10 of T = 50 steps, leading and trailing, with the fixed small, fixed
//! large and learned-range variances, clipped and not, to 1e-5 of the sample's scale (the
//! sampler runs in f32). And DDIM with η > 0 on a learned-range output: v_Σ = −1 is DDIM's own
//! step, v_Σ = 1 another.

use e2e::floats;
use model::Prediction;
use sample::{Sampler, SamplerConfig};
use schedule::tensor::ScheduleTensors;
use schedule::{Schedule, TimestepSpacing, VarianceType};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/respaced_ddpm_golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_step_of_the_respaced_chain_matches_the_reference() {
    let g = golden();
    let schedule = Schedule::from_betas(floats(&g["betas"])).unwrap();
    let sched = ScheduleTensors::new(&schedule, Device::Cpu);
    let shape: Vec<i64> = g["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let tensor = |value: &Value| {
        let values: Vec<f32> = floats(value).iter().map(|&x| x as f32).collect();
        Tensor::from_slice(&values).reshape(shape.as_slice())
    };
    let steps = g["steps"].as_u64().unwrap() as usize;
    let mut checked = 0;
    for (spacing_name, spacing) in [
        ("leading", TimestepSpacing::Leading),
        ("trailing", TimestepSpacing::Trailing),
    ] {
        for (variance_name, variance) in [
            ("fixed_small", Some(VarianceType::FixedSmall)),
            ("fixed_large", Some(VarianceType::FixedLarge)),
            ("learned_range", None),
        ] {
            for clip in [false, true] {
                let config = SamplerConfig::Ddpm {
                    variance: variance.unwrap_or(VarianceType::FixedSmall),
                    steps: Some(steps),
                    spacing,
                };
                let mut sampler = Sampler::new(&sched, &config, Prediction::Eps, clip).unwrap();
                let expected_t: Vec<usize> = g["timesteps"][spacing_name]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(sampler.timesteps(), expected_t.as_slice(), "{spacing_name}");
                let key = format!("{variance_name}_{}", if clip { "clip" } else { "noclip" });
                for case in g["cases"].as_array().unwrap() {
                    if case["spacing"] != spacing_name {
                        continue;
                    }
                    let i = case["i"].as_u64().unwrap() as usize;
                    let x_t = tensor(&case["x_t"]);
                    let eps = tensor(&case["eps"]);
                    // A learned-range network's output: the prediction, then v_Σ.
                    let output = match variance {
                        Some(_) => eps,
                        None => Tensor::cat(&[eps, tensor(&case["v"])], 1),
                    };
                    let noise = tensor(&case["noise"]);
                    let needs = sampler.needs_noise(i);
                    assert_eq!(needs, i + 1 < steps);
                    let prev = sampler
                        .step(i, &output, &x_t, needs.then_some(&noise))
                        .prev_sample;
                    let expected = tensor(&case["prev"][&key]).to_kind(Kind::Float);
                    let scale = expected.abs().max().double_value(&[]).max(1.0);
                    let diff = max_abs_diff(&prev, &expected);
                    assert!(
                        diff <= 1e-5 * scale,
                        "{spacing_name} {key} step {i}: {diff:e} (scale {scale})"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 2 * steps);
}

#[test]
fn ddim_with_eta_reads_the_learned_variance() {
    let schedule =
        Schedule::from_betas((0..50).map(|i| 1e-4 + 0.004 * i as f64).collect()).unwrap();
    let sched = ScheduleTensors::new(&schedule, Device::Cpu);
    let config = SamplerConfig::Ddim {
        steps: 10,
        eta: 0.7,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let cpu = (Kind::Float, Device::Cpu);
    let (x_t, eps, noise) = (
        Tensor::randn([2, 3, 4, 4], cpu),
        Tensor::randn([2, 3, 4, 4], cpu),
        Tensor::randn([2, 3, 4, 4], cpu),
    );
    let step = |output: &Tensor, i: usize| {
        let mut sampler = Sampler::new(&sched, &config, Prediction::Eps, true).unwrap();
        sampler.step(i, output, &x_t, Some(&noise)).prev_sample
    };
    let with_v = |v: f64| Tensor::cat(&[eps.shallow_clone(), eps.full_like(v)], 1);
    for i in [0, 4, 8] {
        // σ² = η² Σ_θ, and Σ_θ = β̃' at v_Σ = −1: DDIM's own σ_t(η)².
        let fixed = step(&eps, i);
        let low = step(&with_v(-1.0), i);
        assert!(max_abs_diff(&fixed, &low) < 1e-5, "step {i}");
        let high = step(&with_v(1.0), i);
        assert!(max_abs_diff(&fixed, &high) > 1e-3, "step {i}");
    }
}
