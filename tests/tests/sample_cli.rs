//! `ddpm sample` from a checkpoint that `ddpm train` wrote (tiny model, CPU), its outputs, its
//! errors, and `ddpm forward` on a real CIFAR-10 image.

use std::path::Path;
use std::process::Output;

use e2e::{copy_dir, path_arg, run, sample_cpu, shared_dir, stderr_of, train_tiny};

/// `ddpm sample` of `checkpoint` on the CPU with one thread, then `extra`.
fn sample(checkpoint: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--threads", "1"];
    args.extend_from_slice(extra);
    sample_cpu(checkpoint, &args)
}

fn png_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn sample_writes_every_output_from_a_trained_checkpoint_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let out_dir = dir.path().join("out");
    let (grid, strip, gif, npz, pngs) = (
        out_dir.join("grid.png"),
        out_dir.join("strip.png"),
        out_dir.join("chains.gif"),
        out_dir.join("x.npz"),
        out_dir.join("pngs"),
    );
    // 5 images in batches of 2 (the last batch holds 1), DDIM over 10 of the 50 steps.
    let common = [
        "-n",
        "5",
        "--batch",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--eta",
        "0.5",
        "--seed",
        "3",
    ];
    let mut args = common.to_vec();
    args.extend_from_slice(&[
        "--grid",
        path_arg(&grid),
        "--png-dir",
        path_arg(&pngs),
        "--strip",
        path_arg(&strip),
        "--gif",
        path_arg(&gif),
    ]);
    args.extend_from_slice(&[
        "--gif-frames",
        "6",
        "--gif-chains",
        "3",
        "--npz",
        path_arg(&npz),
    ]);
    let out = sample(&run_dir, &args);
    assert!(
        out.status.success(),
        "ddpm sample failed: {}",
        stderr_of(&out)
    );

    // The grid: 5 tiles of 28 + 2 padding in one row.
    let grid_image = image::open(&grid).expect("the grid decodes");
    assert_eq!((grid_image.width(), grid_image.height()), (5 * 30 + 2, 32));
    // One PNG per image.
    let files = png_files(&pngs);
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "000000.png",
            "000001.png",
            "000002.png",
            "000003.png",
            "000004.png"
        ]
    );
    for (name, _) in &files {
        let img = image::open(pngs.join(name)).expect("each PNG decodes");
        assert_eq!((img.width(), img.height()), (28, 28));
    }
    // The strip takes 10 evenly spaced snapshots of the GIF's 6 frames: all 6.
    let strip_image = image::open(&strip).expect("the strip decodes");
    assert_eq!(
        (strip_image.width(), strip_image.height()),
        (6 * 30 + 2, 32)
    );
    // The GIF: one frame per snapshot, each a 2×2 grid of the 3 chains.
    {
        use image::AnimationDecoder;
        let file = std::io::BufReader::new(std::fs::File::open(&gif).unwrap());
        let frames = image::codecs::gif::GifDecoder::new(file)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap();
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[0].buffer().dimensions(), (2 * 30 + 2, 2 * 30 + 2));
        // The last frame is the final samples: image 1 sits in the top-right tile. GIF
        // quantises to 256 colours, so compare the tiles' mean colours.
        let last = frames[5].buffer();
        let png1 = image::open(pngs.join("000001.png")).unwrap().to_rgb8();
        for k in 0..3 {
            let mut gif_mean = 0.0;
            let mut png_mean = 0.0;
            for y in 0..28 {
                for x in 0..28 {
                    gif_mean += last.get_pixel(32 + x, 2 + y).0[k] as f64 / 784.0;
                    png_mean += png1.get_pixel(x, y).0[k] as f64 / 784.0;
                }
            }
            assert!(
                (gif_mean - png_mean).abs() < 8.0,
                "channel {k}: GIF tile mean {gif_mean} vs PNG {png_mean}"
            );
        }
    }
    // The .npz: a stored zip entry arr_0.npy of uint8 [5, 28, 28, 3], pixels as in the PNGs.
    let bytes = std::fs::read(&npz).unwrap();
    assert_eq!(&bytes[..2], b"PK");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("arr_0.npy"), "no arr_0 entry");
    assert!(
        text.contains("'descr': '|u1'") && text.contains("'shape': (5, 28, 28, 3)"),
        "npy header"
    );
    let png0 = image::open(pngs.join("000000.png")).unwrap().to_rgb8();
    let header_end = text.find("}").unwrap();
    let data_start = bytes[header_end..]
        .iter()
        .position(|&b| b == b'\n')
        .unwrap()
        + header_end
        + 1;
    assert_eq!(
        &bytes[data_start..data_start + 28 * 28 * 3],
        png0.as_raw().as_slice(),
        "npz image 0 (NHWC) = 000000.png"
    );

    // The same seed gives the same images; another seed others.
    let again = out_dir.join("again");
    let mut args = common.to_vec();
    args.extend_from_slice(&["--png-dir", path_arg(&again)]);
    assert!(sample(&run_dir, &args).status.success());
    assert_eq!(png_files(&again), files);
    let other = out_dir.join("other");
    let mut args = common.to_vec();
    let last = args.len() - 1;
    args[last] = "4";
    args.extend_from_slice(&["--png-dir", path_arg(&other)]);
    assert!(sample(&run_dir, &args).status.success());
    assert_ne!(png_files(&other), files);

    // DDPM and DPM-Solver++ run from the same checkpoint directory.
    let ckpt = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for extra in [
        ["--sampler", "ddpm", "--variance", "small"],
        ["--sampler", "dpm-solver++", "--steps", "5"],
    ] {
        let grid = out_dir.join(format!("{}.png", extra[1]));
        let mut args = vec!["-n", "2", "--weights", "model", "--grid", path_arg(&grid)];
        args.extend_from_slice(&extra);
        let out = sample(&ckpt, &args);
        assert!(out.status.success(), "{extra:?}: {}", stderr_of(&out));
        assert!(image::open(&grid).is_ok());
    }
}

