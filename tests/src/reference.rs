//! An independent, deliberately naive scalar reference of the model's forward
//! pass, written only from the equations in `docs/CHECKPOINT.md`. It is a test
//! oracle for the runtime: plain loops, `f64` accumulation everywhere, the full
//! sequence evaluated for every layer (the expert FFN included) and only then
//! the last token taken, so it shares no shortcut with an optimised runtime.

// Plain indexed loops are the point of this module: they mirror the equations.
#![allow(clippy::needless_range_loop)]

use taskpath_checkpoint::{Checkpoint, Gating, Matrix};

/// Routing decision for one modality of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct RefRoute {
    /// Model modality index.
    pub modality: usize,
    /// Selected experts, in descending logit order (ties: lower index first).
    pub experts: Vec<usize>,
    /// Gate of each selected expert (softmax over the kept logits), same order.
    pub gates: Vec<f64>,
    /// All N mean router logits.
    pub logits: Vec<f64>,
}

/// Result of [`forward`].
#[derive(Clone, Debug, PartialEq)]
pub struct RefOutput {
    /// Head logits (no softmax), `outputs` of the task.
    pub logits: Vec<f32>,
    /// One route per task modality, in model order.
    pub routes: Vec<RefRoute>,
}

// ---------------------------------------------------------------------------
// Scalar functions
// ---------------------------------------------------------------------------

/// The error function, accurate to about 1e-16 absolute (a few ulp).
///
/// For `|x| < 1` it sums the Maclaurin series
/// `erf x = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))` (terms at most 1,
/// so little cancellation); above, it uses `erf x = 1 - erfc x` with the
/// classic continued fraction
/// `erfc x = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))`.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 1.0 {
        erf_series(a)
    } else if a < 6.5 {
        1.0 - erfc_continued_fraction(a)
    } else {
        // erfc(6.5) < 4e-20: below half an ulp of 1.
        1.0
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn erf_series(a: f64) -> f64 {
    // power = (-1)^n a^(2n+1) / n!
    let mut power = a;
    let mut sum = 0.0;
    let mut n = 0u32;
    loop {
        let term = power / f64::from(2 * n + 1);
        sum += term;
        if term.abs() <= 1e-20 * sum.abs() || n > 200 {
            break;
        }
        n += 1;
        power *= -a * a / f64::from(n);
    }
    std::f64::consts::FRAC_2_SQRT_PI * sum
}

fn erfc_continued_fraction(a: f64) -> f64 {
    // Evaluated backwards from a deep truncation; for a >= 1 it has converged
    // below f64 precision well before 400 levels.
    let mut t = a;
    for n in (1..=400u32).rev() {
        t = a + (f64::from(n) * 0.5) / t;
    }
    0.5 * std::f64::consts::FRAC_2_SQRT_PI * (-a * a).exp() / t
}

/// GELU, exact erf form: `x/2 (1 + erf(x / sqrt 2))`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// LayerNorm `(x - mean) / sqrt(var + eps) * g + b`, biased variance.
fn layer_norm(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mut mean = 0.0;
    for &v in x {
        mean += v;
    }
    mean /= n;
    let mut var = 0.0;
    for &v in x {
        var += (v - mean) * (v - mean);
    }
    var /= n;
    let denom = (var + eps).sqrt();
    let mut out = vec![0.0; x.len()];
    for i in 0..x.len() {
        out[i] = (x[i] - mean) / denom * g[i] + b[i];
    }
    out
}

/// Numerically stable softmax.
fn softmax(z: &[f64]) -> Vec<f64> {
    let mut max = f64::NEG_INFINITY;
    for &v in z {
        if v > max {
            max = v;
        }
    }
    let mut e = vec![0.0; z.len()];
    let mut sum = 0.0;
    for i in 0..z.len() {
        e[i] = (z[i] - max).exp();
        sum += e[i];
    }
    for v in &mut e {
        *v /= sum;
    }
    e
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}

// ---------------------------------------------------------------------------
// Linear maps
// ---------------------------------------------------------------------------

/// A matrix in f64, full `[rows, cols]` or a low-rank pair `U [rows, r]`, `V [r, cols]`.
#[derive(Clone, Debug)]
enum Lin {
    Full {
        rows: usize,
        cols: usize,
        w: Vec<f64>,
    },
    LowRank {
        rows: usize,
        rank: usize,
        cols: usize,
        u: Vec<f64>,
        v: Vec<f64>,
    },
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

impl Lin {
    fn from_matrix(m: Matrix<'_>) -> Self {
        match m {
            Matrix::Full(w) => Lin::Full {
                rows: w.shape[0],
                cols: w.shape[1],
                w: to_f64(&w.data),
            },
            Matrix::LowRank(u, v) => Lin::LowRank {
                rows: u.shape[0],
                rank: u.shape[1],
                cols: v.shape[1],
                u: to_f64(&u.data),
                v: to_f64(&v.data),
            },
        }
    }

    /// `W x` (`U (V x)` for a low-rank pair).
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        match self {
            Lin::Full { rows, cols, w } => {
                assert_eq!(x.len(), *cols, "matrix/vector size mismatch");
                let mut y = vec![0.0; *rows];
                for r in 0..*rows {
                    let mut s = 0.0;
                    for c in 0..*cols {
                        s += w[r * cols + c] * x[c];
                    }
                    y[r] = s;
                }
                y
            }
            Lin::LowRank {
                rows,
                rank,
                cols,
                u,
                v,
            } => {
                assert_eq!(x.len(), *cols, "matrix/vector size mismatch");
                let mut t = vec![0.0; *rank];
                for k in 0..*rank {
                    let mut s = 0.0;
                    for c in 0..*cols {
                        s += v[k * cols + c] * x[c];
                    }
                    t[k] = s;
                }
                let mut y = vec![0.0; *rows];
                for r in 0..*rows {
                    let mut s = 0.0;
                    for k in 0..*rank {
                        s += u[r * rank + k] * t[k];
                    }
                    y[r] = s;
                }
                y
            }
        }
    }
}

/// `W x + b`.
#[derive(Clone, Debug)]
struct Affine {
    w: Lin,
    b: Vec<f64>,
}

impl Affine {
    fn load(ck: &Checkpoint, w: &str, b: &str) -> Self {
        Self {
            w: Lin::from_matrix(ck.matrix(w)),
            b: vec64(ck, b),
        }
    }

    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y = self.w.apply(x);
        for i in 0..y.len() {
            y[i] += self.b[i];
        }
        y
    }
}

