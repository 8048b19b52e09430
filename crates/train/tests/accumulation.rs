//! Gradient accumulation (`grad_accum`, `--grad-accum K`): K micro-batches per optimizer step
//! take the step that one pass over the whole batch takes, resume stays exact, and a batch that
//! does not split is refused. Activation checkpointing (`model.gradient_checkpointing`) changes
//! none of it: with accumulation and with fp16, the checkpointed run takes the plain run's steps.
//! (Two ranks with accumulation: `tests/distributed.rs`.)

mod common;
use common::{
    assert_resume_is_exact, clipped_config, fresh, last_checkpoint, metrics,
    relative_difference_named, tiny_config, tiny_unet, toy_dataset_of,
};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use model::Precision;
use tch::Device;
use train::checkpoint;
use train::config::TrainConfig;
use train::trainer::NoHooks;
use train::TrainError;

/// The paper's U-Net made tiny, without dropout, 3 steps of 16 images with a clip that binds
/// (clipping must see the norm of the accumulated gradient).
fn unet_config(grad_accum: usize) -> TrainConfig {
    TrainConfig {
        grad_accum,
        ..clipped_config(tiny_unet(0.0))
    }
}

fn train(config: TrainConfig, dir: &Path) {
    let mut trainer = fresh(config, toy_dataset_of(64, 2), dir, Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
}

/// Losses and gradient norms of the first `steps` of the runs in `a` and `b` (3 metrics lines
/// each) agree to 1e-6, and the clip binds.
fn assert_same_metrics(a: &Path, b: &Path, steps: usize) {
    let (one, many) = (metrics(a), metrics(b));
    assert_eq!((one.len(), many.len()), (3, 3));
    for (x, y) in one.iter().zip(&many).take(steps) {
        let rel = (x.loss - y.loss).abs() / x.loss.abs();
        assert!(
            rel <= 1e-6,
            "step {}: loss {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
        let rel = (x.grad_norm - y.grad_norm).abs() / x.grad_norm;
        assert!(
            rel <= 1e-6,
            "step {}: grad norm {} vs {}",
            x.step,
            x.grad_norm,
            y.grad_norm
        );
        assert!(x.grad_norm > 0.05, "the clip must bind: {}", x.grad_norm);
    }
}

/// Runs `whole` (one pass per step) and `accumulated` and checks that their losses, gradient
/// norms and final weights, EMA and Adam moments agree to 1e-6.
fn assert_same_steps(whole: TrainConfig, accumulated: TrainConfig) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(whole, a.path());
    train(accumulated, b.path());
    assert_same_metrics(a.path(), b.path(), 3);
    for file in [
        checkpoint::MODEL_FILE,
        checkpoint::EMA_FILE,
        checkpoint::OPTIMIZER_FILE,
    ] {
        let (worst, overall, max_abs, name) = relative_difference_named(
            &last_checkpoint(a.path(), file),
            &last_checkpoint(b.path(), file),
        );
        eprintln!(
            "accumulation ({file}): ‖Δ‖/‖w‖ {overall:.3e}, max |Δ| {max_abs:.3e}; largest \
             per-tensor {worst:.3e} ({name})"
        );
        assert!(overall <= 1e-6, "{file}: ‖Δ‖/‖w‖ = {overall:e}");
    }
}

#[test]
fn four_micro_batches_take_the_step_of_the_whole_batch() {
    assert_same_steps(unet_config(1), unet_config(4));
    // The weights moved: the comparison is not between two untouched copies.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(unet_config(4), a.path());
    let untouched = fresh(unet_config(1), toy_dataset_of(64, 2), b.path(), Device::Cpu).unwrap();
    let (_, moved, _, _) = relative_difference_named(
        &last_checkpoint(a.path(), checkpoint::MODEL_FILE),
        &checkpoint::named_tensors(untouched.model_vs()),
    );
    assert!(moved > 1e-4, "the weights barely moved: {moved:e}");
}

/// The recomputations of every micro-batch add up to the gradient of the whole batch.
#[test]
fn checkpointed_micro_batches_take_the_step_of_the_whole_batch() {
    let mut checkpointed = unet_config(4);
    checkpointed.model.set_gradient_checkpointing(true);
    assert_same_steps(unet_config(1), checkpointed);
}

/// Under fp16 autocast and its loss scale, the recomputation runs in fp16 as the first pass did.
///
/// The two runs are not bit-equal: recomputed blocks sum their f16 gradients in another order,
/// and Adam turns a one-ulp difference of a near-zero gradient into a whole step. So the first
/// two steps' losses and gradient norms agree to 1e-6, and after 3 steps checkpointing has moved
/// the weights less than a tenth as far as fp16 itself moves them from f32 (a recomputation
/// in f32 would move them about as far).
#[test]
fn fp16_with_checkpointing_takes_the_steps_of_fp16_without() {
    let config = |precision, checkpointing| {
        let mut config = TrainConfig {
            precision,
            ..unet_config(2)
        };
        config.model.set_gradient_checkpointing(checkpointing);
        config
    };
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    train(config(Precision::Fp16, false), dirs[0].path());
    train(config(Precision::Fp16, true), dirs[1].path());
    train(config(Precision::F32, false), dirs[2].path());
    assert_same_metrics(dirs[0].path(), dirs[1].path(), 2);
    let weights = |i: usize| last_checkpoint(dirs[i].path(), checkpoint::MODEL_FILE);
    let (_, by_checkpointing, _, _) = relative_difference_named(&weights(0), &weights(1));
    let (_, by_fp16, _, _) = relative_difference_named(&weights(0), &weights(2));
    eprintln!(
        "fp16 after 3 steps: checkpointing moves the weights by ‖Δ‖/‖w‖ {by_checkpointing:.3e}, \
         fp16 against f32 {by_fp16:.3e}"
    );
    assert!(
        by_fp16 > 0.0,
        "fp16 and f32 took the same steps: autocast was off"
    );
    assert!(
        by_checkpointing <= 0.1 * by_fp16,
        "checkpointing moved the fp16 weights by {by_checkpointing:e}, fp16 itself by {by_fp16:e}"
    );
}

/// Label dropout is drawn for the whole batch and sliced per micro-batch, as t and ε are.
#[test]
fn class_conditional_micro_batches_drop_the_labels_of_the_whole_batch() {
    let config = |k| {
        let mut config = unet_config(k);
        config.model.set_num_classes(Some(2));
        config.objective.p_uncond = 0.5;
        config
    };
    assert_same_steps(config(1), config(2));
}

#[test]
fn resume_with_accumulation_replays_the_uninterrupted_run_exactly() {
    // SimpleUnet: BatchNorm running statistics updated by every micro-batch.
    assert_resume_is_exact(TrainConfig {
        grad_accum: 4,
        ..tiny_config()
    });
}

#[test]
fn a_batch_that_does_not_split_into_micro_batches_is_refused_naming_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let err = fresh(
        unet_config(3),
        toy_dataset_of(64, 2),
        dir.path(),
        Device::Cpu,
    )
    .unwrap_err();
    let TrainError::Config(message) = err else {
        panic!("not a config error: {err}");
    };
    assert!(
        message.contains("batch_size = 16") && message.contains("grad_accum = 3"),
        "{message}"
    );
    let err = TrainConfig {
        grad_accum: 0,
        ..unet_config(1)
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("grad_accum = 0"), "{err}");
    // Over ranks: 16 images are 4 micro-batches of 2 on each of 2 ranks, but not 4 of 1.33 on 3.
    let config = unet_config(4);
    assert!(config.check_micro_batch(2).is_ok());
    assert_eq!(config.micro_batch(2), 2);
    let err = config.check_micro_batch(3).unwrap_err().to_string();
    assert!(
        err.contains("grad_accum = 4 micro-batches × 3 ranks") && err.contains("16 / 12"),
        "{err}"
    );
}
