//! `cargo xtask chaos [--minutes M] [--ranks N]`: a soak of elastic training under faults.
//!
//! It trains the tiny SimpleUnet on synthetic CIFAR-shaped images with `ddpm train
//! --nproc-per-node N --max-restarts R` and, at random moments, sends SIGKILL to a random rank,
//! SIGTERM to the launcher, or SIGSTOP to a rank (SIGCONT after a random pause, longer or
//! shorter than `--dist-timeout`), or flips a byte of the newest complete checkpoint's weights
//! (the run must then fall back past it, by its digests, when it next resumes). A launcher that exits before the step count (after SIGTERM,
//! or out of restarts) is started again with `--resume`. Faults stop after M minutes; the job
//! then runs to its step count. Its final weights, EMA and optimizer state are compared byte
//! for byte with an uninterrupted run of the same seed, and the faults are reported by kind,
//! with how many the run survived (all of them, when the final state is identical).
//!
//! It builds `ddpm` itself (`cargo build -p cli --bin ddpm`, after `cargo xtask setup`), so it
//! runs on a fresh machine. Not part of CI. The runs stay under `target/chaos/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::root;

/// Arguments of `cargo xtask chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults, in minutes; the job then runs to its step count.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The number of ranks (processes) of the job.
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// The job's step count (default: about what the faulted job takes M minutes for, from a
    /// short timed run).
    #[arg(long)]
    steps: Option<u64>,
    /// The seed of the fault schedule (default: from the clock; printed, for a rerun).
    #[arg(long)]
    seed: Option<u64>,
    /// The ranks' `--dist-timeout` in seconds (a SIGSTOP longer than it makes the others fail).
    #[arg(long, default_value_t = 6)]
    dist_timeout: u64,
    /// The cargo profile `ddpm` is built with: dev (the test build) or release.
    #[arg(long, default_value = "dev", value_parser = ["dev", "release"])]
    profile: String,
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillRank,
    TermLauncher,
    StopRank,
    CorruptCheckpoint,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::KillRank,
        Fault::TermLauncher,
        Fault::StopRank,
        Fault::CorruptCheckpoint,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillRank => "SIGKILL to a rank",
            Fault::TermLauncher => "SIGTERM to the launcher",
            Fault::StopRank => "SIGSTOP/SIGCONT of a rank",
            Fault::CorruptCheckpoint => "a flipped byte in the newest checkpoint",
        }
    }
}

