//! The multistep solvers (DPM-Solver++ orders 1–3 and SDE, UniPC bh1/bh2 orders 1–3) and the
//! σ-space ones (Euler, Heun, Euler ancestral) against diffusers' schedulers: whole guided
//! chains from scripts/golden/solvers.py, step by step.

use std::path::Path;

use model::Prediction;
use sample::{guide, Sampler, SamplerConfig};
use schedule::tensor::ScheduleTensors;
use schedule::{BetaSchedule, Schedule};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

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
    guidance: f64,
    steps: Vec<GoldenStep>,
}

#[derive(Deserialize)]
struct GoldenStep {
    index: usize,
    t: usize,
    x_t: Vec<f64>,
    cond: Vec<f64>,
    uncond: Vec<f64>,
    noise: Option<Vec<f64>>,
    prev_sample: Vec<f64>,
    pred_x0: Vec<f64>,
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(xs.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// Every step of every chain, fed diffusers' previous output rounded to f32, matches diffusers'
/// float64 step on the guided output ε_u + W (ε_c − ε_u): the first-order start, the climb to
/// the order, UniPC's corrector, the lowered orders near the end and the final step to x̂_0.
#[test]
fn every_step_matches_diffusers_multistep_schedulers() {
    tch::set_num_threads(1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/solvers_golden.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let mut covered = std::collections::BTreeSet::new();
    for case in &fixture.cases {
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, case.clip_x0).unwrap();
        assert_eq!(sampler.nfe(), case.steps.len(), "{}: NFE", case.name);
        let mut worst = 0.0f64;
        for step in &case.steps {
            let i = step.index;
            assert_eq!(
                sampler.timesteps()[i],
                step.t,
                "{}: timestep {i}",
                case.name
            );
            assert_eq!(
                sampler.needs_noise(i),
                step.noise.is_some(),
                "{}: {i}",
                case.name
            );
            let guided = guide(&tensor(&step.cond), &tensor(&step.uncond), case.guidance);
            let noise = step.noise.as_deref().map(tensor);
            let out = sampler.step(i, &guided, &tensor(&step.x_t), noise.as_ref());
            for (what, ours, expected) in [
                ("prev_sample", &out.prev_sample, &step.prev_sample),
                ("pred_x0", &out.pred_x0, &step.pred_x0),
            ] {
                for (k, (a, b)) in values(ours).iter().zip(expected).enumerate() {
                    // f32 against float64: relative 1e-5 (about 100 ulps), absolute 2e-5 near 0.
                    let err = (a - b).abs() / (2.0 + b.abs());
                    worst = worst.max(err);
                    assert!(
                        (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                        "{}: step {i} (t = {}) {what}[{k}]: {a} vs diffusers {b}",
                        case.name,
                        step.t
                    );
                }
            }
        }
        eprintln!("{}: worst scaled error {worst:.2e}", case.name);
        covered.insert(match &case.config {
            SamplerConfig::DpmSolverPp { order, sde, .. } => format!("dpm {order} sde={sde}"),
            SamplerConfig::UniPc { order, variant, .. } => format!("unipc {order} {variant:?}"),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(covered.len(), 10, "{covered:?}");
}

#[derive(Deserialize)]
struct SigmaCase {
    name: String,
    config: SamplerConfig,
    prediction: Prediction,
    clip_x0: bool,
    guidance: f64,
    init_noise_sigma: f64,
    steps: Vec<SigmaStep>,
}

#[derive(Deserialize)]
struct SigmaStep {
    index: usize,
    t: f64,
    input_scale: f64,
    x_t: Vec<f64>,
    cond: Vec<f64>,
    uncond: Vec<f64>,
    noise: Option<Vec<f64>>,
    prev_sample: Vec<f64>,
    pred_x0: Vec<f64>,
}

/// Every network evaluation of every σ-space chain (Euler, Heun's two stages, Euler ancestral;
/// linspace, leading, trailing, karras and a listed spacing) matches diffusers' float64 step:
/// the unrounded timestep the network sees, the input scale, the starting noise scale, and the
/// step's output and x̂_0, to the same tolerance as the multistep solvers.
#[test]
fn every_sigma_space_evaluation_matches_diffusers() {
    #[derive(Deserialize)]
    struct SigmaFixture {
        schedule: BetaSchedule,
        shape: [i64; 4],
        cases: Vec<SigmaCase>,
    }
    tch::set_num_threads(1);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sigma_solvers_golden.json");
    let fixture: SigmaFixture =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let n_train = st.schedule().n_steps();
    let mut covered = std::collections::BTreeSet::new();
    for case in &fixture.cases {
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, case.clip_x0).unwrap();
        assert_eq!(sampler.nfe(), case.steps.len(), "{}: NFE", case.name);
        assert_eq!(case.config.nfe(n_train).unwrap(), case.steps.len());
        assert!(!sampler.integer_timesteps());
        let init = sampler.init_noise_sigma();
        assert!(
            (init - case.init_noise_sigma).abs() <= 1e-12 * init,
            "{}",
            case.name
        );
        for step in &case.steps {
            let i = step.index;
            let t = sampler.model_timesteps()[i];
            assert!(
                (t - step.t).abs() < 1e-9,
                "{}: t[{i}] {t} vs {}",
                case.name,
                step.t
            );
            let scale = sampler.input_scale(i);
            assert!(
                (scale - step.input_scale).abs() <= 1e-6 * scale,
                "{}",
                case.name
            );
            assert_eq!(
                sampler.needs_noise(i),
                step.noise.is_some(),
                "{}: {i}",
                case.name
            );
            let guided = guide(&tensor(&step.cond), &tensor(&step.uncond), case.guidance);
            let noise = step.noise.as_deref().map(tensor);
            let out = sampler.step(i, &guided, &tensor(&step.x_t), noise.as_ref());
            for (what, ours, expected) in [
                ("prev_sample", &out.prev_sample, &step.prev_sample),
                ("pred_x0", &out.pred_x0, &step.pred_x0),
            ] {
                for (k, (a, b)) in values(ours).iter().zip(expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                        "{}: evaluation {i} (t = {}) {what}[{k}]: {a} vs diffusers {b}",
                        case.name,
                        step.t
                    );
                }
            }
        }
        covered.insert(
            format!("{:?}", case.config)
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(covered.len(), 3, "{covered:?}");
}

/// PLMS (`pndm`) against diffusers' `PNDMScheduler` with `skip_prk_steps=True`: every one of
/// the n + 1 evaluations (the second step's timestep twice), leading and trailing, ε and v.
#[test]
fn every_plms_evaluation_matches_diffusers_pndm() {
    #[derive(Deserialize)]
    struct PndmStep {
        index: usize,
        t: usize,
        x_t: Vec<f64>,
        cond: Vec<f64>,
        uncond: Vec<f64>,
        prev_sample: Vec<f64>,
    }
    #[derive(Deserialize)]
    struct PndmCase {
        name: String,
        config: SamplerConfig,
        prediction: Prediction,
        guidance: f64,
        steps: Vec<PndmStep>,
    }
    #[derive(Deserialize)]
    struct PndmFixture {
        schedule: BetaSchedule,
        shape: [i64; 4],
        cases: Vec<PndmCase>,
    }
    tch::set_num_threads(1);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pndm_golden.json");
    let fixture: PndmFixture =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    for case in &fixture.cases {
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, false).unwrap();
        assert_eq!(sampler.nfe(), case.steps.len(), "{}: NFE", case.name);
        assert_eq!(case.config.nfe(1000).unwrap(), case.steps.len());
        for step in &case.steps {
            let i = step.index;
            assert_eq!(sampler.timesteps()[i], step.t, "{}: {i}", case.name);
            assert!(!sampler.needs_noise(i));
            let guided = guide(&tensor(&step.cond), &tensor(&step.uncond), case.guidance);
            let out = sampler.step(i, &guided, &tensor(&step.x_t), None);
            for (k, (a, b)) in values(&out.prev_sample)
                .iter()
                .zip(&step.prev_sample)
                .enumerate()
            {
                assert!(
                    (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                    "{}: evaluation {i} (t = {}) prev_sample[{k}]: {a} vs diffusers {b}",
                    case.name,
                    step.t
                );
            }
        }
    }
}

/// A diffusers folder's scheduler class is read with the rest of its scheduler config (the
/// front end's default sampler); a copy naming UniPC reads as UniPC.
#[test]
fn a_diffusers_folder_names_its_scheduler_class() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers");
    let spec =
        sample::PipelineSpec::resolve(&fixtures.join("modern"), sample::Weights::Ema).unwrap();
    assert_eq!(spec.scheduler_class.as_deref(), Some("DDPMScheduler"));
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixtures.join("modern").join(file), dir.path().join(file)).unwrap();
    }
    let mut scheduler: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("modern/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    scheduler["_class_name"] = "UniPCMultistepScheduler".into();
    std::fs::write(
        dir.path().join("scheduler_config.json"),
        scheduler.to_string(),
    )
    .unwrap();
    let spec = sample::PipelineSpec::resolve(dir.path(), sample::Weights::Ema).unwrap();
    assert_eq!(
        spec.scheduler_class.as_deref(),
        Some("UniPCMultistepScheduler")
    );
}
