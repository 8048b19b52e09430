//! Scoring the race: the reference features of the first N Fashion-MNIST test images, the floor
//! (the first N training images against them), and FID/KID of each side's samples with every
//! sampler, all through `ddpm eval` with the same Inception settings; PNG grids of the samples.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{Phases, Race, SamplerChoice};
use crate::{root, run_checked};

/// What the scoring gives the report.
pub(super) struct Scores {
    /// The `ddpm eval fid` JSON of the floor.
    pub floor: Value,
    /// The Rust side's summary by sampler name.
    pub rust: serde_json::Map<String, Value>,
    /// The peer's summary by sampler name (empty without one).
    pub peer: serde_json::Map<String, Value>,
}

/// Computes the reference, the floor, and the score of each side with each sampler; the peer's
/// samples were drawn by the peer (`peer_result` says how long it took).
pub(super) fn score_all(race: &Race, peer_result: &Value, phases: &mut Phases) -> Result<Scores> {
    let t0 = Instant::now();
    let scorer = Scorer::with_reference(race)?;
    let n = race.plan.samples;
    eprintln!("== the floor: the first {n} training images against the reference");
    let floor = scorer.score(
        &[
            "--samples-dataset",
            "fashion-mnist",
            "--samples-split",
            "train",
            "--samples-data",
            &race.data_dir.to_string_lossy(),
            "--offline",
        ],
        &race.work.join("floor.json"),
    )?;
    phases.record("reference_and_floor", t0);

    let mut scores = Scores {
        floor,
        rust: serde_json::Map::new(),
        peer: serde_json::Map::new(),
    };
    for &sampler in &race.plan.samplers {
        let name = sampler.name();
        let t0 = Instant::now();
        let summary = score_rust(race, &scorer, sampler, t0)?;
        scores.rust.insert(name.into(), summary);
        phases.record(&format!("rust_{name}"), t0);
        if race.python.is_some() {
            let t0 = Instant::now();
            let summary = score_peer(race, &scorer, sampler, peer_result)?;
            scores.peer.insert(name.into(), summary);
            phases.record(&format!("peer_{name}_score"), t0);
        }
    }
    Ok(scores)
}

/// Draws N samples from the Rust run's EMA weights with `sampler`, scores them and draws their
/// grid into the report's folder.
fn score_rust(race: &Race, scorer: &Scorer, sampler: SamplerChoice, t0: Instant) -> Result<Value> {
    let name = sampler.name();
    eprintln!(
        "== Rust: {} samples, {}",
        race.plan.samples,
        sampler.label()
    );
    let npz = race.work.join(format!("rust-{name}.npz"));
    let mut extra = vec![
        "--checkpoint".to_string(),
        race.run_dir.to_string_lossy().into_owned(),
        "--sample-batch-size".into(),
        "250".into(),
        "--save-samples".into(),
        npz.to_string_lossy().into_owned(),
    ];
    extra.extend(sampler.rust_flags().into_iter().map(String::from));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let result = scorer.score(&extra, &race.work.join(format!("rust-{name}.json")))?;
    let grid = side_grid(race, &npz, "rust", name)?;
    let mut summary = score_summary(&result);
    summary["seconds_sample_and_score"] = json!(t0.elapsed().as_secs_f64());
    summary["grid"] = grid;
    Ok(summary)
}

/// Scores the peer's samples with `sampler` and draws their grid into the report's folder;
/// `peer_result` says how long the peer took to draw them.
fn score_peer(
    race: &Race,
    scorer: &Scorer,
    sampler: SamplerChoice,
    peer_result: &Value,
) -> Result<Value> {
    let name = sampler.name();
    let n = race.plan.samples;
    eprintln!("== PyTorch: scoring its {n} samples, {}", sampler.label());
    let npz = race.peer_dir.join(format!("samples-{name}.npz"));
    let result = scorer.score(
        &["--samples", &npz.to_string_lossy()],
        &race.work.join(format!("peer-{name}.json")),
    )?;
    let grid = side_grid(race, &npz, "pytorch", name)?;
    let mut summary = score_summary(&result);
    summary["seconds_sample"] = peer_result["samplers"][name]["seconds"].clone();
    summary["grid"] = grid;
    Ok(summary)
}

