//! `ddpm data show` and `ddpm data stats` on the real 20-record CIFAR-10 file and on synthesized
//! IDX files and image folders.

use std::path::{Path, PathBuf};

use e2e::{path_arg, run, shared_dir, stderr_of, stdout_of};

fn first20() -> PathBuf {
    shared_dir().join("data/cifar10/test_batch_first20.bin")
}

fn stats_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["data", "stats", "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(out.status.success(), "stats failed: {}", stderr_of(&out));
    serde_json::from_str(&stdout_of(&out)).expect("stats --json prints JSON")
}

#[test]
fn show_writes_a_grid_of_the_real_cifar_images_in_file_order_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("grid.png");
    let data = first20();
    let out = run(&[
        "data",
        "show",
        "--dataset",
        "cifar10",
        "--path",
        path_arg(&data),
        "--n",
        "10",
        "--nrow",
        "5",
        "--out",
        path_arg(&out_png),
    ]);
    assert!(out.status.success(), "show failed: {}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("10 images of 3x32x32"),
        "{}",
        stdout_of(&out)
    );
    let grid = image::open(&out_png).expect("show writes a PNG").to_rgb8();
    // 32-pixel images scale 2x; tiles are 64 + 2 padding wide and 64 + 16 caption + 2 high.
    assert_eq!((grid.width(), grid.height()), (5 * 66 + 2, 2 * 82 + 2));
    let records = std::fs::read(&data).unwrap();
    let first_pixel = |idx: usize| {
        let r = &records[idx * 3073 + 1..];
        [r[0], r[1024], r[2048]]
    };
    // Image 0 at the top left, image 7 in row 1, column 2: file order, row by row.
    assert_eq!(grid.get_pixel(2, 2).0, first_pixel(0));
    assert_eq!(
        grid.get_pixel(3, 3).0,
        first_pixel(0),
        "2x nearest-neighbour scaling"
    );
    assert_eq!(grid.get_pixel(2 + 2 * 66, 2 + 82).0, first_pixel(7));
    // The caption band under each tile has dark text on the white background.
    for tile in 0..10u32 {
        let (x0, y0) = (2 + (tile % 5) * 66, 2 + (tile / 5) * 82 + 64);
        let dark = (x0..x0 + 64)
            .flat_map(|x| (y0..y0 + 16).map(move |y| (x, y)))
            .any(|(x, y)| {
                let p = grid.get_pixel(x, y).0;
                p.iter().all(|&v| v < 100)
            });
        assert!(dark, "no label drawn under tile {tile}");
    }
}

#[test]
fn stats_of_the_real_cifar_file_match_numpy() {
    let data = first20();
    let info = stats_json(&["--dataset", "cifar10", "--path", path_arg(&data)]);
    assert_eq!(info["count"], 20);
    assert_eq!(info["shape"], serde_json::json!([3, 32, 32]));
    // numpy: x.mean(axis=(0, 2, 3)) and x.std(axis=(0, 2, 3)) over the 20 images.
    let expected_mean = [124.88271484375, 120.96220703125, 114.8708007812];
    let expected_std = [63.57197273, 63.08595743, 66.88667908];
    for c in 0..3 {
        let mean = info["mean"][c].as_f64().unwrap();
        let std = info["std"][c].as_f64().unwrap();
        assert!((mean - expected_mean[c]).abs() < 1e-6, "mean {c}: {mean}");
        assert!((std - expected_std[c]).abs() < 1e-6, "std {c}: {std}");
    }
    let counts: Vec<u64> = info["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [2, 2, 0, 2, 0, 2, 4, 2, 4, 2]);
    assert_eq!(info["labels"][3]["name"], "cat");

    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "cifar10",
        "--path",
        path_arg(&data),
    ]);
    assert!(out.status.success());
    let text = stdout_of(&out);
    assert!(text.contains("count    20"), "{text}");
    assert!(text.contains("124.883 120.962 114.871"), "{text}");
}

