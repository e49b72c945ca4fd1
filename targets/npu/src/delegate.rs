//! The delegate interface and the executor that consults it per segment.
//!
//! After ExecuTorch's backend interface: a delegate says whether it can run
//! here ([`Delegate::is_available`]), turns an ahead-of-time payload for one
//! segment into a handle ([`Delegate::compile`]; for the tract delegate the
//! payload is the exported ONNX graph, for a vendor NPU it would be the
//! vendor compiler's output), and runs a handle on static-shaped f32 inputs
//! ([`Delegate::execute`]). A delegate may decline a segment; the
//! [`Executor`] then runs it on the CPU, as it always runs the glue, through
//! the runtime's own op definitions and CPU primitives
//! ([`taskpath_runtime::exec::run_step`]), so with no delegate its outputs
//! are the session's, bit for bit.

use taskpath_runtime::cpu::CpuPrims;
use taskpath_runtime::exec::{conv_ffn, run_step, ExpertSource, Meter};
use taskpath_runtime::plan::{expert_views, Buf, Plan, PlanBuffers, Step as PlanStep};
use taskpath_runtime::{
    ExpertTensors, Kernels, Model, NoTrace, RunStats, TaskInfo, TensorView, Tracer,
};

use crate::error::{Error, Result};
use crate::plan::{Segment, SegmentKind, SegmentPlan, Source, Step};

/// A backend that runs whole segments (ExecuTorch-style: availability,
/// compile once, execute many; state lives in the handles).
pub trait Delegate {
    /// What `compile` returns and `execute` runs.
    type Handle;
    /// Name for logs and errors.
    fn name(&self) -> &str;
    /// `Ok` when the delegate can run on this machine, else the reason it cannot.
    fn is_available(&self) -> std::result::Result<(), String>;
    /// Prepares `segment` from its ahead-of-time `payload`; `Ok(None)`
    /// declines it (the executor runs it on the CPU).
    fn compile(&mut self, segment: &Segment, payload: &[u8]) -> Result<Option<Self::Handle>>;
    /// Runs a compiled segment: `inputs` and `outputs` follow the segment's
    /// ports, each exactly `port.numel()` long.
    fn execute(
        &mut self,
        handle: &mut Self::Handle,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()>;
}

/// The delegate that takes nothing: every segment runs on the CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuOnly;

impl Delegate for CpuOnly {
    type Handle = ();
    fn name(&self) -> &str {
        "cpu"
    }
    fn is_available(&self) -> std::result::Result<(), String> {
        Err("the CPU fallback delegates nothing".into())
    }
    fn compile(&mut self, _: &Segment, _: &[u8]) -> Result<Option<()>> {
        Ok(None)
    }
    fn execute(&mut self, _: &mut (), _: &[&[f32]], _: &mut [&mut [f32]]) -> Result<()> {
        Ok(())
    }
}

/// Counters of one [`Executor::run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Segment executions handed to the delegate.
    pub delegated: usize,
    /// Segment executions run on the CPU.
    pub cpu: usize,
}

/// Called after every segment execution with the segment, its inputs and
/// its outputs (in port order): how reference values are recorded.
pub type Observer<'o> = dyn FnMut(&Segment, &[&[f32]], &[&[f32]]) + 'o;

/// Runs one task segment by segment: delegated segments through the
/// delegate, the others and all glue on the CPU.
pub struct Executor<'m, 'a, D: Delegate> {
    model: &'m Model<'a>,
    task: TaskInfo<'a>,
    plan: SegmentPlan,
    /// The runtime plan's tensor table (the CPU steps index it).
    tensors: Vec<TensorView<'a>>,
    delegate: D,
    handles: Vec<Option<D::Handle>>,
    kernels: Kernels,
    arena: Vec<f32>,
    unavailable: Option<String>,
}

impl<D: Delegate> std::fmt::Debug for Executor<'_, '_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("task", &self.task.name)
            .field("delegate", &self.delegate.name())
            .field("delegated", &self.delegated_segments())
            .finish()
    }
}

