//! `ddpm train`'s TensorBoard event files (`<run>/tb/`) read by TensorBoard's own reader,
//! `EventAccumulator` (`scripts/tensorboard/read_events.py`, through the set-up's python): every
//! scalar of `metrics.jsonl` at its step, the sample grids and strips byte for byte, the resolved
//! configuration as text; after `--resume`, and after `kill -9`, no step twice. Skipped, with a
//! message, where the python has no `tensorboard` (`cargo xtask test` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use e2e::{
    complete_checkpoints, kill, metric_lines, python_with_tensorboard, run_ok, spawn,
    synthetic_cifar, tiny_inception, tiny_train_args_at, wait_for,
};

/// (step, value) pairs of each tag, as TensorBoard reads them or as metrics.jsonl implies them.
type Series = BTreeMap<String, Vec<(u64, f64)>>;

/// What `scripts/tensorboard/read_events.py` found in `run_dir/tb`.
fn read_tb(python: &Path, run_dir: &Path) -> Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tensorboard/read_events.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(run_dir.join("tb"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read_events.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scalars(tb: &Value) -> Series {
    tb["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, events)| {
            let points = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap()))
                .collect();
            (tag.clone(), points)
        })
        .collect()
}

/// The scalars each line of `metrics.jsonl` should have put in the event files, stored as f32
/// (TensorBoard's `simple_value`).
fn expected_scalars(run_dir: &Path) -> Series {
    let mut out = Series::new();
    for line in metric_lines(run_dir) {
        let step = line["step"].as_u64().unwrap();
        let keys: &[(&str, &str)] = if line.get("fid").is_some() {
            &[("eval/fid", "fid"), ("eval/kid", "kid")]
        } else {
            &[
                ("train/loss", "loss"),
                ("train/lr", "lr"),
                ("train/grad_norm", "grad_norm"),
                ("train/skipped_steps", "skipped_steps"),
                ("train/images_per_sec", "images_per_sec"),
            ]
        };
        let mut push = |tag: &str, v: f64| {
            out.entry(tag.to_string())
                .or_default()
                .push((step, f64::from(v as f32)));
        };
        for (tag, key) in keys {
            if let Some(v) = line[key].as_f64() {
                push(tag, v);
            }
        }
        if line["best"] == true {
            push("eval/best_fid", line["fid"].as_f64().unwrap());
        }
    }
    out
}

/// (step, text) of the text summary `config`, the text's JSON parsed.
fn config_texts(tb: &Value) -> Vec<(u64, Value)> {
    tb["texts"]["config"]
        .as_array()
        .expect("a config text summary")
        .iter()
        .map(|e| {
            let text = e[1].as_str().unwrap();
            let json = text
                .strip_prefix("```json\n")
                .and_then(|t| t.strip_suffix("\n```"))
                .unwrap_or_else(|| panic!("a fenced JSON block: {text}"));
            (e[0].as_u64().unwrap(), serde_json::from_str(json).unwrap())
        })
        .collect()
}

