//! `ddpm eval sweep` on a tiny run with the TorchScript stand-in for the Inception
//! (`crates/eval/tests/fixtures/tiny_inception.pt`): the table, the plot, the pairs scoring the
//! images `ddpm eval fid --checkpoint` scores, resuming, and the errors a user meets.

use std::path::Path;

use e2e::{path_arg, run, stderr_of, tiny_inception, train_tiny};

/// `ddpm eval SUB ARGS… --inception tiny --no-verify --input-size 16 --device cpu --threads 1`.
fn eval(sub: &str, args: &[&str]) -> std::process::Output {
    let tiny = tiny_inception();
    let mut all = vec!["eval", sub];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--inception",
        &tiny,
        "--no-verify",
        "--input-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]);
    run(&all)
}

/// Writes `n` 28×28 RGB PNGs.
fn png_folder(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(28, 28, |x, y| {
            let v = (x * 37 + y * 11 + i * 53) % 256;
            image::Rgb([v as u8, (v * 3 % 256) as u8, (255 - v) as u8])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The sweep's arguments on `run_dir` against `reference` into `out`, then `extra`.
fn sweep_args<'a>(
    run_dir: &'a Path,
    reference: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "--checkpoint",
        path_arg(run_dir),
        "--n",
        "6",
        "--sample-batch-size",
        "4",
        "--ref",
        path_arg(reference),
        "--out",
        path_arg(out),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_sweep_scores_every_pair_like_eval_fid_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let reference = dir.path().join("ref");
    png_folder(&reference, 8);
    let out_dir = dir.path().join("sweep");
    let samplers = [
        "--samplers",
        "ddim,ddim:quadratic,dpm-solver++",
        "--nfe",
        "3,5",
    ];
    let mut first = samplers.to_vec();
    first.extend(["--seeds", "11"]);
    let out = eval("sweep", &sweep_args(&run_dir, &reference, &out_dir, &first));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let table = read_json(&out_dir.join("sweep.json"));
    let rows = table["rows"].as_array().unwrap().clone();
    // 3 samplers × 2 NFE, and the full chain (T = 50) once.
    assert_eq!(rows.len(), 7, "{table}");
    let chain = rows.iter().find(|r| r["full_chain"] == true).unwrap();
    assert_eq!(
        (chain["sampler"].as_str(), chain["nfe"].as_u64()),
        (Some("ddpm:small"), Some(50))
    );
    assert!(rows
        .iter()
        .all(|r| r["fid"].as_f64().unwrap() > 0.0 && r["images_per_s"].as_f64().unwrap() > 0.0));
    let quad = rows
        .iter()
        .find(|r| r["sampler"] == "ddim:quadratic" && r["nfe"] == 5)
        .unwrap();
    assert_eq!(quad["config"]["spacing"], "quadratic", "{quad}");
    let md = std::fs::read_to_string(out_dir.join("sweep.md")).unwrap();
    assert!(
        md.contains("| ddim:quadratic | 5 |") && md.contains("(full chain)"),
        "{md}"
    );
    let png = std::fs::read(out_dir.join("sweep.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Pair (ddim, 5, seed 11) scores the very images `ddpm eval fid --checkpoint` draws.
    let fid_json = dir.path().join("fid.json");
    let out = eval(
        "fid",
        &[
            "--checkpoint",
            path_arg(&run_dir),
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--n",
            "6",
            "--sample-batch-size",
            "4",
            "--seed",
            "11",
            "--ref",
            path_arg(&reference),
            "--kid-subset-size",
            "4",
            "--out",
            path_arg(&fid_json),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let ddim5 = rows
        .iter()
        .find(|r| r["sampler"] == "ddim" && r["nfe"] == 5)
        .unwrap();
    assert_eq!(ddim5["fid"], read_json(&fid_json)["fid"], "{ddim5}");

    // A second seed: the 7 pairs scored are kept as they were, 7 more are scored.
    let mut second = samplers.to_vec();
    second.extend(["--seeds", "11,12"]);
    let out = eval(
        "sweep",
        &sweep_args(&run_dir, &reference, &out_dir, &second),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("7 to score, 7 kept"),
        "{}",
        stderr_of(&out)
    );
    let again = read_json(&out_dir.join("sweep.json"));
    let again = again["rows"].as_array().unwrap();
    assert_eq!(again.len(), 14);
    assert_eq!(&again[..7], &rows[..]);
    let md = std::fs::read_to_string(out_dir.join("sweep.md")).unwrap();
    assert!(md.contains("| 11, 12 |"), "{md}");

    // Other settings on the same table are refused, naming it.
    let mut other = second.to_vec();
    other.extend(["--no-clip"]);
    let out = eval("sweep", &sweep_args(&run_dir, &reference, &out_dir, &other));
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("sweep.json") && stderr_of(&out).contains("other settings"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn bad_sweeps_are_refused_naming_the_flag_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let reference = dir.path().join("ref");
    png_folder(&reference, 4);
    let out_dir = dir.path().join("sweep");
    let error = |extra: &[&str]| {
        let out = eval("sweep", &sweep_args(&run_dir, &reference, &out_dir, extra));
        assert!(!out.status.success(), "{extra:?}");
        assert!(!out_dir.join("sweep.json").exists());
        stderr_of(&out)
    };
    let e = error(&["--samplers", "ddim:sideways"]);
    assert!(
        e.contains("--samplers `ddim:sideways`") && e.contains("sideways"),
        "{e}"
    );
    let e = error(&["--samplers", "heun-sideways"]);
    assert!(e.contains("--samplers `heun-sideways`"), "{e}");
    // T = 50: quadratic spacing repeats timesteps from 8 steps on.
    let e = error(&["--samplers", "ddim:quadratic", "--nfe", "5,8"]);
    assert!(
        e.contains("`ddim:quadratic` at NFE 8") && e.contains("quadratic"),
        "{e}"
    );
    let e = error(&["--samplers", "ddim", "--nfe", "51"]);
    assert!(e.contains("NFE 51") && e.contains("T = 50"), "{e}");
    let e = error(&["--samplers", "ddpm"]);
    assert!(e.contains("--full-chain"), "{e}");
    let e = error(&["--samplers", "ddim", "--full-chain", "ddim"]);
    assert!(e.contains("--full-chain `ddim`"), "{e}");
    let e = error(&["--samplers", "ddim", "--nfe", "0"]);
    assert!(e.contains("--nfe"), "{e}");
}

#[test]
fn a_spec_of_its_own_clamping_scores_the_images_of_eval_fid_with_that_clamping() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let reference = dir.path().join("ref");
    png_folder(&reference, 8);
    let out_dir = dir.path().join("sweep");
    let specs = ["--samplers", "ddim,ddim:no-clip", "--nfe", "3"];
    let mut args = specs.to_vec();
    args.extend(["--seeds", "4", "--no-full-chain"]);
    let out = eval("sweep", &sweep_args(&run_dir, &reference, &out_dir, &args));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let table = read_json(&out_dir.join("sweep.json"));
    let fid_of = |label: &str| {
        let rows = table["rows"].as_array().unwrap();
        rows.iter().find(|r| r["sampler"] == label).unwrap()["fid"].clone()
    };
    // `eval fid --checkpoint` with and without --no-clip, from the same seed.
    let fid = |extra: &[&str]| {
        let json = dir.path().join(format!("fid{}.json", extra.len()));
        let mut args = vec!["--checkpoint", path_arg(&run_dir), "--sampler", "ddim"];
        args.extend_from_slice(&["--steps", "3", "--n", "6", "--sample-batch-size", "4"]);
        args.extend_from_slice(&["--seed", "4", "--ref", path_arg(&reference)]);
        args.extend_from_slice(&["--kid-subset-size", "4", "--out", path_arg(&json)]);
        args.extend_from_slice(extra);
        let out = eval("fid", &args);
        assert!(out.status.success(), "{}", stderr_of(&out));
        read_json(&json)["fid"].clone()
    };
    let (clipped, unclipped) = (fid(&[]), fid(&["--no-clip"]));
    // The tiny network's x̂_0 leaves [-1, 1], so clamping changes the images.
    assert_ne!(clipped, unclipped);
    assert_eq!(fid_of("ddim"), clipped);
    assert_eq!(fid_of("ddim:no-clip"), unclipped);
}
