//! Splitting a task's op program into delegable segments and CPU glue.
//!
//! The packer lowers every task to the same shape of program (docs/FORMAT.md,
//! "Op program"): per modality a trunk (`Encode`, `LayerNorm`, `Linear`,
//! `Attention`), router heads (`AttnPool`, `Gate`), `Route`, `Moe`, the final
//! norm and a `Copy` into the fusion buffer; then the head (`LayerNorm`,
//! `Linear`). [`SegmentPlan::new`] reads that program through the runtime's
//! [`taskpath_runtime::Plan`] (typed ops, their resolved slot views and the
//! slots each reads and writes), not the model's tensor names, and splits it into:
//!
//! - dense segments: `trunk.<modality>` (encoder, norms, attention),
//!   `router.<modality>` (pooling and gate logits of router heads
//!   `0..=stage`), and `head.<task>` (each modality's final norm, late-fusion
//!   concatenation, fusion norm and linear head);
//! - one `expert.<j>.<c>` segment per expert component on the task's path;
//! - glue that stays on the CPU: `Route` (top-k within the path, softmax of
//!   the kept logits) and `Moe` (the conv window gather, the gate-weighted
//!   sum of the selected experts' components).
//!
//! A program of another shape is refused with an error naming the op.

use std::collections::BTreeMap;

use taskpath_format::ExpertMask;
use taskpath_format::{Access, Op};
use taskpath_runtime::plan::{Buf, Plan, PlanBuffers, Step as PlanStep};
use taskpath_runtime::Model;

use crate::error::{Error, Result};

/// Where a segment's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The task's input `index` (position among the task's modalities).
    TaskInput(usize),
    /// A task-local arena slot (one per value in the packer's lowering).
    Slot(u32),
    /// The `[u_{t-1}; u_t; u_{t+1}]` window the `Moe` glue gathers for an expert.
    Window,
}

/// One input or output of a segment: a static-shaped f32 tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Name of the graph input/output.
    pub name: String,
    /// Static shape (always rank 2: `[rows, cols]`).
    pub shape: [usize; 2],
    /// Where its values live in the task's dataflow.
    pub source: Source,
}

impl Port {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
}

/// What a segment computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Encoder, norms and self-attention of one modality (model index).
    Trunk {
        /// Model modality index.
        modality: usize,
    },
    /// Pooling and gate logits of router heads `0..=stage` of one modality.
    Router {
        /// Model modality index.
        modality: usize,
    },
    /// One component of one expert slot, at one token.
    Expert {
        /// Expert slot `j`.
        expert: usize,
        /// Component `c` (the stage that added it).
        component: usize,
    },
    /// Final per-modality norms, late fusion and the task head.
    Head,
}

/// A unit of work a [`crate::Delegate`] may take.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Kind and indices.
    pub kind: SegmentKind,
    /// Graph name (`trunk.img_rows`, `router.img_rows`, `expert.3.1`, `head.WDBC`).
    pub name: String,
    /// Task-local op indices it covers, in program order (empty for experts,
    /// whose computation is inside the `Moe` op).
    pub ops: Vec<u32>,
    /// Inputs, in graph order.
    pub inputs: Vec<Port>,
    /// Outputs, in graph order.
    pub outputs: Vec<Port>,
    /// Global blob indices whose tensors it reads.
    pub blobs: Vec<u32>,
}

/// One step of a task, in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run segment `i` of [`SegmentPlan::segments`] (dense segments only;
    /// experts run from inside [`Step::Moe`]).
    Segment(usize),
    /// CPU glue: the `Route` op at this task-local index.
    Route(u32),
    /// CPU glue: the `Moe` op at this task-local index.
    Moe(u32),
}

/// An op with its dataflow: the views it reads and writes.
#[derive(Clone, Debug)]
pub struct OpInfo {
    /// The op.
    pub op: Op,
    /// Its resolution in the runtime's plan (slot ranges, tensor table indices).
    pub step: PlanStep,
    /// Values read: source and the `[rows, cols]` view the op takes of it.
    pub reads: Vec<(Source, [usize; 2])>,
    /// Slots written and the view written (`Copy` writes part of its slot).
    pub writes: Vec<(u32, [usize; 2])>,
}

