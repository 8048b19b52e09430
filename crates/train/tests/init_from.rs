//! Fine-tuning from another model's weights (`init_from`, `ddpm train --init-from`), from the
//! tiny diffusers folder that `scripts/golden/diffusers_folders.py` writes with diffusers itself
//! (`crates/sample/tests/fixtures/diffusers/modern`: 8×8×3, T = 500 scaled-linear,
//! v-prediction).

mod common;

use std::path::{Path, PathBuf};

use common::{fresh, resume, tiny_config};
use data::Dataset;
use sample::{Pipeline, PipelineSpec, Weights};
use tch::{nn::VarStore, Device, Tensor};
use train::config::TrainConfig;
use train::trainer::check_source;

/// The tiny diffusers model folder.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample/tests/fixtures/diffusers/modern")
}

/// 32 smooth 8×8 RGB images in two labelled kinds.
fn rgb_dataset() -> Dataset {
    let mut pixels = Vec::new();
    for i in 0..32u32 {
        for c in 0..3u32 {
            for p in 0..64u32 {
                pixels.push(((p / 8 + p % 8) * (c + 1) * 9 + i * 13) as u8);
            }
        }
    }
    let labels = (0..32).map(|i| (i % 2) as u16).collect();
    Dataset::new(pixels, labels, 3, 8, 8, vec!["a".into(), "b".into()]).unwrap()
}

/// [`tiny_config`] fine-tuning `src`: its network, schedule and prediction, batches of 8, no
/// flips (so the batch is the same whatever the draws), one step.
fn config_from(src: &Path) -> TrainConfig {
    let spec = PipelineSpec::resolve(src, Weights::Ema).unwrap();
    let mut config = tiny_config().starting_from(src, &spec);
    config.batch_size = 8;
    config.transform.flip_p = 0.0;
    config.epochs = None;
    config.max_steps = Some(1);
    config
}

/// Whether every variable of `a` equals the same-named one of `b`.
fn same_weights(a: &VarStore, b: &VarStore) -> bool {
    let b = b.variables();
    a.variables()
        .iter()
        .all(|(name, t)| b.get(name).is_some_and(|u| t.equal(u)))
}

#[test]
fn the_first_step_starts_from_the_sources_weights_and_the_config_records_it() {
    let src = source();
    let config = config_from(&src);
    assert_eq!(
        config.schedule,
        PipelineSpec::resolve(&src, Weights::Ema).unwrap().schedule
    );
    assert_eq!(config.objective.prediction, model::Prediction::V);
    let dir = tempfile::tempdir().unwrap();
    let mut tuned = fresh(config.clone(), rgb_dataset(), dir.path(), Device::Cpu).unwrap();
    let report = tuned.init_report().expect("an init report").clone();
    assert!(report.zeroed.is_empty(), "{report:?}");
    assert_eq!(report.weights_file, report.ema_file);
    // Weights and EMA are the source's, as `sample::Pipeline` loads them.
    let pipe = Pipeline::load(&src, Weights::Ema, Device::Cpu).unwrap();
    assert!(same_weights(tuned.model_vs(), &pipe.vs));
    assert!(same_weights(tuned.ema_vs(), &pipe.vs));
    // config.json records the source.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["init_from"], serde_json::json!(src));

    // The same run from random weights, with the source's weights then copied in by the test:
    // the loss of the source weights on the first batch, with the same t and ε.
    let batch = tuned.loader().batch(0, 0);
    let loss = tuned.train_step(&batch).unwrap().loss();
    let plain = TrainConfig {
        init_from: None,
        ..config
    };
    let other = tempfile::tempdir().unwrap();
    let mut reference = fresh(plain.clone(), rgb_dataset(), other.path(), Device::Cpu).unwrap();
    let random_loss = {
        let third = tempfile::tempdir().unwrap();
        let mut random = fresh(plain, rgb_dataset(), third.path(), Device::Cpu).unwrap();
        random.train_step(&batch).unwrap().loss()
    };
    let theirs = pipe.vs.variables();
    tch::no_grad(|| {
        for (name, mut var) in reference.model_vs().variables() {
            var.copy_(&theirs[&name]);
        }
    });
    let source_loss = reference.train_step(&batch).unwrap().loss();
    assert_eq!(loss, source_loss);
    assert_ne!(loss, random_loss, "the test cannot tell the weights apart");
}

