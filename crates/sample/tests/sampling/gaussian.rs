//! A model with the exact ε_θ for Gaussian data.

use super::*;

/// x_0 ~ N(μ, s²) in every pixel, independently. Then x_t ~ N(√ᾱ μ, ᾱ s² + 1 − ᾱ) and the
/// optimal (MMSE) ε̂ = E[ε | x_t] = √(1 − ᾱ) (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ): a denoiser with no
/// training error, so the samplers alone decide what comes out.
#[derive(Debug)]
struct GaussianDenoiser {
    mu: f64,
    var: f64,
    sqrt_alphas_cumprod: Tensor,
    sqrt_one_minus_alphas_cumprod: Tensor,
}

impl GaussianDenoiser {
    fn new(st: &ScheduleTensors, mu: f64, var: f64) -> Self {
        Self {
            mu,
            var,
            sqrt_alphas_cumprod: st.sqrt_alphas_cumprod.shallow_clone(),
            sqrt_one_minus_alphas_cumprod: st.sqrt_one_minus_alphas_cumprod.shallow_clone(),
        }
    }
}

impl Denoiser for GaussianDenoiser {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, _train: bool) -> Tensor {
        let a = extract(&self.sqrt_alphas_cumprod, timesteps, 4);
        let b = extract(&self.sqrt_one_minus_alphas_cumprod, timesteps, 4);
        let marginal_var = &a * &a * self.var + &b * &b;
        b * (xs - &a * self.mu) / marginal_var
    }
}

/// μ and s² of the toy data: [-1, 1], where outputs are clamped, is μ − 5.5 s to μ + 4.5 s, so
/// clamping changes about 0.2 of the 65 536 pixels and no moment measurably.
const MU: f64 = 0.1;
const VAR: f64 = 0.04;

/// T = 100 linear steps from 1e-4 to 0.2: ᾱ_T ≈ e^−10, so x_T ~ N(0, I) is the right start.
fn toy_schedule() -> ScheduleTensors {
    let s = Schedule::new(&BetaSchedule::Linear {
        n_steps: 100,
        start: 1e-4,
        end: 0.2,
    })
    .unwrap();
    ScheduleTensors::new(&s, Device::Cpu)
}

/// 4096 images of 4×4: 65 536 independent pixels.
const TOY_SHAPE: [i64; 4] = [4096, 1, 4, 4];

fn mean_var(xs: &Tensor) -> (f64, f64) {
    let v = values(xs);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (
        mean,
        v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0),
    )
}

fn toy_samples(st: &ScheduleTensors, config: &SamplerConfig, seed: u64) -> Tensor {
    let model = GaussianDenoiser::new(st, MU, VAR);
    let mut gen = Generator::cpu(seed);
    sample(
        &model,
        st,
        config,
        &options(),
        TOY_SHAPE,
        &mut gen,
        |_, _| {},
    )
    .unwrap()
    .images
}

/// The exact law of DDPM(β̃) samples on the Gaussian toy: with x̂_0 = μ + k_t (x_t − √ᾱ_t μ),
/// k_t = √ᾱ_t s²/(ᾱ_t s² + 1 − ᾱ_t), each step x_{t−1} = c1 x̂_0 + c2 x_t + σ_t z is affine in x_t,
/// so mean and variance propagate in closed form from N(0, 1). (β̃_t leaves Var[x_0 | x_t] out of
/// each step, so the result is a little narrower than the data: that is the sampler, not a bug.)
fn ddpm_posterior_variance_law(st: &ScheduleTensors) -> (f64, f64) {
    let s = st.schedule();
    let (mut mean, mut var) = (0.0, 1.0);
    for t in (0..s.n_steps()).rev() {
        let (a, ab) = (s.sqrt_alphas_cumprod()[t], s.alphas_cumprod()[t]);
        let k = a * VAR / (ab * VAR + 1.0 - ab);
        let (c1, c2) = (s.posterior_mean_coef1()[t], s.posterior_mean_coef2()[t]);
        let gain = c1 * k + c2;
        mean = c1 * (MU + k * (mean - a * MU)) + c2 * mean;
        var = gain * gain * var
            + if t > 0 {
                s.posterior_variance()[t]
            } else {
                0.0
            };
    }
    (mean, var)
}