/// The segments and glue steps of one task.
#[derive(Clone, Debug)]
pub struct SegmentPlan {
    /// Global task index.
    pub task: usize,
    /// Task name.
    pub task_name: String,
    /// Every segment: dense ones first in program order, then experts by `(j, c)`.
    pub segments: Vec<Segment>,
    /// Execution order.
    pub steps: Vec<Step>,
    /// Ops with their dataflow (task-local index).
    pub ops: Vec<OpInfo>,
    /// Slot receiving the task's outputs, and their count.
    pub output: (u32, usize),
    /// The range of each task-local slot in the slots region, in f32 elements.
    pub slots: Vec<Buf>,
    /// f32 elements of the task's slots region.
    pub arena_len: usize,
}

fn bad(op: u32, why: impl Into<String>) -> Error {
    Error::Program {
        op,
        why: why.into(),
    }
}

/// The `[rows, cols]` view an op takes of slot `s` (range `r` in the plan):
/// the rows are the op's tokens for sequence values, 1 for vectors.
fn view(op: &Op, s: taskpath_format::SlotId, len: usize) -> [usize; 2] {
    let rows = match *op {
        Op::Encode { out, .. } if out == s => None,
        Op::LayerNorm { rows, .. } | Op::Linear { rows, .. } => Some(rows as usize),
        Op::Attention {
            tokens, scratch, ..
        } if scratch != s => Some(tokens as usize),
        Op::AttnPool { u, tokens, .. } if u == s => Some(tokens as usize),
        Op::Moe { u, tokens, .. } if u == s => Some(tokens as usize),
        _ => Some(1),
    };
    let rows = rows.unwrap_or(1).max(1);
    [rows, len / rows]
}

/// The dataflow of op `i` of `plan`: what `Plan::accesses` says it reads
/// and writes, each with the view the op's step resolved.
fn dataflow(model: &Model<'_>, plan: &Plan<'_, '_>, i: usize) -> Result<OpInfo> {
    let ps = plan.steps()[i];
    let op = ps.op.ok_or_else(|| bad(i as u32, "empty plan step"))?;
    let step = ps.step;
    // The op's view of each slot: the length its step resolved.
    let len_of = |s: taskpath_format::SlotId| -> usize {
        let full = plan.slot(s).map_or(0, |b| b.len());
        match (op, step) {
            (Op::Encode { out, .. }, PlanStep::Encode { out: b, .. }) if out == s => b.len(),
            (Op::LayerNorm { x, .. }, PlanStep::LayerNorm { x: b, .. }) if x == s => b.len(),
            (Op::Linear { x, .. }, PlanStep::Linear { x: b, .. }) if x == s => b.len(),
            (Op::Linear { y, .. }, PlanStep::Linear { y: b, .. }) if y == s => b.len(),
            (Op::Attention { q, .. }, PlanStep::Attention { q: b, .. }) if q == s => b.len(),
            (Op::Attention { k, .. }, PlanStep::Attention { k: b, .. }) if k == s => b.len(),
            (Op::Attention { v, .. }, PlanStep::Attention { v: b, .. }) if v == s => b.len(),
            (Op::Attention { out, .. }, PlanStep::Attention { out: b, .. }) if out == s => b.len(),
            (Op::AttnPool { u, .. }, PlanStep::AttnPool { u: b, .. }) if u == s => b.len(),
            (Op::AttnPool { out, .. }, PlanStep::AttnPool { out: b, .. }) if out == s => b.len(),
            (Op::Gate { p, .. }, PlanStep::Gate { p: b, .. }) if p == s => b.len(),
            (Op::Gate { logits, .. }, PlanStep::Gate { logits: b, .. }) if logits == s => b.len(),
            (Op::Route { logits, .. }, PlanStep::Route { logits: b, .. }) if logits == s => b.len(),
            (Op::Route { route, .. }, PlanStep::Route { route: b, .. }) if route == s => b.len(),
            (Op::Moe { u, .. }, PlanStep::Moe { u: b, .. }) if u == s => b.len(),
            (Op::Moe { route, .. }, PlanStep::Moe { route: b, .. }) if route == s => b.len(),
            (Op::Moe { out, .. }, PlanStep::Moe { out: b, .. }) if out == s => b.len(),
            (Op::Copy { src, .. }, PlanStep::Copy { src: b, .. }) if src == s => b.len(),
            (Op::Copy { dst, .. }, PlanStep::Copy { dst: b, .. }) if dst == s => b.len(),
            _ => full,
        }
    };
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    if let (Op::Encode { input, .. }, PlanStep::Encode { tokens, .. }) = (op, step) {
        let m = plan
            .task()
            .modalities()
            .nth(input as usize)
            .ok_or_else(|| bad(i as u32, "input index beyond the task's modalities"))?;
        let (_, l, f) = model
            .modality(m)
            .ok_or_else(|| bad(i as u32, "no such modality"))?;
        debug_assert_eq!(l, tokens);
        reads.push((Source::TaskInput(input as usize), [l, f]));
    }
    plan.accesses(i, |s, _, a| {
        let shape = view(&op, s, len_of(s));
        if a == Access::Scratch {
            return;
        }
        if a.reads() || a.keeps() {
            reads.push((Source::Slot(s.0), shape));
        }
        if a.writes() {
            writes.push((s.0, shape));
        }
    });
    Ok(OpInfo {
        op,
        step,
        reads,
        writes,
    })
}

