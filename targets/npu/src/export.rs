//! ONNX export of a task's segments (docs/NPU.md).
//!
//! Each dense segment is translated op by op from the task's op program, so
//! the graph computes what the CPU runs; each expert component becomes a
//! graph of its own over the conv window. Shapes are static, the opset is
//! [`OPSET`] and weights are either f32 initializers or, with
//! [`Precision::Int8`], per-output-channel symmetric int8 initializers behind
//! `DequantizeLinear` (weight-only QDQ).

use std::collections::HashMap;

use serde_json::{json, Value};
use taskpath_format::records::blob_kind;
use taskpath_format::weight::{dequantize, i8_row};
use taskpath_format::{GateFn, Op, TensorId, WeightFormat};
use taskpath_runtime::plan::{expert_views, Step as PlanStep};
use taskpath_runtime::{Model, TensorView};

use crate::error::{Error, Result};
use crate::plan::{OpInfo, Port, Segment, SegmentKind, SegmentPlan, Source, Step};
use crate::proto::{self, dtype, Attr, Msg};

/// The ONNX opset the graphs use: the first with `LayerNormalization`, and
/// one that tract-onnx 0.23 and onnxruntime 1.x both run.
pub const OPSET: i64 = 17;

/// Relative bound (`max|a - b| <= bound * max|ref|` per output tensor) of an
/// f32 graph against the CPU runtime's values for the same part.
pub const F32_REL_BOUND: f32 = 1e-5;

/// The bound of an int8 QDQ head graph against the CPU's f32 values
/// (docs/NPU.md). Heads set the loosest bound: a weight-quantized linear
/// layer's error scales with its input's norm, and some heads' logits are
/// small (GSE-MET: 9.5e-2 with onnxruntime on 8 test samples per task).
pub const INT8_REL_BOUND: f32 = 0.25;

/// The bound of an int8 QDQ trunk or expert graph. Measured worst cases:
/// trunks 1.8e-2, experts 2.0e-2 (onnxruntime, 8 samples per task), experts
/// 3.2e-2 (tract, 24 samples per task). Router graphs carry no quantized
/// weight (pooling queries and gate vectors stay f32), so their int8 graph
/// keeps the f32 bound.
pub const INT8_BODY_REL_BOUND: f32 = 5e-2;

/// Weight precision of an exported graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 initializers.
    F32,
    /// int8 per-channel weights behind `DequantizeLinear`.
    Int8,
}

impl Precision {
    /// `f32` / `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
    /// Its relative bound against the CPU f32 values for a graph of `kind`.
    pub fn bound(self, kind: SegmentKind) -> f32 {
        match (self, kind) {
            (Precision::F32, _) | (Precision::Int8, SegmentKind::Router { .. }) => F32_REL_BOUND,
            (Precision::Int8, SegmentKind::Head) => INT8_REL_BOUND,
            (Precision::Int8, _) => INT8_BODY_REL_BOUND,
        }
    }
}

/// `x` as the f64 its shortest decimal form reads as (1e-5, not
/// 9.999999747378752e-6), for the manifest's readers.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// One exported graph.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Segment name, e.g. `trunk.img_rows`.
    pub name: String,
    /// Index of the segment in the plan (`usize::MAX` for a whole-task
    /// graph, [`whole_graph`]).
    pub segment: usize,
    /// Precision of its weights.
    pub precision: Precision,
    /// Serialized `ModelProto`.
    pub bytes: Vec<u8>,
    /// Initializer -> package tensor it comes from (for the manifest).
    pub tensors: Vec<Value>,
}

impl Graph {
    /// File name: `<name>.onnx` or `<name>.int8.onnx`.
    pub fn file_name(&self) -> String {
        match self.precision {
            Precision::F32 => format!("{}.onnx", self.name),
            Precision::Int8 => format!("{}.int8.onnx", self.name),
        }
    }
}

/// Builds one graph.
struct Builder<'m, 'a> {
    model: &'m Model<'a>,
    graph: String,
    precision: Precision,
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
    init_names: Vec<String>,
    tensors: Vec<Value>,
    n: usize,
    /// Initializer of each dense vector already added (tensor id, dims), so a
    /// tensor read twice (an expert two modalities route to) is stored once.
    vectors: HashMap<(u32, Vec<usize>), String>,
    /// Weight value(s) of each matrix already added: `(V, U)` or `(None, W)`.
    matrices: HashMap<u32, (Option<String>, String)>,
    /// Whether a matrix stored quantized in the package was dequantized.
    dequantized: bool,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl<'m, 'a> Builder<'m, 'a> {
    fn new(model: &'m Model<'a>, graph: &str, precision: Precision) -> Self {
        Self {
            model,
            graph: graph.to_string(),
            precision,
            nodes: Vec::new(),
            inits: Vec::new(),
            init_names: Vec::new(),
            tensors: Vec::new(),
            n: 0,
            vectors: HashMap::new(),
            matrices: HashMap::new(),
            dequantized: false,
        }
    }

    fn err(&self, why: impl Into<String>) -> Error {
        Error::Export {
            graph: self.graph.clone(),
            why: why.into(),
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.n += 1;
        format!("{hint}_{}", self.n)
    }

    /// A node with one output; returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let out = self.fresh(&op.to_lowercase());
        let name = format!("n{}_{op}", self.n);
        self.nodes
            .push(proto::node(&name, op, inputs, &[&out], attrs));
        out
    }

    /// A node with `n` outputs; returns their names.
    fn node_n(&mut self, op: &str, inputs: &[&str], n: usize, attrs: &[Attr]) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        let name = format!("n{}_{op}", self.n);
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.nodes
            .push(proto::node(&name, op, inputs, &refs, attrs));
        outs
    }

