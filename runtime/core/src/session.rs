//! A session runs one task over a caller-provided arena.
//!
//! `Session::new` checks the task's whole op program against the package —
//! every slot inside the arena, every tensor's shape, every weight on the
//! task's path — so `run` does no allocation and meets no surprise: the same
//! decoding runs again per op, and any inconsistency is still an error, not a panic.

use core::ops::Range;

use taskpath_cpu::f32 as k;
use taskpath_cpu::qmatvec::Kernels;
use taskpath_cpu::quant::WeightFormat;
use taskpath_format::records::{blob_kind, gating, ExpertRec, OpRec};
use taskpath_format::{Opcode, Package, NONE};

use crate::error::{Error, Result};
use crate::model::{BlobView, ExpertTensors, Model, TaskInfo, TensorView};
use crate::residency::{BlobSource, Prefetch};
use crate::trace::{NoTrace, Tracer};

/// What one `run` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Ops executed.
    pub ops: u32,
    /// Expert components evaluated (selected experts x components).
    pub expert_components: u32,
    /// Bytes of weights read.
    pub weight_bytes: usize,
}

/// Options for [`Session::with_options`].
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Check the checksum of every blob on the task's path at creation.
    pub verify_path: bool,
    /// The kernel table; `None` = the best for this CPU (`Kernels::best()`,
    /// which honours `TASKPATH_FORCE_GENERIC=1`). `Some(Kernels::generic())`
    /// forces the portable reference kernels.
    pub kernels: Option<Kernels>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            verify_path: true,
            kernels: None,
        }
    }
}

type R = Range<usize>;

#[derive(Debug)]
enum Step<'a> {
    Encode {
        input: usize,
        y: R,
        w: TensorView<'a>,
        b: TensorView<'a>,
        pos: TensorView<'a>,
        tmp: R,
    },
    LayerNorm {
        x: R,
        y: R,
        g: TensorView<'a>,
        b: TensorView<'a>,
        scale: f32,
    },
    Linear {
        x: R,
        y: R,
        w: TensorView<'a>,
        b: Option<TensorView<'a>>,
        rows: usize,
        tmp: R,
    },
    Attention {
        q: R,
        k: R,
        v: R,
        out: R,
        l: usize,
        heads: usize,
        scratch: R,
    },
    AttnPool {
        u: R,
        query: TensorView<'a>,
        out: R,
        scratch: R,
    },
    Gate {
        p: R,
        gate: TensorView<'a>,
        logits: R,
        acc: bool,
        scale: f32,
        tmp: R,
    },
    Route {
        logits: R,
        modality: u32,
        mask: u64,
        route: R,
    },
    Moe {
        u: R,
        route: R,
        stage: usize,
        token: usize,
        out: R,
        scratch: R,
    },
    Copy {
        src: R,
        dst: R,
    },
}

fn bad(op: u32, why: &'static str) -> Error {
    Error::InvalidProgram { op, why }
}

/// Splits `arena` into disjoint mutable pieces for `ranges`; `None` when two
/// non-empty ranges overlap or one leaves the arena. Empty ranges are free.
fn carve<'s, const N: usize>(arena: &'s mut [f32], ranges: [&R; N]) -> Option<[&'s mut [f32]; N]> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut out: [&'s mut [f32]; N] = core::array::from_fn(|_| <&mut [f32]>::default());
    let mut rest = arena;
    let mut pos = 0usize;
    for &i in &order {
        let r = ranges[i];
        if r.is_empty() {
            continue;
        }
        if r.start < pos || r.end > pos + rest.len() {
            return None;
        }
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(r.start - pos);
        let (mine, tail) = tail.split_at_mut(r.end - r.start);
        out[i] = mine;
        rest = tail;
        pos = r.end;
    }
    Some(out)
}

/// Most components (stages) a session's expert index covers; deeper chains
/// fall back to scanning the expert tables per component.
pub const EXPERT_INDEX: usize = 8;

/// `(expert j, component c) -> position in the chain's expert tables` for
/// the experts of one task's path, built at session creation so that `run`
/// finds each component it fetches without scanning the tables. The packer
/// writes a stage's components at evenly spaced positions (`start + j *
/// stride`), so the index keeps one `(start, stride)` per component (32
/// bytes: the C ABI keeps the whole session in `TP_SESSION_OVERHEAD`), and
/// checks the rule for every path expert; a package that breaks it gets the
/// scan instead, with identical results.
#[derive(Clone, Copy)]
struct ExpertIndex {
    /// Components indexed (`stage + 1`), or 0 when lookups scan.
    n: usize,
    /// Per component: `(position of expert 0, stride)`.
    at: [(u16, u16); EXPERT_INDEX],
}

