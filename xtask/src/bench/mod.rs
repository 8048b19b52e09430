//! `cargo xtask bench`: every benchmark in one command, with PyTorch eager beside ours.
//!
//! 1. The criterion benches (`data` pipeline, `train` U-Nets and step, `sample` steps): full
//!    runs in the release profile, whose estimates go into the report; with `--quick`, each bench
//!    runs once in the dev profile (`cargo test --benches`), a smoke test.
//! 2. Side by side, step by step: the Rust server (`crates/train/examples/bench_serve.rs`) and the
//!    PyTorch eager one (`scripts/bench/peer.py`, the set-up's torch, which is the libtorch the
//!    Rust code links) each build the same case; single requests alternate between the two (in
//!    both orders) so that both run under the same background load, and each round gives one
//!    Rust/PyTorch ratio; the report gives the medians. Steps: inference forward, training step,
//!    DDPM and DDIM sampling steps, and one step of each other solver family (DPM-Solver++ 2M
//!    and 3M, UniPC, Euler, Heun, PLMS; the peer runs diffusers' scheduler of the same name),
//!    for the notebook's SimpleUnet and the paper's U-Net; the
//!    optimizer step (clipping, Adam, EMA) for the paper's U-Net's 35.7M parameters, against
//!    `torch.optim.Adam(foreach=True)` and `(fused=True)`; and the full training loop's step
//!    (`Trainer::train_step` fed by the loader) against the bare step, both in the Rust process.
//!    The sampling steps (the forward pass and the solvers') run on a second Rust server whose
//!    network is in the layout `ddpm sample` loads it in (`--sampling`), against the peer in
//!    NCHW and in channels-last; the report sets each against the faster of the two.
//! 3. FID feature extraction (TF resize to 299 + Inception-v3): `ddpm eval stats` against the
//!    same TorchScript from Python torch (`scripts/bench/fid_pytorch.py`), alternating.
//!
//! Writes `docs/results/<date>-<device>.json` and `.md` (with `--quick`:
//! `target/bench-quick/`, so that a smoke run never lands in the committed reports).

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::SystemTime;

use crate::{cargo, root, run_checked};

