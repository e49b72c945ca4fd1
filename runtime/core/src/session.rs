//! A session runs one task over a caller-provided arena on the CPU.
//!
//! `Session::new` builds the task's [`Plan`] at the head of the arena (every
//! op decoded and checked once, every slot, tensor and expert resolved),
//! binds a kernel to every quantized expert matrix of the path and verifies
//! the path's checksums. `run` then executes the plan's steps through the
//! shared op definitions ([`crate::exec`]) with the CPU primitives below: no
//! decoding, no allocation, and any inconsistency is still an error, not a panic.

use core::mem::{align_of, size_of};

use taskpath_cpu::qmatvec::Kernels;
use taskpath_format::records::blob_kind;
#[cfg(feature = "decoder")]
use taskpath_format::MAX_EXPERTS;
use taskpath_format::{ExpertMask, Op};

use crate::cpu::CpuPrims;
use crate::error::{Error, Result};
use crate::exec::{run_step, ExpertSource, Meter, RunCtx};
use crate::model::{BlobView, ExpertTensors, Model, TaskInfo, TensorView};
use crate::plan::{Plan, PlanStorage, Step, SLOTS_ALIGN};
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

fn bad(op: u32, why: &'static str) -> Error {
    Error::InvalidProgram { op, why }
}

/// Splits `n` default-initialised `T`s off the front of `bytes`, after
/// padding to `T`'s alignment; `None` when they do not fit.
fn take<T: Copy + Default>(bytes: &mut [u8], n: usize) -> Option<(&mut [T], &mut [u8])> {
    let pad = bytes.as_ptr().align_offset(align_of::<T>());
    let end = size_of::<T>().checked_mul(n)?.checked_add(pad)?;
    if pad == usize::MAX || end > bytes.len() {
        return None;
    }
    let (head, rest) = bytes.split_at_mut(end);
    let ptr = head[pad..].as_mut_ptr().cast::<T>();
    // SAFETY: `head[pad..]` is `n * size_of::<T>()` bytes borrowed
    // exclusively for 'm and `ptr` is aligned for `T` (`align_offset`).
    // Every element is written with a valid `T` before the slice is made,
    // so the slice only ever holds initialised values; `T: Copy` has no
    // drop glue, so overwriting the bytes drops nothing, and the bytes are
    // never read as `u8` again while the slice lives (it borrows them).
    let slice = unsafe {
        for i in 0..n {
            ptr.add(i).write(T::default());
        }
        core::slice::from_raw_parts_mut(ptr, n)
    };
    Some((slice, rest))
}

/// Lays out a task's arena: plan storage at the head, then the slots region
/// (16-byte aligned, `slot_bytes` long).
fn layout<'m, 'a>(
    arena: &'m mut [u8],
    task: &TaskInfo<'a>,
) -> Option<(PlanStorage<'m, 'a>, &'m mut [f32])> {
    let (n_steps, n_tensors, n_slots) = crate::plan::storage_counts(&task.rec);
    let (steps, rest) = take(arena, n_steps)?;
    let (tensors, rest) = take(rest, n_tensors)?;
    let (slots, rest) = take(rest, n_slots)?;
    let pad = rest.as_ptr().align_offset(SLOTS_ALIGN);
    let region = rest.get_mut(pad..pad.checked_add(task.slot_bytes)?)?;
    let region: &mut [f32] = bytemuck::try_cast_slice_mut(region).ok()?;
    Some((
        PlanStorage {
            steps,
            tensors,
            slots,
        },
        region,
    ))
}

/// A session for one task. Holds the arena for its lifetime; `run` can be
/// called any number of times and never allocates.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    plan: Plan<'m, 'a>,
    /// Position of the next token (token-stream tasks).
    pos: usize,
    slots: &'m mut [f32],
    source: Option<&'m mut dyn BlobSource>,
    prefetch: Option<&'m mut dyn Prefetch>,
    #[cfg(feature = "std")]
    pool: Option<&'m crate::pool::ThreadPool>,
    kernels: Kernels,
    /// Experts per token that speculative next-layer prefetch hints (0: off).
    #[cfg(feature = "decoder")]
    prefetch_topk: usize,
}

