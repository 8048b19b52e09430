//! Batches for training: a seeded per-epoch shuffle of images, the [`Transform`] on each image,
//! contiguous f32 NCHW batches with i64 labels, made ahead by background threads.
//!
//! The notebook batched first and shuffled whole batches (`data.batch(128).shuffle(10000)`), so
//! the same 128 images always met in one batch; here images are shuffled, every epoch anew.
//!
//! Every batch is a pure function of (seed, epoch, batch index): the permutation comes from a
//! generator seeded by (seed, epoch) and each batch's flips from one seeded by (seed, epoch,
//! index). So the batches do not depend on the number of worker threads, and training resumed at
//! step `s` sees exactly the batches it would have seen ([`Loader::position`],
//! [`Loader::epoch_from`]).
//!
//! # Sharding for data-parallel training
//!
//! [`Loader::sharded`] makes rank `r` of `W` ranks see slice `r` of every batch: the batch size
//! stays the *global* batch, the permutation and the flips are those of the unsharded loader,
//! and rank `r` keeps images `[r·n/W, (r+1)·n/W)` of each batch of `n`. So the ranks together
//! see every image once per epoch, in the same global batches whatever the world size, and one
//! rank with batch `B` sees exactly the images that `W` ranks see with `B / W` each.
//!
//! # Streamed datasets
//!
//! A [`Source::Stream`] (LMDB, TFRecords) is read, decoded, cropped and resized in the worker
//! threads, batch by batch: only the index and at most `prefetch` batches are in memory. The
//! permutation is the same function of (seed, epoch) over the record index. An unreadable
//! record ends the epoch with [`DataError::BadRecord`] naming it ([`Batches::next_batch`]; the
//! plain iterator panics with that message), unless the dataset skips unreadable records, which
//! puts the next readable record of the epoch's order in its place (see
//! [`StreamDataset::image_or_next`](crate::StreamDataset::image_or_next)).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::stream::Source;
use crate::transform::{Transform, TransformConfig};

/// How to cut a dataset into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the images every epoch; when false, batches follow file order.
    pub shuffle: bool,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seeds the shuffle and the flips.
    pub seed: u64,
    /// Background threads that make batches; 0 makes them on the calling thread when asked.
    /// Batches are the same whatever the number.
    pub n_workers: usize,
    /// The most batches made ahead of the consumer, ready or in progress (at least `n_workers`
    /// and at least 1 are used).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// The seed notebook's loader: batches of 128 (`BATCH_SIZE = 128`), incomplete last batch
    /// dropped (`drop_remainder=True`), shuffled; two workers and four batches of prefetch.
    pub fn seed_cifar10(seed: u64) -> Self {
        Self {
            batch_size: 128,
            shuffle: true,
            drop_last: true,
            seed,
            n_workers: 2,
            prefetch: 4,
        }
    }
}

/// One batch: `shape = [N, C, H, W]`, `images` NCHW contiguous (`N * C * H * W` values), one label
/// per image.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Pixels, NCHW, on [-1, 1] when the transform normalizes.
    pub images: Vec<f32>,
    /// Class labels (i64, as class-index tensors want them).
    pub labels: Vec<i64>,
    /// `[N, C, H, W]`; N is below the batch size only for an epoch's last batch without drop-last.
    pub shape: [usize; 4],
    /// The epoch this batch belongs to.
    pub epoch: u64,
    /// The batch's index within its epoch.
    pub index: usize,
}

/// Makes batches of a dataset; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Source,
    transform: Arc<Transform>,
    config: LoaderConfig,
    shard: Shard,
}

/// Which slice of every batch a loader yields: rank `rank` of `world_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank, in `0..world_size`.
    pub rank: usize,
    /// The number of ranks that share each batch.
    pub world_size: usize,
}

impl Shard {
    /// The whole batch: one rank of one.
    pub const WHOLE: Shard = Shard {
        rank: 0,
        world_size: 1,
    };

    /// The positions `[start, end)` this rank keeps of a batch of `n` images.
    pub fn range(self, n: usize) -> std::ops::Range<usize> {
        (self.rank * n / self.world_size)..((self.rank + 1) * n / self.world_size)
    }
}

