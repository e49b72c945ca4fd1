//! Splitting a task's op program into delegable segments and CPU glue.
//!
//! The packer lowers every task to the same shape of program (docs/FORMAT.md,
//! "Op program"): per modality a trunk (`Encode`, `LayerNorm`, `Linear`,
//! `Attention`), router heads (`AttnPool`, `Gate`), `Route`, `Moe`, the final
//! norm and a `Copy` into the fusion buffer; then the head (`LayerNorm`,
//! `Linear`). [`Plan::new`] reads that program, not the model's tensor
//! names, and splits it into:
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

use taskpath_format::records::OpRec;
use taskpath_format::{Opcode, NONE};
use taskpath_runtime::{Model, TaskInfo};

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
    /// Run segment `i` of [`Plan::segments`] (dense segments only; experts run
    /// from inside [`Step::Moe`]).
    Segment(usize),
    /// CPU glue: the `Route` op at this task-local index.
    Route(u32),
    /// CPU glue: the `Moe` op at this task-local index.
    Moe(u32),
}

/// A decoded op with its dataflow.
#[derive(Clone, Debug)]
pub struct OpInfo {
    /// Decoded opcode.
    pub opcode: Opcode,
    /// The raw record.
    pub rec: OpRec,
    /// Values read: source and the `[rows, cols]` view the op takes of it.
    pub reads: Vec<(Source, [usize; 2])>,
    /// Slots written and the view written (`Copy` writes part of its slot).
    pub writes: Vec<(u32, [usize; 2])>,
}

/// The segments and glue steps of one task.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Global task index.
    pub task: usize,
    /// Task name.
    pub task_name: String,
    /// Every segment: dense ones first in program order, then experts by `(j, c)`.
    pub segments: Vec<Segment>,
    /// Execution order.
    pub steps: Vec<Step>,
    /// Decoded ops (task-local index).
    pub ops: Vec<OpInfo>,
    /// Slot receiving the task's outputs, and their count.
    pub output: (u32, usize),
    /// `(slot offset, slot length)` per task-local slot, in f32 elements.
    pub slots: Vec<(usize, usize)>,
    /// f32 elements of the task's CPU arena.
    pub arena_len: usize,
}

fn bad(op: u32, why: impl Into<String>) -> Error {
    Error::Program {
        op,
        why: why.into(),
    }
}

