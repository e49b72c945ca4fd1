//! The f32 reference kernels against naive f64 implementations written here.
//!
//! Each property draws random shapes (odd sizes and tails included) and values,
//! runs the kernel, and compares with a straightforward f64 evaluation of the
//! formula. Tolerances are relative to the magnitude of the sum of |terms| that
//! produced each output (what f32 rounding error actually scales with), with
//! [`REL`] as the budget. Hand-computed cases follow the properties.

use proptest::prelude::*;
use taskpath_cpu::f32 as k;

/// Relative error budget, scaled by the magnitude of the terms summed.
const REL: f64 = 1e-5;
/// Budget of the element-wise kernels (a couple of roundings at most).
const REL_ELEMENTWISE: f64 = 1e-6;

// ---------------------------------------------------------------- references

/// `sum_i a_i b_i` and `sum_i |a_i b_i|` in f64.
fn dot64(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut s = 0.0;
    let mut m = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        let t = f64::from(x) * f64::from(y);
        s += t;
        m += t.abs();
    }
    (s, m)
}

/// `W x + b` in f64, with the magnitude of each output's terms.
fn matvec64(w: &[f32], x: &[f32], bias: Option<&[f32]>, n_out: usize) -> Vec<(f64, f64)> {
    let n_in = x.len();
    (0..n_out)
        .map(|o| {
            let (s, m) = dot64(&w[o * n_in..(o + 1) * n_in], x);
            let b = bias.map_or(0.0, |b| f64::from(b[o]));
            (s + b, m + b.abs())
        })
        .collect()
}

