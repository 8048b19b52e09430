//! FID and KID against checked-in references: the arithmetic against numpy/scipy
//! (`scripts/golden/fid.py`), the feature path against a tiny TorchScript stand-in for the
//! Inception (`scripts/golden/tiny_inception.py`), file errors, and (slow, ignored by default)
//! the real FID Inception against Python torch.

use std::path::{Path, PathBuf};

use data::images::{write_npz, NpyArray, NpyData};
use eval::{self as fid, Features, FidError, Images, InceptionExtractor, Resize, Statistics};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn features(rows: &Value) -> Features {
    let rows = rows.as_array().unwrap();
    let dim = rows[0].as_array().unwrap().len();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| floats(r).into_iter().map(|x| x as f32))
        .collect();
    Features::new(data, rows.len(), dim).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn tiny_extractor() -> InceptionExtractor {
    let input_size = json("tiny_inception_features.json")["input_size"]
        .as_i64()
        .unwrap();
    InceptionExtractor::load(&fixture("tiny_inception.pt"), Device::Cpu)
        .unwrap()
        .with_input_size(input_size)
}

#[test]
fn statistics_and_fid_match_scipy() {
    // With fewer images than dimensions, Σ is singular and √λ of near-zero eigenvalues
    // amplifies rounding: both references and ours agree to ~1e-8 there, not 1e-12.
    for (name, tol_eigh) in [("fid_full_rank.json", 1e-10), ("fid_singular.json", 1e-7)] {
        let g = json(name);
        let s1 = Statistics::from_features(&features(&g["features1"])).unwrap();
        let s2 = Statistics::from_features(&features(&g["features2"])).unwrap();
        for (ours, theirs) in [
            (s1.mu(), &g["mu1"]),
            (s1.sigma(), &g["sigma1"]),
            (s2.mu(), &g["mu2"]),
            (s2.sigma(), &g["sigma2"]),
        ] {
            let theirs = floats(theirs);
            assert_eq!(ours.len(), theirs.len(), "{name}: statistics size");
            let scale = theirs.iter().fold(0f64, |m, x| m.max(x.abs()));
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f64, f64::max);
            assert!(
                worst <= 1e-12 * scale,
                "{name}: statistics differ from numpy by {worst}"
            );
        }
        let fid = fid::frechet_distance(&s1, &s2).unwrap();
        let scipy = g["fid_scipy"].as_f64().unwrap();
        assert!(
            rel(fid, scipy) <= 1e-6,
            "{name}: FID {fid} vs scipy {scipy}"
        );
        let symmetric = g["fid_symmetric"].as_f64().unwrap();
        assert!(
            rel(fid, symmetric) <= tol_eigh,
            "{name}: FID {fid} vs numpy eigh {symmetric}"
        );
        // Symmetric in its arguments, and zero against itself (scipy leaves ~1e-13 there).
        assert!(rel(fid::frechet_distance(&s2, &s1).unwrap(), fid) <= tol_eigh);
        assert!(fid::frechet_distance(&s1, &s1).unwrap().abs() <= tol_eigh * fid);
    }
}

#[test]
fn kid_subsets_match_numpy() {
    for name in ["fid_full_rank.json", "fid_singular.json"] {
        let g = json(name);
        let (x, y) = (features(&g["features1"]), features(&g["features2"]));
        let idx = |v: &Value| -> Vec<usize> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect()
        };
        let mut values = Vec::new();
        for subset in g["subsets"].as_array().unwrap() {
            let ours = fid::mmd2_unbiased(&x, &idx(&subset["idx1"]), &y, &idx(&subset["idx2"]));
            let theirs = subset["mmd2"].as_f64().unwrap();
            assert!(
                rel(ours, theirs) <= 1e-9,
                "{name}: MMD² {ours} vs numpy {theirs}"
            );
            values.push(ours);
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(rel(mean, g["kid"].as_f64().unwrap()) <= 1e-9);
        // Whole sets: the first min(n1, n2) rows of each against numpy.
        let m = x.len().min(y.len());
        let all: Vec<usize> = (0..m).collect();
        let full = fid::mmd2_unbiased(&x, &all, &y, &all);
        assert!(rel(full, g["mmd2_full"].as_f64().unwrap()) <= 1e-9);
    }
}

