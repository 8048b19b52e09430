//! Reproducibility with a real network, and initial noise from a file.

use super::*;

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