/// Softmax in f64 (max-subtracted).
fn softmax64(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// One LayerNorm row in f64: values and per-element tolerance.
fn layernorm_row64(x: &[f32], g: &[f32], b: &[f32], eps: f32, scale: f32) -> Vec<(f64, f64)> {
    let n = x.len() as f64;
    let z: Vec<f64> = x.iter().map(|&v| f64::from(scale) * f64::from(v)).collect();
    let mean = z.iter().sum::<f64>() / n;
    let mean_abs = z.iter().map(|v| v.abs()).sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let sd = (var + f64::from(eps)).sqrt();
    z.iter()
        .zip(g.iter().zip(b))
        .map(|(&zi, (&gi, &bi))| {
            let (gi, bi) = (f64::from(gi), f64::from(bi));
            let want = (zi - mean) / sd * gi + bi;
            let tol = REL * (gi.abs() * (zi.abs() + mean_abs) / sd + bi.abs());
            (want, tol)
        })
        .collect()
}

/// Exact GELU in f64, written as the formula states.
fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Attention of one query against `keys`/`values` rows (all of width `dh`,
/// taken at column offset `off` of rows of width `d`): values and tolerances
/// of the `dh` outputs.
fn attend64(
    qi: &[f32],
    keys: &[f32],
    values: &[f32],
    d: usize,
    off: usize,
    dh: usize,
    scale: f64,
) -> Vec<(f64, f64)> {
    let l = keys.len() / d;
    let mut scores = Vec::with_capacity(l);
    let mut score_mag: f64 = 0.0;
    for j in 0..l {
        let (s, m) = dot64(qi, &keys[j * d + off..j * d + off + dh]);
        scores.push(s * scale);
        score_mag = score_mag.max(m * scale);
    }
    let p = softmax64(&scores);
    (0..dh)
        .map(|c| {
            let mut s = 0.0;
            let mut m = 0.0;
            for (j, &pj) in p.iter().enumerate() {
                let v = f64::from(values[j * d + off + c]);
                s += pj * v;
                m += pj * v.abs();
            }
            // Score errors move the weights relatively by about the score
            // magnitude times the f32 epsilon: widen by (1 + |scores|).
            (s, REL * m * (1.0 + score_mag) + 1e-9)
        })
        .collect()
}

/// Reference top-k: sort allowed experts (NaN last, logit desc, index asc).
fn top_k64(logits: &[f32], mask: u64, k: usize) -> Vec<u32> {
    top_k_words(logits, &[mask, 0, 0, 0], k)
}

/// Reference top-k over a mask of up to 256 experts (bit `j % 64` of word `j / 64`).
fn top_k_words(logits: &[f32], mask: &[u64; 4], k: usize) -> Vec<u32> {
    let mut allowed: Vec<u32> = (0..logits.len() as u32)
        .filter(|&j| mask[j as usize / 64] >> (j % 64) & 1 == 1)
        .collect();
    allowed.sort_by(|&a, &b| {
        let (x, y) = (logits[a as usize], logits[b as usize]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap().then(a.cmp(&b)),
        }
    });
    allowed.truncate(k);
    allowed
}

fn check(got: f32, want: f64, tol: f64) -> Result<(), TestCaseError> {
    let err = (f64::from(got) - want).abs();
    prop_assert!(
        err <= tol,
        "got {got}, want {want}, |err| {err:e} > tol {tol:e}"
    );
    Ok(())
}

fn vals(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-2.0f32..2.0, n)
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn matvec_matches_reference(
        (w, x, bias) in (1usize..70, 1usize..40).prop_flat_map(|(n_in, n_out)| {
            (vals(n_out * n_in), vals(n_in), prop::option::of(vals(n_out)))
        })
    ) {
        let n_out = bias.as_ref().map_or(w.len() / x.len(), Vec::len);
        let mut y = vec![f32::NAN; n_out];
        k::matvec(&w, &x, bias.as_deref(), &mut y);
        for (&g, (want, mag)) in y.iter().zip(matvec64(&w, &x, bias.as_deref(), n_out)) {
            check(g, want, REL * mag)?;
        }
    }

    #[test]
    fn matmul_rows_matches_reference(
        (w, x, bias, rows, n_out) in (1usize..70, 1usize..40, 1usize..9).prop_flat_map(
            |(n_in, n_out, rows)| {
                (vals(n_out * n_in), vals(rows * n_in), prop::option::of(vals(n_out)),
                 Just(rows), Just(n_out))
            }
        )
    ) {
        let n_in = x.len() / rows;
        let mut y = vec![f32::NAN; rows * n_out];
        k::matmul_rows(&w, &x, bias.as_deref(), rows, &mut y);
        for r in 0..rows {
            let mut yr = vec![f32::NAN; n_out];
            k::matvec(&w, &x[r * n_in..(r + 1) * n_in], bias.as_deref(), &mut yr);
            prop_assert_eq!(&y[r * n_out..(r + 1) * n_out], &yr[..], "rows must match matvec bitwise");
            let want = matvec64(&w, &x[r * n_in..(r + 1) * n_in], bias.as_deref(), n_out);
            for (&g, (want, mag)) in y[r * n_out..(r + 1) * n_out].iter().zip(want) {
                check(g, want, REL * mag)?;
            }
        }
    }

    #[test]
    fn layernorm_matches_reference(
        (x, g, b) in (1usize..6, 1usize..70).prop_flat_map(|(rows, width)| {
            (prop::collection::vec(-3.0f32..5.0, rows * width), vals(width), vals(width))
        }),
        eps in prop_oneof![Just(1e-5f32), Just(1e-3f32), Just(0.1f32)],
        scale in 0.25f32..12.0,
    ) {
        let width = g.len();
        let mut y = vec![f32::NAN; x.len()];
        k::layernorm(&x, &g, &b, eps, scale, &mut y);
        let mut z = x.clone();
        k::layernorm_inplace(&mut z, &g, &b, eps, scale);
        prop_assert_eq!(&y, &z, "in-place variant must be bit-identical");
        for (xr, yr) in x.chunks(width).zip(y.chunks(width)) {
            for (&got, (want, tol)) in yr.iter().zip(layernorm_row64(xr, &g, &b, eps, scale)) {
                check(got, want, tol)?;
            }
        }
    }

    #[test]
    fn gelu_matches_reference(x in prop::collection::vec(-6.0f32..6.0, 0..70)) {
        let mut y = x.clone();
        k::gelu(&mut y);
        for (&xi, &got) in x.iter().zip(&y) {
            let want = gelu64(f64::from(xi));
            check(got, want, REL * want.abs() + 1e-12)?;
        }
    }

    #[test]
    fn softmax_matches_reference(x in prop::collection::vec(-20.0f32..20.0, 1..70)) {
        let mut y = x.clone();
        k::softmax(&mut y);
        let want = softmax64(&x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        for (&got, want) in y.iter().zip(want) {
            check(got, want, REL * want + 1e-12)?;
        }
    }

    #[test]
    fn attention_matches_reference(
        (q, kk, v, l, heads) in (1usize..9, 1usize..5, 1usize..17).prop_flat_map(
            |(l, heads, dh)| {
                let n = l * heads * dh;
                (vals(n), vals(n), vals(n), Just(l), Just(heads))
            }
        ),
        extra_scratch in 0usize..3,
    ) {
        let d = q.len() / l;
        let dh = d / heads;
        let mut scratch = vec![f32::NAN; l + extra_scratch];
        let mut out = vec![f32::NAN; l * d];
        k::attention(&q, &kk, &v, l, heads, &mut scratch, &mut out, k::softmax);
        let scale = 1.0 / (dh as f64).sqrt();
        for i in 0..l {
            for h in 0..heads {
                let off = h * dh;
                let qi = &q[i * d + off..i * d + off + dh];
                let want = attend64(qi, &kk, &v, d, off, dh, scale);
                for (c, (want, tol)) in want.into_iter().enumerate() {
                    check(out[i * d + off + c], want, tol)?;
                }
            }
        }
    }

    #[test]
    fn attention_pool_matches_reference(
        (u, query) in (1usize..9, 1usize..70).prop_flat_map(|(l, d)| (vals(l * d), vals(d))),
    ) {
        let d = query.len();
        let l = u.len() / d;
        let mut scratch = vec![f32::NAN; l];
        let mut out = vec![f32::NAN; d];
        k::attention_pool(&u, &query, &mut scratch, &mut out, k::softmax);
        let want = attend64(&query, &u, &u, d, 0, d, 1.0 / (d as f64).sqrt());
        for (&got, (want, tol)) in out.iter().zip(want) {
            check(got, want, tol)?;
        }
    }

    #[test]
    fn laplace_logits_match_reference(
        (p, gates) in (1usize..70, 1usize..40).prop_flat_map(|(d, n)| (vals(d), vals(n * d))),
    ) {
        let d = p.len();
        let mut out = vec![f32::NAN; gates.len() / d];
        k::laplace_logits(&p, &gates, &mut out);
        for (j, &got) in out.iter().enumerate() {
            let sq: f64 = p
                .iter()
                .zip(&gates[j * d..(j + 1) * d])
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            let want = -sq.sqrt();
            check(got, want, REL * want.abs() + 1e-9)?;
        }
    }

    #[test]
    fn dot_logits_match_reference(
        (p, gates) in (1usize..70, 1usize..40).prop_flat_map(|(d, n)| (vals(d), vals(n * d))),
    ) {
        let d = p.len();
        let mut out = vec![f32::NAN; gates.len() / d];
        k::dot_logits(&p, &gates, &mut out);
        for (j, &got) in out.iter().enumerate() {
            let (want, mag) = dot64(&gates[j * d..(j + 1) * d], &p);
            check(got, want, REL * mag)?;
        }
    }

    #[test]
    fn top_k_masked_matches_reference_on_wide_masks(
        logits in prop::collection::vec(-5.0f32..5.0, 0..=256),
        mask in any::<[u64; 4]>(),
        kk in 0usize..12,
    ) {
        let mut idx = [u32::MAX; 64];
        let mut gate = [0f32; 64];
        let got = k::top_k_masked(&logits, &mask, kk, &mut idx, &mut gate);
        let want = top_k_words(&logits, &mask, kk);
        prop_assert_eq!(&idx[..got], &want[..]);
    }

    #[test]
    fn top_k_masked_matches_reference(
        logits in prop::collection::vec(
            prop_oneof![
                3 => (-3i8..3).prop_map(f32::from),
                3 => -5.0f32..5.0,
                1 => Just(f32::NAN),
            ],
            0..=64,
        ),
        mask in prop_oneof![any::<u64>(), Just(u64::MAX), (0u32..64).prop_map(|b| 1u64 << b)],
        kk in 0usize..70,
    ) {
        let mut idx = [u32::MAX; 64];
        let mut gate = [-7.0f32; 64];
        let got = k::top_k_masked(&logits, &[mask], kk, &mut idx, &mut gate);
        let want = top_k64(&logits, mask, kk);
        prop_assert_eq!(got, want.len());
        prop_assert_eq!(&idx[..got], &want[..]);
        prop_assert!(idx[got..].iter().all(|&i| i == u32::MAX), "idx past k' touched");
        prop_assert!(gate[got..].iter().all(|&g| g == -7.0), "gate past k' touched");
        let chosen: Vec<f64> = want.iter().map(|&j| f64::from(logits[j as usize])).collect();
        if chosen.iter().any(|v| v.is_nan()) {
            prop_assert!(gate[..got].iter().all(|g| g.is_nan()), "NaN logit: gates are NaN");
        } else {
            for (&g, w) in gate[..got].iter().zip(softmax64(&chosen)) {
                check(g, w, REL * w + 1e-12)?;
            }
        }
    }

    #[test]
    fn conv3_at_matches_reference(
        (w, b, u, d, t) in (1usize..20, 1usize..20, 1usize..9).prop_flat_map(|(d, n_out, l)| {
            (vals(n_out * 3 * d), vals(n_out), vals(l * d), Just(d), 0..l)
        }),
    ) {
        let l = u.len() / d;
        let n_out = b.len();
        let mut y = vec![f32::NAN; n_out];
        k::conv3_at(&w, &b, &u, d, t, &mut y);
        // Explicit zero padding: [u_{t-1}; u_t; u_{t+1}] with u_{-1} = u_l = 0.
        let mut window = vec![0.0f32; 3 * d];
        for tap in 0..3 {
            let s = t as isize + tap as isize - 1;
            if (0..l as isize).contains(&s) {
                let s = s as usize;
                window[tap * d..(tap + 1) * d].copy_from_slice(&u[s * d..(s + 1) * d]);
            }
        }
        for (&got, (want, mag)) in y.iter().zip(matvec64(&w, &window, Some(&b), n_out)) {
            check(got, want, REL * mag)?;
        }
    }

    #[test]
    fn axpy_and_add_match_reference(
        (x, y) in (0usize..70).prop_flat_map(|n| (vals(n), vals(n))),
        a in -3.0f32..3.0,
    ) {
        let mut z = y.clone();
        k::axpy(a, &x, &mut z);
        for ((&got, &xi), &yi) in z.iter().zip(&x).zip(&y) {
            let (ax, yi) = (f64::from(a) * f64::from(xi), f64::from(yi));
            check(got, ax + yi, REL_ELEMENTWISE * (ax.abs() + yi.abs()))?;
        }
        let mut z = y.clone();
        k::add(&x, &mut z);
        for ((&got, &xi), &yi) in z.iter().zip(&x).zip(&y) {
            let (xi, yi) = (f64::from(xi), f64::from(yi));
            check(got, xi + yi, REL_ELEMENTWISE * (xi.abs() + yi.abs()))?;
        }
    }
}

// ---------------------------------------------------------------- named cases

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol, "[{i}]: got {g}, want {w}");
    }
}

