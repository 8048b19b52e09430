//! fp16 training's dynamic loss scale: the scaler against `torch.amp.GradScaler` on a scripted
//! sequence of finite and non-finite gradients (the golden of `scripts/golden/grad_scaler.py`),
//! and fp16 runs on the CPU: exact resume with the scale in the checkpoint, and overflowing
//! steps that are skipped and back the scale off without stopping the run.

mod common;
use common::{assert_resume_is_exact, fresh, metrics, resume, tiny_config, toy_dataset};

use std::sync::atomic::AtomicBool;

use model::Precision;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use train::checkpoint;
use train::config::TrainConfig;
use train::scaler::{LossScaler, ScalerSettings};
use train::trainer::NoHooks;

#[derive(Deserialize)]
struct Golden {
    settings: Settings,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Settings {
    init_scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
}

#[derive(Deserialize)]
struct Step {
    #[serde(rename = "true")]
    true_grads: Vec<Vec<f32>>,
    poison: Option<String>,
    scale_before: f64,
    found_inf: bool,
    unscaled: Option<Vec<Vec<f32>>>,
    skipped: bool,
    scale_after: f64,
}

#[test]
fn the_loss_scaler_matches_torch_grad_scaler() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grad_scaler.json"
    ))
    .unwrap();
    let golden: Golden = serde_json::from_str(&text).unwrap();
    let s = &golden.settings;
    let settings = ScalerSettings {
        init_scale: s.init_scale,
        growth_factor: s.growth_factor,
        backoff_factor: s.backoff_factor,
        growth_interval: s.growth_interval,
    };
    let mut scaler = LossScaler::with_settings(settings, Device::Cpu);
    let (mut n_skipped, mut n_backoffs, mut n_growths) = (0, 0, 0);
    for (idx, step) in golden.steps.iter().enumerate() {
        assert_eq!(
            scaler.scale().double_value(&[0]),
            step.scale_before,
            "step {idx}"
        );
        // The gradient of sum(p * true) is `true`; backward on the scaled loss, as training does.
        let params: Vec<Tensor> = step
            .true_grads
            .iter()
            .map(|g| {
                Tensor::zeros([g.len() as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true)
            })
            .collect();
        let loss = params
            .iter()
            .zip(&step.true_grads)
            .map(|(p, g)| (p * Tensor::from_slice(g)).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        scaler.scale_loss(&loss).backward();
        let mut grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        if let Some(poison) = &step.poison {
            let value = if poison == "inf" {
                f64::INFINITY
            } else {
                f64::NAN
            };
            let _ = grads[1].get(0).fill_(value);
        }
        let found_inf = scaler.unscale_(&mut grads).unwrap().double_value(&[0]) != 0.0;
        assert_eq!(found_inf, step.found_inf, "step {idx}: found_inf");
        // The trainer skips exactly the steps with found_inf (fused Adam and the EMA read it).
        assert_eq!(found_inf, step.skipped, "step {idx}: skipped");
        if let Some(unscaled) = &step.unscaled {
            for (g, want) in grads.iter().zip(unscaled) {
                assert_eq!(
                    &Vec::<f32>::try_from(g).unwrap(),
                    want,
                    "step {idx}: unscaled"
                );
            }
        }
        scaler.update();
        assert_eq!(
            scaler.scale().double_value(&[0]),
            step.scale_after,
            "step {idx}"
        );
        n_skipped += usize::from(step.skipped);
        n_backoffs += usize::from(step.scale_after < step.scale_before);
        n_growths += usize::from(step.scale_after > step.scale_before);
    }
    // The sequence exercises all three outcomes.
    assert!(n_skipped >= 2 && n_backoffs >= 2 && n_growths >= 2);
}

fn fp16_config() -> TrainConfig {
    TrainConfig {
        precision: Precision::Fp16,
        ..tiny_config()
    }
}

#[test]
fn fp16_resume_on_the_cpu_replays_the_uninterrupted_run_exactly() {
    let full = assert_resume_is_exact(fp16_config());
    let last = checkpoint::latest(&full.path().join(checkpoint::CHECKPOINTS_DIR)).unwrap();
    let state = checkpoint::read_state(&last).unwrap();
    let scale = state
        .loss_scale
        .expect("an fp16 checkpoint keeps its loss scale");
    assert_eq!((scale.scale, scale.growth_tracker), (65536.0, 12));
    assert!(metrics(full.path()).iter().all(|r| r.loss.is_finite()));
}

/// A scale so large that every f16 gradient overflows: each step is skipped and halves the
/// scale, and the NaN guard does not stop the run (its losses are finite), however many
/// `max_nonfinite_in_a_row` allows.
#[test]
fn overflowing_fp16_steps_are_skipped_and_back_the_scale_off_without_stopping_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: None,
        max_steps: Some(2),
        checkpoint_every: 2,
        max_nonfinite_in_a_row: 2,
        ..fp16_config()
    };
    let mut trainer = fresh(config.clone(), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    drop(trainer);
    // Raise the checkpoint's scale to 2^100.
    let ckpt = checkpoint::latest(&dir.path().join(checkpoint::CHECKPOINTS_DIR)).unwrap();
    let path = ckpt.join(checkpoint::STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["loss_scale"]["scale"] = 2f64.powi(100).into();
    std::fs::write(&path, state.to_string()).unwrap();
    let longer = TrainConfig {
        max_steps: Some(6),
        ..config
    };
    let mut trainer = resume(dir.path(), None, Some(longer), toy_dataset(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    // Lines of skipped steps have no loss (`null`): read them as JSON.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6);
    assert_eq!(
        records[5]["skipped_steps"], 4,
        "every resumed step overflowed"
    );
    let last = checkpoint::latest(&dir.path().join(checkpoint::CHECKPOINTS_DIR)).unwrap();
    let scale = checkpoint::read_state(&last).unwrap().loss_scale.unwrap();
    assert_eq!((scale.scale, scale.growth_tracker), (2f64.powi(96), 0));
}
