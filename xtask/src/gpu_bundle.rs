//! `cargo xtask gpu-bundle`: everything a GPU machine without cargo needs to check and time this
//! project in one run, as one archive.
//!
//! The archive (`target/gpu-bundle/ddpm-gpu-bundle.tar.gz`) unpacks to `ddpm-gpu-bundle/` with
//!
//! - `bin/ddpm`, `bin/bench_serve`, `bin/checkpoint_memory`: release builds with the `cuda`
//!   features (`ddpm train --cuda-graph`, the CUDA memory counters);
//! - `tests/`: the `cuda-tests` test binaries (torch-ext, the model's CUDA tests, CUDA-graph
//!   training), `tests.json` the filters each one runs with, `fixtures/model/` the model tests'
//!   fixtures (found through `DDPM_MODEL_FIXTURES`);
//! - `scripts/`: the PyTorch peer (`bench/peer.py` and the `golden/` models it imports) and the
//!   driver (`bundle/run.py`); `pylib/`: this machine's pure-Python packages that the peer needs
//!   beyond torch (diffusers and its dependencies), used only where the GPU machine lacks them;
//! - `run.sh`: sets `LD_LIBRARY_PATH` to the python's torch `lib/` and runs `run.py`, which
//!   writes `gpu-report.json` within 10 minutes (see its docs). `run.sh --cpu-smoke` runs the
//!   same pipeline on the CPU with tiny counts; `cargo xtask gpu-bundle` ends with that smoke run
//!   of the unpacked archive unless `--no-smoke`.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{cargo, root, run_checked};

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Where the archive goes (default: target/gpu-bundle/ddpm-gpu-bundle.tar.gz).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the final `run.sh --cpu-smoke` of the unpacked archive.
    #[arg(long)]
    no_smoke: bool,
}

/// The test binaries the bundle carries: (package, target kind, target name, name in the
/// bundle, the filters it runs with).
const TESTS: [(&str, &str, &str, &str, &[&str]); 3] = [
    (
        "torch-ext",
        "lib",
        "torch_ext",
        "torch_ext",
        &["cuda", "nccl"],
    ),
    ("model", "test", "cuda", "model_cuda", &[]),
    ("train", "test", "cuda_graph", "train_cuda_graph", &[]),
];

/// Python packages the peer imports beyond torch and its own dependencies; compiled ones
/// (numpy, Pillow) are left to the GPU machine, whose python may be another version.
const PYLIB: [&str; 17] = [
    "diffusers",
    "huggingface_hub",
    "safetensors",
    "packaging",
    "filelock",
    "tqdm",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset_normalizer",
    "yaml",
    "httpx2",
    "httpcore2",
    "anyio",
    "h11",
    "truststore",
];