    fn unique(&self, name: &str) -> String {
        let mut n = name.to_string();
        let mut k = 1;
        while self.init_names.contains(&n) {
            k += 1;
            n = format!("{name}#{k}");
        }
        n
    }

    fn init(&mut self, name: &str, dims: &[usize], dt: i32, raw: &[u8]) -> String {
        let name = self.unique(name);
        self.inits.push(proto::tensor(&name, dims, dt, raw));
        self.init_names.push(name.clone());
        name
    }

    fn const_f32(&mut self, hint: &str, dims: &[usize], v: &[f32]) -> String {
        let name = self.fresh(hint);
        self.init(&name, dims, dtype::FLOAT, &f32_bytes(v))
    }

    fn const_i64(&mut self, hint: &str, v: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(&name, &[v.len()], dtype::INT64, &raw)
    }

    /// Name of tensor `id` in its package.
    fn tensor_name(&self, id: u32) -> String {
        self.model
            .tensor_rec(id)
            .map(|(p, t)| p.str(t.name_off, t.name_len).to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("tensor{id}"))
    }

    fn record(&mut self, id: u32, t: &TensorView<'_>, inits: &[&str]) {
        let fmt = WeightFormat::from_u16(t.format).map_or("unknown", |f| f.name());
        self.tensors.push(json!({
            "initializers": inits,
            "tensor": id,
            "name": self.tensor_name(id),
            "blob": t.blob,
            "format": fmt,
            "layout": if t.is_low_rank() { "low_rank" } else { "dense" },
            "rows": t.rows,
            "cols": t.cols,
            "rank": t.rank,
        }));
    }

    /// A dense f32 vector/matrix tensor as an f32 initializer of shape `dims`.
    fn vector(&mut self, id: u32, dims: &[usize]) -> Result<String> {
        let t = self
            .model
            .tensor(id)
            .ok_or_else(|| self.err(format!("tensor {id} does not exist")))?;
        self.vector_view(id, &t, dims)
    }

    fn vector_view(&mut self, id: u32, t: &TensorView<'_>, dims: &[usize]) -> Result<String> {
        if !t.is_f32() || t.is_low_rank() {
            return Err(self.err(format!(
                "{} must be a dense f32 tensor",
                self.tensor_name(id)
            )));
        }
        if t.a.len() != dims.iter().product::<usize>() {
            return Err(self.err(format!("{} has the wrong size", self.tensor_name(id))));
        }
        if let Some(n) = self.vectors.get(&(id, dims.to_vec())) {
            return Ok(n.clone());
        }
        let name = self.tensor_name(id);
        let n = self.init(&name, dims, dtype::FLOAT, &f32_bytes(t.a));
        self.record(id, t, &[&n]);
        self.vectors.insert((id, dims.to_vec()), n.clone());
        Ok(n)
    }

    /// A `[rows, cols]` weight (f32 initializer, or int8 per-row + DequantizeLinear).
    fn weight(&mut self, name: &str, rows: usize, cols: usize, w: &[f32]) -> (String, Vec<String>) {
        match self.precision {
            Precision::F32 => {
                let n = self.init(name, &[rows, cols], dtype::FLOAT, &f32_bytes(w));
                (n.clone(), vec![n])
            }
            Precision::Int8 => {
                let (q, scales) = quantize_rows(rows, cols, w);
                let qn = self.init(
                    &format!("{name}.q"),
                    &[rows, cols],
                    dtype::INT8,
                    &q.iter().map(|&v| v as u8).collect::<Vec<_>>(),
                );
                let sn = self.init(
                    &format!("{name}.scale"),
                    &[rows],
                    dtype::FLOAT,
                    &f32_bytes(&scales),
                );
                let zn = self.init(
                    &format!("{name}.zero_point"),
                    &[rows],
                    dtype::INT8,
                    &vec![0u8; rows],
                );
                let out = self.node(
                    "DequantizeLinear",
                    &[&qn, &sn, &zn],
                    &[Attr::Int("axis", 0)],
                );
                (out, vec![qn, sn, zn])
            }
        }
    }

    /// `y = x W^T + b` with `W` dense or `U V` (two Gemms, like the CPU).
    fn linear(
        &mut self,
        x: &str,
        id: u32,
        w: &TensorView<'_>,
        bias: Option<u32>,
    ) -> Result<String> {
        let name = self.tensor_name(id);
        let b = match bias {
            Some(b) if b != taskpath_format::NONE => Some(self.vector(b, &[w.rows])?),
            _ => None,
        };
        let gemm = |s: &mut Self, x: &str, wn: &str, b: Option<&str>| {
            let mut ins = vec![x, wn];
            ins.extend(b);
            s.node("Gemm", &ins, &[Attr::Int("transB", 1)])
        };
        let (vn, un) = match self.matrices.get(&id) {
            Some(m) => m.clone(),
            None => {
                let (a, v) = dense_factors(w).map_err(|e| self.err(format!("{name}: {e}")))?;
                self.dequantized |= !w.is_f32();
                let m = if let Some(v) = v {
                    let (vn, mut inits) = self.weight(&format!("{name}.V"), w.rank, w.cols, &v);
                    let (un, more) = self.weight(&format!("{name}.U"), w.rows, w.rank, &a);
                    inits.extend(more);
                    let refs: Vec<&str> = inits.iter().map(String::as_str).collect();
                    self.record(id, w, &refs);
                    (Some(vn), un)
                } else {
                    let (wn, inits) = self.weight(&name, w.rows, w.cols, &a);
                    let refs: Vec<&str> = inits.iter().map(String::as_str).collect();
                    self.record(id, w, &refs);
                    (None, wn)
                };
                self.matrices.insert(id, m.clone());
                m
            }
        };
        Ok(match vn {
            Some(vn) => {
                let t = gemm(self, x, &vn, None);
                gemm(self, &t, &un, b.as_deref())
            }
            None => gemm(self, x, &un, b.as_deref()),
        })
    }