#[test]
fn kid_is_seeded() {
    let g = json("fid_full_rank.json");
    let (x, y) = (features(&g["features1"]), features(&g["features2"]));
    let config = fid::KidConfig {
        n_subsets: 10,
        subset_size: 50,
        seed: 1,
    };
    let a = fid::kid(&x, &y, &config).unwrap();
    assert_eq!(a, fid::kid(&x, &y, &config).unwrap());
    let b = fid::kid(&x, &y, &fid::KidConfig { seed: 2, ..config }).unwrap();
    assert_ne!(a.mean, b.mean);
    // Different subsets estimate the same quantity: within a few standard deviations.
    assert!(
        (a.mean - b.mean).abs() < 3.0 * (a.std + b.std),
        "{a:?} {b:?}"
    );
}

#[test]
fn statistics_round_trip_through_npz_and_bad_files_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let g = json("fid_full_rank.json");
    let stats = Statistics::from_features(&features(&g["features1"])).unwrap();
    let path = dir.path().join("ref.npz");
    stats.write_npz(&path).unwrap();
    assert_eq!(Statistics::read_npz(&path).unwrap(), stats);

    let write = |name: &str, arrays: &[(&str, NpyArray)]| -> PathBuf {
        let path = dir.path().join(name);
        let refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(k, a)| (*k, a)).collect();
        write_npz(&path, &refs).unwrap();
        path
    };
    let f64s = |shape: Vec<usize>| {
        let n = shape.iter().product();
        NpyArray::new(shape, NpyData::F64(vec![0.0; n])).unwrap()
    };
    let cases = [
        (
            write(
                "square.npz",
                &[("mu", f64s(vec![3])), ("sigma", f64s(vec![3, 2]))],
            ),
            "expected [3, 3]",
        ),
        (
            write(
                "matrix_mu.npz",
                &[("mu", f64s(vec![3, 1])), ("sigma", f64s(vec![3, 3]))],
            ),
            "expected [D]",
        ),
        (
            write("no_sigma.npz", &[("mu", f64s(vec![3]))]),
            "no array `sigma`",
        ),
        (
            write(
                "ints.npz",
                &[
                    ("mu", NpyArray::new(vec![1], NpyData::I64(vec![0])).unwrap()),
                    ("sigma", f64s(vec![1, 1])),
                ],
            ),
            "not float64",
        ),
        (dir.path().join("missing.npz"), "no such file"),
    ];
    for (path, expected) in cases {
        let err = Statistics::read_npz(&path).unwrap_err();
        assert!(matches!(err, FidError::File { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(expected),
            "{text}"
        );
    }
    // Statistics of another dimension are refused by the distance, not silently broadcast.
    let other = Statistics::read_npz(&write(
        "d1.npz",
        &[("mu", f64s(vec![1])), ("sigma", f64s(vec![1, 1]))],
    ))
    .unwrap();
    assert!(matches!(
        fid::frechet_distance(&stats, &other),
        Err(FidError::Invalid(_))
    ));
}

#[test]
fn sample_npz_is_read_as_nhwc_and_bad_ones_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.npz");
    let nhwc: Vec<u8> = (0..2 * 2 * 3 * 3).map(|i| i as u8).collect();
    write_npz(
        &path,
        &[(
            "arr_0",
            &NpyArray::new(vec![2, 2, 3, 3], NpyData::U8(nhwc.clone())).unwrap(),
        )],
    )
    .unwrap();
    let images = Images::read_npz(&path).unwrap();
    assert_eq!(images.shape(), [2, 3, 2, 3]);
    // Image 1, channel 2, row 1, column 0 is NHWC element ((1·2 + 1)·3 + 0)·3 + 2.
    assert_eq!(images.pixels()[18 + 2 * 6 + 3], nhwc[((2 + 1) * 3) * 3 + 2]);

    let gray = dir.path().join("gray.npz");
    write_npz(
        &gray,
        &[(
            "x",
            &NpyArray::new(vec![3, 4, 5], NpyData::U8(vec![7; 60])).unwrap(),
        )],
    )
    .unwrap();
    assert_eq!(Images::read_npz(&gray).unwrap().shape(), [3, 1, 4, 5]);

    let float = dir.path().join("float.npz");
    write_npz(
        &float,
        &[(
            "arr_0",
            &NpyArray::new(vec![1, 2, 2, 3], NpyData::F32(vec![0.0; 12])).unwrap(),
        )],
    )
    .unwrap();
    let text = Images::read_npz(&float).unwrap_err().to_string();
    assert!(
        text.contains("float.npz") && text.contains("not uint8"),
        "{text}"
    );
    let four = dir.path().join("four.npz");
    write_npz(
        &four,
        &[(
            "arr_0",
            &NpyArray::new(vec![1, 2, 2, 4], NpyData::U8(vec![0; 16])).unwrap(),
        )],
    )
    .unwrap();
    let text = Images::read_npz(&four).unwrap_err().to_string();
    assert!(
        text.contains("four.npz") && text.contains("4 channels"),
        "{text}"
    );
}

