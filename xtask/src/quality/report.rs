//! The race's report: the JSON record and its markdown rendering, and the figures read from the
//! Rust run (its final loss).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use super::score::{score_summary, Scores};
use super::train::Trained;
use super::{Plan, Race, RustRun};

/// Everything the report records.
pub(super) struct Record<'a> {
    pub race: &'a Race<'a>,
    pub date: &'a str,
    pub commit: &'a str,
    pub trained: &'a Trained,
    pub rust_run: &'a RustRun,
    /// The peer's `result.json` (null without a peer).
    pub peer_result: &'a Value,
    pub scores: Scores,
    /// Build, after-build and total seconds, and the phases.
    pub seconds: Value,
}

impl Record<'_> {
    /// The report's JSON.
    pub fn into_json(self) -> Value {
        let (race, args, plan) = (self.race, self.race.args, &self.race.plan);
        let (rust, peer) = self.sides();
        json!({
            "date": self.date,
            "commit": self.commit,
            "device": crate::bench::describe_device("cpu", race.threads).0,
            "mode": if args.quick { "quick" } else { "full" },
            "preset": args.preset,
            "sets": args.sets,
            "minutes": plan.minutes,
            "samples": plan.samples,
            "threads": race.threads,
            "concurrent": args.concurrent,
            "seed": args.seed,
            "profile": args.profile,
            "samplers": plan.samplers.iter().map(|s| json!({"name": s.name(), "label": s.label(), "config": s.peer_config()})).collect::<Vec<_>>(),
            "config": self.rust_run.config,
            "floor": score_summary(&self.scores.floor),
            "rust": rust,
            "pytorch": peer,
            "seconds": self.seconds,
        })
    }

    /// The Rust side's figures and the peer's (null without one).
    fn sides(&self) -> (Value, Value) {
        let (run, trained, peer_result) = (self.rust_run, self.trained, self.peer_result);
        let per_s = |steps: f64, seconds: f64| steps * run.batch as f64 / seconds;
        let rust = json!({
            "steps": run.steps,
            "images": run.steps * run.batch,
            "train_seconds": trained.rust_seconds,
            "images_per_s": per_s(run.steps as f64, trained.rust_seconds),
            "final_loss": run.final_loss,
            "load_average": trained.rust_load,
            "scores": self.scores.rust,
        });
        let peer = if self.race.python.is_some() {
            let steps = peer_result["steps"].as_f64().unwrap_or(f64::NAN);
            json!({
                "steps": peer_result["steps"],
                "images": peer_result["images"],
                "train_seconds": trained.peer_seconds,
                "images_per_s": per_s(steps, trained.peer_seconds.unwrap_or(f64::NAN)),
                "final_loss": peer_result["final_loss"],
                "skipped_steps": peer_result["skipped_steps"],
                "torch": peer_result["torch"],
                "load_average": trained.peer_load,
                "scores": self.scores.peer,
            })
        } else {
            Value::Null
        };
        (rust, peer)
    }
}

/// Writes `STEM.json` and `STEM.md` into the report's folder; returns their paths.
pub(super) fn write(plan: &Plan, report: &Value) -> Result<(PathBuf, PathBuf)> {
    let json_path = plan.out_dir.join(format!("{}.json", plan.stem));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = plan.out_dir.join(format!("{}.md", plan.stem));
    std::fs::write(&md_path, markdown(report))
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    Ok((json_path, md_path))
}

/// The step of the newest checkpoint under `<run>/checkpoints` (`step-00000229`).
pub(super) fn last_checkpoint_step(run_dir: &Path) -> Option<u64> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
}

