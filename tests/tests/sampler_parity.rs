//! `ddpm sample --noise` against diffusers' pipeline loop (issue #27's end-to-end acceptance):
//! from one fixed x_T, through the tiny diffusers folder of the sample crate's fixtures, every
//! deterministic sampler's final images equal those of diffusers' loop with the scheduler that
//! sampler follows, to one u8 level; DDIM with quadratic spacing equals a re-typed DDIM-paper
//! loop. The reference is `scripts/golden/sampler_loops.py`, run when the set-up's python has
//! diffusers; otherwise the test says it skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use data::images::{read_npz, NpyArray, NpyData};
use e2e::{copy_dir, path_arg, python_with_diffusers, sample_cpu, stderr_of};

/// (reference name, steps, `ddpm sample` flags).
const SAMPLERS: &[(&str, usize, &[&str])] = &[
    ("ddim", 10, &["--sampler", "ddim"]),
    (
        "ddim-quadratic",
        10,
        &["--sampler", "ddim", "--spacing", "quadratic"],
    ),
    (
        "dpm-solver++:1",
        10,
        &["--sampler", "dpm-solver++", "--order", "1"],
    ),
    ("dpm-solver++:2", 10, &["--sampler", "dpm-solver++"]),
    (
        "dpm-solver++:3",
        10,
        &["--sampler", "dpm-solver++", "--order", "3"],
    ),
    ("unipc:2:bh2", 10, &["--sampler", "unipc"]),
    ("unipc:3:bh2", 10, &["--sampler", "unipc", "--order", "3"]),
    ("euler", 10, &["--sampler", "euler"]),
    (
        "euler:karras",
        10,
        &["--sampler", "euler", "--spacing", "karras"],
    ),
    ("heun", 6, &["--sampler", "heun"]),
    ("pndm", 10, &["--sampler", "pndm"]),
    ("pndm:prk", 6, &["--sampler", "pndm", "--prk"]),
];

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/sample/tests/fixtures/diffusers/modern")
}

fn u8s(array: NpyArray) -> Vec<u8> {
    match array.data {
        NpyData::U8(v) => v,
        _ => panic!("not uint8"),
    }
}

#[test]
fn every_deterministic_sampler_matches_the_diffusers_pipeline_loop_from_one_x_t() {
    parity(&folder(), SAMPLERS, true, 1.0);
}

/// Without `--no-clip`, on the folder with `clip_sample: true`: DDIM and Heun clamp x̂_0 as
/// their diffusers schedulers read `clip_sample`, DPM-Solver++, UniPC, Euler and PNDM do not
/// (diffusers' `from_config` with no clamping overrides, the reference's `+default-clip`). x_T
/// is 4 times a standard normal's, so that x̂_0 leaves [−1, 1] and clamping changes the images
/// of every sampler that does it (a DPM-Solver++ that clamped would be 35 u8 levels from diffusers).
#[test]
fn each_sampler_clamps_by_default_as_its_diffusers_scheduler_does() {
    let dir = tempfile::tempdir().unwrap();
    let clipped = dir.path().join("clip_sample");
    copy_with_scheduler(&clipped, "\"clip_sample\": false", "\"clip_sample\": true");
    let defaults: Vec<_> = SAMPLERS
        .iter()
        .copied()
        .filter(|(name, _, _)| {
            [
                "ddim",
                "dpm-solver++:2",
                "unipc:2:bh2",
                "euler",
                "heun",
                "pndm",
            ]
            .contains(name)
        })
        .collect();
    assert_eq!(defaults.len(), 6);
    let clamped = parity(&clipped, &defaults, false, 4.0);
    let unclamped = parity(&clipped, &defaults[..1], true, 4.0);
    assert_ne!(
        clamped[0], unclamped[0],
        "DDIM's clamping changed nothing here"
    );
}

/// A folder whose scheduler is a `PNDMScheduler` samples with it when `--sampler` is not given:
/// PNDM's Runge–Kutta start when `skip_prk_steps` is absent (diffusers' default, false), PLMS
/// when it is true, each as diffusers' pipeline loop does.
#[test]
fn a_pndm_folder_samples_as_its_scheduler_config_says_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (prk, plms) = (dir.path().join("prk"), dir.path().join("plms"));
    let (ddpm, pndm) = (
        "\"_class_name\": \"DDPMScheduler\"",
        "\"_class_name\": \"PNDMScheduler\"",
    );
    copy_with_scheduler(&prk, ddpm, pndm);
    parity(&prk, &[("pndm:prk", 6, &[])], true, 1.0);
    copy_with_scheduler(&plms, ddpm, &format!("{pndm}, \"skip_prk_steps\": true"));
    parity(&plms, &[("pndm", 10, &[])], true, 1.0);
}

