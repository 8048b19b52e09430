//! FID in the loop, the trainer's side (see [`crate::quality`] for what it does and why): when
//! an evaluation is due, the EMA weights' samples, the scorer's call, the `metrics.jsonl` line
//! and the best checkpoint; on resume, the best record read back.

use std::time::Instant;

use serde::Deserialize;
use tch::Tensor;

use sample::{sample_batches, BatchPlan, ClassConditioning, SampleOptions};

use super::Trainer;
use crate::checkpoint;
use crate::quality::{self, BestRecord, EvalRecord, SampleScorer};
use crate::TrainError;

/// Added to the run's seed for the evaluation samples: every evaluation draws from the same
/// noise, so that two evaluations differ by the weights alone.
pub const EVAL_SEED_OFFSET: u64 = 0xF1D0_5EED;

/// The scorer and the best checkpoint's record.
#[derive(Default)]
pub(super) struct QualityState {
    scorer: Option<Box<dyn SampleScorer>>,
    best: Option<BestRecord>,
}

/// What became of an evaluation ([`Trainer::evaluate_unless`]).
pub(super) enum EvalOutcome {
    /// Scored and recorded (rank 0).
    Recorded(EvalRecord),
    /// Rank 0 evaluated while this rank waited.
    Waited,
    /// A stop request came first: nothing was recorded, and the resumed run evaluates this
    /// step again.
    Abandoned,
}

/// The step of any `metrics.jsonl` line, training or evaluation.
#[derive(Deserialize)]
pub(super) struct StepOf {
    pub(super) step: u64,
}

impl Trainer {
    /// Supplies the scorer of FID in the loop, which the run needs when `eval_every` > 0 (in a
    /// data-parallel run, rank 0's alone: the other ranks neither sample nor score).
    pub fn set_scorer(&mut self, scorer: Box<dyn SampleScorer>) {
        self.quality.scorer = Some(scorer);
    }

    /// The best checkpoint's record: this run's lowest FID so far, or the one read back on
    /// resume from `checkpoints/best/fid.json`.
    pub fn best(&self) -> Option<&BestRecord> {
        self.quality.best.as_ref()
    }

    /// Whether `best()` was measured as an evaluation now would be (same samples, sampler and
    /// scorer protocol); `None` without a best record or a scorer.
    pub fn best_is_comparable(&self) -> Option<bool> {
        let (best, scorer) = (self.quality.best.as_ref()?, self.quality.scorer.as_ref()?);
        Some(best.comparable(
            self.config.eval_samples,
            &self.config.eval_sampler,
            &scorer.protocol(),
        ))
    }

    /// Reads the best record back on resume (puts `best.old/` back first, see
    /// [`quality::recover_best`]).
    pub(super) fn load_best(&mut self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let root = self.run_dir.join(checkpoint::CHECKPOINTS_DIR);
        quality::recover_best(&root)?;
        self.quality.best = quality::read_best(&root)?;
        Ok(())
    }

    /// Refuses a run that would evaluate without a scorer, before its first step.
    pub(super) fn check_scorer(&self) -> Result<(), TrainError> {
        if self.config.eval_every > 0 && self.is_writer() && self.quality.scorer.is_none() {
            return Err(TrainError::Config(format!(
                "eval_every = {} turns FID in the loop on, but the trainer has no scorer: give it \
                 one with Trainer::set_scorer (`ddpm train` does), or set eval_every = 0",
                self.config.eval_every
            )));
        }
        Ok(())
    }

    /// Whether the step just taken ends with an evaluation: every `eval_every` steps and at
    /// the last one.
    pub(super) fn evaluates_after_this_step(&self, total: u64) -> bool {
        let every = self.config.eval_every;
        every > 0 && (self.step.is_multiple_of(every) || self.step == total)
    }

    /// Draws `eval_samples` images with the EMA weights and `eval_sampler`, in batches of
    /// `batch_size` from generators seeded with the run's seed plus `EVAL_SEED_OFFSET` (the
    /// same noise at every evaluation; the run's own generator is not touched). A
    /// class-conditional run draws image i for class i mod K, without guidance (W = 1).
    ///
    /// # Shapes
    /// `[eval_samples, C, H, W]` u8 on the CPU.
    ///
    /// # Errors
    /// [`TrainError::Sample`] when the sampler does not fit the schedule.
    pub fn draw_eval_samples(&self) -> Result<Tensor, TrainError> {
        Ok(self
            .draw_eval_samples_unless(&|| false)?
            .expect("never stopped"))
    }