/// (step, PNG bytes) of the image `tag`, each checked against the size it declares.
fn images(tb: &Value, tag: &str) -> Vec<(u64, Vec<u8>)> {
    tb["images"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no images {tag}"))
        .iter()
        .map(|e| {
            let hex = e[3].as_str().unwrap();
            let png: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let decoded = image::load_from_memory(&png).unwrap();
            assert_eq!(
                (e[1].as_u64(), e[2].as_u64()),
                (
                    Some(u64::from(decoded.width())),
                    Some(u64::from(decoded.height()))
                )
            );
            (e[0].as_u64().unwrap(), png)
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn python_or_skip(test: &str) -> Option<PathBuf> {
    let python = python_with_tensorboard();
    if python.is_none() {
        eprintln!(
            "skipped {test}: the set-up's python has no tensorboard \
             (pip install -r scripts/tensorboard/requirements.txt, or `cargo xtask test`)"
        );
    }
    python
}

/// The tiny seed preset at 16×16 on 16 images (2 steps an epoch), a metrics line every step, a
/// checkpoint every 2, sample pictures every epoch, and FID in the loop every 2 steps (the tiny
/// Inception); `max_steps` steps.
fn train_args(data: &Path, run_dir: &Path, max_steps: u64, extra: &[&str]) -> Vec<String> {
    let max_steps = format!("max_steps={max_steps}");
    let inception = tiny_inception();
    let mut args = vec![
        "--threads",
        "1",
        "--offline",
        "--set",
        &max_steps,
        "--set",
        "transform.size=[16,16]",
        "--set",
        r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#,
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=2",
        "--set",
        "sample_every_epochs=1",
        "--set",
        "n_sample_images=4",
        "--eval-every",
        "2",
        "--set",
        "eval_samples=4",
        "--eval-sampler",
        "ddim",
        "--eval-steps",
        "3",
        "--inception",
        &inception,
        "--inception-input-size",
        "16",
    ];
    args.extend_from_slice(extra);
    tiny_train_args_at(16, data, run_dir, &args)
}

#[test]
fn tensorboard_reads_every_scalar_the_samples_and_the_config_and_a_resume_repeats_no_step() {
    let Some(python) = python_or_skip("the TensorBoard round trip") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    run_ok(&train_args(&data, &run_dir, 4, &[]));

    let tb = read_tb(&python, &run_dir);
    let expected = expected_scalars(&run_dir);
    assert!(expected.contains_key("eval/fid") && expected.contains_key("eval/best_fid"));
    assert_eq!(scalars(&tb), expected);
    let samples = run_dir.join("samples");
    let grids = images(&tb, "samples/grid");
    let read = |name: &str| std::fs::read(samples.join(name)).unwrap();
    assert_eq!(
        grids,
        [
            (2, read("epoch-0001-grid.png")),
            (4, read("final-grid.png"))
        ]
    );
    let strips = images(&tb, "samples/strip");
    assert_eq!(strips[1], (4, read("final-strip.png")));
    let config = read_json(&run_dir.join("config.json"));
    assert_eq!(config_texts(&tb), [(0, config.clone())]);

    // A resume to step 6: the new steps appended, none twice, the first run's as they were.
    run_ok(&train_args(&data, &run_dir, 6, &["--resume"]));
    let tb = read_tb(&python, &run_dir);
    let all = scalars(&tb);
    assert_eq!(all, expected_scalars(&run_dir));
    let loss_steps: Vec<u64> = all["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(loss_steps, [1, 2, 3, 4, 5, 6]);
    let grids_after = images(&tb, "samples/grid");
    assert_eq!(grids_after[..2], grids);
    assert_eq!(grids_after[2], (6, read("final-grid.png")));
    let resumed = read_json(&run_dir.join("config.json"));
    assert_eq!(config_texts(&tb), [(0, config), (4, resumed)]);
}

#[test]
fn after_kill_9_the_events_read_to_the_last_flush_and_a_resume_repeats_no_step() {
    let Some(python) = python_or_skip("the TensorBoard kill -9 check") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 64);
    let run_dir = dir.path().join("run");
    let args = |max_steps: u64, extra: &[&str]| {
        let max_steps = format!("max_steps={max_steps}");
        let mut args = vec![
            "--threads",
            "1",
            "--set",
            &max_steps,
            "--set",
            "log_every=1",
        ];
        args.extend_from_slice(&["--set", "checkpoint_every=3"]);
        args.extend_from_slice(extra);
        tiny_train_args_at(28, &data, &run_dir, &args)
    };
    let mut child = spawn(&args(100_000, &[]), &[]);
    // Killed a few metrics lines past the first checkpoint: steps the resume trains again.
    wait_for(
        "a checkpoint and 5 metrics lines",
        Duration::from_secs(180),
        || !complete_checkpoints(&run_dir).is_empty() && metric_lines(&run_dir).len() >= 5,
    );
    kill(child.id(), "-9");
    child.wait().unwrap();
    let logged: Vec<u64> = metric_lines(&run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    let tb = scalars(&read_tb(&python, &run_dir));
    let read: Vec<u64> = tb["train/loss"].iter().map(|p| p.0).collect();
    // The event file is flushed right after each metrics line: the kill can fall between the two.
    assert!(
        read == logged || read == logged[..logged.len() - 1],
        "tensorboard read steps {read:?}, metrics.jsonl has {logged:?}"
    );
    let want = expected_scalars(&run_dir);
    for (tag, points) in &tb {
        assert_eq!(points[..], want[tag][..points.len()], "{tag}");
    }

    let total = logged.len() as u64 + 2;
    run_ok(&args(total, &["--resume"]));
    let tb = scalars(&read_tb(&python, &run_dir));
    assert_eq!(tb, expected_scalars(&run_dir));
    let steps: Vec<u64> = tb["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
}

#[test]
fn no_tensorboard_writes_no_event_files() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny_with(dir.path(), 16, &["--no-tensorboard"]);
    assert!(run_dir.join("metrics.jsonl").is_file());
    assert!(!run_dir.join("tb").exists());
    let config = read_json(&run_dir.join("config.json"));
    assert_eq!(config["tensorboard"], false);
}
