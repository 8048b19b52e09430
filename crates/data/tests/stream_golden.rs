//! The streamed dataset kinds against fixtures written by `scripts/golden/streams.py`: an LMDB
//! written by Python's `lmdb` (WebP, JPEG and PNG values of real photographs) and the pixels
//! Pillow makes of it the way ProgressiveGAN's `create_lsun` did (centre crop to the short side,
//! `resize((64, 64), ANTIALIAS)`), and ProgressiveGAN-layout TFRecords written byte for byte.
//!
//! Tolerances: lossless values (PNG, lossless WebP) decode to the same pixels in both libraries,
//! and our Lanczos does Pillow's fixed-point arithmetic, so they match exactly. Lossy values
//! differ by the decoders alone (libjpeg-turbo vs `zune-jpeg`; libwebp vs `image-webp` agreed
//! exactly on the lossy WebP here, the JPEG differed by a mean of 0.33 and at most 2 levels): we
//! allow a mean absolute difference of 0.5 and a maximum of 3 levels (on 0..255), well below the
//! difference between two resize filters (Pillow's BILINEAR vs LANCZOS on these crops, as the
//! script prints: mean 0.9 to 5.0 levels, maximum 22 to 43).

use std::path::{Path, PathBuf};

use data::folder::{Fit, OnError};
use data::images::{read_npz, NpyData};
use data::{DataError, StreamConfig, StreamDataset};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/streams")
}

fn expected(name: &str) -> (Vec<u8>, Vec<usize>) {
    let arrays = read_npz(&fixtures().join("expected.npz")).unwrap();
    let (_, array) = arrays.into_iter().find(|(n, _)| n == name).unwrap();
    match array.data {
        NpyData::U8(v) => (v, array.shape),
        other => panic!("{name} is not u8: {other:?}"),
    }
}

fn hwc_to_chw(hwc: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0; hwc.len()];
    for (i, &v) in hwc.iter().enumerate() {
        let (y, x, c) = (i / (w * 3), (i / 3) % w, i % 3);
        out[c * h * w + y * w + x] = v;
    }
    out
}

/// Mean and maximum absolute difference.
fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y)).max().unwrap();
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    (sum as f64 / a.len() as f64, max)
}

#[test]
fn lmdb_values_match_pillow_center_crop_and_lanczos() {
    let ds =
        StreamDataset::open_lmdb(&fixtures().join("lmdb"), StreamConfig::new([64, 64])).unwrap();
    let (pixels, shape) = expected("lmdb_pixels");
    assert_eq!(shape, [5, 64, 64, 3]);
    assert_eq!(ds.len(), 5);
    let names: Vec<String> = (0..5).map(|i| ds.record_name(i)).collect();
    assert_eq!(
        names,
        [
            "key 0001-chelsea-webp",
            "key 0002-coffee-jpeg",
            "key 0003-astronaut-png",
            "key 0004-rocket-webp-lossless",
            "key 0005-motorcycle-png"
        ]
    );
    for (i, want) in pixels.chunks(64 * 64 * 3).enumerate() {
        let want = hwc_to_chw(want, 64, 64);
        let got = ds.image(i).unwrap();
        let (mean, max) = diff(&got, &want);
        let lossless = names[i].contains("png") || names[i].contains("lossless");
        if lossless {
            assert_eq!((mean, max), (0.0, 0), "{}", names[i]);
        } else {
            assert!(
                mean <= 0.5 && max <= 3,
                "{}: mean {mean}, max {max}",
                names[i]
            );
        }
        assert_eq!(ds.image(i).unwrap(), got, "reads are repeatable");
    }
}