fn vec64(ck: &Checkpoint, name: &str) -> Vec<f64> {
    to_f64(&ck.tensor(name).data)
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Attention {
    q: Affine,
    k: Affine,
    v: Affine,
    o: Affine,
}

/// Multi-head self-attention over all tokens (no mask), input already LN1-ed.
fn attention(h: &[Vec<f64>], w: &Attention, heads: usize) -> Vec<Vec<f64>> {
    let n_tok = h.len();
    let q: Vec<Vec<f64>> = h.iter().map(|x| w.q.apply(x)).collect();
    let k: Vec<Vec<f64>> = h.iter().map(|x| w.k.apply(x)).collect();
    let v: Vec<Vec<f64>> = h.iter().map(|x| w.v.apply(x)).collect();
    let d = q.first().map_or(0, Vec::len);
    let dh = d / heads;
    let scale = (dh as f64).sqrt();
    let mut out = Vec::with_capacity(n_tok);
    for l in 0..n_tok {
        let mut a = vec![0.0; d];
        for hd in 0..heads {
            let lo = hd * dh;
            let hi = lo + dh;
            let mut scores = vec![0.0; n_tok];
            for m in 0..n_tok {
                scores[m] = dot(&q[l][lo..hi], &k[m][lo..hi]) / scale;
            }
            let s = softmax(&scores);
            for m in 0..n_tok {
                for i in lo..hi {
                    a[i] += s[m] * v[m][i];
                }
            }
        }
        out.push(w.o.apply(&a));
    }
    out
}

/// One router head: attention-pool `u` with `query`, then gate logits for the
/// `n` gate vectors `gate` (`[n, D]` row-major).
fn router_head(u: &[Vec<f64>], query: &[f64], gate: &[f64], gating: Gating) -> Vec<f64> {
    let d = query.len();
    let mut scores = vec![0.0; u.len()];
    for l in 0..u.len() {
        scores[l] = dot(query, &u[l]) / (d as f64).sqrt();
    }
    let s = softmax(&scores);
    let mut p = vec![0.0; d];
    for l in 0..u.len() {
        for i in 0..d {
            p[i] += s[l] * u[l][i];
        }
    }
    let n = gate.len() / d;
    let mut logits = vec![0.0; n];
    for j in 0..n {
        let w = &gate[j * d..(j + 1) * d];
        logits[j] = match gating {
            Gating::Laplace => {
                let mut ss = 0.0;
                for i in 0..d {
                    ss += (p[i] - w[i]) * (p[i] - w[i]);
                }
                -ss.sqrt()
            }
            Gating::Softmax => dot(w, &p),
        };
    }
    logits
}

/// Mean over router heads of their logits.
fn mean_logits(per_head: &[Vec<f64>]) -> Vec<f64> {
    let n = per_head[0].len();
    let mut mean = vec![0.0; n];
    for h in per_head {
        for j in 0..n {
            mean[j] += h[j];
        }
    }
    for v in &mut mean {
        *v /= per_head.len() as f64;
    }
    mean
}

fn allowed_experts(n: usize, mask: u64) -> Vec<usize> {
    (0..n).filter(|&j| (mask >> j) & 1 == 1).collect()
}

/// Top-`k` experts by logit among those `mask` allows (ties: lower index
/// first), with their softmax gates.
fn select_experts(logits: &[f64], k: usize, mask: u64) -> Result<(Vec<usize>, Vec<f64>), String> {
    let mut cand = allowed_experts(logits.len(), mask);
    if cand.len() < k {
        return Err(format!(
            "expert mask {mask:#x} allows {} experts, fewer than top_k = {k}",
            cand.len()
        ));
    }
    // Simple selection: repeatedly take the best remaining candidate; `cand`
    // is in ascending index order and only a strictly greater logit replaces
    // the current best, so ties go to the lower index.
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let mut best = 0;
        for c in 1..cand.len() {
            if logits[cand[c]] > logits[cand[best]] {
                best = c;
            }
        }
        chosen.push(cand.remove(best));
    }
    let kept: Vec<f64> = chosen.iter().map(|&j| logits[j]).collect();
    Ok((chosen, softmax(&kept)))
}