impl core::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("task", &self.plan.task().name)
            .field("arena_bytes", &self.arena_bytes())
            .field("blob_source", &self.source.is_some())
            .field("prefetch", &self.prefetch.is_some())
            .finish()
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// A session for task `task` (global index) in `arena` (at least the
    /// task's [`TaskInfo::arena_bytes`], any alignment), verifying the
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
        let info = model.task(task)?;
        if arena.len() < info.arena_bytes {
            return Err(Error::ArenaTooSmall {
                need: info.arena_bytes,
                have: arena.len(),
            });
        }
        let (storage, slots) = layout(arena, &info).ok_or(Error::ArenaTooSmall {
            need: info.arena_bytes,
            have: 0,
        })?;
        let plan = Plan::build(model, task, storage)?;
        let kernels = opts.kernels.unwrap_or_else(Kernels::best);
        for fmt in plan.formats() {
            kernels.kernel(fmt).map_err(|u| Error::UnsupportedFormat {
                format: fmt.id(),
                name: fmt.name(),
                missing: u.missing_feature,
            })?;
        }
        if opts.verify_path {
            for b in (0..model.blob_count() as u32).filter_map(|i| model.blob(i)) {
                if plan.on_path(&b) {
                    model.verify_blob(b.index)?;
                }
            }
        }
        let mut s = Self {
            model,
            plan,
            pos: 0,
            slots,
            source: None,
            prefetch: None,
            #[cfg(feature = "std")]
            pool: None,
            kernels,
            #[cfg(feature = "decoder")]
            prefetch_topk: 0,
        };
        s.reset();
        Ok(s)
    }

    /// Clears the task's state slots (a KV cache): the next run starts as
    /// the first did. Scratch needs no clearing; FLAME tasks have no state.
    pub fn reset(&mut self) {
        self.pos = 0;
        let st = self.plan.state();
        if let Some(s) = self.slots.get_mut(st.range()) {
            s.fill(0.0);
        }
    }

    /// Fetches expert blobs through `source` (e.g. a [`crate::ResidencyCache`])
    /// instead of reading them in place. Fails when the source cannot hold one
    /// of the task's expert blobs, so a budget too small is an error here, not in `run`.
    pub fn with_blob_source(mut self, source: &'m mut dyn BlobSource) -> Result<Self> {
        let blobs = (0..self.model.blob_count() as u32).filter_map(|i| self.model.blob(i));
        for b in blobs.filter(|b| self.plan.on_path(b)) {
            if b.rec.kind == blob_kind::EXPERT && !source.can_hold(b.bytes.len()) {
                return Err(Error::BudgetTooSmall {
                    need: b.bytes.len(),
                    have: source.capacity(),
                });
            }
        }
        // A token's experts of one layer are used together: a budget that
        // cannot hold them re-reads the layer's experts for every token.
        #[cfg(feature = "decoder")]
        {
            let need = self.layer_expert_budget();
            if source.budget() < need {
                return Err(Error::BudgetTooSmall {
                    need,
                    have: source.budget(),
                });
            }
        }
        self.source = Some(source);
        Ok(self)
    }

    /// Splits the session's matrix products across `pool`'s threads (its
    /// workers' scratch is sized for this task here, so runs allocate
    /// nothing). Outputs are bit-identical to a session without a pool.
    #[cfg(feature = "std")]
    pub fn with_pool(mut self, pool: &'m crate::pool::ThreadPool) -> Self {
        pool.reserve_scratch(self.plan.max_kernel_scratch());
        self.pool = Some(pool);
        self
    }

    /// Tells `prefetch`, as each input starts, which expert blobs the next
    /// input's router may pick (see [`Prefetch`]).
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

    /// Speculative next-layer prefetch for token-stream tasks: once an MoE
    /// layer has routed its tokens, the next MoE layer's router is applied to
    /// this layer's router input (the first MoE layer's, to the token
    /// embeddings), and the `k` experts it scores highest for each token of
    /// the step, within the task's path, are sent to the prefetch hook
    /// ([`Session::with_prefetch`]) unless the blob source already holds
    /// them; each prediction is also reported to the tracer
    /// ([`Tracer::expert_predicted`]). The reads then overlap this layer's
    /// expert work and the next layer's attention. `k = 0` (the default)
    /// turns it off; `k` above the router's experts predicts them all.
    /// Hints only: outputs are bit-identical. Allocates nothing.
    #[cfg(feature = "decoder")]
    pub fn with_prefetch_topk(mut self, k: usize) -> Self {
        self.prefetch_topk = k;
        self
    }

    /// [`Model::layer_expert_budget`] of this session's task: the smallest
    /// expert budget [`Session::with_blob_source`] accepts for it.
    #[cfg(feature = "decoder")]
    pub fn layer_expert_budget(&self) -> usize {
        self.model.layer_expert_budget(self.plan.task())
    }

    /// The expert blobs a session hints when it starts input `input`: those
    /// its `Moe` ops for input `input + 1` may run (the path mask of that
    /// router, components up to the op's), in file (hottest-first) order.
    /// Empty for the last input.
    pub fn prefetch_plan(&self, input: usize) -> impl Iterator<Item = BlobView<'a>> + '_ {
        prefetch_plan(self.model, &self.plan, input)
    }

    /// The blob source given with [`Session::with_blob_source`], if any.
    pub fn blob_source(&self) -> Option<&dyn BlobSource> {
        self.source.as_deref()
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// The task this session runs.
    pub fn task(&self) -> &TaskInfo<'a> {
        self.plan.task()
    }

    /// The task's plan.
    pub fn plan(&self) -> &Plan<'m, 'a> {
        &self.plan
    }

    /// Arena bytes in use (the task's [`TaskInfo::arena_bytes`]).
    pub fn arena_bytes(&self) -> usize {
        self.plan.task().arena_bytes
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
        if self.plan.tokens().is_some() {
            return Err(Error::TaskKind {
                why: "a token-stream (language model) task runs with Session::step",
            });
        }
        let task = *self.plan.task();
        let n_in = task.modality_mask.count_ones() as usize;
        if inputs.len() != n_in {
            return Err(Error::InputCount {
                expected: n_in,
                got: inputs.len(),
            });
        }
        for (index, (m, x)) in task.modalities().zip(inputs).enumerate() {
            let (_, l, f) = self.model.modality(m).ok_or(Error::UnknownTask)?;
            if x.len() != l * f {
                return Err(Error::InputShape {
                    index,
                    expected: l * f,
                    got: x.len(),
                });
            }
        }
        if outputs.len() != task.outputs {
            return Err(Error::OutputShape {
                expected: task.outputs,
                got: outputs.len(),
            });
        }
        let mut stats = RunStats::default();
        let Self {
            model,
            plan,
            slots,
            source,
            prefetch,
            kernels,
            #[cfg(feature = "std")]
            pool,
            ..
        } = self;
        let prims = CpuPrims::new(slots, inputs, kernels);
        #[cfg(feature = "std")]
        let prims = prims.with_pool(*pool);
        let mut prims = prims;
        let ctx = RunCtx::default();
        let mut experts = CpuExperts {
            model,
            plan,
            source: source.as_deref_mut(),
        };
        for (i, ps) in plan.steps().iter().enumerate() {
            let (Some(op), step) = (ps.op, &ps.step) else {
                return Err(bad(i as u32, "empty plan step"));
            };
            tracer.op_begin(i as u32, &op);
            if let (Step::Encode { input, .. }, Some(p)) = (step, prefetch.as_deref_mut()) {
                for b in prefetch_plan(model, plan, *input) {
                    p.will_need(b.index, b.bytes);
                }
            }
            let mut m = Meter {
                tracer: &mut *tracer,
                stats: &mut stats,
            };
            run_step(
                i as u32,
                step,
                &ctx,
                plan.tensors(),
                &mut prims,
                &mut experts,
                &mut m,
            )
            .map_err(|e| e.at_op(i as u32))?;
            tracer.op_end(i as u32, &op);
            stats.ops += 1;
        }
        let out = plan.output();
        outputs.copy_from_slice(&prims.slots()[out.range()]);
        Ok(stats)
    }

    /// Position of the next token of a token-stream task (tokens run so far
    /// since creation or [`Session::reset`]).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Runs a token-stream (language-model) task on `tokens` (at most the
    /// task's capacity, prompt chunk or one decode step) at the session's
    /// position, appending them to its KV caches; `logits` receives the
    /// last token's outputs (the vocabulary). Allocates nothing.
    pub fn step(&mut self, tokens: &[u32], logits: &mut [f32]) -> Result<RunStats> {
        self.step_traced(tokens, logits, &mut NoTrace)
    }

    /// [`Session::step`] reporting to a tracer.
    pub fn step_traced<T: Tracer>(
        &mut self,
        tokens: &[u32],
        logits: &mut [f32],
        tracer: &mut T,
    ) -> Result<RunStats> {
        let shape = self.plan.tokens().ok_or(Error::TaskKind {
            why: "a fixed-shape task runs with Session::run",
        })?;
        let n = tokens.len();
        if n == 0 || n > shape.capacity {
            return Err(Error::ContextFull {
                need: n,
                context: shape.capacity,
            });
        }
        if self.pos + n > shape.context {
            return Err(Error::ContextFull {
                need: self.pos + n,
                context: shape.context,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= shape.vocab) {
            return Err(Error::TokenOutOfRange {
                token: t,
                vocab: shape.vocab,
            });
        }
        let task = *self.plan.task();
        if logits.len() != task.outputs {
            return Err(Error::OutputShape {
                expected: task.outputs,
                got: logits.len(),
            });
        }
        let ctx = RunCtx {
            tokens: n,
            pos: self.pos,
        };
        let mut stats = RunStats::default();
        let Self {
            model,
            plan,
            slots,
            source,
            kernels,
            #[cfg(feature = "std")]
            pool,
            #[cfg(feature = "decoder")]
            prefetch,
            #[cfg(feature = "decoder")]
            prefetch_topk,
            ..
        } = self;
        let prims = CpuPrims::new(slots, &[], kernels).with_tokens(tokens);
        #[cfg(feature = "std")]
        let prims = prims.with_pool(*pool);
        let mut prims = prims;
        let mut experts = CpuExperts {
            model,
            plan,
            source: source.as_deref_mut(),
        };
        for (i, ps) in plan.steps().iter().enumerate() {
            let (Some(op), step) = (ps.op, &ps.step) else {
                return Err(bad(i as u32, "empty plan step"));
            };
            tracer.op_begin(i as u32, &op);
            let mut m = Meter {
                tracer: &mut *tracer,
                stats: &mut stats,
            };
            run_step(
                i as u32,
                step,
                &ctx,
                plan.tensors(),
                &mut prims,
                &mut experts,
                &mut m,
            )
            .map_err(|e| e.at_op(i as u32))?;
            tracer.op_end(i as u32, &op);
            stats.ops += 1;
            #[cfg(feature = "decoder")]
            if let (k @ 1.., Some(pf)) = (*prefetch_topk, prefetch.as_deref_mut()) {
                let spec = Speculation {
                    model,
                    plan,
                    slots: prims.slots(),
                    rows: n,
                    k,
                    kernels,
                };
                spec.hint(i, experts.source.as_deref(), pf, &mut *tracer);
            }
        }
        logits.copy_from_slice(&prims.slots()[plan.output().range()]);
        self.pos += n;
        Ok(stats)
    }
}

/// See [`Session::prefetch_plan`].
fn prefetch_plan<'s, 'a>(
    model: &'s Model<'a>,
    plan: &'s Plan<'_, 'a>,
    input: usize,
) -> impl Iterator<Item = BlobView<'a>> + 's {
    // The routers of input i + 1 are the task's (i + 1)-th modality's: FLAME
    // names each router after its modality.
    let router = plan.task().modalities().nth(input + 1).map(|m| m as u32);
    let mut union = ExpertMask::default();
    let mut group = None;
    let mut comps = 0usize;
    for ps in plan.steps() {
        if let (
            Step::Moe {
                group: g,
                mask,
                components,
                ..
            },
            Some(Op::Moe { router: r, .. }),
        ) = (&ps.step, ps.op)
        {
            if Some(r) == router {
                union = union.union(mask);
                group = Some(*g);
                comps = comps.max(*components);
            }
        }
    }
    model.expert_blobs().filter(move |b| {
        group == Some(u32::from(b.rec.group))
            && union.contains(b.rec.expert.into())
            && usize::from(b.rec.component) < comps
    })
}

/// What speculative prefetch reads after a step ([`Session::with_prefetch_topk`]).
#[cfg(feature = "decoder")]
struct Speculation<'s, 'a, 'p> {
    model: &'s Model<'a>,
    plan: &'s Plan<'p, 'a>,
    slots: &'s [f32],
    /// Tokens of the step.
    rows: usize,
    /// Experts per token to hint.
    k: usize,
    /// The session's kernels (the router's dense f32 product).
    kernels: &'s Kernels,
}

