//! The samplers against diffusers (golden fixtures), against each other in distribution on a
//! model whose ε_θ is exact, and their reproducibility from a seed.

use std::path::Path;

use model::{Denoiser, ModelConfig, Prediction, SimpleUnetConfig};
use sample::{
    batch_seed, guide, sample, sample_batches, BatchPlan, ClassConditioning, Generator,
    SampleOptions, Sampler, SamplerConfig, SigmaSpacing,
};
use schedule::tensor::{extract, ScheduleTensors};
use schedule::{BetaSchedule, Schedule, TimestepSpacing, VarianceType};
use serde::Deserialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// One intra-op thread: the tests' small elementwise ops run many times slower when several
/// tests' thread pools share a loaded machine's cores. (No lock: every sampler draws from its
/// own generator, so tests on parallel threads cannot disturb each other's noise.)
fn one_thread() {
    tch::set_num_threads(1);
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(xs.to_kind(Kind::Double).reshape([-1])).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Golden steps from scripts/golden/sampler.py.

#[derive(Deserialize)]
struct Fixture {
    schedule: BetaSchedule,
    shape: [i64; 4],
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: SamplerConfig,
    prediction: Prediction,
    clip_x0: bool,
    steps: Vec<GoldenStep>,
}

#[derive(Deserialize)]
struct GoldenStep {
    index: usize,
    t: usize,
    x_t: Vec<f64>,
    model_output: Vec<f64>,
    noise: Option<Vec<f64>>,
    prev_sample: Vec<f64>,
    pred_x0: Vec<f64>,
}

/// Every sampler step, including DPM-Solver++(2M)'s first-order first step, second-order middle
/// steps and final step to x̂_0, matches diffusers' schedulers run in float64 on the same inputs
/// (which the script checks against numpy closed forms to 1e-9).
#[test]
fn one_step_matches_diffusers_for_every_sampler() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler_golden.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let mut kinds = std::collections::BTreeSet::new();
    for case in &fixture.cases {
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, case.clip_x0).unwrap();
        for step in &case.steps {
            assert_eq!(
                sampler.timesteps()[step.index],
                step.t,
                "{}: timestep of step {}",
                case.name,
                step.index
            );
            assert_eq!(
                sampler.needs_noise(step.index),
                step.noise.is_some(),
                "{}: t = {}",
                case.name,
                step.t
            );
            let noise = step.noise.as_deref().map(tensor);
            let out = sampler.step(
                step.index,
                &tensor(&step.model_output),
                &tensor(&step.x_t),
                noise.as_ref(),
            );
            // f32 arithmetic on values up to 1/√ᾱ_999 ≈ 157 times the inputs: a relative
            // tolerance of 1e-5 is 100 f32 ulps, an absolute one of 2e-5 covers values near 0.
            for (what, ours, expected) in [
                ("prev_sample", &out.prev_sample, &step.prev_sample),
                ("pred_x0", &out.pred_x0, &step.pred_x0),
            ] {
                let ours = values(ours);
                assert_eq!(ours.len(), expected.len(), "{}: {what} size", case.name);
                for (k, (a, b)) in ours.iter().zip(expected).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                        "{}: step {} (t = {}) {what}[{k}]: {a} vs diffusers {b}",
                        case.name,
                        step.index,
                        step.t
                    );
                }
            }
        }
        kinds.insert(format!("{:?}", std::mem::discriminant(&case.config)));
    }
    assert_eq!(
        kinds.len(),
        3,
        "the fixture covers DDPM, DDIM and DPM-Solver++"
    );
}

// ---------------------------------------------------------------------------------------------
// A model with the exact ε_θ for Gaussian data.

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