    fn layernorm(&mut self, x: &str, g: &str, b: &str, eps: f32, scale: f32) -> String {
        let x = if scale == 1.0 {
            x.to_string()
        } else {
            let s = self.const_f32("scale", &[], &[scale]);
            self.node("Mul", &[x, &s], &[])
        };
        self.node(
            "LayerNormalization",
            &[&x, g, b],
            &[Attr::Int("axis", -1), Attr::Float("epsilon", eps)],
        )
    }

    /// Exact GELU `x/2 (1 + erf(x / sqrt 2))` (the op itself is opset 20).
    fn gelu(&mut self, x: &str) -> String {
        let c = self.const_f32("inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
        let one = self.const_f32("one", &[], &[1.0]);
        let half = self.const_f32("half", &[], &[0.5]);
        let t = self.node("Mul", &[x, &c], &[]);
        let t = self.node("Erf", &[&t], &[]);
        let t = self.node("Add", &[&t, &one], &[]);
        let t = self.node("Mul", &[x, &t], &[]);
        self.node("Mul", &[&t, &half], &[])
    }

    fn reshape(&mut self, x: &str, dims: [usize; 2]) -> String {
        let s = self.const_i64("shape", &[dims[0] as i64, dims[1] as i64]);
        self.node("Reshape", &[x, &s], &[])
    }

    fn finish(
        self,
        seg: &Segment,
        si: usize,
        outputs: &[(String, [usize; 2])],
        task: &str,
    ) -> Graph {
        let doc = format!(
            "taskpath segment {} of task {task} ({} weights)",
            seg.name,
            self.precision.name()
        );
        self.finish_ports(&seg.name, si, &seg.inputs, &seg.outputs, outputs, task, doc)
    }

    /// The `ModelProto` of graph `name`: declared inputs `inputs`, each of
    /// `outputs` named by the matching `ports` entry (an `Identity` each).
    #[allow(clippy::too_many_arguments)]
    fn finish_ports(
        self,
        name: &str,
        si: usize,
        inputs: &[Port],
        ports: &[Port],
        outputs: &[(String, [usize; 2])],
        task: &str,
        doc: String,
    ) -> Graph {
        let mut nodes = self.nodes;
        for (p, (val, _)) in ports.iter().zip(outputs) {
            nodes.push(proto::node(
                &format!("out_{}", p.name),
                "Identity",
                &[val],
                &[&p.name],
                &[],
            ));
        }
        let ins: Vec<Msg> = inputs
            .iter()
            .map(|p| proto::value_info(&p.name, &p.shape))
            .collect();
        let outs: Vec<Msg> = ports
            .iter()
            .map(|p| proto::value_info(&p.name, &p.shape))
            .collect();
        let meta = vec![
            ("taskpath.segment".to_string(), name.to_string()),
            ("taskpath.task".to_string(), task.to_string()),
            (
                "taskpath.precision".to_string(),
                self.precision.name().to_string(),
            ),
            // `dequantized`: some matrix was stored quantized in the package
            // (the CPU runs it with its quantized kernels).
            (
                "taskpath.package_weights".to_string(),
                if self.dequantized {
                    "dequantized"
                } else {
                    "f32"
                }
                .to_string(),
            ),
        ];
        let bytes = proto::model(name, &doc, &nodes, &self.inits, &ins, &outs, OPSET, &meta);
        Graph {
            name: name.to_string(),
            segment: si,
            precision: self.precision,
            bytes,
            tensors: self.tensors,
        }
    }
}

/// Symmetric per-row int8 of a row-major `[rows, cols]` matrix: the
/// package's own i8row quantisation (`taskpath_format::weight::i8_row`), so
/// a QDQ graph holds the integers and scales an i8row package does.
pub fn quantize_rows(rows: usize, cols: usize, w: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0.0f32; rows];
    for r in 0..rows {
        let out = &mut q[r * cols..(r + 1) * cols];
        scales[r] = i8_row(&w[r * cols..(r + 1) * cols], |c, v| out[c] = v);
    }
    (q, scales)
}

/// The f32 values of a matrix: `(dense, None)` or `(U, Some(V))`, dequantizing
/// packed formats to exactly the values the CPU kernels multiply by.
fn dense_factors(w: &TensorView<'_>) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), String> {
    if w.is_f32() {
        return Ok(if w.is_low_rank() {
            (w.a.to_vec(), Some(w.b.to_vec()))
        } else {
            (w.a.to_vec(), None)
        });
    }
    let fmt = WeightFormat::from_u16(w.format)
        .ok_or_else(|| format!("unknown weight format {}", w.format))?;
    let deq = |rows: usize, cols: usize, raw: &[u8]| {
        let mut out = vec![0.0; rows * cols];
        dequantize(fmt, rows, cols, raw, &mut out).map_err(|e| e.to_string())?;
        Ok::<_, String>(out)
    };
    if w.is_low_rank() {
        Ok((
            deq(w.rows, w.rank, w.raw_a)?,
            Some(deq(w.rank, w.cols, w.raw_b)?),
        ))
    } else {
        Ok((deq(w.rows, w.cols, w.raw_a)?, None))
    }
}