pub fn run(args: BundleArgs) -> Result<()> {
    let root = root();
    crate::setup::setup(&root)?;
    let python = crate::bench::python(&root)?;

    eprintln!("== building ddpm, bench_serve and checkpoint_memory (release, feature cuda)");
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "cli",
        "--bin",
        "ddpm",
        "-p",
        "train",
        "--example",
        "bench_serve",
        "-p",
        "model",
        "--example",
        "checkpoint_memory",
        "--features",
        "cli/cuda,train/cuda,model/cuda",
    ]))?;

    eprintln!("== building the cuda-tests test binaries");
    let tests = test_binaries()?;

    let staging_root = root.join("target/gpu-bundle");
    stage_bundle(
        &root,
        &python,
        &tests,
        &staging_root.join("ddpm-gpu-bundle"),
    )?;

    let archive = args
        .out
        .unwrap_or_else(|| staging_root.join("ddpm-gpu-bundle.tar.gz"));
    eprintln!("== packing {}", archive.display());
    if let Some(dir) = archive.parent() {
        std::fs::create_dir_all(dir)?;
    }
    run_checked(
        Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&staging_root)
            .arg("ddpm-gpu-bundle"),
    )?;

    if !args.no_smoke {
        smoke(&archive, &python, &staging_root)?;
    }
    eprintln!(
        "== {} ({:.0} MiB): unpack it on the GPU machine and run ddpm-gpu-bundle/run.sh",
        archive.display(),
        std::fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Lays the bundle out in `stage`: the stripped binaries and test binaries, their filters, the
/// fixtures and scripts, run.sh, the vendored python packages and `bundle.json`.
fn stage_bundle(root: &Path, python: &Path, tests: &[PathBuf], stage: &Path) -> Result<()> {
    if stage.exists() {
        std::fs::remove_dir_all(stage)
            .with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let release = root.join("target/release");
    copy_stripped(&release.join("ddpm"), &stage.join("bin/ddpm"))?;
    for example in ["bench_serve", "checkpoint_memory"] {
        copy_stripped(
            &release.join("examples").join(example),
            &stage.join("bin").join(example),
        )?;
    }
    let mut filters = serde_json::Map::new();
    for ((_, _, _, name, args), path) in TESTS.iter().zip(tests) {
        copy_stripped(path, &stage.join("tests").join(name))?;
        filters.insert(name.to_string(), json!(args));
    }
    write(
        &stage.join("tests.json"),
        &serde_json::to_string_pretty(&Value::Object(filters))?,
    )?;
    copy_dir(
        &root.join("crates/model/tests/fixtures"),
        &stage.join("fixtures/model"),
    )?;
    for script in [
        "scripts/bench/peer.py",
        "scripts/bench/unet_torch.py",
        "scripts/bench/checkpoint_memory_peer.py",
        "scripts/golden/model_diffusers.py",
        "scripts/golden/model_simple.py",
        "scripts/bundle/run.py",
        "scripts/bundle/peer_with_fallback.py",
    ] {
        copy(&root.join(script), &stage.join(script))?;
    }
    copy(&root.join("scripts/bundle/run.sh"), &stage.join("run.sh"))?;
    vendor_pylib(python, &stage.join("pylib"))?;
    write(
        &stage.join("bundle.json"),
        &serde_json::to_string_pretty(&json!({
            "commit": crate::git(root, &["describe", "--always", "--dirty", "--abbrev=12"]),
            "built_on": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            "libtorch": "2.11.0 (the build's .libtorch)",
            "tests": TESTS.iter().map(|t| t.3).collect::<Vec<_>>(),
        }))?,
    )?;
    Ok(())
}

/// Unpacks `archive` into a temporary folder, runs `run.sh --cpu-smoke` there, checks its report
/// and keeps it beside the archive's staging folder.
fn smoke(archive: &Path, python: &Path, staging_root: &Path) -> Result<()> {
    eprintln!("== run.sh --cpu-smoke on the unpacked archive");
    let unpacked = tempfile::tempdir()?;
    run_checked(
        Command::new("tar")
            .arg("-xzf")
            .arg(archive)
            .arg("-C")
            .arg(unpacked.path()),
    )?;
    let dir = unpacked.path().join("ddpm-gpu-bundle");
    let report = dir.join("gpu-report.json");
    run_checked(
        Command::new(dir.join("run.sh"))
            // torch.compile of the U-Net takes minutes on a small CPU: the smoke leaves it out.
            .args(["--cpu-smoke", "--skip-compile", "--out"])
            .arg(&report)
            .env("PYTHON", python)
            .env_remove("LD_LIBRARY_PATH"),
    )?;
    let text = std::fs::read_to_string(&report)?;
    check_smoke_report(&serde_json::from_str(&text)?)?;
    let kept = staging_root.join("cpu-smoke-report.json");
    std::fs::write(&kept, &text)?;
    eprintln!("== smoke run passed; its report: {}", kept.display());
    Ok(())
}

/// Every piece of a `--cpu-smoke` report ran: doctor, each test binary listed, the training and
/// sampling servers answered (the CUDA graph one refuses the CPU with its clear error).
fn check_smoke_report(report: &Value) -> Result<()> {
    ensure!(report["mode"] == "cpu-smoke", "not a smoke report");
    ensure!(
        report["doctor"]["ok"] == true && report["doctor"]["json"]["libtorch_version"].is_string(),
        "ddpm doctor failed or printed no JSON: {}",
        report["doctor"]["output_tail"]
    );
    for (_, _, _, name, _) in TESTS {
        ensure!(
            report["cuda_tests"][name]["ok"] == true,
            "test binary {name} did not start: {}",
            report["cuda_tests"][name]["output_tail"]
        );
    }
    for run in ["rust_eager", "pytorch_eager_fused_adam"] {
        ensure!(
            report["training"][run]["images_per_s"].is_number(),
            "training run {run}: {}",
            report["training"][run]
        );
    }
    let graph = report["training"]["rust_cuda_graph"]["error"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        graph.contains("CUDA graphs need a CUDA device"),
        "the CUDA-graph run should refuse the CPU clearly, said {graph:?}"
    );
    for run in ["rust", "pytorch"] {
        ensure!(
            report["ddim50_sampling"][run]["images_per_s"].is_number(),
            "sampling run {run}: {}",
            report["ddim50_sampling"][run]
        );
    }
    for side in ["ours", "diffusers"] {
        ensure!(
            report["checkpointing_memory"][format!("{side}_activation_cut")].is_number(),
            "the checkpointing memory runs of {side}: {}",
            report["checkpointing_memory"]
        );
    }
    Ok(())
}

/// Builds the `cuda-tests` test binaries and returns their paths, in [`TESTS`] order.
fn test_binaries() -> Result<Vec<PathBuf>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "torch-ext",
        "-p",
        "model",
        "-p",
        "train",
        "--features",
        "torch-ext/cuda-tests,model/cuda-tests,train/cuda-tests",
    ])
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start cargo test --no-run")?;
    let stdout = child.stdout.take().expect("piped");
    let mut found: Vec<Option<PathBuf>> = vec![None; TESTS.len()];
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || !msg["profile"]["test"].as_bool().unwrap_or(false)
        {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let package = msg["package_id"].as_str().unwrap_or_default();
        for (i, (pkg, kind, name, _, _)) in TESTS.iter().enumerate() {
            let kinds = &msg["target"]["kind"];
            let is_kind = kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == kind));
            let is_package =
                package.contains(&format!("/{pkg}#")) || package.contains(&format!("{pkg} "));
            if is_kind && is_package && msg["target"]["name"] == *name {
                found[i] = Some(PathBuf::from(exe));
            }
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "cargo test --no-run failed");
    found
        .into_iter()
        .zip(TESTS)
        .map(|(path, t)| {
            path.with_context(|| format!("no test binary {} of {} was built", t.2, t.0))
        })
        .collect()
}

