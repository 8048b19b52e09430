//! The Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of the squared
//! maximum mean discrepancy with the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³, averaged
//! over random subsets, as clean-fid's `kernel_distance` and torch-fidelity compute it.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use serde::{Deserialize, Serialize};

use super::{Features, FidError};

/// Above this many Gram-matrix entries (both sets together) KID computes each subset's kernels
/// separately instead of the full Gram matrices once (27 M entries: 216 MB of f64).
const MAX_GRAM_ENTRIES: usize = 3 * 3000 * 3000;

/// How KID draws its subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KidConfig {
    /// The number of subsets averaged.
    pub n_subsets: usize,
    /// Images per subset (capped at the smaller set's size).
    pub subset_size: usize,
    /// Seeds the subset draws.
    pub seed: u64,
}

impl Default for KidConfig {
    /// clean-fid's and torch-fidelity's defaults: 100 subsets of 1000 (`num_subsets=100`,
    /// `max_subset_size=1000`), seed 0.
    fn default() -> Self {
        Self {
            n_subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// A KID estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    /// The mean of the subsets' MMD² (the KID).
    pub mean: f64,
    /// Their standard deviation (divisor n, as torch-fidelity reports `kernel_inception_distance_std`).
    pub std: f64,
    /// Subsets used (1 when each subset is the whole of both sets).
    pub n_subsets: usize,
    /// Images per subset.
    pub subset_size: usize,
}

/// SplitMix64 (Steele et al. 2014): a small seeded generator, so that KID is reproducible
/// without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on 0..bound (the multiply-shift map; its bias is below 2⁻⁴⁰ for our bounds).
    fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }

    /// `m` distinct indices of 0..n in random order (a partial Fisher–Yates shuffle).
    fn choose(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..m {
            let j = i + self.below(n - i);
            idx.swap(i, j);
        }
        idx.truncate(m);
        idx
    }
}

/// The rows `idx` of `features` in f64, as an `[m, D]` matrix.
fn gather(features: &Features, idx: &[usize]) -> Mat<f64> {
    Mat::from_fn(idx.len(), features.dim(), |i, j| {
        features.row(idx[i])[j] as f64
    })
}

/// `a bᵀ` for `[m, D]` and `[n, D]` matrices.
fn gram(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.nrows());
    matmul(
        out.as_mut(),
        Accum::Replace,
        a.as_ref(),
        b.transpose(),
        1.0,
        Par::rayon(0),
    );
    out
}

fn cubic(dot: f64, d: f64) -> f64 {
    let k = dot / d + 1.0;
    k * k * k
}

/// The unbiased MMD² from the kernel sums of one subset pair of size m: the off-diagonal sums
/// of K_xx and K_yy, and the full sum of K_xy (Bińkowski et al. 2018, Eq. 4).
fn mmd2_from_sums(xx_off: f64, yy_off: f64, xy: f64, m: usize) -> f64 {
    let m = m as f64;
    ((xx_off + yy_off) / (m - 1.0) - 2.0 * xy / m) / m
}

/// The unbiased MMD² between the rows `x_idx` of `x` and the rows `y_idx` of `y`, with the cubic
/// kernel: one subset of [`kid`].
///
/// # Panics
/// When the index lists differ in length or hold fewer than two indices, or the dimensions
/// differ: [`kid`] checks these for its callers.
pub fn mmd2_unbiased(x: &Features, x_idx: &[usize], y: &Features, y_idx: &[usize]) -> f64 {
    assert_eq!(x_idx.len(), y_idx.len(), "subsets must have one size");
    assert!(x_idx.len() >= 2, "subsets need at least two images");
    assert_eq!(x.dim(), y.dim(), "features must have one dimension");
    let d = x.dim() as f64;
    let (xs, ys) = (gather(x, x_idx), gather(y, y_idx));
    let (kxx, kyy, kxy) = (gram(&xs, &xs), gram(&ys, &ys), gram(&xs, &ys));
    let m = x_idx.len();
    let mut sums = [0f64; 3];
    for i in 0..m {
        for j in 0..m {
            if i != j {
                sums[0] += cubic(kxx[(i, j)], d);
                sums[1] += cubic(kyy[(i, j)], d);
            }
            sums[2] += cubic(kxy[(i, j)], d);
        }
    }
    mmd2_from_sums(sums[0], sums[1], sums[2], m)
}

