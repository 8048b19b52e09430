//! `ddpm data stats`, `ddpm data export` and `ddpm train` on the streamed kinds, with the LMDB
//! that `scripts/golden/streams.py` writes with Python's `lmdb` (WebP, JPEG and PNG values) and
//! the pixels Pillow makes of it (centre crop, antialiased Lanczos to 64x64).

use std::path::{Path, PathBuf};

use data::images::{read_npz, NpyData};
use e2e::{path_arg, run, run_ok, stderr_of, stdout_of, tiny_train_args};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/streams")
}

fn u8_array(path: &Path, name: &str) -> (Vec<u8>, Vec<usize>) {
    let (_, array) = read_npz(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{} has no {name}", path.display()));
    match array.data {
        NpyData::U8(v) => (v, array.shape),
        other => panic!("{name} is not u8: {other:?}"),
    }
}

#[test]
fn stats_of_an_lmdb_match_pillows_pixels() {
    let lmdb = fixtures().join("lmdb");
    let out = run_ok(&[
        "data",
        "stats",
        "--json",
        "--dataset",
        "lmdb",
        "--path",
        path_arg(&lmdb),
        "--size",
        "64",
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(json["count"], 5);
    assert_eq!(json["shape"], serde_json::json!([3, 64, 64]));
    let (pixels, _) = u8_array(&fixtures().join("expected.npz"), "lmdb_pixels");
    for c in 0..3 {
        let sum: u64 = pixels
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| u64::from(v))
            .sum();
        let want = sum as f64 / (pixels.len() / 3) as f64;
        let got = json["mean"][c].as_f64().unwrap();
        // Pillow's and our JPEG decoders differ by a mean of 0.33 levels on one image of five.
        assert!(
            (got - want).abs() < 0.1,
            "channel {c}: {got} vs Pillow's {want}"
        );
    }
}

#[test]
fn export_writes_the_preprocessed_images_as_nhwc() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("ref.npz");
    let lmdb = fixtures().join("lmdb");
    let out = run_ok(&[
        "data",
        "export",
        "--dataset",
        "lmdb",
        "--path",
        path_arg(&lmdb),
        "--size",
        "64",
        "--fit",
        "center-crop",
        "--n",
        "4",
        "--npz",
        path_arg(&npz),
    ]);
    assert!(
        stdout_of(&out).contains("4 images of 64x64x3"),
        "{}",
        stdout_of(&out)
    );
    let (got, shape) = u8_array(&npz, "arr_0");
    assert_eq!(shape, [4, 64, 64, 3]);
    let (want, _) = u8_array(&fixtures().join("expected.npz"), "lmdb_pixels");
    let image = 64 * 64 * 3;
    // Record 2 is a PNG: exactly Pillow's pixels. All within the decoders' difference.
    assert_eq!(got[2 * image..3 * image], want[2 * image..3 * image]);
    let max = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap();
    assert!(max <= 3, "max difference {max}");
    assert!(
        read_npz(&npz).unwrap().iter().all(|(n, _)| n != "labels"),
        "unlabelled"
    );
}

#[test]
fn a_corrupted_value_stops_stats_naming_its_key_or_is_skipped() {
    let broken = fixtures().join("broken_lmdb");
    let args = [
        "data",
        "stats",
        "--dataset",
        "lmdb",
        "--path",
        path_arg(&broken),
        "--size",
        "16",
    ];
    let out = run(&args);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("record key bad-0002: unreadable image"),
        "{}",
        stderr_of(&out)
    );
    let mut skip = args.to_vec();
    skip.extend(["--skip-unreadable", "--json"]);
    let out = run(&skip);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(json["count"], 1);
    assert_eq!(json["skipped"].as_array().unwrap().len(), 1);
}

fn lmdb_spec(size: usize) -> String {
    format!(
        r#"dataset={{"kind":"lmdb","config":{{"size":[{size},{size}],"channels":3,"fit":"center-crop","on_error":"fail"}}}}"#
    )
}

#[test]
fn train_streams_an_lmdb_and_stops_at_an_unreadable_record_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--threads",
        "1",
        "--max-steps",
        "2",
        "--set",
        "batch_size=2",
    ];
    let mut args = tiny_train_args(&fixtures().join("lmdb"), &dir.path().join("run"), &extra);
    args.extend(["--set".to_string(), lmdb_spec(64)]);
    run_ok(&args);
    let mut args = tiny_train_args(
        &fixtures().join("broken_lmdb"),
        &dir.path().join("bad"),
        &extra,
    );
    args.extend(["--set".to_string(), lmdb_spec(16)]);
    let out = run(&args);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("record key bad-0002"),
        "{}",
        stderr_of(&out)
    );
}