impl<'m, 'a, D: Delegate> Executor<'m, 'a, D> {
    /// Plans task `task` and offers each segment to `delegate` with the
    /// payload `payload(segment)` gives (`None`: no payload, CPU). An
    /// unavailable delegate gets nothing; its reason is kept
    /// ([`Executor::unavailable_reason`]).
    pub fn new(
        model: &'m Model<'a>,
        task: usize,
        mut delegate: D,
        mut payload: impl FnMut(&Segment) -> Result<Option<Vec<u8>>>,
    ) -> Result<Self> {
        let plan = SegmentPlan::new(model, task)?;
        let info = model.task(task)?;
        let mut storage = PlanBuffers::new(&info);
        let tensors = Plan::build(model, task, storage.storage())?
            .tensors()
            .to_vec();
        let unavailable = delegate.is_available().err();
        let mut handles = Vec::with_capacity(plan.segments.len());
        for seg in &plan.segments {
            let h = match (&unavailable, payload(seg)?) {
                (None, Some(bytes)) => delegate.compile(seg, &bytes)?,
                _ => None,
            };
            handles.push(h);
        }
        let arena = vec![0.0; plan.arena_len];
        Ok(Self {
            model,
            task: info,
            plan,
            tensors,
            delegate,
            handles,
            kernels: Kernels::best(),
            arena,
            unavailable,
        })
    }

    /// The segment plan being run.
    pub fn plan(&self) -> &SegmentPlan {
        &self.plan
    }

    /// Why the delegate took nothing, when it is unavailable.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Names of the segments the delegate compiled.
    pub fn delegated_segments(&self) -> Vec<&str> {
        self.plan
            .segments
            .iter()
            .zip(&self.handles)
            .filter(|(_, h)| h.is_some())
            .map(|(s, _)| s.name.as_str())
            .collect()
    }

    /// Runs the task: one `[tokens * features]` input per task modality in
    /// model order; `outputs` receives the logits.
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [f32]) -> Result<ExecStats> {
        self.run_observed(inputs, outputs, &mut |_, _, _| {})
    }

    /// [`Executor::run`], calling `observer` after every segment execution.
    pub fn run_observed(
        &mut self,
        inputs: &[&[f32]],
        outputs: &mut [f32],
        observer: &mut Observer<'_>,
    ) -> Result<ExecStats> {
        let task_name = self.task.name.to_string();
        let shape = |why: String| Error::Shape {
            what: format!("task {task_name}"),
            why,
        };
        let mods: Vec<usize> = self.task.modalities().collect();
        if inputs.len() != mods.len() {
            return Err(shape(format!(
                "{} inputs given, the task takes {}",
                inputs.len(),
                mods.len()
            )));
        }
        for (i, (&m, x)) in mods.iter().zip(inputs).enumerate() {
            let (name, l, f) = self.model.modality(m).unwrap_or(("?", 0, 0));
            if x.len() != l * f {
                return Err(shape(format!(
                    "input {i} ({name}) has {} values, expected {l} x {f} = {}",
                    x.len(),
                    l * f
                )));
            }
        }
        if outputs.len() != self.task.outputs {
            return Err(shape(format!(
                "output buffer holds {}, the task has {} outputs",
                outputs.len(),
                self.task.outputs
            )));
        }
        let mut stats = ExecStats::default();
        let Self {
            model,
            plan,
            tensors,
            delegate,
            handles,
            kernels,
            arena,
            ..
        } = self;
        // Ops run in program order on one arena laid out by the task's
        // memory plan, so a value's bytes may be reused once it is dead. A
        // segment's inputs are therefore captured when they are written:
        // `captured[seg][port]`, the value the segment's ops would read.
        let mut captured: Vec<Vec<Option<Vec<f32>>>> = plan
            .segments
            .iter()
            .map(|s| vec![None; s.inputs.len()])
            .collect();
        let glue: std::collections::BTreeMap<u32, Step> = plan
            .steps
            .iter()
            .filter_map(|&st| match st {
                Step::Route(i) | Step::Moe(i) => Some((i, st)),
                Step::Segment(_) => None,
            })
            .collect();
        for i in 0..plan.ops.len() as u32 {
            match (glue.get(&i), plan.segment_of(i)) {
                (Some(Step::Moe(_)), _) => {
                    let mut experts = NpuExperts {
                        model,
                        plan,
                        delegate: &mut *delegate,
                        handles: &mut handles[..],
                        observer: &mut *observer,
                        stats: &mut stats,
                    };
                    cpu_step(
                        model,
                        plan,
                        tensors,
                        kernels,
                        arena,
                        inputs,
                        i,
                        Some(&mut experts),
                    )?;
                }
                (Some(_), _) => {
                    cpu_step::<D>(model, plan, tensors, kernels, arena, inputs, i, None)?
                }
                (None, Some(si)) => {
                    let seg = &plan.segments[si];
                    let last = seg.ops.last() == Some(&i);
                    if let Some(h) = handles[si].as_mut() {
                        if last {
                            let ins = port_values(seg, inputs, &captured[si])?;
                            let mut outs: Vec<Vec<f32>> =
                                seg.outputs.iter().map(|p| vec![0.0; p.numel()]).collect();
                            {
                                let mut refs: Vec<&mut [f32]> =
                                    outs.iter_mut().map(|v| &mut v[..]).collect();
                                delegate.execute(h, &ins, &mut refs)?;
                            }
                            let outs_ref: Vec<&[f32]> = outs.iter().map(|v| &v[..]).collect();
                            observer(seg, &ins, &outs_ref);
                            for (p, v) in seg.outputs.iter().zip(&outs) {
                                if let Source::Slot(s) = p.source {
                                    let r = plan.slots[s as usize];
                                    arena[r.start..r.start + v.len()].copy_from_slice(v);
                                }
                            }
                            stats.delegated += 1;
                        }
                    } else {
                        cpu_step::<D>(model, plan, tensors, kernels, arena, inputs, i, None)?;
                        if last {
                            let ins = port_values(seg, inputs, &captured[si])?;
                            let outs = port_values_out(plan, seg, arena);
                            observer(seg, &ins, &outs);
                            stats.cpu += 1;
                        }
                    }
                }
                (None, None) => {
                    return Err(Error::Program {
                        op: i,
                        why: "an op in no segment and not glue".into(),
                    })
                }
            }
            capture(plan, i, arena, &mut captured);
        }
        let (slot, n) = plan.output;
        let r = plan.slots[slot as usize];
        outputs.copy_from_slice(&arena[r.start..r.start + n]);
        Ok(stats)
    }
}

