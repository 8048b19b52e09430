//! The bench's report: the JSON as measured and its markdown tables.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

use super::{today, BenchArgs};

/// Writes the report as `DATE-DEVICE[-bf16][-STEPS].json` and `.md` into `--out`.
pub(super) fn write_report(
    args: &BenchArgs,
    root: &Path,
    device_tag: &str,
    report: &Value,
) -> Result<()> {
    let out_dir = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            root.join("target/bench-quick")
        } else {
            root.join("docs/results")
        }
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // A partial run (--cases, --steps) gets its own file, so it never replaces a full report.
    let part = |names: &[String]| match names.is_empty() {
        true => String::new(),
        false => format!("-{}", names.join("+")),
    };
    let stem = format!(
        "{}-{device_tag}{}{}{}",
        today(),
        if args.bf16 { "-bf16" } else { "" },
        part(&args.cases),
        part(&args.steps)
    );
    let json_path = out_dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = out_dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, markdown(report))
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    eprintln!("== wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

/// The report as markdown tables.
pub fn markdown(r: &Value) -> String {
    let mut s = format!(
        "# Benchmark report {} ({})\n\n- device: {}\n- commit: {}, {} profile, {} threads{}\n- PyTorch peer: {}, same libtorch as the Rust side\n- {} timed rounds per step after warm-up; Rust and PyTorch steps alternate (both orders), ratios are medians of per-round ratios\n\n",
        r["date"].as_str().unwrap_or_default(),
        r["mode"].as_str().unwrap_or_default(),
        r["device"].as_str().unwrap_or_default(),
        r["commit"].as_str().unwrap_or_default(),
        r["profile"].as_str().unwrap_or_default(),
        r["threads"],
        if r["bf16"].as_bool() == Some(true) { ", bf16 autocast" } else { "" },
        r["pytorch"].as_str().unwrap_or_default(),
        r["rounds"],
    );
    s += &side_by_side_table(r);
    if let Some(best) = r["optimizer_step_vs_best_peer"].as_f64() {
        s += &format!(
            "\nThe optimizer step (gradient norm and clipping, Adam, EMA) against PyTorch's faster of `torch.optim.Adam(foreach=True)` and `(fused=True)`: **{best:.3}**.\n"
        );
    }
    let best = r["sampling_vs_best_layout"]
        .as_array()
        .into_iter()
        .flatten();
    let rows: String = best
        .map(|x| {
            format!(
                "| {} | {} | {} | {} | {} | **{}** |\n",
                x["case"].as_str().unwrap_or_default(),
                x["step"].as_str().unwrap_or_default(),
                x["batch"],
                x["layout"].as_str().unwrap_or_default(),
                x["peer_layout"].as_str().unwrap_or_default(),
                f(&x["ratio_median"], 3),
            )
        })
        .collect();
    if !rows.is_empty() {
        s += "\n## Sampling steps against PyTorch's faster layout\n\nRust runs the network in the layout `ddpm sample` loads it in; the peer runs in NCHW and in channels-last, and each step is set against the faster of the two (the larger Rust/PyTorch ratio).\n\n| model | step | batch | Rust layout | PyTorch's faster layout | Rust/PyTorch |\n|---|---|---:|---|---|---:|\n";
        s += &rows;
    }
    let loops = r["loop_overhead"].as_array().into_iter().flatten();
    let rows: String = loops
        .map(|x| {
            format!(
                "| {} | {} | {} | {} | **{}** |\n",
                x["case"].as_str().unwrap_or_default(),
                x["batch"],
                f(&x["loop_ms_median"], 1),
                f(&x["bare_ms_median"], 1),
                f(&x["ratio_median"], 3),
            )
        })
        .collect();
    if !rows.is_empty() {
        s += "\n## The training loop against the bare step (Rust)\n\n`loop_step` is `Trainer::train_step` on loader batches (data, reseeding, t/ε draws, the NaN guard's device-side check, clipping, EMA); `train_step` is forward + loss + backward + Adam on a batch already in memory.\n\n| model | batch | loop ms | bare ms | loop/bare |\n|---|---:|---:|---:|---:|\n";
        s += &rows;
    }
    let fid = &r["fid_extraction"];
    if !fid.is_null() {
        s += &format!(
            "\n## FID feature extraction (TF resize to 299 + Inception-v3, batch {})\n\n| images | Rust img/s | Python torch img/s | Rust/Python |\n|---:|---:|---:|---:|\n| {} | {} | {} | **{}** |\n",
            fid["batch_size"],
            fid["n"],
            f(&fid["rust_images_per_s_median"], 2),
            f(&fid["python_images_per_s_median"], 2),
            f(&fid["ratio_median"], 3),
        );
    }
    match &r["criterion"] {
        Value::Array(rows) => {
            s += "\n## Criterion benches\n\n| bench | mean ms | median ms | elements/s |\n|---|---:|---:|---:|\n";
            for x in rows {
                s += &format!(
                    "| {} | {} | {} | {} |\n",
                    x["id"].as_str().unwrap_or_default(),
                    f(&x["mean_ms"], 2),
                    f(&x["median_ms"], 2),
                    f(&x["elements_per_s"], 0),
                );
            }
        }
        Value::String(text) => s += &format!("\n## Criterion benches\n\n{text}\n"),
        _ => {}
    }
    s
}

/// The step-by-step table of every side-by-side record.
fn side_by_side_table(r: &Value) -> String {
    let mut s = String::from("## Rust vs PyTorch eager, step by step\n\nThe peer computes the same function as the Rust model; for the SimpleUnet, `unfolded` rows time the notebook's own form of its first up block (a convolution of cat([x, x])), which the Rust model computes as one convolution of x with the kernel halves summed.\n\n| model | step | peer | batch | Rust layout | PyTorch layout | Rust ms | PyTorch ms | Rust img/s | PyTorch img/s | Rust/PyTorch |\n|---|---|---|---:|---|---|---:|---:|---:|---:|---:|\n");
    for x in r["side_by_side"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |\n",
            x["case"].as_str().unwrap_or_default(),
            x["step"].as_str().unwrap_or_default(),
            x["peer"].as_str().unwrap_or("same function"),
            x["batch"],
            x["layout"].as_str().unwrap_or_default(),
            // Reports before the peer ran in a layout of its own used the Rust one.
            x["peer_layout"]
                .as_str()
                .or(x["layout"].as_str())
                .unwrap_or_default(),
            f(&x["rust_ms_median"], 1),
            f(&x["pytorch_ms_median"], 1),
            f(&x["rust_images_per_s"], 1),
            f(&x["pytorch_images_per_s"], 1),
            f(&x["ratio_median"], 3),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_markdown_shows_every_ratio() {
        let report = json!({
            "date": "2026-11-28", "mode": "full", "device": "cpu", "commit": "abc",
            "profile": "release", "threads": 2, "bf16": false, "pytorch": "2.11.0", "rounds": 3,
            "side_by_side": [{"case": "simple_unet", "step": "train_step", "batch": 128,
                "layout": "nchw", "rust_ms_median": 900.0, "pytorch_ms_median": 1000.0,
                "rust_images_per_s": 142.2, "pytorch_images_per_s": 128.0, "ratio_median": 0.9}],
            "loop_overhead": [{"case": "simple_unet", "batch": 128, "loop_ms_median": 1010.0,
                "bare_ms_median": 1000.0, "ratio_median": 1.01}],
            "optimizer_step_vs_best_peer": 0.95,
            "sampling_vs_best_layout": [{"case": "ddpm_unet", "step": "ddim_step", "batch": 16,
                "layout": "channels_last", "peer_layout": "nchw", "ratio_median": 0.931}],
            "fid_extraction": {"n": 200, "batch_size": 50, "rust_images_per_s_median": 10.0,
                "python_images_per_s_median": 9.5, "ratio_median": 1.053},
            "criterion": [{"id": "data/pipeline", "mean_ms": 1.5, "median_ms": 1.4,
                "elements_per_s": 90000.0}],
        });
        let md = markdown(&report);
        for needle in [
            "**0.900**",
            "| ddpm_unet | ddim_step | 16 | channels_last | nchw | **0.931** |",
            "| simple_unet | train_step | same function | 128 | nchw | nchw | 900.0 |",
            "**1.010**",
            "**1.053**",
            "faster of `torch.optim.Adam(foreach=True)` and `(fused=True)`: **0.950**",
            "| data/pipeline | 1.50 |",
        ] {
            assert!(md.contains(needle), "{needle} missing from\n{md}");
        }
    }
}