fn options() -> SampleOptions {
    SampleOptions {
        prediction: Prediction::Eps,
        clip_x0: false,
        n_snapshots: 0,
        autocast: None,
        class_cond: None,
        initial_noise: None,
    }
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

// ---------------------------------------------------------------------------------------------
// Reproducibility with a real network.

fn tiny_unet() -> (VarStore, Box<dyn Denoiser>) {
    let config = ModelConfig::Simple(SimpleUnetConfig {
        in_channels: 3,
        out_channels: 3,
        image_size: 8,
        down_channels: vec![8, 16],
        up_channels: vec![16, 8],
        time_emb_dim: 16,
        ..SimpleUnetConfig::seed_cifar10()
    });
    let vs = VarStore::new(Device::Cpu);
    let net = config
        .build_with(&vs.root(), &mut Generator::cpu(11))
        .unwrap();
    (vs, net)
}

fn small_schedule() -> ScheduleTensors {
    ScheduleTensors::new(
        &Schedule::new(&BetaSchedule::Linear {
            n_steps: 20,
            start: 1e-4,
            end: 0.2,
        })
        .unwrap(),
        Device::Cpu,
    )
}

fn bits(xs: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(xs.reshape([-1]))
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_images_and_another_seed_others() {
    one_thread();
    let (_vs, net) = tiny_unet();
    let st = small_schedule();
    let options = SampleOptions {
        n_snapshots: 4,
        clip_x0: true,
        ..options()
    };
    for config in [
        SamplerConfig::ddpm(VarianceType::FixedLarge),
        SamplerConfig::Ddim {
            steps: 5,
            eta: 0.5,
            spacing: TimestepSpacing::Trailing,
            timesteps: None,
        },
        SamplerConfig::dpm_solver_pp(5, TimestepSpacing::Trailing),
    ] {
        let run = |seed| {
            sample(
                net.as_ref(),
                &st,
                &config,
                &options,
                [3, 3, 8, 8],
                &mut Generator::cpu(seed),
                |_, _| {},
            )
            .unwrap()
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(bits(&a.images), bits(&b.images), "{config:?}: same seed");
        assert_ne!(bits(&a.images), bits(&c.images), "{config:?}: another seed");
        assert_eq!(a.snapshots.len(), 4);
        assert_eq!(b.snapshots.len(), 4);
        for ((ta, xa), (tb, xb)) in a.snapshots.iter().zip(&b.snapshots) {
            assert_eq!((ta, bits(xa)), (tb, bits(xb)));
            assert_eq!(xa.size(), [3, 3, 8, 8]);
        }
        // The last snapshot is the final sample.
        assert_eq!(bits(&a.snapshots[3].1), bits(&a.images));
    }
}

#[test]
fn batches_are_seeded_by_index_and_do_not_depend_on_the_count() {
    one_thread();
    let (_vs, net) = tiny_unet();
    let st = small_schedule();
    let config = SamplerConfig::Ddim {
        steps: 4,
        eta: 1.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let options = SampleOptions {
        n_snapshots: 3,
        ..options()
    };
    let run = |n_images, n_chains| {
        let plan = BatchPlan {
            n_images,
            batch_size: 4,
            image_shape: [3, 8, 8],
            seed: 42,
            n_chains,
        };
        let mut steps = 0;
        let batches: Vec<_> = sample_batches(net.as_ref(), &st, &config, &options, plan, |_, _| {
            steps += 1
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
        (batches, steps)
    };
    let (six, steps) = run(6, 5);
    assert_eq!(steps, 8, "4 steps in each of 2 batches");
    assert_eq!(six.len(), 2);
    assert_eq!((six[1].batch_idx, six[1].first_image), (1, 4));
    assert_eq!(
        six[1].output.images.size(),
        [2, 3, 8, 8],
        "the last batch holds the rest"
    );
    // Snapshots of the first 5 images: 4 from batch 0, 1 from batch 1.
    assert_eq!(six[0].output.snapshots[0].1.size()[0], 4);
    assert_eq!(six[1].output.snapshots.len(), 3);
    assert_eq!(six[1].output.snapshots[0].1.size()[0], 1);

    let (eight, _) = run(8, 0);
    assert!(eight[0].output.snapshots.is_empty() && eight[1].output.snapshots.is_empty());
    // Full batches are bit-identical whatever follows them.
    assert_eq!(bits(&six[0].output.images), bits(&eight[0].output.images));
    // The partial batch has the same noise as the first rows of a full one, so the same images
    // up to the rounding of the network at another batch size.
    let partial = &six[1].output.images;
    let full = eight[1].output.images.narrow(0, 0, 2);
    let diff = f64::try_from((partial - &full).abs().max()).unwrap();
    assert!(diff < 1e-4, "partial vs full batch: {diff}");
    // Batches differ from one another, and batch 0 is `sample` with the same seed.
    assert_ne!(bits(&eight[0].output.images), bits(&eight[1].output.images));
    let single = sample(
        net.as_ref(),
        &st,
        &config,
        &options,
        [4, 3, 8, 8],
        &mut Generator::cpu(42),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(bits(&single.images), bits(&eight[0].output.images));
}

/// Two samplers with their own generators, interleaved step by step in one thread with draws
/// from the global generator and from each other in between, produce exactly what each
/// produces alone; and the same holds for whole chains run at the same time on threads that
/// share no lock, while a third thread reseeds and draws from libtorch's global generator.
#[test]
fn samplers_with_their_own_generators_are_independent_and_reproducible() {
    one_thread();
    let config = SamplerConfig::ddpm(VarianceType::FixedLarge);
    let shape = [2i64, 3, 8, 8];
    // Step by step, by hand: the chain of one generator alone.
    let chain = |gens: &mut [Generator], interleave: bool| {
        let (_vs, net) = tiny_unet();
        let st = small_schedule();
        let mut samplers: Vec<Sampler> = (0..gens.len())
            .map(|_| Sampler::new(&st, &config, Prediction::Eps, true).unwrap())
            .collect();
        let steps = samplers[0].timesteps().to_vec();
        let cpu = (Kind::Float, Device::Cpu);
        let mut xs: Vec<Tensor> = gens
            .iter_mut()
            .map(|g| g.randn(&shape, cpu).unwrap())
            .collect();
        tch::no_grad(|| {
            for (i, &t) in steps.iter().enumerate() {
                for k in 0..gens.len() {
                    if interleave {
                        tch::manual_seed(1000 + i as i64);
                        let _ = Tensor::randn([17], cpu);
                    }
                    let t_batch = Tensor::full([shape[0]], t as i64, (Kind::Int64, Device::Cpu));
                    let eps = net.forward_t(&xs[k], &t_batch, false);
                    let noise = samplers[k]
                        .needs_noise(i)
                        .then(|| gens[k].randn(&shape, cpu).unwrap());
                    xs[k] = samplers[k]
                        .step(i, &eps, &xs[k], noise.as_ref())
                        .prev_sample;
                }
            }
        });
        xs.into_iter().map(|x| bits(&x)).collect::<Vec<_>>()
    };
    let alone_a = chain(&mut [Generator::cpu(1)], false).remove(0);
    let alone_b = chain(&mut [Generator::cpu(2)], false).remove(0);
    assert_ne!(alone_a, alone_b, "two seeds gave the same chain");
    let together = chain(&mut [Generator::cpu(1), Generator::cpu(2)], true);
    assert_eq!(
        together[0], alone_a,
        "interleaving changed sampler A's images"
    );
    assert_eq!(
        together[1], alone_b,
        "interleaving changed sampler B's images"
    );

    // Whole chains at once on three threads: two samplers and a thread that keeps reseeding
    // and drawing from the global generator.
    let run = |seed: u64| {
        let (_vs, net) = tiny_unet();
        let st = small_schedule();
        let out = sample(
            net.as_ref(),
            &st,
            &config,
            &options(),
            shape,
            &mut Generator::cpu(seed),
            |_, _| {},
        )
        .unwrap();
        bits(&out.images)
    };
    let (ref_a, ref_b) = (run(3), run(4));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let noise = scope.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tch::manual_seed(i);
                let _ = Tensor::randn([64], (Kind::Float, Device::Cpu));
                i += 1;
            }
        });
        let a = scope.spawn(|| (0..3).map(|_| run(3)).collect::<Vec<_>>());
        let b = scope.spawn(|| (0..3).map(|_| run(4)).collect::<Vec<_>>());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, &ref_a, "sampler A on a thread");
            assert_eq!(y, &ref_b, "sampler B on a thread");
        }
    });
}

