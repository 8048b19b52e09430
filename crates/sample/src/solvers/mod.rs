//! The reverse-process solvers behind one step interface: DDPM ancestral sampling (Ho et al.
//! 2020, Alg. 2, `ddpm.rs`), DDIM (Song et al. 2021, Eq. 12, `ddim.rs`), multistep DPM-Solver++ of
//! orders 1–3 and its SDE variant (Lu et al. 2022, `dpm_solver.rs`), UniPC (Zhao et al. 2023,
//! `unipc.rs`), and in σ-space Euler, Euler ancestral and Heun (Karras et al. 2022,
//! `sigma.rs`) and PLMS (Liu et al. 2022, `pndm.rs`), each following the diffusers scheduler of
//! the same name step for step.
//!
//! [`SamplerConfig`] says which solver; [`Sampler`] is one chain's solver state. The chain loop
//! (`sampler.rs`), guidance and sharding see only [`Sampler`]: they start from x_T ·
//! [`Sampler::init_noise_sigma`], and for network evaluation `i` (one per step, but Heun's two)
//! run the network on the sample times [`Sampler::input_scale`]`(i)` at
//! [`Sampler::model_timesteps`]`[i]`, ask [`Sampler::needs_noise`], and call [`Sampler::step`],
//! which reads the network's output as x̂_0 and ε̂ ([`Denoised`]) and returns the next sample. A
//! multistep solver's history (earlier x̂_0, the sample before the last predictor) lives in its
//! state, never in the loop. Every per-step coefficient is computed in f64 on the host from the
//! schedule's tables when the sampler is made, so no step reads the device.
//!
//! Adding a solver: a module with a type that implements [`Solver`], a [`SamplerConfig`] variant,
//! and one arm in [`Sampler::new`].

mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod linalg;
mod pndm;
mod sigma;
mod unipc;

pub use config::{SamplerConfig, UniPcVariant};
pub use sigma::SigmaSpacing;

use model::Prediction;
use schedule::tensor::{ScheduleTensors, StepOutput};
use schedule::Timesteps;
use tch::Tensor;

use crate::likelihood::{split_output, ModelVariance};
use crate::SampleError;

/// The network's output at one step, read as the solvers need it: x̂_0, or x̂_0 and ε̂ (Ho et
/// al. 2020, Eq. 4 solved for the missing one), clamped and made consistent when clipping.
#[derive(Debug)]
pub struct Denoised<'a> {
    /// The network's raw output.
    pub output: &'a Tensor,
    /// The sample the network saw.
    pub x_t: &'a Tensor,
    /// Its timestep (rounded, for a σ-space sampler).
    pub t: usize,
    /// σ of a σ-space sampler: `x_t` is then x_σ = x_t/√ᾱ, and the network saw x_σ/√(σ² + 1).
    sigma: Option<f64>,
    /// v_Σ ∈ [−1, 1] of a network that learns its variance (the second half of its 2·C output
    /// channels, Improved DDPM Eq. 15; `output` is then the first half); `None` for a fixed one.
    pub model_v: Option<&'a Tensor>,
    sched: &'a ScheduleTensors,
    prediction: Prediction,
    clip_x0: bool,
}

