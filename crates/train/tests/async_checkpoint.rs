//! Checkpoints written off the training thread ([`train::writer`]): the step after a checkpoint
//! runs while that checkpoint is still being written, a checkpoint that comes due while the
//! previous one is being written waits and says so (a message and the metrics line), and the run
//! ends with every checkpoint complete and matching its digests.
//!
//! The only test of its binary: `DDPM_FAULT_CHECKPOINT_PAUSE_MS`, the existing hook that slows a
//! checkpoint write between its files, slows every write of the process.

mod common;
use common::{fresh, metrics, tiny_config, toy_dataset};

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use tch::Device;
use train::config::TrainConfig;
use train::digest::{verify_run, Verified};
use train::trainer::{StepOutcome, TrainHooks};

/// What the hooks saw: at each step, whether the checkpoint of step 2 was complete on disk and
/// how many checkpoints had been reported; the checkpoints reported; the messages.
///
/// Whether step 2's `.tmp` directory exists at step 3 is not recorded: the writer thread creates
/// it, and on a loaded machine step 3 can run before that thread has been scheduled at all (CI
/// saw it). A step that runs before the checkpoint is complete is the property under test.
struct Seen {
    root: PathBuf,
    steps: Vec<(u64, bool, usize)>,
    checkpoints: Vec<PathBuf>,
    messages: Vec<String>,
}

impl TrainHooks for Seen {
    fn on_step(&mut self, step: u64, _epoch: u64, _outcome: &StepOutcome) {
        let done = self.root.join("step-00000002/state.json").exists();
        self.steps.push((step, done, self.checkpoints.len()));
    }
    fn on_checkpoint(&mut self, dir: &Path) {
        self.checkpoints.push(dir.to_path_buf());
    }
    fn message(&mut self, text: &str) {
        self.messages.push(text.to_string());
    }
}

#[test]
fn the_step_after_a_checkpoint_runs_while_it_is_written_and_a_second_one_waits() {
    // Two pauses per write: each checkpoint takes at least 4 s, the steps milliseconds.
    std::env::set_var("DDPM_FAULT_CHECKPOINT_PAUSE_MS", "2000");
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        checkpoint_every: 2,
        max_steps: Some(6),
        epochs: Some(100),
        ..tiny_config()
    };
    let mut trainer = fresh(config, toy_dataset(), dir.path(), Device::Cpu).unwrap();
    let root = dir.path().join("checkpoints");
    let mut seen = Seen {
        root: root.clone(),
        steps: Vec::new(),
        checkpoints: Vec::new(),
        messages: Vec::new(),
    };
    trainer.run(&mut seen, &AtomicBool::new(false)).unwrap();
    drop(trainer);

    let at = |step: u64| *seen.steps.iter().find(|s| s.0 == step).unwrap();
    assert_eq!(
        at(3),
        (3, false, 0),
        "step 3 should run before the checkpoint of step 2 is complete"
    );
    assert!(
        seen.messages
            .iter()
            .any(|m| m.starts_with("step 4: the checkpoint of step 2 was still being written")),
        "{:?}",
        seen.messages
    );
    let records = metrics(dir.path());
    // The wait after step 4's metrics line is in the next one.
    let waited = records
        .iter()
        .find(|r| r.step == 5)
        .unwrap()
        .checkpoint_wait_s;
    assert!(waited.is_some_and(|s| s > 0.5), "{records:?}");
    assert!(
        records
            .iter()
            .filter(|r| r.checkpoint_wait_s.is_some())
            .count()
            == 1
    );

    let names: Vec<String> = seen
        .checkpoints
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000002", "step-00000004", "step-00000006"]);
    let checks = verify_run(dir.path()).unwrap();
    assert_eq!(checks.len(), 3);
    for check in checks {
        assert!(
            matches!(check.outcome, Ok(Verified::Checked(3))),
            "{check:?}"
        );
    }
    let leftovers = std::fs::read_dir(&root)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some())
        .count();
    assert_eq!(leftovers, 0, "a .tmp directory was left behind");
}
