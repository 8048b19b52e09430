//! Feature statistics (mean and covariance, f64) in pytorch-fid's `.npz` layout, and the Fréchet
//! distance between the two Gaussians they describe (Heusel et al. 2017, Eq. 6).

use std::path::Path;

use data::images::{read_npz, write_npz, NpyArray, NpyData};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};

use super::{Features, FidError};

/// Rows per block when accumulating the covariance: bounds the f64 copy of the features.
const BLOCK_ROWS: usize = 1024;

/// The mean μ and covariance Σ of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    mu: Vec<f64>,
    sigma: Vec<f64>,
}

impl Statistics {
    /// Statistics from μ (`[D]`) and Σ (`[D, D]`, row-major).
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the lengths do not match or D is 0;
    /// [`FidError::Numerical`] when a value is not finite.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>) -> Result<Self, FidError> {
        let d = mu.len();
        if d == 0 || sigma.len() != d * d {
            return Err(FidError::Invalid(format!(
                "mu has {d} values, so sigma needs {} ({d}×{d}), got {}",
                d * d,
                sigma.len()
            )));
        }
        if mu.iter().chain(&sigma).any(|v| !v.is_finite()) {
            return Err(FidError::Numerical(
                "statistics hold NaN or infinity".into(),
            ));
        }
        Ok(Self { mu, sigma })
    }

    /// μ = mean of the rows, Σ = their covariance with divisor N − 1 (`np.cov(x, rowvar=False)`),
    /// accumulated in f64 around the first block's mean so that large means do not cancel.
    ///
    /// # Errors
    /// [`FidError::TooFewImages`] for fewer than two rows.
    pub fn from_features(features: &Features) -> Result<Self, FidError> {
        let (n, d) = (features.len(), features.dim());
        if n < 2 {
            return Err(FidError::TooFewImages {
                what: "features".into(),
                n,
            });
        }
        let first = n.min(BLOCK_ROWS);
        let mut shift = vec![0f64; d];
        for i in 0..first {
            for (s, &v) in shift.iter_mut().zip(features.row(i)) {
                *s += v as f64;
            }
        }
        shift.iter_mut().for_each(|s| *s /= first as f64);
        let mut sum = vec![0f64; d];
        let mut scatter = Mat::<f64>::zeros(d, d);
        for start in (0..n).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(n - start);
            let block =
                Mat::<f64>::from_fn(rows, d, |i, j| features.row(start + i)[j] as f64 - shift[j]);
            for i in 0..rows {
                for (s, j) in sum.iter_mut().zip(0..d) {
                    *s += block[(i, j)];
                }
            }
            matmul(
                scatter.as_mut(),
                Accum::Add,
                block.transpose(),
                block.as_ref(),
                1.0,
                Par::rayon(0),
            );
        }
        let nf = n as f64;
        let mu = shift.iter().zip(&sum).map(|(s, t)| s + t / nf).collect();
        let mut sigma = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                // Average the two triangles so that Σ is exactly symmetric.
                let scatter_ij = 0.5 * (scatter[(i, j)] + scatter[(j, i)]);
                sigma[i * d + j] = (scatter_ij - sum[i] * sum[j] / nf) / (nf - 1.0);
            }
        }
        Self::new(mu, sigma)
    }

    /// The feature dimension D.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// μ, `[D]`.
    pub fn mu(&self) -> &[f64] {
        &self.mu
    }

    /// Σ, `[D, D]` row-major.
    pub fn sigma(&self) -> &[f64] {
        &self.sigma
    }

    /// Reads `mu` (`[D]`) and `sigma` (`[D, D]`), float64 or float32, from an `.npz` such as
    /// pytorch-fid's `--save-stats` output or clean-fid's reference statistics.
    ///
    /// # Errors
    /// [`FidError::File`] naming the file when it cannot be read, lacks an array, or an array
    /// has another type or shape.
    pub fn read_npz(path: &Path) -> Result<Self, FidError> {
        let bad = |message: String| FidError::File {
            path: path.to_path_buf(),
            message,
        };
        let arrays = read_npz(path).map_err(|e| {
            let text = e.to_string();
            let prefix = format!("{}: ", path.display());
            bad(text.strip_prefix(&prefix).unwrap_or(&text).to_string())
        })?;
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f64>), FidError> {
            let (_, array) = arrays.iter().find(|(key, _)| key == name).ok_or_else(|| {
                bad(format!(
                    "no array `{name}`: statistics files hold `mu` and `sigma`"
                ))
            })?;
            let values = match &array.data {
                NpyData::F64(v) => v.clone(),
                NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
                _ => return Err(bad(format!("array `{name}` is not float64 or float32"))),
            };
            Ok((array.shape.clone(), values))
        };
        let (mu_shape, mu) = get("mu")?;
        let (sigma_shape, sigma) = get("sigma")?;
        let [d] = mu_shape[..] else {
            return Err(bad(format!("`mu` has shape {mu_shape:?}; expected [D]")));
        };
        if sigma_shape != [d, d] {
            return Err(bad(format!(
                "`sigma` has shape {sigma_shape:?}; expected [{d}, {d}] to match `mu`"
            )));
        }
        Self::new(mu, sigma).map_err(|e| bad(e.to_string()))
    }

    /// Writes `mu` and `sigma` as float64 arrays, as `numpy.savez(path, mu=mu, sigma=sigma)`.
    ///
    /// # Errors
    /// [`FidError::File`] naming the file when it cannot be written.
    pub fn write_npz(&self, path: &Path) -> Result<(), FidError> {
        let d = self.dim();
        let bad = |e: data::DataError| FidError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mu = NpyArray::new(vec![d], NpyData::F64(self.mu.clone())).map_err(bad)?;
        let sigma = NpyArray::new(vec![d, d], NpyData::F64(self.sigma.clone())).map_err(bad)?;
        write_npz(path, &[("mu", &mu), ("sigma", &sigma)]).map_err(bad)
    }
}

