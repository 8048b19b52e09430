//! The loader's tests: determinism, sharding, resumption, prefetch and streamed records.

use super::*;
use crate::Dataset;

/// `n` grayscale 2x3 images; image `i` holds `i` in every pixel, label `i % 10`.
fn numbered(n: usize) -> Dataset {
    let images = (0..n)
        .flat_map(|i| std::iter::repeat_n(i as u8, 6))
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u16).collect();
    let names = (0..10).map(|k| k.to_string()).collect();
    Dataset::new(images, labels, 1, 2, 3, names).unwrap()
}

fn config(batch_size: usize, n_workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        shuffle: true,
        drop_last: true,
        seed: 42,
        n_workers,
        prefetch: 2,
    }
}

/// The dataset index each image of a batch came from (the value of its pixels, unnormalized).
fn members(batch: &Batch) -> Vec<usize> {
    let len = batch.shape[1..].iter().product::<usize>();
    batch
        .images
        .chunks(len)
        .map(|img| img[0] as usize)
        .collect()
}

#[test]
fn an_epoch_visits_every_image_once_in_a_seeded_order_that_changes_per_epoch() {
    let transform = TransformConfig {
        normalize: false,
        ..TransformConfig::plain()
    };
    let loader = Loader::new(numbered(100), &transform, config(10, 0)).unwrap();
    let epoch0: Vec<usize> = loader.epoch(0).flat_map(|b| members(&b)).collect();
    let mut sorted = epoch0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(epoch0, (0..100).collect::<Vec<_>>(), "not shuffled");
    let epoch1: Vec<usize> = loader.epoch(1).flat_map(|b| members(&b)).collect();
    assert_ne!(epoch0, epoch1, "the same order twice");
    let again: Vec<usize> = loader.epoch(0).flat_map(|b| members(&b)).collect();
    assert_eq!(epoch0, again);
    let other_seed = Loader::new(
        numbered(100),
        &transform,
        LoaderConfig {
            seed: 43,
            ..config(10, 0)
        },
    )
    .unwrap();
    assert_ne!(
        epoch0,
        other_seed
            .epoch(0)
            .flat_map(|b| members(&b))
            .collect::<Vec<_>>()
    );
    // Labels travel with their images.
    for batch in loader.epoch(3) {
        let expected: Vec<i64> = members(&batch).iter().map(|&i| (i % 10) as i64).collect();
        assert_eq!(batch.labels, expected);
    }
}

#[test]
fn batches_are_identical_whatever_the_number_of_workers() {
    let dataset = Arc::new(numbered(203));
    let transform = TransformConfig {
        size: Some([3, 5]),
        flip_p: 0.5,
        normalize: true,
    };
    let reference: Vec<Batch> = Loader::new(Arc::clone(&dataset), &transform, config(16, 0))
        .unwrap()
        .epoch(5)
        .collect();
    assert_eq!(reference.len(), 12);
    for n_workers in [1, 3] {
        let loader = Loader::new(Arc::clone(&dataset), &transform, config(16, n_workers)).unwrap();
        let batches: Vec<Batch> = loader.epoch(5).collect();
        assert_eq!(batches, reference, "{n_workers} workers");
    }
}

#[test]
fn sharded_loaders_split_every_global_batch_with_its_flips() {
    // Image `i` holds `5i + x` in column `x`: a flip shows, and `value / 5` names the image.
    let images = (0..50u8)
        .flat_map(|i| [0u8, 1, 2, 0, 1, 2].map(|x| 5 * i + x))
        .collect();
    let dataset = Arc::new(Dataset::new(images, vec![0; 50], 1, 2, 3, vec![]).unwrap());
    let image_of =
        |b: &Batch| -> Vec<usize> { b.images.chunks(6).map(|img| img[0] as usize / 5).collect() };
    let flipped = |b: &Batch| b.images.chunks(6).filter(|img| img[0] > img[2]).count();
    let transform = TransformConfig {
        size: None,
        flip_p: 0.5,
        normalize: false,
    };
    let whole = Loader::new(Arc::clone(&dataset), &transform, config(12, 0)).unwrap();
    for world in [2usize, 3, 4] {
        let ranks: Vec<Loader> = (0..world)
            .map(|r| {
                Loader::new(Arc::clone(&dataset), &transform, config(12, r % 2))
                    .unwrap()
                    .sharded(r, world)
                    .unwrap()
            })
            .collect();
        for loader in &ranks {
            assert_eq!(loader.batches_per_epoch(), 4, "global batches per epoch");
            assert_eq!(loader.batch_shape()[0], 12 / world);
            assert_eq!(loader.position(9), whole.position(9));
        }
        let mut seen = Vec::new();
        let n_flipped: usize = whole.epoch(2).map(|b| flipped(&b)).sum();
        assert!((10..38).contains(&n_flipped), "{n_flipped} of 48 flipped");
        for (index, global) in whole.epoch(2).enumerate() {
            let parts: Vec<Batch> = ranks.iter().map(|l| l.batch(2, index)).collect();
            let images: Vec<f32> = parts.iter().flat_map(|b| b.images.clone()).collect();
            let labels: Vec<i64> = parts.iter().flat_map(|b| b.labels.clone()).collect();
            assert_eq!(images, global.images, "world {world}, batch {index}");
            assert_eq!(labels, global.labels, "world {world}, batch {index}");
            for part in &parts {
                assert_eq!(part.shape[0], 12 / world);
                assert_eq!((part.epoch, part.index), (2, index));
                seen.extend(image_of(part));
            }
        }
        // The ranks' iterators agree with their `batch`, and no image appears twice.
        for (r, loader) in ranks.iter().enumerate() {
            let via_epoch: Vec<Batch> = loader.epoch(2).collect();
            let via_batch: Vec<Batch> = (0..4).map(|i| loader.batch(2, i)).collect();
            assert_eq!(via_epoch, via_batch, "rank {r} of {world}");
        }
        let n_seen = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!((seen.len(), n_seen), (48, 48), "world {world}");
    }
    let bad = Loader::new(Arc::clone(&dataset), &transform, config(12, 0)).unwrap();
    let err = bad.clone().sharded(0, 5).unwrap_err();
    assert!(
        err.to_string().contains("does not split over 5 ranks"),
        "{err}"
    );
    assert!(bad.sharded(2, 2).is_err());
}

