//! An in-memory image dataset: u8 pixels in NCHW order, one class label per image, and the
//! statistics that `ddpm data stats` prints.
//!
//! Pixels stay u8 until a batch is made (CIFAR-10 train+test is 184 MB as u8, 737 MB as f32).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Images of one shape with their labels, kept as u8 in memory.
///
/// Image `i` occupies `images()[i * C * H * W..(i + 1) * C * H * W]`, channel-major (CHW): all of
/// channel 0 row by row, then channel 1, and so on. Labels index `class_names()`; a dataset without
/// classes (an image folder without class sub-folders) has no class names and every label is 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u16>,
    channels: usize,
    height: usize,
    width: usize,
    class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset from NCHW u8 pixels and one label per image.
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when a dimension is zero, when `images` does not hold exactly
    /// `labels.len()` images of `channels * height * width` bytes, or when a label is not below
    /// `class_names.len()` (with no class names, labels must be 0).
    ///
    /// # Examples
    ///
    /// ```
    /// let ds = data::Dataset::new(vec![0, 255, 7, 9], vec![1, 0], 1, 1, 2, vec!["a".into(), "b".into()])?;
    /// assert_eq!(ds.len(), 2);
    /// assert_eq!(ds.image(1), &[7, 9]);
    /// assert_eq!(ds.class_name(ds.label(0)), Some("b"));
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u16>,
        channels: usize,
        height: usize,
        width: usize,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(DataError::Config(format!(
                "image shape {channels}x{height}x{width} has a zero dimension"
            )));
        }
        let image_len = channels * height * width;
        if images.len() != labels.len() * image_len {
            return Err(DataError::Config(format!(
                "{} pixel bytes do not make {} images of {channels}x{height}x{width}",
                images.len(),
                labels.len()
            )));
        }
        let n_classes = class_names.len().max(1);
        if let Some((idx, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= n_classes)
        {
            return Err(DataError::Config(format!(
                "label {label} of image {idx} is out of range 0..{n_classes}"
            )));
        }
        Ok(Self {
            images,
            labels,
            channels,
            height,
            width,
            class_names,
        })
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Channels per image: 1 (grayscale) or 3 (RGB).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), self.channels, self.height, self.width]
    }

    /// Bytes per image, `C * H * W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// All pixels, NCHW.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// Image `idx`, CHW.
    ///
    /// # Panics
    ///
    /// When `idx >= len()`.
    pub fn image(&self, idx: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[idx * n..(idx + 1) * n]
    }

    /// All labels, in image order.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The label of image `idx`.
    ///
    /// # Panics
    ///
    /// When `idx >= len()`.
    pub fn label(&self, idx: usize) -> u16 {
        self.labels[idx]
    }

    /// Class names, indexed by label; empty for an unlabelled dataset.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The number of classes (0 for an unlabelled dataset).
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The name of class `label`, if there is one.
    pub fn class_name(&self, label: u16) -> Option<&str> {
        self.class_names.get(usize::from(label)).map(String::as_str)
    }

    /// The images in `range`, as a new dataset with the same classes.
    ///
    /// # Panics
    ///
    /// When `range` reaches past `len()`.
    ///
    /// # Examples
    ///
    /// ```
    /// let ds = data::Dataset::new(vec![1, 2, 3], vec![0, 0, 0], 1, 1, 1, vec![])?;
    /// assert_eq!(ds.slice(1..3).images(), &[2, 3]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn slice(&self, range: Range<usize>) -> Dataset {
        let n = self.image_len();
        Dataset {
            images: self.images[range.start * n..range.end * n].to_vec(),
            labels: self.labels[range].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// Appends `other`'s images after this dataset's (train+test is train, then test).
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when the image shapes or the class names differ.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut a = data::Dataset::new(vec![1], vec![0], 1, 1, 1, vec![])?;
    /// a.append(data::Dataset::new(vec![2, 3], vec![0, 0], 1, 1, 1, vec![])?)?;
    /// assert_eq!(a.images(), &[1, 2, 3]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn append(&mut self, other: Dataset) -> Result<()> {
        if other.shape()[1..] != self.shape()[1..] {
            return Err(DataError::Config(format!(
                "cannot join {}x{}x{} images with {}x{}x{} images",
                self.channels, self.height, self.width, other.channels, other.height, other.width
            )));
        }
        if other.class_names != self.class_names {
            return Err(DataError::Config(
                "cannot join datasets with different class names".into(),
            ));
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }

    /// Count, shape, per-channel mean and standard deviation on 0..255, and label histogram.
    ///
    /// Sums are exact (integer), so the mean and the population standard deviation (`ddof = 0`,
    /// as numpy's `std`) are correct to f64 rounding even for hundreds of millions of pixels.
    ///
    /// # Examples
    ///
    /// ```
    /// let ds = data::Dataset::new(vec![0, 2, 4, 4], vec![1, 1], 1, 1, 2, vec!["a".into(), "b".into()])?;
    /// let stats = ds.stats();
    /// assert_eq!(stats.mean, vec![2.5]);
    /// assert_eq!(stats.label_counts, vec![0, 2]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let mut acc =
            StatsAccumulator::new(self.channels, [self.height, self.width], self.n_classes());
        for (image, &label) in self
            .images
            .chunks_exact(self.image_len().max(1))
            .zip(&self.labels)
        {
            acc.add(image, label);
        }
        acc.finish()
    }
}