#[derive(Clone, Debug)]
struct ExpertComponent {
    conv: Affine,
    ln_g: Vec<f64>,
    ln_b: Vec<f64>,
    fc1: Affine,
    fc2: Affine,
}

impl ExpertComponent {
    fn load(ck: &Checkpoint, e: usize, c: usize) -> Self {
        let p = format!("expert.{e}.{c}");
        Self {
            conv: Affine::load(ck, &format!("{p}.conv.w"), &format!("{p}.conv.b")),
            ln_g: vec64(ck, &format!("{p}.ln.g")),
            ln_b: vec64(ck, &format!("{p}.ln.b")),
            fc1: Affine::load(ck, &format!("{p}.fc1.w"), &format!("{p}.fc1.b")),
            fc2: Affine::load(ck, &format!("{p}.fc2.w"), &format!("{p}.fc2.b")),
        }
    }
}

/// `conv(u)_l = W [u_{l-1}; u_l; u_{l+1}] + b` with zero padding at both ends.
fn conv1d(u: &[Vec<f64>], conv: &Affine) -> Vec<Vec<f64>> {
    let n_tok = u.len();
    let d = u.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(n_tok);
    for l in 0..n_tok {
        let mut window = vec![0.0; 3 * d];
        for tap in 0..3 {
            // tap 0 = previous token, 1 = current, 2 = next.
            let src = l as isize + tap as isize - 1;
            if src >= 0 && (src as usize) < n_tok {
                for i in 0..d {
                    window[tap * d + i] = u[src as usize][i];
                }
            }
        }
        out.push(conv.apply(&window));
    }
    out
}

/// `E_c(u)_l = fc2(GELU(fc1(LN(u_l + GELU(conv(u)_l)))))` for every token l.
fn expert_component(u: &[Vec<f64>], e: &ExpertComponent, eps: f64) -> Vec<Vec<f64>> {
    let c = conv1d(u, &e.conv);
    let mut out = Vec::with_capacity(u.len());
    for l in 0..u.len() {
        let mut r = vec![0.0; u[l].len()];
        for i in 0..r.len() {
            r[i] = u[l][i] + gelu(c[l][i]);
        }
        let n = layer_norm(&r, &e.ln_g, &e.ln_b, eps);
        let mut h = e.fc1.apply(&n);
        for v in &mut h {
            *v = gelu(*v);
        }
        out.push(e.fc2.apply(&h));
    }
    out
}

// ---------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------