/// Copies the [`PYLIB`] packages (and their `.dist-info`, which diffusers' version checks read)
/// from `python`'s site-packages.
fn vendor_pylib(python: &Path, dest: &Path) -> Result<()> {
    let out = Command::new(python)
        .args([
            "-c",
            "import diffusers, os; print(os.path.dirname(os.path.dirname(diffusers.__file__)))",
        ])
        .output()
        .context("cannot ask the set-up's python where diffusers is")?;
    ensure!(out.status.success(), "the set-up's python has no diffusers");
    let site = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    std::fs::create_dir_all(dest)?;
    let entries: Vec<_> = std::fs::read_dir(&site)?.flatten().collect();
    for package in PYLIB {
        let dir = site.join(package);
        if !dir.is_dir() {
            bail!(
                "{} has no {package}: install the peer's packages (scripts/bench/requirements.txt)",
                site.display()
            );
        }
        copy_dir(&dir, &dest.join(package))?;
        // Distributions are named with dashes or underscores, in any case.
        let wanted = package.replace('_', "-").to_lowercase();
        for entry in &entries {
            let name = entry
                .file_name()
                .to_string_lossy()
                .to_lowercase()
                .replace('_', "-");
            if name.starts_with(&format!("{wanted}-")) && name.ends_with(".dist-info") {
                copy_dir(&entry.path(), &dest.join(entry.file_name()))?;
            }
        }
    }
    Ok(())
}

/// [`copy`], then the debug sections dropped (the symbols stay, so a crash still names its
/// function): the release binaries carry line tables, and unstripped the archive is 93 MiB,
/// stripped about 20 MiB, under the 64 MiB a lent machine's working tree may carry.
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    copy(from, to)?;
    run_checked(
        std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg(to),
    )
    .with_context(|| format!("strip {}", to.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_dir(&path, &to.join(entry.file_name()))?;
            }
        } else {
            copy(&path, &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text.to_string() + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smoke_report_needs_every_piece() {
        let mut report = json!({
            "mode": "cpu-smoke",
            "doctor": {"ok": true, "json": {"libtorch_version": "2.11.0+cu130"}},
            "cuda_tests": {"torch_ext": {"ok": true}, "model_cuda": {"ok": true}, "train_cuda_graph": {"ok": true}},
            "training": {
                "rust_eager": {"images_per_s": 3.0},
                "rust_cuda_graph": {"error": "bench_serve: --cuda-graph: CUDA graph: CUDA graphs need a CUDA device, and this run is on Cpu"},
                "pytorch_eager_fused_adam": {"images_per_s": 2.0},
            },
            "ddim50_sampling": {"rust": {"images_per_s": 1.0}, "pytorch": {"images_per_s": 1.0}},
            "checkpointing_memory": {"ours_activation_cut": 2.1, "diffusers_activation_cut": 1.9},
        });
        check_smoke_report(&report).unwrap();
        report["cuda_tests"]["model_cuda"]["ok"] = json!(false);
        assert!(check_smoke_report(&report)
            .unwrap_err()
            .to_string()
            .contains("model_cuda"));
        report["cuda_tests"]["model_cuda"]["ok"] = json!(true);
        report["training"]["rust_cuda_graph"]["error"] = json!("segfault");
        assert!(check_smoke_report(&report).is_err());
        report["training"]["rust_cuda_graph"]["error"] =
            json!("bench_serve: --cuda-graph: CUDA graph: CUDA graphs need a CUDA device");
        report["checkpointing_memory"] = json!({"ours_plain": {"error": "timed out"}});
        assert!(check_smoke_report(&report)
            .unwrap_err()
            .to_string()
            .contains("checkpointing memory"));
    }
}
