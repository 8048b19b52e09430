//! `ddpm sample` on diffusers folders and the `ddpm export` round trip: a toolkit run with the
//! paper's U-Net (tiny), a legacy diffusers folder and a class-conditional run go out as
//! diffusers pipelines with a model card (and, with `--model-only`, as a model folder), come
//! back through `sample::Pipeline` bit for bit, and load in diffusers to the same outputs
//! (≤ 1e-5) when the set-up's python has diffusers; there `DDPMPipeline` and `DDIMPipeline`
//! load each pipeline and draw an image, and the card's front matter parses as YAML.

use std::path::{Path, PathBuf};

use e2e::{path_arg, run, stderr_of, synthetic_cifar, verify_in_diffusers};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/sample/tests/fixtures/diffusers")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "ddpm {args:?} failed: {stderr}");
    stderr
}

#[test]
fn ddpm_sample_runs_on_legacy_and_modern_diffusers_folders() {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["legacy_pipeline", "modern"] {
        let grid = dir.path().join(format!("{folder}.png"));
        let npz = dir.path().join(format!("{folder}.npz"));
        ok(&[
            "sample",
            "--checkpoint",
            path_arg(&fixtures().join(folder)),
            "--device",
            "cpu",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "-n",
            "4",
            "--grid",
            path_arg(&grid),
            "--npz",
            path_arg(&npz),
        ]);
        let img = image::open(&grid).unwrap();
        // Four 8×8 images in one row, 2-pixel padding.
        assert_eq!((img.width(), img.height()), (42, 12), "{folder}");
        assert!(npz.is_file());
    }
    // The forward process with a diffusers folder's schedule, on a dataset named on the line.
    let data = synthetic_cifar(dir.path(), 4);
    let strip = dir.path().join("strip.png");
    ok(&[
        "forward",
        "--checkpoint",
        path_arg(&fixtures().join("modern")),
        "--dataset",
        "cifar10",
        "--data",
        path_arg(&data),
        "--n-steps",
        "3",
        "--scale",
        "1",
        "--out",
        path_arg(&strip),
    ]);
    // x_0 and three x_t of 8×8 (the folder's sample size).
    let img = image::open(&strip).unwrap();
    assert_eq!((img.width(), img.height()), (4 * 8 + 5 * 2, 12));
    let err = run(&[
        "forward",
        "--checkpoint",
        path_arg(&fixtures().join("modern")),
        "--out",
        path_arg(&strip),
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("pass --dataset"));

    // FID of samples drawn from a diffusers folder, with the tiny stand-in feature network.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/eval/tests/fixtures/tiny_inception.pt");
    let json = dir.path().join("fid.json");
    let reference = dir.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    for i in 0..4u8 {
        let img = image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([x as u8 * 30, y as u8 * 30, i * 60])
        });
        img.save(reference.join(format!("{i}.png"))).unwrap();
    }
    ok(&[
        "eval",
        "fid",
        "--checkpoint",
        path_arg(&fixtures().join("legacy_pipeline")),
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--n",
        "4",
        "--ref",
        path_arg(&reference),
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
    ]);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        result["fid"].as_f64().is_some_and(f64::is_finite),
        "{result}"
    );

    // The layer table of a diffusers folder, with its weights checked.
    let out = run(&[
        "model",
        "summary",
        "--checkpoint",
        path_arg(&fixtures().join("legacy_pipeline")),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("down_blocks.1.attentions.0.to_q.weight"),
        "{stdout}"
    );
}

/// The outputs of a source's network on fixed inputs.
fn outputs(path: &Path, x: &Tensor, t: &Tensor) -> Tensor {
    let pipe = sample::Pipeline::load(path, sample::Weights::Ema, Device::Cpu).unwrap();
    tch::no_grad(|| pipe.net.forward_t(x, t, false))
}

/// Exports `source` to `out` with `extra` flags, checks the export against the source here and
/// in diffusers; returns the model card's front matter as diffusers' python parsed it.
fn export_round_trip(
    source: &Path,
    out: &Path,
    x: &Tensor,
    t: &Tensor,
    extra: &[&str],
) -> Option<serde_json::Value> {
    let mut args = vec![
        "export",
        "--checkpoint",
        path_arg(source),
        "--diffusers",
        path_arg(out),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let expected = outputs(source, x, t);
    let back = outputs(out, x, t);
    assert!(back.equal(&expected), "the export differs from its source");
    let io = out.with_extension("io.safetensors");
    Tensor::write_safetensors(&[("x", x), ("timesteps", t), ("out", &expected)], &io).unwrap();
    verify_in_diffusers(out, &io, &format!("the export of {}", source.display()))
}

/// The files of a pipeline export, and of a model-only one.
fn assert_layout(out: &Path, pipeline: bool) {
    let exists = |rel: &str| out.join(rel).is_file();
    let pipeline_files = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "README.md",
    ];
    for rel in pipeline_files {
        assert_eq!(exists(rel), pipeline, "{}: {rel}", out.display());
    }
    for rel in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ] {
        assert_eq!(exists(rel), !pipeline, "{}: {rel}", out.display());
    }
}

