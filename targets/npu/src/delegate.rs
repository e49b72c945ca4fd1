//! The delegate interface and the executor that consults it per segment.
//!
//! After ExecuTorch's backend interface: a delegate says whether it can run
//! here ([`Delegate::is_available`]), turns an ahead-of-time payload for one
//! segment into a handle ([`Delegate::compile`]; for the tract delegate the
//! payload is the exported ONNX graph, for a vendor NPU it would be the
//! vendor compiler's output), and runs a handle on static-shaped f32 inputs
//! ([`Delegate::execute`]). A delegate may decline a segment; the
//! [`Executor`] then runs it on the CPU, as it always runs the glue.

use taskpath_cpu::f32 as k;
use taskpath_cpu::qmatvec::Kernels;
use taskpath_runtime::{Model, TaskInfo};

use crate::cpu::{window, Cpu, Values};
use crate::error::{Error, Result};
use crate::plan::{Plan, Segment, SegmentKind, Source, Step};

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
    plan: Plan,
    delegate: D,
    handles: Vec<Option<D::Handle>>,
    cpu: Cpu,
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
        let plan = Plan::new(model, task)?;
        let info = model.task(task)?;
        let unavailable = delegate.is_available().err();
        let mut handles = Vec::with_capacity(plan.segments.len());
        for seg in &plan.segments {
            let h = match (&unavailable, payload(seg)?) {
                (None, Some(bytes)) => delegate.compile(seg, &bytes)?,
                _ => None,
            };
            handles.push(h);
        }
        let cpu = Cpu::new(&plan, Kernels::best());
        Ok(Self {
            model,
            task: info,
            plan,
            delegate,
            handles,
            cpu,
            unavailable,
        })
    }

    /// The plan being run.
    pub fn plan(&self) -> &Plan {
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
        let mut values = Values::new();
        let mut stats = ExecStats::default();
        let steps = self.plan.steps.clone();
        for step in steps {
            match step {
                Step::Segment(si) => {
                    self.run_dense(si, inputs, &mut values, &mut stats, observer)?
                }
                Step::Route(i) => Cpu::route(self.model, &self.task, &self.plan, i, &mut values)?,
                Step::Moe(i) => self.moe(i, &mut values, &mut stats, observer)?,
            }
        }
        let (slot, n) = self.plan.output;
        let out = values
            .get(&slot)
            .ok_or_else(|| shape("no segment wrote the task's output".into()))?;
        outputs.copy_from_slice(&out[..n]);
        Ok(stats)
    }

    fn port_values<'v>(
        seg: &Segment,
        inputs: &[&'v [f32]],
        values: &'v Values,
    ) -> Result<Vec<&'v [f32]>> {
        seg.inputs
            .iter()
            .map(|p| {
                let v: &[f32] = match p.source {
                    Source::TaskInput(i) => inputs.get(i).copied().unwrap_or(&[]),
                    Source::Slot(s) => values.get(&s).map_or(&[][..], |v| &v[..]),
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

    fn run_dense(
        &mut self,
        si: usize,
        inputs: &[&[f32]],
        values: &mut Values,
        stats: &mut ExecStats,
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let seg = &self.plan.segments[si];
        if let Some(h) = self.handles[si].as_mut() {
            let ins = Self::port_values(seg, inputs, values)?;
            let mut outs: Vec<Vec<f32>> =
                seg.outputs.iter().map(|p| vec![0.0; p.numel()]).collect();
            {
                let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| &mut v[..]).collect();
                self.delegate.execute(h, &ins, &mut refs)?;
            }
            let outs_ref: Vec<&[f32]> = outs.iter().map(|v| &v[..]).collect();
            observer(seg, &ins, &outs_ref);
            for (p, v) in seg.outputs.iter().zip(outs) {
                if let Source::Slot(s) = p.source {
                    values.insert(s, v);
                }
            }
            stats.delegated += 1;
        } else {
            self.cpu
                .run_segment(self.model, &self.plan, si, inputs, values)?;
            let ins = Self::port_values(seg, inputs, values)?;
            let outs: Vec<&[f32]> = seg
                .outputs
                .iter()
                .map(|p| match p.source {
                    Source::Slot(s) => values.get(&s).map_or(&[][..], |v| &v[..]),
                    _ => &[],
                })
                .collect();
            observer(seg, &ins, &outs);
            stats.cpu += 1;
        }
        Ok(())
    }

    /// The `Moe` glue: for each routed expert and each component `0..=stage`,
    /// gather the conv window at the op's token, run the component (delegate
    /// or CPU) and add it weighted by its gate, in the session's order.
    fn moe(
        &mut self,
        i: u32,
        values: &mut Values,
        stats: &mut ExecStats,
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let r = self.plan.ops[i as usize].rec;
        let hp = self.model.hparams();
        let (d, kk) = (hp.d_model as usize, hp.top_k as usize);
        let (l, stage, token) = (r.a1 as usize, r.a3 as usize, r.a4 as usize);
        let bad = |why: &str| Error::Program {
            op: i,
            why: why.into(),
        };
        if stage > self.task.stage || token >= l {
            return Err(bad(
                "experts beyond the task's stage or token beyond the sequence",
            ));
        }
        let u = values
            .get(&r.a0)
            .ok_or_else(|| bad("Moe before its input"))?;
        let route = values
            .get(&r.a2)
            .ok_or_else(|| bad("Moe before its route"))?;
        if u.len() != l * d || route.len() != 1 + 2 * kk {
            return Err(bad("Moe inputs of the wrong length"));
        }
        let got = route[0] as usize;
        if got > kk {
            return Err(bad("route holds more than top_k experts"));
        }
        let (u, route) = (u.clone(), route.clone());
        let mut out = vec![0.0; d];
        for j in 0..got {
            let (e, g) = (route[1 + j], route[1 + kk + j]);
            if !(e >= 0.0 && (e as usize) < hp.experts as usize) {
                return Err(bad("route names no expert"));
            }
            let e = e as usize;
            for c in 0..=stage {
                let si = self
                    .plan
                    .expert_segment(e, c)
                    .ok_or_else(|| bad("route names an expert outside the task's path"))?;
                let seg = &self.plan.segments[si];
                let x = window(&u, d, token);
                let y = match self.handles[si].as_mut() {
                    Some(h) => {
                        let mut y = vec![0.0; d];
                        self.delegate.execute(h, &[&x], &mut [&mut y])?;
                        stats.delegated += 1;
                        y
                    }
                    None => {
                        let rec = self
                            .model
                            .expert(e, c)
                            .ok_or_else(|| bad("missing expert component"))?;
                        stats.cpu += 1;
                        self.cpu.expert(self.model, &rec, &u, token, i)?
                    }
                };
                observer(seg, &[&x], &[&y]);
                k::axpy(g, &y, &mut out);
            }
        }
        values.insert(r.a5, out);
        Ok(())
    }
}

/// Whether `kind` is an expert segment.
pub fn is_expert(kind: SegmentKind) -> bool {
    matches!(kind, SegmentKind::Expert { .. })
}