#[test]
fn matvec_small_by_hand() {
    // [[1, 2, 3], [4, 5, 6]] [1, 0, -1] + [0.5, -0.5]
    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut y = [0.0; 2];
    k::matvec(&w, &[1.0, 0.0, -1.0], Some(&[0.5, -0.5]), &mut y);
    assert_eq!(y, [-1.5, -2.5]);
    k::matvec(&w, &[1.0, 0.0, -1.0], None, &mut y);
    assert_eq!(y, [-2.0, -2.0]);
}

#[test]
fn layernorm_of_1234() {
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let ones = [1.0; 4];
    let zeros = [0.0; 4];
    // mean 2.5, biased var 1.25.
    let s = 1.25f64.sqrt();
    let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
    let mut y = [0.0; 4];
    k::layernorm(&x, &ones, &zeros, 0.0, 1.0, &mut y);
    assert_close(&y, &want, 1e-6);
    // Without eps the pre-scale cancels.
    k::layernorm(&x, &ones, &zeros, 0.0, 8.0, &mut y);
    assert_close(&y, &want, 1e-6);
    // eps, gain and bias: var 1.25 + eps 0.75 = 2.
    let g = [1.0f32, 2.0, -1.0, 0.5];
    let b = [0.0f32, 1.0, 0.0, -1.0];
    let s = 2.0f64.sqrt();
    let want = [
        -1.5 / s,
        2.0 * -0.5 / s + 1.0,
        -(0.5 / s),
        0.5 * 1.5 / s - 1.0,
    ];
    k::layernorm(&x, &g, &b, 0.75, 1.0, &mut y);
    assert_close(&y, &want, 1e-6);
    let mut z = x;
    k::layernorm_inplace(&mut z, &g, &b, 0.75, 1.0);
    assert_eq!(y, z);
    // Two rows are normalised independently.
    let x2 = [1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
    let mut y2 = [0.0; 8];
    k::layernorm(&x2, &ones, &zeros, 0.0, 1.0, &mut y2);
    let s = 1.25f64.sqrt();
    let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
    assert_close(&y2[..4], &want, 1e-6);
    assert_close(&y2[4..], &want, 1e-6);
}

#[test]
fn layernorm_constant_row_gives_bias() {
    let mut x = [3.0f32; 5];
    let b = [1.0, -2.0, 0.0, 4.0, 0.5];
    k::layernorm_inplace(&mut x, &[2.0; 5], &b, 1e-5, 1.0);
    assert_eq!(x, b);
}

#[test]
fn gelu_by_hand() {
    let mut x = [0.0f32, 1.0, -1.0, 10.0, -10.0];
    k::gelu(&mut x);
    assert_eq!(x[0], 0.0);
    assert!((f64::from(x[1]) - 0.841_344_746_068_542_9).abs() < 1e-7);
    assert!((f64::from(x[2]) + 0.158_655_253_931_457_07).abs() < 1e-7);
    assert_eq!(x[3], 10.0);
    // gelu(-10) = -10 * Phi(-10) ~ -7.6e-23: small but with the right sign.
    assert!(x[4] < 0.0 && x[4] > -1e-20, "{}", x[4]);
    assert!((k::erf(1.0) - 0.842_700_8).abs() < 1e-6);
}

#[test]
fn softmax_by_hand() {
    let mut x = [0.3f32; 7];
    k::softmax(&mut x);
    assert_close(&x, &[1.0 / 7.0; 7], 1e-7);
    let mut empty: [f32; 0] = [];
    k::softmax(&mut empty);
    let mut one = [-123.0f32];
    k::softmax(&mut one);
    assert_eq!(one, [1.0]);
    // Subtracting the max keeps large logits finite.
    let mut big = [1000.0f32, 1000.0, f32::NEG_INFINITY];
    k::softmax(&mut big);
    assert_eq!(big, [0.5, 0.5, 0.0]);
    let mut two = [0.0f32, 2.0f32.ln()];
    k::softmax(&mut two);
    assert_close(&two, &[1.0 / 3.0, 2.0 / 3.0], 1e-7);
}

#[test]
fn top_k_ties_go_to_lower_index() {
    let logits = [1.0f32, 3.0, 3.0, 2.0, 3.0];
    let (mut idx, mut gate) = ([9u32; 4], [9.0f32; 4]);
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 2, &mut idx, &mut gate),
        2
    );
    assert_eq!(idx[..2], [1, 2]);
    assert_close(&gate[..2], &[0.5, 0.5], 1e-7);
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 4, &mut idx, &mut gate),
        4
    );
    assert_eq!(idx, [1, 2, 4, 3]);
}