#[test]
fn impossible_requests_fail_before_any_work() {
    one_thread();
    let (_vs, net) = tiny_unet();
    let st = small_schedule();
    let plan = |n_images, batch_size| BatchPlan {
        n_images,
        batch_size,
        image_shape: [3, 8, 8],
        seed: 0,
        n_chains: 0,
    };
    let mut called = false;
    let err = |config: &SamplerConfig, plan: BatchPlan, called: &mut bool| {
        sample_batches(net.as_ref(), &st, config, &options(), plan, |_, _| {
            *called = true
        })
        .unwrap_err()
        .to_string()
    };
    let ddpm = SamplerConfig::seed_notebook();
    assert!(err(&ddpm, plan(0, 4), &mut called).contains("n_images = 0"));
    assert!(err(&ddpm, plan(4, 0), &mut called).contains("batch_size = 0"));
    let ddim = SamplerConfig::Ddim {
        steps: 21,
        eta: 0.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    assert!(err(&ddim, plan(4, 4), &mut called).contains("T = 20"));
    assert!(!called);
}

// ---------------------------------------------------------------------------------------------
// Classifier-free guidance.

#[derive(Deserialize)]
struct GuidanceFixture {
    schedule: BetaSchedule,
    shape: [i64; 4],
    cases: Vec<GuidedStep>,
}

#[derive(Deserialize)]
struct GuidedStep {
    name: String,
    config: SamplerConfig,
    prediction: Prediction,
    guidance: f64,
    index: usize,
    t: usize,
    x_t: Vec<f64>,
    eps_c: Vec<f64>,
    eps_u: Vec<f64>,
    noise: Option<Vec<f64>>,
    guided: Vec<f64>,
    prev_sample: Vec<f64>,
    pred_x0: Vec<f64>,
}

/// One guided DDPM step and one guided DDIM step (ε and v prediction, W = 3, 1 and 0) against
/// diffusers: ε̃ = ε_u + W (ε_c − ε_u) as its pipelines form it, then its schedulers' step, in
/// float64 (scripts/golden/class_cond.py).
#[test]
fn guided_steps_match_diffusers_formula_and_schedulers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guidance_golden.json");
    let fixture: GuidanceFixture =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let close = |name: &str, what: &str, ours: &Tensor, expected: &[f64]| {
        let ours = values(ours);
        assert_eq!(ours.len(), expected.len());
        let mut worst = 0.0f64;
        for (k, (a, b)) in ours.iter().zip(expected).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 + 1e-5 * b.abs(),
                "{name}: {what}[{k}]: {a} vs diffusers {b}"
            );
            worst = worst.max((a - b).abs());
        }
        worst
    };
    let mut kinds = std::collections::BTreeSet::new();
    for case in &fixture.cases {
        let guided = guide(&tensor(&case.eps_c), &tensor(&case.eps_u), case.guidance);
        let e_guided = close(&case.name, "guided", &guided, &case.guided);
        let mut sampler = Sampler::new(&st, &case.config, case.prediction, false).unwrap();
        assert_eq!(sampler.timesteps()[case.index], case.t, "{}", case.name);
        assert_eq!(
            sampler.needs_noise(case.index),
            case.noise.is_some(),
            "{}",
            case.name
        );
        let noise = case.noise.as_deref().map(tensor);
        let out = sampler.step(case.index, &guided, &tensor(&case.x_t), noise.as_ref());
        let e_prev = close(
            &case.name,
            "prev_sample",
            &out.prev_sample,
            &case.prev_sample,
        );
        let e_x0 = close(&case.name, "pred_x0", &out.pred_x0, &case.pred_x0);
        println!(
            "{}: max abs error guided {e_guided:.1e}, prev_sample {e_prev:.1e}, pred_x0 {e_x0:.1e}",
            case.name
        );
        kinds.insert(format!("{:?}", std::mem::discriminant(&case.config)));
    }
    assert_eq!(kinds.len(), 2, "the fixture covers DDPM and DDIM");
}