/// Current ONNX value of each slot while translating a segment.
#[derive(Default)]
struct Slots {
    cur: HashMap<u32, (String, [usize; 2])>,
    /// Values written piecewise by `Copy` at `(offset, value, len)`.
    pieces: HashMap<u32, Vec<(usize, String, usize)>>,
}

impl Slots {
    /// The ONNX value of `src` viewed as `shape`: a slot's current value
    /// (its `Copy` pieces concatenated first, reshaped when the view
    /// differs), else the graph input in `inputs` that `src` names.
    fn read(
        &mut self,
        b: &mut Builder<'_, '_>,
        inputs: &[Port],
        src: Source,
        shape: [usize; 2],
    ) -> Result<String> {
        let st = self;
        if let Source::Slot(s) = src {
            if let Some(mut pieces) = st.pieces.remove(&s) {
                pieces.sort_by_key(|p| p.0);
                let mut at = 0;
                for p in &pieces {
                    if p.0 != at {
                        return Err(b.err("a copied value is read before it is fully written"));
                    }
                    at += p.2;
                }
                let names: Vec<&str> = pieces.iter().map(|p| p.1.as_str()).collect();
                let cat = b.node("Concat", &names, &[Attr::Int("axis", 1)]);
                st.cur.insert(s, (cat, [1, at]));
            }
            if let Some((name, have)) = st.cur.get(&s).cloned() {
                if have == shape {
                    return Ok(name);
                }
                if have[0] * have[1] != shape[0] * shape[1] {
                    return Err(b.err(format!("slot {s} read as {shape:?} but holds {have:?}")));
                }
                return Ok(b.reshape(&name, shape));
            }
        }
        let p = inputs
            .iter()
            .find(|p| p.source == src)
            .ok_or_else(|| b.err(format!("{src:?} read before it is written")))?;
        if p.shape != shape {
            return Err(b.err(format!("input {} read with another shape", p.name)));
        }
        Ok(p.name.clone())
    }
}