impl ExpertIndex {
    fn new(model: &Model<'_>, task: &TaskInfo<'_>, path_union: u64) -> Self {
        let scan = Self {
            n: 0,
            at: [(0, 0); EXPERT_INDEX],
        };
        let n = task.stage + 1;
        let experts = (model.hparams().experts as usize).min(64);
        let path: mask_head::Path = mask_head::Path::new(path_union, experts);
        if n > EXPERT_INDEX || path.count == 0 {
            return scan;
        }
        let mut ix = Self { n, ..scan };
        for c in 0..n {
            let (j0, j1) = (path.first, path.second);
            let Some(p0) = model.expert_index(j0, c) else {
                return scan;
            };
            let stride = match j1 {
                None => 0,
                Some(j1) => match model.expert_index(j1, c) {
                    Some(p1) if p1 > p0 && (p1 - p0) % (j1 - j0) == 0 => (p1 - p0) / (j1 - j0),
                    _ => return scan,
                },
            };
            let Some(start) = p0.checked_sub(j0 * stride) else {
                return scan;
            };
            let (Ok(start16), Ok(stride16)) = (u16::try_from(start), u16::try_from(stride)) else {
                return scan;
            };
            for j in (0..experts).filter(|j| path_union & (1 << j) != 0) {
                if model.expert_index(j, c) != Some(start + j * stride) {
                    return scan;
                }
            }
            ix.at[c] = (start16, stride16);
        }
        ix
    }

    fn get(&self, model: &Model<'_>, j: usize, c: usize) -> Option<ExpertRec> {
        if self.n == 0 {
            return model.expert(j, c);
        }
        let (start, stride) = *self.at.get(c).filter(|_| c < self.n)?;
        let e = model.expert_at(usize::from(start) + j * usize::from(stride))?;
        // Off the path, or past the table: the record says which it is.
        (usize::from(e.expert) == j && usize::from(e.component) == c).then_some(e)
    }
}

mod mask_head {
    /// The first two experts of a path mask and how many it has.
    pub(super) struct Path {
        pub count: u32,
        pub first: usize,
        pub second: Option<usize>,
    }
    impl Path {
        pub(super) fn new(mask: u64, experts: usize) -> Self {
            let mut it = (0..experts).filter(|j| mask & (1 << j) != 0);
            let first = it.next();
            let second = it.next();
            Self {
                count: (mask & (u64::MAX >> (64 - experts.max(1)))).count_ones(),
                first: first.unwrap_or(0),
                second,
            }
        }
    }
}

/// A session for one task. Holds the arena for its lifetime; `run` can be
/// called any number of times and never allocates.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    task: TaskInfo<'a>,
    part: Package<'a>,
    arena: &'m mut [f32],
    path_union: u64,
    experts: ExpertIndex,
    source: Option<&'m mut dyn BlobSource>,
    prefetch: Option<&'m mut dyn Prefetch>,
    kernels: Kernels,
}

