//! What `ddpm train` shows while it trains: a progress bar (plain progress lines when stderr is
//! not a terminal), checkpoint, sample and evaluation lines, the loss curve, and the summary of
//! FID in the loop; [`train_with_hooks`] runs an opened trainer with them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use train::trainer::{MetricsRecord, NoHooks, StepOutcome, TrainHooks};
use train::EvalRecord;
use train::{RunEnd, TrainConfig, Trainer};

/// Progress bar (or, when stderr is not a terminal, plain progress lines), loss curve and
/// messages.
struct CliHooks {
    /// The progress bar on a terminal; `None` when stderr is a file or a pipe, where indicatif
    /// draws nothing and prints nothing.
    bar: Option<ProgressBar>,
    run_dir: PathBuf,
    /// The loss of the metrics lines, smoothed.
    smoothed: Option<f64>,
    /// The step of the last metrics line, and the steps skipped by then.
    metrics_step: u64,
    skipped_steps: u64,
    started: Instant,
    images: u64,
    batch_size: usize,
    /// Plain progress lines every this many steps.
    progress_every: u64,
    total_steps: u64,
    start_step: u64,
}

impl CliHooks {
    /// A line for the user: above the bar on a terminal, else straight to stderr.
    fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1h02m03s`, `4m05s` or `6s`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

impl TrainHooks for CliHooks {
    fn on_start(&mut self, total_steps: u64, start_step: u64, batches_per_epoch: usize) {
        self.total_steps = total_steps;
        self.start_step = start_step;
        self.metrics_step = start_step;
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.reset_eta();
        }
        self.say(&format!(
            "training {} steps ({} per epoch), from step {start_step}; run directory {}",
            total_steps,
            batches_per_epoch,
            self.run_dir.display()
        ));
    }

    fn on_step(&mut self, step: u64, epoch: u64, _outcome: &StepOutcome) {
        // The loss and the skips come from the metrics lines (`on_metrics`): reading the step's
        // outcome here would make every step wait for the device.
        self.images += self.batch_size as u64;
        let elapsed = self.started.elapsed();
        let rate = self.images as f64 / elapsed.as_secs_f64().max(1e-9);
        let skipped = if self.skipped_steps > 0 {
            format!(" ({} non-finite steps skipped)", self.skipped_steps)
        } else {
            String::new()
        };
        // No metrics line yet (the first `log_every` steps): a dash, not "NaN", which reads as a
        // diverged run.
        let loss = self
            .smoothed
            .map_or_else(|| "–".to_string(), |l| format!("{l:.4}"));
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!(
                    "epoch {epoch} loss {loss} {rate:.0} img/s{skipped}"
                ));
            }
            None => {
                let first = step == self.start_step + 1;
                if first
                    || step == self.total_steps
                    || step.is_multiple_of(self.progress_every.max(1))
                {
                    let done = step - self.start_step;
                    let left = self.total_steps.saturating_sub(step);
                    let eta = elapsed.mul_f64(left as f64 / done.max(1) as f64);
                    eprintln!(
                        "step {step}/{} ({:.1}%) epoch {epoch} loss {loss} {rate:.0} img/s elapsed {} ETA {}{skipped}",
                        self.total_steps,
                        100.0 * step as f64 / self.total_steps.max(1) as f64,
                        format_duration(elapsed),
                        format_duration(eta),
                    );
                }
            }
        }
    }

    fn on_checkpoint(&mut self, dir: &Path) {
        if let Err(err) = draw_loss_curve(&self.run_dir) {
            self.say(&format!("warning: loss curve not drawn: {err:#}"));
        }
        self.say(&format!("checkpoint {}", dir.display()));
    }

    fn on_metrics(&mut self, record: &MetricsRecord) {
        // The line's loss is the mean of its window of steps: weigh it as that many steps of a
        // per-step average with a memory of about 50 steps.
        let steps = record.step.saturating_sub(self.metrics_step).max(1);
        self.metrics_step = record.step;
        if record.loss.is_finite() {
            let keep = 0.98f64.powi(steps.min(10_000) as i32);
            self.smoothed = Some(match self.smoothed {
                Some(s) => keep * s + (1.0 - keep) * record.loss,
                None => record.loss,
            });
        }
        self.skipped_steps = record.skipped_steps;
    }

    fn on_evaluation(&mut self, record: &EvalRecord) {
        let kid = record
            .kid
            .map_or_else(String::new, |k| format!(", KID {k:.5}"));
        let best = if record.best {
            " (new best: checkpoints/best)"
        } else {
            ""
        };
        self.say(&format!(
            "step {}: FID {:.4}{kid} of {} samples (sampled in {:.1} s, scored in {:.1} s){best}",
            record.step, record.fid, record.n_samples, record.sample_seconds, record.score_seconds
        ));
        if let Err(err) = draw_loss_curve(&self.run_dir) {
            self.say(&format!("warning: loss curve not drawn: {err:#}"));
        }
    }

    fn on_samples(&mut self, files: &[PathBuf]) {
        for f in files {
            self.say(&format!("samples {}", f.display()));
        }
    }

    fn message(&mut self, text: &str) {
        self.say(text);
    }
}

/// What FID in the loop will do.
pub fn report_fid_loop(c: &TrainConfig, world_size: usize) {
    eprintln!(
        "FID in the loop: every {} steps and at the end, {} samples with the EMA weights ({}); \
         lowest FID in checkpoints/best",
        c.eval_every,
        c.eval_samples,
        describe_sampler(&c.eval_sampler)
    );
    if world_size > 1 {
        eprintln!(
            "FID in the loop: rank 0 samples and scores alone while the other ranks wait at a \
             barrier of --dist-timeout ({} s): raise it if an evaluation takes longer",
            c.distributed.timeout_secs
        );
    }
}

/// The best checkpoint a resumed run has.
pub fn report_best(trainer: &Trainer) {
    if let Some(best) = trainer.best() {
        match trainer.best_is_comparable() {
            Some(false) => eprintln!(
                "the best checkpoint so far (FID {:.4} at step {}) was scored with other samples, \
                 sampler or reference: the next evaluation replaces it",
                best.fid, best.step
            ),
            _ => eprintln!(
                "the best checkpoint so far: FID {:.4} at step {}",
                best.fid, best.step
            ),
        }
    }
}

/// `DDIM, 50 steps` and the like.
fn describe_sampler(sampler: &sample::SamplerConfig) -> String {
    match sampler {
        sample::SamplerConfig::Ddpm {
            variance,
            steps: None,
            ..
        } => format!("DDPM, all steps, {variance:?}"),
        sample::SamplerConfig::Ddpm {
            variance,
            steps: Some(steps),
            ..
        } => format!("DDPM, {steps} respaced steps, {variance:?}"),
        sample::SamplerConfig::Ddim { steps, eta, .. } => format!("DDIM, {steps} steps, eta {eta}"),
        sample::SamplerConfig::DpmSolverPp {
            steps, order, sde, ..
        } => match (order, sde) {
            (2, false) => format!("DPM-Solver++, {steps} steps"),
            (_, false) => format!("DPM-Solver++ order {order}, {steps} steps"),
            (_, true) => format!("SDE-DPM-Solver++ order {order}, {steps} steps"),
        },
        sample::SamplerConfig::UniPc { steps, order, .. } => {
            format!("UniPC order {order}, {steps} steps")
        }
        sample::SamplerConfig::Euler { steps, spacing, .. } => {
            format!("Euler, {steps} steps, {spacing:?} spacing")
        }
        sample::SamplerConfig::Heun { steps, spacing, .. } => {
            format!("Heun, {steps} steps, {spacing:?} spacing")
        }
        sample::SamplerConfig::EulerAncestral { steps, spacing, .. } => {
            format!("Euler ancestral, {steps} steps, {spacing:?} spacing")
        }
        sample::SamplerConfig::Pndm { steps, .. } => format!("PLMS, {steps} steps"),
    }
}

/// Draws `loss_curve.png` from `metrics.jsonl`.
pub fn draw_loss_curve(run_dir: &Path) -> Result<()> {
    let path = run_dir.join("metrics.jsonl");
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricsRecord>(l).ok())
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.len() < 2 {
        return Ok(());
    }
    // FID in the loop's lines, the ones with `fid`.
    let fids: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok())
        .filter(|r| r.fid.is_finite())
        .map(|r| (r.step as f64, r.fid))
        .collect();
    let series = [crate::plot::Series {
        label: "loss".into(),
        points,
    }];
    let mut charts = vec![crate::plot::Chart {
        title: "training loss",
        x_label: "step",
        y_label: "loss",
        series: &series,
    }];
    let fid_series = [crate::plot::Series {
        label: "FID".into(),
        points: fids,
    }];
    if !fid_series[0].points.is_empty() {
        charts.push(crate::plot::Chart {
            title: "FID of the EMA samples (lower is better)",
            x_label: "step",
            y_label: "FID",
            series: &fid_series,
        });
    }
    crate::plot::line_charts(&run_dir.join("loss_curve.png"), &charts)
}

/// Runs the opened `trainer` until it finishes or a stop signal arrives; the writer shows a
/// progress bar (or progress lines), draws the loss curve and says how the run ended.
pub fn train_with_hooks(
    mut trainer: Trainer,
    run_dir: &Path,
    writer: bool,
    progress_every: u64,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    crate::signals::stop_on_signals(stop.clone(), writer)?;
    if !writer {
        // Rank 0 reports progress, checkpoints and the summary for all ranks.
        trainer.run(&mut NoHooks, &stop)?;
        return Ok(());
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] step {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut hooks = CliHooks {
        bar,
        run_dir: run_dir.to_path_buf(),
        smoothed: None,
        metrics_step: 0,
        skipped_steps: 0,
        started: Instant::now(),
        images: 0,
        batch_size: trainer.config().batch_size,
        progress_every,
        total_steps: 0,
        start_step: 0,
    };
    let end = trainer.run(&mut hooks, &stop);
    hooks.finish();
    let end = end?;
    draw_loss_curve(run_dir)?;
    match end {
        RunEnd::Finished => eprintln!(
            "done: {} steps; run directory {}",
            trainer.step(),
            run_dir.display()
        ),
        RunEnd::Interrupted => eprintln!(
            "stopped at step {}; continue with `ddpm train --resume --run-dir {}`",
            trainer.step(),
            run_dir.display()
        ),
    }
    Ok(())
}