/// Translates dense op `i` (task-local) of a plan into `b`, its inputs read
/// from `st` or the graph inputs `inputs`, its outputs recorded in `st`.
fn dense_op(
    model: &Model<'_>,
    b: &mut Builder<'_, '_>,
    st: &mut Slots,
    inputs: &[Port],
    i: u32,
    info: &OpInfo,
) -> Result<()> {
    let read = |b: &mut Builder<'_, '_>, st: &mut Slots, src: Source, shape: [usize; 2]| {
        st.read(b, inputs, src, shape)
    };
    let tensor = |b: &Builder<'_, '_>, id: TensorId| {
        model
            .tensor(id.0)
            .ok_or_else(|| b.err(format!("op {i}: tensor {} does not exist", id.0)))
    };
    match info.op {
        Op::Encode {
            out,
            w,
            b: bias,
            pos,
            ..
        } => {
            let (src, shape) = info.reads[0];
            let x = read(b, st, src, shape)?;
            let wv = tensor(b, w)?;
            let pv = tensor(b, pos)?;
            let y = b.linear(&x, w.0, &wv, Some(bias.0))?;
            let pn = b.vector_view(pos.0, &pv, &[pv.rows, pv.cols])?;
            let y = b.node("Add", &[&y, &pn], &[]);
            st.cur.insert(out.0, (y, info.writes[0].1));
        }
        Op::LayerNorm {
            y,
            g,
            b: bias,
            scale,
            eps,
            ..
        } => {
            let (src, shape) = info.reads[0];
            let x = read(b, st, src, shape)?;
            let c = shape[1];
            let gn = b.vector(g.0, &[c])?;
            let bn = b.vector(bias.0, &[c])?;
            let out = b.layernorm(&x, &gn, &bn, eps, scale);
            st.cur.insert(y.0, (out, shape));
        }
        Op::Linear { y, w, b: bias, .. } => {
            let (src, shape) = info.reads[0];
            let x = read(b, st, src, shape)?;
            let wv = tensor(b, w)?;
            let out = b.linear(&x, w.0, &wv, bias.map(|t| t.0))?;
            st.cur.insert(y.0, (out, info.writes[0].1));
        }
        Op::Attention {
            out,
            tokens,
            width,
            heads,
            ..
        } => {
            let (l, d, heads) = (tokens as usize, width as usize, heads as usize);
            if heads == 0 || d % heads != 0 {
                return Err(b.err("heads must divide the width"));
            }
            let dh = d / heads;
            let mut qkv = Vec::new();
            for &(src, shape) in &info.reads {
                qkv.push(read(b, st, src, shape)?);
            }
            let s3 = b.const_i64("shape", &[l as i64, heads as i64, dh as i64]);
            let split = |b: &mut Builder<'_, '_>, x: &str, perm: Vec<i64>| {
                let t = b.node("Reshape", &[x, &s3], &[]);
                b.node("Transpose", &[&t], &[Attr::Ints("perm", perm)])
            };
            let q = split(b, &qkv[0], vec![1, 0, 2]); // [H, L, dh]
            let kt = split(b, &qkv[1], vec![1, 2, 0]); // [H, dh, L]
            let v = split(b, &qkv[2], vec![1, 0, 2]); // [H, L, dh]
            let s = b.node("MatMul", &[&q, &kt], &[]);
            let c = b.const_f32("inv_sqrt_dh", &[], &[1.0 / (dh as f32).sqrt()]);
            let s = b.node("Mul", &[&s, &c], &[]);
            let s = b.node("Softmax", &[&s], &[Attr::Int("axis", -1)]);
            let o = b.node("MatMul", &[&s, &v], &[]);
            let o = b.node("Transpose", &[&o], &[Attr::Ints("perm", vec![1, 0, 2])]);
            let o = b.reshape(&o, [l, d]);
            st.cur.insert(out.0, (o, [l, d]));
        }
        Op::AttnPool { query, out, .. } => {
            let (src, shape) = info.reads[0];
            let d = shape[1];
            let u = read(b, st, src, shape)?;
            let q = b.vector(query.0, &[1, d])?;
            let s = b.node("Gemm", &[&u, &q], &[Attr::Int("transB", 1)]); // [L, 1]
            let c = b.const_f32("inv_sqrt_d", &[], &[1.0 / (d as f32).sqrt()]);
            let s = b.node("Mul", &[&s, &c], &[]);
            let s = b.node("Softmax", &[&s], &[Attr::Int("axis", 0)]);
            let p = b.node("Gemm", &[&s, &u], &[Attr::Int("transA", 1)]); // [1, D]
            st.cur.insert(out.0, (p, [1, d]));
        }
        Op::Gate {
            gate,
            logits,
            accumulate,
            scale,
            function,
            ..
        } => {
            let gv = tensor(b, gate)?;
            let (n, d) = (gv.rows, gv.cols);
            let (src, shape) = info.reads[0];
            let p = read(b, st, src, shape)?;
            // Gate vectors stay f32 in both precisions: top-k routing is
            // the part of the model least tolerant of weight error.
            let g = b.vector(gate.0, &[n, d])?;
            let t = if function == GateFn::Dot {
                b.node("Gemm", &[&p, &g], &[Attr::Int("transB", 1)])
            } else {
                let diff = b.node("Sub", &[&p, &g], &[]); // [N, D]
                let ss = b.node(
                    "ReduceSumSquare",
                    &[&diff],
                    &[Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 0)],
                );
                let dist = b.node("Sqrt", &[&ss], &[]);
                let neg = b.node("Neg", &[&dist], &[]);
                b.reshape(&neg, [1, n])
            };
            let t = if scale == 1.0 {
                t
            } else {
                let c = b.const_f32("router_scale", &[], &[scale]);
                b.node("Mul", &[&t, &c], &[])
            };
            let y = if accumulate {
                let prev = read(b, st, Source::Slot(logits.0), [1, n])?;
                b.node("Add", &[&prev, &t], &[])
            } else {
                t
            };
            st.cur.insert(logits.0, (y, [1, n]));
        }
        Op::Copy {
            src_offset,
            dst,
            dst_offset,
            len,
            ..
        } => {
            let (src, shape) = info.reads[0];
            if src_offset != 0 {
                return Err(b.err(format!(
                    "op {i}: a copy from inside a value is not exported"
                )));
            }
            let x = read(b, st, src, shape)?;
            st.cur.remove(&dst.0);
            st.pieces
                .entry(dst.0)
                .or_default()
                .push((dst_offset as usize, x, len as usize));
        }
        Op::Route { .. } | Op::Moe { .. } => {
            return Err(b.err(format!("op {i}: glue op inside a dense segment")))
        }
        other => {
            return Err(b.err(format!(
                "op {i}: {} has no ONNX export yet (language-model tasks are not segmented)",
                other.name()
            )))
        }
    }
    Ok(())
}

fn dense_graph(
    model: &Model<'_>,
    plan: &SegmentPlan,
    si: usize,
    precision: Precision,
) -> Result<Graph> {
    let seg = &plan.segments[si];
    let mut b = Builder::new(model, &seg.name, precision);
    let mut st = Slots::default();
    for &i in &seg.ops {
        dense_op(
            model,
            &mut b,
            &mut st,
            &seg.inputs,
            i,
            &plan.ops[i as usize],
        )?;
    }
    let mut outs = Vec::new();
    for p in &seg.outputs {
        let v = st.read(&mut b, &seg.inputs, p.source, p.shape)?;
        outs.push((v, p.shape));
    }
    Ok(b.finish(seg, si, &outs, &plan.task_name))
}

impl Builder<'_, '_> {
    /// One expert component over its conv window `x` (`[1, 3D]`, zero rows
    /// past the sequence): `fc2(GELU(fc1(LN(u_t + GELU(conv(x))))))`, the
    /// runtime's `conv_ffn`, before its gate. Returns the `[1, D]` output.
    fn expert_component(&mut self, x: &str, c: &ExpertComponent<'_>) -> Result<String> {
        let (e, ids, eps) = (&c.views, &c.ids, c.eps);
        let d = e.conv_w.rows;
        let h = e.fc1_w.rows;
        if e.conv_w.cols != 3 * d {
            return Err(self.err("conv weight is not [D, 3D]"));
        }
        let hb = self.linear(x, ids[0], &e.conv_w, Some(ids[1]))?;
        let hb = self.gelu(&hb);
        let starts = self.const_i64("starts", &[d as i64]);
        let ends = self.const_i64("ends", &[2 * d as i64]);
        let axes = self.const_i64("axes", &[1]);
        let ut = self.node("Slice", &[x, &starts, &ends, &axes], &[]);
        let hb = self.node("Add", &[&hb, &ut], &[]);
        let g = self.vector(ids[2], &[d])?;
        let bb = self.vector(ids[3], &[d])?;
        let hb = self.layernorm(&hb, &g, &bb, eps, 1.0);
        if e.fc1_w.cols != d || e.fc2_w.rows != d || e.fc2_w.cols != h {
            return Err(self.err("fc1/fc2 shapes do not match the model's widths"));
        }
        let m = self.linear(&hb, ids[4], &e.fc1_w, Some(ids[5]))?;
        let m = self.gelu(&m);
        self.linear(&m, ids[6], &e.fc2_w, Some(ids[7]))
    }
}