mod report;
use report::write_report;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A smoke run: dev profile, small batches, two rounds, criterion benches run once each.
    #[arg(long)]
    quick: bool,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op threads for both sides (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed rounds per step (default 10, or 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// bf16 autocast for the networks (CUDA only), both sides.
    #[arg(long)]
    bf16: bool,
    /// Only these side-by-side steps (comma-separated: forward, train_step, ddpm_step,
    /// ddim_step, dpmpp_2m_step, dpmpp_3m_step, unipc_bh2_step, euler_step, heun_step,
    /// plms_step, optimizer_step, loop_step); default all.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<String>,
    /// The batch size of every side-by-side case (default: the mode's, see `--cases`).
    #[arg(long)]
    batch: Option<usize>,
    /// Only these side-by-side cases (comma-separated: simple_unet, ddpm_unet, and
    /// ddpm_unet_256, the 256² presets' 114M U-Net at batch 1 on the CPU, which runs only when
    /// named); default simple_unet and ddpm_unet.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Skip the criterion benches.
    #[arg(long)]
    no_criterion: bool,
    /// Skip FID feature extraction.
    #[arg(long)]
    no_fid: bool,
    /// Where the report goes (default: docs/results, or target/bench-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One side-by-side case: a model at a batch size.
struct Case {
    name: &'static str,
    batch: usize,
}

/// The side-by-side steps besides [`SAMPLING_STEPS`] that `--steps` may name.
const OTHER_STEPS: [&str; 3] = ["train_step", "optimizer_step", "loop_step"];

/// The steps of sampling: timed on the network in the layout `ddpm sample` loads it in
/// (`ModelConfig::inference_memory_format`, `bench_serve --sampling`) against the peer in each
/// layout, NCHW and channels-last. The others run in the training layout on both sides.
const SAMPLING_STEPS: [&str; 9] = [
    "forward",
    "ddpm_step",
    "ddim_step",
    "dpmpp_2m_step",
    "dpmpp_3m_step",
    "unipc_bh2_step",
    "euler_step",
    "heun_step",
    "plms_step",
];

/// The layouts the peer runs the sampling steps in.
const PEER_LAYOUTS: [&str; 2] = ["nchw", "channels_last"];

/// The cases `names` asks for (the default two when empty), at the batch sizes of the mode.
fn cases(quick: bool, cuda: bool, names: &[String]) -> Result<Vec<Case>> {
    let (simple, paper, paper_256) = match (quick, cuda) {
        (true, _) => (4, 1, 1),
        (false, false) => (128, 16, 1),
        (false, true) => (128, 128, 16),
    };
    let all = [
        Case {
            name: "simple_unet",
            batch: simple,
        },
        Case {
            name: "ddpm_unet",
            batch: paper,
        },
        Case {
            name: "ddpm_unet_256",
            batch: paper_256,
        },
    ];
    if names.is_empty() {
        return Ok(all.into_iter().take(2).collect());
    }
    if let Some(bad) = names.iter().find(|n| !all.iter().any(|c| c.name == *n)) {
        bail!("--cases {bad}: expected simple_unet, ddpm_unet or ddpm_unet_256");
    }
    Ok(all
        .into_iter()
        .filter(|c| names.iter().any(|n| n == c.name))
        .collect())
}

/// A benchmark server speaking the one-request-per-line protocol.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The words after `ready` on its first line.
    ready: String,
    what: String,
}

impl Server {
    fn start(mut cmd: Command, what: &str) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let ready = line
            .trim()
            .strip_prefix("ready")
            .with_context(|| format!("{what} did not start (said {line:?}); see its stderr above"))?
            .trim()
            .to_string();
        Ok(Self {
            child,
            stdin,
            stdout,
            ready,
            what: what.to_string(),
        })
    }

    /// Runs one step and returns its milliseconds.
    fn step(&mut self, request: &str) -> Result<f64> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim().parse().with_context(|| {
            format!(
                "{} answered {line:?} to {request:?}; see its stderr above",
                self.what
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Alternates `a` and `b` (a, b, then b, a, ...) after `warmup` untimed rounds; returns the two
/// lists of milliseconds and the per-round ratios a/b.
fn alternate(
    warmup: usize,
    rounds: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    for _ in 0..warmup {
        a()?;
        b()?;
    }
    let (mut a_ms, mut b_ms) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            a_ms.push(a()?);
            b_ms.push(b()?);
        } else {
            b_ms.push(b()?);
            a_ms.push(a()?);
        }
    }
    let ratios = a_ms.iter().zip(&b_ms).map(|(x, y)| x / y).collect();
    Ok((a_ms, b_ms, ratios))
}

/// The python that has the set-up's torch, with the peer's other packages installed.
pub(crate) fn python(root: &Path) -> Result<PathBuf> {
    let python = crate::venv_python(root);
    let has = |module: &str| {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ensure!(
        has("torch"),
        "{} cannot import torch: run `cargo xtask setup`",
        python.display()
    );
    if !has("diffusers") || !has("numpy") || !has("safetensors") {
        eprintln!("== installing the PyTorch peer's packages (scripts/bench/requirements.txt)");
        run_checked(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                &root
                    .join("scripts/bench/requirements.txt")
                    .to_string_lossy(),
            ]),
        )
        .context("the PyTorch peer needs diffusers and numpy")?;
    }
    Ok(python)
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock (civil-from-days, H. Hinnant).
pub(crate) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The machine in words, and a short tag for the file name.
pub(crate) fn describe_device(device: &str, threads: usize) -> (String, String) {
    if device == "cuda" {
        let name = Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "CUDA GPU".into());
        let tag = format!("cuda-{}", name.to_lowercase().replace([' ', '/'], "-"));
        return (name, tag);
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (
        format!("{model}, {cores} cores, {threads} threads"),
        format!("cpu-{cores}core"),
    )
}

/// The commit the report measures (`git describe`, `-dirty` with uncommitted changes).
pub(crate) fn git_commit(root: &Path) -> String {
    crate::git(root, &["describe", "--always", "--dirty", "--abbrev=7"])
}

/// Criterion's estimates of every bench that ran since `since`, read from `target/criterion`.
fn criterion_results(dir: &Path, since: SystemTime) -> Vec<Value> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "estimates.json")
                && path.parent().is_some_and(|p| p.ends_with("new"))
            {
                let fresh = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
                let read = |p: &Path| -> Option<Value> {
                    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
                };
                let (Some(estimates), Some(bench)) =
                    (read(&path), read(&path.with_file_name("benchmark.json")))
                else {
                    continue;
                };
                if fresh {
                    let ns = |key: &str| estimates[key]["point_estimate"].as_f64();
                    let mean = ns("mean");
                    let elements = bench["throughput"]["Elements"].as_f64();
                    found.push(json!({
                        "id": bench["full_id"],
                        "mean_ms": mean.map(|v| v / 1e6),
                        "median_ms": ns("median").map(|v| v / 1e6),
                        "std_dev_ms": ns("std_dev").map(|v| v / 1e6),
                        "elements_per_s": elements.zip(mean).map(|(e, m)| e / (m / 1e9)),
                    }));
                }
            }
        }
    }
    found.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_string());
    found
}

