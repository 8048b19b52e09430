//! The negative log-likelihood bound in bits per dimension, as `ddpm eval nll` computes it
//! (Ho et al. 2020, Eq. 5 and Table 2; the official `calc_bpd_loop`): for each image, the prior
//! term KL(q(x_T | x_0) ‖ N(0, I)), the KL between q(x_{t−1} | x_t, x_0) and p_θ(x_{t−1} | x_t)
//! at every t > 0, and the discretized decoder's −log p(x_0 | x_1) at t = 0, each with x_t drawn
//! from q(x_t | x_0) with fresh noise ([`sample::likelihood::vb_term_bits`]). The total's mean
//! over images is the reported figure, with its standard error.
//!
//! Randomness: batch b of the images (in `batch_size` rows) draws its noise, and with a stride
//! its timesteps, from a generator seeded with `sample::batch_seed(seed, b)`, so a seed fixes the
//! estimate, whatever the number of ranks. On a launch ([`Ranks`]), rank r evaluates batches
//! r, r + W, …, and the per-image totals and the per-t sums are summed across the ranks.
//!
//! `t_stride = K > 1` is a stratified estimate, not the bound itself: t = 0 is always
//! evaluated; t = 1..T−1 is cut into strata of K consecutive steps, and each batch evaluates one
//! t per stratum, drawn uniformly, weighted by the stratum's size. The estimate is unbiased
//! (its expectation over the draws is the bound) at about 1/K of the network calls.

use std::time::Instant;

use sample::likelihood::{prior_bits, vb_term_bits, BoundOptions, ModelVariance};
use sample::{batch_seed, Generator, Pipeline, PipelineSpec};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::{FidError, Images, Ranks};

/// The bound of a checkpoint on a set of images ([`NllPlan::run`]).
#[derive(Debug)]
pub struct NllPlan {
    /// The resolved checkpoint.
    pub spec: PipelineSpec,
    /// The images (u8), whose first `n` are used.
    pub images: Images,
    /// What to call the images in the report.
    pub what: String,
    /// How many images (at most `images.len()`).
    pub n: usize,
    /// Σ_θ: fixed β̃_t or β_t, or learned.
    pub variance: ModelVariance,
    /// Clamp x̂_0 to [−1, 1] (the official code's default).
    pub clip_x0: bool,
    /// 1: every t. K > 1: one t per stratum of K steps, drawn per batch (an estimate).
    pub t_stride: usize,
    /// Images per network call.
    pub batch_size: usize,
    /// Seeds batch b's generator with `batch_seed(seed, b)`.
    pub seed: u64,
}

/// What [`NllPlan::run`] reports while it works (rank 0's share of the work).
#[derive(Debug, Clone, Copy)]
pub enum NllEvent {
    /// `calls` network calls on this rank are to come.
    Started {
        /// Batch × timestep pairs this rank evaluates.
        calls: usize,
    },
    /// `done` of them are finished.
    Progress {
        /// Calls so far.
        done: usize,
    },
}

/// The mean of one term of the bound over the images that evaluated it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TermStat {
    /// The timestep (0-based; t = 0 is the decoder).
    pub t: usize,
    /// Its mean in bits per dimension.
    pub bits: f64,
    /// How many images evaluated it.
    pub n: usize,
}

/// The result of [`NllPlan::run`].
#[derive(Debug, Clone)]
pub struct NllReport {
    /// The bound's mean over images, in bits per dimension (with a stride, its estimate).
    pub bits_per_dim: f64,
    /// The standard error of that mean over images (sample standard deviation / √n).
    pub std_error: f64,
    /// Each image's total.
    pub per_image: Vec<f64>,
    /// The mean prior term KL(q(x_T | x_0) ‖ N(0, I)).
    pub prior_bits: f64,
    /// The mean of each term evaluated (every t without a stride), in t order.
    pub per_t: Vec<TermStat>,
    /// The stride (1: the exact bound, every t).
    pub t_stride: usize,
    /// How many ranks computed it.
    pub ranks: usize,
    /// Seconds it took.
    pub seconds: f64,
}

