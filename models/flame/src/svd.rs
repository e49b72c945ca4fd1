//! Singular value decomposition by one-sided Jacobi rotations (Hestenes) in f64,
//! and rank-r truncation into a balanced factor pair `W ~= U V`.

/// `A = U diag(s) V^T` of a row-major `m x n` matrix; `k = min(m, n)` singular
/// values in descending order, `u` is `m x k`, `vt` is `k x n` (both row-major).
#[derive(Clone, Debug)]
pub struct Svd {
    /// Left singular vectors, `m x k` row-major.
    pub u: Vec<f64>,
    /// Singular values, descending.
    pub s: Vec<f64>,
    /// Right singular vectors transposed, `k x n` row-major.
    pub vt: Vec<f64>,
    /// Rows of A.
    pub m: usize,
    /// Columns of A.
    pub n: usize,
}

/// One-sided Jacobi on the columns of a tall `rows x cols` matrix stored column by
/// column (`cols[j]` has `rows` entries). Returns (left vectors scaled by the
/// singular values, i.e. the rotated columns, and the accumulated rotation V).
fn jacobi_columns(mut a: Vec<Vec<f64>>) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = {
                    let (ap, aq) = (&a[p], &a[q]);
                    let mut al = 0.0;
                    let mut be = 0.0;
                    let mut ga = 0.0;
                    for (x, y) in ap.iter().zip(aq) {
                        al += x * x;
                        be += y * y;
                        ga += x * y;
                    }
                    (al, be, ga)
                };
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (lo, hi) = a.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (xp, xq) = (*x, *y);
                    *x = c * xp - s * xq;
                    *y = s * xp + c * xq;
                }
                let (lo, hi) = v.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (xp, xq) = (*x, *y);
                    *x = c * xp - s * xq;
                    *y = s * xp + c * xq;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    (a, v)
}

/// SVD of a row-major `m x n` matrix.
pub fn svd(a: &[f64], m: usize, n: usize) -> Svd {
    assert_eq!(a.len(), m * n);
    // Work on the orientation with more rows than columns.
    let transpose = m < n;
    let (rows, cols) = if transpose { (n, m) } else { (m, n) };
    let at = |i: usize, j: usize| {
        if transpose {
            a[j * n + i]
        } else {
            a[i * n + j]
        }
    };
    let columns: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..rows).map(|i| at(i, j)).collect())
        .collect();
    let (rot, v) = jacobi_columns(columns);
    let mut order: Vec<usize> = (0..cols).collect();
    let norms: Vec<f64> = rot
        .iter()
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]).then(x.cmp(&y)));
    let k = cols;
    // left vectors of the worked matrix: rows x k ; right: cols x k
    let mut left = vec![0.0; rows * k];
    let mut right = vec![0.0; cols * k];
    let mut s = vec![0.0; k];
    for (r, &j) in order.iter().enumerate() {
        s[r] = norms[j];
        for i in 0..rows {
            left[i * k + r] = if norms[j] > 0.0 {
                rot[j][i] / norms[j]
            } else {
                0.0
            };
        }
        for i in 0..cols {
            right[i * k + r] = v[j][i];
        }
    }
    // A (worked) = left diag(s) right^T. If transposed, A = right diag(s) left^T.
    let (u_mat, u_rows, v_mat, v_rows) = if transpose {
        (right, cols, left, rows)
    } else {
        (left, rows, right, cols)
    };
    debug_assert_eq!(u_rows, m);
    debug_assert_eq!(v_rows, n);
    let mut vt = vec![0.0; k * n];
    for i in 0..n {
        for r in 0..k {
            vt[r * n + i] = v_mat[i * k + r];
        }
    }
    Svd {
        u: u_mat,
        s,
        vt,
        m,
        n,
    }
}

/// A rank-r factor pair of an `m x n` matrix: `u` `[m, r]`, `v` `[r, n]`
/// (f32, row-major), with the singular values split evenly (`U sqrt(S)`,
/// `sqrt(S) V^T`), and the singular values of the full matrix.
#[derive(Clone, Debug)]
pub struct LowRank {
    /// `[m, r]`.
    pub u: Vec<f32>,
    /// `[r, n]`.
    pub v: Vec<f32>,
    /// Rank kept.
    pub r: usize,
    /// All singular values of the input, descending.
    pub singular_values: Vec<f64>,
}

/// Truncates a row-major `m x n` f32 matrix to rank `r` (`r <= min(m, n)`).
pub fn truncate(w: &[f32], m: usize, n: usize, r: usize) -> LowRank {
    let a: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let d = svd(&a, m, n);
    let k = d.s.len();
    let r = r.min(k);
    let mut u = vec![0f32; m * r];
    let mut v = vec![0f32; r * n];
    for j in 0..r {
        let sq = d.s[j].sqrt();
        for i in 0..m {
            u[i * r + j] = (d.u[i * k + j] * sq) as f32;
        }
        for i in 0..n {
            v[j * n + i] = (d.vt[j * n + i] * sq) as f32;
        }
    }
    LowRank {
        u,
        v,
        r,
        singular_values: d.s,
    }
}

/// `U V` in f64 (row-major `m x n`).
pub fn reconstruct(lr: &LowRank, m: usize, n: usize) -> Vec<f64> {
    let r = lr.r;
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..r)
                .map(|k| f64::from(lr.u[i * r + k]) * f64::from(lr.v[k * n + j]))
                .sum();
        }
    }
    out
}