impl Loader {
    /// A loader over `dataset`: a [`Dataset`](crate::Dataset) or an `Arc` of one (shared
    /// without copying), or a [`StreamDataset`](crate::StreamDataset) read on demand.
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when `batch_size` is 0, when the dataset is empty or, with drop-last,
    /// smaller than one batch (an epoch would have no batches), or when the transform is invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// use data::{Dataset, Loader, LoaderConfig, TransformConfig};
    /// let ds = Dataset::new(vec![0; 10 * 4], vec![0; 10], 1, 2, 2, vec![])?;
    /// let config = LoaderConfig { batch_size: 4, shuffle: true, drop_last: true, seed: 7, n_workers: 1, prefetch: 2 };
    /// let loader = Loader::new(ds, &TransformConfig::plain(), config)?;
    /// assert_eq!(loader.batches_per_epoch(), 2);
    /// let shapes: Vec<[usize; 4]> = loader.epoch(0).map(|b| b.shape).collect();
    /// assert_eq!(shapes, [[4, 1, 2, 2], [4, 1, 2, 2]]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(
        dataset: impl Into<Source>,
        transform: &TransformConfig,
        config: LoaderConfig,
    ) -> Result<Self> {
        let dataset = dataset.into();
        if config.batch_size == 0 {
            return Err(DataError::Config("batch_size must be at least 1".into()));
        }
        if dataset.is_empty() {
            return Err(DataError::Config("the dataset has no images".into()));
        }
        if config.drop_last && dataset.len() < config.batch_size {
            return Err(DataError::Config(format!(
                "the dataset has {} images, fewer than one batch of {} with drop_last: lower batch_size or turn drop_last off",
                dataset.len(),
                config.batch_size
            )));
        }
        if u32::try_from(dataset.len()).is_err() {
            return Err(DataError::Config(format!(
                "{} images are more than the loader indexes",
                dataset.len()
            )));
        }
        let [channels, height, width] = dataset.image_shape();
        let transform = Transform::new(transform, channels, [height, width])?;
        Ok(Self {
            dataset,
            transform: Arc::new(transform),
            config,
            shard: Shard::WHOLE,
        })
    }

    /// This loader for rank `rank` of `world_size` data-parallel ranks: every batch keeps its
    /// global size in [`LoaderConfig::batch_size`], [`Loader::batches_per_epoch`] and
    /// [`Loader::position`], and yields only this rank's slice of `batch_size / world_size`
    /// images (see the [module docs](self#sharding-for-data-parallel-training)).
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when `rank >= world_size` or `world_size` does not divide the batch
    /// size.
    ///
    /// # Examples
    ///
    /// ```
    /// use data::{Dataset, Loader, LoaderConfig, TransformConfig};
    /// let ds = Dataset::new((0..8).collect(), vec![0; 8], 1, 1, 1, vec![])?;
    /// let config = LoaderConfig { batch_size: 4, n_workers: 0, ..LoaderConfig::seed_cifar10(3) };
    /// let whole = Loader::new(ds, &TransformConfig::plain(), config)?;
    /// let (rank0, rank1) = (whole.clone().sharded(0, 2)?, whole.clone().sharded(1, 2)?);
    /// let (b, b0, b1) = (whole.batch(1, 0), rank0.batch(1, 0), rank1.batch(1, 0));
    /// assert_eq!((b0.shape[0], rank0.batches_per_epoch()), (2, 2));
    /// assert_eq!([b0.labels, b1.labels].concat(), b.labels);
    /// assert_eq!([b0.images, b1.images].concat(), b.images);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn sharded(mut self, rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(DataError::Config(format!(
                "rank {rank} is outside a world of {world_size}"
            )));
        }
        if !self.config.batch_size.is_multiple_of(world_size) {
            return Err(DataError::Config(format!(
                "the batch of {} images does not split over {world_size} ranks: pick a batch size divisible by {world_size}",
                self.config.batch_size
            )));
        }
        self.shard = Shard { rank, world_size };
        Ok(self)
    }

    /// The slice of every batch this loader yields ([`Shard::WHOLE`] unless [`Loader::sharded`]).
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The dataset.
    pub fn dataset(&self) -> &Source {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The transform, bound to the dataset's shape.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Batches in one epoch: `len / batch_size`, rounded down with drop-last, up without.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// `[batch_size, C, H, W]` of a full batch, as this loader yields it (this rank's slice
    /// when [sharded](Loader::sharded)).
    pub fn batch_shape(&self) -> [usize; 4] {
        let [c, h, w] = self.transform.out_shape();
        [self.config.batch_size / self.shard.world_size, c, h, w]
    }

    /// Where global step `step` (0-based, one batch per step, epochs back to back) falls:
    /// `(epoch, batch index)`. Resume training at step `s` with `epoch_from(position(s))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use data::{Dataset, Loader, LoaderConfig, TransformConfig};
    /// let ds = Dataset::new(vec![0; 10], vec![0; 10], 1, 1, 1, vec![])?;
    /// let config = LoaderConfig { batch_size: 4, n_workers: 0, ..LoaderConfig::seed_cifar10(0) };
    /// let loader = Loader::new(ds, &TransformConfig::plain(), config)?; // 2 batches per epoch
    /// assert_eq!(loader.position(5), (2, 1));
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn position(&self, step: u64) -> (u64, usize) {
        let per_epoch = self.batches_per_epoch() as u64;
        (step / per_epoch, (step % per_epoch) as usize)
    }

    /// The order in which epoch `epoch` visits the images: a seeded permutation of `0..len` with
    /// shuffling, `0..len` without.
    ///
    /// # Examples
    ///
    /// ```
    /// use data::{Dataset, Loader, LoaderConfig, TransformConfig};
    /// let ds = Dataset::new(vec![0; 6], vec![0; 6], 1, 1, 1, vec![])?;
    /// let loader = Loader::new(ds, &TransformConfig::plain(), LoaderConfig { batch_size: 2, ..LoaderConfig::seed_cifar10(1) })?;
    /// let mut order = loader.order(0);
    /// assert_eq!(order, loader.order(0)); // seeded
    /// order.sort();
    /// assert_eq!(order, [0, 1, 2, 3, 4, 5]); // a permutation
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.dataset.len() as u32).collect();
        if self.config.shuffle {
            let mut rng =
                ChaCha8Rng::seed_from_u64(derive_seed(self.config.seed, STREAM_ORDER, epoch, 0));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Batch `index` of epoch `epoch`, made on the calling thread.
    ///
    /// # Panics
    ///
    /// When `index >= batches_per_epoch()`, or a streamed record is unreadable (see
    /// [`Loader::try_batch`]).
    pub fn batch(&self, epoch: u64, index: usize) -> Batch {
        self.try_batch(epoch, index)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Batch `index` of epoch `epoch`, made on the calling thread.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] naming a streamed record that cannot be read.
    ///
    /// # Panics
    ///
    /// When `index >= batches_per_epoch()`.
    pub fn try_batch(&self, epoch: u64, index: usize) -> Result<Batch> {
        assert!(
            index < self.batches_per_epoch(),
            "batch {index} of {}",
            self.batches_per_epoch()
        );
        make_batch(&self.plan(epoch), index, &mut Vec::new())
    }

    /// All batches of epoch `epoch`, in order; see [`Loader::epoch_from`].
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `start` on (to resume mid-epoch), made ahead by
    /// `n_workers` background threads. Dropping the iterator stops the threads.
    ///
    /// # Panics
    ///
    /// When `start > batches_per_epoch()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use data::{Dataset, Loader, LoaderConfig, TransformConfig};
    /// let ds = Dataset::new((0..12).collect(), vec![0; 12], 1, 1, 1, vec![])?;
    /// let loader = Loader::new(ds, &TransformConfig::plain(), LoaderConfig { batch_size: 3, ..LoaderConfig::seed_cifar10(5) })?;
    /// let whole: Vec<_> = loader.epoch(4).collect();
    /// let resumed: Vec<_> = loader.epoch_from(4, 2).collect();
    /// assert_eq!(resumed, whole[2..]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Batches {
        let end = self.batches_per_epoch();
        assert!(
            start <= end,
            "start batch {start} is past the epoch's {end} batches"
        );
        let plan = Arc::new(self.plan(epoch));
        let capacity = self.config.prefetch.max(self.config.n_workers).max(1);
        if self.config.n_workers == 0 {
            return Batches {
                plan,
                next: start,
                end,
                workers: None,
                scratch: Vec::new(),
            };
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: start,
                next_yield: start,
                ready: BTreeMap::new(),
                stop: false,
                panicked: false,
            }),
            batch_ready: Condvar::new(),
            space_free: Condvar::new(),
        });
        let handles = (0..self.config.n_workers)
            .map(|worker_idx| {
                let (plan, shared) = (Arc::clone(&plan), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("data-worker-{worker_idx}"))
                    .spawn(move || worker(&plan, &shared, end, capacity))
                    .expect("cannot spawn a data loader thread")
            })
            .collect();
        Batches {
            plan,
            next: start,
            end,
            workers: Some(Workers { shared, handles }),
            scratch: Vec::new(),
        }
    }

    fn plan(&self, epoch: u64) -> EpochPlan {
        EpochPlan {
            dataset: self.dataset.clone(),
            transform: Arc::clone(&self.transform),
            order: self.order(epoch),
            batch_size: self.config.batch_size,
            seed: self.config.seed,
            epoch,
            shard: self.shard,
        }
    }
}