impl Denoised<'_> {
    /// √ᾱ_t and √(1 − ᾱ_t) at this step.
    fn alpha_sigma(&self) -> (f64, f64) {
        let s = self.sched.schedule();
        (
            s.sqrt_alphas_cumprod()[self.t],
            s.sqrt_one_minus_alphas_cumprod()[self.t],
        )
    }

    /// x̂_0, clamped to [-1, 1] when clipping (diffusers' `clip_sample`, or dynamic thresholding
    /// with `sample_max_value = 1`, which is then a clamp).
    pub fn x0(&self) -> Tensor {
        let (a, b) = self.alpha_sigma();
        let x0 = match (self.sigma, self.prediction) {
            (_, Prediction::X0) => self.output.shallow_clone(),
            // diffusers' σ-space forms: x̂_0 = x_σ − σ ε̂, and from v with α = 1/√(σ² + 1).
            (Some(s), Prediction::Eps) => self.x_t - self.output * s,
            (Some(s), Prediction::V) => {
                self.output * (-s / (s * s + 1.0).sqrt()) + self.x_t / (s * s + 1.0)
            }
            (None, prediction) => self.vp_x0(prediction, a, b),
        };
        if self.clip_x0 {
            x0.clamp(-1.0, 1.0)
        } else {
            x0
        }
    }

    /// x̂_0 of a variance-preserving sampler, unclipped.
    fn vp_x0(&self, prediction: Prediction, a: f64, b: f64) -> Tensor {
        match prediction {
            Prediction::Eps => self.sched.pred_x0(self.output, self.t, self.x_t),
            Prediction::X0 => self.output.shallow_clone(),
            // v = √ᾱ ε − √(1 − ᾱ) x_0 and x_t = √ᾱ x_0 + √(1 − ᾱ) ε.
            Prediction::V => self.x_t * a - self.output * b,
        }
    }

    /// x̂_0 and ε̂; when clipping, ε̂ is re-derived from the clamped x̂_0, so that the step stays
    /// consistent (diffusers' `use_clipped_model_output`).
    pub fn x0_and_eps(&self) -> (Tensor, Tensor) {
        if let Some(s) = self.sigma {
            let x0 = self.x0();
            let eps = (self.x_t - &x0) / s;
            return (x0, eps);
        }
        let (a, b) = self.alpha_sigma();
        let x_t = self.x_t;
        let (x0, eps) = match self.prediction {
            Prediction::Eps => (
                self.sched.pred_x0(self.output, self.t, x_t),
                self.output.shallow_clone(),
            ),
            Prediction::X0 => (self.output.shallow_clone(), (x_t - self.output * a) / b),
            Prediction::V => (x_t * a - self.output * b, self.output * a + x_t * b),
        };
        if self.clip_x0 {
            let x0 = x0.clamp(-1.0, 1.0);
            let eps = (x_t - &x0 * a) / b;
            (x0, eps)
        } else {
            (x0, eps)
        }
    }

    /// Whether the raw output is ε̂ itself, unclipped (DDPM's fast path).
    fn is_plain_eps(&self) -> bool {
        self.prediction == Prediction::Eps && !self.clip_x0
    }
}

/// One solver's state for one chain: the step from x_t to the next sample.
pub trait Solver: std::fmt::Debug {
    /// Whether step `i` adds noise.
    fn needs_noise(&self, i: usize) -> bool;

    /// Step `i` from `out.x_t`, given the network's output there; `noise` is `Some` where
    /// [`Solver::needs_noise`].
    fn step(&mut self, i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput;
}

/// The α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = ln(α_t/σ_t) of every step's timestep, and one more
/// entry for the end of the chain (σ = 0, α = 1, λ = +∞), as diffusers' multistep schedulers
/// append a final σ of zero (`final_sigmas_type="zero"`).
#[derive(Debug, Clone)]
pub(crate) struct LogSnrTable {
    pub alpha: Vec<f64>,
    pub sigma: Vec<f64>,
    pub lambda: Vec<f64>,
}

impl LogSnrTable {
    fn new(sched: &ScheduleTensors, timesteps: &Timesteps) -> Self {
        let s = sched.schedule();
        let ac = s.alphas_cumprod();
        let mut table = LogSnrTable {
            alpha: Vec::new(),
            sigma: Vec::new(),
            lambda: Vec::new(),
        };
        for &t in timesteps.as_slice() {
            table.alpha.push(s.sqrt_alphas_cumprod()[t]);
            table.sigma.push(s.sqrt_one_minus_alphas_cumprod()[t]);
            table
                .lambda
                .push(0.5 * ac[t].ln() - 0.5 * (1.0 - ac[t]).ln());
        }
        table.alpha.push(1.0);
        table.sigma.push(0.0);
        table.lambda.push(f64::INFINITY);
        table
    }
}

/// One reverse step of a sampler on given tensors.
///
/// Steps are numbered by their network evaluation `i`, in sampling order: one per step, but
/// Heun's two per step (diffusers numbers them the same way). DDPM and DDIM steps are
/// independent of one another; the multistep solvers (DPM-Solver++, UniPC) remember the x̂_0 of
/// earlier steps, so their steps must be taken in order from `i = 0` for one chain (a step whose
/// previous index was not the last one taken starts the history afresh, at first order); Heun's
/// second evaluation of a step must follow its first.
#[derive(Debug)]
pub struct Sampler<'a> {
    sched: &'a ScheduleTensors,
    prediction: Prediction,
    clip_x0: bool,
    /// Per evaluation: the timestep the network sees, rounded.
    timesteps: Vec<usize>,
    /// Per evaluation: the timestep the network sees, exactly.
    model_timesteps: Vec<f64>,
    /// Per evaluation, for a σ-space sampler: σ.
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    solver: Box<dyn Solver + 'a>,
}