/// A class-conditional toy network: ε(x, t, y) = (0.1 + 0.2 y) x + 0.001 t, with the null label
/// 2 (two classes).
#[derive(Debug)]
struct ToyConditional;

impl Denoiser for ToyConditional {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor {
        self.forward_cond(xs, timesteps, None, train)
    }

    fn forward_cond(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        _train: bool,
    ) -> Tensor {
        let n = xs.size()[0];
        let labels = match class_labels {
            Some(l) => l.shallow_clone(),
            None => Tensor::full([n], 2, (Kind::Int64, Device::Cpu)),
        };
        let scale = labels.to_kind(Kind::Float).view([n, 1, 1, 1]) * 0.2 + 0.1;
        let t = timesteps.to_kind(Kind::Float).view([n, 1, 1, 1]) * 0.001;
        xs * scale + t
    }

    fn num_classes(&self) -> Option<i64> {
        Some(2)
    }
}

/// `sample_batches` with classes runs every sampler on ε_u + W (ε_c − ε_u) of one batched
/// forward: the same chains as a loop by hand over two separate forwards, with the same noise.
#[test]
fn guided_sampling_is_the_guided_step_loop_for_every_sampler() {
    one_thread();
    let st = small_schedule();
    let labels = vec![0i64, 1, 1, 0, 1];
    let (w, seed, shape) = (3.0, 9u64, [5i64, 1, 2, 2]);
    for config in [
        SamplerConfig::ddpm(VarianceType::FixedSmall),
        SamplerConfig::Ddim {
            steps: 5,
            eta: 0.5,
            spacing: TimestepSpacing::Leading,
            timesteps: None,
        },
        SamplerConfig::dpm_solver_pp(4, TimestepSpacing::Trailing),
        SamplerConfig::Euler {
            steps: 4,
            spacing: SigmaSpacing::Linspace,
            timesteps: None,
        },
        SamplerConfig::Heun {
            steps: 3,
            spacing: SigmaSpacing::Karras,
            timesteps: None,
        },
        SamplerConfig::EulerAncestral {
            steps: 4,
            spacing: SigmaSpacing::Leading,
            timesteps: None,
        },
        SamplerConfig::Pndm {
            steps: 4,
            spacing: TimestepSpacing::Leading,
            prk: false,
        },
        SamplerConfig::Pndm {
            steps: 5,
            spacing: TimestepSpacing::Trailing,
            prk: true,
        },
    ] {
        for prediction in [Prediction::Eps, Prediction::V] {
            let options = SampleOptions {
                prediction,
                class_cond: Some(ClassConditioning {
                    labels: labels.clone(),
                    guidance: w,
                }),
                ..options()
            };
            let out = sample(
                &ToyConditional,
                &st,
                &config,
                &options,
                shape,
                &mut Generator::cpu(seed),
                |_, _| {},
            )
            .unwrap();
            // By hand, as diffusers' pipelines loop: x_T scaled by init_noise_sigma, the
            // network's input by scale_model_input, its timestep unrounded.
            let mut gen = Generator::cpu(seed);
            let cpu = (Kind::Float, Device::Cpu);
            let mut sampler = Sampler::new(&st, &config, prediction, false).unwrap();
            let y = Tensor::from_slice(&labels);
            let null = Tensor::full([5], 2, (Kind::Int64, Device::Cpu));
            let mut x = gen.randn(&shape, cpu).unwrap() * sampler.init_noise_sigma();
            for i in 0..sampler.nfe() {
                let t = match sampler.integer_timesteps() {
                    true => Tensor::full(
                        [5],
                        sampler.timesteps()[i] as i64,
                        (Kind::Int64, Device::Cpu),
                    ),
                    false => Tensor::full([5], sampler.model_timesteps()[i], cpu),
                };
                let x_in = &x * sampler.input_scale(i);
                let eps_c = ToyConditional.forward_cond(&x_in, &t, Some(&y), false);
                let eps_u = ToyConditional.forward_cond(&x_in, &t, Some(&null), false);
                let noise = sampler
                    .needs_noise(i)
                    .then(|| gen.randn(&shape, cpu).unwrap());
                x = sampler
                    .step(i, &guide(&eps_c, &eps_u, w), &x, noise.as_ref())
                    .prev_sample;
            }
            let diff = f64::try_from((&out.images - x.clamp(-1.0, 1.0)).abs().max()).unwrap();
            assert!(diff <= 1e-6, "{config:?} {prediction:?}: {diff}");
        }
    }
}