/// The mean loss of the metrics records of the last `last_steps` steps of a run (each record is
/// the mean over the `log_every` steps before it), and the step of the last record.
pub(super) fn final_loss(metrics_jsonl: &str, last_steps: u64) -> Option<(f64, u64)> {
    let records: Vec<Value> = metrics_jsonl
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = records.last()?["step"].as_u64()?;
    let losses: Vec<f64> = records
        .iter()
        .filter(|r| r["step"].as_u64().is_some_and(|s| s + last_steps > last))
        .filter_map(|r| r["loss"].as_f64())
        .collect();
    (!losses.is_empty()).then(|| (losses.iter().sum::<f64>() / losses.len() as f64, last))
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

/// The hyper-parameters both sides train with, from the Rust run's resolved configuration.
fn recipe_rows(c: &Value) -> Vec<(&'static str, String)> {
    let o = &c["optim"];
    let warmup = match o["warmup_steps"].as_u64() {
        Some(0) | None => "none".to_string(),
        Some(w) => format!("linear over {w} updates"),
    };
    vec![
        (
            "dataset",
            format!("{}, transform {}", c["dataset"], c["transform"]),
        ),
        ("network", c["model"].to_string()),
        ("schedule", c["schedule"].to_string()),
        ("objective", c["objective"].to_string()),
        ("batch", c["batch_size"].to_string()),
        (
            "optimizer",
            format!(
                "{} lr {} (β₁ {}, β₂ {}, ε {}, weight decay {}), warm-up {warmup}, decay {}",
                o["kind"].as_str().unwrap_or_default(),
                o["lr"],
                o["beta1"],
                o["beta2"],
                o["eps"],
                o["weight_decay"],
                o["decay"].as_str().unwrap_or_default(),
            ),
        ),
        ("gradient clip", format!("global norm {}", o["grad_clip"])),
        (
            "EMA",
            format!(
                "decay {}{}",
                c["ema"]["decay"],
                if c["ema"]["warmup"] == true {
                    ", warm-up min(d, (1 + n)/(10 + n))"
                } else {
                    ""
                }
            ),
        ),
        ("precision", c["precision"].to_string()),
    ]
}

/// The report as markdown.
pub(super) fn markdown(r: &Value) -> String {
    let samplers: Vec<(String, String)> = r["samplers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            (
                x["name"].as_str().unwrap_or_default().to_string(),
                x["label"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut s = header(r);
    s += &score_table(r, &samplers);
    s += &floor_and_grids(r, &samplers);
    s += &recipe_and_time(r);
    s
}

/// The title and the set-up in a list.
fn header(r: &Value) -> String {
    format!(
        "# Quality race {} ({})\n\n- device: {}\n- commit: {}, `ddpm` {} profile, {} threads each side, {}\n- preset `{}`{}; {} minutes of wall-clock training per side (SIGTERM at the deadline, previews off), seed {}\n- {} EMA samples per sampler, scored with `ddpm eval fid --resize pytorch` against the Inception features of the first {} Fashion-MNIST test images\n\n",
        r["date"].as_str().unwrap_or_default(),
        r["mode"].as_str().unwrap_or_default(),
        r["device"].as_str().unwrap_or_default(),
        r["commit"].as_str().unwrap_or_default(),
        r["profile"].as_str().unwrap_or_default(),
        r["threads"],
        if r["pytorch"].is_null() {
            "the Rust side only (--no-peer)"
        } else if r["concurrent"] == true {
            "both sides at the same time"
        } else {
            "one side after the other"
        },
        r["preset"].as_str().unwrap_or_default(),
        match r["sets"].as_array() {
            Some(sets) if !sets.is_empty() => format!(
                " with {}",
                sets.iter()
                    .map(|v| format!("`--set {}`", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        },
        r["minutes"],
        r["seed"],
        r["samples"],
        r["samples"],
    )
}

/// One row per side: steps, speed, final loss, and FID and KID with each sampler.
fn score_table(r: &Value, samplers: &[(String, String)]) -> String {
    let mut s = String::new();
    s += "| side | steps | images/s | final loss |";
    for (_, label) in samplers {
        s += &format!(" FID {label} | KID ×10³ |");
    }
    s += " load average (before, after) |\n|---|---:|---:|---:|";
    for _ in samplers {
        s += "---:|---:|";
    }
    s += "---|\n";
    for (side, name) in [
        ("rust", "Rust (`ddpm train`)"),
        ("pytorch", "PyTorch (`train_peer.py`)"),
    ] {
        let x = &r[side];
        if x.is_null() {
            continue;
        }
        s += &format!(
            "| {name} | {} | {} | {} |",
            x["steps"],
            f(&x["images_per_s"], 1),
            f(&x["final_loss"], 4)
        );
        for (sampler, _) in samplers {
            let sc = &x["scores"][sampler];
            let kid = sc["kid"]
                .as_f64()
                .map(|k| json!(k * 1e3))
                .unwrap_or(Value::Null);
            s += &format!(" **{}** | {} |", f(&sc["fid"], 1), f(&kid, 2));
        }
        let load = &x["load_average"];
        s += &format!(" {}, {} |\n", f(&load[0], 2), f(&load[1], 2));
    }
    s
}

/// The floor's FID, what the columns mean, and the links to the grids.
fn floor_and_grids(r: &Value, samplers: &[(String, String)]) -> String {
    let mut s = String::new();
    let floor = &r["floor"];
    s += &format!(
        "\nThe floor (the first {} training images against the reference): FID **{}**, KID ×10³ {}.\n",
        r["samples"],
        f(&floor["fid"], 1),
        f(&floor["kid"].as_f64().map_or(Value::Null, |k| json!(k * 1e3)), 2)
    );
    s += "\nFinal loss: the mean training loss of the last 100 steps. Images/s: steps × batch over the wall time from the start of the process to the signal (start-up included).\n";
    s += "\n## Grids (first 64 samples)\n\n";
    for (side, name) in [("rust", "Rust"), ("pytorch", "PyTorch")] {
        for (sampler, label) in samplers {
            if let Some(grid) = r[side]["scores"][sampler]["grid"].as_str() {
                s += &format!("- {name}, {label}: [`{grid}`]({grid})\n");
            }
        }
    }
    s
}

/// The recipe both sides trained with, and where the time went.
fn recipe_and_time(r: &Value) -> String {
    let mut s = String::new();
    s += "\n## The recipe (both sides, from the Rust run's `config.json`)\n\n| | |\n|---|---|\n";
    for (k, v) in recipe_rows(&r["config"]) {
        s += &format!("| {k} | `{}` |\n", v.replace('|', "\\|"));
    }
    let secs = &r["seconds"];
    s += &format!(
        "\n## Time\n\n{} s in all: {} s building `ddpm`, {} s after it",
        f(&secs["total"], 0),
        f(&secs["build"], 0),
        f(&secs["after_build"], 0)
    );
    if let Some(phases) = secs["phases"].as_object() {
        let parts: Vec<String> = phases
            .iter()
            .map(|(k, v)| format!("{k} {}", f(v, 0)))
            .collect();
        s += &format!(" ({} s)", parts.join(", "));
    }
    s += ".\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_loss_is_the_mean_of_the_last_hundred_steps() {
        let lines: String = (1..=30)
            .map(|i| format!("{{\"step\":{},\"loss\":{}}}\n", i * 10, i as f64))
            .collect();
        // Records at steps 210..=300 cover the last 100 steps: losses 21..=30.
        let (loss, step) = final_loss(&lines, 100).unwrap();
        assert_eq!(step, 300);
        assert!((loss - 25.5).abs() < 1e-12, "{loss}");
        assert_eq!(final_loss("", 100), None);
        // A run shorter than the window averages everything it logged.
        assert_eq!(
            final_loss("{\"step\":10,\"loss\":2.0}\n", 100),
            Some((2.0, 10))
        );
    }

    #[test]
    fn the_markdown_shows_every_figure() {
        let side = |fid: f64, steps: u64| {
            json!({"steps": steps, "images_per_s": 400.0, "final_loss": 0.0791,
                "load_average": [2.0, 2.5],
                "scores": {"ddim50": {"fid": fid, "kid": 0.0123, "grid": format!("g-{steps}.png")}}})
        };
        let report = json!({
            "date": "2026-12-01", "mode": "full", "device": "cpu", "commit": "abc",
            "profile": "release", "threads": 2, "preset": "fashion-mnist",
            "sets": ["schedule.n_steps=1000"], "minutes": 30.0, "samples": 2000, "seed": 0,
            "samplers": [{"name": "ddim50", "label": "DDIM-50 (η = 0, leading)"}],
            "config": config(),
            "floor": {"fid": 3.21, "kid": 0.0001},
            "rust": side(41.04, 10821), "pytorch": side(43.5, 11000),
            "seconds": {"total": 4000.0, "build": 10.0, "after_build": 3990.0,
                "phases": {"rust_train": 1800.0}},
        });
        let md = markdown(&report);
        for needle in [
            "| Rust (`ddpm train`) | 10821 | 400.0 | 0.0791 | **41.0** | 12.30 | 2.00, 2.50 |",
            "| PyTorch (`train_peer.py`) | 11000 |",
            "**43.5**",
            "FID **3.2**",
            "`--set schedule.n_steps=1000`",
            "[`g-10821.png`](g-10821.png)",
            "| optimizer | `adam lr 0.002 (β₁ 0.9, β₂ 0.999, ε 1e-7, weight decay 0.0), warm-up linear over 200 updates, decay constant` |",
            "| EMA | `decay 0.995, warm-up min(d, (1 + n)/(10 + n))` |",
            "rust_train 1800",
        ] {
            assert!(md.contains(needle), "{needle} missing from\n{md}");
        }
        assert!(md.contains("one side after the other"), "{md}");
        let mut concurrent = report.clone();
        concurrent["concurrent"] = json!(true);
        assert!(markdown(&concurrent).contains("both sides at the same time"));
        // Without a peer, its row is left out.
        let mut rust_only = report.clone();
        rust_only["pytorch"] = Value::Null;
        let md = markdown(&rust_only);
        assert!(!md.contains("PyTorch (`train_peer.py`)"), "{md}");
        assert!(md.contains("the Rust side only"), "{md}");
    }

    pub(super) fn config() -> Value {
        json!({
            "dataset": {"kind": "fashion-mnist", "split": "train"},
            "transform": {"size": null, "flip_p": 0.5, "normalize": true},
            "batch_size": 64,
            "model": {"arch": "simple", "down_channels": [16, 32, 64]},
            "schedule": {"kind": "linear", "n_steps": 300, "start": 0.0001, "end": 0.02},
            "objective": {"prediction": "eps", "loss": "l2"},
            "optim": {"kind": "adam", "lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                "weight_decay": 0.0, "warmup_steps": 200, "decay": "constant", "min_lr": 0.0,
                "grad_clip": 1.0},
            "ema": {"decay": 0.995, "warmup": true},
            "precision": "bf16",
        })
    }
}