#[test]
fn top_k_mask_excludes_best() {
    let logits = [5.0f32, 1.0, 4.0, 3.0];
    let (mut idx, mut gate) = ([9u32; 4], [9.0f32; 4]);
    assert_eq!(
        k::top_k_masked(&logits, &[0b1110], 2, &mut idx, &mut gate),
        2
    );
    assert_eq!(idx[..2], [2, 3]);
    let e = (-1.0f64).exp();
    assert_close(&gate[..2], &[1.0 / (1.0 + e), e / (1.0 + e)], 1e-7);
}

#[test]
fn top_k_more_than_allowed() {
    let logits = [5.0f32, 1.0, 4.0, 3.0];
    let (mut idx, mut gate) = ([9u32; 4], [9.0f32; 4]);
    assert_eq!(
        k::top_k_masked(&logits, &[0b0101], 5, &mut idx, &mut gate),
        2
    );
    assert_eq!(idx, [0, 2, 9, 9]);
    assert_eq!(gate[2..], [9.0, 9.0]);
    // k = 0 and an empty mask choose nothing.
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 0, &mut idx, &mut gate),
        0
    );
    assert_eq!(k::top_k_masked(&logits, &[0], 3, &mut idx, &mut gate), 0);
}

#[test]
fn top_k_ignores_mask_bits_beyond_n() {
    let logits = [0.5f32, 2.0, 1.0];
    let (mut idx, mut gate) = ([9u32; 8], [9.0f32; 8]);
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 10, &mut idx, &mut gate),
        3
    );
    assert_eq!(idx[..3], [1, 2, 0]);
    assert!((gate[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(
        k::top_k_masked(&logits, &[1 << 10 | 1 << 63], 2, &mut idx, &mut gate),
        0
    );
    assert_eq!(
        k::top_k_masked(&logits, &[1 << 10 | 1], 2, &mut idx, &mut gate),
        1
    );
    assert_eq!((idx[0], gate[0]), (0, 1.0));
    // n = 64 uses every bit of the mask.
    let logits: Vec<f32> = (0..64).map(|j| j as f32).collect();
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 2, &mut idx, &mut gate),
        2
    );
    assert_eq!(idx[..2], [63, 62]);
}

