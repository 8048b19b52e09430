//! Whole passes over a streamed dataset in record order, decoded in parallel a chunk at a time:
//! statistics (`ddpm data stats`) without holding the images, and the first `n` images as a
//! [`Dataset`] (`ddpm data show`, `ddpm data export`).

use super::StreamDataset;
use crate::dataset::{Dataset, Stats, StatsAccumulator};
use crate::error::{DataError, Result};
use crate::folder::OnError;
use crate::images::{map_parallel, Skipped};

/// Records decoded per parallel chunk, per thread.
const CHUNK_PER_THREAD: usize = 32;

/// Progress of a pass: records done, of how many.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

impl StreamDataset {
    /// Visits the records from the first, decoded in parallel and in order, until `visit`
    /// returns false or the records run out. Unreadable records stop the pass, or under
    /// [`OnError::Skip`] are skipped and returned.
    fn scan(
        &self,
        progress: Progress<'_>,
        mut visit: impl FnMut(usize, Vec<u8>) -> bool,
    ) -> Result<Vec<Skipped>> {
        let n_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = n_threads * CHUNK_PER_THREAD;
        let mut skipped = Vec::new();
        let indices: Vec<usize> = (0..self.len()).collect();
        for part in indices.chunks(chunk) {
            for (&idx, image) in part.iter().zip(map_parallel(part, |&i| self.image(i))) {
                match image {
                    Ok(image) => {
                        if !visit(idx, image) {
                            return Ok(skipped);
                        }
                    }
                    Err(err) if self.config.on_error == OnError::Fail => return Err(err),
                    Err(err) => skipped.push(Skipped {
                        path: self.path().to_path_buf(),
                        reason: match err {
                            DataError::BadRecord { record, reason, .. } => {
                                format!("record {record}: {reason}")
                            }
                            other => other.to_string(),
                        },
                    }),
                }
            }
            progress(part[part.len() - 1] + 1, self.len());
        }
        Ok(skipped)
    }

    /// Count, shape, per-channel mean and standard deviation and label histogram of every
    /// readable record, with the records skipped as unreadable. Memory stays that of one chunk.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] for the first unreadable record under [`OnError::Fail`].
    pub fn stats(&self, progress: Progress<'_>) -> Result<(Stats, Vec<Skipped>)> {
        let [h, w] = self.config.size;
        let mut acc = StatsAccumulator::new(self.config.channels, [h, w], self.class_names.len());
        let skipped = self.scan(progress, |idx, image| {
            acc.add(&image, self.label(idx));
            true
        })?;
        Ok((acc.finish(), skipped))
    }

    /// The first `n` readable records (all of them if fewer), in record order, as an in-memory
    /// dataset, with the records skipped as unreadable.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] for the first unreadable record under [`OnError::Fail`];
    /// [`DataError::Empty`] when no record is readable.
    pub fn read_first(&self, n: usize, progress: Progress<'_>) -> Result<(Dataset, Vec<Skipped>)> {
        let [h, w] = self.config.size;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let skipped = self.scan(progress, |idx, image| {
            images.extend_from_slice(&image);
            labels.push(self.label(idx));
            labels.len() < n
        })?;
        if labels.is_empty() {
            return Err(DataError::Empty {
                path: self.path().to_path_buf(),
                reason: format!("none of the {} records could be read", self.len()),
            });
        }
        let dataset = Dataset::new(
            images,
            labels,
            self.config.channels,
            h,
            w,
            self.class_names.clone(),
        )?;
        Ok((dataset, skipped))
    }
}