/// Separate random streams for the permutation and for the flips.
const STREAM_ORDER: u64 = 0x006f_7264_6572; // "order"
const STREAM_FLIP: u64 = 0x0000_666c_6970; // "flip"

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A generator seed for one (seed, stream, epoch, batch) so that no two share a stream.
fn derive_seed(seed: u64, stream: u64, epoch: u64, index: u64) -> u64 {
    let mut h = mix64(seed ^ 0x9e37_79b9_7f4a_7c15);
    for word in [stream, epoch, index] {
        h = mix64(h ^ word.wrapping_add(0x9e37_79b9_7f4a_7c15));
    }
    h
}

/// Everything a worker needs to make any batch of one epoch.
#[derive(Debug)]
struct EpochPlan {
    dataset: Source,
    transform: Arc<Transform>,
    order: Vec<u32>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shard: Shard,
}

fn make_batch(plan: &EpochPlan, index: usize, scratch: &mut Vec<f32>) -> Result<Batch> {
    let start = index * plan.batch_size;
    let end = (start + plan.batch_size).min(plan.order.len());
    let members = &plan.order[start..end];
    let keep = plan.shard.range(members.len());
    let out_len = plan.transform.out_len();
    let mut images = vec![0.0f32; keep.len() * out_len];
    let mut labels = Vec::with_capacity(keep.len());
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(
        plan.seed,
        STREAM_FLIP,
        plan.epoch,
        index as u64,
    ));
    // The draws of the images before this rank's slice, so that each image's flip is the one the
    // unsharded batch gives it.
    for _ in 0..keep.start {
        rng.gen::<f64>();
    }
    let mut decoded = Vec::new();
    for (pos, dst) in (start + keep.start..start + keep.end).zip(images.chunks_exact_mut(out_len)) {
        // Draw for every image, flipping or not, so each image's draw depends only on its position.
        let flip = plan.transform.flips(rng.gen::<f64>());
        let (image, label) = plan.dataset.image_at(&plan.order, pos, &mut decoded)?;
        plan.transform.apply_into(image, flip, dst, scratch);
        labels.push(i64::from(label));
    }
    let [c, h, w] = plan.transform.out_shape();
    Ok(Batch {
        images,
        labels,
        shape: [keep.len(), c, h, w],
        epoch: plan.epoch,
        index,
    })
}

