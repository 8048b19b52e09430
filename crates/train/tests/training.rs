//! The training loop on tiny synthetic data (CPU): learning, exact resume, the NaN guard.

mod common;
use common::{assert_resume_is_exact, fresh, metrics, resume, tiny_config, tiny_unet, toy_dataset};

use std::sync::atomic::AtomicBool;

use model::{ModelConfig, SimpleUnetConfig};
use tch::Device;
use train::config::TrainConfig;
use train::trainer::{MetricsRecord, NoHooks};
use train::{RunEnd, TrainError, Trainer};

#[test]
fn loss_decreases_on_a_learnable_toy_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        epochs: Some(25),
        checkpoint_every: 1000,
        ..tiny_config()
    };
    let mut trainer = fresh(config, toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let end = trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    assert_eq!(end, RunEnd::Finished);
    let records = metrics(dir.path());
    assert_eq!(
        records.len(),
        100,
        "4 batches per epoch x 25 epochs, one line per step"
    );
    let mean = |rs: &[MetricsRecord]| rs.iter().map(|r| r.loss).sum::<f64>() / rs.len() as f64;
    let (first, last) = (mean(&records[..10]), mean(&records[90..]));
    assert!(
        last < 0.7 * first,
        "loss did not fall: first 10 steps {first:.4}, last 10 {last:.4}"
    );
    // The run leaves its final checkpoint.
    let latest = train::checkpoint::latest(&dir.path().join("checkpoints")).unwrap();
    assert_eq!(train::checkpoint::read_state(&latest).unwrap().step, 100);
}

#[test]
fn resume_replays_the_uninterrupted_run_exactly() {
    assert_resume_is_exact(tiny_config());
}

/// A class-conditional run (the toy set's two classes, half the labels dropped) resumes bit for
/// bit too: the label drops are a function of (seed, step). It writes its class names into its
/// checkpoints, and learns something else than the same run without classes.
#[test]
fn class_conditional_resume_replays_the_uninterrupted_run_exactly() {
    let mut config = tiny_config();
    config.model.set_num_classes(Some(2));
    config.objective.p_uncond = 0.5;
    let full = assert_resume_is_exact(config);
    let latest = train::checkpoint::latest(&full.path().join("checkpoints")).unwrap();
    let state = train::checkpoint::read_state(&latest).unwrap();
    assert_eq!(state.class_names, ["top", "left"]);
    // The labels reach the loss: another run without them has other losses.
    let plain = tempfile::tempdir().unwrap();
    let mut trainer = fresh(tiny_config(), toy_dataset(), plain.path(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let (a, b) = (metrics(full.path()), metrics(plain.path()));
    assert_ne!(a[5].loss.to_bits(), b[5].loss.to_bits());
    // An unconditional run's checkpoints carry no class names.
    let latest = train::checkpoint::latest(&plain.path().join("checkpoints")).unwrap();
    let text = std::fs::read_to_string(latest.join(train::checkpoint::STATE_FILE)).unwrap();
    assert!(!text.contains("class_names"), "{text}");
}

#[test]
fn non_finite_steps_are_skipped_then_abort_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(tiny_config(), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let good = trainer.loader().batch(0, 0);
    let mut poisoned = good.clone();
    poisoned.images[5] = f32::NAN;
    let before = train::checkpoint::named_tensors(trainer.model_vs());
    let before: Vec<tch::Tensor> = before.iter().map(|(_, t)| t.copy()).collect();

    for _ in 0..2 {
        let outcome = trainer.train_step(&poisoned).unwrap();
        assert!(outcome.skipped() && outcome.loss().is_nan());
    }
    // Weights are untouched by skipped steps.
    let after = train::checkpoint::named_tensors(trainer.model_vs());
    assert_eq!(after.len(), before.len());
    for ((name, now), was) in after.iter().zip(&before) {
        assert!(now.equal(was), "{name} changed during a skipped step");
    }
    // A finite step resets the count ...
    assert!(!trainer.train_step(&good).unwrap().skipped());
    // ... and three non-finite steps in a row abort with a clear error.
    let _ = trainer.train_step(&poisoned).unwrap();
    let _ = trainer.train_step(&poisoned).unwrap();
    let err = trainer.train_step(&poisoned).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite(_)), "{err}");
    assert!(err.to_string().contains("3 steps in a row"), "{err}");
}

/// Training, with or without dropout, never touches libtorch's global generator: the run's own
/// generators draw the initial weights, t, ε, the dropout masks and the preview samples. (No
/// other test of this binary draws from the global generator.)
#[test]
fn training_leaves_the_global_generator_alone() {
    let draw = || Vec::<f32>::try_from(tch::Tensor::randn([8], (tch::Kind::Float, Device::Cpu)));
    for model in [tiny_config().model, tiny_unet(0.3)] {
        tch::manual_seed(77);
        let expected = draw().unwrap();
        tch::manual_seed(77);
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            epochs: Some(1),
            sample_every_epochs: 1,
            model,
            ..tiny_config()
        };
        let mut trainer = fresh(config, toy_dataset(), dir.path(), Device::Cpu).unwrap();
        trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
        assert!(dir.path().join("samples/final-grid.png").exists());
        assert_eq!(
            draw().unwrap(),
            expected,
            "the trainer drew from the global generator"
        );
    }
}

