//! `ddpm sample --noise` against diffusers' pipeline loop (issue #27's end-to-end acceptance):
//! from one fixed x_T, through the tiny diffusers folder of the sample crate's fixtures, every
//! deterministic sampler's final images equal those of diffusers' loop with the scheduler that
//! sampler follows, to one u8 level; DDIM with quadratic spacing equals a re-typed DDIM-paper
//! loop. The reference is `scripts/golden/sampler_loops.py`, run when the set-up's python has
//! diffusers; otherwise the test says it skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use data::images::{read_npz, NpyArray, NpyData};
use e2e::{path_arg, python_with_diffusers, sample_cpu, stderr_of};

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
    let Some(python) = python_with_diffusers() else {
        eprintln!("skipped: no python with diffusers (`cargo xtask test` installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // x_T: 4 images of the folder's [3, 8, 8], standard normal from a fixed seed.
    tch::manual_seed(27);
    let x_t = tch::Tensor::randn([4, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
    let values = Vec::<f32>::try_from(x_t.flatten(0, -1)).unwrap();
    let noise = dir.path().join("x_T.npy");
    let array = NpyArray::new(vec![4, 3, 8, 8], NpyData::F32(values)).unwrap();
    std::fs::write(&noise, array.to_npy_bytes()).unwrap();
    // The reference, all samplers in one python run, beside ours (one process each).
    let reference = dir.path().join("diffusers");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/golden/sampler_loops.py");
    let mut args = vec![
        path_arg(&script).to_string(),
        path_arg(&folder()).to_string(),
        path_arg(&noise).to_string(),
        path_arg(&reference).to_string(),
    ];
    args.extend(
        SAMPLERS
            .iter()
            .map(|(name, steps, _)| format!("{name}={steps}")),
    );
    let python = Command::new(&python)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let npz = |name: &str| dir.path().join(format!("{}.npz", name.replace(':', "-")));
    std::thread::scope(|scope| {
        for (name, steps, flags) in SAMPLERS {
            let npz = npz(name);
            let noise = &noise;
            scope.spawn(move || {
                let steps = steps.to_string();
                let mut args = flags.to_vec();
                args.extend_from_slice(&["--steps", &steps, "--noise", path_arg(noise)]);
                args.extend_from_slice(&["--no-clip", "-n", "4", "--threads", "1"]);
                args.extend_from_slice(&["--npz", path_arg(&npz)]);
                let run = sample_cpu(&folder(), &args);
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
    for (name, _, _) in SAMPLERS {
        // Ours: NHWC; diffusers': NCHW.
        let ours = u8s(read_npz(&npz(name)).unwrap().pop().unwrap().1);
        let path = reference.join(format!("{}.npy", name.replace(':', "-")));
        let theirs = u8s(NpyArray::from_npy_bytes(&std::fs::read(&path).unwrap(), &path).unwrap());
        let mut worst = 0;
        for (k, &ours) in ours.iter().enumerate() {
            let (n, hw, c) = (k / 192, (k % 192) / 3, k % 3);
            let theirs = theirs[n * 192 + c * 64 + hw];
            worst = worst.max(ours.abs_diff(theirs));
        }
        eprintln!("{name}: largest difference {worst} u8 levels");
        assert!(worst <= 1, "{name}: {worst} u8 levels from diffusers");
        finals.push((name, ours));
    }
    // The samplers give different images from the same x_T, so the comparison tells them apart.
    for pair in finals.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "{} and {}", pair[0].0, pair[1].0);
    }
}
