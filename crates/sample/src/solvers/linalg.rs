//! The small dense solve UniPC needs for its coefficients (at most 3×3), in f64 on the host.

/// Solves `a x = b` for a square `a` of up to a few rows by Gaussian elimination with partial
/// pivoting.
///
/// # Panics
/// When `a` is singular (UniPC's matrices are Vandermonde in distinct log-SNR ratios, so they
/// are not).
pub(crate) fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .expect("a non-empty column");
        assert!(a[pivot][col] != 0.0, "singular matrix {a:?}");
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (k, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + k] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x
}

#[cfg(test)]
mod tests {
    #[test]
    fn solves_a_vandermonde_system() {
        let r: [f64; 3] = [-0.7, 1.3, 1.0];
        let a: Vec<Vec<f64>> = (0..3)
            .map(|i| r.iter().map(|x| x.powi(i)).collect())
            .collect();
        let want = [0.2, -1.5, 3.0];
        let b: Vec<f64> = a
            .iter()
            .map(|row| row.iter().zip(&want).map(|(p, q)| p * q).sum())
            .collect();
        for (x, w) in super::solve(a, b).iter().zip(want) {
            assert!((x - w).abs() < 1e-12, "{x} vs {w}");
        }
    }
}