#[test]
fn a_corrupted_lmdb_value_is_named_by_its_key_or_skipped_and_counted() {
    let dir = fixtures().join("broken_lmdb");
    let ds = StreamDataset::open_lmdb(&dir, StreamConfig::new([16, 16])).unwrap();
    // Keys in byte order: bad-0002, good-0001.
    let err = ds.image(0).unwrap_err();
    assert!(matches!(err, DataError::BadRecord { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: record key bad-0002: unreadable image: ",
            dir.display()
        )),
        "{text}"
    );
    assert_eq!(ds.image(1).unwrap().len(), 3 * 16 * 16);
    let skip = StreamDataset::open_lmdb(
        &dir,
        StreamConfig {
            on_error: OnError::Skip,
            ..StreamConfig::new([16, 16])
        },
    )
    .unwrap();
    let (image, idx) = skip.image_or_next(&[0, 1], 0).unwrap();
    assert_eq!((image, idx), (ds.image(1).unwrap(), 1));
    let (count, messages) = skip.skipped();
    assert_eq!(count, 1);
    assert!(messages[0].contains("key bad-0002"), "{messages:?}");
    // Without skipping, the same read stops with the key.
    let err = ds.image_or_next(&[0, 1], 0).unwrap_err();
    assert!(err.to_string().contains("key bad-0002"), "{err}");
}

#[test]
fn tfrecords_read_to_the_source_pixels_at_the_chosen_resolution() {
    let dir = fixtures().join("tfr");
    let (want, shape) = expected("tfr_pixels");
    assert_eq!(shape, [5, 3, 64, 64]);
    let ds = StreamDataset::open_tfrecord(&dir, StreamConfig::new([64, 64])).unwrap();
    assert_eq!(ds.path(), dir.join("tfr-r06.tfrecords"));
    for (i, want) in want.chunks(3 * 64 * 64).enumerate() {
        assert_eq!(ds.image(i).unwrap(), want, "record {i}");
    }
    let (r05, _) = expected("tfr_r05");
    let small = StreamDataset::open_tfrecord(&dir, StreamConfig::new([32, 32])).unwrap();
    assert_eq!(small.path(), dir.join("tfr-r05.tfrecords"));
    assert_eq!(small.image(4).unwrap(), r05[4 * 3 * 32 * 32..]);
    // Without a file of the size, the largest is read and resized.
    let resized = StreamDataset::open_tfrecord(&dir, StreamConfig::new([48, 48])).unwrap();
    assert_eq!(resized.path(), dir.join("tfr-r06.tfrecords"));
    assert_eq!(resized.image(0).unwrap().len(), 3 * 48 * 48);
}

#[test]
fn a_flipped_tfrecord_byte_fails_its_crc_naming_the_record() {
    let src = fixtures().join("tfr/tfr-r06.tfrecords");
    let bytes = std::fs::read(&src).unwrap();
    let record_len = bytes.len() / 5;
    let tmp = tempfile::tempdir().unwrap();
    // A byte of record 2's pixels.
    let mut data_flip = bytes.clone();
    data_flip[2 * record_len + 5000] ^= 0x10;
    let path = tmp.path().join("data-r06.tfrecords");
    std::fs::write(&path, &data_flip).unwrap();
    let ds = StreamDataset::open_tfrecord(&path, StreamConfig::new([64, 64])).unwrap();
    assert!(ds.image(1).is_ok());
    let err = ds.image(2).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: record 2 (at byte {}): the data fails its CRC32C checksum",
            path.display(),
            2 * record_len
        )
    );
    // A byte of record 3's length fails when the file is opened.
    let mut len_flip = bytes;
    len_flip[3 * record_len + 1] ^= 0x01;
    std::fs::write(&path, &len_flip).unwrap();
    let err = StreamDataset::open_tfrecord(&path, StreamConfig::new([64, 64])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: record 3 (at byte {}): the length fails its CRC32C checksum",
            path.display(),
            3 * record_len
        )
    );
}

#[test]
fn resize_fit_and_gray_work_on_streams() {
    let config = StreamConfig {
        size: [40, 24],
        channels: 1,
        fit: Fit::Resize,
        on_error: OnError::Fail,
    };
    let ds = StreamDataset::open_lmdb(&fixtures().join("lmdb"), config).unwrap();
    assert_eq!(ds.image(2).unwrap().len(), 40 * 24);
}
