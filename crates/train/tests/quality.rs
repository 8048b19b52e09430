//! FID in the loop with a stand-in scorer (CPU, tiny model): the evaluation lines, the best
//! checkpoint, resume, and that evaluating does not change what the run learns.

mod common;
use common::{fresh, resume, tiny_config, toy_dataset};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use sample::SamplerConfig;
use schedule::TimestepSpacing;
use tch::{Device, Kind, Tensor};
use train::config::TrainConfig;
use train::ema::EmaConfig;
use train::quality::{read_best, BestRecord, EvalRecord, SampleScorer, ScoreError, Scores};
use train::trainer::{MetricsRecord, NoHooks};
use train::{TrainError, Trainer};

fn config(max_steps: u64, eval_every: u64) -> TrainConfig {
    TrainConfig {
        ema: EmaConfig {
            decay: 0.9,
            warmup: false,
        },
        seed: 5,
        epochs: None,
        max_steps: Some(max_steps),
        checkpoint_every: 2,
        eval_every,
        eval_samples: 6,
        eval_sampler: SamplerConfig::Ddim {
            steps: 3,
            eta: 0.0,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        },
        ..tiny_config()
    }
}

/// Returns the scripted FIDs in turn and keeps the images it was given.
struct Scripted {
    fids: Vec<f64>,
    seen: Arc<Mutex<Vec<Tensor>>>,
    protocol: &'static str,
}

impl Scripted {
    fn new(fids: &[f64], protocol: &'static str) -> (Self, Arc<Mutex<Vec<Tensor>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let scorer = Self {
            fids: fids.iter().rev().copied().collect(),
            seen: seen.clone(),
            protocol,
        };
        (scorer, seen)
    }
}

impl SampleScorer for Scripted {
    fn protocol(&self) -> serde_json::Value {
        serde_json::json!({ "scorer": self.protocol })
    }

    fn score(&mut self, images: &Tensor) -> Result<Scores, ScoreError> {
        self.seen.lock().unwrap().push(images.shallow_clone());
        let fid = self.fids.pop().ok_or("no FID left in the script")?;
        Ok(Scores {
            fid,
            kid: Some(fid / 100.0),
            kid_std: Some(0.0),
        })
    }
}

fn lines(run_dir: &Path) -> (Vec<MetricsRecord>, Vec<EvalRecord>) {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let mut train = Vec::new();
    let mut evals = Vec::new();
    for line in text.lines() {
        if let Ok(r) = serde_json::from_str::<EvalRecord>(line) {
            evals.push(r);
        } else {
            train.push(serde_json::from_str::<MetricsRecord>(line).unwrap());
        }
    }
    (train, evals)
}

fn run(trainer: &mut Trainer) {
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
}

#[test]
fn evaluations_write_fid_lines_and_keep_the_lowest_fid_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(config(6, 2), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let (scorer, seen) = Scripted::new(&[5.0, 3.0, 4.0], "a");
    trainer.set_scorer(Box::new(scorer));
    run(&mut trainer);

    let (train_lines, evals) = lines(dir.path());
    let summary: Vec<(u64, f64, bool)> = evals.iter().map(|r| (r.step, r.fid, r.best)).collect();
    assert_eq!(summary, [(2, 5.0, true), (4, 3.0, true), (6, 4.0, false)]);
    assert!(evals
        .iter()
        .all(|r| r.n_samples == 6 && r.kid == Some(r.fid / 100.0)));
    // The scorer got eval_samples u8 images at the model's size each time.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for images in seen.iter() {
        assert_eq!(images.size(), [6, 1, 8, 8]);
        assert_eq!(images.kind(), Kind::Uint8);
    }
    // The same noise every time: the images differ because the weights do.
    assert!(!seen[0].equal(&seen[1]));

    let checkpoints = dir.path().join("checkpoints");
    let best = read_best(&checkpoints).unwrap().unwrap();
    assert_eq!(
        best,
        BestRecord {
            step: 4,
            fid: 3.0,
            kid: Some(0.03),
            n_samples: 6,
            sampler: config(6, 2).eval_sampler,
            protocol: serde_json::json!({"scorer": "a"}),
        }
    );
    assert_eq!(trainer.best(), Some(&best));
    // best/ is the step-4 checkpoint, file for file.
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        assert_eq!(
            std::fs::read(checkpoints.join("best").join(file)).unwrap(),
            std::fs::read(checkpoints.join("step-00000004").join(file)).unwrap(),
            "{file}"
        );
    }
    // It stays out of the checkpoint list.
    let steps: Vec<u64> = train::checkpoint::list(&checkpoints)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, [2, 4, 6]);

    // Evaluating changed nothing the run learned: the same losses as a run without it.
    let plain = tempfile::tempdir().unwrap();
    let mut trainer = fresh(config(6, 0), toy_dataset(), plain.path(), Device::Cpu).unwrap();
    run(&mut trainer);
    let (plain_lines, plain_evals) = lines(plain.path());
    assert!(plain_evals.is_empty());
    let losses = |l: &[MetricsRecord]| l.iter().map(|r| (r.step, r.loss)).collect::<Vec<_>>();
    assert_eq!(losses(&train_lines), losses(&plain_lines));
}