/// The tensors of one expert component as the graphs read them.
struct ExpertComponent<'a> {
    views: taskpath_runtime::ExpertTensors<TensorView<'a>>,
    /// Tensor ids: conv w, b; LN g, b; fc1 w, b; fc2 w, b.
    ids: [u32; 8],
    /// LayerNorm epsilon of the group's experts.
    eps: f32,
}

/// Component `component` of expert slot `expert` of expert group `group`.
fn expert_component<'a>(
    model: &Model<'a>,
    group: u32,
    expert: usize,
    component: usize,
    eps: f32,
) -> Option<ExpertComponent<'a>> {
    let rec = model.expert(group, expert, component)?;
    let views = expert_views(model, group, expert, component)?;
    let ids: [u32; 8] = core::array::from_fn(|k| rec.tensor_start + k as u32);
    Some(ExpertComponent { views, ids, eps })
}

/// The graph of one expert component over its conv window: `x [1, 3D] ->
/// y [1, D]`, the component's output before its gate.
fn expert_graph(
    model: &Model<'_>,
    plan: &SegmentPlan,
    si: usize,
    c: &ExpertComponent<'_>,
    precision: Precision,
) -> Result<Graph> {
    let seg = &plan.segments[si];
    let d = c.views.conv_w.rows;
    let mut b = Builder::new(model, &seg.name, precision);
    let y = b.expert_component("x", c)?;
    Ok(b.finish(seg, si, &[(y, [1, d])], &plan.task_name))
}

/// The graph of segment `si` of `plan`.
pub fn segment_graph(
    model: &Model<'_>,
    plan: &SegmentPlan,
    si: usize,
    precision: Precision,
) -> Result<Graph> {
    match plan.segments[si].kind {
        SegmentKind::Expert { expert, component } => {
            let missing = || Error::Export {
                graph: plan.segments[si].name.clone(),
                why: "expert component missing".into(),
            };
            // The Moe step that runs it: its group and its experts' epsilon.
            let (group, eps) = plan
                .ops
                .iter()
                .find_map(|o| match o.step {
                    PlanStep::Moe {
                        group, mask, eps, ..
                    } if mask.contains(expert) => Some((group, eps)),
                    _ => None,
                })
                .ok_or_else(missing)?;
            let c = expert_component(model, group, expert, component, eps).ok_or_else(missing)?;
            expert_graph(model, plan, si, &c, precision)
        }
        _ => dense_graph(model, plan, si, precision),
    }
}

/// The name of a task's whole graph: `<TASK>.whole` (file `<TASK>.whole.onnx`).
pub fn whole_name(task: &str) -> String {
    format!("{task}.whole")
}

/// The routing of one `Route` op in a whole graph: the experts it may pick
/// (its path mask, ascending) and the `[1, experts.len()]` gate vector, zero
/// outside the kept top-k.
struct Gates {
    experts: Vec<usize>,
    gates: String,
}