/// The model's forward pass for one sample of task `task`.
///
/// `inputs`: one flat row-major `[tokens * features]` vector per modality of
/// the task, in model order. `masks`: optional allowed-expert bitmask per task
/// modality (bit j = expert j allowed); `None` allows every expert.
pub fn forward(
    ck: &Checkpoint,
    task: usize,
    inputs: &[Vec<f32>],
    masks: Option<&[u64]>,
) -> Result<RefOutput, String> {
    ck.validate()
        .map_err(|e| format!("invalid checkpoint: {e:#}"))?;
    let cfg = &ck.config;
    let Some(tc) = cfg.tasks.get(task) else {
        return Err(format!(
            "task index {task} out of range (model has {} tasks)",
            cfg.tasks.len()
        ));
    };
    let mods = cfg.task_modalities(tc);
    if inputs.len() != mods.len() {
        return Err(format!(
            "task {:?} takes {} inputs, got {}",
            tc.name,
            mods.len(),
            inputs.len()
        ));
    }
    if let Some(m) = masks {
        if m.len() != mods.len() {
            return Err(format!(
                "task {:?} takes {} expert masks, got {}",
                tc.name,
                mods.len(),
                m.len()
            ));
        }
    }
    for (i, &mi) in mods.iter().enumerate() {
        let mc = &cfg.modalities[mi];
        let want = mc.tokens * mc.features;
        if inputs[i].len() != want {
            return Err(format!(
                "input {i} (modality {:?}) has {} values, expected {} ({} tokens x {} features)",
                mc.name,
                inputs[i].len(),
                want,
                mc.tokens,
                mc.features
            ));
        }
        if let Some(m) = masks {
            let allowed = allowed_experts(cfg.experts, m[i]).len();
            if allowed < cfg.top_k {
                return Err(format!(
                    "expert mask {:#x} for modality {:?} allows {allowed} experts, fewer than top_k = {}",
                    m[i], mc.name, cfg.top_k
                ));
            }
        }
    }

    let d = cfg.d_model;
    let eps = f64::from(cfg.ln_eps);
    let stage = tc.stage;
    let mut z: Vec<f64> = Vec::with_capacity(mods.len() * d);
    let mut routes = Vec::with_capacity(mods.len());

    for (i, &mi) in mods.iter().enumerate() {
        let mc = &cfg.modalities[mi];
        let name = &mc.name;
        let (n_tok, n_feat) = (mc.tokens, mc.features);
        let ln = |which: &str| {
            (
                vec64(ck, &format!("blk.{name}.{which}.g")),
                vec64(ck, &format!("blk.{name}.{which}.b")),
            )
        };

        // Encoder + position embedding.
        let enc = Affine::load(ck, &format!("enc.{name}.w"), &format!("enc.{name}.b"));
        let pos = vec64(ck, &format!("enc.{name}.pos"));
        let mut x: Vec<Vec<f64>> = Vec::with_capacity(n_tok);
        for l in 0..n_tok {
            let row = to_f64(&inputs[i][l * n_feat..(l + 1) * n_feat]);
            let mut e = enc.apply(&row);
            for j in 0..d {
                e[j] += pos[l * d + j];
            }
            x.push(e);
        }

        // x = LN0(sqrt(D) x)
        let (g0, b0) = ln("ln0");
        let sqrt_d = (d as f64).sqrt();
        for xl in &mut x {
            let scaled: Vec<f64> = xl.iter().map(|&v| sqrt_d * v).collect();
            *xl = layer_norm(&scaled, &g0, &b0, eps);
        }

        // Attention on LN1(x), then u = LN2(a).
        let (g1, b1) = ln("ln1");
        let h1: Vec<Vec<f64>> = x.iter().map(|xl| layer_norm(xl, &g1, &b1, eps)).collect();
        let proj = |p: &str| {
            Affine::load(
                ck,
                &format!("blk.{name}.attn.{p}.w"),
                &format!("blk.{name}.attn.{p}.b"),
            )
        };
        let attn = Attention {
            q: proj("q"),
            k: proj("k"),
            v: proj("v"),
            o: proj("o"),
        };
        let a = attention(&h1, &attn, cfg.heads);
        let (g2, b2) = ln("ln2");
        let u: Vec<Vec<f64>> = a.iter().map(|al| layer_norm(al, &g2, &b2, eps)).collect();

        // Router heads 0..=stage, mean logits, top-k, gates.
        let mut per_head = Vec::with_capacity(stage + 1);
        for h in 0..=stage {
            let query = vec64(ck, &format!("router.{name}.{h}.query"));
            let gate = vec64(ck, &format!("router.{name}.{h}.gate"));
            per_head.push(router_head(&u, &query, &gate, cfg.gating));
        }
        let logits = mean_logits(&per_head);
        let mask = masks.map_or(u64::MAX, |m| m[i]);
        let (experts, gates) = select_experts(&logits, cfg.top_k, mask)?;

        // Mixture over the full sequence, then LNf on every token.
        let mut mix = vec![vec![0.0; d]; n_tok];
        for (&j, &g) in experts.iter().zip(&gates) {
            let mut sum_c = vec![vec![0.0; d]; n_tok];
            for c in 0..=stage {
                let comp = ExpertComponent::load(ck, j, c);
                let e = expert_component(&u, &comp, eps);
                for l in 0..n_tok {
                    for q in 0..d {
                        sum_c[l][q] += e[l][q];
                    }
                }
            }
            for l in 0..n_tok {
                for q in 0..d {
                    mix[l][q] += g * sum_c[l][q];
                }
            }
        }
        let (gf, bf) = ln("lnf");
        let y: Vec<Vec<f64>> = mix.iter().map(|m| layer_norm(m, &gf, &bf, eps)).collect();

        z.extend_from_slice(&y[n_tok - 1]);
        routes.push(RefRoute {
            modality: mi,
            experts,
            gates,
            logits,
        });
    }

    // Fusion head.
    let t = &tc.name;
    let zn = layer_norm(
        &z,
        &vec64(ck, &format!("head.{t}.ln.g")),
        &vec64(ck, &format!("head.{t}.ln.b")),
        eps,
    );
    let head = Affine::load(ck, &format!("head.{t}.w"), &format!("head.{t}.b"));
    let out = head.apply(&zn);
    Ok(RefOutput {
        logits: out.iter().map(|&v| v as f32).collect(),
        routes,
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn assert_vec_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length: {got:?} vs {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                close(*g, *w, tol),
                "[{i}]: got {g}, want {w} (all: {got:?})"
            );
        }
    }

    fn full(rows: usize, cols: usize, w: &[f64]) -> Lin {
        assert_eq!(w.len(), rows * cols);
        Lin::Full {
            rows,
            cols,
            w: w.to_vec(),
        }
    }

    fn affine(rows: usize, cols: usize, w: &[f64], b: &[f64]) -> Affine {
        Affine {
            w: full(rows, cols, w),
            b: b.to_vec(),
        }
    }

    #[test]
    fn erf_matches_known_values() {
        let cases = [
            (0.0, 0.0),
            (1e-3, 0.0011283787909692365),
            (0.1, 0.1124629160182849),
            (0.3, 0.3286267594591274),
            (0.5, 0.5204998778130465),
            (0.9999999, 0.842700751438961),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (-1.5, -0.9661051464753108),
            (2.7, 0.9998656672600594),
            (2.9999999, 0.9999779094890761),
            (3.0, 0.9999779095030014),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
            (6.5, 1.0),
            (-40.0, -1.0),
        ];
        for (x, want) in cases {
            let got = erf(x);
            // Within 4 ulp (relative), hence also within 1e-15 absolute.
            assert!(
                close(got, want, 4.0 * f64::EPSILON * f64::abs(want)),
                "erf({x}) = {got:e}, want {want:e}, diff {:e}",
                got - want
            );
            assert_eq!(erf(-x), -got, "erf must be odd at {x}");
        }
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert!(close(gelu(1.0), 0.8413447460685429, 1e-15));
        assert!(close(gelu(-1.0), -0.15865525393145707, 1e-15));
        assert!(close(gelu(10.0), 10.0, 1e-12));
        assert!(close(gelu(-10.0), 0.0, 1e-12));
    }

    #[test]
    fn layer_norm_hand_computed() {
        // mean 2.5, biased var 1.25; with eps 0.75 the denominator is sqrt(2).
        let x = [1.0, 2.0, 3.0, 4.0];
        let g = [1.0, 1.0, 2.0, 0.5];
        let b = [0.0, 0.0, 1.0, -1.0];
        let r2 = std::f64::consts::SQRT_2;
        let want = [
            -1.5 / r2,
            -0.5 / r2,
            2.0 * 0.5 / r2 + 1.0,
            0.5 * 1.5 / r2 - 1.0,
        ];
        assert_vec_close(&layer_norm(&x, &g, &b, 0.75), &want, 1e-15);
        // eps = 0: plain standardisation by sqrt(1.25).
        let s = 1.25f64.sqrt();
        let want0 = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        assert_vec_close(&layer_norm(&x, &[1.0; 4], &[0.0; 4], 0.0), &want0, 1e-15);
    }

    #[test]
    fn attention_single_token_is_v_then_o() {
        // One token: every softmax is over one key, so the output is
        // W_o (W_v x + b_v) + b_o whatever Q and K are.
        let x = vec![vec![1.0, 2.0]];
        for heads in [1, 2] {
            let w = Attention {
                q: affine(2, 2, &[3.0, -7.0, 0.5, 9.0], &[1.0, 2.0]),
                k: affine(2, 2, &[-4.0, 2.0, 8.0, 1.0], &[0.3, -5.0]),
                v: affine(2, 2, &[1.0, 2.0, 3.0, 4.0], &[0.5, -0.5]),
                o: affine(2, 2, &[0.0, 1.0, 1.0, 1.0], &[1.0, 0.0]),
            };
            // v = [1+4+0.5, 3+8-0.5] = [5.5, 10.5]; o = [10.5+1, 5.5+10.5] = [11.5, 16].
            let a = attention(&x, &w, heads);
            assert_eq!(a.len(), 1);
            assert_vec_close(&a[0], &[11.5, 16.0], 1e-12);
        }
    }

    #[test]
    fn attention_two_tokens_two_heads_hand_computed() {
        // Identity projections, tokens e0 and e1, D = 2, two heads of width 1:
        // scale sqrt(1) = 1. Token 0, head 0: scores [1, 0] -> a = e/(1+e);
        // head 1: scores [0, 0] -> 0.5. Token 1 symmetric.
        let id = [1.0, 0.0, 0.0, 1.0];
        let w = Attention {
            q: affine(2, 2, &id, &[0.0, 0.0]),
            k: affine(2, 2, &id, &[0.0, 0.0]),
            v: affine(2, 2, &id, &[0.0, 0.0]),
            o: affine(2, 2, &id, &[0.0, 0.0]),
        };
        let x = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let e = 1f64.exp();
        let s = e / (1.0 + e);
        let a = attention(&x, &w, 2);
        assert_vec_close(&a[0], &[s, 0.5], 1e-15);
        assert_vec_close(&a[1], &[0.5, s], 1e-15);
        // One head of width 2: scale sqrt(2); token 0 scores [1/sqrt2, 0].
        let w1 = 1.0 / (1.0 + (-1.0 / 2f64.sqrt()).exp());
        let a = attention(&x, &w, 1);
        assert_vec_close(&a[0], &[w1, 1.0 - w1], 1e-15);
        assert_vec_close(&a[1], &[1.0 - w1, w1], 1e-15);
    }

    #[test]
    fn router_pooling_hand_computed() {
        // query . u / sqrt(2) = [ln 3, 0] -> weights [3/4, 1/4] -> p = [0.75, 0.25].
        let u = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let query = [3f64.ln() * 2f64.sqrt(), 0.0];
        let gate = [1.0, 0.0, 0.0, 1.0, 2.0, -4.0];
        let l = router_head(&u, &query, &gate, Gating::Softmax);
        assert_vec_close(&l, &[0.75, 0.25, 0.5], 1e-15);
        let l = router_head(&u, &query, &gate, Gating::Laplace);
        let want = [
            -(0.25f64 * 0.25 + 0.25 * 0.25).sqrt(),
            -(0.75f64 * 0.75 + 0.75 * 0.75).sqrt(),
            -(1.25f64 * 1.25 + 4.25 * 4.25).sqrt(),
        ];
        assert_vec_close(&l, &want, 1e-15);
    }

    #[test]
    fn gating_hand_computed() {
        // One token: pooling returns it, p = [1, 1].
        let u = vec![vec![1.0, 1.0]];
        let query = [0.7, -0.2];
        // Laplace distances: 0, 5 (3-4-5), 3, 3.
        let gate0 = [1.0, 1.0, 4.0, 5.0, -2.0, 1.0, 1.0, 4.0];
        let l0 = router_head(&u, &query, &gate0, Gating::Laplace);
        assert_vec_close(&l0, &[0.0, -5.0, -3.0, -3.0], 1e-15);
        // Softmax gating on the same vectors: dot products.
        let ls = router_head(&u, &query, &gate0, Gating::Softmax);
        assert_vec_close(&ls, &[2.0, 9.0, -1.0, 5.0], 1e-15);
        let (k, g) = select_experts(&ls, 2, u64::MAX).unwrap();
        assert_eq!(k, vec![1, 3]);
        let e4 = (-4.0f64).exp();
        assert_vec_close(&g, &[1.0 / (1.0 + e4), e4 / (1.0 + e4)], 1e-15);

        // Top-2 with a tie at -3 between experts 2 and 3: lower index wins.
        let (k, g) = select_experts(&l0, 2, u64::MAX).unwrap();
        assert_eq!(k, vec![0, 2]);
        let e3 = (-3.0f64).exp();
        assert_vec_close(&g, &[1.0 / (1.0 + e3), e3 / (1.0 + e3)], 1e-15);
        // Tie order is by index even when the later index comes first in the list.
        let (k, _) = select_experts(&[-3.0, -3.0, -9.0, -3.0], 3, u64::MAX).unwrap();
        assert_eq!(k, vec![0, 1, 3]);

        // Mask excluding the best expert 0.
        let (k, g) = select_experts(&l0, 2, 0b1110).unwrap();
        assert_eq!(k, vec![2, 3]);
        assert_vec_close(&g, &[0.5, 0.5], 1e-15);
        // Mask excluding expert 2 too.
        let (k, _) = select_experts(&l0, 2, 0b1010).unwrap();
        assert_eq!(k, vec![3, 1]);
        // Too restrictive.
        let err = select_experts(&l0, 2, 0b0100).unwrap_err();
        assert!(err.contains("top_k"), "{err}");

        // Mean over two heads.
        let gate1 = [1.0, 3.0, 2.0, 1.0, 1.0, -2.0, 6.0, 1.0];
        let l1 = router_head(&u, &query, &gate1, Gating::Laplace);
        assert_vec_close(&l1, &[-2.0, -1.0, -3.0, -5.0], 1e-15);
        let m = mean_logits(&[l0, l1]);
        assert_vec_close(&m, &[-1.0, -3.0, -3.0, -4.0], 1e-15);
        let (k, _) = select_experts(&m, 2, u64::MAX).unwrap();
        assert_eq!(k, vec![0, 1]);
    }

    #[test]
    fn conv1d_zero_pads_sequence_edges() {
        // D = 1: taps (prev, cur, next) = (10, 100, 1000), bias 0.5.
        let conv = affine(1, 3, &[10.0, 100.0, 1000.0], &[0.5]);
        let u = vec![vec![1.0], vec![2.0], vec![3.0]];
        let c = conv1d(&u, &conv);
        assert_vec_close(&c[0], &[100.0 + 2000.0 + 0.5], 1e-12);
        assert_vec_close(&c[1], &[10.0 + 200.0 + 3000.0 + 0.5], 1e-12);
        assert_vec_close(&c[2], &[20.0 + 300.0 + 0.5], 1e-12);
        // D = 2: column k*D + i is tap k, channel i. Row 0 reads the previous
        // token's channel 0, row 1 the next token's channel 1.
        let mut w = [0.0; 12];
        w[0] = 1.0; // row 0, tap 0, channel 0
        w[6 + 5] = 1.0; // row 1, tap 2, channel 1
        let conv = affine(2, 6, &w, &[0.0, 0.0]);
        let u = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let c = conv1d(&u, &conv);
        assert_vec_close(&c[0], &[0.0, 4.0], 0.0);
        assert_vec_close(&c[1], &[1.0, 0.0], 0.0);
        // A single token sees only itself.
        let conv = affine(1, 3, &[10.0, 100.0, 1000.0], &[0.0]);
        assert_vec_close(&conv1d(&[vec![2.0]], &conv)[0], &[200.0], 0.0);
    }

    #[test]
    fn expert_component_hand_computed() {
        // u = 0, conv bias [1, -1] -> r = [gelu 1, gelu -1]; LN (eps 0) -> [1, -1];
        // identity fc1/fc2 -> [gelu 1, gelu -1].
        let id = [1.0, 0.0, 0.0, 1.0];
        let e = ExpertComponent {
            conv: affine(2, 6, &[7.0; 12], &[1.0, -1.0]),
            ln_g: vec![1.0, 1.0],
            ln_b: vec![0.0, 0.0],
            fc1: affine(2, 2, &id, &[0.0, 0.0]),
            fc2: affine(2, 2, &id, &[0.0, 0.0]),
        };
        let out = expert_component(&[vec![0.0, 0.0]], &e, 0.0);
        assert_vec_close(&out[0], &[0.8413447460685429, -0.15865525393145707], 1e-15);
    }

    #[test]
    fn low_rank_apply_matches_dense() {
        let ck = random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 3);
        let m = ck.matrix("expert.1.1.fc1.w");
        assert!(matches!(m, Matrix::LowRank(..)));
        let (rows, cols) = m.dims();
        let lr = Lin::from_matrix(m);
        let dense = full(rows, cols, &to_f64(&m.dense()));
        let x: Vec<f64> = (0..cols).map(|i| (i as f64 * 0.37).sin()).collect();
        assert_vec_close(&lr.apply(&x), &dense.apply(&x), 1e-5);
    }

    fn small() -> Checkpoint {
        random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 7)
    }

    #[test]
    fn forward_random_checkpoint_all_tasks() {
        let ck = small();
        let mut rng = SplitMix64::new(11);
        for t in 0..ck.config.tasks.len() {
            let inputs = random_inputs(&ck.config, t, &mut rng);
            let out = forward(&ck, t, &inputs, None).unwrap();
            let tc = &ck.config.tasks[t];
            assert_eq!(out.logits.len(), tc.outputs);
            assert!(out.logits.iter().all(|v| v.is_finite()), "{:?}", out.logits);
            assert_eq!(out.routes.len(), tc.modalities.len());
            for (r, &mi) in out.routes.iter().zip(&ck.config.task_modalities(tc)) {
                assert_eq!(r.modality, mi);
                assert_eq!(r.experts.len(), ck.config.top_k);
                assert_eq!(r.logits.len(), ck.config.experts);
                let g: f64 = r.gates.iter().sum();
                assert!(close(g, 1.0, 1e-12));
                for w in r.experts.windows(2) {
                    assert!(r.logits[w[0]] >= r.logits[w[1]]);
                    assert_ne!(w[0], w[1]);
                }
                for j in 0..ck.config.experts {
                    if !r.experts.contains(&j) {
                        assert!(r.logits[j] <= r.logits[*r.experts.last().unwrap()]);
                    }
                }
            }
            // Deterministic.
            assert_eq!(forward(&ck, t, &inputs, None).unwrap(), out);
            // An all-experts mask equals no mask.
            let all = vec![(1u64 << ck.config.experts) - 1; inputs.len()];
            assert_eq!(forward(&ck, t, &inputs, Some(&all)).unwrap(), out);
            // Excluding the chosen best expert reroutes and changes the output.
            let masks: Vec<u64> = out.routes.iter().map(|r| !(1u64 << r.experts[0])).collect();
            let out2 = forward(&ck, t, &inputs, Some(&masks)).unwrap();
            for (r2, r) in out2.routes.iter().zip(&out.routes) {
                assert!(!r2.experts.contains(&r.experts[0]));
                assert_eq!(r2.logits, r.logits);
            }
            assert_ne!(out2.logits, out.logits);
        }
    }

    #[test]
    fn component_one_affects_only_later_stages() {
        let ck = small();
        assert_eq!(ck.config.tasks[0].stage, 0);
        assert_eq!(ck.config.tasks[1].stage, 1);
        let mut rng = SplitMix64::new(5);
        let in0 = random_inputs(&ck.config, 0, &mut rng);
        let in1 = random_inputs(&ck.config, 1, &mut rng);
        let base0 = forward(&ck, 0, &in0, None).unwrap();
        let base1 = forward(&ck, 1, &in1, None).unwrap();

        let mut ck2 = ck.clone();
        for e in 0..ck2.config.experts {
            // The weight may be stored full or as a low-rank pair.
            let w = format!("expert.{e}.1.fc2.w");
            let w = if ck2.tensors.contains_key(&w) {
                w
            } else {
                format!("{w}.u")
            };
            for name in [w, format!("expert.{e}.1.fc2.b")] {
                let t = ck2.tensors.get_mut(&name).expect(&name);
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v += 0.5 * ((i % 7) as f32 - 3.0);
                }
            }
        }
        assert!(ck2.tensors.contains_key("expert.1.1.fc2.w.u"));
        let new0 = forward(&ck2, 0, &in0, None).unwrap();
        let new1 = forward(&ck2, 1, &in1, None).unwrap();
        assert_eq!(new0, base0, "stage-0 task must ignore component 1");
        assert_ne!(
            new1.logits, base1.logits,
            "stage-1 task must use component 1"
        );
        // Component 1 only feeds the experts, not the router.
        assert_eq!(new1.routes, base1.routes);

        // A component-0 change affects both.
        let mut ck3 = ck.clone();
        for e in 0..ck3.config.experts {
            let t = ck3.tensors.get_mut(&format!("expert.{e}.0.fc2.b")).unwrap();
            for (i, v) in t.data.iter_mut().enumerate() {
                *v += 0.5 * ((i % 5) as f32 - 2.0);
            }
        }
        assert_ne!(forward(&ck3, 0, &in0, None).unwrap().logits, base0.logits);
        assert_ne!(forward(&ck3, 1, &in1, None).unwrap().logits, base1.logits);
    }

    #[test]
    fn forward_errors() {
        let ck = small();
        let mut rng = SplitMix64::new(1);
        let inputs = random_inputs(&ck.config, 0, &mut rng);
        // Bad task index.
        let err = forward(&ck, 99, &inputs, None).unwrap_err();
        assert!(err.contains("task index 99"), "{err}");
        // Wrong input count.
        let err = forward(&ck, 0, &inputs[..1], None).unwrap_err();
        assert!(err.contains("takes 2 inputs, got 1"), "{err}");
        // Wrong input length.
        let mut bad = inputs.clone();
        bad[1].pop();
        let err = forward(&ck, 0, &bad, None).unwrap_err();
        assert!(
            err.contains("input 1") && err.contains("expected 21"),
            "{err}"
        );
        // Wrong mask count.
        let err = forward(&ck, 0, &inputs, Some(&[u64::MAX])).unwrap_err();
        assert!(err.contains("masks"), "{err}");
        // Mask allowing a single expert with top_k = 2.
        let err = forward(&ck, 0, &inputs, Some(&[u64::MAX, 0b100])).unwrap_err();
        assert!(err.contains("fewer than top_k = 2"), "{err}");
        // Bits above the expert count do not count as experts.
        let err = forward(&ck, 0, &inputs, Some(&[u64::MAX, 0b1_0000_0001])).unwrap_err();
        assert!(err.contains("allows 1 experts"), "{err}");
        // An invalid checkpoint is an error, not a panic.
        let mut broken = ck.clone();
        broken.tensors.remove("blk.a.ln0.g");
        let err = forward(&broken, 0, &inputs, None).unwrap_err();
        assert!(err.contains("blk.a.ln0.g"), "{err}");
    }
}