const GRID: [&str; 4] = ["--grid-samples", "4", "--grid-steps", "2"];

#[test]
fn a_toolkit_run_and_a_legacy_folder_export_to_folders_diffusers_loads() {
    let dir = tempfile::tempdir().unwrap();
    // A run of the paper's U-Net, tiny: 2 levels, attention at 14×14, 28×28 inputs.
    let data = synthetic_cifar(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let model = r#"{"arch":"ddpm","in_channels":3,"out_channels":3,"image_size":28,"channels":8,"channel_mult":[1,2],"layers_per_block":1,"attention_resolutions":[14],"dropout":0.0,"norm_num_groups":4,"norm_eps":1e-6,"attention_head_dim":null,"freq_shift":1.0,"flip_sin_to_cos":false,"downsample_padding":0}"#;
    let out = run(&[
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        path_arg(&data),
        "--run-dir",
        path_arg(&run_dir),
        "--max-steps",
        "2",
        "--set",
        "batch_size=8",
        "--set",
        &format!("model={model}"),
        "--set",
        r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#,
        "--set",
        "sample_every_epochs=0",
        "--set",
        "n_workers=1",
    ]);
    assert!(
        out.status.success(),
        "ddpm train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x = Tensor::randn([2, 3, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[4i64, 45]);
    let run_export = dir.path().join("run-export");
    let mut extra = GRID.to_vec();
    extra.extend(["--license", "mit"]);
    let card = export_round_trip(&run_dir, &run_export, &x, &t, &extra);
    assert_layout(&run_export, true);
    let readme = std::fs::read_to_string(run_export.join("README.md")).unwrap();
    for row in [
        "| steps | 2 |",
        "| batch size | 8 |",
        "| world size | 1 |",
        // The preset trains in bf16, which falls back to f32 on the CPU.
        "| precision | bf16 autocast on CUDA (f32 on the CPU) |",
        "| dataset | cifar10 |",
        "![samples](samples.png)",
        "DDPMPipeline.from_pretrained",
        "ddpm sample --checkpoint",
    ] {
        assert!(readme.contains(row), "{row}: {readme}");
    }
    // Four 28×28 images in one row, 2-pixel padding.
    let grid = image::open(run_export.join("samples.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 28 + 5 * 2, 28 + 4));
    if let Some(card) = card {
        assert_eq!(card["license"], "mit", "{card}");
        assert_eq!(
            card["datasets"],
            serde_json::json!(["uoft-cs/cifar10"]),
            "{card}"
        );
        assert_eq!(
            card["tags"],
            serde_json::json!(["unconditional-image-generation", "ddpm", "diffusers"]),
            "{card}"
        );
    }

    // A legacy pipeline folder, as a pipeline (no recipe: it has none) and as a model folder.
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 700]);
    let legacy = fixtures().join("legacy_pipeline");
    let legacy_export = dir.path().join("legacy-export");
    let card = export_round_trip(&legacy, &legacy_export, &x, &t, &GRID);
    assert_layout(&legacy_export, true);
    let readme = std::fs::read_to_string(legacy_export.join("README.md")).unwrap();
    assert!(
        readme.contains("the training recipe is not recorded"),
        "{readme}"
    );
    if let Some(card) = card {
        assert_eq!(card["license"], "other", "{card}");
        assert!(card.get("datasets").is_none(), "{card}");
    }
    let model_only = dir.path().join("legacy-model-only");
    let card = export_round_trip(&legacy, &model_only, &x, &t, &["--model-only"]);
    assert_layout(&model_only, false);
    assert!(
        card.is_none_or(|c| c.is_null()),
        "a model-only export has no card"
    );

    // An existing folder is not overwritten.
    let err = run(&[
        "export",
        "--checkpoint",
        path_arg(&run_dir),
        "--diffusers",
        path_arg(&dir.path().join("run-export")),
    ]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

/// A class-conditional run of the paper's U-Net (`--class-cond`) goes out through `ddpm export`
/// as a diffusers folder with `num_class_embeds` = 10 classes + the null label and the class
/// names, comes back identical, and diffusers reproduces its outputs for given labels.
#[test]
fn a_class_conditional_run_exports_to_a_folder_diffusers_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_cifar(dir.path(), 20);
    let run_dir = dir.path().join("run");
    let model = r#"{"arch":"ddpm","in_channels":3,"out_channels":3,"image_size":28,"channels":8,"channel_mult":[1,2],"layers_per_block":1,"attention_resolutions":[14],"dropout":0.0,"norm_num_groups":4,"norm_eps":1e-6,"attention_head_dim":null,"freq_shift":1.0,"flip_sin_to_cos":false,"downsample_padding":0}"#;
    let out = run(&[
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        path_arg(&data),
        "--run-dir",
        path_arg(&run_dir),
        "--max-steps",
        "2",
        "--class-cond",
        "--set",
        "batch_size=8",
        "--set",
        &format!("model={model}"),
        "--set",
        r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#,
        "--set",
        "sample_every_epochs=0",
        "--set",
        "n_workers=1",
    ]);
    assert!(
        out.status.success(),
        "ddpm train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = dir.path().join("export");
    let mut args = vec![
        "export",
        "--checkpoint",
        path_arg(&run_dir),
        "--diffusers",
        path_arg(&exported),
    ];
    args.extend(GRID);
    ok(&args);
    assert_layout(&exported, true);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["num_class_embeds"], 11, "{config}");
    assert_eq!(config["_class_names"][0], "airplane", "{config}");

    let x = Tensor::randn([3, 3, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[4i64, 25, 45]);
    let labels = Tensor::from_slice(&[0i64, 9, 10]); // 10 is the null label
    let outputs = |path: &Path| {
        let pipe = sample::Pipeline::load(path, sample::Weights::Ema, Device::Cpu).unwrap();
        assert_eq!(pipe.num_classes(), Some(10));
        tch::no_grad(|| pipe.net.forward_cond(&x, &t, Some(&labels), false))
    };
    let expected = outputs(&run_dir);
    assert!(outputs(&exported).equal(&expected), "the export differs");
    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(
        &[
            ("x", &x),
            ("timesteps", &t),
            ("class_labels", &labels),
            ("out", &expected),
        ],
        &io,
    )
    .unwrap();
    if let Some(card) = verify_in_diffusers(&exported, &io, "the class-conditional export") {
        assert_eq!(
            card["tags"],
            serde_json::json!(["class-conditional", "ddpm", "diffusers"]),
            "{card}"
        );
    }
}

/// `ddpm export` of the modern diffusers fixture into `to`, then `extra`.
fn export_modern(to: &Path, extra: &[&str]) -> std::process::Output {
    let modern = fixtures().join("modern");
    let mut args: Vec<String> = [
        "export",
        "--checkpoint",
        path_arg(&modern),
        "--diffusers",
        path_arg(to),
        "--device",
        "cpu",
        "--grid-samples",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args)
}

/// The messages of a bad destination or choice of weights name the real cause, and nothing
/// is left behind.
#[test]
fn export_names_a_file_in_the_way_and_refuses_weights_model_on_a_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    // An empty regular file where the folder should go.
    let file = dir.path().join("out");
    std::fs::write(&file, b"").unwrap();
    let out = export_modern(&file, &[]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is a file, not a folder") && !stderr.contains("not empty"),
        "{stderr}"
    );
    // A file where a parent folder should be: named, not the staging folder.
    let out = export_modern(&file.join("pipeline"), &[]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is a file, not a folder", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains(".pipeline.tmp"), "{stderr}");
    let destination = file.join("pipeline").display().to_string();
    assert_eq!(stderr.matches(&destination).count(), 1, "{stderr}");
    // A diffusers folder holds one set of weights.
    let to = dir.path().join("model");
    let out = export_modern(&to, &["--weights", "model"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--weights model: ") && stderr.contains("is a diffusers folder"),
        "{stderr}"
    );
    assert!(!to.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["out"]);
    // The default (the folder's one set) still exports.
    let out = export_modern(&to, &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// On a full disk, `export` and `sample --npz` fail with the OS error said once and leave no
/// staging file. Needs root (Linux) to mount a small tmpfs; skipped with a message otherwise.
#[test]
fn a_full_disk_leaves_no_staging_files_and_says_the_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let tmpfs = match e2e::Tmpfs::mount(&mnt, "1m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs to fill ({why}); run as root on Linux");
            return;
        }
    };
    e2e::fill(&tmpfs.0);
    let entries = || {
        let mut names: Vec<String> = std::fs::read_dir(&tmpfs.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let out = export_modern(&tmpfs.0.join("out"), &[]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    assert_eq!(entries(), ["filler"], "{stderr}");

    let npz = tmpfs.0.join("x.npz");
    let out = run(&[
        "sample",
        "--checkpoint",
        path_arg(&fixtures().join("modern")),
        "--device",
        "cpu",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "-n",
        "64",
        "--npz",
        path_arg(&npz),
    ]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("ZipWriter"), "{stderr}");
    assert_eq!(entries(), ["filler"], "{stderr}");
}