#[test]
fn top_k_nan_ranks_last() {
    let logits = [f32::NAN, 1.0, f32::NEG_INFINITY, 2.0, f32::NAN];
    let (mut idx, mut gate) = ([9u32; 5], [9.0f32; 5]);
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 2, &mut idx, &mut gate),
        2
    );
    assert_eq!(idx[..2], [3, 1]);
    assert_eq!(
        k::top_k_masked(&logits, &[u64::MAX], 5, &mut idx, &mut gate),
        5
    );
    assert_eq!(idx, [3, 1, 2, 0, 4]);
}

#[test]
fn conv3_at_edges_ignore_missing_neighbour() {
    // d = 2, l = 3, one output; tap weights 1 (previous), 10 (current), 100 (next).
    let d = 2;
    let u = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let w = [1.0f32, 1.0, 10.0, 10.0, 100.0, 100.0];
    let b = [0.5f32];
    let mut y = [0.0f32];
    k::conv3_at(&w, &b, &u, d, 0, &mut y);
    assert_eq!(y, [10.0 * 3.0 + 100.0 * 7.0 + 0.5]);
    k::conv3_at(&w, &b, &u, d, 1, &mut y);
    assert_eq!(y, [3.0 + 10.0 * 7.0 + 100.0 * 11.0 + 0.5]);
    k::conv3_at(&w, &b, &u, d, 2, &mut y);
    assert_eq!(y, [7.0 + 10.0 * 11.0 + 0.5]);
    // A single token has neither neighbour.
    k::conv3_at(&w, &b, &u[..2], d, 0, &mut y);
    assert_eq!(y, [10.0 * 3.0 + 0.5]);
}