impl<'a> Sampler<'a> {
    /// A sampler for `config` on `sched`, for a network that predicts `prediction`, clamping
    /// x̂_0 to [-1, 1] when `clip_x0` is set.
    ///
    /// # Errors
    /// As [`SamplerConfig::timesteps`] and [`SamplerConfig::nfe`].
    pub fn new(
        sched: &'a ScheduleTensors,
        config: &SamplerConfig,
        prediction: Prediction,
        clip_x0: bool,
    ) -> Result<Self, SampleError> {
        if let Some(table) = config.sigma_table(sched.schedule())? {
            let (solver, t, sigma): (Box<dyn Solver + 'a>, _, _) = match config {
                SamplerConfig::Heun { .. } => (
                    Box::new(sigma::Heun::new(&table)),
                    sigma::Heun::evaluations(&table.t),
                    sigma::Heun::evaluations(&table.sigma[..table.len()]),
                ),
                _ => (
                    Box::new(sigma::Euler::new(
                        &table,
                        matches!(config, SamplerConfig::EulerAncestral { .. }),
                    )),
                    table.t.clone(),
                    table.sigma[..table.len()].to_vec(),
                ),
            };
            return Ok(Self {
                sched,
                prediction,
                clip_x0,
                timesteps: t.iter().map(|t| t.round() as usize).collect(),
                model_timesteps: t,
                sigmas: Some(sigma),
                init_noise_sigma: table.init_noise_sigma,
                solver,
            });
        }
        let timesteps = config.timesteps(sched.schedule().n_steps())?;
        if let SamplerConfig::Pndm { steps, prk, .. } = config {
            let n_train = sched.schedule().n_steps();
            let evals = pndm::evaluations(timesteps.as_slice(), prk.then_some(n_train));
            return Ok(Self {
                sched,
                prediction,
                clip_x0,
                model_timesteps: evals.iter().map(|&t| t as f64).collect(),
                solver: Box::new(pndm::Plms::new(
                    sched,
                    evals.clone(),
                    *steps,
                    prediction,
                    clip_x0,
                    *prk,
                )),
                timesteps: evals,
                sigmas: None,
                init_noise_sigma: 1.0,
            });
        }
        let solver: Box<dyn Solver + 'a> = match config {
            SamplerConfig::Ddpm { variance, .. } => {
                Box::new(ddpm::Ddpm::new(sched, *variance, timesteps.clone()))
            }
            SamplerConfig::Ddim { eta, .. } => {
                Box::new(ddim::Ddim::new(sched, timesteps.clone(), *eta))
            }
            SamplerConfig::DpmSolverPp { order, sde, .. } => Box::new(
                dpm_solver::DpmSolverPp::new(LogSnrTable::new(sched, &timesteps), *order, *sde),
            ),
            SamplerConfig::UniPc { order, variant, .. } => Box::new(unipc::UniPc::new(
                LogSnrTable::new(sched, &timesteps),
                *order,
                *variant,
            )),
            SamplerConfig::Euler { .. }
            | SamplerConfig::Heun { .. }
            | SamplerConfig::EulerAncestral { .. }
            | SamplerConfig::Pndm { .. } => unreachable!("made above"),
        };
        Ok(Self {
            sched,
            prediction,
            clip_x0,
            model_timesteps: timesteps.as_slice().iter().map(|&t| t as f64).collect(),
            timesteps: timesteps.as_slice().to_vec(),
            sigmas: None,
            init_noise_sigma: 1.0,
            solver,
        })
    }

    /// The timestep of each network evaluation, in sampling order, rounded to an integer for
    /// the σ-space samplers (exact for the others).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The timestep the network sees at each evaluation, in sampling order: fractional for the
    /// σ-space samplers with `linspace` or `karras` spacing, passed to the network unrounded.
    pub fn model_timesteps(&self) -> &[f64] {
        &self.model_timesteps
    }

    /// Whether the network sees integer timesteps (every sampler but the σ-space ones).
    pub fn integer_timesteps(&self) -> bool {
        self.sigmas.is_none()
    }

    /// What the starting N(0, I) noise is multiplied by: 1, or σ_max (√(σ_max² + 1) with
    /// `leading` spacing) for the σ-space samplers, as diffusers' `init_noise_sigma`.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// What the sample is multiplied by before the network sees it at evaluation `i`: 1, or
    /// 1/√(σ² + 1) for the σ-space samplers (diffusers' `scale_model_input`).
    ///
    /// # Panics
    /// When `i` is not an evaluation index.
    pub fn input_scale(&self, i: usize) -> f64 {
        match &self.sigmas {
            Some(sigmas) => 1.0 / (sigmas[i] * sigmas[i] + 1.0).sqrt(),
            None => {
                assert!(
                    i < self.timesteps.len(),
                    "step {i} of {}",
                    self.timesteps.len()
                );
                1.0
            }
        }
    }

    /// The number of network evaluations (NFE) of one chain.
    pub fn nfe(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether step `i` adds noise, so that [`Sampler::step`] needs a `noise` tensor.
    ///
    /// # Panics
    /// When `i` is not a step index.
    pub fn needs_noise(&self, i: usize) -> bool {
        assert!(
            i < self.timesteps.len(),
            "step {i} of {}",
            self.timesteps.len()
        );
        self.solver.needs_noise(i)
    }

    /// One step from `x_t` at `timesteps()[i]` to the next timestep (or to x_0 after the last),
    /// given the network's output there. The equations are in each solver's module. For a
    /// σ-space sampler `x_t` is the unscaled sample (the network saw it times
    /// [`Sampler::input_scale`]), as in diffusers. An output of 2·C channels is a network that
    /// learns its variance (Improved DDPM): the prediction, then v_Σ, which DDPM and DDIM with
    /// η > 0 use for σ² and the other solvers ignore.
    ///
    /// # Shapes
    /// `model_output`: `[N, C, H, W]` or `[N, 2C, H, W]`; `x_t` and `noise` (z ~ N(0, I)):
    /// `[N, C, H, W]` f32. Both outputs `[N, C, H, W]`.
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
        if self.solver.needs_noise(i) {
            assert!(
                noise.is_some(),
                "step {i} (t = {t}) adds noise: pass a noise tensor"
            );
        }
        let learned = model_output.size()[1] == 2 * x_t.size()[1];
        let (output, model_v) = if learned {
            split_output(model_output, ModelVariance::LearnedRange)
        } else {
            (model_output.shallow_clone(), None)
        };
        let out = Denoised {
            output: &output,
            x_t,
            t,
            sigma: self.sigmas.as_ref().map(|s| s[i]),
            model_v: model_v.as_ref(),
            sched: self.sched,
            prediction: self.prediction,
            clip_x0: self.clip_x0,
        };
        self.solver.step(i, &out, noise)
    }
}