/// splitmix64: the fault schedule's random numbers (no cryptographic use).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 64 images in CIFAR-10's binary format (label byte, then 3×32×32), a pattern that differs
/// per image.
fn synthetic_cifar(path: &Path) -> Result<()> {
    let mut bytes = Vec::with_capacity(64 * 3073);
    for i in 0..64usize {
        bytes.push((i % 10) as u8);
        for c in 0..3usize {
            for p in 0..1024usize {
                bytes.push(((p / 32 + p % 32) * (c + 1) * 3 + i * 17) as u8);
            }
        }
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The job: `ddpm train` across the ranks, the same for the faulted run and the reference.
struct Job {
    ddpm: PathBuf,
    data: PathBuf,
    ranks: usize,
    steps: u64,
    dist_timeout: u64,
}

impl Job {
    fn args(&self, run_dir: &Path, max_restarts: u32) -> Vec<String> {
        let model = r#"{"arch":"simple","in_channels":3,"out_channels":3,"image_size":28,"down_channels":[8,16],"up_channels":[16,8],"time_emb_dim":16,"batch_norm_eps":0.001,"batch_norm_momentum":0.01}"#;
        let mut args: Vec<String> = vec![
            "train".into(),
            "--device".into(),
            "cpu".into(),
            "--data".into(),
            self.data.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--threads".into(),
            "1".into(),
            "--seed".into(),
            "29".into(),
            "--max-steps".into(),
            self.steps.to_string(),
            "--epochs".into(),
            "1000000".into(),
            "--nproc-per-node".into(),
            self.ranks.to_string(),
            "--dist-timeout".into(),
            self.dist_timeout.to_string(),
            "--max-restarts".into(),
            max_restarts.to_string(),
            "--progress-every".into(),
            "50".into(),
        ];
        for set in [
            format!("batch_size={BATCH}"),
            format!("model={model}"),
            "sample_every_epochs=0".into(),
            "n_workers=1".into(),
            "log_every=5".into(),
            "checkpoint_every=10".into(),
            "keep_last=3".into(),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        args
    }

    /// Starts the job in `run_dir` (`again`: continuing it with `--resume`, or with
    /// `--overwrite` while it has no complete checkpoint), its stderr appended to `log`.
    fn spawn(&self, run_dir: &Path, again: bool, log: &Path) -> Result<Child> {
        let mut args = self.args(run_dir, 1000);
        if again {
            args.push(match has_checkpoint(run_dir) {
                true => "--resume".into(),
                false => "--overwrite".into(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        Command::new(&self.ddpm)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", self.ddpm.display()))
    }

    /// Runs the job in `run_dir` without faults; returns how long it took.
    fn run_clean(&self, run_dir: &Path) -> Result<Duration> {
        let _ = std::fs::remove_dir_all(run_dir);
        let log = run_dir.with_extension("log");
        let _ = std::fs::remove_file(&log);
        let started = Instant::now();
        let status = self.spawn(run_dir, false, &log)?.wait()?;
        ensure!(
            status.success(),
            "the uninterrupted run failed ({status}): see {}",
            log.display()
        );
        Ok(started.elapsed())
    }
}

/// The PIDs of the ranks the launcher started last (`… (rank 0 PID 123, rank 1 PID 124)`).
fn rank_pids(log: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().rev().find(|l| l.contains("ranks meet on")) else {
        return Vec::new();
    };
    line.split("PID ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Sends `signal` (`-KILL`, `-TERM`, …) to `pid` with kill(1); whether it was delivered.
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const SIGKILL: &str = "-KILL";
const SIGTERM: &str = "-TERM";
const SIGCONT: &str = "-CONT";
const SIGSTOP: &str = "-STOP";

/// The seconds of one step once the job runs, from the last `images_per_sec` of the run in
/// `run_dir` (its whole time would count the start-up as steps); `None` without one.
fn steady_step_secs(run_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).ok()?;
    let line: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let per_sec = line.get("images_per_sec")?.as_f64()?;
    (per_sec > 0.0).then(|| BATCH as f64 / per_sec)
}

/// The job's global batch (`batch_size`).
const BATCH: u64 = 8;

/// Whether the run in `run_dir` has a complete checkpoint.
fn has_checkpoint(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|entry| entry.path().join("state.json").is_file())
}

/// Whether the run in `run_dir` has a complete checkpoint at `steps`.
fn finished(run_dir: &Path, steps: u64) -> bool {
    run_dir
        .join("checkpoints")
        .join(format!("step-{steps:08}"))
        .join("state.json")
        .is_file()
}

/// What the faulted run went through.
#[derive(Default)]
struct Tally {
    injected: BTreeMap<Fault, u64>,
    relaunches: u64,
    restarts: u64,
    /// Checkpoints a resume skipped (a corrupted one, named by its digest).
    skipped: u64,
}

/// The complete checkpoints (`step-N` with a `state.json`) of the run in `run_dir`, oldest
/// first.
fn complete_checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("step-")
                && !name.ends_with(".tmp")
                && path.join("state.json").is_file()
        })
        .collect();
    dirs.sort();
    dirs
}

/// Flips one byte of the newest complete checkpoint's `model.safetensors`, when an older one is
/// there to fall back to and the newest is not the job's last (`steps`), which the comparison
/// reads. Whether a byte was flipped.
fn corrupt_newest(run_dir: &Path, steps: u64, rng: &mut Rng) -> bool {
    let dirs = complete_checkpoints(run_dir);
    let [.., _, newest] = dirs.as_slice() else {
        return false;
    };
    if newest.ends_with(format!("step-{steps:08}")) {
        return false;
    }
    let path = newest.join("model.safetensors");
    let Ok(mut bytes) = std::fs::read(&path) else {
        return false;
    };
    if bytes.is_empty() {
        return false;
    }
    let at = rng.below(bytes.len());
    bytes[at] ^= 0xFF;
    // A checkpoint pruned meanwhile (keep_last) is not recreated.
    newest.is_dir() && std::fs::write(&path, bytes).is_ok()
}

/// Where a fault goes: the job's launcher, its log (the ranks' PIDs) and its run directory.
struct Target<'a> {
    launcher: &'a Child,
    log: &'a Path,
    run_dir: &'a Path,
}

/// Injects one fault of kind `fault` into the job.
fn inject(fault: Fault, target: &Target<'_>, job: &Job, rng: &mut Rng) -> bool {
    let (launcher, timeout) = (target.launcher, job.dist_timeout);
    let pids = rank_pids(target.log);
    match fault {
        Fault::CorruptCheckpoint => corrupt_newest(target.run_dir, job.steps, rng),
        Fault::TermLauncher => signal(launcher.id(), SIGTERM),
        Fault::KillRank if !pids.is_empty() => signal(pids[rng.below(pids.len())], SIGKILL),
        Fault::StopRank if !pids.is_empty() => {
            let pid = pids[rng.below(pids.len())];
            if !signal(pid, SIGSTOP) {
                return false;
            }
            // Shorter or longer than --dist-timeout: a pause the others sit out, or a stall.
            let pause = rng.range(1.0, timeout as f64 + 4.0);
            std::thread::sleep(Duration::from_secs_f64(pause));
            signal(pid, SIGCONT);
            true
        }
        _ => false,
    }
}

/// Runs the job in `run_dir` to its step count while injecting faults until `deadline`.
fn run_faulted(job: &Job, run_dir: &Path, deadline: Instant, rng: &mut Rng) -> Result<Tally> {
    let _ = std::fs::remove_dir_all(run_dir);
    let log = run_dir.with_extension("log");
    let _ = std::fs::remove_file(&log);
    let mut tally = Tally::default();
    let mut launcher = job.spawn(run_dir, false, &log)?;
    let mut next_fault = Instant::now() + Duration::from_secs_f64(rng.range(2.0, 6.0));
    loop {
        if let Some(status) = launcher.try_wait()? {
            if status.success() && finished(run_dir, job.steps) {
                break;
            }
            tally.relaunches += 1;
            if tally.relaunches > 500 {
                bail!(
                    "the job was started 500 times without finishing: see {}",
                    log.display()
                );
            }
            // Interrupted (SIGTERM) or out of restarts: continue the run.
            launcher = job.spawn(run_dir, true, &log)?;
        }
        let now = Instant::now();
        if now < deadline && now >= next_fault {
            let fault = Fault::ALL[rng.below(Fault::ALL.len())];
            let target = Target {
                launcher: &launcher,
                log: &log,
                run_dir,
            };
            if inject(fault, &target, job, rng) {
                *tally.injected.entry(fault).or_default() += 1;
                eprintln!(
                    "chaos: {} at {:.0} s",
                    fault.name(),
                    (deadline - Instant::now()).as_secs_f64()
                );
            }
            next_fault = Instant::now() + Duration::from_secs_f64(rng.range(2.0, 8.0));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    tally.restarts = text.matches("(--max-restarts): starting all").count() as u64;
    tally.skipped = text.matches("warning: skipped checkpoint").count() as u64;
    Ok(tally)
}

/// The final checkpoint's `model`, `ema` and `optimizer` files that differ between the runs.
fn differing_files(a: &Path, b: &Path, steps: u64) -> Result<Vec<String>> {
    let name = format!("step-{steps:08}");
    let mut differ = Vec::new();
    for file in ["model", "ema", "optimizer"].map(|f| format!("{f}.safetensors")) {
        let read = |run: &Path| {
            let path = run.join("checkpoints").join(&name).join(&file);
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
        };
        if read(a)? != read(b)? {
            differ.push(file);
        }
    }
    Ok(differ)
}

/// Runs `cargo xtask chaos`.
///
/// # Errors
/// When `ddpm` does not build, the uninterrupted run fails, or the job never finishes; a
/// final state that differs from the uninterrupted run's is reported and is an error too.
pub fn run(args: ChaosArgs) -> Result<()> {
    ensure!(
        args.ranks >= 2,
        "--ranks {}: a soak needs at least 2 ranks",
        args.ranks
    );
    let root = root();
    crate::setup::setup(&root)?;
    let (ddpm, _) = crate::quality::build_ddpm(&args.profile)?;
    let work = root.join("target/chaos");
    std::fs::create_dir_all(&work)?;
    let data = work.join("synthetic_batch.bin");
    synthetic_cifar(&data)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut job = Job {
        ddpm,
        data,
        ranks: args.ranks,
        steps: 20,
        dist_timeout: args.dist_timeout,
    };
    let steps = match args.steps {
        Some(steps) => steps,
        None => {
            // Half the fault window's time spent training; the rest goes to restarts.
            let calibration = work.join("calibration");
            let took = job.run_clean(&calibration)?;
            let per_step = steady_step_secs(&calibration).unwrap_or(took.as_secs_f64() / 20.0);
            ((args.minutes * 60.0 * 0.5 / per_step) as u64 / 10 * 10).max(40)
        }
    };
    job.steps = steps;
    eprintln!(
        "== chaos: {} ranks, {steps} steps, faults for {} min, seed {seed}",
        args.ranks, args.minutes
    );
    let faulted = work.join("faulted");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.minutes * 60.0);
    let tally = run_faulted(&job, &faulted, deadline, &mut Rng(seed))?;
    let faulted_took = started.elapsed();
    if faulted_took < deadline - started {
        eprintln!(
            "note: the job reached step {steps} after {:.0} s, before the {} min of faults were \
             over: pass a larger --steps for a longer soak",
            faulted_took.as_secs_f64(),
            args.minutes
        );
    }
    eprintln!("== the uninterrupted run of the same seed");
    let reference = work.join("reference");
    let clean_took = job.run_clean(&reference)?;
    let differ = differing_files(&faulted, &reference, steps)?;
    report(&tally, steps, faulted_took, clean_took, &differ);
    if !differ.is_empty() {
        bail!(
            "the final state differs from the uninterrupted run's: {}",
            differ.join(", ")
        );
    }
    Ok(())
}

/// Prints the soak's outcome.
fn report(tally: &Tally, steps: u64, faulted: Duration, clean: Duration, differ: &[String]) {
    let survived = differ.is_empty();
    println!(
        "chaos soak: {steps} steps, faulted run {:.0} s, uninterrupted {:.0} s",
        faulted.as_secs_f64(),
        clean.as_secs_f64()
    );
    println!("| fault | injected | survived |");
    println!("| --- | --- | --- |");
    for fault in Fault::ALL {
        let n = tally.injected.get(&fault).copied().unwrap_or(0);
        println!(
            "| {} | {n} | {} |",
            fault.name(),
            if survived { n } else { 0 }
        );
    }
    println!(
        "launcher restarts of all ranks (--max-restarts): {}; job relaunches with --resume: {}",
        tally.restarts, tally.relaunches
    );
    println!(
        "checkpoints a resume skipped (a digest mismatch, or one cut short): {}",
        tally.skipped
    );
    if survived {
        println!("final model, ema and optimizer files: identical to the uninterrupted run's");
    } else {
        println!(
            "final files that differ from the uninterrupted run's: {}",
            differ.join(", ")
        );
    }
}