#[test]
fn bad_input_fails_before_sampling_naming_the_file_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let ckpt = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let grid = dir.path().join("grid.png");
    let fails = |checkpoint: &Path, extra: &[&str], expected: &[&str]| {
        let mut args = extra.to_vec();
        if !args.contains(&"--grid") {
            args.extend_from_slice(&["--grid", path_arg(&grid)]);
        }
        let out = sample(checkpoint, &args);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{extra:?} succeeded");
        for e in expected {
            assert!(err.contains(e), "{extra:?}: expected `{e}` in: {err}");
        }
        assert!(
            !err.contains("sampling "),
            "{extra:?}: the error came after sampling started: {err}"
        );
        assert!(!grid.exists(), "{extra:?} wrote the grid");
    };
    // Missing checkpoint; a directory that holds none.
    fails(
        &dir.path().join("nope"),
        &[],
        &["--checkpoint", "nope", "does not exist"],
    );
    fails(dir.path(), &[], &["--checkpoint", "neither a checkpoint"]);
    // Corrupt weights.
    let corrupt = dir.path().join("corrupt");
    copy_dir(&ckpt, &corrupt);
    std::fs::write(corrupt.join("ema.safetensors"), b"not safetensors").unwrap();
    fails(&corrupt, &[], &["ema.safetensors"]);
    // The weights are fine but --weights model is missing.
    std::fs::remove_file(corrupt.join("model.safetensors")).unwrap();
    fails(&corrupt, &["--weights", "model"], &["model.safetensors"]);
    // A config that does not match the weights: wider channels.
    let mismatch = dir.path().join("mismatch");
    copy_dir(&ckpt, &mismatch);
    let state_path = mismatch.join("state.json");
    let state = std::fs::read_to_string(&state_path).unwrap().replace(
        "\"down_channels\": [\n        8,",
        "\"down_channels\": [\n        12,",
    );
    assert!(state.contains("12,"), "edited the config");
    std::fs::write(&state_path, state).unwrap();
    fails(&mismatch, &[], &["ema.safetensors", "state.json"]);
    // A corrupt state.json.
    std::fs::write(&state_path, "{").unwrap();
    fails(&mismatch, &[], &["state.json"]);
    // Impossible settings.
    fails(
        &ckpt,
        &["--sampler", "ddim", "--steps", "51"],
        &["--steps 51", "T = 50"],
    );
    fails(
        &ckpt,
        &["--sampler", "dpm-solver++", "--steps", "0"],
        &["--steps 0"],
    );
    fails(&ckpt, &["--sampler", "ddim", "--eta", "2"], &["--eta 2"]);
    fails(&ckpt, &["-n", "0"], &["--n-images 0"]);
    fails(&ckpt, &["--batch", "0"], &["--batch 0"]);
    // DDPM takes --steps (a respaced chain), but not --spacing without it, nor more than T.
    fails(
        &ckpt,
        &["--sampler", "ddpm", "--spacing", "trailing"],
        &["--spacing", "--steps"],
    );
    fails(
        &ckpt,
        &["--sampler", "ddpm", "--steps", "51"],
        &["--steps 51", "T = 50"],
    );
    // Unwritable output paths: under a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("grid.png");
    fails(
        &ckpt,
        &["--grid", path_arg(&under_file)],
        &["--grid", "a-file"],
    );
    fails(&ckpt, &["--npz", path_arg(&under_file)], &["--npz"]);
    fails(
        &ckpt,
        &["--png-dir", path_arg(&file.join("pngs"))],
        &["--png-dir"],
    );
    // Nothing to write.
    let out = sample(&ckpt, &[]);
    assert!(
        stderr_of(&out).contains("nothing to write"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn forward_draws_the_closed_form_noising_of_a_real_image() {
    let dir = tempfile::tempdir().unwrap();
    let strip = dir.path().join("strip.png");
    let data = shared_dir().join("data/cifar10/test_batch_first20.bin");
    let out = run(&[
        "forward",
        "--dataset",
        "cifar10",
        "--data",
        path_arg(&data),
        "--index",
        "3",
        "--rows",
        "2",
        "--scale",
        "1",
        "--out",
        path_arg(&strip),
    ]);
    assert!(
        out.status.success(),
        "ddpm forward failed: {}",
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains("t = [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]"),
        "{}",
        stderr_of(&out)
    );
    // The seed preset: 28×28 images; x_0 and 10 noisy columns, 2 rows.
    let img = image::open(&strip).expect("the strip decodes").to_rgb8();
    assert_eq!(img.dimensions(), (11 * 30 + 2, 2 * 30 + 2));
    // Roughness (mean |difference| of horizontal neighbours) grows along the strip: the clean
    // image is smooth and x_299 is nearly pure noise.
    let roughness = |col: u32| {
        let (x0, y0) = (2 + col * 30, 2);
        let mut sum = 0.0;
        for y in y0..y0 + 28 {
            for x in x0..x0 + 27 {
                let (a, b) = (img.get_pixel(x, y).0, img.get_pixel(x + 1, y).0);
                sum += (0..3)
                    .map(|k| (a[k] as f64 - b[k] as f64).abs())
                    .sum::<f64>();
            }
        }
        sum / (28.0 * 27.0 * 3.0)
    };
    assert!(
        roughness(0) < roughness(1) && roughness(1) < roughness(10),
        "{} {} {}",
        roughness(0),
        roughness(1),
        roughness(10)
    );
    assert!(roughness(10) > 60.0, "x_299 is noise: {}", roughness(10));
    // Bad flags are named.
    let out = run(&[
        "forward",
        "--dataset",
        "cifar10",
        "--data",
        path_arg(&data),
        "--index",
        "19",
        "--rows",
        "2",
        "--out",
        path_arg(&strip),
    ]);
    assert!(
        !out.status.success() && stderr_of(&out).contains("--index 19"),
        "{}",
        stderr_of(&out)
    );
}

/// NaN in a checkpoint's EMA weights: sampling fails naming the file and the tensor instead of
/// writing black images, and so does a resume (not later, at the next checkpoint's write).
#[test]
fn nan_weights_fail_naming_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let ema = run_dir.join("checkpoints/step-00000002/ema.safetensors");
    let tensor = e2e::poison_safetensors(&ema, None);
    // NaN weights that training itself wrote carry their digests; these were poisoned after the
    // write, which the digests would report first, so the checkpoint drops them (reads as one
    // from before digests) and the resume below reaches the NaN check.
    e2e::drop_digests(ema.parent().unwrap());
    let grid = dir.path().join("grid.png");
    let out = sample(
        &run_dir,
        &[
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "-n",
            "2",
            "--grid",
            path_arg(&grid),
        ],
    );
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "sampled NaN weights: {stderr}");
    assert!(
        stderr.contains(&ema.display().to_string())
            && stderr.contains(&format!("tensor `{tensor}`"))
            && stderr.contains("NaN"),
        "{stderr}"
    );
    assert!(!grid.exists(), "an image was written");
    let data = dir.path().join("synthetic_batch.bin");
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
        "--resume",
        "--max-steps",
        "3",
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&ema.display().to_string())
            && stderr.contains(&format!("tensor `{tensor}`"))
            && !stderr.contains("refusing to write"),
        "{stderr}"
    );
}