/// Runs op `i` of the plan on the CPU (the runtime's definition of it);
/// `Moe` ops take their experts from `experts`.
#[allow(clippy::too_many_arguments)]
fn cpu_step<D: Delegate>(
    model: &Model<'_>,
    plan: &SegmentPlan,
    tensors: &[TensorView<'_>],
    kernels: &Kernels,
    arena: &mut [f32],
    inputs: &[&[f32]],
    i: u32,
    experts: Option<&mut NpuExperts<'_, '_, '_, D>>,
) -> Result<()> {
    let step = plan
        .ops
        .get(i as usize)
        .map(|o| o.step)
        .ok_or_else(|| Error::Program {
            op: i,
            why: "no such op".into(),
        })?;
    let mut prims = CpuPrims::new(arena, inputs, kernels);
    let mut stats = RunStats::default();
    let mut m = Meter {
        tracer: &mut NoTrace,
        stats: &mut stats,
    };
    let ctx = taskpath_runtime::exec::RunCtx::default();
    match experts {
        Some(x) => run_step(i, &step, &ctx, tensors, &mut prims, x, &mut m)?,
        None => run_step(
            i,
            &step,
            &ctx,
            tensors,
            &mut prims,
            &mut NoExperts { model },
            &mut m,
        )?,
    }
    Ok(())
}

/// Ops without experts need no source; one that asks gets an error.
struct NoExperts<'s, 'a> {
    model: &'s Model<'a>,
}

impl<'p, 'i> ExpertSource<CpuPrims<'p, 'i>> for NoExperts<'_, '_> {
    fn component<T: Tracer + ?Sized>(
        &mut self,
        _step: &PlanStep,
        _j: usize,
        _c: usize,
        _tracer: &mut T,
    ) -> taskpath_runtime::Result<ExpertTensors<TensorView<'_>>> {
        let _ = self.model;
        Err(taskpath_runtime::Error::InvalidProgram {
            op: 0,
            why: "experts outside a Moe step",
        })
    }
}

/// The `Moe` glue's experts: each component runs on the delegate when it
/// compiled the component's segment, else on the CPU with the runtime's
/// expert definition; either way the observer sees window in, output out.
struct NpuExperts<'e, 'o, 'a, D: Delegate> {
    model: &'e Model<'a>,
    plan: &'e SegmentPlan,
    delegate: &'e mut D,
    handles: &'e mut [Option<D::Handle>],
    observer: &'e mut Observer<'o>,
    stats: &'e mut ExecStats,
}