/// State shared by the consumer and the workers of one epoch.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a batch lands in `ready` or a worker dies.
    batch_ready: Condvar,
    /// Signalled when the consumer takes a batch (room for one more) or asks the workers to stop.
    space_free: Condvar,
}

struct State {
    /// The next batch index a worker will make.
    next_claim: usize,
    /// The next batch index the consumer will take.
    next_yield: usize,
    /// Finished batches not yet taken, by index (they finish out of order), or the error that
    /// stopped one.
    ready: BTreeMap<usize, Result<Batch>>,
    stop: bool,
    panicked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, so a poisoned lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reports a worker's panic to the consumer instead of leaving it waiting forever.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().panicked = true;
            self.0.batch_ready.notify_all();
        }
    }
}

fn worker(plan: &EpochPlan, shared: &Shared, end: usize, capacity: usize) {
    let _guard = PanicGuard(shared);
    let mut scratch = Vec::new();
    loop {
        let index = {
            let mut state = shared.lock();
            loop {
                if state.stop || state.next_claim >= end {
                    return;
                }
                // Bounded prefetch: at most `capacity` batches claimed but not yet taken.
                if state.next_claim < state.next_yield + capacity {
                    break;
                }
                state = shared
                    .space_free
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.next_claim += 1;
            state.next_claim - 1
        };
        let batch = make_batch(plan, index, &mut scratch);
        shared.lock().ready.insert(index, batch);
        shared.batch_ready.notify_all();
    }
}

struct Workers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// The batches of one epoch, in order; made by [`Loader::epoch`] and [`Loader::epoch_from`].
pub struct Batches {
    plan: Arc<EpochPlan>,
    next: usize,
    end: usize,
    workers: Option<Workers>,
    scratch: Vec<f32>,
}

impl Batches {
    /// The index of the batch that `next()` returns.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// The next batch, or the error that made it impossible: a streamed record that cannot be
    /// read, named ([`DataError::BadRecord`]). After an error the epoch goes on with the next
    /// batch if asked.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] naming the unreadable record.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let Some(workers) = &self.workers else {
            return Some(make_batch(&self.plan, index, &mut self.scratch));
        };
        let shared = &workers.shared;
        let mut state = shared.lock();
        loop {
            if let Some(batch) = state.ready.remove(&index) {
                state.next_yield = index + 1;
                drop(state);
                shared.space_free.notify_all();
                return Some(batch);
            }
            if state.panicked {
                panic!("a data loader worker thread panicked");
            }
            state = shared
                .batch_ready
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("epoch", &self.plan.epoch)
            .field("next", &self.next)
            .field("end", &self.end)
            .field(
                "n_workers",
                &self.workers.as_ref().map_or(0, |w| w.handles.len()),
            )
            .finish()
    }
}

impl Iterator for Batches {
    type Item = Batch;

    /// # Panics
    ///
    /// With the message of [`Batches::next_batch`]'s error, for a streamed record that cannot be
    /// read.
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
            .map(|batch| batch.unwrap_or_else(|err| panic!("{err}")))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shared.lock().stop = true;
            workers.shared.space_free.notify_all();
            for handle in workers.handles {
                // A worker's panic was already reported through `next`; nothing more to do here.
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