/// The whole task as ONE dense graph, the form a PyTorch export of the model
/// gives: inputs are the task's inputs (named by modality, `[tokens,
/// features]`), the output `logits` `[1, outputs]` the task's outputs.
///
/// Dense ops are translated as in the segment graphs. Each `Route` becomes
/// `Gather` (the logits of the path mask's experts) -> `TopK` -> `Softmax`
/// over the kept logits -> `ScatterElements` into a zero vector; each `Moe`
/// computes EVERY expert of the mask (every component, over the conv window
/// at its token, as the expert graphs do) and sums them weighted by that
/// gate vector (`MatMul` of the gates with the stacked expert outputs). No
/// control flow depends on the data. The summation order differs from the
/// runtime's (which adds only the kept experts, in top-k order, component by
/// component), so outputs agree to rounding (docs/NPU.md, "--whole").
pub fn whole_graph(model: &Model<'_>, plan: &SegmentPlan, precision: Precision) -> Result<Graph> {
    let name = whole_name(&plan.task_name);
    let mut b = Builder::new(model, &name, precision);
    let info = model.task(plan.task)?;
    let mods: Vec<usize> = info.modalities().collect();
    // The task inputs, with the views the segments read them as.
    let mut inputs: Vec<Port> = Vec::new();
    for p in plan.segments.iter().flat_map(|s| &s.inputs) {
        if let Source::TaskInput(k) = p.source {
            if inputs.iter().any(|q| q.source == p.source) {
                continue;
            }
            let mname = mods
                .get(k)
                .and_then(|&m| model.modality(m))
                .map_or_else(|| format!("x{k}"), |(n, _, _)| n.to_string());
            inputs.push(Port {
                name: mname,
                shape: p.shape,
                source: p.source,
            });
        }
    }
    inputs.sort_by_key(|p| match p.source {
        Source::TaskInput(k) => k,
        _ => usize::MAX,
    });
    let mut st = Slots::default();
    let mut routes: HashMap<u32, Gates> = HashMap::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let i = i as u32;
        match (op.op, op.step) {
            (
                Op::Route { route, .. },
                PlanStep::Route {
                    mask,
                    top_k,
                    logits,
                    ..
                },
            ) => {
                let (src, shape) = op.reads[0];
                let n = logits.len();
                let l = st.read(&mut b, &inputs, src, shape)?;
                let l = b.reshape(&l, [1, n]);
                let experts: Vec<usize> = (0..n).filter(|&j| mask.contains(j)).collect();
                let k = top_k.min(experts.len());
                if k == 0 {
                    return Err(b.err(format!("op {i}: the route keeps no expert")));
                }
                let idx: Vec<i64> = experts.iter().map(|&j| j as i64).collect();
                let idx = b.const_i64("path", &idx);
                let lm = b.node("Gather", &[&l, &idx], &[Attr::Int("axis", 1)]);
                let kc = b.const_i64("k", &[k as i64]);
                // Ties keep the lower index first, as the runtime's top-k.
                let top = b.node_n(
                    "TopK",
                    &[&lm, &kc],
                    2,
                    &[
                        Attr::Int("axis", -1),
                        Attr::Int("largest", 1),
                        Attr::Int("sorted", 1),
                    ],
                );
                let sm = b.node("Softmax", &[&top[0]], &[Attr::Int("axis", -1)]);
                let zeros = b.const_f32("zeros", &[1, experts.len()], &vec![0.0; experts.len()]);
                let gates = b.node(
                    "ScatterElements",
                    &[&zeros, &top[1], &sm],
                    &[Attr::Int("axis", 1)],
                );
                routes.insert(route.0, Gates { experts, gates });
            }
            (
                Op::Moe {
                    u,
                    route,
                    out,
                    token,
                    ..
                },
                PlanStep::Moe {
                    group,
                    mask,
                    components,
                    width: d,
                    eps,
                    ..
                },
            ) => {
                let g = routes
                    .get(&route.0)
                    .ok_or_else(|| b.err(format!("op {i}: no Route op writes its route")))?;
                let (experts, gates) = (g.experts.clone(), g.gates.clone());
                let (_, ushape) = op
                    .reads
                    .iter()
                    .copied()
                    .find(|r| r.0 == Source::Slot(u.0))
                    .ok_or_else(|| b.err(format!("op {i}: Moe does not read u")))?;
                let l = ushape[0];
                let t = token as usize;
                if ushape[1] != d || t >= l {
                    return Err(b.err(format!("op {i}: u is not [L, D] with the token inside")));
                }
                let uu = st.read(&mut b, &inputs, Source::Slot(u.0), ushape)?;
                // The window [u_{t-1}; u_t; u_{t+1}], zero rows past the sequence.
                let axes = b.const_i64("axes", &[0]);
                let mut rows = Vec::new();
                for r in [t as i64 - 1, t as i64, t as i64 + 1] {
                    if r < 0 || r >= l as i64 {
                        rows.push(b.const_f32("zero_row", &[1, d], &vec![0.0; d]));
                    } else {
                        let s0 = b.const_i64("starts", &[r]);
                        let s1 = b.const_i64("ends", &[r + 1]);
                        rows.push(b.node("Slice", &[&uu, &s0, &s1, &axes], &[]));
                    }
                }
                let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
                let win = b.node("Concat", &refs, &[Attr::Int("axis", 1)]); // [1, 3D]
                let mut ys = Vec::new();
                for &j in &experts {
                    if !mask.contains(j) {
                        return Err(b.err(format!("op {i}: expert {j} is outside the Moe's mask")));
                    }
                    let mut y: Option<String> = None;
                    for c in 0..components {
                        let comp = expert_component(model, group, j, c, eps).ok_or_else(|| {
                            b.err(format!("op {i}: expert {j} component {c} missing"))
                        })?;
                        let yc = b.expert_component(&win, &comp)?;
                        y = Some(match y {
                            None => yc,
                            Some(prev) => b.node("Add", &[&prev, &yc], &[]),
                        });
                    }
                    ys.push(y.ok_or_else(|| b.err(format!("op {i}: no components")))?);
                }
                let refs: Vec<&str> = ys.iter().map(String::as_str).collect();
                let stack = b.node("Concat", &refs, &[Attr::Int("axis", 0)]); // [M, D]
                let y = b.node("MatMul", &[&gates, &stack], &[]); // [1, D]
                st.cur.insert(out.0, (y, [1, d]));
            }
            _ => dense_op(model, &mut b, &mut st, &inputs, i, op)?,
        }
    }
    let outputs = [Port {
        name: "logits".into(),
        shape: [1, plan.output.1],
        source: Source::Slot(plan.output.0),
    }];
    let y = st.read(&mut b, &inputs, outputs[0].source, outputs[0].shape)?;
    let doc = format!(
        "taskpath task {} as one dense graph, every path expert computed ({} weights)",
        plan.task_name,
        precision.name()
    );
    let task = plan.task_name.clone();
    Ok(b.finish_ports(
        &name,
        usize::MAX,
        &inputs,
        &outputs,
        &[(y, outputs[0].shape)],
        &task,
        doc,
    ))
}

