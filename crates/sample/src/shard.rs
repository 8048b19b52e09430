//! Sampling across the ranks of a launch (torchrun, or `ddpm … --nproc-per-node N`), feature
//! `dist`: rank r draws batches r, r + W, r + 2W, … of the request, each seeded exactly as one
//! process seeds it ([`crate::batch_seed`]), so the images are those of a run in one process, bit
//! for bit. The ranks go in rounds: each draws its next few batches (four), then every batch of the
//! round goes to rank 0 (one broadcast from each batch's owner), which puts them in order. So a
//! rank that dies is noticed at the end of the round, within a few batches, not after the others
//! have drawn their whole share. The batches that keep reverse-process snapshots (strips, GIFs) are
//! rank 0's, so snapshots never travel. Class labels are one per image of the request
//! ([`SampleOptions::for_images`]), so guided samples shard the same way.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};
use torch_ext::dist::Distributed;

use crate::collect::plan_shape;
use crate::{
    batch_seed, BatchPlan, Pipeline, SampleError, SampleOptions, SampleOutput, SampleRequest,
    SampledBatch, SamplerConfig, Samples,
};

/// How many of its batches each rank draws in a round before the round's batches go to rank 0:
/// a dead rank is noticed within this many batches. Each round waits for the slower rank. With
/// 8-image batches on two CPU ranks, one batch a round took a median 1.04× the time of drawing
/// every batch first (7 alternated runs); four took 0.98× (5 runs), within the noise.
const ROUND_BATCHES: usize = 4;

/// The rank that draws batch `b` of `plan` among `world_size`.
fn owner(plan: &BatchPlan, b: usize, world_size: usize) -> usize {
    if b * plan.batch_size < plan.n_chains {
        0
    } else {
        b % world_size
    }
}

/// How many batches of `plan` rank `rank` of `world_size` draws (for a progress bar).
pub fn own_batches(plan: &BatchPlan, rank: usize, world_size: usize) -> usize {
    (0..plan.n_batches())
        .filter(|&b| owner(plan, b, world_size) == rank)
        .count()
}

/// The batches of `plan` drawn across the ranks of `dist`: rank 0 gets all of them, in order
/// (as [`Pipeline::sample_batches`] yields them, snapshots included); the other ranks get none.
/// `on_step` counts this rank's own steps. Every rank calls it with the same request.
///
/// # Errors
/// A sampling error, or [`SampleError::Dist`] when a rank fails or does not answer within the
/// group's timeout.
pub fn sample_sharded<F: FnMut(usize, usize)>(
    pipe: &Pipeline,
    sampler: &SamplerConfig,
    options: &SampleOptions,
    plan: &BatchPlan,
    dist: &Distributed,
    mut on_step: F,
) -> Result<Vec<SampledBatch>, SampleError> {
    let (rank, world) = (dist.rank(), dist.world_size());
    let n_batches = plan.n_batches();
    let first = |b: usize| b * plan.batch_size;
    let rows = |b: usize| plan.batch_size.min(plan.n_images - first(b));
    // Each rank's batches, in order, in runs of ROUND_BATCHES: round k is every rank's k-th run.
    let queues: Vec<Vec<usize>> = (0..world)
        .map(|r| {
            (0..n_batches)
                .filter(|&b| owner(plan, b, world) == r)
                .collect()
        })
        .collect();
    let runs: Vec<Vec<&[usize]>> = queues
        .iter()
        .map(|q| q.chunks(ROUND_BATCHES).collect())
        .collect();
    let n_rounds = runs.iter().map(Vec::len).max().unwrap_or(0);
    let [c, h, w] = plan.image_shape;
    let mut gathered = BTreeMap::new();
    for k in 0..n_rounds {
        let mut mine = BTreeMap::new();
        for &b in runs[rank].get(k).copied().unwrap_or_default() {
            let batch = draw_batch(pipe, sampler, options, plan, b, rows(b), &mut on_step)?;
            mine.insert(b, batch);
        }
        let mut round: Vec<usize> = runs
            .iter()
            .filter_map(|r| r.get(k))
            .flat_map(|run| run.iter().copied())
            .collect();
        round.sort_unstable();
        for b in round {
            let from = owner(plan, b, world);
            let own = mine.remove(&b);
            let mut images = vec![match &own {
                Some(batch) => batch.output.images.shallow_clone(),
                None => Tensor::zeros([rows(b) as i64, c, h, w], (Kind::Float, pipe.device())),
            }];
            // Named from this rank's side, so that the rank at fault is the other one.
            let op = if from == rank {
                format!("sending batch {b} of the samples to the other ranks")
            } else {
                format!("receiving batch {b} of the samples from rank {from}")
            };
            dist.broadcast_from(&mut images, from, &op)?;
            if rank == 0 {
                let batch = own.unwrap_or_else(|| SampledBatch {
                    batch_idx: b,
                    first_image: first(b),
                    output: SampleOutput {
                        images: images.pop().expect("one tensor"),
                        snapshots: Vec::new(),
                    },
                });
                gathered.insert(b, batch);
            }
        }
    }
    Ok(gathered.into_values().collect())
}

/// Batch `b` of `plan` (`rows` images), drawn as one process draws it: batch 0 of a request
/// seeded with its seed, with the classes of its own images.
fn draw_batch<F: FnMut(usize, usize)>(
    pipe: &Pipeline,
    sampler: &SamplerConfig,
    options: &SampleOptions,
    plan: &BatchPlan,
    b: usize,
    rows: usize,
    on_step: &mut F,
) -> Result<SampledBatch, SampleError> {
    let first = b * plan.batch_size;
    let one = BatchPlan {
        n_images: rows,
        batch_size: plan.batch_size,
        image_shape: plan.image_shape,
        seed: batch_seed(plan.seed, b),
        n_chains: plan.n_chains.saturating_sub(first),
    };
    let batch = pipe
        .sample_batches(sampler, &options.for_images(first, rows), one, on_step)?
        .next()
        .expect("a request of one batch")?;
    Ok(SampledBatch {
        batch_idx: b,
        first_image: first,
        output: batch.output,
    })
}

/// Every image of `request`, collected on rank 0 ([`Samples`]): drawn across the ranks of
/// `dist` ([`sample_sharded`]), or in this process when `dist` is `None`
/// ([`Pipeline::sample_images`]). The other ranks draw their share and get `None`. Every rank
/// calls it with the same request. `on_step(i, n)` follows each of this rank's steps,
/// `on_batch(batch_idx, n_images_so_far)` each batch collected.
///
/// # Errors
/// As [`sample_sharded`] and [`Pipeline::sample_images`].
pub fn sample_images<F, B>(
    pipe: &Pipeline,
    request: &SampleRequest,
    dist: Option<&Distributed>,
    on_step: F,
    on_batch: B,
) -> Result<Option<Samples>, SampleError>
where
    F: FnMut(usize, usize),
    B: FnMut(usize, usize),
{
    let Some(dist) = dist else {
        return pipe.sample_images(request, on_step, on_batch).map(Some);
    };
    let SampleRequest {
        sampler,
        options,
        plan,
    } = request;
    let batches = sample_sharded(pipe, sampler, options, plan, dist, on_step)?;
    if !dist.is_main() {
        return Ok(None);
    }
    let batches = batches.into_iter().map(Ok);
    Samples::collect(plan_shape(plan), batches, on_batch).map(Some)
}