#[test]
fn tiny_inception_features_match_python_for_both_resizes() {
    let g = json("tiny_inception_features.json");
    let dim = g["dim"].as_u64().unwrap() as usize;
    for resize in [Resize::Tf, Resize::Pytorch] {
        let extractor = tiny_extractor().with_resize(resize);
        for case in g["cases"].as_array().unwrap() {
            let shape: Vec<usize> = case["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let pixels: Vec<u8> = case["pixels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            let images = Images::new(pixels, [shape[0], shape[1], shape[2], shape[3]]).unwrap();
            let mut calls = Vec::new();
            let feats = extractor
                .extract(&images, |done, total| calls.push((done, total)))
                .unwrap();
            assert_eq!((feats.len(), feats.dim()), (shape[0], dim));
            assert_eq!(calls, vec![(shape[0], shape[0])]);
            let expected = floats(&case["features"][resize.name()]);
            assert_eq!(feats.as_slice().len(), expected.len(), "{}", case["name"]);
            let worst = feats
                .as_slice()
                .iter()
                .zip(&expected)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max);
            assert!(
                worst <= 1e-5,
                "{} ({}): features differ from torch by {worst}",
                case["name"],
                resize.name()
            );
        }
    }
}

#[test]
fn preprocessing_replicates_gray_resizes_and_scales() {
    let extractor = tiny_extractor();
    let gray = Tensor::full([2, 1, 28, 28], 0u8 as i64, (Kind::Uint8, Device::Cpu));
    let _ = gray.get(1).fill_(255);
    let xs = extractor.preprocess(&gray);
    assert_eq!(xs.size(), [2, 3, 16, 16]);
    assert_eq!(xs.kind(), Kind::Float);
    // A constant image stays constant through the resize: 0 → −1 and 255 → 127/128.
    assert!((xs.get(0) + 1.0).abs().max().double_value(&[]) < 1e-6);
    assert!((xs.get(1) - 127.0 / 128.0).abs().max().double_value(&[]) < 1e-6);
    // At the input size there is no resize at all: exactly (x − 128)/128.
    let same = Tensor::arange(3 * 16 * 16, (Kind::Int64, Device::Cpu))
        .remainder(256)
        .to_kind(Kind::Uint8)
        .view([1, 3, 16, 16]);
    let expected = (same.to_kind(Kind::Float) - 128.0) / 128.0;
    assert!(extractor.preprocess(&same).equal(&expected));
}

#[test]
fn features_do_not_depend_on_the_batch_size() {
    // 60 CIFAR-sized images: batches of 50 leave a partial batch of 10.
    tch::manual_seed(8);
    let pixels = Tensor::randint(256, [60, 3, 32, 32], (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Uint8)
        .view([-1]);
    let images = Images::new(Vec::<u8>::try_from(&pixels).unwrap(), [60, 3, 32, 32]).unwrap();
    let one = tiny_extractor().with_batch_size(1).unwrap();
    let fifty = tiny_extractor().with_batch_size(50).unwrap();
    let mut progress = Vec::new();
    let a = one.extract(&images, |_, _| {}).unwrap();
    let b = fifty
        .extract(&images, |done, total| progress.push((done, total)))
        .unwrap();
    assert_eq!(progress, vec![(50, 60), (60, 60)]);
    assert_eq!((a.len(), a.dim()), (60, 32));
    assert_eq!((b.len(), b.dim()), (60, 32));
    let worst = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "batch 1 and 50 differ by {worst}");
    assert!(tiny_extractor().with_batch_size(0).is_err());
}

