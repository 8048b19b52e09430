//! The sampling loop: whole reverse chains with any solver of [`crate::solvers`].
//!
//! The samplers take the network and the schedule as arguments and run in f32 whatever precision
//! the network uses. [`Sampler`] (in `solvers/`) is one reverse step on given tensors (noise is
//! an argument, so a fixed input gives a fixed output); [`sample`] runs whole chains for one
//! batch and
//! [`sample_batches`] for any number of images, batch by batch.
//!
//! # Randomness
//!
//! All noise comes from a generator the caller owns or the request makes
//! ([`torch_ext::Generator`]), never from libtorch's process-wide one: [`sample`] draws from the
//! generator it is given, and batch `b` of [`sample_batches`] from its own generator on the
//! sampling device, seeded with [`batch_seed`]`(seed, b)`. Two samplers in one process, on any
//! threads, therefore never disturb each other. A generator seeded with `s` draws what
//! libtorch's global generator draws after `torch.manual_seed(s)` (the same engines), so seeds
//! keep the images they gave before. On one device, with the same libtorch build and thread
//! count, the same checkpoint, sampler, seed, batch size and image count give bit-identical
//! images. A batch's images do not depend on how many batches follow it, so the first
//! `k · batch_size` images of a larger request are bit-identical to a request for
//! `k · batch_size`. A last, partial batch draws its noise at the full batch size and keeps the
//! leading rows, so every image's noise is a function of (seed, batch size, index) alone; its
//! pixels then match a larger request's up to the rounding of the network, which libtorch may run
//! with other kernels at another batch size. A different `batch_size`, or another device, gives
//! other images.
//!
//! A request's starting x_T may come from a file instead ([`SampleOptions::initial_noise`],
//! `ddpm sample --noise`): image `i` starts from row `i` of it, whatever the batch. The x_T draw
//! is still made and discarded, so the per-step noise of an ancestral sampler is the seed's, the
//! same draws as without the file: with the seed's own x_T in the file, the images are those of
//! the seed alone.
//!
//! Class conditioning ([`SampleOptions::class_cond`]) changes none of this: the labels are one
//! per image of the request, batch `b` takes those of its images, and the noise is drawn as
//! without them, so an image's starting noise does not depend on its class or the guidance.

use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

use model::Denoiser;
use model::Prediction;
use schedule::tensor::ScheduleTensors;

use crate::solvers::{Sampler, SamplerConfig};
use crate::{ClassConditioning, InitialNoise, SampleError};

/// Options that apply to every sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// What the network was trained to predict.
    pub prediction: Prediction,
    /// Clamp x̂_0 to [-1, 1] at every step (the official DDPM code does).
    pub clip_x0: bool,
    /// How many snapshots of the chain to keep (0 for none).
    pub n_snapshots: usize,
    /// Run the network under autocast to this dtype (`Precision::sampling_kind`); `None`: f32.
    pub autocast: Option<Kind>,
    /// The classes of the request's images and the guidance scale, for a class-conditional
    /// network; `None` samples without classes (a class-conditional network then sees its null
    /// label).
    pub class_cond: Option<ClassConditioning>,
    /// The request's starting x_T, one row per image, in place of the seeded draw; `None`:
    /// drawn from the seed.
    pub initial_noise: Option<InitialNoise>,
}

impl SampleOptions {
    /// These options for the `n` images of a request from image `first` on: the class labels
    /// and starting noise of those images (for a batch run as a request of its own, as sharded
    /// sampling does).
    ///
    /// # Panics
    /// When the range reaches past the labels or the noise.
    pub fn for_images(&self, first: usize, n: usize) -> Self {
        Self {
            class_cond: self.class_cond.as_ref().map(|c| c.slice(first, n)),
            initial_noise: self.initial_noise.as_ref().map(|x| x.slice(first, n)),
            ..self.clone()
        }
    }