/// An unsigned-byte IDX file.
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn stats_and_show_read_a_raw_idx_folder() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<u8> = (0..4 * 28 * 28)
        .map(|i| if i < 2 * 784 { 0 } else { 255 })
        .collect();
    write_idx(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &[4, 28, 28],
        &images,
    );
    write_idx(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &[4],
        &[9, 9, 0, 3],
    );
    let info = stats_json(&[
        "--dataset",
        "fashion-mnist",
        "--path",
        path_arg(dir.path()),
        "--split",
        "test",
    ]);
    assert_eq!(info["count"], 4);
    assert_eq!(info["shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(info["mean"][0], 127.5);
    assert_eq!(info["std"][0], 127.5);
    assert_eq!(info["labels"][9]["name"], "Ankle boot");
    assert_eq!(info["labels"][9]["count"], 2);
    // The train files are absent: the default split names the first missing one.
    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "mnist",
        "--path",
        path_arg(dir.path()),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("train-images-idx3-ubyte.gz"),
        "{}",
        stderr_of(&out)
    );

    let out_png = dir.path().join("mnist.png");
    let out = run(&[
        "data",
        "show",
        "--dataset",
        "mnist",
        "--path",
        path_arg(dir.path()),
        "--split",
        "test",
        "--out",
        path_arg(&out_png),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let grid = image::open(&out_png).unwrap().to_rgb8();
    // 28-pixel images scale 3x to 84; four images in one row.
    assert_eq!((grid.width(), grid.height()), (4 * 86 + 2, 84 + 16 + 2 + 2));
    assert_eq!(grid.get_pixel(2 + 2 * 86 + 40, 40).0, [255, 255, 255]);
    assert_eq!(grid.get_pixel(2 + 40, 40).0, [0, 0, 0]);
}

#[test]
fn bad_files_fail_with_the_file_and_offset_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.bin");
    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "cifar10",
        "--path",
        path_arg(&missing),
    ]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("cannot find {}", missing.display())),
        "{stderr}"
    );

    let truncated = dir.path().join("cut.bin");
    std::fs::write(
        &truncated,
        &std::fs::read(first20()).unwrap()[..2 * 3073 + 10],
    )
    .unwrap();
    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "cifar10",
        "--path",
        path_arg(&truncated),
    ]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&truncated.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("the record at byte 6146 has only 10 bytes"),
        "{stderr}"
    );

    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "cifar10",
        "--path",
        path_arg(&first20()),
        "--split",
        "test",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("is a single file"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn folder_unreadable_images_are_fatal_unless_skipped_and_always_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    for (class, name, rgb) in [
        ("cat", "a.png", [10, 20, 30]),
        ("dog", "b.bmp", [10, 20, 30]),
    ] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        image::RgbImage::from_pixel(40, 24, image::Rgb(rgb))
            .save(root.join(class).join(name))
            .unwrap();
    }
    let broken = root.join("dog/broken.jpg");
    std::fs::write(&broken, b"not a jpeg").unwrap();
    let args = [
        "data",
        "stats",
        "--json",
        "--dataset",
        "folder",
        "--path",
        path_arg(&root),
        "--size",
        "16",
    ];

    let out = run(&args);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("{}: unreadable image", broken.display())),
        "{stderr}"
    );

    let mut skipping = args.to_vec();
    skipping.push("--skip-unreadable");
    let out = run(&skipping);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("warning: skipped {}", broken.display())),
        "{}",
        stderr_of(&out)
    );
    let info: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(info["count"], 2);
    assert_eq!(info["shape"], serde_json::json!([3, 16, 16]));
    // Uniform images stay uniform through the centre crop and resize.
    assert_eq!(info["mean"], serde_json::json!([10.0, 20.0, 30.0]));
    assert_eq!(info["labels"][0]["name"], "cat");
    assert_eq!(
        info["skipped"],
        serde_json::json!([broken.display().to_string()])
    );
}

#[test]
fn an_idx_file_of_another_rank_is_refused_by_its_magic() {
    let dir = tempfile::tempdir().unwrap();
    // Magic 00 00 08 07 and seven dimensions whose product disagrees with the data.
    write_idx(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &[2, 3, 4, 5, 6, 7, 8],
        &[0; 10],
    );
    write_idx(&dir.path().join("t10k-labels-idx1-ubyte"), &[2], &[0, 1]);
    let out = run(&[
        "data",
        "stats",
        "--dataset",
        "fashion-mnist",
        "--path",
        path_arg(dir.path()),
        "--split",
        "test",
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("t10k-images-idx3-ubyte")
            && stderr.contains("00 00 08 07")
            && stderr.contains("rank 7 is not supported")
            && !stderr.contains("data bytes"),
        "{stderr}"
    );
}