/// [`Stats`] gathered one image at a time, so a streamed dataset never needs to be in memory.
///
/// Sums are exact (integer), so the mean and the population standard deviation (`ddof = 0`,
/// as numpy's `std`) are correct to f64 rounding even for hundreds of millions of pixels.
///
/// ```
/// let mut acc = data::StatsAccumulator::new(1, [1, 2], 0);
/// acc.add(&[0, 2], 0);
/// acc.add(&[4, 4], 0);
/// assert_eq!(acc.finish().mean, vec![2.5]);
/// ```
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    channels: usize,
    size: [usize; 2],
    n_classes: usize,
    count: usize,
    sums: Vec<u64>,
    squares: Vec<u64>,
    label_counts: Vec<u64>,
}

impl StatsAccumulator {
    /// An empty accumulator for CHW images of `channels` planes of `size`, with `n_classes`
    /// classes (0 for none).
    pub fn new(channels: usize, size: [usize; 2], n_classes: usize) -> Self {
        Self {
            channels,
            size,
            n_classes,
            count: 0,
            sums: vec![0; channels],
            squares: vec![0; channels],
            label_counts: vec![0; n_classes],
        }
    }

    /// Adds one CHW image and its label.
    ///
    /// # Panics
    ///
    /// When `image` is not `channels` planes of `size`.
    pub fn add(&mut self, image: &[u8], label: u16) {
        let plane = self.size[0] * self.size[1];
        assert_eq!(
            image.len(),
            self.channels * plane,
            "image of the wrong size"
        );
        for (c, pixels) in image.chunks_exact(plane.max(1)).enumerate() {
            // Per-plane sums fit in u32 (plane * 255^2 < 2^32 up to 256x256 images); use u64 anyway.
            let (s, q) = pixels.iter().fold((0u64, 0u64), |(s, q), &v| {
                let v = u64::from(v);
                (s + v, q + v * v)
            });
            self.sums[c] += s;
            self.squares[c] += q;
        }
        let label = usize::from(label);
        if label >= self.label_counts.len() {
            self.label_counts.resize(label + 1, 0);
        }
        self.label_counts[label] += 1;
        self.count += 1;
    }

    /// The statistics of the images added.
    pub fn finish(self) -> Stats {
        let n_pixels = (self.count * self.size[0] * self.size[1]) as u128;
        let mean = self
            .sums
            .iter()
            .map(|&s| s as f64 / n_pixels as f64)
            .collect();
        // n^2 var = n sum(x^2) - sum(x)^2, exactly in integers: no cancellation for large n.
        let std = self
            .sums
            .iter()
            .zip(&self.squares)
            .map(|(&s, &q)| {
                let n2_var = n_pixels * u128::from(q) - u128::from(s) * u128::from(s);
                (n2_var as f64).sqrt() / n_pixels as f64
            })
            .collect();
        let mut label_counts = self.label_counts;
        label_counts.resize(label_counts.len().max(self.n_classes), 0);
        Stats {
            count: self.count,
            channels: self.channels,
            height: self.size[0],
            width: self.size[1],
            mean,
            std,
            label_counts,
        }
    }
}

/// What `ddpm data stats` prints about a dataset; see [`Dataset::stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The number of images.
    pub count: usize,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Per-channel mean of the u8 pixel values (0..255).
    pub mean: Vec<f64>,
    /// Per-channel population standard deviation of the u8 pixel values.
    pub std: Vec<f64>,
    /// `label_counts[k]` images have label `k`; one entry per class.
    pub label_counts: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_a_pixel_count_that_does_not_match_the_labels() {
        let err = Dataset::new(vec![0; 5], vec![0, 0], 1, 1, 2, vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "5 pixel bytes do not make 2 images of 1x1x2"
        );
    }

    #[test]
    fn new_rejects_labels_outside_the_classes() {
        let err = Dataset::new(
            vec![0; 2],
            vec![0, 2],
            1,
            1,
            1,
            vec!["a".into(), "b".into()],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "label 2 of image 1 is out of range 0..2");
        let err = Dataset::new(vec![0; 1], vec![1], 1, 1, 1, vec![]).unwrap_err();
        assert_eq!(err.to_string(), "label 1 of image 0 is out of range 0..1");
    }

    #[test]
    fn append_refuses_other_shapes() {
        let mut a = Dataset::new(vec![0; 4], vec![0], 1, 2, 2, vec![]).unwrap();
        let b = Dataset::new(vec![0; 4], vec![0], 1, 1, 4, vec![]).unwrap();
        assert_eq!(
            a.append(b).unwrap_err().to_string(),
            "cannot join 1x2x2 images with 1x1x4 images"
        );
    }

    #[test]
    fn stats_match_numpy_on_two_channels() {
        // numpy: x = np.array([0, 10, 20, 30, 255, 255, 1, 3]).reshape(2, 2, 1, 2);
        // x.mean(axis=(0, 2, 3)) = [130, 13.5]; x.std(axis=(0, 2, 3)) = [125.049990003998, 12.05197079319395]
        let ds = Dataset::new(
            vec![0, 10, 20, 30, 255, 255, 1, 3],
            vec![0, 0],
            2,
            1,
            2,
            vec![],
        )
        .unwrap();
        let stats = ds.stats();
        assert_eq!(stats.count, 2);
        assert_eq!(stats.mean, vec![130.0, 13.5]);
        assert!(
            (stats.std[0] - 125.049990003998).abs() < 1e-12,
            "{:?}",
            stats.std
        );
        assert!(
            (stats.std[1] - 12.05197079319395).abs() < 1e-12,
            "{:?}",
            stats.std
        );
        assert_eq!(stats.label_counts, vec![2]);
    }
}