/// Every graph of a task, in plan order, for each requested precision.
pub fn export_task(
    model: &Model<'_>,
    plan: &SegmentPlan,
    precisions: &[Precision],
) -> Result<Vec<Graph>> {
    let mut out = Vec::new();
    for si in 0..plan.segments.len() {
        for &p in precisions {
            out.push(segment_graph(model, plan, si, p)?);
        }
    }
    Ok(out)
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        blob_kind::SHARED => "trunk",
        blob_kind::ROUTER => "router",
        blob_kind::EXPERT => "expert",
        blob_kind::HEAD => "head",
        _ => "unknown",
    }
}

fn port_json(p: &crate::plan::Port) -> Value {
    let source = match p.source {
        Source::TaskInput(i) => format!("task_input:{i}"),
        Source::Slot(s) => format!("slot:{s}"),
        Source::Window => "moe_window".into(),
    };
    json!({"name": p.name, "shape": p.shape, "dtype": "float32", "source": source})
}

/// The manifest (docs/NPU.md, "Manifest") of an export.
pub fn manifest(
    model: &Model<'_>,
    plan: &SegmentPlan,
    graphs: &[Graph],
    package: Value,
) -> Result<Value> {
    let info = model.task(plan.task)?;
    let mname = |m: usize| model.modality(m).map_or("?", |(n, _, _)| n);
    let mut out_graphs = Vec::new();
    for (si, seg) in plan.segments.iter().enumerate() {
        let mut files = serde_json::Map::new();
        let mut tensors = Value::Null;
        for g in graphs.iter().filter(|g| g.segment == si) {
            files.insert(g.precision.name().into(), json!(g.file_name()));
            if g.precision == Precision::F32 || tensors.is_null() {
                tensors = json!(g.tensors);
            }
        }
        let blobs: Vec<Value> = seg
            .blobs
            .iter()
            .filter_map(|&bi| model.blob(bi))
            .map(|b| {
                let off = model
                    .part(b.part)
                    .and_then(|p| {
                        let local = b.index - p.model().blob_base;
                        p.blob_file_offset(local as usize)
                    })
                    .unwrap_or(0);
                json!({
                    "index": b.index,
                    "package": b.part,
                    "kind": kind_name(b.rec.kind),
                    "file_offset": off,
                    "len": b.rec.len,
                    "checksum": format!("{:#018x}", b.rec.checksum),
                })
            })
            .collect();
        let (kind, extra) = match seg.kind {
            SegmentKind::Trunk { modality } => ("trunk", json!({"modality": mname(modality)})),
            SegmentKind::Router { modality } => (
                "router",
                json!({"modality": mname(modality), "heads": info.stage + 1}),
            ),
            SegmentKind::Expert { expert, component } => {
                ("expert", json!({"expert": expert, "component": component}))
            }
            SegmentKind::Head => ("head", json!({})),
        };
        let mut g = json!({
            "name": seg.name,
            "kind": kind,
            "files": files,
            "ops": seg.ops,
            "inputs": seg.inputs.iter().map(port_json).collect::<Vec<_>>(),
            "outputs": seg.outputs.iter().map(port_json).collect::<Vec<_>>(),
            "blobs": blobs,
            "tensors": tensors,
            "tolerance": {
                "f32": decimal(Precision::F32.bound(seg.kind)),
                "int8": decimal(Precision::Int8.bound(seg.kind)),
            },
        });
        if let (Some(o), Some(e)) = (g.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        out_graphs.push(g);
    }
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|s| match *s {
            Step::Segment(si) => json!({"run": plan.segments[si].name}),
            Step::Route(i) => match (plan.ops[i as usize].op, plan.ops[i as usize].step) {
                (
                    Op::Route {
                        logits,
                        router,
                        route,
                        ..
                    },
                    PlanStep::Route { mask, top_k, .. },
                ) => {
                    json!({"glue": "route", "op": i, "modality": mname(router as usize),
                           "logits": format!("slot:{}", logits.0), "route": format!("slot:{}", route.0),
                           "path_mask": format!("{:#x}", mask.0[0]), "top_k": top_k})
                }
                _ => json!({"glue": "route", "op": i}),
            },
            Step::Moe(i) => match plan.ops[i as usize].op {
                Op::Moe {
                    u,
                    tokens,
                    token,
                    components,
                    route,
                    out,
                    ..
                } => {
                    json!({"glue": "moe", "op": i, "u": format!("slot:{}", u.0),
                           "tokens": tokens, "token": token, "components": components,
                           "route": format!("slot:{}", route.0), "out": format!("slot:{}", out.0)})
                }
                _ => json!({"glue": "moe", "op": i}),
            },
        })
        .collect();
    Ok(json!({
        "format": "taskpath-onnx/1",
        "opset": OPSET,
        "ir_version": proto::IR_VERSION,
        "package": package,
        "task": {
            "name": info.name,
            "index": info.index,
            "stage": info.stage,
            "outputs": info.outputs,
            "modalities": info.modalities().map(|m| {
                let (n, l, f) = model.modality(m).unwrap_or(("?", 0, 0));
                json!({"name": n, "tokens": l, "features": f})
            }).collect::<Vec<_>>(),
            "output": format!("slot:{}", plan.output.0),
        },
        "arch": model.arch(),
        "metadata": model
            .base()
            .meta_entries()
            .map(|(k, v)| (k.to_string(), json!(v.to_string())))
            .collect::<serde_json::Map<String, Value>>(),
        "tolerance": {"metric": "max|onnx - cpu| <= tol * max|cpu| per output",
                       "where": "graphs[].tolerance, by precision"},
        "graphs": out_graphs,
        "steps": steps,
    }))
}