#[test]
fn the_best_record_survives_resume_and_is_replaced_only_by_a_lower_fid() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(config(4, 2), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    trainer.set_scorer(Box::new(Scripted::new(&[5.0, 3.0], "a").0));
    run(&mut trainer);
    drop(trainer);

    // Resumed for 4 more steps: evaluations at 6 and 8 score worse, so best/ stays at step 4.
    let mut resumed = resume(
        dir.path(),
        None,
        Some(config(8, 2)),
        toy_dataset(),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(resumed.best().map(|b| (b.step, b.fid)), Some((4, 3.0)));
    resumed.set_scorer(Box::new(Scripted::new(&[4.0, 6.0], "a").0));
    assert_eq!(resumed.best_is_comparable(), Some(true));
    run(&mut resumed);
    drop(resumed);
    let (_, evals) = lines(dir.path());
    let summary: Vec<(u64, f64, bool)> = evals.iter().map(|r| (r.step, r.fid, r.best)).collect();
    assert_eq!(
        summary,
        [
            (2, 5.0, true),
            (4, 3.0, true),
            (6, 4.0, false),
            (8, 6.0, false)
        ]
    );
    let checkpoints = dir.path().join("checkpoints");
    assert_eq!(read_best(&checkpoints).unwrap().unwrap().step, 4);
    assert_eq!(
        train::checkpoint::read_state(&checkpoints.join("best"))
            .unwrap()
            .step,
        4
    );

    // A scorer with another protocol cannot be compared with the record: its first score
    // replaces it, however high.
    let mut resumed = resume(
        dir.path(),
        None,
        Some(config(10, 2)),
        toy_dataset(),
        Device::Cpu,
    )
    .unwrap();
    resumed.set_scorer(Box::new(Scripted::new(&[9.0], "b").0));
    assert_eq!(resumed.best_is_comparable(), Some(false));
    run(&mut resumed);
    let best = read_best(&checkpoints).unwrap().unwrap();
    assert_eq!((best.step, best.fid), (10, 9.0));
    assert_eq!(best.protocol, serde_json::json!({"scorer": "b"}));
}

#[test]
fn a_run_that_evaluates_needs_a_scorer_and_a_failing_scorer_names_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(config(4, 2), toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let err = trainer
        .run(&mut NoHooks, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        matches!(&err, TrainError::Config(m) if m.contains("set_scorer")),
        "{err}"
    );
    assert_eq!(trainer.step(), 0, "no step before the refusal");
    assert!(!dir.path().join("metrics.jsonl").exists());

    // A script of one FID runs dry at the second evaluation.
    trainer.set_scorer(Box::new(Scripted::new(&[2.0], "a").0));
    let err = trainer
        .run(&mut NoHooks, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        matches!(&err, TrainError::Evaluation { step: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no FID left"), "{err}");
}

#[test]
fn eval_settings_are_checked_when_on_and_may_change_on_resume() {
    let mut c = config(4, 2);
    c.eval_samples = 1;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("eval_samples = 1"), "{err}");
    let mut c = config(4, 2);
    c.eval_sampler = SamplerConfig::Ddim {
        steps: 80,
        eta: 0.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("eval_sampler") && err.contains("80"), "{err}");
    // Off, the same sampler is not checked against T.
    c.eval_every = 0;
    c.validate().unwrap();
    let keys: Vec<String> = config(4, 0)
        .check_resume(&config(4, 3))
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    assert_eq!(keys, ["eval_every"]);
}
