//! Importance sampling of t for L_vlb-only training (`objective.timestep_sampling =
//! "importance"`, Improved DDPM Eq. 17): the probabilities, the history's update and the draws
//! against `scripts/golden/importance_sampling.py` (numpy re-typing improved-diffusion's
//! `LossSecondMomentResampler`); the config's refusals; and a run that samples t by importance
//! resuming bit for bit, its loss history carried in the checkpoint.

mod common;

use std::sync::atomic::AtomicBool;

use common::{assert_resume_is_exact, fresh, simple_unet, tiny_config, toy_dataset};
use e2e::floats;
use model::{ModelConfig, VarianceOutput};
use schedule::BetaSchedule;
use serde_json::Value;
use tch::Device;
use train::objective::{LossKind, TimestepSampling};
use train::timesteps::{ImportanceSampler, HISTORY_PER_T};
use train::trainer::NoHooks;
use train::TrainConfig;

fn ints(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn history(value: &Value) -> Vec<Vec<f64>> {
    value.as_array().unwrap().iter().map(floats).collect()
}

fn assert_rel(ours: &[f64], expected: &[f64], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        let rel = (a - b).abs() / b.abs();
        assert!(rel <= 1e-12, "{what}[{i}]: {a} vs {b} (relative {rel:e})");
    }
}

#[test]
fn probabilities_history_and_draws_match_the_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/importance_sampling_golden.json"
    );
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let n_steps = golden["T"].as_u64().unwrap() as usize;
    assert_eq!(
        golden["history_per_t"].as_u64().unwrap() as usize,
        HISTORY_PER_T
    );
    let cases = golden["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let mut sampler =
            ImportanceSampler::from_history(history(&case["history"]), n_steps).unwrap();
        sampler.update(&ints(&case["update_t"]), &floats(&case["update_losses"]));
        assert_eq!(
            sampler.history(),
            history(&case["history_after"]).as_slice(),
            "case {i}: history"
        );
        // The first case is still warming up (t = 3 has 9 losses): uniform.
        assert_eq!(sampler.warmed_up(), i > 0, "case {i}");
        let what = format!("case {i}: p");
        assert_rel(
            &sampler.probabilities(),
            &floats(&case["probabilities"]),
            &what,
        );
        let (t, weights) = sampler.draw(&floats(&case["uniforms"]));
        assert_eq!(t, ints(&case["t"]), "case {i}: t");
        let what = format!("case {i}: 1/(T p_t)");
        assert_rel(&weights, &floats(&case["weights"]), &what);
    }
}

/// [`tiny_config`] trained on L_vlb alone with learned variances, t by importance, at T = 4 so
/// that the 10 losses per t of the warm-up come within the first 3 steps of 16 images.
fn importance_config() -> TrainConfig {
    let mut config = tiny_config();
    config.schedule = BetaSchedule::Linear {
        n_steps: 4,
        start: 0.05,
        end: 0.5,
    };
    let ModelConfig::Simple(mut model) = simple_unet() else {
        unreachable!("simple_unet is a SimpleUnet")
    };
    model.out_channels = 2;
    config.model = ModelConfig::Simple(model);
    config.objective.variance = VarianceOutput::LearnedRange;
    config.objective.loss = LossKind::Vlb;
    config.objective.timestep_sampling = TimestepSampling::Importance;
    config
}

#[test]
fn importance_sampling_resumes_exactly_and_leaves_uniform() {
    let full = assert_resume_is_exact(importance_config());
    // The history went into every checkpoint; by the end every t has its 10 losses, so the
    // draws were no longer uniform.
    let latest = train::checkpoint::latest(&full.path().join("checkpoints")).unwrap();
    let state = train::checkpoint::read_state(&latest).unwrap();
    let saved = state.timestep_history.expect("a timestep history");
    let sampler = ImportanceSampler::from_history(saved, 4).unwrap();
    assert!(sampler.warmed_up());
    let p = sampler.probabilities();
    assert!(p.iter().any(|&p| (p - 0.25).abs() > 1e-3), "{p:?}");
    // A uniform run's checkpoints carry none.
    let mut uniform = importance_config();
    uniform.objective.timestep_sampling = TimestepSampling::Uniform;
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(uniform, toy_dataset(), dir.path(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let latest = train::checkpoint::latest(&dir.path().join("checkpoints")).unwrap();
    let text = std::fs::read_to_string(latest.join(train::checkpoint::STATE_FILE)).unwrap();
    assert!(!text.contains("timestep_history"), "{text}");
}

#[test]
fn importance_sampling_is_refused_unless_the_loss_is_vlb_only() {
    let mut config = importance_config();
    config.objective.loss = LossKind::L2;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("objective.timestep_sampling"), "{err}");
    assert!(err.contains("objective.loss = \"vlb\""), "{err}");
    // The vlb-only loss trains a learned variance.
    let mut config = importance_config();
    config.objective.variance = VarianceOutput::Fixed;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("objective.variance"), "{err}");
    assert!(importance_config().validate().is_ok());
}