#[test]
fn resuming_mid_epoch_gives_the_same_batches() {
    let transform = TransformConfig::ho2020();
    for n_workers in [0, 2] {
        let loader = Loader::new(numbered(50), &transform, config(8, n_workers)).unwrap();
        let full: Vec<Batch> = loader.epoch(2).collect();
        let resumed: Vec<Batch> = loader.epoch_from(2, 4).collect();
        assert_eq!(resumed, full[4..]);
        assert_eq!(loader.batch(2, 5), full[5]);
        assert_eq!(resumed[0].index, 4);
        assert_eq!(loader.epoch_from(2, 6).count(), 0);
    }
    let loader = Loader::new(numbered(50), &transform, config(8, 0)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 6);
    assert_eq!(loader.position(0), (0, 0));
    assert_eq!(loader.position(13), (2, 1));
}

#[test]
fn drop_last_decides_the_short_final_batch() {
    let transform = TransformConfig {
        normalize: false,
        ..TransformConfig::plain()
    };
    let keep = LoaderConfig {
        drop_last: false,
        shuffle: false,
        ..config(8, 2)
    };
    let loader = Loader::new(numbered(20), &transform, keep).unwrap();
    let batches: Vec<Batch> = loader.epoch(0).collect();
    assert_eq!(
        batches.iter().map(|b| b.shape[0]).collect::<Vec<_>>(),
        [8, 8, 4]
    );
    assert_eq!(
        members(&batches[2]),
        [16, 17, 18, 19],
        "unshuffled batches follow file order"
    );
    assert_eq!(batches[2].labels, [6, 7, 8, 9]);
    let drop = Loader::new(numbered(20), &transform, config(8, 2)).unwrap();
    assert_eq!(
        drop.epoch(0).map(|b| b.shape[0]).collect::<Vec<_>>(),
        [8, 8]
    );
    let err = Loader::new(numbered(5), &transform, config(8, 0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the dataset has 5 images, fewer than one batch of 8 with drop_last: lower batch_size or turn drop_last off"
    );
    assert!(Loader::new(
        numbered(5),
        &transform,
        LoaderConfig {
            batch_size: 0,
            ..config(8, 0)
        }
    )
    .is_err());
}

#[test]
fn batches_are_contiguous_nchw_with_flips_near_half_and_seeded() {
    // One 2x3 image whose columns differ, so a flip shows.
    let ds = Dataset::new(
        [10, 20, 30, 40, 50, 60].repeat(1000),
        vec![0; 1000],
        1,
        2,
        3,
        vec![],
    )
    .unwrap();
    let transform = TransformConfig {
        size: None,
        flip_p: 0.5,
        normalize: true,
    };
    let loader = Loader::new(ds, &transform, config(100, 2)).unwrap();
    let plain: Vec<f32> = [10u8, 20, 30, 40, 50, 60]
        .iter()
        .map(|&v| crate::normalize(v))
        .collect();
    let flipped: Vec<f32> = [30u8, 20, 10, 60, 50, 40]
        .iter()
        .map(|&v| crate::normalize(v))
        .collect();
    let mut n_flipped = 0;
    for batch in loader.epoch(0) {
        assert_eq!(batch.shape, [100, 1, 2, 3]);
        assert_eq!(batch.images.len(), 100 * 6);
        for image in batch.images.chunks(6) {
            if image == flipped {
                n_flipped += 1;
            } else {
                assert_eq!(image, plain);
            }
        }
    }
    // Binomial(1000, 0.5): 500 ± 16; 440..560 is beyond 3.7 sigma.
    assert!(
        (440..560).contains(&n_flipped),
        "{n_flipped} of 1000 flipped"
    );
    let again: usize = loader
        .epoch(0)
        .map(|b| b.images.chunks(6).filter(|img| *img == flipped).count())
        .sum();
    assert_eq!(again, n_flipped);
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let loader = Loader::new(
        numbered(100),
        &TransformConfig::plain(),
        LoaderConfig {
            prefetch: 1,
            ..config(2, 3)
        },
    )
    .unwrap();
    let mut batches = loader.epoch(0);
    assert_eq!(batches.len(), 50);
    let first = batches.next().unwrap();
    assert_eq!(batches.next_index(), 1);
    assert_eq!(first, loader.batch(0, 0));
    drop(batches); // must not hang
}

#[test]
fn prefetch_is_bounded() {
    let loader = Loader::new(
        numbered(100),
        &TransformConfig::plain(),
        LoaderConfig {
            prefetch: 3,
            ..config(2, 2)
        },
    )
    .unwrap();
    let batches = loader.epoch(0);
    let shared = &batches.workers.as_ref().unwrap().shared;
    // Nobody consumes: the workers fill the window of 3 batches and must stop there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let state = shared.lock();
        assert!(
            state.next_claim <= 3,
            "workers claimed {} batches with a prefetch of 3",
            state.next_claim
        );
        if state.ready.len() == 3 {
            break;
        }
        drop(state);
        assert!(
            std::time::Instant::now() < deadline,
            "workers never filled the prefetch window"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(shared.lock().next_claim, 3);
}