/// Issue #31, bug 5: a `--png-dir` that already holds images is refused and left as it was;
/// `--overwrite` replaces the numbered PNGs of an earlier, larger draw instead of mixing them in.
#[test]
fn png_dir_with_other_images_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    let pngs = dir.path().join("pngs");
    let first = sample(&run_dir, &["-n", "6", "--png-dir", path_arg(&pngs)]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    let before = png_files(&pngs);
    assert_eq!(before.len(), 6);

    let refused = sample(&run_dir, &["-n", "2", "--png-dir", path_arg(&pngs)]);
    let err = stderr_of(&refused);
    assert!(
        !refused.status.success(),
        "a folder of 6 images was accepted"
    );
    assert!(
        err.contains("--png-dir") && err.contains("6 image") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        png_files(&pngs),
        before,
        "the refused run changed the folder"
    );

    let replaced = sample(
        &run_dir,
        &["-n", "2", "--png-dir", path_arg(&pngs), "--overwrite"],
    );
    assert!(replaced.status.success(), "{}", stderr_of(&replaced));
    let names: Vec<String> = png_files(&pngs).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["000000.png", "000001.png"]);
}

/// A copy of the sample crate's diffusers fixture (`modern`: config.json and weights) in `dir`,
/// without its scheduler_config.json, its config.json passed through `edit`.
fn diffusers_folder_without_scheduler(
    dir: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/sample/tests/fixtures/diffusers/modern");
    let folder = dir.join("unet");
    std::fs::create_dir_all(&folder).unwrap();
    let weights = "diffusion_pytorch_model.safetensors";
    std::fs::copy(fixture.join(weights), folder.join(weights)).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    folder
}

