//! `ddpm eval nll` end to end on a tiny trained run (T = 50): the JSON's total is the prior plus
//! every per-t term, the standard error is that of the per-image totals, a seed fixes the
//! result, two ranks give the same numbers as one process, and `--t-stride` is reported as an
//! estimate.

use std::path::Path;

use data::images::{write_npz, NpyArray, NpyData};
use e2e::{floats, path_arg, run, stderr_of, stdout_of, train_tiny};
use serde_json::Value;

/// `n` 28×28 RGB images as uint8 NHWC `arr_0`, with pixels 0 and 255 among them.
fn images_npz(path: &Path, n: usize) {
    let len = n * 28 * 28 * 3;
    let pixels: Vec<u8> = (0..len).map(|i| ((i * 37 + i / 97) % 256) as u8).collect();
    let array = NpyArray::new(vec![n, 28, 28, 3], NpyData::U8(pixels)).unwrap();
    write_npz(path, &[("arr_0", &array)]).unwrap();
}

fn nll(run_dir: &Path, images: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "eval",
        "nll",
        "--checkpoint",
        path_arg(run_dir),
        "--images",
        path_arg(images),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        path_arg(out),
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains("bits/dim"),
        "{}",
        stdout_of(&output)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn the_bound_is_the_prior_plus_every_term_and_ranks_do_not_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let images = dir.path().join("images.npz");
    images_npz(&images, 5);
    let out = dir.path().join("nll.json");
    let report = nll(&run_dir, &images, &out, &[]);
    assert!(dir.path().join("nll.png").is_file());
    let per_t = report["per_t"].as_array().unwrap();
    assert_eq!(per_t.len(), 50);
    assert!(per_t.iter().all(|s| s["n"] == 5));
    let per_image = floats(&report["per_image"]);
    assert_eq!(per_image.len(), 5);
    let mean = per_image.iter().sum::<f64>() / 5.0;
    let terms: f64 = per_t.iter().map(|s| s["bits"].as_f64().unwrap()).sum();
    let prior = report["prior_bits"].as_f64().unwrap();
    let bits = report["bits_per_dim"].as_f64().unwrap();
    assert!((bits - mean).abs() < 1e-12 && (bits - (prior + terms)).abs() < 1e-9 * bits);
    let var = per_image.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
    let std_error = report["std_error"].as_f64().unwrap();
    assert!((std_error - (var / 5.0).sqrt()).abs() < 1e-12);
    assert_eq!(report["estimate"], false);

    // The same seed gives the same figures; another seed other noise.
    let again = nll(&run_dir, &images, &dir.path().join("again.json"), &[]);
    assert_eq!(again["per_image"], report["per_image"]);
    let other = nll(
        &run_dir,
        &images,
        &dir.path().join("other.json"),
        &["--seed", "1"],
    );
    assert_ne!(other["per_image"], report["per_image"]);

    // Two ranks share the batches (2, 2, 1 images) and sum the same terms.
    let ranks = nll(
        &run_dir,
        &images,
        &dir.path().join("ranks.json"),
        &["--nproc-per-node", "2"],
    );
    assert_eq!(ranks["ranks"], 2);
    for (a, b) in floats(&ranks["per_image"]).iter().zip(&per_image) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
    }

    // A stride is an estimate from fewer terms: t = 0 and one t per stratum in each batch.
    let strided = nll(
        &run_dir,
        &images,
        &dir.path().join("strided.json"),
        &["--t-stride", "10"],
    );
    assert_eq!(strided["estimate"], true);
    let strided_terms = strided["per_t"].as_array().unwrap();
    assert!(strided_terms.len() < 50 && strided_terms[0]["t"] == 0);
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let images = dir.path().join("images.npz");
    images_npz(&images, 3);
    let output = run(&[
        "eval",
        "nll",
        "--checkpoint",
        path_arg(&run_dir),
        "--images",
        path_arg(&images),
        "--n",
        "7",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("--n 7"),
        "{}",
        stderr_of(&output)
    );
}

/// A run trained with learned variances (the hybrid loss, 2·C output channels) records them,
/// and `eval nll` scores it with its own variance; `ddpm sample` samples it with that variance.
#[test]
fn a_learned_variance_run_trains_and_is_scored_with_its_variance() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = e2e::train_tiny_with(
        dir.path(),
        16,
        &[
            "--set",
            "objective.variance=learned_range",
            "--set",
            "model.out_channels=6",
        ],
    );
    let images = dir.path().join("images.npz");
    images_npz(&images, 2);
    let out = dir.path().join("nll.json");
    let report = nll(&run_dir, &images, &out, &[]);
    assert_eq!(report["variance"], "learned_range");
    assert!(report["bits_per_dim"].as_f64().unwrap().is_finite());
    // The samplers use the learned variance: DDPM over all T steps and over a respaced chain
    // of 5 (the NFE says which), and DDIM with η > 0.
    for (name, flags, nfe) in [
        ("full", &["--sampler", "ddpm"][..], "NFE 50 per image"),
        (
            "respaced",
            &["--sampler", "ddpm", "--steps", "5"][..],
            "NFE 5 per image",
        ),
        (
            "ddim",
            &["--sampler", "ddim", "--steps", "5", "--eta", "1"][..],
            "NFE 5 per image",
        ),
    ] {
        let grid = dir.path().join(format!("{name}.png"));
        let mut args = vec!["-n", "2", "--grid", path_arg(&grid)];
        args.extend_from_slice(flags);
        let sampled = e2e::sample_cpu(&run_dir, &args);
        let err = stderr_of(&sampled);
        assert!(sampled.status.success(), "{name}: {err}");
        assert!(err.contains(nfe), "{name}: {err}");
        assert!(image::open(&grid).is_ok(), "{name}");
    }
}