/// What every part of the benchmark shares.
struct Bench<'a> {
    args: &'a BenchArgs,
    root: PathBuf,
    /// The peer's python.
    python: PathBuf,
    /// Intra-op threads of both sides.
    threads: usize,
    /// Timed rounds per step.
    rounds: usize,
    /// Untimed rounds before them.
    warmup: usize,
    /// `target/debug` with --quick, else `target/release`.
    bin_dir: PathBuf,
}

/// The side-by-side results, gathered case by case.
#[derive(Default)]
struct SideBySide {
    /// One record per step and peer variant.
    records: Vec<Value>,
    /// One record per case: the training loop's step against the bare step.
    loop_overhead: Vec<Value>,
    /// What the peer said it runs (`torch 2.x`).
    torch_version: String,
}

/// Runs the benchmarks and writes the report.
pub fn run(args: BenchArgs) -> Result<()> {
    let root = root();
    let cuda = match args.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        other => bail!("--device {other}: expected cpu or cuda"),
    };
    ensure!(
        !args.bf16 || cuda,
        "--bf16 needs --device cuda (bf16 on the CPU is emulated)"
    );
    check_steps(&args.steps)?;
    let mut case_list = cases(args.quick, cuda, &args.cases)?;
    if let Some(batch) = args.batch {
        ensure!(batch > 0, "--batch 0: expected at least 1");
        case_list.iter_mut().for_each(|c| c.batch = batch);
    }
    crate::setup::setup(&root)?;
    let python = python(&root)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let profile = if args.quick { "dev" } else { "release" };
    let profile_dir = if args.quick { "debug" } else { "release" };
    let (device_name, device_tag) = describe_device(&args.device, threads);
    let started = SystemTime::now();

    eprintln!("== building ({profile} profile)");
    let (serve, ddpm) = (
        ["-p", "train", "--example", "bench_serve"],
        ["-p", "cli", "--bin", "ddpm"],
    );
    run_checked(
        cargo()
            .args(["build", "--profile", profile])
            .args(serve)
            .args(ddpm),
    )?;
    let bench = Bench {
        args: &args,
        bin_dir: root.join("target").join(profile_dir),
        root,
        python,
        threads,
        rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 10 }),
        warmup: if args.quick { 1 } else { 2 },
    };

    let criterion = if args.no_criterion {
        Value::Null
    } else {
        bench.criterion(started)?
    };
    let mut results = SideBySide::default();
    for case in case_list {
        bench.side_by_side(&case, &mut results)?;
    }
    let fid = if !args.no_fid && !cuda {
        bench.fid_extraction()?
    } else {
        Value::Null
    };

    // Against PyTorch's faster optimizer form: the larger of the two ratios.
    let optimizer_vs_best = results
        .records
        .iter()
        .filter(|r| r["step"] == "optimizer_step")
        .filter_map(|r| r["ratio_median"].as_f64())
        .reduce(f64::max);
    let report = json!({
        "optimizer_step_vs_best_peer": optimizer_vs_best,
        "sampling_vs_best_layout": vs_best_layout(&results.records),
        "date": today(),
        "commit": git_commit(&bench.root),
        "device": device_name,
        "mode": if args.quick { "quick" } else { "full" },
        "profile": profile,
        "threads": threads,
        "bf16": args.bf16,
        "pytorch": results.torch_version,
        "rounds": bench.rounds,
        "steps_filter": args.steps,
        "cases_filter": args.cases,
        "side_by_side": results.records,
        "loop_overhead": results.loop_overhead,
        "fid_extraction": fid,
        "criterion": criterion,
    });
    write_report(&args, &bench.root, &device_tag, &report)
}

/// Refuses a `--steps` name that is not a side-by-side step, naming it and the known ones.
fn check_steps(steps: &[String]) -> Result<()> {
    let all = [&SAMPLING_STEPS[..], &OTHER_STEPS].concat();
    match steps.iter().find(|s| !all.contains(&s.as_str())) {
        Some(bad) => bail!("--steps {bad}: expected some of {}", all.join(", ")),
        None => Ok(()),
    }
}