#[test]
fn attention_single_token_returns_values() {
    let q = [1.0f32, -2.0, 3.0, 0.5];
    let kk = [0.3f32, 0.1, -0.7, 2.0];
    let v = [4.0f32, -1.0, 0.25, 8.0];
    let mut scratch = [0.0f32; 1];
    let mut out = [0.0f32; 4];
    k::attention(&q, &kk, &v, 1, 2, &mut scratch, &mut out, k::softmax);
    assert_eq!(out, v);
    k::attention_pool(&v, &q, &mut scratch, &mut out, k::softmax);
    assert_eq!(out, v);
}

#[test]
fn attention_pool_equal_scores_average() {
    // query orthogonal to every u_l: uniform weights, output is the mean row.
    let u = [1.0f32, 0.0, 3.0, 0.0, -1.0, 0.0];
    let query = [0.0f32, 1.0];
    let mut scratch = [0.0f32; 3];
    let mut out = [9.0f32; 2];
    k::attention_pool(&u, &query, &mut scratch, &mut out, k::softmax);
    assert_close(&out, &[1.0, 0.0], 1e-7);
}

#[test]
fn gate_logits_by_hand() {
    let p = [3.0f32, 4.0];
    let gates = [0.0f32, 0.0, 3.0, 4.0, 1.0, 2.0];
    let mut out = [0.0f32; 3];
    k::laplace_logits(&p, &gates, &mut out);
    assert_close(&out, &[-5.0, 0.0, -8.0f64.sqrt()], 1e-6);
    k::dot_logits(&p, &gates, &mut out);
    assert_eq!(out, [0.0, 25.0, 11.0]);
}