/// A diffusers folder without scheduler_config.json samples with DDPMScheduler's defaults and
/// says so (#31: it did so silently).
#[test]
fn a_diffusers_folder_without_a_scheduler_config_says_which_defaults_it_samples_with() {
    let dir = tempfile::tempdir().unwrap();
    let folder = diffusers_folder_without_scheduler(dir.path(), |_| {});
    let grid = dir.path().join("grid.png");
    let args = ["-n", "1", "--sampler", "ddim", "--steps", "2"];
    let out = sample(&folder, &[&args[..], &["--grid", path_arg(&grid)]].concat());
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no scheduler_config.json") && stderr.contains("DDPMScheduler's defaults"),
        "{stderr}"
    );
}

/// A diffusers config.json without `block_out_channels` is named as missing, with the default
/// that then applies (#31: "differ in length").
#[test]
fn a_diffusers_config_without_block_out_channels_names_the_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let folder = diffusers_folder_without_scheduler(dir.path(), |config| {
        config.as_object_mut().unwrap().remove("block_out_channels");
    });
    let grid = dir.path().join("grid.png");
    let out = sample(
        &folder,
        &[
            "-n",
            "1",
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--grid",
            path_arg(&grid),
        ],
    );
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("block_out_channels is missing")
            && stderr.contains("down_block_types has 2 entries"),
        "{stderr}"
    );
}

/// The images of an `.npz` that `ddpm sample --npz` wrote.
fn npz_images(path: &Path) -> data::images::NpyArray {
    let mut arrays = data::images::read_npz(path).unwrap();
    assert_eq!(arrays.len(), 1, "{}", path.display());
    arrays.pop().unwrap().1
}