/// KID: the mean (and standard deviation) of [`mmd2_unbiased`] over `config.n_subsets` pairs of
/// random subsets of size m = min(subset_size, |x|, |y|), drawn without replacement from a seeded
/// generator. When m covers both sets whole, every subset is the same and one is computed.
///
/// Small sets (Gram matrices up to 27 M entries) compute X Xᵀ, Y Yᵀ and X Yᵀ once and sum each
/// subset's entries; larger ones compute each subset's kernels, as clean-fid does.
///
/// # Errors
/// [`FidError::TooFewImages`] when m < 2; [`FidError::Invalid`] when the dimensions differ or
/// `n_subsets` is 0.
pub fn kid(x: &Features, y: &Features, config: &KidConfig) -> Result<Kid, FidError> {
    if x.dim() != y.dim() {
        return Err(FidError::Invalid(format!(
            "features of dimension {} and {}",
            x.dim(),
            y.dim()
        )));
    }
    if config.n_subsets == 0 {
        return Err(FidError::Invalid("KID needs at least one subset".into()));
    }
    let (nx, ny) = (x.len(), y.len());
    let m = config.subset_size.min(nx).min(ny);
    if m < 2 {
        return Err(FidError::TooFewImages {
            what: "KID subsets".into(),
            n: m,
        });
    }
    let n_subsets = if m == nx && m == ny {
        1
    } else {
        config.n_subsets
    };
    let mut rng = SplitMix64(config.seed);
    let subsets: Vec<(Vec<usize>, Vec<usize>)> = (0..n_subsets)
        .map(|_| {
            let y_idx = rng.choose(ny, m);
            let x_idx = rng.choose(nx, m);
            (x_idx, y_idx)
        })
        .collect();
    let values: Vec<f64> = if nx * nx + ny * ny + nx * ny <= MAX_GRAM_ENTRIES {
        let d = x.dim() as f64;
        let all_x: Vec<usize> = (0..nx).collect();
        let all_y: Vec<usize> = (0..ny).collect();
        let (xs, ys) = (gather(x, &all_x), gather(y, &all_y));
        let kxx = gram(&xs, &xs).as_ref().map(|&v| cubic(v, d));
        let kyy = gram(&ys, &ys).as_ref().map(|&v| cubic(v, d));
        let kxy = gram(&xs, &ys).as_ref().map(|&v| cubic(v, d));
        subsets
            .iter()
            .map(|(xi, yi)| {
                let mut sums = [0f64; 3];
                for a in 0..m {
                    for b in 0..m {
                        if a != b {
                            sums[0] += kxx[(xi[a], xi[b])];
                            sums[1] += kyy[(yi[a], yi[b])];
                        }
                        sums[2] += kxy[(xi[a], yi[b])];
                    }
                }
                mmd2_from_sums(sums[0], sums[1], sums[2], m)
            })
            .collect()
    } else {
        subsets
            .iter()
            .map(|(xi, yi)| mmd2_unbiased(x, xi, y, yi))
            .collect()
    };
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
    Ok(Kid {
        mean,
        std: var.sqrt(),
        n_subsets,
        subset_size: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(n: usize, d: usize, seed: u64, offset: f32) -> Features {
        let mut rng = SplitMix64(seed);
        let data = (0..n * d)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 + offset)
            .collect();
        Features::new(data, n, d).unwrap()
    }

    #[test]
    fn choose_draws_distinct_indices_reproducibly() {
        let a = SplitMix64(7).choose(50, 20);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert!(a.iter().all(|&i| i < 50));
        assert_eq!(a, SplitMix64(7).choose(50, 20));
        assert_ne!(a, SplitMix64(8).choose(50, 20));
    }

    #[test]
    fn gram_and_per_subset_paths_agree() {
        let (x, y) = (features(30, 5, 1, 0.0), features(25, 5, 2, 0.3));
        let config = KidConfig {
            n_subsets: 4,
            subset_size: 10,
            seed: 3,
        };
        let fast = kid(&x, &y, &config).unwrap();
        let mut rng = SplitMix64(3);
        let slow: Vec<f64> = (0..4)
            .map(|_| {
                let yi = rng.choose(25, 10);
                let xi = rng.choose(30, 10);
                mmd2_unbiased(&x, &xi, &y, &yi)
            })
            .collect();
        let mean = slow.iter().sum::<f64>() / 4.0;
        assert!(
            (fast.mean - mean).abs() < 1e-12 * mean.abs().max(1.0),
            "{} vs {mean}",
            fast.mean
        );
        assert_eq!((fast.n_subsets, fast.subset_size), (4, 10));
        assert!(fast.std > 0.0);
    }

    #[test]
    fn kid_separates_shifted_sets_and_rejects_tiny_ones() {
        let same = kid(
            &features(40, 4, 1, 0.0),
            &features(40, 4, 2, 0.0),
            &KidConfig::default(),
        )
        .unwrap();
        let shifted = kid(
            &features(40, 4, 1, 0.0),
            &features(40, 4, 2, 0.5),
            &KidConfig::default(),
        )
        .unwrap();
        assert_eq!(same.n_subsets, 1, "whole sets give one subset");
        assert!(
            same.mean.abs() < 0.05 && shifted.mean > 10.0 * same.mean.abs(),
            "{same:?} {shifted:?}"
        );
        let one = features(1, 4, 1, 0.0);
        assert!(matches!(
            kid(&one, &one, &KidConfig::default()),
            Err(FidError::TooFewImages { n: 1, .. })
        ));
    }
}