impl<'p, 'i, D: Delegate> ExpertSource<CpuPrims<'p, 'i>> for NpuExperts<'_, '_, '_, D> {
    fn delegates(&self, _step: &PlanStep, _j: usize, _c: usize) -> bool {
        true
    }

    fn run_component(
        &mut self,
        p: &mut CpuPrims<'p, 'i>,
        step: &PlanStep,
        j: usize,
        c: usize,
    ) -> taskpath_runtime::Result<Buf> {
        let PlanStep::Moe {
            group,
            u,
            token,
            width: d,
            scratch,
            eps,
            ..
        } = *step
        else {
            return Err(bad_expert());
        };
        let si = self.plan.expert_segment(j, c).ok_or(bad_expert())?;
        let seg = &self.plan.segments[si];
        let x: Vec<f32> = p.slots()[scratch.window.range()].to_vec();
        let y = scratch.out.prefix(d);
        match self.handles[si].as_mut() {
            Some(h) => {
                let mut out = vec![0.0; d];
                self.delegate
                    .execute(h, &[&x], &mut [&mut out])
                    .map_err(|_| taskpath_runtime::Error::InvalidProgram {
                        op: 0,
                        why: "the delegate failed on an expert",
                    })?;
                p.slots_mut()[y.range()].copy_from_slice(&out);
                self.stats.delegated += 1;
            }
            None => {
                let w = expert_views(self.model, group, j, c).ok_or(bad_expert())?;
                let got = conv_ffn(p, &w, &u, d, token, &scratch, eps)?;
                debug_assert_eq!(got, y);
                self.stats.cpu += 1;
            }
        }
        let out = p.slots()[y.range()].to_vec();
        (self.observer)(seg, &[&x], &[&out]);
        Ok(y)
    }

    fn component<T: Tracer + ?Sized>(
        &mut self,
        _step: &PlanStep,
        _j: usize,
        _c: usize,
        _tracer: &mut T,
    ) -> taskpath_runtime::Result<ExpertTensors<TensorView<'_>>> {
        Err(bad_expert())
    }
}

fn bad_expert() -> taskpath_runtime::Error {
    taskpath_runtime::Error::InvalidProgram {
        op: 0,
        why: "missing expert component",
    }
}

/// After op `i` ran: copies every slot it wrote that is a segment's input
/// port (the value that segment reads, whatever later reuses the bytes).
fn capture(plan: &SegmentPlan, i: u32, arena: &[f32], captured: &mut [Vec<Option<Vec<f32>>>]) {
    let Some(op) = plan.ops.get(i as usize) else {
        return;
    };
    for &(s, _) in &op.writes {
        for (si, seg) in plan.segments.iter().enumerate() {
            if seg.ops.contains(&i) {
                continue;
            }
            for (k, p) in seg.inputs.iter().enumerate() {
                if p.source == Source::Slot(s) {
                    let r = plan.slots[s as usize];
                    captured[si][k] = arena.get(r.start..r.start + p.numel()).map(<[f32]>::to_vec);
                }
            }
        }
    }
}

/// The values of a segment's input ports: task inputs, or the values captured.
fn port_values<'v>(
    seg: &Segment,
    inputs: &[&'v [f32]],
    captured: &'v [Option<Vec<f32>>],
) -> Result<Vec<&'v [f32]>> {
    seg.inputs
        .iter()
        .zip(captured)
        .map(|(p, c)| {
            let v: &[f32] = match p.source {
                Source::TaskInput(i) => inputs.get(i).copied().unwrap_or(&[]),
                Source::Slot(_) => c.as_deref().unwrap_or(&[]),
                Source::Window => &[],
            };
            if v.len() != p.numel() {
                return Err(Error::Shape {
                    what: format!("{} input {}", seg.name, p.name),
                    why: format!("{} values, the port takes {}", v.len(), p.numel()),
                });
            }
            Ok(v)
        })
        .collect()
}

fn port_values_out<'v>(plan: &SegmentPlan, seg: &Segment, arena: &'v [f32]) -> Vec<&'v [f32]> {
    seg.outputs
        .iter()
        .map(|p| match p.source {
            Source::Slot(s) => {
                let r = plan.slots[s as usize];
                arena.get(r.start..r.start + p.numel()).unwrap_or(&[])
            }
            _ => &[],
        })
        .collect()
}

/// Whether `kind` is an expert segment.
pub fn is_expert(kind: SegmentKind) -> bool {
    matches!(kind, SegmentKind::Expert { .. })
}

/// The conv window `[u_{t-1}; u_t; u_{t+1}]` (zero padded) of `u` (`[l, d]`)
/// at token `token`: an expert segment's input.
pub fn window(u: &[f32], d: usize, token: usize) -> Vec<f32> {
    let l = u.len() / d.max(1);
    let mut cat = vec![0.0; 3 * d];
    for (tap, dst) in cat.chunks_exact_mut(d.max(1)).enumerate() {
        if let Some(s) = (token + tap).checked_sub(1).filter(|&s| s < l) {
            dst.copy_from_slice(&u[s * d..(s + 1) * d]);
        }
    }
    cat
}