#[test]
fn the_reference_cache_is_built_once_reused_and_rebuilt_when_the_images_change() {
    use fid::{CacheStatus, ReferenceCache, ReferenceKey};
    let dir = tempfile::tempdir().unwrap();
    let extractor = tiny_extractor();
    let key = ReferenceKey {
        dataset: "toy".into(),
        split: "train".into(),
        size: [8, 8],
        resize: Resize::Tf,
        inception_sha256: "00112233aabbccdd".into(),
        input_size: extractor.input_size(),
        max_images: None,
    };
    let images = |seed: u8| {
        let pixels = (0..6 * 3 * 64)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect();
        Images::new(pixels, [6, 3, 8, 8]).unwrap()
    };
    let cache = ReferenceCache::new(dir.path(), key.clone());
    let (built, status) = cache
        .load_or_build(&images(7), &extractor, |_, _| {})
        .unwrap();
    assert_eq!(status, CacheStatus::Built);
    assert_eq!(built.n_images, 6);
    assert_eq!(built.kid_features.len(), 6);
    // The statistics are those of the images' features.
    let direct = extractor.extract(&images(7), |_, _| {}).unwrap();
    assert_eq!(
        built.statistics,
        Statistics::from_features(&direct).unwrap()
    );
    let (again, status) = cache
        .load_or_build(&images(7), &extractor, |_, _| {})
        .unwrap();
    assert_eq!((status, &again), (CacheStatus::Reused, &built));
    let (_, status) = cache
        .load_or_build(&images(9), &extractor, |_, _| {})
        .unwrap();
    assert!(
        matches!(&status, CacheStatus::Rebuilt { reason } if reason.contains("changed")),
        "{status:?}"
    );
    // Images at another size than the key's are refused.
    let other = Images::new(vec![0; 2 * 3 * 16], [2, 3, 4, 4]).unwrap();
    assert!(cache.load_or_build(&other, &extractor, |_, _| {}).is_err());
    // Scoring a reference against itself gives zero FID.
    let scores = built
        .score(&extractor, &images(7), &fid::KidConfig::default())
        .unwrap();
    assert!(scores.fid.abs() < 1e-6, "{scores:?}");
}

#[test]
fn a_file_that_is_not_torchscript_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pt");
    std::fs::write(&bogus, b"not a zip").unwrap();
    for path in [bogus, dir.path().join("absent.pt")] {
        let err = InceptionExtractor::load(&path, Device::Cpu).unwrap_err();
        assert!(matches!(err, FidError::Inception { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

/// The fixed projection vectors of `scripts/golden/tiny_inception.py --real`.
fn projections(row: &[f32]) -> [f64; 4] {
    let mut out = [0f64; 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = row
            .iter()
            .enumerate()
            .map(|(j, &x)| x as f64 * (0.37 * (k + 1) as f64 * j as f64).cos())
            .sum();
    }
    out
}

#[test]
#[ignore = "needs data/inception/default_1.pt (cargo xtask fetch-inception)"]
fn real_inception_matches_python_torch_on_cifar10() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/inception/default_1.pt");
    let first20 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/cifar10/test_batch_first20.bin"
    );
    let (dataset, _) = data::DatasetSpec::seed_cifar10()
        .load(Path::new(first20))
        .unwrap();
    assert_eq!(dataset.len(), 20);
    let extractor = InceptionExtractor::load(&model, Device::Cpu).unwrap();
    let feats = extractor
        .extract(&Images::from_dataset(&dataset), |_, _| {})
        .unwrap();
    assert_eq!((feats.len(), feats.dim()), (20, fid::INCEPTION_DIM));
    let g = json("fid_inception_cifar20.json");
    let (first16, sums, sum_sq, proj) = (
        floats(&g["first16"]),
        floats(&g["sum"]),
        floats(&g["sum_sq"]),
        floats(&g["projections"]),
    );
    let mut worst = 0f64;
    for i in 0..20 {
        let row = feats.row(i);
        for j in 0..16 {
            worst = worst.max((row[j] as f64 - first16[i * 16 + j]).abs());
        }
        // Sums over 2048 values: 1e-4 relative (each value to ~1e-4 would allow far more).
        let sum: f64 = row.iter().map(|&x| x as f64).sum();
        let sq: f64 = row.iter().map(|&x| (x as f64).powi(2)).sum();
        assert!(
            rel(sum, sums[i]) <= 1e-4 && rel(sq, sum_sq[i]) <= 1e-4,
            "image {i}: sums {sum} {sq}"
        );
        for (k, p) in projections(row).iter().enumerate() {
            assert!(
                (p - proj[i * 4 + k]).abs() <= 1e-4 * sums[i],
                "image {i}: projection {k} {p}"
            );
        }
    }
    assert!(
        worst <= 1e-4,
        "first 16 features differ from Python torch by {worst}"
    );
}