#[cfg(feature = "decoder")]
impl Speculation<'_, '_, '_> {
    /// After step `i`: when it embedded the tokens or routed an MoE layer,
    /// predicts the next MoE layer's experts and hints those `source` does
    /// not hold. Whatever does not fit the expected program shape (no next
    /// layer, a router that is not dense f32) predicts nothing.
    fn hint<T: Tracer>(
        &self,
        i: usize,
        source: Option<&dyn BlobSource>,
        prefetch: &mut dyn Prefetch,
        tracer: &mut T,
    ) {
        let steps = self.plan.steps();
        let x = match steps.get(i).map(|s| &s.step) {
            Some(Step::Embed { out, .. }) => out.start,
            // This layer's router input: the x of the Linear that wrote its logits.
            Some(Step::RouteTokens { logits, .. }) => {
                match steps[..i].iter().rev().find_map(|s| match s.step {
                    Step::Linear { x, y, .. } if y.start == logits.start => Some(x),
                    _ => None,
                }) {
                    Some(x) => x.start,
                    None => return,
                }
            }
            _ => return,
        };
        let Some(j) =
            (i + 1..steps.len()).find(|&j| matches!(steps[j].step, Step::RouteTokens { .. }))
        else {
            return;
        };
        let Step::RouteTokens {
            logits,
            experts,
            mask,
            ..
        } = &steps[j].step
        else {
            return;
        };
        let Some(w) = steps[i + 1..j].iter().rev().find_map(|s| match s.step {
            Step::Linear { y, w, .. } if y.start == logits.start => {
                self.plan.tensors().get(usize::from(w.0))
            }
            _ => None,
        }) else {
            return;
        };
        let Some(block) = steps[j + 1..].iter().find_map(|s| match s.step {
            Step::MoeTokens { block, .. } => Some(block),
            _ => None,
        }) else {
            return;
        };
        let n = *experts;
        if !w.is_f32() || w.is_low_rank() || w.rows != n || n > MAX_EXPERTS as usize {
            return;
        }
        let Some(xs) = self.slots.get(x..x + self.rows * w.cols) else {
            return;
        };
        let mut scores = [0f32; MAX_EXPERTS as usize];
        let mut predicted = ExpertMask::default();
        for xr in xs.chunks_exact(w.cols.max(1)) {
            self.kernels.matmul_f32(w.a, xr, None, 1, &mut scores[..n]);
            // Top-k of the logits is top-k of the router's probabilities
            // whatever the route mode (softmax is monotonic).
            let mut taken = ExpertMask::default();
            for _ in 0..self.k {
                let Some(e) = mask
                    .iter()
                    .filter(|&e| !taken.contains(e))
                    .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                else {
                    break;
                };
                taken.insert(e);
            }
            predicted = predicted.union(&taken);
        }
        for e in predicted.iter() {
            let Some(b) = self
                .model
                .expert_at(block.saturating_add(e as u32))
                .and_then(|r| self.model.blob(r.blob))
            else {
                continue;
            };
            let hinted = source.and_then(|s| s.holds(b.index)) != Some(true);
            if hinted {
                prefetch.will_need(b.index, b.bytes);
            }
            tracer.expert_predicted(b.index, hinted);
        }
    }
}