/// The segment under `key`, created on first use.
fn new_seg(
    segments: &mut Vec<Segment>,
    seg_of: &mut BTreeMap<(u8, usize), usize>,
    key: (u8, usize),
    kind: SegmentKind,
    name: String,
) -> usize {
    *seg_of.entry(key).or_insert_with(|| {
        segments.push(Segment {
            kind,
            name,
            ops: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            blobs: Vec::new(),
        });
        segments.len() - 1
    })
}

/// Where the segmenter is in a modality's block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Start,
    Trunk(usize),
    Router(usize),
    Routed(usize),
    PostMoe,
}

impl SegmentPlan {
    /// Splits task `task` (global index) of `model` into segments and glue.
    pub fn new(model: &Model<'_>, task: usize) -> Result<Self> {
        let info = model.task(task)?;
        let mut storage = PlanBuffers::new(&info);
        let plan = Plan::build(model, task, storage.storage())?;
        let ops = (0..plan.steps().len())
            .map(|i| dataflow(model, &plan, i))
            .collect::<Result<Vec<_>>>()?;
        let slots = (0..info.rec.slot_count)
            .map(|s| plan.slot(taskpath_format::SlotId(s)).unwrap_or_default())
            .collect();
        let modality_name = |m: usize| -> String {
            model
                .modality(m)
                .map_or_else(|| format!("m{m}"), |(n, _, _)| n.to_string())
        };

        // Classify every op.
        #[derive(Clone, Copy)]
        enum Class {
            Seg(usize),
            Route,
            Moe,
        }
        let mut segments: Vec<Segment> = Vec::new();
        let mut seg_of: BTreeMap<(u8, usize), usize> = BTreeMap::new();
        let mut class = Vec::with_capacity(ops.len());
        let mut state = State::Start;
        let mut route_modality: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, info_op) in ops.iter().enumerate() {
            let i32_ = i as u32;
            let op = &info_op.op;
            let unexpected = || {
                bad(
                    i32_,
                    format!(
                        "{} where the segmenter expects another op (state {state:?}); \
                         the program does not have the packer's shape",
                        op.name()
                    ),
                )
            };
            let c = match (op, state) {
                (Op::Encode { input, .. }, State::Start | State::PostMoe) => {
                    let m = info
                        .modalities()
                        .nth(*input as usize)
                        .ok_or_else(unexpected)?;
                    state = State::Trunk(m);
                    Class::Seg(new_seg(
                        &mut segments,
                        &mut seg_of,
                        (0, m),
                        SegmentKind::Trunk { modality: m },
                        format!("trunk.{}", modality_name(m)),
                    ))
                }
                (
                    Op::LayerNorm { .. } | Op::Linear { .. } | Op::Attention { .. },
                    State::Trunk(m),
                ) => Class::Seg(seg_of[&(0, m)]),
                (Op::AttnPool { .. } | Op::Gate { .. }, State::Trunk(m) | State::Router(m)) => {
                    state = State::Router(m);
                    Class::Seg(new_seg(
                        &mut segments,
                        &mut seg_of,
                        (1, m),
                        SegmentKind::Router { modality: m },
                        format!("router.{}", modality_name(m)),
                    ))
                }
                (Op::Route { router, route, .. }, State::Router(m)) => {
                    if *router as usize != m {
                        return Err(bad(i32_, "route for another modality than its router"));
                    }
                    route_modality.insert(route.0, m);
                    state = State::Routed(m);
                    Class::Route
                }
                (Op::Moe { .. }, State::Routed(_)) => {
                    state = State::PostMoe;
                    Class::Moe
                }
                (Op::LayerNorm { .. } | Op::Linear { .. } | Op::Copy { .. }, State::PostMoe) => {
                    Class::Seg(new_seg(
                        &mut segments,
                        &mut seg_of,
                        (2, 0),
                        SegmentKind::Head,
                        format!("head.{}", info.name),
                    ))
                }
                _ => return Err(unexpected()),
            };
            if let Class::Seg(s) = c {
                segments[s].ops.push(i32_);
            }
            class.push(c);
        }
        if state != State::PostMoe {
            return Err(bad(
                ops.len() as u32,
                "the program does not end with a head after its experts",
            ));
        }

