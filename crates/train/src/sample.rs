//! Samplers: DDPM ancestral sampling (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021).
//!
//! Both take the network and the schedule as arguments, run in f32 whatever precision the
//! network uses, and draw all their randomness from a seed, so a fixed seed gives fixed images
//! on the CPU.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use model::Denoiser;
use schedule::tensor::ScheduleTensors;
use schedule::{TimestepSpacing, Timesteps, VarianceType};

use crate::objective::Prediction;
use crate::TrainError;

/// Which reverse process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// Ancestral sampling over all T steps with σ_t² = β_t (`fixed_large`) or β̃_t (`fixed_small`).
    Ddpm {
        /// The reverse variance.
        variance: VarianceType,
    },
    /// DDIM over `steps` of the T steps; η = 0 is deterministic, η = 1 matches DDPM's β̃.
    Ddim {
        /// Number of sampling steps (≤ T).
        steps: usize,
        /// η of Song et al. 2021, Eq. 16.
        eta: f64,
        /// How the steps are spread over 0..T.
        spacing: TimestepSpacing,
    },
}

impl SamplerConfig {
    /// The notebook's sampler: ancestral, σ_t² = β̃_t (its `posterior_variance`).
    pub fn seed_notebook() -> Self {
        SamplerConfig::Ddpm { variance: VarianceType::FixedSmall }
    }
}

/// The result of sampling.
#[derive(Debug)]
pub struct SampleOutput {
    /// Final samples, `[N, C, H, W]` f32 on the model's device, clamped to [-1, 1].
    pub images: Tensor,
    /// `(t, x_t)` at evenly spaced points of the chain (the last is the final sample), for
    /// reverse-process strips and GIFs; each `[N, C, H, W]` f32 on the CPU.
    pub snapshots: Vec<(usize, Tensor)>,
}

/// Converts a network output to ε_θ according to what the network predicts.
fn to_eps(output: &Tensor, prediction: Prediction, sched: &ScheduleTensors, t: usize, x_t: &Tensor) -> Tensor {
    let s = sched.schedule();
    let (a, b) = (s.sqrt_alphas_cumprod()[t], s.sqrt_one_minus_alphas_cumprod()[t]);
    match prediction {
        Prediction::Eps => output.shallow_clone(),
        Prediction::X0 => (x_t - output * a) / b,
        Prediction::V => output * a + x_t * b,
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
    /// Run the network under bf16 autocast (CUDA).
    pub autocast: bool,
}

/// Draws `shape[0]` samples.
///
/// `on_step(i, n)` is called after each of the n steps (for progress bars).
///
/// # Errors
/// [`TrainError::Config`] for impossible settings (more DDIM steps than T, η < 0).
pub fn sample(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &SamplerConfig,
    options: &SampleOptions,
    shape: [i64; 4],
    seed: u64,
    mut on_step: impl FnMut(usize, usize),
) -> Result<SampleOutput, TrainError> {
    let n_train = sched.schedule().n_steps();
    let timesteps = match config {
        SamplerConfig::Ddpm { .. } => Timesteps::full(n_train),
        SamplerConfig::Ddim { steps, eta, spacing } => {
            if !(*eta >= 0.0) {
                return Err(TrainError::Config(format!("--eta {eta} is invalid: it must be >= 0")));
            }
            Timesteps::new(n_train, *steps, *spacing).map_err(|e| TrainError::Config(format!("--steps: {e}")))?
        }
    };
    let steps: Vec<usize> = timesteps.as_slice().to_vec();
    let n = steps.len();
    // Snapshot after step i when i is a multiple of n / n_snapshots counted from the end, so
    // the last snapshot is the final sample (the notebook's `i % stepsize == 0`).
    let stride = if options.n_snapshots == 0 { usize::MAX } else { (n / options.n_snapshots).max(1) };
    let device = sched.device();
    tch::manual_seed(seed as i64);
    let output = tch::no_grad(|| -> Result<SampleOutput, TrainError> {
        let mut x = Tensor::randn(shape, (Kind::Float, device));
        let mut snapshots = Vec::new();
        for (i, &t) in steps.iter().enumerate() {
            let t_batch = Tensor::full([shape[0]], t as i64, (Kind::Int64, device));
            let out = crate::forward(model, &x, &t_batch, false, options.autocast);
            let mut eps = to_eps(&out, options.prediction, sched, t, &x);
            let noise = Tensor::randn_like(&x);
            x = match config {
                SamplerConfig::Ddpm { variance } => {
                    if options.clip_x0 {
                        let x0 = sched.pred_x0(&eps, t, &x).clamp(-1.0, 1.0);
                        let mean = sched.posterior_mean(&x0, &x, t);
                        match t {
                            0 => mean,
                            _ => mean + noise * sched.schedule().reverse_variance(t, *variance).sqrt(),
                        }
                    } else {
                        sched.step(&eps, t, &x, &noise, *variance).prev_sample
                    }
                }
                SamplerConfig::Ddim { eta, .. } => {
                    let t_prev = timesteps.prev_timestep(t);
                    if options.clip_x0 {
                        // Re-derive ε from the clipped x̂_0 so the step stays on the DDIM path.
                        let x0 = sched.pred_x0(&eps, t, &x).clamp(-1.0, 1.0);
                        let s = sched.schedule();
                        eps = (&x * s.sqrt_recip_alphas_cumprod()[t] - x0) / s.sqrt_recipm1_alphas_cumprod()[t];
                    }
                    sched
                        .ddim_step(&eps, t, t_prev, &x, &noise, *eta)
                        .map_err(|e| TrainError::Config(e.to_string()))?
                        .prev_sample
                }
            };
            let remaining = n - 1 - i;
            if remaining % stride == 0 && snapshots.len() < options.n_snapshots {
                snapshots.push((t, x.clamp(-1.0, 1.0).to_device(tch::Device::Cpu)));
            }
            on_step(i + 1, n);
        }
        Ok(SampleOutput { images: x.clamp(-1.0, 1.0), snapshots })
    })?;
    Ok(output)
}

/// Converts `[N, C, H, W]` f32 images on [-1, 1] to u8 NCHW bytes on the CPU.
pub fn to_u8_nchw(images: &Tensor) -> Vec<u8> {
    let bytes = ((images.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .view([-1]);
    Vec::<u8>::try_from(&bytes).expect("u8 tensor")
}