    /// Checks the class conditioning against `model`, and the starting noise against the
    /// images, for a request of `n_images` of `[C, H, W]` `image_shape`.
    fn check(
        &self,
        model: &dyn Denoiser,
        image_shape: [i64; 3],
        n_images: usize,
    ) -> Result<(), SampleError> {
        if let Some(cond) = &self.class_cond {
            cond.validate(model.num_classes(), n_images)?;
        }
        match &self.initial_noise {
            Some(noise) => noise.check(image_shape, n_images),
            None => Ok(()),
        }
    }
}

/// The result of sampling.
#[derive(Debug)]
pub struct SampleOutput {
    /// Final samples, `[N, C, H, W]` f32 on the model's device, clamped to [-1, 1].
    pub images: Tensor,
    /// `(t, x)` after `min(n_snapshots, steps)` evenly spaced steps, where `x` is the sample
    /// after the step at timestep `t`; the last is the final sample. For reverse-process strips
    /// and GIFs; each `[M, C, H, W]` f32 on the CPU, clamped to [-1, 1], where M is every image
    /// for [`sample`] and the images of [`BatchPlan::n_chains`] for [`sample_batches`].
    pub snapshots: Vec<(usize, Tensor)>,
}

/// The indices of the steps after which a chain of `n_steps` is snapshotted: `n` evenly spaced
/// ones, `n = min(n_snapshots, n_steps)`, the last being the final step.
fn snapshot_steps(n_steps: usize, n_snapshots: usize) -> Vec<usize> {
    let n = n_snapshots.min(n_steps);
    (1..=n).map(|k| k * n_steps / n - 1).collect()
}