        // Ports from the plan's dataflow: a segment's inputs are the values
        // it reads before writing them; its outputs the values it writes
        // that a later op outside it reads (or the task's output slot).
        let out_slot = info.rec.output_slot;
        let mut moe_out: BTreeMap<u32, usize> = BTreeMap::new();
        for o in &ops {
            if let Op::Moe { route, out, .. } = o.op {
                let m = *route_modality
                    .get(&route.0)
                    .ok_or_else(|| bad(0, "Moe reads a route no Route op wrote"))?;
                moe_out.insert(out.0, m);
            }
        }
        let port_name = |seg: &Segment, src: Source, output: bool| -> String {
            match (seg.kind, src) {
                (SegmentKind::Trunk { .. }, Source::TaskInput(_)) => "x".into(),
                (SegmentKind::Trunk { .. }, _) if output => "u".into(),
                (SegmentKind::Router { .. }, _) if output => "logits".into(),
                (SegmentKind::Router { .. }, _) => "u".into(),
                (SegmentKind::Head, Source::Slot(s)) if !output => moe_out.get(&s).map_or_else(
                    || format!("slot{s}"),
                    |&m| format!("y.{}", modality_name(m)),
                ),
                (SegmentKind::Head, _) => "logits".into(),
                (_, Source::Slot(s)) => format!("slot{s}"),
                _ => "x".into(),
            }
        };
        for seg in segments.iter_mut() {
            let mut written: Vec<u32> = Vec::new();
            let mut inputs: Vec<Port> = Vec::new();
            let mut outputs: Vec<Port> = Vec::new();
            let members = seg.ops.clone();
            for &i in &members {
                let op = &ops[i as usize];
                for &(src, shape) in &op.reads {
                    let fresh = match src {
                        Source::Slot(s) => !written.contains(&s),
                        _ => true,
                    };
                    if fresh && !inputs.iter().any(|p| p.source == src) {
                        let name = port_name(seg, src, false);
                        inputs.push(Port {
                            name,
                            shape,
                            source: src,
                        });
                    }
                }
                for &(s, shape) in &op.writes {
                    written.push(s);
                    let read_later = s == out_slot
                        || ops.iter().enumerate().skip(i as usize + 1).any(|(j, o)| {
                            !members.contains(&(j as u32))
                                && o.reads.iter().any(|r| r.0 == Source::Slot(s))
                        });
                    if read_later {
                        let shape = if s == out_slot {
                            [1, info.outputs]
                        } else if let Op::Copy { .. } = op.op {
                            // A copy fills part of its slot: the port is the whole value.
                            let full = slots_len(&plan, s);
                            [1, full]
                        } else {
                            shape
                        };
                        let name = port_name(seg, Source::Slot(s), true);
                        match outputs.iter_mut().find(|p| p.source == Source::Slot(s)) {
                            Some(p) => p.shape = shape,
                            None => outputs.push(Port {
                                name,
                                shape,
                                source: Source::Slot(s),
                            }),
                        }
                    }
                }
            }
            if outputs.is_empty() {
                return Err(bad(
                    members.first().copied().unwrap_or(0),
                    format!("segment {} has no output", seg.name),
                ));
            }
            seg.inputs = inputs;
            seg.outputs = outputs;
            let mut blobs: Vec<u32> = Vec::new();
            for &i in &members {
                ops[i as usize].op.for_each_tensor(|t| {
                    if let Some(t) = model.tensor(t.0) {
                        if !blobs.contains(&t.blob) {
                            blobs.push(t.blob);
                        }
                    }
                });
            }
            blobs.sort_unstable();
            seg.blobs = blobs;
        }

