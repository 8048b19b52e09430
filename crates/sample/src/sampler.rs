//! Samplers: DDPM ancestral sampling (Ho et al. 2020, Alg. 2), DDIM (Song et al. 2021, Eq. 12)
//! and DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2, multistep second order in the
//! data-prediction form, as diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, `lower_order_final=True` and
//! `final_sigmas_type="zero"`).
//!
//! The samplers take the network and the schedule as arguments and run in f32 whatever precision
//! the network uses. [`Sampler`] is one reverse step on given tensors (noise is an argument, so a
//! fixed input gives a fixed output); [`sample`] runs whole chains for one batch and
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
//! Class conditioning ([`SampleOptions::class_cond`]) changes none of this: the labels are one
//! per image of the request, batch `b` takes those of its images, and the noise is drawn as
//! without them, so an image's starting noise does not depend on its class or the guidance.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

use model::Denoiser;
use schedule::tensor::{ScheduleTensors, StepOutput};
use schedule::{TimestepSpacing, Timesteps, VarianceType};

use crate::{ClassConditioning, SampleError};
use model::Prediction;

/// Which reverse process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// Ancestral sampling over all T steps with σ_t² = β_t (`fixed_large`) or β̃_t (`fixed_small`).
    Ddpm {
        /// The reverse variance.
        variance: VarianceType,
    },
    /// DDIM over `steps` of the T steps; η = 0 is deterministic, η = 1 over all T steps is
    /// DDPM with σ_t² = β̃_t.
    Ddim {
        /// Number of sampling steps (≤ T).
        steps: usize,
        /// η of Song et al. 2021, Eq. 16, in [0, 1].
        eta: f64,
        /// How the steps are spread over 0..T.
        spacing: TimestepSpacing,
    },
    /// DPM-Solver++(2M): deterministic, second order; 15–25 steps give samples close to DDPM's
    /// with 1000 (Lu et al. 2022, §6). The first step is first order (no history yet) and the
    /// last goes to σ = 0, that is to x̂_0 (diffusers' `final_sigmas_type="zero"`).
    DpmSolverPp {
        /// Number of sampling steps (≤ T), hence network evaluations.
        steps: usize,
        /// How the steps are spread over 0..T; `trailing` starts from t = T − 1, as diffusers'
        /// default `linspace` (over T + 1 points) nearly does.
        spacing: TimestepSpacing,
    },
}

impl SamplerConfig {
    /// The notebook's sampler: ancestral, σ_t² = β̃_t (its `posterior_variance`).
    pub fn seed_notebook() -> Self {
        SamplerConfig::Ddpm {
            variance: VarianceType::FixedSmall,
        }
    }

    /// The timesteps this sampler visits on a schedule of `n_train_steps`, in sampling order.
    ///
    /// # Errors
    /// [`SampleError::Config`] naming `steps` when it is 0 or more than `n_train_steps`, or `eta`
    /// when it is outside [0, 1].
    pub fn timesteps(&self, n_train_steps: usize) -> Result<Timesteps, SampleError> {
        let sub = |steps: usize, spacing| {
            Timesteps::new(n_train_steps, steps, spacing).map_err(|e| {
                SampleError::Config(if (1..=n_train_steps).contains(&steps) {
                    // A count in range that the spacing cannot spread (quadratic's repeats).
                    format!("steps = {steps} with {spacing:?} spacing: {e}")
                } else {
                    format!(
                        "steps = {steps} is impossible: the schedule has T = {n_train_steps} steps, so it must be 1 to {n_train_steps}"
                    )
                })
            })
        };
        match self {
            SamplerConfig::Ddpm { .. } => Ok(Timesteps::full(n_train_steps)),
            SamplerConfig::Ddim {
                steps,
                eta,
                spacing,
            } => {
                if !(0.0..=1.0).contains(eta) {
                    return Err(SampleError::Config(format!(
                        "eta = {eta} is invalid: it must be in [0, 1]"
                    )));
                }
                sub(*steps, *spacing)
            }
            SamplerConfig::DpmSolverPp { steps, spacing } => sub(*steps, *spacing),
        }
    }
}

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
}

impl SampleOptions {
    /// These options for the `n` images of a request from image `first` on: the class labels
    /// of those images (for a batch run as a request of its own, as sharded sampling does).
    ///
    /// # Panics
    /// When the range reaches past the labels.
    pub fn for_images(&self, first: usize, n: usize) -> Self {
        Self {
            class_cond: self.class_cond.as_ref().map(|c| c.slice(first, n)),
            ..self.clone()
        }
    }