/// Runs `shape[0]` chains, guided for the classes of `options` when there are some (one label per
/// chain), from its starting noise when it has some (one row per chain). Noise is drawn
/// `noise_rows ≥ shape[0]` rows at a time and the leading rows kept; snapshots keep the first
/// `snapshot_rows` images.
#[allow(clippy::too_many_arguments)]
fn run_chains(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    shape: [i64; 4],
    noise_rows: i64,
    snapshot_rows: i64,
    gen: &mut Generator,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput, SampleError> {
    let mut sampler = Sampler::new(sched, config, options.prediction, options.clip_x0)?;
    let n = sampler.nfe();
    let snapshot_at = snapshot_steps(n, options.n_snapshots);
    let device = sched.device();
    let [n_images, c, h, w] = shape;
    let mut randn = || -> Result<Tensor, SampleError> {
        let xs = gen.randn(&[noise_rows, c, h, w], (Kind::Float, device))?;
        Ok(if noise_rows == n_images {
            xs
        } else {
            xs.narrow(0, 0, n_images)
        })
    };
    let class_cond = options.class_cond.as_ref();
    let labels = class_cond.map(|c| Tensor::from_slice(&c.labels).to_device(device));
    tch::no_grad(|| {
        // Drawn even when a file gives x_T, so that the later draws are the seed's.
        let mut x = randn()?;
        if let Some(noise) = &options.initial_noise {
            x = noise.to_tensor(device);
        }
        if sampler.init_noise_sigma() != 1.0 {
            x *= sampler.init_noise_sigma();
        }
        let mut snapshots = Vec::with_capacity(snapshot_at.len());
        for i in 0..n {
            let t = sampler.timesteps()[i];
            // σ-space samplers: a fractional timestep, unrounded, and the input scaled.
            let (t_batch, x_in) = if sampler.integer_timesteps() {
                let t_batch = Tensor::full([n_images], t as i64, (Kind::Int64, device));
                (t_batch, x.shallow_clone())
            } else {
                let t_model = sampler.model_timesteps()[i];
                let t_batch = Tensor::full([n_images], t_model, (Kind::Float, device));
                (t_batch, &x * sampler.input_scale(i))
            };
            let out = match (&labels, class_cond) {
                (Some(labels), Some(cond)) => crate::guided_forward(
                    model,
                    &x_in,
                    &t_batch,
                    labels,
                    cond.guidance,
                    options.autocast,
                ),
                _ => model::forward(model, &x_in, &t_batch, false, options.autocast),
            };
            let noise = sampler.needs_noise(i).then(&mut randn).transpose()?;
            x = sampler.step(i, &out, &x, noise.as_ref()).prev_sample;
            if snapshot_at.contains(&i) && snapshot_rows > 0 {
                // In σ-space, the variance-preserving sample the network sees next.
                let shown = match i + 1 < n && !sampler.integer_timesteps() {
                    true => &x * sampler.input_scale(i + 1),
                    false => x.shallow_clone(),
                };
                snapshots.push((
                    t,
                    shown
                        .narrow(0, 0, snapshot_rows)
                        .clamp(-1.0, 1.0)
                        .to_device(Device::Cpu),
                ));
            }
            on_step(i + 1, n);
        }
        Ok(SampleOutput {
            images: x.clamp(-1.0, 1.0),
            snapshots,
        })
    })
}

/// Draws `shape[0]` samples, with all noise from `gen` (a generator for the schedule's device:
/// [`Generator::new`]`(seed, device)`).
///
/// `on_step(i, n)` is called after each of the n steps (for progress bars). With a fresh
/// generator seeded with `seed`, equal to batch 0 of [`sample_batches`] with that seed and
/// `batch_size = shape[0]`.
///
/// # Shapes
/// `shape`: `[N, C, H, W]` of the images; returns `[N, C, H, W]` (see [`SampleOutput`]).
///
/// # Errors
/// [`SampleError::Config`] for impossible settings (more steps than T, η outside [0, 1], class
/// labels or starting noise that do not fit the network or the batch);
/// [`SampleError::Generator`] when `gen` is not a generator of the schedule's device type.
pub fn sample(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    shape: [i64; 4],
    gen: &mut Generator,
    mut on_step: impl FnMut(usize, usize),
) -> Result<SampleOutput, SampleError> {
    // Check before drawing, so that an error leaves the generator alone.
    config.nfe(sched.schedule().n_steps())?;
    let [_, c, h, w] = shape;
    options.check(model, [c, h, w], shape[0].max(0) as usize)?;
    run_chains(
        model,
        sched,
        config,
        options,
        shape,
        shape[0],
        shape[0],
        gen,
        &mut on_step,
    )
}

/// The seed of batch `batch_idx` of a request seeded with `seed`: `seed + batch_idx · K` (mod
/// 2⁶⁴) with K = ⌊2⁶⁴/φ⌋, odd. Batch 0 uses `seed` itself; libtorch's CPU generator reads only
/// the low 32 bits of a seed, on which `batch_idx ↦ batch_seed` is one to one for 2³² batches,
/// and small seeds 0, 1, 2, … would need billions of batches to meet each other's streams.
///
/// ```
/// use sample::batch_seed;
///
/// assert_eq!(batch_seed(7, 0), 7);
/// assert_ne!(batch_seed(7, 1) as u32, batch_seed(7, 2) as u32);
/// ```
pub fn batch_seed(seed: u64, batch_idx: usize) -> u64 {
    seed.wrapping_add((batch_idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// How many images to draw, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Images in all.
    pub n_images: usize,
    /// Images per batch (bounds memory); the last batch may be smaller.
    pub batch_size: usize,
    /// `[C, H, W]` of one image.
    pub image_shape: [i64; 3],
    /// Batch `b` draws from a generator seeded with [`batch_seed`]`(seed, b)`.
    pub seed: u64,
    /// Keep the snapshots of the first `n_chains` images of the request (for strips and GIFs).
    pub n_chains: usize,
}

impl BatchPlan {
    /// The number of batches.
    pub fn n_batches(&self) -> usize {
        self.n_images.div_ceil(self.batch_size.max(1))
    }

    fn validate(&self) -> Result<(), SampleError> {
        if self.n_images == 0 {
            return Err(SampleError::Config(
                "n_images = 0: ask for at least one image".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(SampleError::Config(
                "batch_size = 0: it must be at least 1".into(),
            ));
        }
        if self.image_shape.iter().any(|&d| d < 1) {
            return Err(SampleError::Config(format!(
                "image_shape {:?} has an empty dimension",
                self.image_shape
            )));
        }
        Ok(())
    }
}

/// One batch of a [`sample_batches`] request.
#[derive(Debug)]
pub struct SampledBatch {
    /// The batch's index, from 0.
    pub batch_idx: usize,
    /// The index of its first image in the request.
    pub first_image: usize,
    /// Its images, and the snapshots of those among the first [`BatchPlan::n_chains`] images
    /// of the request (empty snapshots otherwise).
    pub output: SampleOutput,
}

/// The batches of a request, generated lazily, in order (see [`sample_batches`]).
pub struct SampleBatches<'a, F: FnMut(usize, usize)> {
    model: &'a dyn Denoiser,
    sched: &'a ScheduleTensors,
    config: SamplerConfig,
    options: SampleOptions,
    plan: BatchPlan,
    next_batch: usize,
    on_step: F,
}

impl<F: FnMut(usize, usize)> std::fmt::Debug for SampleBatches<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleBatches")
            .field("plan", &self.plan)
            .field("next_batch", &self.next_batch)
            .finish()
    }
}

impl<F: FnMut(usize, usize)> Iterator for SampleBatches<'_, F> {
    type Item = Result<SampledBatch, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch_idx = self.next_batch;
        if batch_idx >= self.plan.n_batches() {
            return None;
        }
        self.next_batch += 1;
        let first_image = batch_idx * self.plan.batch_size;
        let rows = self.plan.batch_size.min(self.plan.n_images - first_image);
        let snapshot_rows = self.plan.n_chains.saturating_sub(first_image).min(rows);
        let [c, h, w] = self.plan.image_shape;
        let seed = batch_seed(self.plan.seed, batch_idx);
        let options = self.options.for_images(first_image, rows);
        let output = Generator::new(seed, self.sched.device())
            .map_err(SampleError::from)
            .and_then(|mut gen| {
                run_chains(
                    self.model,
                    self.sched,
                    &self.config,
                    &options,
                    [rows as i64, c, h, w],
                    self.plan.batch_size as i64,
                    snapshot_rows as i64,
                    &mut gen,
                    &mut self.on_step,
                )
            });
        Some(output.map(|output| SampledBatch {
            batch_idx,
            first_image,
            output,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.n_batches() - self.next_batch;
        (left, Some(left))
    }
}

/// Draws `plan.n_images` images, `plan.batch_size` at a time, each batch seeded from
/// (`plan.seed`, batch index) (see the module docs for what is reproducible). Iterate the result
/// to run the batches; `on_step(i, n)` is called after each of the n steps of every batch.
///
/// With [`SampleOptions::class_cond`], image `i` of the request is sampled for class
/// `labels[i]`, guided with its scale.
///
/// # Errors
/// [`SampleError::Config`] naming `n_images`, `batch_size`, `image_shape`, `steps`, `eta`, the
/// class labels or the starting noise when the request is impossible; this is checked here,
/// before any batch runs.
pub fn sample_batches<'a, F: FnMut(usize, usize)>(
    model: &'a dyn Denoiser,
    sched: &'a ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    plan: BatchPlan,
    on_step: F,
) -> Result<SampleBatches<'a, F>, SampleError> {
    plan.validate()?;
    config.nfe(sched.schedule().n_steps())?;
    options.check(model, plan.image_shape, plan.n_images)?;
    Ok(SampleBatches {
        model,
        sched,
        config: config.clone(),
        options: options.clone(),
        plan,
        next_batch: 0,
        on_step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_evenly_spaced_and_end_at_the_final_sample() {
        assert_eq!(
            snapshot_steps(300, 10),
            (1..=10).map(|k| 30 * k - 1).collect::<Vec<_>>()
        );
        assert_eq!(snapshot_steps(1000, 3), [332, 665, 999]);
        assert_eq!(snapshot_steps(4, 10), [0, 1, 2, 3]);
        assert!(snapshot_steps(50, 0).is_empty());
    }
}