/// Drops the history of a multistep solver unless step `i` follows the last one taken.
pub(crate) fn follows(last: Option<usize>, i: usize) -> bool {
    i > 0 && last == Some(i - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedule::{BetaSchedule, Schedule, TimestepSpacing};
    use tch::Device;

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
            timesteps: None,
        });
        assert!(
            too_many.contains("steps = 101") && too_many.contains("T = 100"),
            "{too_many}"
        );
        let zero = err(SamplerConfig::dpm_solver_pp(0, TimestepSpacing::Trailing));
        assert!(zero.contains("steps = 0"), "{zero}");
        let eta = err(SamplerConfig::Ddim {
            steps: 10,
            eta: 1.5,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        });
        assert!(eta.contains("eta = 1.5"), "{eta}");
        for (config, what) in [
            (
                SamplerConfig::DpmSolverPp {
                    steps: 10,
                    spacing: TimestepSpacing::Trailing,
                    order: 4,
                    sde: false,
                    timesteps: None,
                },
                "order = 4",
            ),
            (
                SamplerConfig::UniPc {
                    steps: 10,
                    spacing: TimestepSpacing::Trailing,
                    order: 0,
                    variant: UniPcVariant::Bh2,
                    timesteps: None,
                },
                "order = 0",
            ),
        ] {
            let e = err(config);
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn only_stochastic_steps_need_noise() {
        let st = sched(10);
        let count = |config: SamplerConfig| {
            let s = Sampler::new(&st, &config, Prediction::Eps, false).unwrap();
            (0..s.nfe()).filter(|&i| s.needs_noise(i)).count()
        };
        assert_eq!(count(SamplerConfig::seed_notebook()), 9, "all but t = 0");
        let ddim = |eta| SamplerConfig::Ddim {
            steps: 5,
            eta,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        };
        assert_eq!((count(ddim(0.0)), count(ddim(0.5))), (0, 4));
        let dpm = |sde| SamplerConfig::DpmSolverPp {
            steps: 5,
            spacing: TimestepSpacing::Trailing,
            order: 2,
            sde,
            timesteps: None,
        };
        assert_eq!(
            (count(dpm(false)), count(dpm(true))),
            (0, 4),
            "all but the last"
        );
        let unipc = SamplerConfig::UniPc {
            steps: 5,
            spacing: TimestepSpacing::Trailing,
            order: 3,
            variant: UniPcVariant::Bh1,
            timesteps: None,
        };
        assert_eq!(count(unipc), 0);
    }
}