/// Each sampling step against the peer's faster layout: per case and step, the larger of the
/// Rust/PyTorch ratios over the peer's layouts.
fn vs_best_layout(records: &[Value]) -> Vec<Value> {
    let mut best: Vec<Value> = Vec::new();
    let sampling = records
        .iter()
        .filter(|r| SAMPLING_STEPS.iter().any(|s| r["step"] == *s) && r["peer"] == "same function");
    for r in sampling {
        let same = |b: &&mut Value| b["case"] == r["case"] && b["step"] == r["step"];
        let ratio = r["ratio_median"].as_f64().unwrap_or(f64::NAN);
        let entry = json!({
            "case": r["case"],
            "step": r["step"],
            "batch": r["batch"],
            "layout": r["layout"],
            "peer_layout": r["peer_layout"],
            "ratio_median": ratio,
        });
        match best.iter_mut().find(same) {
            Some(b) if b["ratio_median"].as_f64().is_some_and(|x| x >= ratio) => {}
            Some(b) => *b = entry,
            None => best.push(entry),
        }
    }
    best
}

impl Bench<'_> {
    /// Runs the criterion benches (once each with --quick) and returns their estimates.
    fn criterion(&self, started: SystemTime) -> Result<Value> {
        let quick = self.args.quick;
        let mut cmd = cargo();
        if quick {
            eprintln!("== criterion benches, once each (smoke)");
            cmd.args(["test", "--benches"]);
        } else {
            eprintln!("== criterion benches");
            cmd.args(["bench", "--benches"]);
        }
        cmd.args(["-p", "data", "-p", "sample", "-p", "train"])
            .env("DDPM_BENCH_THREADS", self.threads.to_string())
            .env("DDPM_BENCH_DEVICE", &self.args.device);
        run_checked(&mut cmd)?;
        Ok(if quick {
            json!("ran once each (smoke)")
        } else {
            Value::Array(criterion_results(
                &self.root.join("target/criterion"),
                started,
            ))
        })
    }

    /// Whether `--steps` asks for `step` (all steps without it).
    fn wanted(&self, step: &str) -> bool {
        self.args.steps.is_empty() || self.args.steps.iter().any(|s| s == step)
    }

    /// Times every step of `case` in Rust and PyTorch, alternating, and the training loop's step
    /// against the bare step in Rust.
    fn side_by_side(&self, case: &Case, results: &mut SideBySide) -> Result<()> {
        eprintln!(
            "== {} at batch {}: Rust and PyTorch, alternating",
            case.name, case.batch
        );
        // The case as both servers take it.
        let mut case_args: Vec<String> = [
            "--case",
            case.name,
            "--batch",
            &case.batch.to_string(),
            "--device",
            &self.args.device,
            "--threads",
            &self.threads.to_string(),
        ]
        .map(String::from)
        .to_vec();
        if self.args.bf16 {
            case_args.push("--bf16".into());
        }
        // The peer runs the same function as the Rust model; for the notebook's SimpleUnet,
        // whose first up block the Rust model computes with one convolution instead of two
        // (see `crates/model/src/simple.rs`), a second peer also times the notebook's own form.
        let variants: &[(&str, &[&str])] = if case.name == "simple_unet" {
            &[
                ("", &["train_step"]),
                ("unfolded", &["forward", "train_step"]),
            ]
        } else {
            // The optimizer step against both of torch.optim.Adam's multi-tensor forms.
            &[
                ("", &["train_step"]),
                ("adam-foreach", &["optimizer_step"]),
                ("adam-fused", &["optimizer_step"]),
            ]
        };
        let wanted = |steps: &[&'static str]| -> Vec<&'static str> {
            steps.iter().copied().filter(|s| self.wanted(s)).collect()
        };
        if variants.iter().any(|(_, steps)| !wanted(steps).is_empty()) || self.wanted("loop_step") {
            let mut rust_cmd = Command::new(self.bin_dir.join("examples/bench_serve"));
            rust_cmd.args(&case_args);
            let mut rust = Server::start(rust_cmd, "the Rust bench server")?;
            let layout = rust.ready.clone();
            for (variant, steps) in variants {
                let steps = wanted(steps);
                if !steps.is_empty() {
                    let peer = (*variant, layout.as_str());
                    self.against_peer(case, &case_args, &mut rust, peer, &steps, results)?;
                }
            }
            if self.wanted("loop_step") {
                results
                    .loop_overhead
                    .push(self.loop_overhead(case, &mut rust)?);
            }
        }
        let sampling = wanted(&SAMPLING_STEPS);
        if !sampling.is_empty() {
            let mut rust_cmd = Command::new(self.bin_dir.join("examples/bench_serve"));
            rust_cmd.args(&case_args).arg("--sampling");
            let mut rust = Server::start(rust_cmd, "the Rust bench server (--sampling)")?;
            for layout in PEER_LAYOUTS {
                self.against_peer(
                    case,
                    &case_args,
                    &mut rust,
                    ("", layout),
                    &sampling,
                    results,
                )?;
            }
        }
        Ok(())
    }

    /// Starts the peer `variant` of the case in `layout` and times `steps` on both sides,
    /// alternating.
    fn against_peer(
        &self,
        case: &Case,
        case_args: &[String],
        rust: &mut Server,
        (variant, peer_layout): (&str, &str),
        steps: &[&str],
        results: &mut SideBySide,
    ) -> Result<()> {
        let layout = rust.ready.clone();
        let mut peer_cmd = Command::new(&self.python);
        peer_cmd
            .arg(self.root.join("scripts/bench/peer.py"))
            .args(case_args)
            .args(["--layout", peer_layout]);
        if !variant.is_empty() {
            peer_cmd.arg(format!("--{variant}"));
        }
        let mut peer = Server::start(peer_cmd, "the PyTorch peer (scripts/bench/peer.py)")?;
        results.torch_version = peer.ready.clone();
        for &step in steps {
            let (rust_ms, peer_ms, ratios) = alternate(
                self.warmup,
                self.rounds,
                || rust.step(step),
                || peer.step(step),
            )?;
            let (r, p) = (median(&rust_ms), median(&peer_ms));
            // Images per second mean nothing for the optimizer step.
            let per_s =
                |ms: f64| (step != "optimizer_step").then(|| case.batch as f64 / (ms / 1e3));
            let record = json!({
                "case": case.name,
                "step": step,
                "peer": if variant.is_empty() { "same function" } else { variant },
                "batch": case.batch,
                "layout": layout,
                "peer_layout": peer_layout,
                "rust_ms_median": r,
                "pytorch_ms_median": p,
                "rust_images_per_s": per_s(r),
                "pytorch_images_per_s": per_s(p),
                "ratio_median": median(&ratios),
                "ratio_of_sums": rust_ms.iter().sum::<f64>() / peer_ms.iter().sum::<f64>(),
                "rounds": self.rounds,
                "rust_ms": rust_ms,
                "pytorch_ms": peer_ms,
            });
            eprintln!(
                "   {step}: Rust {layout} {r:.1} ms, PyTorch {peer_layout}{} {p:.1} ms, Rust/PyTorch {:.3}",
                if variant.is_empty() {
                    String::new()
                } else {
                    format!(" {variant}")
                },
                record["ratio_median"].as_f64().unwrap_or(f64::NAN)
            );
            results.records.push(record);
        }
        Ok(())
    }

    /// The loop's step against the bare step, both in the Rust process.
    fn loop_overhead(&self, case: &Case, rust: &mut Server) -> Result<Value> {
        let rust = std::cell::RefCell::new(rust);
        let (loop_ms, bare_ms, ratios) = alternate(
            self.warmup,
            self.rounds,
            || rust.borrow_mut().step("loop_step"),
            || rust.borrow_mut().step("train_step"),
        )?;
        let record = json!({
            "case": case.name,
            "batch": case.batch,
            "loop_ms_median": median(&loop_ms),
            "bare_ms_median": median(&bare_ms),
            "ratio_median": median(&ratios),
            "ratio_of_sums": loop_ms.iter().sum::<f64>() / bare_ms.iter().sum::<f64>(),
            "rounds": self.rounds,
            "loop_ms": loop_ms,
            "bare_ms": bare_ms,
        });
        eprintln!(
            "   loop_step / train_step: {:.3}",
            record["ratio_median"].as_f64().unwrap_or(f64::NAN)
        );
        Ok(record)
    }

    /// FID feature extraction: `ddpm eval stats` against Python torch, alternating.
    fn fid_extraction(&self) -> Result<Value> {
        eprintln!("== FID feature extraction: ddpm eval stats and Python torch, alternating");
        crate::fetch::run(crate::fetch::FetchCommand::Inception {
            dest: None,
            url: None,
        })?;
        let quick = self.args.quick;
        let json_out = self.root.join("target/bench-fid.json");
        let n = if quick { 10 } else { 200 };
        run_checked(
            Command::new(&self.python)
                .arg(self.root.join("scripts/bench/fid_pytorch.py"))
                .args([
                    "--n",
                    &n.to_string(),
                    "--rounds",
                    &(if quick { 1 } else { 3 }).to_string(),
                    "--threads",
                    &self.threads.to_string(),
                    "--ddpm",
                    &self.bin_dir.join("ddpm").to_string_lossy(),
                    "--json",
                    &json_out.to_string_lossy(),
                ])
                .current_dir(&self.root),
        )?;
        Ok(serde_json::from_str(&std::fs::read_to_string(&json_out)?)?)
    }
}

#[cfg(test)]
mod tests;