fn tiny_conditional_unet() -> (VarStore, Box<dyn Denoiser>) {
    let config = ModelConfig::Simple(SimpleUnetConfig {
        in_channels: 3,
        out_channels: 3,
        image_size: 8,
        down_channels: vec![8, 16],
        up_channels: vec![16, 8],
        time_emb_dim: 16,
        num_classes: Some(3),
        ..SimpleUnetConfig::seed_cifar10()
    });
    let vs = VarStore::new(Device::Cpu);
    let net = config
        .build_with(&vs.root(), &mut Generator::cpu(11))
        .unwrap();
    (vs, net)
}

/// The labels are a function of the image's index in the request, like its noise: a batch run
/// as a request of its own (sharded sampling) with its slice of the labels gives the same bits,
/// and the leading batches of a larger request are those of a smaller one.
#[test]
fn class_labels_follow_the_images_through_batches_and_shards() {
    one_thread();
    let (_vs, net) = tiny_conditional_unet();
    let st = small_schedule();
    let config = SamplerConfig::Ddim {
        steps: 4,
        eta: 1.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let cond = ClassConditioning::blocks(&[2, 0, 1], 10, 2.5);
    assert_eq!(cond.labels, [2, 2, 2, 2, 0, 0, 0, 0, 1, 1]);
    let run = |n_images: usize, seed: u64, options: &SampleOptions| {
        let plan = BatchPlan {
            n_images,
            batch_size: 4,
            image_shape: [3, 8, 8],
            seed,
            n_chains: 0,
        };
        sample_batches(net.as_ref(), &st, &config, options, plan, |_, _| {})
            .unwrap()
            .map(|b| bits(&b.unwrap().output.images))
            .collect::<Vec<_>>()
    };
    let guided = SampleOptions {
        class_cond: Some(cond.clone()),
        ..options()
    };
    let all = run(10, 42, &guided);
    assert_eq!(all.len(), 3);
    // Batch 1 (images 4..8) alone, as a rank draws it.
    let alone = run(4, batch_seed(42, 1), &guided.for_images(4, 4));
    assert_eq!(alone[0], all[1]);
    // The first 8 images of a request for 8, with their labels.
    let eight = run(8, 42, &guided.for_images(0, 8));
    assert_eq!(eight[..], all[..2]);
    // Labels and guidance matter; without classes the network samples its null label.
    let plain = run(10, 42, &options());
    assert_ne!(plain[0], all[0]);
    let other_w = SampleOptions {
        class_cond: Some(ClassConditioning {
            guidance: 1.0,
            ..cond
        }),
        ..options()
    };
    assert_ne!(run(10, 42, &other_w)[0], all[0]);
}

#[test]
fn class_labels_that_do_not_fit_fail_before_any_work() {
    one_thread();
    let (_vs, cond_net) = tiny_conditional_unet();
    let (_vs2, plain_net) = tiny_unet();
    let st = small_schedule();
    let plan = BatchPlan {
        n_images: 3,
        batch_size: 2,
        image_shape: [3, 8, 8],
        seed: 0,
        n_chains: 0,
    };
    let with = |labels: Vec<i64>, guidance: f64| SampleOptions {
        class_cond: Some(ClassConditioning { labels, guidance }),
        ..options()
    };
    let ddpm = SamplerConfig::seed_notebook();
    let err = |net: &dyn Denoiser, options: SampleOptions| {
        let mut called = false;
        let e = sample_batches(net, &st, &ddpm, &options, plan.clone(), |_, _| {
            called = true
        })
        .unwrap_err()
        .to_string();
        assert!(!called);
        e
    };
    let e = err(plain_net.as_ref(), with(vec![0, 1, 2], 1.0));
    assert!(e.contains("not class-conditional"), "{e}");
    let e = err(cond_net.as_ref(), with(vec![0, 3, 1], 1.0));
    assert!(
        e.contains("class 3 is out of range") && e.contains("0 to 2"),
        "{e}"
    );
    let e = err(cond_net.as_ref(), with(vec![0, 1], 1.0));
    assert!(e.contains("2 class labels for 3 images"), "{e}");
    let e = err(cond_net.as_ref(), with(vec![0, 1, 2], f64::NAN));
    assert!(e.contains("guidance"), "{e}");
    let e = sample(
        cond_net.as_ref(),
        &st,
        &ddpm,
        &with(vec![0], 1.0),
        [2, 3, 8, 8],
        &mut Generator::cpu(0),
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("1 class labels for 2 images"), "{e}");
}

/// A request's starting noise from a file: image `i` starts from row `i`, whatever the batches,
/// and a file that does not fit the request is refused before any work.
#[test]
fn a_noise_file_gives_every_image_its_row_through_the_batches() {
    one_thread();
    let (_vs, net) = tiny_unet();
    let st = small_schedule();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x_T.safetensors");
    let x_t = Generator::cpu(99)
        .randn(&[5, 3, 8, 8], (Kind::Float, Device::Cpu))
        .unwrap();
    Tensor::write_safetensors(&[("noise", &x_t)], &path).unwrap();
    let options = SampleOptions {
        initial_noise: Some(sample::InitialNoise::read(&path).unwrap()),
        ..options()
    };
    let config = SamplerConfig::Ddim {
        steps: 4,
        eta: 0.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let plan = |batch_size, seed| BatchPlan {
        n_images: 5,
        batch_size,
        image_shape: [3, 8, 8],
        seed,
        n_chains: 0,
    };
    let run = |plan: BatchPlan| {
        let batches: Vec<Tensor> =
            sample_batches(net.as_ref(), &st, &config, &options, plan, |_, _| {})
                .unwrap()
                .map(|b| b.unwrap().output.images)
                .collect();
        Tensor::cat(&batches, 0)
    };
    let whole = run(plan(5, 1));
    // Deterministic: the seed does not matter, only the file.
    assert_eq!(bits(&whole), bits(&run(plan(5, 2))));
    // Batches of 2 take rows 0-1, 2-3 and 4: the same images up to the network's rounding at
    // other batch sizes.
    let diff = f64::try_from((run(plan(2, 1)) - &whole).abs().max()).unwrap();
    assert!(diff < 1e-4, "batches of 2 vs one batch: {diff}");
    // One image alone, from its own row.
    let third = sample(
        net.as_ref(),
        &st,
        &config,
        &options.for_images(2, 1),
        [1, 3, 8, 8],
        &mut Generator::cpu(0),
        |_, _| {},
    )
    .unwrap();
    let diff = f64::try_from((third.images - whole.narrow(0, 2, 1)).abs().max()).unwrap();
    assert!(diff < 1e-4, "image 2 alone: {diff}");
    // Four images asked of a file of five, or images of another shape: refused, naming both.
    let err = sample_batches(
        net.as_ref(),
        &st,
        &config,
        &options,
        BatchPlan {
            n_images: 4,
            ..plan(2, 1)
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("[5, 3, 8, 8]") && err.contains("[4, 3, 8, 8]"),
        "{err}"
    );
    let err = sample(
        net.as_ref(),
        &st,
        &config,
        &options,
        [5, 1, 8, 8],
        &mut Generator::cpu(0),
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("[5, 3, 8, 8]") && err.contains("[1, 8, 8]"),
        "{err}"
    );
}