    /// [`Trainer::draw_eval_samples`], checking `stop` before each batch: `None` when it asked
    /// to stop.
    fn draw_eval_samples_unless(
        &self,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>, TrainError> {
        let n = self.config.eval_samples;
        let c = self.config.model.in_channels();
        let s = self.config.model.image_size();
        let options = SampleOptions {
            prediction: self.config.objective.prediction,
            // As `ddpm eval fid --checkpoint` samples the run's checkpoints.
            clip_x0: self
                .config
                .eval_sampler
                .clips_by_default(sample::pipeline::CHECKPOINT_CLIP_SAMPLE),
            n_snapshots: 0,
            autocast: self.sampling_autocast(),
            // A class-conditional run is scored class-balanced and unguided (W = 1), as
            // `ddpm eval fid --checkpoint` samples it by default.
            class_cond: self
                .config
                .model
                .num_classes()
                .map(|k| ClassConditioning::balanced(k, n, 1.0)),
            initial_noise: None,
        };
        let plan = BatchPlan {
            n_images: n,
            batch_size: self.config.batch_size.clamp(1, n.max(1)),
            image_shape: [c, s, s],
            seed: self.config.seed.wrapping_add(EVAL_SEED_OFFSET),
            n_chains: 0,
        };
        let mut pixels: Vec<u8> = Vec::with_capacity(n * (c * s * s) as usize);
        let mut batches = sample_batches(
            self.ema_model.as_ref(),
            &self.sched,
            &self.config.eval_sampler,
            &options,
            plan,
            |_, _| {},
        )?;
        loop {
            // The batches run lazily: a stop request is seen within one batch's sampling.
            if stop() {
                return Ok(None);
            }
            let Some(batch) = batches.next() else { break };
            pixels.extend(sample::to_u8_nchw(&batch?.output.images));
        }
        Ok(Some(Tensor::from_slice(&pixels).view([n as i64, c, s, s])))
    }

    /// Evaluates the EMA weights now: samples, scores them with the scorer, appends an
    /// [`EvalRecord`] to `metrics.jsonl` and, when the FID is the lowest so far (or the best
    /// record was measured otherwise), writes `checkpoints/best/`. In a data-parallel run rank 0
    /// does all of it while the others wait at a barrier; they return `None`.
    ///
    /// # Errors
    /// [`TrainError::Config`] without a scorer; [`TrainError::Evaluation`] when scoring fails;
    /// as [`checkpoint::save`] for the best checkpoint; [`TrainError::Dist`] when a rank
    /// does not reach the barrier in time.
    pub fn evaluate(&mut self) -> Result<Option<EvalRecord>, TrainError> {
        match self.evaluate_unless(&|| false)? {
            EvalOutcome::Recorded(record) => Ok(Some(record)),
            EvalOutcome::Waited | EvalOutcome::Abandoned => Ok(None),
        }
    }

    /// [`Trainer::evaluate`], abandoned when `stop` (this process's stop request) holds
    /// between sample batches or scoring chunks on rank 0: then nothing is recorded and
    /// `best/` is untouched. In a data-parallel run every rank learns after the barrier
    /// whether rank 0 abandoned it, and a stop request of any rank makes every rank stop
    /// before the next step.
    pub(super) fn evaluate_unless(
        &mut self,
        stop: &dyn Fn() -> bool,
    ) -> Result<EvalOutcome, TrainError> {
        let mut outcome = EvalOutcome::Waited;
        if self.is_writer() {
            outcome = match self.evaluate_here(stop)? {
                Some(record) => EvalOutcome::Recorded(record),
                None => EvalOutcome::Abandoned,
            };
        }
        self.evaluation_barrier()?;
        let Some(dist) = self.dist.as_ref() else {
            return Ok(outcome);
        };
        let abandoned = matches!(outcome, EvalOutcome::Abandoned);
        let flags = [f32::from(u8::from(abandoned)), f32::from(u8::from(stop()))];
        let mut shared = vec![Tensor::from_slice(&flags).to_device(self.device)];
        dist.sum(
            &mut shared,
            &self.at_step("the all-reduce after rank 0's evaluation"),
        )?;
        let (abandoned, stopping) = (
            shared[0].double_value(&[0]) > 0.0,
            shared[0].double_value(&[1]) > 0.0,
        );
        self.stop_agreed |= abandoned || stopping;
        Ok(if abandoned {
            EvalOutcome::Abandoned
        } else {
            outcome
        })
    }

    /// Whether the run resumes at a step whose evaluation is due but not in `metrics.jsonl`
    /// (a stop request abandoned or skipped it): then the loop runs it before the next step.
    /// Rank 0 reads the file; in a data-parallel run it tells the others.
    pub(super) fn evaluation_pending(&self, total: u64) -> Result<bool, TrainError> {
        if self.step == 0 || !self.evaluates_after_this_step(total) {
            return Ok(false);
        }
        let mut pending = false;
        if self.is_writer() {
            let text =
                std::fs::read_to_string(self.run_dir.join("metrics.jsonl")).unwrap_or_default();
            // An evaluation line is the one with an `fid`.
            pending = !text.lines().any(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| v["step"] == self.step && v.get("fid").is_some())
            });
        }
        let Some(dist) = self.dist.as_ref() else {
            return Ok(pending);
        };
        let mut shared = vec![Tensor::from(f32::from(u8::from(pending))).to_device(self.device)];
        dist.sum(
            &mut shared,
            &self.at_step("the all-reduce of a pending evaluation"),
        )?;
        Ok(shared[0].double_value(&[]) > 0.0)
    }

    fn evaluation_barrier(&self) -> Result<(), TrainError> {
        match self.dist.as_ref() {
            Some(dist) => Ok(dist.barrier(&self.at_step("the barrier after rank 0's evaluation"))?),
            None => Ok(()),
        }
    }

    /// Rank 0's evaluation; `None` when `stop` held between batches or chunks.
    fn evaluate_here(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<EvalRecord>, TrainError> {
        if self.quality.scorer.is_none() {
            return Err(TrainError::Config(
                "Trainer::evaluate needs a scorer: give it one with Trainer::set_scorer".into(),
            ));
        }
        let started = Instant::now();
        let Some(images) = self.draw_eval_samples_unless(stop)? else {
            return Ok(None);
        };
        let sample_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let scorer = self.quality.scorer.as_mut().expect("checked above");
        let scores = scorer
            .score_unless(&images, stop)
            .map_err(|e| TrainError::Evaluation {
                step: self.step,
                message: e.to_string(),
            })?;
        let Some(scores) = scores else {
            return Ok(None);
        };
        let protocol = scorer.protocol();
        let score_seconds = started.elapsed().as_secs_f64();
        if !scores.fid.is_finite() {
            return Err(TrainError::Evaluation {
                step: self.step,
                message: format!("the scorer returned FID = {}", scores.fid),
            });
        }
        let (n_samples, sampler) = (self.config.eval_samples, self.config.eval_sampler.clone());
        let better = match &self.quality.best {
            Some(best) if best.comparable(n_samples, &sampler, &protocol) => scores.fid < best.fid,
            // No best yet, or one measured another way, which cannot be compared.
            _ => true,
        };
        let record = EvalRecord {
            step: self.step,
            epoch: self.loader.position(self.step.saturating_sub(1)).0,
            fid: scores.fid,
            kid: scores.kid,
            kid_std: scores.kid_std,
            n_samples,
            sampler: sampler.clone(),
            best: better,
            sample_seconds,
            score_seconds,
        };
        if better {
            let best = BestRecord {
                step: self.step,
                fid: scores.fid,
                kid: scores.kid,
                n_samples,
                sampler,
                protocol,
            };
            self.save_best(&best)?;
            self.quality.best = Some(best);
        }
        self.append_metrics(self.step, &record)?;
        Ok(Some(record))
    }

    /// Writes the current state as `checkpoints/best/` with `record`.
    fn save_best(&self, record: &BestRecord) -> Result<(), TrainError> {
        let state = self.checkpoint_state();
        let contents = self.checkpoint_contents(&state);
        quality::write_best(
            &self.run_dir.join(checkpoint::CHECKPOINTS_DIR),
            &contents,
            record,
        )?;
        Ok(())
    }
}