impl core::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("task", &self.task.name)
            .field("arena_bytes", &(self.arena.len() * 4))
            .field("blob_source", &self.source.is_some())
            .field("prefetch", &self.prefetch.is_some())
            .finish()
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// A session for task `task` (global index) in `arena`, verifying the
    /// path's blob checksums.
    pub fn new(model: &'m Model<'a>, task: usize, arena: &'m mut [u8]) -> Result<Self> {
        Self::with_options(model, task, arena, SessionOptions::default())
    }

    /// [`Session::new`] with options.
    pub fn with_options(
        model: &'m Model<'a>,
        task: usize,
        arena: &'m mut [u8],
        opts: SessionOptions,
    ) -> Result<Self> {
        let task = model.task(task)?;
        let part = model.part(task.part).ok_or(Error::UnknownTask)?;
        if arena.len() < task.arena_bytes {
            return Err(Error::ArenaTooSmall {
                need: task.arena_bytes,
                have: arena.len(),
            });
        }
        let arena: &mut [f32] = bytemuck::try_cast_slice_mut(&mut arena[..task.arena_bytes])
            .map_err(|_| Error::ArenaMisaligned)?;
        let path_union = task
            .modalities()
            .filter_map(|m| model.path_mask(&task, m))
            .fold(0, |a, b| a | b);
        let s = Self {
            model,
            task,
            part,
            arena,
            path_union,
            experts: ExpertIndex::new(model, &task, path_union),
            source: None,
            prefetch: None,
            kernels: opts.kernels.unwrap_or_else(Kernels::best),
        };
        for i in 0..task.rec.program_len {
            s.step(i, true)?;
        }
        let out = s
            .slot(task.rec.output_slot, 0)
            .map_err(|_| bad(0, "output slot"))?;
        if out.len() < task.outputs {
            return Err(bad(0, "output slot smaller than the task's outputs"));
        }
        if opts.verify_path {
            for b in model.path_blobs(&task) {
                model.verify_blob(b.index)?;
            }
        }
        Ok(s)
    }

    /// Fetches expert blobs through `source` (e.g. a [`crate::ResidencyCache`])
    /// instead of reading them in place. Fails when the source cannot hold one
    /// of the task's expert blobs, so a budget too small is an error here, not in `run`.
    pub fn with_blob_source(mut self, source: &'m mut dyn BlobSource) -> Result<Self> {
        for b in self.model.path_blobs(&self.task) {
            if b.rec.kind == blob_kind::EXPERT && !source.can_hold(b.bytes.len()) {
                return Err(Error::BudgetTooSmall {
                    need: b.bytes.len(),
                    have: source.capacity(),
                });
            }
        }
        self.source = Some(source);
        Ok(self)
    }

    /// Tells `prefetch` which expert blobs the next input's router may pick
    /// while the current input is encoded (see [`Prefetch`]).
    pub fn with_prefetch(mut self, prefetch: &'m mut dyn Prefetch) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Installs (`Some`) or removes (`None`) the prefetch hook of a session
    /// already built, replacing any given before: [`Session::with_prefetch`]
    /// for a session that lives behind a handle (the C ABI's
    /// `tp_prefetch_attach`). As with `with_prefetch`, hints are sent whether
    /// or not the session has a blob source.
    pub fn set_prefetch(&mut self, prefetch: Option<&'m mut dyn Prefetch>) {
        self.prefetch = prefetch;
    }

    /// The expert blobs a session hints when it starts input `input`: those
    /// of input `input + 1`'s path mask, components `0..=stage`, in file
    /// (hottest-first) order. Empty for the last input.
    pub fn prefetch_plan(&self, input: usize) -> impl Iterator<Item = BlobView<'a>> + '_ {
        prefetch_plan(self.model, &self.task, input)
    }

    /// The blob source given with [`Session::with_blob_source`], if any.
    pub fn blob_source(&self) -> Option<&dyn BlobSource> {
        self.source.as_deref()
    }

    /// Components per expert that the session's `(expert, component)` index
    /// covers (`stage + 1`), or 0 when it scans the expert tables instead.
    pub fn indexed_components(&self) -> usize {
        self.experts.n
    }

    /// The task this session runs.
    pub fn task(&self) -> &TaskInfo<'a> {
        &self.task
    }

    /// Arena bytes in use (the task's planned size).
    pub fn arena_bytes(&self) -> usize {
        self.arena.len() * 4
    }

    fn slot(&self, id: u32, op: u32) -> Result<R> {
        if id == NONE {
            return Ok(0..0);
        }
        if id >= self.task.rec.slot_count {
            return Err(bad(op, "slot index beyond the task's plan"));
        }
        let s = self
            .part
            .slots()
            .get((self.task.rec.slot_start + id) as usize)
            .ok_or(bad(op, "slot table"))?;
        let r = s.offset as usize..s.offset as usize + s.len as usize;
        if r.end > self.arena.len() {
            return Err(bad(op, "slot outside the arena"));
        }
        Ok(r)
    }

    fn slot_min(&self, id: u32, len: usize, op: u32) -> Result<R> {
        let r = self.slot(id, op)?;
        if r.len() < len {
            return Err(bad(op, "slot too small for the op's shape"));
        }
        Ok(r.start..r.start + len)
    }

    fn tensor(&self, id: u32, rows: usize, cols: usize, op: u32) -> Result<TensorView<'a>> {
        let t = self.model.tensor(id).ok_or(bad(op, "no such tensor"))?;
        if t.rows != rows || t.cols != cols {
            return Err(bad(op, "tensor shape does not match the op"));
        }
        if rows == 1 && t.is_low_rank() {
            return Err(bad(op, "vector stored as low-rank"));
        }
        if !t.is_f32() {
            return Err(bad(
                op,
                "quantized weights are only supported in expert blobs",
            ));
        }
        let blob = self.model.blob(t.blob).ok_or(bad(op, "no such blob"))?;
        if !self.model.on_path(&self.task, &blob.rec) {
            return Err(bad(op, "tensor outside the task's path"));
        }
        Ok(t)
    }

    /// Checks a quantized matrix's byte lengths against its format's layout
    /// and that a kernel can run it here; returns the kernel scratch it needs.
    fn bind(&self, t: &TensorView<'_>, op: u32) -> Result<usize> {
        if t.is_f32() {
            return Ok(0);
        }
        let fmt = WeightFormat::from_u16(t.format).ok_or(Error::UnsupportedFormat {
            format: t.format,
            name: "unknown",
            missing: "this build does not know the format id",
        })?;
        self.kernels
            .kernel(fmt)
            .map_err(|u| Error::UnsupportedFormat {
                format: t.format,
                name: fmt.name(),
                missing: u.missing_feature,
            })?;
        let factors: [(usize, usize, usize); 2] = if t.is_low_rank() {
            [
                (t.rows, t.rank, t.raw_a.len()),
                (t.rank, t.cols, t.raw_b.len()),
            ]
        } else {
            [(t.rows, t.cols, t.raw_a.len()), (0, 0, 0)]
        };
        let mut scratch = 0;
        for (r, c, len) in factors.into_iter().filter(|f| f.0 > 0) {
            if fmt.checked_packed_bytes(r, c) != Some(len) {
                return Err(bad(
                    op,
                    "quantized tensor bytes do not match its format's layout",
                ));
            }
            scratch = scratch.max(fmt.scratch_bytes(c));
        }
        Ok(scratch)
    }

    fn op(&self, i: u32) -> Result<OpRec> {
        self.part
            .program()
            .get((self.task.rec.program_start + i) as usize)
            .ok_or(bad(i, "program range"))
    }

    /// Decodes and checks op `i`. With `plan` (session creation) a `Moe` op
    /// also walks every expert component of the path to bind kernels and size
    /// its scratch; `run` skips that walk, since creation already proved the
    /// scratch slot large enough and the kernels present.
    fn step(&self, i: u32, plan: bool) -> Result<(Opcode, Step<'a>)> {
        let hp = self.model.hparams();
        let (d, n, kk) = (hp.d_model as usize, hp.experts as usize, hp.top_k as usize);
        let o = self.op(i)?;
        let opcode = Opcode::from_u16(o.opcode).ok_or(bad(i, "unknown opcode"))?;
        let lr_tmp = |w: &TensorView<'a>, rows: usize, id: u32| -> Result<R> {
            if w.is_low_rank() {
                self.slot_min(id, rows * w.rank, i)
            } else {
                Ok(0..0)
            }
        };
        let step = match opcode {
            Opcode::Encode => {
                let input = o.a0 as usize;
                let m = self
                    .task
                    .modalities()
                    .nth(input)
                    .ok_or(bad(i, "input index beyond the task's modalities"))?;
                let (_, l, f) = self.model.modality(m).ok_or(bad(i, "modality"))?;
                let w = self.tensor(o.a2, d, f, i)?;
                Step::Encode {
                    input,
                    y: self.slot_min(o.a1, l * d, i)?,
                    b: self.tensor(o.a3, 1, d, i)?,
                    pos: self.tensor(o.a4, l, d, i)?,
                    tmp: lr_tmp(&w, l, o.a5)?,
                    w,
                }
            }
            Opcode::LayerNorm => {
                let g = self.model.tensor(o.a2).ok_or(bad(i, "no such tensor"))?;
                let c = g.cols;
                let rows = o.a5 as usize;
                let (x, y) = (
                    self.slot_min(o.a0, rows * c, i)?,
                    self.slot_min(o.a1, rows * c, i)?,
                );
                if x != y && x.start < y.end && y.start < x.end {
                    return Err(bad(
                        i,
                        "layernorm input and output overlap without being equal",
                    ));
                }
                Step::LayerNorm {
                    x,
                    y,
                    g: self.tensor(o.a2, 1, c, i)?,
                    b: self.tensor(o.a3, 1, c, i)?,
                    scale: f32::from_bits(o.a4),
                }
            }
            Opcode::Linear => {
                let w = self.model.tensor(o.a2).ok_or(bad(i, "no such tensor"))?;
                let (out, inp, rows) = (w.rows, w.cols, o.a4 as usize);
                let w = self.tensor(o.a2, out, inp, i)?;
                let b = if o.a3 == NONE {
                    None
                } else {
                    Some(self.tensor(o.a3, 1, out, i)?)
                };
                Step::Linear {
                    x: self.slot_min(o.a0, rows * inp, i)?,
                    y: self.slot_min(o.a1, rows * out, i)?,
                    tmp: lr_tmp(&w, rows, o.a5)?,
                    w,
                    b,
                    rows,
                }
            }
            Opcode::Attention => {
                let (l, heads) = (o.a4 as usize, o.a5 as usize);
                if heads == 0 || d % heads != 0 {
                    return Err(bad(i, "heads must divide d_model"));
                }
                Step::Attention {
                    q: self.slot_min(o.a0, l * d, i)?,
                    k: self.slot_min(o.a1, l * d, i)?,
                    v: self.slot_min(o.a2, l * d, i)?,
                    out: self.slot_min(o.a3, l * d, i)?,
                    l,
                    heads,
                    scratch: self.slot_min(o.a6, l, i)?,
                }
            }
            Opcode::AttnPool => {
                let l = o.a1 as usize;
                Step::AttnPool {
                    u: self.slot_min(o.a0, l * d, i)?,
                    query: self.tensor(o.a2, 1, d, i)?,
                    out: self.slot_min(o.a3, d, i)?,
                    scratch: self.slot_min(o.a4, l, i)?,
                }
            }
            Opcode::Gate => Step::Gate {
                p: self.slot_min(o.a0, d, i)?,
                gate: self.tensor(o.a1, n, d, i)?,
                logits: self.slot_min(o.a2, n, i)?,
                acc: o.a3 != 0,
                scale: f32::from_bits(o.a4),
                tmp: self.slot_min(o.a5, n, i)?,
            },
            Opcode::Route => {
                let mask = self
                    .model
                    .path_mask(&self.task, o.a1 as usize)
                    .ok_or(bad(i, "route for a modality outside the task"))?;
                Step::Route {
                    logits: self.slot_min(o.a0, n, i)?,
                    modality: o.a1,
                    mask,
                    route: self.slot_min(o.a2, 1 + 2 * kk, i)?,
                }
            }
            Opcode::Moe => {
                let (l, stage, token) = (o.a1 as usize, o.a3 as usize, o.a4 as usize);
                if stage > self.task.stage {
                    return Err(bad(i, "experts beyond the task's stage"));
                }
                if token >= l {
                    return Err(bad(i, "token beyond the sequence"));
                }
                let scratch = if plan {
                    let (mut max_rank, mut q_bytes) = (0, 0);
                    for j in (0..n).filter(|j| self.path_union & (1 << j) != 0) {
                        for c in 0..=stage {
                            let e = self
                                .experts
                                .get(self.model, j, c)
                                .ok_or(bad(i, "missing expert component"))?;
                            for t in [e.conv_w, e.fc1_w, e.fc2_w] {
                                let t = self.model.tensor(t).ok_or(bad(i, "no such tensor"))?;
                                max_rank = max_rank.max(t.rank);
                                q_bytes = q_bytes.max(self.bind(&t, i)?);
                            }
                            for t in [e.conv_b, e.ln_g, e.ln_b, e.fc1_b, e.fc2_b] {
                                let t = self.model.tensor(t).ok_or(bad(i, "no such tensor"))?;
                                if !t.is_f32() || t.is_low_rank() {
                                    return Err(bad(i, "expert vectors must be dense f32"));
                                }
                            }
                        }
                    }
                    let need = moe_scratch(d, hp.ffn_hidden as usize, max_rank, q_bytes);
                    self.slot_min(o.a6, need, i)?
                } else {
                    self.slot(o.a6, i)?
                };
                Step::Moe {
                    u: self.slot_min(o.a0, l * d, i)?,
                    route: self.slot_min(o.a2, 1 + 2 * kk, i)?,
                    stage,
                    token,
                    out: self.slot_min(o.a5, d, i)?,
                    scratch,
                }
            }
            Opcode::Copy => {
                let (src, dst) = (self.slot(o.a0, i)?, self.slot(o.a2, i)?);
                let (so, dof, len) = (o.a1 as usize, o.a3 as usize, o.a4 as usize);
                if so + len > src.len() || dof + len > dst.len() {
                    return Err(bad(i, "copy range outside its slots"));
                }
                Step::Copy {
                    src: src.start + so..src.start + so + len,
                    dst: dst.start + dof..dst.start + dof + len,
                }
            }
        };
        Ok((opcode, step))
    }

    /// Runs the task. `inputs` holds one `[tokens * features]` slice per task
    /// modality in model order; `outputs` receives the logits.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [f32]) -> Result<RunStats> {
        self.run_traced(inputs, outputs, &mut NoTrace)
    }

    /// [`Session::run`] reporting to a tracer.
    pub fn run_traced<T: Tracer>(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [f32],
        tracer: &mut T,
    ) -> Result<RunStats> {
        let n_in = self.task.modality_mask.count_ones() as usize;
        if inputs.len() != n_in {
            return Err(Error::InputCount {
                expected: n_in,
                got: inputs.len(),
            });
        }
        for (index, (m, x)) in self.task.modalities().zip(inputs).enumerate() {
            let (_, l, f) = self.model.modality(m).ok_or(Error::UnknownTask)?;
            if x.len() != l * f {
                return Err(Error::InputShape {
                    index,
                    expected: l * f,
                    got: x.len(),
                });
            }
        }
        if outputs.len() != self.task.outputs {
            return Err(Error::OutputShape {
                expected: self.task.outputs,
                got: outputs.len(),
            });
        }
        let mut stats = RunStats::default();
        for i in 0..self.task.rec.program_len {
            let (opcode, step) = self.step(i, false)?;
            tracer.op_begin(i, opcode);
            self.exec(i, step, inputs, tracer, &mut stats)?;
            tracer.op_end(i, opcode);
            stats.ops += 1;
        }
        let out = self.slot(self.task.rec.output_slot, 0)?;
        outputs.copy_from_slice(&self.arena[out.start..out.start + self.task.outputs]);
        Ok(stats)
    }

    fn exec<T: Tracer>(
        &mut self,
        i: u32,
        step: Step<'a>,
        inputs: &[&[f32]],
        tracer: &mut T,
        stats: &mut RunStats,
    ) -> Result<()> {
        let hp = self.model.hparams();
        let d = hp.d_model as usize;
        let overlap = || bad(i, "slots overlap");
        let mut m = Meter { tracer, stats };
        match step {
            Step::Encode {
                input,
                y,
                w,
                b,
                pos,
                tmp,
            } => {
                if let Some(p) = self.prefetch.as_deref_mut() {
                    for b in prefetch_plan(self.model, &self.task, input) {
                        p.will_need(b.index, b.bytes);
                    }
                }
                [&w, &b, &pos].into_iter().for_each(|t| m.read(t));
                let x = inputs.get(input).ok_or(bad(i, "input"))?;
                let rows = pos.rows;
                let [y, tmp] = carve(self.arena, [&y, &tmp]).ok_or_else(overlap)?;
                linear(&self.kernels, &w, x, Some(b.a), rows, tmp, &mut [], y)
                    .ok_or(bad(i, "linear shapes"))?;
                k::add(pos.a, y);
            }
            Step::LayerNorm { x, y, g, b, scale } => {
                [&g, &b].into_iter().for_each(|t| m.read(t));
                if x == y {
                    k::layernorm_inplace(&mut self.arena[x], g.a, b.a, hp.ln_eps, scale);
                } else {
                    let [xs, ys] = carve(self.arena, [&x, &y]).ok_or_else(overlap)?;
                    k::layernorm(xs, g.a, b.a, hp.ln_eps, scale, ys);
                }
            }
            Step::Linear {
                x,
                y,
                w,
                b,
                rows,
                tmp,
            } => {
                m.read(&w);
                if let Some(b) = &b {
                    m.read(b);
                }
                let [xs, ys, tmp] = carve(self.arena, [&x, &y, &tmp]).ok_or_else(overlap)?;
                linear(
                    &self.kernels,
                    &w,
                    xs,
                    b.map(|b| b.a),
                    rows,
                    tmp,
                    &mut [],
                    ys,
                )
                .ok_or(bad(i, "linear shapes"))?;
            }
            Step::Attention {
                q,
                k: kr,
                v,
                out,
                l,
                heads,
                scratch,
            } => {
                let [q, kr, v, out, s] =
                    carve(self.arena, [&q, &kr, &v, &out, &scratch]).ok_or_else(overlap)?;
                k::attention(q, kr, v, l, heads, s, out);
            }
            Step::AttnPool {
                u,
                query,
                out,
                scratch,
            } => {
                m.read(&query);
                let [u, out, s] = carve(self.arena, [&u, &out, &scratch]).ok_or_else(overlap)?;
                k::attention_pool(u, query.a, s, out);
            }
            Step::Gate {
                p,
                gate,
                logits,
                acc,
                scale,
                tmp,
            } => {
                m.read(&gate);
                let [p, logits, tmp] =
                    carve(self.arena, [&p, &logits, &tmp]).ok_or_else(overlap)?;
                if hp.gating == gating::SOFTMAX {
                    k::dot_logits(p, gate.a, tmp);
                } else {
                    k::laplace_logits(p, gate.a, tmp);
                }
                if !acc {
                    logits.fill(0.0);
                }
                k::axpy(scale, tmp, logits);
            }
            Step::Route {
                logits,
                modality,
                mask,
                route,
            } => {
                let kk = hp.top_k as usize;
                let mut idx = [0u32; 64];
                let mut gate = [0f32; 64];
                let [logits, route] = carve(self.arena, [&logits, &route]).ok_or_else(overlap)?;
                let got = k::top_k_masked(logits, mask, kk, &mut idx[..kk], &mut gate[..kk]);
                m.tracer.route(modality, &idx[..got], &gate[..got]);
                route[0] = got as f32;
                for (j, (&e, &g)) in idx[..got].iter().zip(&gate[..got]).enumerate() {
                    route[1 + j] = e as f32;
                    route[1 + kk + j] = g;
                }
            }
            Step::Moe {
                u,
                route,
                stage,
                token,
                out,
                scratch,
            } => {
                let kk = hp.top_k as usize;
                let (model, path_union, kernels) = (self.model, self.path_union, self.kernels);
                let experts = &self.experts;
                let mut source = self.source.as_deref_mut();
                let [u, route, out, s] =
                    carve(self.arena, [&u, &route, &out, &scratch]).ok_or_else(overlap)?;
                out.fill(0.0);
                let got = route[0] as usize;
                if got > kk {
                    return Err(bad(i, "route slot holds more than top_k experts"));
                }
                for j in 0..got {
                    let (e, g) = (route[1 + j], route[1 + kk + j]);
                    if !(e >= 0.0 && (e as u64) < 64 && path_union & (1 << e as u64) != 0) {
                        return Err(bad(i, "route names an expert outside the task's path"));
                    }
                    for c in 0..=stage {
                        let rec = experts
                            .get(model, e as usize, c)
                            .ok_or(bad(i, "missing expert component"))?;
                        m.tracer.expert_fetch(rec.blob);
                        let bytes = match source.as_deref_mut() {
                            Some(src) => {
                                if m.tracer.wants_costly_events() {
                                    if let Some(hit) = src.holds(rec.blob) {
                                        m.tracer.cache_access(rec.blob, hit);
                                    }
                                }
                                src.fetch(model, rec.blob)?
                            }
                            None => model.blob(rec.blob).ok_or(bad(i, "no such blob"))?.bytes,
                        };
                        expert_component(
                            model, &kernels, i, &rec, bytes, u, token, g, s, out, &mut m,
                        )?;
                        m.stats.expert_components += 1;
                    }
                }
                let _ = d;
            }
            Step::Copy { src, dst } => {
                let [src, dst] = carve(self.arena, [&src, &dst]).ok_or_else(overlap)?;
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }
}

/// See [`Session::prefetch_plan`].
fn prefetch_plan<'s, 'a>(
    model: &'s Model<'a>,
    task: &TaskInfo<'a>,
    input: usize,
) -> impl Iterator<Item = BlobView<'a>> + 's {
    let mask = task
        .modalities()
        .nth(input + 1)
        .and_then(|m| model.path_mask(task, m))
        .unwrap_or(0);
    let stage = task.stage;
    model.expert_blobs().filter(move |b| {
        b.rec.expert < 64
            && mask & (1 << b.rec.expert) != 0
            && usize::from(b.rec.component) <= stage
    })
}

/// Forwards weight reads to the tracer and the run's counters.
struct Meter<'t, T> {
    tracer: &'t mut T,
    stats: &'t mut RunStats,
}

