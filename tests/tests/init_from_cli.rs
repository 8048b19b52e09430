//! `ddpm train --init-from`: fine-tuning the tiny diffusers pipeline folder that
//! `scripts/golden/diffusers_folders.py` writes with diffusers (`legacy_pipeline/`: the
//! `google/ddpm-*` layout, `unet/` with a `.bin` state dict, T = 1000 linear, ε).

use std::path::{Path, PathBuf};

use e2e::{metric_lines, path_arg, run, stderr_of, synthetic_cifar};

/// The tiny diffusers pipeline folder.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/sample/tests/fixtures/diffusers/legacy_pipeline")
}

/// `ddpm train --init-from SOURCE` on 16 synthetic CIFAR images resized to the source's 8×8,
/// then `extra`.
fn args(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--init-from",
        path_arg(&source()),
        "--data",
        path_arg(data),
        "--run-dir",
        path_arg(run_dir),
        "--set",
        "transform.size=[8,8]",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--set",
        "sample_every_epochs=0",
        "--set",
        "log_every=1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn init_from_a_diffusers_folder_trains_and_records_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&args(&data, &run_dir, &["--lr", "1e-5"]));
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("--init-from: the network starts from")
            && log.contains("diffusion_pytorch_model.bin"),
        "{log}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["init_from"], serde_json::json!(source()));
    // The source's network, schedule and prediction replaced the seed preset's.
    assert_eq!(config["model"]["arch"], "ddpm");
    assert_eq!(config["model"]["image_size"], 8);
    assert_eq!(config["schedule"]["n_steps"], 1000);
    assert_eq!(config["optim"]["lr"], 1e-5);
    assert_eq!(metric_lines(&run_dir).len(), 2);
}

#[test]
fn a_setting_that_differs_from_the_source_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let out = run(&args(&data, &run_dir, &["--set", "model.channels=16"]));
    let log = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        log.contains("`model.channels` = 16") && log.contains("config.json"),
        "{log}"
    );
    assert!(!run_dir.join("config.json").exists());
    // Class-conditional fine-tuning of this unconditional source says what it adds.
    let out = run(&args(&data, &run_dir, &["--class-cond"]));
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("class_embedding.weight") && log.contains("zeros"),
        "{log}"
    );
}