impl NllReport {
    /// The JSON that `ddpm eval nll --out` writes, with what was measured (`plan`).
    pub fn to_json(&self, plan: &NllPlan) -> serde_json::Value {
        json!({
            "bits_per_dim": self.bits_per_dim,
            "std_error": self.std_error,
            "estimate": self.t_stride > 1,
            "t_stride": self.t_stride,
            "n_images": self.per_image.len(),
            "images": plan.what,
            "checkpoint": plan.spec.dir.display().to_string(),
            "step": plan.spec.step,
            "variance": plan.variance,
            "clip_x0": plan.clip_x0,
            "seed": plan.seed,
            "batch_size": plan.batch_size,
            "ranks": self.ranks,
            "seconds": self.seconds,
            "prior_bits": self.prior_bits,
            "per_t": self.per_t.iter().map(|s| json!({"t": s.t, "bits": s.bits, "n": s.n})).collect::<Vec<_>>(),
            "per_image": self.per_image,
        })
    }
}

/// The timesteps one batch evaluates, in sampling order, each with its weight in the total: all
/// of T − 1, …, 0 with weight 1 for `stride = 1`; otherwise t = 0 (weight 1) and one t drawn from
/// each stratum of `stride` steps of 1..T (weight: the stratum's size).
///
/// # Errors
/// A generator that cannot draw on its device.
pub fn bound_timesteps(
    n_steps: usize,
    stride: usize,
    gen: &mut Generator,
) -> Result<Vec<(usize, f64)>, FidError> {
    if stride <= 1 {
        return Ok((0..n_steps).rev().map(|t| (t, 1.0)).collect());
    }
    let mut steps = vec![(0, 1.0)];
    let mut start = 1;
    while start < n_steps {
        let end = (start + stride).min(n_steps);
        let offset = gen
            .randint(0, (end - start) as i64, &[1], gen.device())
            .map_err(sample::SampleError::from)?
            .int64_value(&[0]) as usize;
        steps.push((start + offset, (end - start) as f64));
        start = end;
    }
    steps.reverse();
    Ok(steps)
}

impl NllPlan {
    /// Checks the settings without loading anything.
    ///
    /// # Errors
    /// [`FidError::Invalid`] naming the flag: fewer than 2 images, a stride or batch size of 0,
    /// images whose shape is not the network's.
    pub fn check(&self) -> Result<(), FidError> {
        if self.n < 2 || self.n > self.images.len() {
            return Err(FidError::Invalid(format!(
                "--n {}: needs 2 to {} images (the standard error needs 2; {} has {})",
                self.n,
                self.images.len(),
                self.what,
                self.images.len()
            )));
        }
        if self.t_stride == 0 || self.batch_size == 0 {
            return Err(FidError::Invalid(
                "--t-stride and --batch-size must be at least 1".into(),
            ));
        }
        let [_, c, h, w] = self.images.shape();
        let size = self.spec.model.image_size() as usize;
        let channels = self.spec.model.in_channels() as usize;
        if (c, h, w) != (channels, size, size) {
            return Err(FidError::Invalid(format!(
                "{}: images of {c}×{h}×{w}, but the model of {} takes {channels}×{size}×{size}",
                self.what,
                self.spec.dir.display()
            )));
        }
        Ok(())
    }