    /// Checks the class conditioning against `model` and a request of `n_images`.
    fn check_classes(&self, model: &dyn Denoiser, n_images: usize) -> Result<(), SampleError> {
        match &self.class_cond {
            Some(cond) => cond.validate(model.num_classes(), n_images),
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

/// One reverse step of a sampler on given tensors.
///
/// Steps are numbered by their index `i` in [`Sampler::timesteps`], in sampling order. DDPM and
/// DDIM steps are independent of one another; DPM-Solver++(2M) remembers x̂_0 of the previous
/// step, so its steps must be taken in order from `i = 0` for one chain (a step whose previous
/// index was not the last one taken falls back to first order).
#[derive(Debug)]
pub struct Sampler<'a> {
    sched: &'a ScheduleTensors,
    config: SamplerConfig,
    prediction: Prediction,
    clip_x0: bool,
    timesteps: Timesteps,
    /// DPM-Solver++: the index of the last step taken and its x̂_0.
    previous: Option<(usize, Tensor)>,
}

impl<'a> Sampler<'a> {
    /// A sampler for `config` on `sched`, for a network that predicts `prediction`, clamping
    /// x̂_0 to [-1, 1] when `clip_x0` is set.
    ///
    /// # Errors
    /// As [`SamplerConfig::timesteps`].
    pub fn new(
        sched: &'a ScheduleTensors,
        config: &SamplerConfig,
        prediction: Prediction,
        clip_x0: bool,
    ) -> Result<Self, SampleError> {
        let timesteps = config.timesteps(sched.schedule().n_steps())?;
        Ok(Self {
            sched,
            config: config.clone(),
            prediction,
            clip_x0,
            timesteps,
            previous: None,
        })
    }

    /// The timesteps, in sampling order; step `i` runs the network at `timesteps()[i]`.
    pub fn timesteps(&self) -> &[usize] {
        self.timesteps.as_slice()
    }

    /// Whether step `i` adds noise, so that [`Sampler::step`] needs a `noise` tensor.
    ///
    /// # Panics
    /// When `i` is not a step index.
    pub fn needs_noise(&self, i: usize) -> bool {
        let t = self.timesteps()[i];
        match &self.config {
            SamplerConfig::Ddpm { .. } => t > 0,
            SamplerConfig::Ddim { eta, .. } => {
                *eta > 0.0 && self.timesteps.prev_timestep(t).is_some()
            }
            SamplerConfig::DpmSolverPp { .. } => false,
        }
    }

    /// x̂_0 and ε̂ from the network's output at `t` (Eq. 4 solved for the missing one), with
    /// x̂_0 clamped and ε̂ re-derived from it when clipping, so that the step stays consistent
    /// (diffusers' `use_clipped_model_output`).
    fn x0_and_eps(&self, model_output: &Tensor, x_t: &Tensor, t: usize) -> (Tensor, Tensor) {
        let s = self.sched.schedule();
        let (a, b) = (
            s.sqrt_alphas_cumprod()[t],
            s.sqrt_one_minus_alphas_cumprod()[t],
        );
        let (x0, eps) = match self.prediction {
            Prediction::Eps => (
                self.sched.pred_x0(model_output, t, x_t),
                model_output.shallow_clone(),
            ),
            Prediction::X0 => (model_output.shallow_clone(), (x_t - model_output * a) / b),
            // v = √ᾱ ε − √(1 − ᾱ) x_0 and x_t = √ᾱ x_0 + √(1 − ᾱ) ε.
            Prediction::V => (x_t * a - model_output * b, model_output * a + x_t * b),
        };
        if self.clip_x0 {
            let x0 = x0.clamp(-1.0, 1.0);
            let eps = (x_t - &x0 * a) / b;
            (x0, eps)
        } else {
            (x0, eps)
        }
    }

    /// One step from `x_t` at `timesteps()[i]` to the next timestep (or to x_0 after the last),
    /// given the network's output there.
    ///
    /// - DDPM: x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z (Alg. 2 with the mean of Eq. 7; Eq. 11 without
    ///   clipping), no noise at t = 0.
    /// - DDIM: Eq. 12 with σ_t(η) of Eq. 16.
    /// - DPM-Solver++(2M), with λ = ln(α/σ), α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), h = λ_t − λ_s:
    ///   x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D with D = x̂_0(s) at the first step, and
    ///   D = x̂_0(s) + (1/(2 r)) (x̂_0(s) − x̂_0(s′)), r = (λ_s − λ_{s′})/h, after it (Lu et al.
    ///   2022, Alg. 2, the `midpoint` form); the last step returns x̂_0.
    ///
    /// # Shapes
    /// `model_output`, `x_t` and `noise` (z ~ N(0, I)): `[N, C, H, W]` f32. Both outputs
    /// `[N, C, H, W]`.
    ///
    /// # Panics
    /// When `i` is not a step index, or `noise` is `None` where [`Sampler::needs_noise`].
    pub fn step(
        &mut self,
        i: usize,
        model_output: &Tensor,
        x_t: &Tensor,
        noise: Option<&Tensor>,
    ) -> StepOutput {
        let t = self.timesteps()[i];
        let t_prev = self.timesteps.prev_timestep(t);
        let noise = || {
            noise.unwrap_or_else(|| panic!("step {i} (t = {t}) adds noise: pass a noise tensor"))
        };
        match &self.config {
            SamplerConfig::Ddpm { variance } => {
                if self.prediction == Prediction::Eps && !self.clip_x0 {
                    // Eq. 11 as `schedule` writes it; `noise` is unused at t = 0.
                    return self.sched.step(
                        model_output,
                        t,
                        x_t,
                        if t > 0 { noise() } else { x_t },
                        *variance,
                    );
                }
                let (x0, _) = self.x0_and_eps(model_output, x_t, t);
                let mean = self.sched.posterior_mean(&x0, x_t, t);
                let prev_sample = match t {
                    0 => mean,
                    _ => {
                        mean + noise() * self.sched.schedule().reverse_variance(t, *variance).sqrt()
                    }
                };
                StepOutput {
                    prev_sample,
                    pred_x0: x0,
                }
            }
            SamplerConfig::Ddim { eta, .. } => {
                let (x0, eps) = self.x0_and_eps(model_output, x_t, t);
                let noise = if self.needs_noise(i) { noise() } else { x_t };
                let out = self
                    .sched
                    .ddim_step(&eps, t, t_prev, x_t, noise, *eta)
                    .expect("the timesteps and eta were checked in Sampler::new");
                StepOutput {
                    prev_sample: out.prev_sample,
                    pred_x0: x0,
                }
            }
            SamplerConfig::DpmSolverPp { .. } => {
                let (x0, _) = self.x0_and_eps(model_output, x_t, t);
                let previous = self
                    .previous
                    .take()
                    .filter(|(idx, _)| i > 0 && *idx == i - 1);
                let prev_sample = match t_prev {
                    // σ = 0 at the end: x_0 = x̂_0 (first order, as diffusers' lower_order_final).
                    None => x0.shallow_clone(),
                    Some(t_next) => {
                        let s = self.sched.schedule();
                        let lambda = |t: usize| {
                            0.5 * s.alphas_cumprod()[t].ln()
                                - 0.5 * (1.0 - s.alphas_cumprod()[t]).ln()
                        };
                        let h = lambda(t_next) - lambda(t);
                        let sigma_ratio = s.sqrt_one_minus_alphas_cumprod()[t_next]
                            / s.sqrt_one_minus_alphas_cumprod()[t];
                        let d_coef = -s.sqrt_alphas_cumprod()[t_next] * (-h).exp_m1();
                        let d = match &previous {
                            None => x0.shallow_clone(),
                            Some((prev_idx, prev_x0)) => {
                                let t_before = self.timesteps()[*prev_idx];
                                let r = (lambda(t) - lambda(t_before)) / h;
                                &x0 * (1.0 + 0.5 / r) - prev_x0 * (0.5 / r)
                            }
                        };
                        x_t * sigma_ratio + d * d_coef
                    }
                };
                self.previous = Some((i, x0.shallow_clone()));
                StepOutput {
                    prev_sample,
                    pred_x0: x0,
                }
            }
        }
    }
}

/// The indices of the steps after which a chain of `n_steps` is snapshotted: `n` evenly spaced
/// ones, `n = min(n_snapshots, n_steps)`, the last being the final step.
fn snapshot_steps(n_steps: usize, n_snapshots: usize) -> Vec<usize> {
    let n = n_snapshots.min(n_steps);
    (1..=n).map(|k| k * n_steps / n - 1).collect()
}

/// Runs `shape[0]` chains, guided for the classes `class_cond` when there are some (one label per
/// chain). Noise is drawn `noise_rows ≥ shape[0]` rows at a time and the leading rows kept;
/// snapshots keep the first `snapshot_rows` images.
#[allow(clippy::too_many_arguments)]
fn run_chains(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    class_cond: Option<&ClassConditioning>,
    shape: [i64; 4],
    noise_rows: i64,
    snapshot_rows: i64,
    gen: &mut Generator,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<SampleOutput, SampleError> {
    let mut sampler = Sampler::new(sched, config, options.prediction, options.clip_x0)?;
    let steps = sampler.timesteps().to_vec();
    let n = steps.len();
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
    let labels = class_cond.map(|c| Tensor::from_slice(&c.labels).to_device(device));
    tch::no_grad(|| {
        let mut x = randn()?;
        let mut snapshots = Vec::with_capacity(snapshot_at.len());
        for (i, &t) in steps.iter().enumerate() {
            let t_batch = Tensor::full([n_images], t as i64, (Kind::Int64, device));
            let out = match (&labels, class_cond) {
                (Some(labels), Some(cond)) => crate::guided_forward(
                    model,
                    &x,
                    &t_batch,
                    labels,
                    cond.guidance,
                    options.autocast,
                ),
                _ => model::forward(model, &x, &t_batch, false, options.autocast),
            };
            let noise = sampler.needs_noise(i).then(&mut randn).transpose()?;
            x = sampler.step(i, &out, &x, noise.as_ref()).prev_sample;
            if snapshot_at.contains(&i) && snapshot_rows > 0 {
                snapshots.push((
                    t,
                    x.narrow(0, 0, snapshot_rows)
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
/// labels that do not fit the network or the batch);
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
    config.timesteps(sched.schedule().n_steps())?;
    options.check_classes(model, shape[0].max(0) as usize)?;
    run_chains(
        model,
        sched,
        config,
        options,
        options.class_cond.as_ref(),
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
        let class_cond = (self.options.class_cond.as_ref()).map(|c| c.slice(first_image, rows));
        let output = Generator::new(seed, self.sched.device())
            .map_err(SampleError::from)
            .and_then(|mut gen| {
                run_chains(
                    self.model,
                    self.sched,
                    &self.config,
                    &self.options,
                    class_cond.as_ref(),
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
/// [`SampleError::Config`] naming `n_images`, `batch_size`, `image_shape`, `steps`, `eta` or the
/// class labels when the request is impossible; this is checked here, before any batch runs.
pub fn sample_batches<'a, F: FnMut(usize, usize)>(
    model: &'a dyn Denoiser,
    sched: &'a ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    plan: BatchPlan,
    on_step: F,
) -> Result<SampleBatches<'a, F>, SampleError> {
    plan.validate()?;
    config.timesteps(sched.schedule().n_steps())?;
    options.check_classes(model, plan.n_images)?;
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
    use schedule::{BetaSchedule, Schedule};

    fn sched(n_steps: usize) -> ScheduleTensors {
        let s = Schedule::new(&BetaSchedule::Linear {
            n_steps,
            start: 1e-4,
            end: 0.02,
        })
        .unwrap();
        ScheduleTensors::new(&s, Device::Cpu)
    }

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

    #[test]
    fn impossible_settings_name_the_field() {
        let st = sched(100);
        let err = |config: SamplerConfig| {
            Sampler::new(&st, &config, Prediction::Eps, false)
                .unwrap_err()
                .to_string()
        };
        let too_many = err(SamplerConfig::Ddim {
            steps: 101,
            eta: 0.0,
            spacing: TimestepSpacing::Leading,
        });
        assert!(
            too_many.contains("steps = 101") && too_many.contains("T = 100"),
            "{too_many}"
        );
        let zero = err(SamplerConfig::DpmSolverPp {
            steps: 0,
            spacing: TimestepSpacing::Trailing,
        });
        assert!(zero.contains("steps = 0"), "{zero}");
        let eta = err(SamplerConfig::Ddim {
            steps: 10,
            eta: 1.5,
            spacing: TimestepSpacing::Leading,
        });
        assert!(eta.contains("eta = 1.5"), "{eta}");
    }

    #[test]
    fn only_stochastic_steps_need_noise() {
        let st = sched(10);
        let ddpm =
            Sampler::new(&st, &SamplerConfig::seed_notebook(), Prediction::Eps, false).unwrap();
        assert_eq!(
            (0..10).filter(|&i| ddpm.needs_noise(i)).count(),
            9,
            "all but t = 0"
        );
        let ddim = |eta| {
            let config = SamplerConfig::Ddim {
                steps: 5,
                eta,
                spacing: TimestepSpacing::Leading,
            };
            let s = Sampler::new(&st, &config, Prediction::Eps, false).unwrap();
            (0..5).filter(|&i| s.needs_noise(i)).count()
        };
        assert_eq!((ddim(0.0), ddim(0.5)), (0, 4));
    }
}