impl<T: Tracer> Meter<'_, T> {
    fn read(&mut self, t: &TensorView<'_>) {
        self.tracer.blob_read(t.blob, t.bytes());
        self.stats.weight_bytes += t.bytes();
    }
}

/// `out += g * fc2(GELU(fc1(LN(u_t + GELU(conv(u)_t)))))` for one component.
#[allow(clippy::too_many_arguments)]
fn expert_component(
    model: &Model<'_>,
    kernels: &Kernels,
    i: u32,
    e: &ExpertRec,
    blob: &[u8],
    u: &[f32],
    token: usize,
    g: f32,
    scratch: &mut [f32],
    out: &mut [f32],
    m: &mut Meter<'_, impl Tracer>,
) -> Result<()> {
    let hp = model.hparams();
    let (d, h) = (hp.d_model as usize, hp.ffn_hidden as usize);
    let x = model
        .expert_tensors(e, blob)
        .ok_or(bad(i, "expert tensor outside its blob"))?;
    for t in x.all() {
        m.read(t);
    }
    let ExpertTensors {
        conv_w: cw,
        conv_b: cb,
        ln_g: lg,
        ln_b: lb,
        fc1_w: w1,
        fc1_b: b1,
        fc2_w: w2,
        fc2_b: b2,
    } = x;
    let (hbuf, rest) = scratch.split_at_mut(d);
    let (mid, rest) = rest.split_at_mut(h);
    let (obuf, rest) = rest.split_at_mut(d);
    let (cat, rest) = rest.split_at_mut(3 * d);
    let r = cw.rank.max(w1.rank).max(w2.rank);
    if rest.len() < r {
        return Err(bad(i, "scratch too small for an expert's rank"));
    }
    let (tmp, rest) = rest.split_at_mut(r);
    let q: &mut [u8] = bytemuck::cast_slice_mut(rest);
    if cw.is_f32() && !cw.is_low_rank() {
        k::conv3_at(cw.a, cb.a, u, d, token, hbuf);
    } else {
        // [u_{t-1}; u_t; u_{t+1}] with zero padding, then one product.
        let l = u.len() / d;
        for (tap, dst) in cat.chunks_exact_mut(d).enumerate() {
            match (token + tap).checked_sub(1).filter(|&s| s < l) {
                Some(s) => dst.copy_from_slice(&u[s * d..(s + 1) * d]),
                None => dst.fill(0.0),
            }
        }
        linear(kernels, &cw, cat, Some(cb.a), 1, tmp, q, hbuf)
            .ok_or(bad(i, "expert kernel scratch"))?;
    }
    k::gelu(hbuf);
    k::add(&u[token * d..(token + 1) * d], hbuf);
    k::layernorm_inplace(hbuf, lg.a, lb.a, hp.ln_eps, 1.0);
    linear(kernels, &w1, hbuf, Some(b1.a), 1, tmp, q, mid)
        .ok_or(bad(i, "expert kernel scratch"))?;
    k::gelu(mid);
    linear(kernels, &w2, mid, Some(b2.a), 1, tmp, q, obuf)
        .ok_or(bad(i, "expert kernel scratch"))?;
    k::axpy(g, obuf, out);
    Ok(())
}