/// With a metrics line every 4 steps the NaN guard counts on the device and checks at the reads:
/// two bad steps in a row pass, three in a row abort at the next read even when the steps in
/// between were finite; skipped steps update neither the weights, nor Adam's step count, nor the
/// EMA.
#[test]
fn the_nan_guard_counts_on_the_device_and_checks_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        log_every: 4,
        checkpoint_every: 1000,
        ..tiny_config()
    };
    let mut trainer = fresh(config, toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let good = trainer.loader().batch(0, 0);
    let mut poisoned = good.clone();
    poisoned.images[3] = f32::INFINITY;
    for batch in [&poisoned, &poisoned, &good, &good] {
        trainer.train_step(batch).unwrap();
    }
    let ckpt = trainer.save_checkpoint().unwrap();
    let state = train::checkpoint::read_state(&ckpt).unwrap();
    assert_eq!(
        (state.step, state.skipped_steps, state.ema_updates),
        (4, 2, 2)
    );
    let optimizer = train::checkpoint::read_tensors(&ckpt.join(train::checkpoint::OPTIMIZER_FILE));
    assert!(!optimizer.unwrap().is_empty());
    // Three bad steps (5, 6, 7) are not reported until the read after step 8.
    let before: Vec<tch::Tensor> = train::checkpoint::named_tensors(trainer.model_vs())
        .iter()
        .map(|(_, t)| t.copy())
        .collect();
    for _ in 0..3 {
        let outcome = trainer.train_step(&poisoned).unwrap();
        assert!(outcome.skipped());
    }
    for ((name, now), was) in train::checkpoint::named_tensors(trainer.model_vs())
        .iter()
        .zip(&before)
    {
        assert!(now.equal(was), "{name} changed during a skipped step");
    }
    let err = trainer.train_step(&good).unwrap_err();
    assert!(err.to_string().contains("3 steps in a row"), "{err}");
    assert!(err.to_string().contains("5 skipped in all"), "{err}");
}

/// `--cuda-graph` on the CPU is refused before any step, naming what is missing (the CUDA
/// device, or, in a build without the `cuda` feature, the feature).
#[test]
fn cuda_graphs_are_refused_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(tiny_config(), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let err = trainer.enable_cuda_graph().unwrap_err();
    assert!(matches!(err, TrainError::CudaGraph(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--device cuda") || text.contains("--features cuda"),
        "{text}"
    );
    assert!(!trainer.uses_cuda_graph());
    assert!(train::trainer::check_cuda_graph(Device::Cpu).is_err());
}

#[test]
fn mismatched_data_and_model_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config();
    config.model = ModelConfig::Simple(SimpleUnetConfig {
        image_size: 16,
        ..SimpleUnetConfig::fashion_mnist()
    });
    let err = fresh(config, toy_dataset(), dir.path(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("images are 8x8 after the transform but the model expects 16x16"),
        "{err}"
    );
    let config = TrainConfig {
        batch_size: 100,
        ..tiny_config()
    };
    let err = fresh(config, toy_dataset(), dir.path(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than one batch"), "{err}");
}

#[test]
fn resume_passes_over_a_damaged_newest_checkpoint_and_refuses_fixed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(tiny_config(), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    // The trainer holds the directory: a second one is refused until it is dropped.
    let err = resume(dir.path(), None, None, toy_dataset(), Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Locked { .. }), "{err}");
    drop(trainer);

    let checkpoints = dir.path().join("checkpoints");
    let newest = checkpoints.join(train::checkpoint::dir_name(12));
    let ema = newest.join(train::checkpoint::EMA_FILE);
    let bytes = std::fs::read(&ema).unwrap();
    std::fs::write(&ema, &bytes[..bytes.len() / 3]).unwrap();
    let config_path = dir.path().join("config.json");
    let config_before = std::fs::read(&config_path).unwrap();

    // Picked explicitly, the damaged checkpoint is an error naming the file.
    let err = resume(dir.path(), Some(&newest), None, toy_dataset(), Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("ema.safetensors"), "{err}");
    // A setting that must stay fixed is refused, and config.json is left as it was.
    let config = TrainConfig {
        batch_size: 8,
        ..tiny_config()
    };
    let err = resume(dir.path(), None, Some(config), toy_dataset(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, TrainError::ResumeChange { key, .. } if key == "batch_size"),
        "{err}"
    );
    assert_eq!(std::fs::read(&config_path).unwrap(), config_before);
    // Picked automatically, it is passed over for the one before.
    let resumed = resume(dir.path(), None, None, toy_dataset(), Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 8);
    let skipped = resumed.skipped_checkpoints();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].dir, newest);
    assert!(skipped[0].reason.contains("ema.safetensors"), "{skipped:?}");
}

#[test]
fn a_trainer_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Trainer>();
}

/// A CUDA graph cannot capture activation checkpointing's recomputation: refused with the
/// reason, before anything else is checked.
#[test]
fn cuda_graphs_refuse_activation_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config();
    config.model.set_gradient_checkpointing(true);
    let mut trainer = fresh(config, toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let err = trainer.enable_cuda_graph().unwrap_err().to_string();
    assert!(err.contains("activation checkpointing"), "{err}");
}
