//! One call from a [`Pipeline`] and a request to all of its images as u8 bytes on the host:
//! the batches of [`crate::sample_batches`] (or, across the ranks of a launch,
//! `shard::sample_images` with feature `dist`), collected in order with the
//! reverse-process snapshots of the first [`BatchPlan::n_chains`] images, ready to be written
//! as PNGs, grids, GIFs or an `.npz`.

use crate::{
    to_u8_nchw, BatchPlan, Pipeline, SampleError, SampleOptions, SampledBatch, SamplerConfig,
};

/// What one sampling call draws: the sampler, its options and the batches.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// The sampler and its number of steps.
    pub sampler: SamplerConfig,
    /// Prediction type, clipping, snapshots, autocast and classes ([`Pipeline::options`]).
    pub options: SampleOptions,
    /// How many images, in which batches, from which seed.
    pub plan: BatchPlan,
}

impl SampleRequest {
    /// The number of network evaluations per batch: the sampler's steps for `pipe`'s schedule.
    ///
    /// # Errors
    /// [`SampleError::Config`] when the sampler's steps do not fit the schedule.
    pub fn n_steps(&self, pipe: &Pipeline) -> Result<usize, SampleError> {
        self.sampler.nfe(pipe.schedule.n_steps())
    }
}

/// The images of a request, collected on the process that writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    /// Every image, u8 NCHW, in the order of the request.
    pub images: Vec<u8>,
    /// `[C, H, W]` of one image.
    pub image_shape: [usize; 3],
    /// `frames[k]`: snapshot `k` of the reverse process of the first [`BatchPlan::n_chains`]
    /// images, u8 NCHW (the last is the sample itself).
    pub frames: Vec<Vec<u8>>,
}

impl Samples {
    /// No images yet, each of `[C, H, W]` `image_shape`.
    pub fn new(image_shape: [usize; 3]) -> Self {
        Self {
            images: Vec::new(),
            image_shape,
            frames: Vec::new(),
        }
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// How many images.
    pub fn len(&self) -> usize {
        self.images.len() / self.image_len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// `[N, C, H, W]` for `n` images of this shape.
    pub fn shape_of(&self, n: usize) -> [usize; 4] {
        let [c, h, w] = self.image_shape;
        [n, c, h, w]
    }

    /// Image `i`, u8 CHW.
    ///
    /// # Panics
    /// When `i` is not below [`Samples::len`].
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Appends `batch`: its images, and its snapshots to the frames.
    pub fn push(&mut self, batch: &SampledBatch) {
        self.images.extend(to_u8_nchw(&batch.output.images));
        for (k, (_, xs)) in batch.output.snapshots.iter().enumerate() {
            if self.frames.len() <= k {
                self.frames.push(Vec::new());
            }
            self.frames[k].extend(to_u8_nchw(xs));
        }
    }

    /// Collects `batches` in order; `on_batch(batch_idx, n_images_so_far)` follows each.
    ///
    /// # Errors
    /// The first batch that fails.
    pub fn collect<I, B>(
        image_shape: [usize; 3],
        batches: I,
        mut on_batch: B,
    ) -> Result<Self, SampleError>
    where
        I: IntoIterator<Item = Result<SampledBatch, SampleError>>,
        B: FnMut(usize, usize),
    {
        let mut samples = Self::new(image_shape);
        for batch in batches {
            let batch = batch?;
            samples.push(&batch);
            on_batch(batch.batch_idx, samples.len());
        }
        Ok(samples)
    }
}

/// `[C, H, W]` of a plan as `usize`.
pub(crate) fn plan_shape(plan: &BatchPlan) -> [usize; 3] {
    plan.image_shape.map(|d| d as usize)
}

impl Pipeline {
    /// Every image of `request`, drawn in this process and collected as u8
    /// ([`Pipeline::sample_batches`], then [`Samples::collect`]). `on_step(i, n)` follows each
    /// step of every batch, `on_batch(batch_idx, n_images_so_far)` each batch.
    ///
    /// # Errors
    /// As [`crate::sample_batches`]: an impossible request fails before any batch runs.
    pub fn sample_images<F, B>(
        &self,
        request: &SampleRequest,
        on_step: F,
        on_batch: B,
    ) -> Result<Samples, SampleError>
    where
        F: FnMut(usize, usize),
        B: FnMut(usize, usize),
    {
        let batches = self.sample_batches(
            &request.sampler,
            &request.options,
            request.plan.clone(),
            on_step,
        )?;
        Samples::collect(plan_shape(&request.plan), batches, on_batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SampleOutput;
    use tch::{Kind, Tensor};

    fn batch(batch_idx: usize, value: f64, n: i64, n_snapshots: usize) -> SampledBatch {
        let xs = |v: f64| Tensor::full([n, 1, 2, 2], v, (Kind::Float, tch::Device::Cpu));
        SampledBatch {
            batch_idx,
            first_image: batch_idx * 2,
            output: SampleOutput {
                images: xs(value),
                snapshots: (0..n_snapshots).map(|k| (k, xs(-1.0))).collect(),
            },
        }
    }

    #[test]
    fn batches_are_collected_in_order_with_their_snapshots() {
        let batches = vec![Ok(batch(0, -1.0, 2, 3)), Ok(batch(1, 1.0, 1, 0))];
        let mut seen = Vec::new();
        let samples = Samples::collect([1, 2, 2], batches, |b, n| seen.push((b, n))).unwrap();
        assert_eq!(seen, [(0, 2), (1, 3)]);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples.shape_of(samples.len()), [3, 1, 2, 2]);
        assert_eq!(samples.image(0), [0; 4]);
        assert_eq!(samples.image(2), [255; 4]);
        // Snapshots come from the first batch only: 3 frames of its 2 images.
        assert_eq!(samples.frames.len(), 3);
        assert!(samples.frames.iter().all(|f| f.len() == 8));
    }

    #[test]
    fn a_failed_batch_fails_the_collection() {
        let batches = vec![
            Ok(batch(0, 0.0, 2, 0)),
            Err(SampleError::Config("boom".into())),
        ];
        assert!(Samples::collect([1, 2, 2], batches, |_, _| {}).is_err());
    }
}