/// Decodes op `i` of `task` into its dataflow.
fn decode(model: &Model<'_>, task: &TaskInfo<'_>, i: u32) -> Result<OpInfo> {
    let part = model
        .part(task.part)
        .ok_or_else(|| bad(i, "task's package missing"))?;
    let rec = part
        .program()
        .get((task.rec.program_start + i) as usize)
        .ok_or_else(|| bad(i, "op outside the program table"))?;
    let opcode = Opcode::from_u16(rec.opcode).ok_or_else(|| bad(i, "unknown opcode"))?;
    let hp = model.hparams();
    let (d, n, k) = (hp.d_model as usize, hp.experts as usize, hp.top_k as usize);
    let tensor = |id: u32| {
        model
            .tensor(id)
            .ok_or_else(|| bad(i, format!("tensor {id} does not exist")))
    };
    let s = Source::Slot;
    let (reads, writes) = match opcode {
        Opcode::Encode => {
            let m = task
                .modalities()
                .nth(rec.a0 as usize)
                .ok_or_else(|| bad(i, "input index beyond the task's modalities"))?;
            let (_, l, f) = model
                .modality(m)
                .ok_or_else(|| bad(i, "no such modality"))?;
            (
                vec![(Source::TaskInput(rec.a0 as usize), [l, f])],
                vec![(rec.a1, [l, d])],
            )
        }
        Opcode::LayerNorm => {
            let c = tensor(rec.a2)?.cols;
            let r = rec.a5 as usize;
            (vec![(s(rec.a0), [r, c])], vec![(rec.a1, [r, c])])
        }
        Opcode::Linear => {
            let w = tensor(rec.a2)?;
            let r = rec.a4 as usize;
            (vec![(s(rec.a0), [r, w.cols])], vec![(rec.a1, [r, w.rows])])
        }
        Opcode::Attention => {
            let l = rec.a4 as usize;
            (
                vec![
                    (s(rec.a0), [l, d]),
                    (s(rec.a1), [l, d]),
                    (s(rec.a2), [l, d]),
                ],
                vec![(rec.a3, [l, d])],
            )
        }
        Opcode::AttnPool => (
            vec![(s(rec.a0), [rec.a1 as usize, d])],
            vec![(rec.a3, [1, d])],
        ),
        Opcode::Gate => {
            let mut r = vec![(s(rec.a0), [1, d])];
            if rec.a3 != 0 {
                r.push((s(rec.a2), [1, n]));
            }
            (r, vec![(rec.a2, [1, n])])
        }
        Opcode::Route => (vec![(s(rec.a0), [1, n])], vec![(rec.a2, [1, 1 + 2 * k])]),
        Opcode::Moe => (
            vec![
                (s(rec.a0), [rec.a1 as usize, d]),
                (s(rec.a2), [1, 1 + 2 * k]),
            ],
            vec![(rec.a5, [1, d])],
        ),
        Opcode::Copy => (
            vec![(s(rec.a0), [1, rec.a4 as usize])],
            vec![(rec.a2, [1, rec.a4 as usize])],
        ),
    };
    for &(src, _) in &reads {
        if src == Source::Slot(NONE) {
            return Err(bad(i, "reads no slot"));
        }
    }
    Ok(OpInfo {
        opcode,
        rec,
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

impl Plan {
    /// Splits task `task` (global index) of `model` into segments and glue.
    pub fn new(model: &Model<'_>, task: usize) -> Result<Self> {
        let info = model.task(task)?;
        let part = model
            .part(info.part)
            .ok_or(Error::Runtime(taskpath_runtime::Error::UnknownTask))?;
        let ops = (0..info.rec.program_len)
            .map(|i| decode(model, &info, i))
            .collect::<Result<Vec<_>>>()?;
        let slots = (0..info.rec.slot_count)
            .map(|s| {
                part.slots()
                    .get((info.rec.slot_start + s) as usize)
                    .map(|r| (r.offset as usize, r.len as usize))
                    .ok_or_else(|| bad(0, "slot table"))
            })
            .collect::<Result<Vec<_>>>()?;
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
        for (i, op) in ops.iter().enumerate() {
            let i32_ = i as u32;
            let unexpected = || {
                bad(
                    i32_,
                    format!(
                        "{:?} where the segmenter expects another op (state {state:?}); \
                         the program does not have the packer's shape",
                        op.opcode
                    ),
                )
            };
            let c = match (op.opcode, state) {
                (Opcode::Encode, State::Start | State::PostMoe) => {
                    let m = info
                        .modalities()
                        .nth(op.rec.a0 as usize)
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
                (Opcode::LayerNorm | Opcode::Linear | Opcode::Attention, State::Trunk(m)) => {
                    Class::Seg(seg_of[&(0, m)])
                }
                (Opcode::AttnPool | Opcode::Gate, State::Trunk(m) | State::Router(m)) => {
                    state = State::Router(m);
                    Class::Seg(new_seg(
                        &mut segments,
                        &mut seg_of,
                        (1, m),
                        SegmentKind::Router { modality: m },
                        format!("router.{}", modality_name(m)),
                    ))
                }
                (Opcode::Route, State::Router(m)) => {
                    if op.rec.a1 as usize != m {
                        return Err(bad(i32_, "route for another modality than its router"));
                    }
                    route_modality.insert(op.rec.a2, m);
                    state = State::Routed(m);
                    Class::Route
                }
                (Opcode::Moe, State::Routed(_)) => {
                    state = State::PostMoe;
                    Class::Moe
                }
                (Opcode::LayerNorm | Opcode::Linear | Opcode::Copy, State::PostMoe) => {
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

        // Dataflow: a segment's inputs are the values it reads before writing
        // them; its outputs the values it writes that a later op outside it
        // reads (or the task's output slot).
        let out_slot = info.rec.output_slot;
        let mut moe_out: BTreeMap<u32, usize> = BTreeMap::new();
        for op in &ops {
            if op.opcode == Opcode::Moe {
                let m = *route_modality
                    .get(&op.rec.a2)
                    .ok_or_else(|| bad(0, "Moe reads a route no Route op wrote"))?;
                moe_out.insert(op.rec.a5, m);
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
                let r = ops[i as usize].rec;
                let ids: &[u32] = match ops[i as usize].opcode {
                    Opcode::Encode => &[r.a2, r.a3, r.a4],
                    Opcode::LayerNorm | Opcode::Linear => &[r.a2, r.a3],
                    Opcode::AttnPool => &[r.a2],
                    Opcode::Gate => &[r.a1],
                    _ => &[],
                };
                for &t in ids.iter().filter(|&&t| t != NONE) {
                    if let Some(t) = model.tensor(t) {
                        if !blobs.contains(&t.blob) {
                            blobs.push(t.blob);
                        }
                    }
                }
            }
            blobs.sort_unstable();
            seg.blobs = blobs;
        }

        // Experts of the path: the union of the task's modality masks,
        // components 0..=stage.
        let hp = model.hparams();
        let d = hp.d_model as usize;
        let union = info
            .modalities()
            .filter_map(|m| model.path_mask(&info, m))
            .fold(0u64, |a, b| a | b);
        for j in (0..hp.experts as usize).filter(|j| union & (1 << j) != 0) {
            for c in 0..=info.stage {
                let e = model.expert(j, c).ok_or_else(|| {
                    bad(
                        0,
                        format!("expert {j} component {c} is on the path but missing"),
                    )
                })?;
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
                    blobs: vec![e.blob],
                });
            }
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
            ops,
            output: (out_slot, info.outputs),
            slots,
            arena_len: info.arena_bytes / 4,
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
}