/// Writes the grid of `npz` beside the report as `STEM-SIDE-SAMPLER.png`; returns its file name
/// for the report.
fn side_grid(race: &Race, npz: &Path, side: &str, sampler: &str) -> Result<Value> {
    let grid = race
        .plan
        .out_dir
        .join(format!("{}-{side}-{sampler}.png", race.plan.stem));
    write_grid(npz, &grid)?;
    Ok(json!(grid
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())))
}

/// Runs `ddpm eval fid` against the reference features with the race's N and seed.
struct Scorer<'a> {
    ddpm: &'a Path,
    threads: usize,
    reference: PathBuf,
    n: String,
    seed: String,
}

impl<'a> Scorer<'a> {
    /// Computes the reference: the Inception features of the first N Fashion-MNIST test images.
    fn with_reference(race: &'a Race) -> Result<Self> {
        let n = race.plan.samples;
        let scorer = Scorer {
            ddpm: &race.ddpm,
            threads: race.threads,
            reference: race.work.join("ref-test-features.npz"),
            n: n.to_string(),
            seed: race.args.seed.to_string(),
        };
        eprintln!(
            "== the reference: Inception features of the first {n} Fashion-MNIST test images"
        );
        run_checked(eval_cmd(scorer.ddpm, "stats", scorer.threads).args([
            "--dataset",
            "fashion-mnist",
            "--split",
            "test",
            "--data",
            &race.data_dir.to_string_lossy(),
            "--offline",
            "--n",
            &scorer.n,
            "--features",
            "--out",
            &scorer.reference.to_string_lossy(),
        ]))?;
        Ok(scorer)
    }

    /// `ddpm eval fid --ref REFERENCE --n N --seed SEED --out JSON_OUT EXTRA…`, and its JSON.
    fn score(&self, extra: &[&str], json_out: &Path) -> Result<Value> {
        let mut cmd = eval_cmd(self.ddpm, "fid", self.threads);
        cmd.args(["--ref", &self.reference.to_string_lossy(), "--n", &self.n])
            .args(["--seed", &self.seed])
            .args(["--out", &json_out.to_string_lossy()])
            .args(extra);
        run_checked(&mut cmd)?;
        read_json(json_out)
    }
}

/// `ddpm eval …` with the Inception settings every score of the race shares.
fn eval_cmd(ddpm: &Path, sub: &str, threads: usize) -> Command {
    let mut cmd = Command::new(ddpm);
    cmd.current_dir(root()).args([
        "eval",
        sub,
        "--resize",
        "pytorch",
        "--device",
        "cpu",
        "--threads",
        &threads.to_string(),
    ]);
    cmd
}

/// Reads a JSON file (the `--out` of `ddpm eval fid`, the run's `config.json`, the peer's result).
pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// FID and KID of a score, for the report.
pub(super) fn score_summary(fid_json: &Value) -> Value {
    json!({
        "fid": fid_json["fid"],
        "kid": fid_json["kid"]["mean"],
        "kid_std": fid_json["kid"]["std"],
        "n": fid_json["samples"]["n"],
    })
}

/// A PNG grid of the first 64 images of a uint8 NHWC `.npz` (`arr_0`), 8 per row, ×2.
fn write_grid(npz: &Path, png: &Path) -> Result<()> {
    let images = data::images::read_samples_npz(npz)?;
    let [n, c, h, w] = images.shape;
    let n = n.min(64);
    let spec = data::images::GridSpec {
        scale: 2,
        ..Default::default()
    };
    data::images::make_grid(&images.pixels[..n * c * h * w], [n, c, h, w], &spec)?.save_png(png)?;
    Ok(())
}