/// Expert weights for the CPU: the package bytes in place, or a blob source's copy.
struct CpuExperts<'s, 'a, 'p, 'o> {
    model: &'s Model<'a>,
    plan: &'s Plan<'p, 'a>,
    source: Option<&'s mut (dyn BlobSource + 'o)>,
}

/// An expert blob's bytes: through the blob source (a residency cache) if
/// the session has one, else in place.
fn fetch_blob<'r, 'a: 'r, T: Tracer + ?Sized>(
    model: &'r Model<'a>,
    source: Option<&'r mut (dyn BlobSource + '_)>,
    blob: u32,
    tracer: &mut T,
) -> Result<&'r [u8]> {
    tracer.expert_fetch(blob);
    match source {
        Some(src) => {
            if tracer.wants_costly_events() {
                if let Some(hit) = src.holds(blob) {
                    tracer.cache_access(blob, hit);
                }
            }
            src.fetch(model, blob)
        }
        None => Ok(model.blob(blob).ok_or(bad(0, "no such blob"))?.bytes),
    }
}

impl<'s2> ExpertSource<CpuPrims<'_, 's2>> for CpuExperts<'_, '_, '_, '_> {
    fn component<T: Tracer + ?Sized>(
        &mut self,
        step: &Step,
        j: usize,
        c: usize,
        tracer: &mut T,
    ) -> Result<ExpertTensors<TensorView<'_>>> {
        let missing = bad(0, "missing expert component");
        let first = self.plan.block(self.model, step, c).ok_or(missing)?;
        let e = self
            .model
            .expert_at(first.checked_add(j as u32).ok_or(missing)?)
            .ok_or(missing)?;
        if usize::from(e.expert) != j || usize::from(e.component) != c {
            return Err(missing);
        }
        let bytes = fetch_blob(self.model, self.source.as_deref_mut(), e.blob, tracer)?;
        self.model
            .expert_tensors(&e, bytes)
            .ok_or(bad(0, "expert tensor outside its blob"))
    }

    #[cfg(feature = "decoder")]
    fn swiglu<T: Tracer + ?Sized>(
        &mut self,
        step: &Step,
        j: usize,
        tracer: &mut T,
    ) -> Result<[TensorView<'_>; 3]> {
        let missing = bad(0, "missing expert component");
        let Step::MoeTokens { block, group, .. } = *step else {
            return Err(missing);
        };
        let e = self
            .model
            .expert_at(block.checked_add(j as u32).ok_or(missing)?)
            .ok_or(missing)?;
        if usize::from(e.expert) != j || e.group != group || e.tensor_count < 3 {
            return Err(missing);
        }
        let bytes = fetch_blob(self.model, self.source.as_deref_mut(), e.blob, tracer)?;
        let t = |k: u32| {
            self.model
                .tensor_in(e.tensor_start + k, bytes)
                .ok_or(bad(0, "expert tensor outside its blob"))
        };
        Ok([t(0)?, t(1)?, t(2)?])
    }
}
