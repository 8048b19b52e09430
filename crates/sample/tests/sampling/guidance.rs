//! Classifier-free guidance.

use super::*;

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