#[test]
fn a_noise_file_starts_the_chains_and_a_timestep_list_sets_the_steps() {
    use tch::{Device, Kind, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(dir.path());
    // x_T as the seed draws it: batch 0 of seed s is seeded with s itself, and a generator
    // seeded with s draws what libtorch's global one draws after manual_seed(s).
    let write_noise = |name: &str, seed: i64| {
        tch::manual_seed(seed);
        let x_t = Tensor::randn([3, 3, 28, 28], (Kind::Float, Device::Cpu));
        let path = dir.path().join(name);
        Tensor::write_safetensors(&[("noise", &x_t)], &path).unwrap();
        path
    };
    let (seeded, other) = (
        write_noise("seeded.safetensors", 5),
        write_noise("other.safetensors", 6),
    );
    let mut k = 0;
    let mut images = |extra: &[&str]| {
        k += 1;
        let npz = dir.path().join(format!("{k}.npz"));
        let mut args = vec!["-n", "3", "--batch", "3", "--npz", path_arg(&npz)];
        args.extend_from_slice(extra);
        let out = sample(&run_dir, &args);
        assert!(out.status.success(), "{extra:?}: {}", stderr_of(&out));
        (npz_images(&npz), stderr_of(&out))
    };
    // Ancestral DDPM: with the seed's own x_T in the file, the seed's images, since the
    // per-step noise still comes from --seed; another seed then gives other images.
    let (plain, _) = images(&["--seed", "5"]);
    let (from_file, log) = images(&["--seed", "5", "--noise", path_arg(&seeded)]);
    assert_eq!(plain, from_file);
    assert!(log.contains("NFE 50 per image"), "{log}");
    assert!(log.contains("seeded.safetensors"), "{log}");
    let (reseeded, _) = images(&["--seed", "6", "--noise", path_arg(&seeded)]);
    assert_ne!(reseeded, from_file);
    // Deterministic DDIM: a function of the file alone, whatever the seed; the explicit list
    // of leading spacing's 5 of T = 50 steps is the same sampler.
    let ddim = ["--sampler", "ddim", "--noise"];
    let (a, log) = images(
        &[
            &ddim[..],
            &[path_arg(&seeded), "--steps", "5", "--seed", "1"],
        ]
        .concat(),
    );
    assert!(log.contains("NFE 5 per image"), "{log}");
    let list = "40,30,20,10,0";
    let (b, _) = images(
        &[
            &ddim[..],
            &[path_arg(&seeded), "--timesteps", list, "--seed", "9"],
        ]
        .concat(),
    );
    assert_eq!(a, b);
    let (c, _) = images(
        &[
            &ddim[..],
            &[path_arg(&other), "--steps", "5", "--seed", "1"],
        ]
        .concat(),
    );
    assert_ne!(a, c);
    // σ-space: Heun evaluates the network twice per step but the last, at Karras' fractional
    // timesteps; a spacing a σ-space sampler cannot take is refused naming both flags.
    let heun = ["--sampler", "heun", "--steps", "3", "--spacing", "karras"];
    let (_, log) = images(&[&heun[..], &["--noise", path_arg(&seeded)]].concat());
    assert!(log.contains("NFE 5 per image"), "{log}");
    // PLMS: one evaluation more than its steps.
    let (_, log) = images(&["--sampler", "pndm", "--steps", "4"]);
    assert!(log.contains("NFE 5 per image"), "{log}");
    let grid = dir.path().join("grid.png");
    let out = sample(
        &run_dir,
        &[
            "--sampler",
            "euler",
            "--spacing",
            "quadratic",
            "--grid",
            path_arg(&grid),
        ],
    );
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("--spacing quadratic") && err.contains("--sampler euler"),
        "{err}"
    );
    // A file that does not fit -n is refused before sampling, naming both.
    let out = sample(
        &run_dir,
        &[
            "-n",
            "4",
            "--noise",
            path_arg(&seeded),
            "--grid",
            path_arg(&grid),
        ],
    );
    let err = stderr_of(&out);
    assert!(!out.status.success());
    for named in ["--noise", "-n", "[3, 3, 28, 28]", "[4, 3, 28, 28]"] {
        assert!(err.contains(named), "expected `{named}` in: {err}");
    }
    assert!(!err.contains("sampling ") && !grid.exists(), "{err}");
}