/// Copies the fixture folder to `to` with `from` replaced by `with` in its scheduler config.
fn copy_with_scheduler(to: &Path, from: &str, with: &str) {
    copy_dir(&folder(), to);
    let path = to.join("scheduler_config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains(from), "{from} is not in {config}");
    std::fs::write(&path, config.replace(from, with)).unwrap();
}

/// Runs `ddpm sample --noise` for each of `samplers` on `folder` from x_T = `scale` · N(0, I)
/// (with `--no-clip` when `no_clip`, else each sampler's default clamping against diffusers'
/// default) beside the
/// reference script, asserts that every final image is within one u8 level of diffusers' and
/// that neighbouring samplers differ; returns our images, in order.
fn parity(
    folder: &Path,
    samplers: &[(&str, usize, &[&str])],
    no_clip: bool,
    scale: f64,
) -> Vec<Vec<u8>> {
    let Some(python) = python_with_diffusers() else {
        eprintln!("skipped: no python with diffusers (`cargo xtask test` installs it)");
        return Vec::new();
    };
    let dir = tempfile::tempdir().unwrap();
    // x_T: 4 images of the folder's [3, 8, 8], standard normal from a fixed seed, scaled.
    tch::manual_seed(27);
    let x_t = tch::Tensor::randn([4, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu)) * scale;
    let values = Vec::<f32>::try_from(x_t.flatten(0, -1)).unwrap();
    let noise = dir.path().join("x_T.npy");
    let array = NpyArray::new(vec![4, 3, 8, 8], NpyData::F32(values)).unwrap();
    std::fs::write(&noise, array.to_npy_bytes()).unwrap();
    // The reference, all samplers in one python run, beside ours (one process each).
    let reference = dir.path().join("diffusers");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/golden/sampler_loops.py");
    let suffix = if no_clip { "" } else { "+default-clip" };
    let mut args = vec![
        path_arg(&script).to_string(),
        path_arg(folder).to_string(),
        path_arg(&noise).to_string(),
        path_arg(&reference).to_string(),
    ];
    args.extend(
        samplers
            .iter()
            .map(|(name, steps, _)| format!("{name}{suffix}={steps}")),
    );
    let python = Command::new(&python)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let npz = |name: &str| dir.path().join(format!("{}.npz", name.replace(':', "-")));
    std::thread::scope(|scope| {
        for (name, steps, flags) in samplers {
            let npz = npz(name);
            let noise = &noise;
            scope.spawn(move || {
                let steps = steps.to_string();
                let mut args = flags.to_vec();
                args.extend_from_slice(&["--steps", &steps, "--noise", path_arg(noise)]);
                if no_clip {
                    args.push("--no-clip");
                }
                args.extend_from_slice(&["-n", "4", "--threads", "1"]);
                args.extend_from_slice(&["--npz", path_arg(&npz)]);
                let run = sample_cpu(folder, &args);
                assert!(run.status.success(), "{name}: {}", stderr_of(&run));
            });
        }
    });
    let reference_run = python.wait_with_output().unwrap();
    assert!(
        reference_run.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&reference_run.stderr)
    );
    let mut finals = Vec::new();
    for (name, _, _) in samplers {
        // Ours: NHWC; diffusers': NCHW.
        let ours = u8s(read_npz(&npz(name)).unwrap().pop().unwrap().1);
        let file = format!("{name}{suffix}.npy").replace([':', '+'], "-");
        let path = reference.join(file);
        let theirs = u8s(NpyArray::from_npy_bytes(&std::fs::read(&path).unwrap(), &path).unwrap());
        let mut worst = 0;
        for (k, &ours) in ours.iter().enumerate() {
            let (n, hw, c) = (k / 192, (k % 192) / 3, k % 3);
            let theirs = theirs[n * 192 + c * 64 + hw];
            worst = worst.max(ours.abs_diff(theirs));
        }
        eprintln!("{name}{suffix}: largest difference {worst} u8 levels");
        assert!(
            worst <= 1,
            "{name}{suffix}: {worst} u8 levels from diffusers"
        );
        finals.push((name, ours));
    }
    // The samplers give different images from the same x_T, so the comparison tells them apart.
    for pair in finals.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "{} and {}", pair[0].0, pair[1].0);
    }
    finals.into_iter().map(|(_, images)| images).collect()
}