/// The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), the FID when the statistics are those
/// of Inception features:
///
/// d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^½.
///
/// Σ₁Σ₂ is not symmetric, but it is similar to the symmetric positive semi-definite
/// Σ₁^½ Σ₂ Σ₁^½, so Tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ over that matrix's eigenvalues. With Σ₁ = U S Uᵀ and
/// B = U S^½, Bᵀ Σ₂ B has the same eigenvalues; two symmetric eigendecompositions (faer) and
/// two products give the trace, and eigenvalues that rounding pushes below zero are taken as
/// zero. This is scipy's `sqrtm` value (pytorch-fid) without its complex detour.
///
/// # Errors
/// [`FidError::Invalid`] when the dimensions differ; [`FidError::Numerical`] when an
/// eigendecomposition does not converge.
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64, FidError> {
    let d = a.dim();
    if b.dim() != d {
        return Err(FidError::Invalid(format!(
            "statistics of dimension {d} and {} cannot be compared: were they made with different networks?",
            b.dim()
        )));
    }
    let sym = |s: &[f64]| Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (s[i * d + j] + s[j * d + i]));
    let (sigma1, sigma2) = (sym(&a.sigma), sym(&b.sigma));
    let eig = sigma1
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| FidError::Numerical(format!("eigendecomposition of sigma1: {e:?}")))?;
    let (u, s) = (eig.U(), eig.S().column_vector());
    let half = Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let m = half.transpose() * &sigma2 * &half;
    let m = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let lambdas = m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| {
        FidError::Numerical(format!(
            "eigenvalues of sqrt(sigma1) sigma2 sqrt(sigma1): {e:?}"
        ))
    })?;
    let tr_covmean: f64 = lambdas.iter().map(|l| l.max(0.0).sqrt()).sum();
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
    let fid = diff + trace(&sigma1) + trace(&sigma2) - 2.0 * tr_covmean;
    if !fid.is_finite() {
        return Err(FidError::Numerical(format!("the distance is {fid}")));
    }
    Ok(fid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_statistics_are_at_distance_zero() {
        let features = Features::new(
            (0..60).map(|i| ((i * 7) % 11) as f32 * 0.1).collect(),
            20,
            3,
        )
        .unwrap();
        let s = Statistics::from_features(&features).unwrap();
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-12);
    }

    #[test]
    fn one_dimension_matches_the_closed_form() {
        // d² = (μ₁ − μ₂)² + (σ₁ − σ₂)² for scalars.
        let a = Statistics::new(vec![1.0], vec![4.0]).unwrap();
        let b = Statistics::new(vec![3.0], vec![9.0]).unwrap();
        assert!((frechet_distance(&a, &b).unwrap() - (4.0 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn large_means_do_not_cancel_the_covariance() {
        // Variance 0.25 around 1e6: a naive sum of squares in f64 would lose most digits.
        let data: Vec<f32> = (0..1000)
            .map(|i| 1.0e6 + if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let s = Statistics::from_features(&Features::new(data, 1000, 1).unwrap()).unwrap();
        assert!(
            (s.sigma()[0] - 0.25 * 1000.0 / 999.0).abs() < 1e-9,
            "{}",
            s.sigma()[0]
        );
    }

    #[test]
    fn mismatched_dimensions_and_lengths_are_errors() {
        assert!(Statistics::new(vec![0.0; 2], vec![0.0; 3]).is_err());
        let a = Statistics::new(vec![0.0], vec![1.0]).unwrap();
        let b = Statistics::new(vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(FidError::Invalid(_))
        ));
        let one = Features::new(vec![1.0; 4], 1, 4).unwrap();
        assert!(matches!(
            Statistics::from_features(&one),
            Err(FidError::TooFewImages { n: 1, .. })
        ));
    }
}