/// DDIM with η = 1 over all T steps is, step by step, DDPM with σ_t² = β̃_t (Song et al. 2021,
/// §4.1): independent samples of the two have the same mean and variance, and both have the
/// exact law of that process.
///
/// With N = 65 536 independent pixels of variance about s², the standard error of a mean is
/// s/√N and of a variance s²·√(2/N) (0.55 % of s²); a difference of two independent estimates
/// has √2 times that. The tolerances are 5 standard errors, which a correct sampler exceeds with
/// probability below 1e-6, and which a DDIM σ_t of β_t instead of β̃_t or a missing noise term
/// would break many times over.
#[test]
fn ddim_with_eta_1_over_all_steps_matches_ddpm_with_posterior_variance_in_distribution() {
    one_thread();
    let st = ScheduleTensors::new(
        &Schedule::new(&BetaSchedule::ho2020()).unwrap(),
        Device::Cpu,
    );
    let ddpm = toy_samples(&st, &SamplerConfig::ddpm(VarianceType::FixedSmall), 1);
    let ddim = toy_samples(
        &st,
        &SamplerConfig::Ddim {
            steps: 1000,
            eta: 1.0,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        },
        2,
    );
    let ((m1, v1), (m2, v2)) = (mean_var(&ddpm), mean_var(&ddim));
    let (law_mean, law_var) = ddpm_posterior_variance_law(&st);
    let n = (TOY_SHAPE.iter().product::<i64>()) as f64;
    let se_mean = (VAR / n).sqrt();
    let se_var = VAR * (2.0 / n).sqrt();
    let sqrt2 = 2f64.sqrt();
    assert!(
        (m1 - m2).abs() < 5.0 * sqrt2 * se_mean,
        "means: DDPM {m1:.5}, DDIM η=1 {m2:.5}"
    );
    assert!(
        (v1 - v2).abs() < 5.0 * sqrt2 * se_var,
        "variances: DDPM {v1:.5}, DDIM η=1 {v2:.5}"
    );
    for (name, m, v) in [("DDPM", m1, v1), ("DDIM η=1", m2, v2)] {
        assert!(
            (m - law_mean).abs() < 5.0 * se_mean,
            "{name} mean {m:.5} vs exact {law_mean:.5}"
        );
        assert!(
            (v - law_var).abs() < 5.0 * se_var,
            "{name} variance {v:.5} vs exact {law_var:.5}"
        );
    }
    // The law is close to the data's (within 10 % of s²), and the two really are independent
    // draws, not one chain twice.
    assert!(
        (law_var / VAR - 1.0).abs() < 0.1 && (law_mean - MU).abs() < 0.01,
        "{law_mean} {law_var}"
    );
    assert!(f64::try_from((&ddpm - &ddim).abs().max()).unwrap() > 0.1);
}

/// With the same noise the two are the same chain: DDIM(η = 1, all steps) reproduces DDPM(β̃)
/// pixel for pixel, up to f32 rounding.
#[test]
fn ddim_with_eta_1_over_all_steps_is_the_ddpm_chain_for_the_same_noise() {
    one_thread();
    let st = toy_schedule();
    let ddpm = toy_samples(&st, &SamplerConfig::ddpm(VarianceType::FixedSmall), 5);
    let ddim = toy_samples(
        &st,
        &SamplerConfig::Ddim {
            steps: 100,
            eta: 1.0,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        },
        5,
    );
    let diff = f64::try_from((&ddpm - &ddim).abs().max()).unwrap();
    assert!(diff < 1e-3, "max |DDPM − DDIM| = {diff}");
}

/// DPM-Solver++(2M) is a second-order solver of the probability-flow ODE and DDIM (η = 0) a
/// first-order one (Lu et al. 2022, Thm. 3.2 of DPM-Solver; Song et al. 2021, §4.3). From the same
/// x_T, on the exact ε_θ, the largest error against a 1000-step solution must shrink about 4× (at
/// least 3×) when the steps double for DPM-Solver++, and about 2× (at most 2.5×) for DDIM. On
/// this toy numpy gives 0.044, 0.0083, 0.0015 for DPM-Solver++ at 50, 100, 200 steps and 0.105,
/// 0.054, 0.028 for DDIM; f32 rounding (about 1e-6) is far below all of them.
#[test]
fn dpm_solver_pp_converges_at_second_order_and_ddim_at_first() {
    one_thread();
    let st = ScheduleTensors::new(
        &Schedule::new(&BetaSchedule::ho2020()).unwrap(),
        Device::Cpu,
    );
    let model = GaussianDenoiser::new(&st, MU, VAR);
    let run = |config: SamplerConfig| {
        sample(
            &model,
            &st,
            &config,
            &options(),
            [256, 1, 4, 4],
            &mut Generator::cpu(9),
            |_, _| {},
        )
        .unwrap()
        .images
    };
    let reference = run(SamplerConfig::dpm_solver_pp(
        1000,
        TimestepSpacing::Trailing,
    ));
    let error =
        |config: SamplerConfig| f64::try_from((run(config) - &reference).abs().max()).unwrap();
    let dpm: Vec<f64> = [50, 100, 200]
        .map(|steps| {
            error(SamplerConfig::dpm_solver_pp(
                steps,
                TimestepSpacing::Trailing,
            ))
        })
        .to_vec();
    let ddim: Vec<f64> = [50, 100, 200]
        .map(|steps| {
            error(SamplerConfig::Ddim {
                steps,
                eta: 0.0,
                spacing: TimestepSpacing::Trailing,
                timesteps: None,
            })
        })
        .to_vec();
    for k in 0..2 {
        assert!(
            dpm[k] / dpm[k + 1] > 3.0,
            "DPM-Solver++ errors {dpm:?} do not fall at second order"
        );
        let ratio = ddim[k] / ddim[k + 1];
        assert!(
            (1.5..2.5).contains(&ratio),
            "DDIM errors {ddim:?} do not fall at first order"
        );
    }
    assert!(
        dpm[1] < ddim[1] / 4.0,
        "DPM-Solver++ {dpm:?} vs DDIM {ddim:?}"
    );
}
