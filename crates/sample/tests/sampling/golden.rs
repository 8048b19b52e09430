//! Golden steps from scripts/golden/sampler.py.

use super::*;

#[derive(Deserialize)]
struct Fixture {
    schedule: BetaSchedule,
    shape: [i64; 4],
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: SamplerConfig,
    prediction: Prediction,
    clip_x0: bool,
    steps: Vec<GoldenStep>,
}

#[derive(Deserialize)]
struct GoldenStep {
    index: usize,
    t: usize,
    x_t: Vec<f64>,
    model_output: Vec<f64>,
    noise: Option<Vec<f64>>,
    prev_sample: Vec<f64>,
    pred_x0: Vec<f64>,
}

/// Every sampler step, including DPM-Solver++(2M)'s first-order first step, second-order middle
/// steps and final step to x̂_0, matches diffusers' schedulers run in float64 on the same inputs
/// (which the script checks against numpy closed forms to 1e-9).
#[test]
fn one_step_matches_diffusers_for_every_sampler() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler_golden.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let mut kinds = std::collections::BTreeSet::new();
    for case in &fixture.cases {
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, case.clip_x0).unwrap();
        for step in &case.steps {
            assert_eq!(
                sampler.timesteps()[step.index],
                step.t,
                "{}: timestep of step {}",
                case.name,
                step.index
            );
            assert_eq!(
                sampler.needs_noise(step.index),
                step.noise.is_some(),
                "{}: t = {}",
                case.name,
                step.t
            );
            let noise = step.noise.as_deref().map(tensor);
            let out = sampler.step(
                step.index,
                &tensor(&step.model_output),
                &tensor(&step.x_t),
                noise.as_ref(),
            );
            // f32 arithmetic on values up to 1/√ᾱ_999 ≈ 157 times the inputs: a relative
            // tolerance of 1e-5 is 100 f32 ulps, an absolute one of 2e-5 covers values near 0.
            for (what, ours, expected) in [
                ("prev_sample", &out.prev_sample, &step.prev_sample),
                ("pred_x0", &out.pred_x0, &step.pred_x0),
            ] {
                let ours = values(ours);
                assert_eq!(ours.len(), expected.len(), "{}: {what} size", case.name);
                for (k, (a, b)) in ours.iter().zip(expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                        "{}: step {} (t = {}) {what}[{k}]: {a} vs diffusers {b}",
                        case.name,
                        step.index,
                        step.t
                    );
                }
            }
        }
        kinds.insert(format!("{:?}", std::mem::discriminant(&case.config)));
    }
    assert_eq!(
        kinds.len(),
        3,
        "the fixture covers DDPM, DDIM and DPM-Solver++"
    );
}