    /// Computes the bound with the network on `device`, on `ranks`: rank 0 (or this process
    /// alone) gets the report, the others `None`. Every rank calls it with the same plan.
    ///
    /// # Errors
    /// Those of [`NllPlan::check`]; weights that do not load; a rank that fails.
    pub fn run(
        &self,
        device: Device,
        ranks: Ranks<'_>,
        on_event: &mut dyn FnMut(NllEvent),
    ) -> Result<Option<NllReport>, FidError> {
        self.check()?;
        let started = Instant::now();
        let path = &self.spec.dir;
        let pipe = Pipeline::from_spec(self.spec.clone(), device)
            .map_err(|e| FidError::from(e).context(format!("--checkpoint {}", path.display())))?;
        let options = BoundOptions {
            prediction: self.spec.prediction,
            variance: self.variance,
            clip_x0: self.clip_x0,
            autocast: pipe.autocast(),
        };
        let n_steps = pipe.schedule.n_steps();
        let tables = pipe.sched.bound();
        let n_batches = self.n.div_ceil(self.batch_size);
        let mine: Vec<usize> = (ranks.rank()..n_batches)
            .step_by(ranks.world_size())
            .collect();
        let calls_per_batch = match self.t_stride {
            1 => n_steps,
            k => 1 + (n_steps - 1).div_ceil(k),
        };
        on_event(NllEvent::Started {
            calls: mine.len() * calls_per_batch,
        });
        let mut totals = vec![0.0; self.n];
        let mut prior = vec![0.0; self.n];
        let mut sums = vec![0.0; n_steps];
        let mut counts = vec![0.0; n_steps];
        let mut done = 0;
        for &b in &mine {
            let first = b * self.batch_size;
            let len = self.batch_size.min(self.n - first);
            let x_0 = self.batch(first, len, device);
            let mut gen = Generator::new(batch_seed(self.seed, b), device)
                .map_err(sample::SampleError::from)?;
            let steps = bound_timesteps(n_steps, self.t_stride, &mut gen)?;
            let prior_term = prior_bits(&pipe.schedule, &x_0);
            let mut total = prior_term.copy();
            for (t, weight) in steps {
                let noise = gen
                    .randn(&x_0.size(), (Kind::Double, device))
                    .map_err(sample::SampleError::from)?;
                let bits = vb_term_bits(pipe.net.as_ref(), tables, &x_0, t, &noise, &options);
                total += &bits * weight;
                sums[t] += bits.sum(Kind::Double).double_value(&[]);
                counts[t] += len as f64;
                done += 1;
                on_event(NllEvent::Progress { done });
            }
            let rows = first..first + len;
            let host = |xs: &Tensor| Vec::<f64>::try_from(xs.to_device(Device::Cpu)).expect("f64");
            totals[rows.clone()].copy_from_slice(&host(&total));
            prior[rows].copy_from_slice(&host(&prior_term));
        }
        for values in [&mut totals, &mut prior, &mut sums, &mut counts] {
            ranks.sum(values)?;
        }
        if !ranks.is_main() {
            return Ok(None);
        }
        Ok(Some(
            self.report(totals, &sums, &counts, &prior, ranks, started),
        ))
    }

    /// Images `first..first + len` as f64 on [−1, 1], `[len, C, H, W]` on `device`.
    fn batch(&self, first: usize, len: usize, device: Device) -> Tensor {
        let [_, c, h, w] = self.images.shape();
        let image_len = c * h * w;
        let pixels = &self.images.pixels()[first * image_len..(first + len) * image_len];
        Tensor::from_slice(pixels)
            .reshape([len as i64, c as i64, h as i64, w as i64])
            .to_kind(Kind::Double)
            .to_device(device)
            / 127.5
            - 1.0
    }

    /// The report of the summed per-image totals and per-t sums.
    fn report(
        &self,
        per_image: Vec<f64>,
        sums: &[f64],
        counts: &[f64],
        prior: &[f64],
        ranks: Ranks<'_>,
        started: Instant,
    ) -> NllReport {
        let n = per_image.len() as f64;
        let mean = per_image.iter().sum::<f64>() / n;
        let var = per_image.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let per_t = sums
            .iter()
            .zip(counts)
            .enumerate()
            .filter(|(_, (_, &c))| c > 0.0)
            .map(|(t, (s, c))| TermStat {
                t,
                bits: s / c,
                n: *c as usize,
            })
            .collect();
        NllReport {
            bits_per_dim: mean,
            std_error: (var / n).sqrt(),
            prior_bits: prior.iter().sum::<f64>() / n,
            per_image,
            per_t,
            t_stride: self.t_stride,
            ranks: ranks.world_size(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_cover_every_step_once_with_their_sizes() {
        let mut gen = Generator::cpu(3);
        let steps = bound_timesteps(10, 4, &mut gen).unwrap();
        // t = 0, then strata [1, 5), [5, 9), [9, 10), in sampling order.
        assert_eq!(steps.len(), 4);
        assert_eq!(steps.last(), Some(&(0, 1.0)));
        let weights: f64 = steps.iter().map(|s| s.1).sum();
        assert_eq!(weights, 10.0);
        let strata = [(9, 10), (5, 9), (1, 5)];
        for ((t, _), (lo, hi)) in steps.iter().zip(strata) {
            assert!((lo..hi).contains(t), "{t} outside [{lo}, {hi})");
        }
        let all = bound_timesteps(5, 1, &mut gen).unwrap();
        assert_eq!(all.iter().map(|s| s.0).collect::<Vec<_>>(), [4, 3, 2, 1, 0]);
    }
}