#[test]
fn a_class_conditional_run_adds_a_zero_class_embedding_to_an_unconditional_source() {
    let src = source();
    let unconditional = config_from(&src);
    let mut conditional = unconditional.clone();
    conditional.model.set_num_classes(Some(2));
    conditional.objective.p_uncond = 0.0;
    let dir = tempfile::tempdir().unwrap();
    let mut cond = fresh(conditional, rgb_dataset(), dir.path(), Device::Cpu).unwrap();
    let report = cond.init_report().unwrap();
    assert_eq!(report.zeroed, ["class_embedding.weight"]);
    let embedding = &cond.model_vs().variables()["class_embedding.weight"];
    assert_eq!(embedding.abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
    // A zero embedding adds nothing: the first loss is the unconditional source's.
    let batch = cond.loader().batch(0, 0);
    let cond_loss = cond.train_step(&batch).unwrap().loss();
    let other = tempfile::tempdir().unwrap();
    let mut uncond = fresh(unconditional, rgb_dataset(), other.path(), Device::Cpu).unwrap();
    let loss = uncond.train_step(&batch).unwrap().loss();
    assert!(
        (cond_loss - loss).abs() <= 1e-6 * loss,
        "{cond_loss} vs {loss}"
    );
}

#[test]
fn settings_that_differ_from_the_source_are_refused_naming_the_key() {
    let src = source();
    let spec = PipelineSpec::resolve(&src, Weights::Ema).unwrap();
    let config = config_from(&src);
    check_source(&config, &spec).unwrap();
    let refused = |change: &dyn Fn(&mut TrainConfig), key: &str| {
        let mut c = config.clone();
        change(&mut c);
        let err = check_source(&c, &spec).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("config.json"),
            "{err}"
        );
    };
    refused(
        &|c| {
            if let model::ModelConfig::Ddpm(m) = &mut c.model {
                m.channels = 16;
            }
        },
        "model.channels",
    );
    refused(&|c| c.schedule = tiny_config().schedule, "schedule");
    refused(
        &|c| c.objective.prediction = model::Prediction::Eps,
        "objective.prediction",
    );
    // Dropout may change.
    let mut c = config.clone();
    if let model::ModelConfig::Ddpm(m) = &mut c.model {
        m.dropout = 0.1;
    }
    check_source(&c, &spec).unwrap();
    // And a refused run leaves no run behind.
    let mut c = config.clone();
    c.objective.prediction = model::Prediction::Eps;
    let dir = tempfile::tempdir().unwrap();
    let err = fresh(c, rgb_dataset(), dir.path(), Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("objective.prediction"), "{err}");
    assert!(!dir.path().join("config.json").exists());
}

#[test]
fn a_resume_reads_its_checkpoint_not_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source");
    std::fs::create_dir(&src).unwrap();
    for entry in std::fs::read_dir(source()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, src.join(path.file_name().unwrap())).unwrap();
    }
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let config = config_from(&src);
    let mut trainer = fresh(config.clone(), rgb_dataset(), &run, Device::Cpu).unwrap();
    trainer
        .run(&mut train::trainer::NoHooks, &Default::default())
        .unwrap();
    let after_one: Vec<(String, Tensor)> = trainer.model_vs().variables().into_iter().collect();
    drop(trainer);
    std::fs::remove_dir_all(&src).unwrap();
    let more = TrainConfig {
        max_steps: Some(2),
        ..config
    };
    let resumed = resume(&run, None, Some(more), rgb_dataset(), Device::Cpu).unwrap();
    assert!(resumed.init_report().is_none());
    assert_eq!(resumed.step(), 1);
    let vars = resumed.model_vs().variables();
    assert!(after_one.iter().all(|(name, t)| vars[name].equal(t)));
}