/// Scratch (f32 elements) of a `Moe` op: model width `d`, FFN width `h`, the
/// largest factor rank `r` and kernel scratch bytes `q` of its experts. The
/// packer plans exactly this.
pub fn moe_scratch(d: usize, h: usize, r: usize, q: usize) -> usize {
    5 * d + h + r + q.div_ceil(4)
}

/// `y = W x + b` over `rows` rows, through `tmp` for a low-rank `W = U V`
/// and `q` as kernel scratch for quantized formats. `None` when a buffer is
/// too small or no kernel serves the format (both ruled out at session creation).
/// Public so that executors outside the session (the NPU segment executor's
/// CPU path) compute exactly what a session computes.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    kernels: &Kernels,
    w: &TensorView<'_>,
    x: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    tmp: &mut [f32],
    q: &mut [u8],
    y: &mut [f32],
) -> Option<()> {
    let x = x.get(..rows * w.cols)?;
    let y = y.get_mut(..rows * w.rows)?;
    if w.is_f32() {
        if w.is_low_rank() {
            let tmp = tmp.get_mut(..rows * w.rank)?;
            k::matmul_rows(w.b, x, None, rows, tmp);
            k::matmul_rows(w.a, tmp, b, rows, y);
        } else {
            k::matmul_rows(w.a, x, b, rows, y);
        }
        return Some(());
    }
    let fmt = WeightFormat::from_u16(w.format)?;
    let kern = kernels.kernel(fmt).ok()?;
    if w.is_low_rank() {
        let tmp = tmp.get_mut(..rows * w.rank)?;
        if q.len() < fmt.scratch_bytes(w.cols).max(fmt.scratch_bytes(w.rank)) {
            return None;
        }
        kern.run_batch(w.rank, w.cols, w.raw_b, rows, x, None, tmp, q);
        kern.run_batch(w.rows, w.rank, w.raw_a, rows, tmp, b, y, q);
    } else {
        if q.len() < fmt.scratch_bytes(w.cols) {
            return None;
        }
        kern.run_batch(w.rows, w.cols, w.raw_a, rows, x, b, y, q);
    }
    Some(())
}