        // Experts the task's Moe ops may run: each router's path mask,
        // components below the op's.
        let mut experts: BTreeMap<(usize, usize), (u32, usize)> = BTreeMap::new();
        for o in &ops {
            if let PlanStep::Moe {
                group,
                mask,
                components,
                width,
                ..
            } = o.step
            {
                let mask: ExpertMask = mask;
                for j in mask.iter() {
                    for c in 0..components {
                        let e = model.expert(group, j, c).ok_or_else(|| {
                            bad(
                                0,
                                format!("expert {j} component {c} is on the path but missing"),
                            )
                        })?;
                        experts.insert((j, c), (e.blob, width));
                    }
                }
            }
        }
        for ((j, c), (blob, d)) in experts {
            segments.push(Segment {
                kind: SegmentKind::Expert {
                    expert: j,
                    component: c,
                },
                name: format!("expert.{j}.{c}"),
                ops: Vec::new(),
                inputs: vec![Port {
                    name: "x".into(),
                    shape: [1, 3 * d],
                    source: Source::Window,
                }],
                outputs: vec![Port {
                    name: "y".into(),
                    shape: [1, d],
                    source: Source::Window,
                }],
                blobs: vec![blob],
            });
        }

        // Steps: glue at its op, a dense segment at its last op (its inputs
        // all exist by then: each is produced before the op that reads it).
        let mut steps = Vec::new();
        for (i, c) in class.iter().enumerate() {
            match *c {
                Class::Route => steps.push(Step::Route(i as u32)),
                Class::Moe => steps.push(Step::Moe(i as u32)),
                Class::Seg(s) => {
                    if segments[s].ops.last() == Some(&(i as u32)) {
                        steps.push(Step::Segment(s));
                    }
                }
            }
        }
        Ok(Self {
            task,
            task_name: info.name.to_string(),
            segments,
            steps,
            output: (out_slot, info.outputs),
            slots,
            arena_len: plan.slot_elems(),
            ops,
        })
    }

    /// The expert segment of `(j, c)`.
    pub fn expert_segment(&self, j: usize, c: usize) -> Option<usize> {
        self.segments.iter().position(|s| {
            s.kind
                == SegmentKind::Expert {
                    expert: j,
                    component: c,
                }
        })
    }

    /// The segment an op belongs to, if any (glue ops belong to none).
    pub fn segment_of(&self, op: u32) -> Option<usize> {
        self.segments.iter().position(|s| s.ops.contains(&op))
    }
}

fn slots_len(plan: &Plan<'_, '_>, s: u32) -> usize {
    plan.slot(taskpath_format::SlotId(s)).map_or(0, |b| b.len())
}
