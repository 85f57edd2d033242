//! Small dense symmetric-matrix algebra in f64 (the label dimension is tiny: a cyclic Jacobi
//! eigensolver is exact to rounding and needs no dependency).

/// A square f64 matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SquareMatrix {
    pub(crate) n: usize,
    pub(crate) data: Vec<f64>,
}

impl SquareMatrix {
    pub(crate) fn zeros(n: usize) -> Self {
        Self {
            n,
            data: vec![0.0; n * n],
        }
    }

    pub(crate) fn diagonal(diag: &[f64]) -> Self {
        let mut m = Self::zeros(diag.len());
        for (i, &v) in diag.iter().enumerate() {
            m.data[i * m.n + i] = v;
        }
        m
    }

    #[inline]
    pub(crate) fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    #[inline]
    pub(crate) fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.n + j] = v;
    }

    /// Whether every off-diagonal entry is within numpy's `allclose` absolute tolerance (1e-8)
    /// of zero: the reference's test for "diagonal".
    pub(crate) fn is_numerically_diagonal(&self) -> bool {
        (0..self.n).all(|i| (0..self.n).all(|j| i == j || self.get(i, j).abs() <= 1e-8))
    }

    /// The first pair that fails numpy's `allclose(M, Mᵀ)` (rtol 1e-5, atol 1e-8).
    pub(crate) fn first_asymmetry(&self) -> Option<(usize, usize)> {
        for i in 0..self.n {
            for j in 0..self.n {
                let (a, b) = (self.get(i, j), self.get(j, i));
                if (a - b).abs() > 1e-8 + 1e-5 * b.abs() {
                    return Some((i, j));
                }
            }
        }
        None
    }

    /// The matrix built from the lower triangle (what LAPACK's `syevd` reads, as numpy's
    /// `eigh` does by default).
    pub(crate) fn symmetrized_from_lower(&self) -> Self {
        let mut m = self.clone();
        for i in 0..self.n {
            for j in (i + 1)..self.n {
                m.set(i, j, self.get(j, i));
            }
        }
        m
    }
}

/// Eigen-decomposition of a symmetric matrix: eigenvalues and the eigenvector matrix `V`
/// (column `k` is the eigenvector of eigenvalue `k`), with `M = V diag(λ) Vᵀ`.
pub(crate) fn symmetric_eigen(m: &SquareMatrix) -> (Vec<f64>, SquareMatrix) {
    let n = m.n;
    let mut a = m.clone();
    let mut v = SquareMatrix::diagonal(&vec![1.0; n]);
    let frobenius: f64 = a.data.iter().map(|x| x * x).sum::<f64>();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| ((p + 1)..n).map(move |q| (p, q)))
            .map(|(p, q)| a.get(p, q) * a.get(p, q))
            .sum();
        if off == 0.0 || off <= frobenius * 1e-34 {
            break;
        }
        for p in 0..n {
            for q in (p + 1)..n {
                let apq = a.get(p, q);
                if apq == 0.0 {
                    continue;
                }
                let theta = (a.get(q, q) - a.get(p, p)) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a.get(k, p), a.get(k, q));
                    a.set(k, p, c * akp - s * akq);
                    a.set(k, q, s * akp + c * akq);
                }
                for k in 0..n {
                    let (apk, aqk) = (a.get(p, k), a.get(q, k));
                    a.set(p, k, c * apk - s * aqk);
                    a.set(q, k, s * apk + c * aqk);
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.get(k, p), v.get(k, q));
                    v.set(k, p, c * vkp - s * vkq);
                    v.set(k, q, s * vkp + c * vkq);
                }
            }
        }
    }
    let eigenvalues = (0..n).map(|i| a.get(i, i)).collect();
    (eigenvalues, v)
}

/// `V diag(f(λ)) Vᵀ`.
pub(crate) fn spectral_map(
    eigenvalues: &[f64],
    vectors: &SquareMatrix,
    f: impl Fn(f64) -> f64,
) -> SquareMatrix {
    let n = vectors.n;
    let fl: Vec<f64> = eigenvalues.iter().map(|&l| f(l)).collect();
    let mut out = SquareMatrix::zeros(n);
    for i in 0..n {
        for j in 0..n {
            let s = (0..n)
                .map(|k| vectors.get(i, k) * fl[k] * vectors.get(j, k))
                .sum();
            out.set(i, j, s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &SquareMatrix, b: &SquareMatrix) -> SquareMatrix {
        let n = a.n;
        let mut out = SquareMatrix::zeros(n);
        for i in 0..n {
            for j in 0..n {
                out.set(i, j, (0..n).map(|k| a.get(i, k) * b.get(k, j)).sum());
            }
        }
        out
    }

    #[test]
    fn jacobi_reconstructs_and_square_roots_multiply_back() {
        let m = SquareMatrix {
            n: 3,
            data: vec![100.0, 6.0, 1.5, 6.0, 4.0, 0.3, 1.5, 0.3, 0.25],
        };
        let (l, v) = symmetric_eigen(&m);
        let back = spectral_map(&l, &v, |x| x);
        let sqrt = spectral_map(&l, &v, f64::sqrt);
        let inv_sqrt = spectral_map(&l, &v, |x| 1.0 / x.sqrt());
        let sq = matmul(&sqrt, &sqrt);
        let id = matmul(&sqrt, &inv_sqrt);
        for i in 0..3 {
            for j in 0..3 {
                assert!((back.get(i, j) - m.get(i, j)).abs() < 1e-12);
                assert!((sq.get(i, j) - m.get(i, j)).abs() < 1e-12);
                let e = if i == j { 1.0 } else { 0.0 };
                assert!((id.get(i, j) - e).abs() < 1e-13);
            }
        }
    }

    #[test]
    fn known_inverse_square_root() {
        // H = [[100, 2], [2, 1]]: the reference's worked example.
        let m = SquareMatrix {
            n: 2,
            data: vec![100.0, 2.0, 2.0, 1.0],
        };
        let (l, v) = symmetric_eigen(&m);
        let inv = spectral_map(&l, &v, |x| 1.0 / x.sqrt());
        let expected = [0.10035517, -0.01858780, -0.01858780, 1.02045145];
        for (a, b) in inv.data.iter().zip(expected) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }

    #[test]
    fn symmetry_and_diagonal_tests_follow_numpy_allclose() {
        let m = SquareMatrix {
            n: 2,
            data: vec![1.0, 1e-9, 0.0, 2.0],
        };
        assert!(m.is_numerically_diagonal());
        assert!(m.first_asymmetry().is_none());
        let m = SquareMatrix {
            n: 2,
            data: vec![1.0, 2.0, 3.0, 2.0],
        };
        assert!(!m.is_numerically_diagonal());
        assert_eq!(m.first_asymmetry(), Some((0, 1)));
    }
}
