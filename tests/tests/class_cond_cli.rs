//! Class-conditional diffusion end to end: `ddpm train --class-cond` on synthetic CIFAR-10,
//! `ddpm sample --class … --guidance W` (a labelled grid with one row per class, the same images
//! in one process and across two ranks), class-balanced and per-class FID, and the errors for
//! classes a model does not have.

use std::path::Path;
use std::process::Output;

use e2e::{
    complete_checkpoints, path_arg, run, sample_cpu, stderr_of, synthetic_cifar, tiny_train_args,
    train_tiny, train_tiny_class_cond,
};

/// `ddpm sample` of `checkpoint` on the CPU with DDIM-3, then `extra`.
fn sample(checkpoint: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--sampler", "ddim", "--steps", "3"];
    args.extend_from_slice(extra);
    sample_cpu(checkpoint, &args)
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = stderr_of(out);
    assert!(!out.status.success(), "expected a failure, got: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

#[test]
fn a_class_conditional_run_samples_one_labelled_row_per_class_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny_class_cond(dir.path());
    // The run recorded its classes: the model config and the dataset's names.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model"]["num_classes"], 10, "{config}");
    assert_eq!(config["objective"]["p_uncond"], 0.1, "{config}");

    let (grid, npz) = (dir.path().join("grid.png"), dir.path().join("x.npz"));
    let out = sample(
        &run_dir,
        &[
            "--threads",
            "1",
            "--class",
            "all",
            "--guidance",
            "3",
            "--nrow",
            "2",
            "--batch",
            "6",
            "--grid",
            path_arg(&grid),
            "--npz",
            path_arg(&npz),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("guidance W = 3"),
        "{}",
        stderr_of(&out)
    );
    // 10 classes × 2 images (--nrow): one row per class of 28×28 tiles with 2 pixels of padding,
    // and a label column on the left.
    let img = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(img.height(), 10 * 30 + 2);
    let label_w = img.width() - (2 * 30 + 2);
    assert!(label_w > 20, "no label column: width {}", img.width());
    // "airplane" is drawn beside the first row: dark pixels on the white label column.
    let dark_in_first_row = (2..30)
        .flat_map(|y| (0..label_w).map(move |x| (x, y)))
        .any(|(x, y)| img.get_pixel(x, y).0[0] < 100);
    assert!(dark_in_first_row, "no label beside the first row");
    let images = data::images::read_npz(&npz).unwrap();
    assert_eq!(images[0].1.shape, [20, 28, 28, 3]);

    // The same request across two ranks writes the same images.
    let npz_two = dir.path().join("two.npz");
    let out = sample(
        &run_dir,
        &[
            "--class",
            "all",
            "--guidance",
            "3",
            "--nrow",
            "2",
            "--batch",
            "6",
            "--npz",
            path_arg(&npz_two),
            "--nproc-per-node",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        std::fs::read(&npz).unwrap() == std::fs::read(&npz_two).unwrap(),
        "two ranks sampled other images"
    );

    // Classes by name (any case) and number; the guidance changes the images.
    let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    for (path, w) in [(&a, "3"), (&b, "1")] {
        let out = sample(
            &run_dir,
            &[
                "--class",
                "Dog",
                "--class",
                "1",
                "-n",
                "4",
                "--guidance",
                w,
                "--npz",
                path_arg(path),
            ],
        );
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&b).unwrap());

    // What this model does not have.
    fails_with(
        &sample(&run_dir, &["--class", "10", "--grid", path_arg(&grid)]),
        &["--class 10 is out of range", "10 classes, 0 to 9"],
    );
    fails_with(
        &sample(&run_dir, &["--class", "unicorn", "--grid", path_arg(&grid)]),
        &["--class unicorn", "airplane"],
    );
    fails_with(
        &sample(&run_dir, &["--guidance", "2", "--grid", path_arg(&grid)]),
        &["--guidance applies to the classes of --class"],
    );
}

#[test]
fn classes_are_refused_for_an_unconditional_model_and_unlabelled_changes() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let grid = dir.path().join("grid.png");
    fails_with(
        &sample(&run_dir, &["--class", "0", "--grid", path_arg(&grid)]),
        &["--class", "not class-conditional"],
    );
    fails_with(
        &sample(
            &run_dir,
            &[
                "--class",
                "all",
                "--guidance",
                "3",
                "--grid",
                path_arg(&grid),
            ],
        ),
        &["not class-conditional"],
    );
    // --guidance alone (any W, negative too) names the model, not a --class it cannot take
    // (#31: it said "pass --class", which then failed; -2 was a clap error).
    for w in ["3", "-2"] {
        let out = sample(&run_dir, &["--guidance", w, "--grid", path_arg(&grid)]);
        fails_with(
            &out,
            &["--guidance", "not class-conditional", "--class-cond"],
        );
        assert!(
            !stderr_of(&out).contains("pass --class"),
            "{}",
            stderr_of(&out)
        );
    }
    assert!(!grid.exists(), "a refused request wrote its grid");
    // A run keeps its model: --class-cond cannot be added on resume.
    let out = run(&[
        "train",
        "--device",
        "cpu",
        "--resume",
        "--run-dir",
        path_arg(&run_dir),
        "--class-cond",
        "--data",
        path_arg(&dir.path().join("synthetic_batch.bin")),
    ]);
    fails_with(&out, &["--class-cond", "unconditional"]);
}

#[test]
fn class_balanced_fid_reports_each_class_against_its_reference_images() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny_class_cond(dir.path());
    // The reference: the labelled dataset, 4 images of each class.
    let data = dir.path().join("ref");
    std::fs::create_dir_all(&data).unwrap();
    let data = synthetic_cifar(&data, 40);
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/eval/tests/fixtures/tiny_inception.pt");
    let json = dir.path().join("fid.json");
    let fid_against = |data: &Path, n: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "fid",
            "--checkpoint",
            path_arg(&run_dir),
            "--n",
            n,
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--guidance",
            "2",
            "--dataset",
            "cifar10",
            "--data",
            path_arg(data),
            "--inception",
            path_arg(&tiny),
            "--no-verify",
            "--input-size",
            "16",
            "--device",
            "cpu",
            "--kid-subset-size",
            "2",
            "--out",
            path_arg(&json),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let fid = |n: &str, extra: &[&str]| fid_against(&data, n, extra);
    let out = fid("20", &["--class-balanced"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(class-balanced)"), "{stdout}");
    assert!(stdout.contains("FID class 9 (truck)"), "{stdout}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let per_class = result["per_class"].as_array().expect("per-class FIDs");
    assert_eq!(per_class.len(), 10, "{result}");
    for entry in per_class {
        assert_eq!(entry["n_samples"], 2, "{entry}");
        assert_eq!(entry["n_reference"], 2, "{entry}");
        assert!(entry["fid"].as_f64().is_some_and(f64::is_finite), "{entry}");
    }
    assert_eq!(result["samples"]["details"]["guidance"], 2.0, "{result}");
    assert_eq!(result["samples"]["details"]["class_balanced"], true);
    // Equal samples per class, or an error before sampling.
    fails_with(
        &fid("15", &["--class-balanced"]),
        &["--n 15 does not split into the model's 10 classes"],
    );
    // A reference with too few images of a class is refused before anything is sampled
    // (#31: the check ran after sampling and both Inception passes).
    let few = dir.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    let few = synthetic_cifar(&few, 10);
    let out = fid_against(&few, "20", &["--class-balanced"]);
    fails_with(
        &out,
        &["class 0 (airplane) has 2 samples and 1 reference images"],
    );
    assert!(!stderr_of(&out).contains("sampled"), "{}", stderr_of(&out));
    // An unconditional model has no classes to balance.
    std::fs::create_dir_all(dir.path().join("plain")).unwrap();
    let plain = train_tiny(&dir.path().join("plain"));
    let out = run(&[
        "eval",
        "fid",
        "--checkpoint",
        path_arg(&plain),
        "--class-balanced",
        "--n",
        "20",
        "--dataset",
        "cifar10",
        "--data",
        path_arg(&data),
        "--inception",
        path_arg(&tiny),
        "--no-verify",
        "--input-size",
        "16",
        "--device",
        "cpu",
    ]);
    fails_with(&out, &["--class-balanced", "not class-conditional"]);
}

#[test]
fn resume_from_a_class_conditional_checkpoint_into_an_unconditional_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cond_dir, plain_dir) = (dir.path().join("cond"), dir.path().join("plain"));
    std::fs::create_dir_all(&cond_dir).unwrap();
    std::fs::create_dir_all(&plain_dir).unwrap();
    let cond_run = train_tiny_class_cond(&cond_dir);
    let plain_run = train_tiny(&plain_dir);
    let checkpoint = cond_run
        .join("checkpoints")
        .join(complete_checkpoints(&cond_run).pop().unwrap());
    let config_path = plain_run.join("config.json");
    let before = std::fs::read(&config_path).unwrap();
    let data = synthetic_cifar(&plain_dir, 16);
    let args = tiny_train_args(
        &data,
        &plain_run,
        &[
            "--threads",
            "1",
            "--max-steps",
            "4",
            "--resume-from",
            path_arg(&checkpoint),
        ],
    );
    let out = run(&args);
    fails_with(
        &out,
        &[
            "is a checkpoint of another run",
            "`model.num_classes`",
            "pick a checkpoint of this run",
        ],
    );
    assert_eq!(
        std::fs::read(&config_path).unwrap(),
        before,
        "config.json was rewritten"
    );
}

/// `--p-uncond` is a probability, and only for a class-conditional run, refused before the run
/// directory is touched (#31: NaN said "invalid type: null", -0.1 was a clap error, and without
/// --class-cond it was accepted and ignored).
#[test]
fn p_uncond_is_a_probability_of_a_class_conditional_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    for p in ["NaN", "-0.1", "1.5"] {
        let args = tiny_train_args(
            &data,
            &run_dir,
            &["--class-cond", "--p-uncond", p, "--max-steps", "1"],
        );
        let needle = format!("--p-uncond {p} is invalid");
        fails_with(&run(&args), &[&needle, "in [0, 1]"]);
    }
    let args = tiny_train_args(&data, &run_dir, &["--p-uncond", "0.2", "--max-steps", "1"]);
    fails_with(
        &run(&args),
        &["--p-uncond", "unconditional: add --class-cond"],
    );
    assert!(!run_dir.exists(), "the run directory was created");
}

/// `--set model.num_classes=5` on the 10 classes of CIFAR-10 is refused naming both counts,
/// without first announcing "5 classes" with 10 names (#31).
#[test]
fn too_few_classes_for_the_labels_are_refused_without_an_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 20);
    let run_dir = dir.path().join("run");
    let out = run(&tiny_train_args(
        &data,
        &run_dir,
        &[
            "--threads",
            "1",
            "--max-steps",
            "1",
            "--set",
            "model.num_classes=5",
        ],
    ));
    fails_with(
        &out,
        &["labels up to 9 (10 classes)", "model.num_classes is 5"],
    );
    assert!(
        !stderr_of(&out).contains("class-conditional: 5 classes"),
        "{}",
        stderr_of(&out)
    );
}
