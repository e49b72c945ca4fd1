//! The CUDA backend proper: context, kernels, device memory, execution.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use taskpath_runtime::exec::{
    decode_route, run_step, ExpertSource, Meter, Operand, Primitives, RunCtx,
};
use taskpath_runtime::format::records::blob_kind;
use taskpath_runtime::format::{ExpertMask, GateFn};
use taskpath_runtime::plan::{self, Buf, Plan, PlanBuffers, PlanStep, Step};
use taskpath_runtime::{
    Backend, CacheStats, ExpertTensors, Model, NoTrace, RunStats, TaskInfo, Tracer, WeightFormat,
};

use crate::cache::{Lookup, SlotCache};
use crate::error::{drv, CudaError, Result};
use crate::geometry::{per_thread, per_warp, quant_scratch, BLOCK};
use crate::kernels;
use crate::weights::{DevTensor, DevW};

/// Where the weights live while a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residency {
    /// `Mapped` on an integrated GPU (Jetson), `DeviceCache` on a discrete one.
    #[default]
    Auto,
    /// Kernels read the package in place: its pages are registered with the
    /// driver (`cuMemHostRegister`, read-only) and addressed from the device.
    /// Nothing is copied. On unified memory this is device-speed memory; on a
    /// discrete GPU it reads over PCIe (useful to test the Jetson path).
    Mapped,
    /// Trunks, routers and heads are uploaded at `init`; expert blobs are
    /// uploaded on first use into a budgeted cache of device slots (LRU +
    /// pin, the CPU `ResidencyCache`'s policy), on a second stream so the
    /// next expert's upload overlaps the current expert's kernels.
    DeviceCache,
}

/// Options of [`CudaBackend`].
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Weight residency.
    pub residency: Residency,
    /// Bytes of device memory for expert blobs (`DeviceCache`); `None` holds
    /// every expert blob of the task's path.
    pub expert_budget: Option<usize>,
    /// Expert blobs (global indices) to pin in the device cache at `init`.
    pub pin: Vec<u32>,
}

/// What the backend found at start-up.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: String,
    /// Compute capability, e.g. `(8, 7)`.
    pub capability: (i32, i32),
    /// Integrated GPU sharing memory with the CPU (Jetson).
    pub integrated: bool,
    /// Where the kernels came from: `nvrtc compute_XY` or the PTX file.
    pub kernels_from: String,
}

struct Gpu {
    ctx: Arc<CudaContext>,
    funcs: HashMap<&'static str, CudaFunction>,
    info: DeviceInfo,
}

/// The CUDA backend. Creating one never panics: without a driver, a device
/// or kernels it is simply unavailable, and [`Backend::is_available`] says why.
pub struct CudaBackend {
    opts: CudaOptions,
    gpu: std::result::Result<Gpu, String>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("opts", &self.opts)
            .field("device", &self.gpu.as_ref().map(|g| &g.info))
            .finish()
    }
}

fn open(device: usize) -> std::result::Result<Gpu, String> {
    // SAFETY: only tries to dlopen libcuda under its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver on this machine (libcuda.so could not be loaded)".into());
    }
    let ctx = std::panic::catch_unwind(|| CudaContext::new(device))
        .map_err(|_| "the CUDA driver failed while creating a context".to_string())?
        .map_err(|e| {
            let name = e
                .error_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("{e:?}"));
            format!("no usable CUDA device {device} ({name})")
        })?;
    let attr = |a| {
        ctx.attribute(a)
            .map_err(|e| format!("reading a device attribute: {e:?}"))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let integrated = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)? != 0;
    let name = ctx.name().unwrap_or_else(|_| "unknown".into());
    let (ptx, from) = match std::env::var_os(kernels::PTX_ENV) {
        Some(path) => (
            std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "reading {}={}: {e}",
                    kernels::PTX_ENV,
                    path.to_string_lossy()
                )
            })?,
            format!("ptx file {}", path.to_string_lossy()),
        ),
        None => {
            let arch = format!("compute_{major}{minor}");
            let ptx = kernels::compile(&arch).map_err(|e| e.to_string())?;
            (ptx, format!("nvrtc {arch}"))
        }
    };
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| format!("loading the kernels ({from}): {e:?}"))?;
    let mut funcs = HashMap::new();
    for n in kernels::NAMES {
        let f = module
            .load_function(n)
            .map_err(|e| format!("kernel {n} missing from the module: {e:?}"))?;
        funcs.insert(n, f);
    }
    Ok(Gpu {
        ctx,
        funcs,
        info: DeviceInfo {
            name,
            capability: (major, minor),
            integrated,
            kernels_from: from,
        },
    })
}

impl CudaBackend {
    /// Opens device `opts.device`: checks for the driver library before
    /// touching it, creates a context and builds the kernels (NVRTC, once per
    /// process and architecture). Never fails: see [`Backend::is_available`].
    pub fn new(opts: CudaOptions) -> Self {
        let gpu = open(opts.device);
        Self { opts, gpu }
    }

    /// The device, when available.
    pub fn device(&self) -> Option<&DeviceInfo> {
        self.gpu.as_ref().ok().map(|g| &g.info)
    }
}

impl Backend for CudaBackend {
    type Error = CudaError;
    type Handle<'m> = CudaTask<'m>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn is_available(&self) -> Result<()> {
        self.gpu
            .as_ref()
            .map(|_| ())
            .map_err(|why| CudaError::Unavailable(why.clone()))
    }

    fn init<'m>(
        &'m self,
        model: &'m Model<'m>,
        task: usize,
        arena: &'m mut [u8],
    ) -> Result<CudaTask<'m>> {
        let gpu = self
            .gpu
            .as_ref()
            .map_err(|why| CudaError::Unavailable(why.clone()))?;
        // The device keeps its own arena: the host one is not needed.
        let _ = arena;
        CudaTask::new(gpu, &self.opts, model, task)
    }

    fn execute(
        &self,
        handle: &mut CudaTask<'_>,
        inputs: &[&[f32]],
        outputs: &mut [f32],
    ) -> Result<RunStats> {
        handle.run(inputs, outputs)
    }
}

/// Device memory owned by a task.
struct DevMem {
    ptr: u64,
    ctx: Arc<CudaContext>,
}

impl DevMem {
    fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Self> {
        // SAFETY: a plain allocation in the current context (bound by the
        // caller); freed once in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(256)) }.map_err(drv("cuMemAlloc"))?;
        Ok(Self {
            ptr,
            ctx: ctx.clone(),
        })
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_sync in this context and freed only
        // here; every stream using it was synchronised by the task's Drop.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Host bytes registered with the driver and visible to the device.
struct Registered {
    host: usize,
    len: usize,
    dev: u64,
    ctx: Arc<CudaContext>,
}

impl Registered {
    /// Registers the pages spanning `bytes` (read-only). `None` when the
    /// driver refuses (no read-only registration support, say).
    fn new(ctx: &Arc<CudaContext>, bytes: &[u8]) -> Option<Self> {
        const PAGE: usize = 4096;
        let start = bytes.as_ptr() as usize / PAGE * PAGE;
        let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(PAGE) * PAGE;
        let flags = [
            sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_READ_ONLY,
            sys::CU_MEMHOSTREGISTER_DEVICEMAP,
        ];
        for f in flags {
            // SAFETY: [start, end) covers whole pages of the live package
            // mapping (pages holding any of its bytes are mapped); the
            // registration is undone in Drop, before the model's bytes can go
            // (the task borrows the model).
            let ok = unsafe { sys::cuMemHostRegister_v2(start as *mut c_void, end - start, f) }
                == sys::CUresult::CUDA_SUCCESS;
            if !ok {
                continue;
            }
            let mut dev: sys::CUdeviceptr = 0;
            // SAFETY: `start` was just registered with DEVICEMAP.
            let got =
                unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, start as *mut c_void, 0) };
            if got == sys::CUresult::CUDA_SUCCESS {
                return Some(Self {
                    host: start,
                    len: end - start,
                    dev,
                    ctx: ctx.clone(),
                });
            }
            // SAFETY: registered above, not used by any stream yet.
            unsafe { sys::cuMemHostUnregister(start as *mut c_void) };
        }
        None
    }

    fn map(&self, p: usize) -> Option<u64> {
        (p >= self.host && p < self.host + self.len).then(|| self.dev + (p - self.host) as u64)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: registered in `new`; the task synchronised its streams first.
        unsafe { sys::cuMemHostUnregister(self.host as *mut c_void) };
    }
}

/// A kernel argument.
#[derive(Clone, Copy)]
enum A {
    P(u64),
    I(i32),
    U(u32),
    F(f32),
}

fn i(v: usize) -> A {
    A::I(i32::try_from(v).unwrap_or(i32::MAX))
}

/// One task prepared on the device (the [`Backend::Handle`] of [`CudaBackend`]).
pub struct CudaTask<'m> {
    gpu: &'m Gpu,
    model: &'m Model<'m>,
    task: TaskInfo<'m>,
    steps: Vec<PlanStep>,
    /// The plan's tensor table, addressed on the device.
    tensors: Vec<DevW>,
    output: Buf,
    /// Every `(group, expert, component)` the task may route to.
    components: HashMap<(u32, usize, usize), (u32, ExpertTensors<DevTensor>)>,
    stream: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    residency: Residency,
    registered: Vec<Registered>,
    /// Device address of every blob kept whole on the device or mapped.
    blobs: HashMap<u32, u64>,
    cache: Option<(SlotCache, DevMem)>,
    arena: DevMem,
    inputs: Vec<(DevMem, usize)>,
    host_route: Vec<f32>,
    /// Device addresses (and upload events) of the current `Moe` step's
    /// components, in the order it runs them.
    pending: Vec<(u64, Option<CudaEvent>)>,
    _dense: Vec<DevMem>,
}

impl std::fmt::Debug for CudaTask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTask")
            .field("task", &self.task.name)
            .field("residency", &self.residency)
            .field("cache", &self.cache_stats())
            .finish()
    }
}

fn invalid(why: &'static str) -> CudaError {
    CudaError::Runtime(taskpath_runtime::Error::InvalidProgram { op: 0, why })
}

impl<'m> CudaTask<'m> {
    fn new(gpu: &'m Gpu, opts: &CudaOptions, model: &'m Model<'m>, task: usize) -> Result<Self> {
        // The runtime's plan proves the program consistent (slots, shapes,
        // experts); the device then runs its steps.
        let info = model.task(task)?;
        let mut storage = PlanBuffers::new(&info);
        let plan = Plan::build(model, task, storage.storage())?;
        for b in model.path_blobs(&info) {
            model.verify_blob(b.index)?;
        }
        let dev_tensor = |v: &taskpath_runtime::TensorView<'_>| -> Result<DevTensor> {
            let blob = model.blob(v.blob).ok_or_else(|| invalid("no such blob"))?;
            DevTensor::new(v, blob.bytes)
        };
        let mut components = HashMap::new();
        let mut top_k = 1;
        for ps in plan.steps() {
            if let Step::Moe {
                group,
                mask,
                components: comps,
                top_k: k,
                ..
            } = ps.step
            {
                top_k = top_k.max(k);
                for j in mask.iter() {
                    for c in 0..comps {
                        let x = plan::expert_views(model, group, j, c)
                            .ok_or_else(|| invalid("missing expert component"))?;
                        let blob = x.conv_w.blob;
                        if x.all().iter().any(|t| t.blob != blob) {
                            return Err(invalid("an expert tensor outside its component's blob"));
                        }
                        let d = ExpertTensors::try_from_fn(|k| dev_tensor(x.all()[k as usize]))?;
                        components.insert((group, j, c), (blob, d));
                    }
                }
            }
        }
        let steps = plan.steps().to_vec();
        let output = plan.output();
        let slot_elems = plan.slot_elems();
        let plan_tensors: Vec<DevTensor> = plan
            .tensors()
            .iter()
            .map(dev_tensor)
            .collect::<Result<_>>()?;

        gpu.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let stream = gpu.ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let copy = gpu.ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let mut residency = match opts.residency {
            Residency::Auto if gpu.info.integrated => Residency::Mapped,
            Residency::Auto => Residency::DeviceCache,
            r => r,
        };
        // Register the package pages: the weights themselves on unified
        // memory; on a discrete GPU the pinned source of asynchronous uploads.
        let registered: Vec<Registered> = model
            .parts()
            .filter_map(|p| Registered::new(&gpu.ctx, p.bytes()))
            .collect();
        if residency == Residency::Mapped && registered.len() != model.chain_len() {
            if opts.residency == Residency::Mapped {
                return Err(CudaError::Unavailable(
                    "the driver refused to register the package memory for device access".into(),
                ));
            }
            residency = Residency::DeviceCache;
        }
        let map = |p: usize| registered.iter().find_map(|r| r.map(p));
        let mut blobs = HashMap::new();
        let mut dense = Vec::new();
        let mut expert_blobs = Vec::new();
        for b in model.path_blobs(&info) {
            let p = b.bytes.as_ptr() as usize;
            if residency == Residency::Mapped {
                blobs.insert(b.index, map(p).ok_or_else(|| unmapped(b.index))?);
            } else if b.rec.kind == blob_kind::EXPERT {
                expert_blobs.push(b.bytes.len());
            } else {
                let m = DevMem::new(&gpu.ctx, b.bytes.len())?;
                // SAFETY: `m` holds at least `b.bytes.len()` bytes; synchronous copy.
                unsafe { result::memcpy_htod_sync(m.ptr, b.bytes) }.map_err(drv("cuMemcpyHtoD"))?;
                blobs.insert(b.index, m.ptr);
                dense.push(m);
            }
        }
        let tensors = plan_tensors
            .into_iter()
            .map(|t| {
                let base = blobs
                    .get(&t.blob)
                    .copied()
                    .ok_or_else(|| unmapped(t.blob))?;
                Ok(DevW { t, base })
            })
            .collect::<Result<Vec<_>>>()?;
        let max_comps = steps
            .iter()
            .filter_map(|ps| match ps.step {
                Step::Moe { components, .. } => Some(components),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let cache = if residency == Residency::DeviceCache {
            let slot = expert_blobs.iter().copied().max().unwrap_or(256);
            let rounded = slot.div_ceil(256) * 256;
            let budget = opts
                .expert_budget
                .unwrap_or(rounded * expert_blobs.len().max(1));
            let mut c = SlotCache::new(slot, budget)?;
            let mem = DevMem::new(&gpu.ctx, c.slots() * c.slot_bytes())?;
            for &b in &opts.pin {
                let v = model
                    .blob(b)
                    .filter(|v| v.rec.kind == blob_kind::EXPERT)
                    .ok_or_else(|| {
                        CudaError::Budget(format!(
                            "blob {b} to pin is not an expert blob of the model"
                        ))
                    })?;
                if let Lookup::Miss { slot, .. } = c.pin(b, v.bytes.len())? {
                    let dst = mem.ptr + (slot * c.slot_bytes()) as u64;
                    // SAFETY: the slot holds `slot_bytes >= len` bytes.
                    unsafe { result::memcpy_htod_sync(dst, v.bytes) }
                        .map_err(drv("cuMemcpyHtoD"))?;
                }
            }
            // Every component of one Moe op must be resident at once.
            let per_op = top_k * max_comps;
            if c.unpinned() < per_op {
                return Err(CudaError::Budget(format!(
                    "{} unpinned slots of {} bytes, but one token's experts need {per_op}",
                    c.unpinned(),
                    c.slot_bytes()
                )));
            }
            Some((c, mem))
        } else {
            None
        };
        let inputs = info
            .modalities()
            .map(|m| {
                let (_, l, f) = model.modality(m).unwrap_or(("", 0, 0));
                Ok((DevMem::new(&gpu.ctx, 4 * l * f)?, l * f))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gpu,
            model,
            steps,
            tensors,
            output,
            components,
            residency,
            blobs,
            cache,
            arena: DevMem::new(&gpu.ctx, 4 * slot_elems)?,
            inputs,
            host_route: vec![0.0; 1 + 2 * taskpath_runtime::exec::MAX_TOP_K],
            pending: Vec::new(),
            _dense: dense,
            registered,
            stream,
            copy,
            task: info,
        })
    }

    /// Where the weights live (after resolving [`Residency::Auto`]).
    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// Device expert cache counters (`DeviceCache` only).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|(c, _)| c.stats())
    }

    /// Bytes of package memory registered with the driver.
    pub fn registered_bytes(&self) -> usize {
        self.registered.iter().map(|r| r.len).sum()
    }

    /// Runs the task (see [`Backend::execute`]).
    pub fn run(&mut self, inputs: &[&[f32]], outputs: &mut [f32]) -> Result<RunStats> {
        use taskpath_runtime::Error as E;
        let n_in = self.task.modality_mask.count_ones() as usize;
        if inputs.len() != n_in {
            return Err(E::InputCount {
                expected: n_in,
                got: inputs.len(),
            }
            .into());
        }
        for (index, (x, (_, len))) in inputs.iter().zip(&self.inputs).enumerate() {
            if x.len() != *len {
                return Err(E::InputShape {
                    index,
                    expected: *len,
                    got: x.len(),
                }
                .into());
            }
        }
        if outputs.len() != self.task.outputs {
            return Err(E::OutputShape {
                expected: self.task.outputs,
                got: outputs.len(),
            }
            .into());
        }
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(drv("cuCtxSetCurrent"))?;
        let cs = self.stream.cu_stream();
        for (x, (m, _)) in inputs.iter().zip(&self.inputs) {
            // SAFETY: the buffer holds exactly x.len() f32 (checked above);
            // from pageable memory the call returns once `x` has been read.
            unsafe { result::memcpy_htod_async(m.ptr, x, cs) }.map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        let mut stats = RunStats::default();
        let mut prims = DevPrims {
            gpu: self.gpu,
            stream: &self.stream,
            arena: self.arena.ptr,
            inputs: &self.inputs,
            host_route: &mut self.host_route,
        };
        let mut experts = DevExperts {
            model: self.model,
            components: &self.components,
            cache: self.cache.as_mut(),
            blobs: &self.blobs,
            copy: &self.copy,
            stream: &self.stream,
            pending: &mut self.pending,
            next: 0,
        };
        let mut tracer = NoTrace;
        for (i, ps) in self.steps.iter().enumerate() {
            let mut m = Meter {
                tracer: &mut tracer,
                stats: &mut stats,
            };
            run_step(
                i as u32,
                &ps.step,
                &RunCtx::default(),
                &self.tensors,
                &mut prims,
                &mut experts,
                &mut m,
            )?;
            stats.ops += 1;
        }
        let out = self.arena.ptr + 4 * self.output.start as u64;
        // SAFETY: `outputs.len()` floats lie inside the arena (the plan
        // proved the output slot large enough).
        unsafe { result::memcpy_dtoh_async(outputs, out, cs) }.map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        Ok(stats)
    }
}

/// The CUDA primitives: kernel launches on the task's stream over its
/// device arena (the plan's slots region, same offsets).
struct DevPrims<'t> {
    gpu: &'t Gpu,
    stream: &'t Arc<CudaStream>,
    arena: u64,
    inputs: &'t [(DevMem, usize)],
    host_route: &'t mut Vec<f32>,
}

impl DevPrims<'_> {
    fn launch(
        &self,
        name: &'static str,
        (grid, block): (u32, u32),
        shared: u32,
        args: &[A],
    ) -> Result<()> {
        let f = self.gpu.funcs.get(name).ok_or_else(|| CudaError::Driver {
            what: "kernel lookup",
            error: name.into(),
        })?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                A::P(p) => b.arg(p),
                A::I(v) => b.arg(v),
                A::U(v) => b.arg(v),
                A::F(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: every kernel's parameters are (u64 device pointer | i32 |
        // u32 | f32) in the order `args` gives them, checked against
        // kernels.cu by the call sites; pointers address live allocations
        // sized at `init` from the validated plan, and kernels bound-check
        // their thread indices.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel"))?;
        Ok(())
    }

    fn at(&self, b: &Buf) -> u64 {
        self.arena + 4 * b.start as u64
    }

    /// `y[rows, n_out] = W x + b` for one stored matrix (not low-rank);
    /// `kernel` is the plan's scratch for quantized activations.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        fmt: WeightFormat,
        n_out: usize,
        n_in: usize,
        w: u64,
        x: u64,
        b: u64,
        rows: usize,
        y: u64,
        kernel: &Buf,
    ) -> Result<()> {
        let (qb_len, _) = quant_scratch(fmt, n_in);
        let qb = self.at(kernel);
        let qs = qb + 4 * qb_len.div_ceil(4) as u64;
        match fmt {
            WeightFormat::F32 | WeightFormat::F16 => {
                let name = if fmt == WeightFormat::F32 {
                    "tp_linear_f32"
                } else {
                    "tp_linear_f16"
                };
                let args = [
                    A::P(w),
                    A::P(x),
                    A::P(b),
                    A::P(y),
                    i(rows),
                    i(n_out),
                    i(n_in),
                ];
                self.launch(name, per_thread(rows * n_out), 0, &args)
            }
            WeightFormat::I8Row => {
                let k = fmt.padded_cols(n_in);
                for r in 0..rows {
                    let (xr, yr) = (x + 4 * (r * n_in) as u64, y + 4 * (r * n_out) as u64);
                    let nb = k / 32;
                    self.launch(
                        "tp_prep_i8",
                        per_warp(nb),
                        0,
                        &[A::P(xr), i(n_in), i(nb), A::P(qb), A::P(qs)],
                    )?;
                    self.launch(
                        "tp_linear_i8",
                        per_warp(n_out),
                        0,
                        &[
                            A::P(w),
                            A::P(qb),
                            A::P(qs),
                            A::P(b),
                            A::P(yr),
                            i(n_out),
                            i(k),
                        ],
                    )?;
                }
                Ok(())
            }
            f => {
                let g = f.group().ok_or_else(|| {
                    CudaError::UnsupportedFormat(format!("weight format {f} has no CUDA kernel"))
                })?;
                let (bits, zp) = (f.bits() as usize, usize::from(f.has_zero_point()));
                let ng = f.padded_cols(n_in) / g;
                let (hts, xs) = (qs, qs + 4 * ng as u64);
                for r in 0..rows {
                    let (xr, yr) = (x + 4 * (r * n_in) as u64, y + 4 * (r * n_out) as u64);
                    self.launch(
                        "tp_prep_lut",
                        per_thread(ng),
                        0,
                        &[
                            A::P(xr),
                            i(n_in),
                            i(ng),
                            i(g),
                            i(zp),
                            A::P(qb),
                            A::P(hts),
                            A::P(xs),
                        ],
                    )?;
                    self.launch(
                        "tp_linear_lut",
                        per_thread(n_out),
                        0,
                        &[
                            A::P(w),
                            A::P(qb),
                            A::P(hts),
                            A::P(xs),
                            A::P(b),
                            A::P(yr),
                            i(n_out),
                            i(ng),
                            i(g),
                            i(bits),
                            i(zp),
                        ],
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl Primitives for DevPrims<'_> {
    type Error = CudaError;
    type W<'w> = DevW;
    const HOST_VISIBLE: bool = false;

    fn linear(
        &mut self,
        w: &DevW,
        b: Option<&DevW>,
        x: &Operand,
        rows: usize,
        y: &Buf,
        tmp: &Buf,
        kernel: &Buf,
    ) -> Result<()> {
        let x = match x {
            Operand::Input(k) => self.inputs.get(*k).map(|m| m.0.ptr).ok_or(E_INPUT)?,
            Operand::Slot(b) => self.at(b),
        };
        let bp = b.map_or(0, |b| b.addr_a());
        let (t, y) = (&w.t, self.at(y));
        if t.rank > 0 {
            let tp = self.at(tmp);
            self.matmul(t.format, t.rank, t.cols, w.addr_b(), x, 0, rows, tp, kernel)?;
            self.matmul(
                t.format,
                t.rows,
                t.rank,
                w.addr_a(),
                tp,
                bp,
                rows,
                y,
                kernel,
            )
        } else {
            self.matmul(t.format, t.rows, t.cols, w.addr_a(), x, bp, rows, y, kernel)
        }
    }

    fn add_weight(&mut self, w: &DevW, y: &Buf) -> Result<()> {
        let args = [A::P(self.at(y)), A::P(w.addr_a()), i(y.len())];
        self.launch("tp_add", per_thread(y.len()), 0, &args)
    }

    fn layer_norm(
        &mut self,
        x: &Buf,
        y: &Buf,
        g: &DevW,
        b: &DevW,
        eps: f32,
        scale: f32,
    ) -> Result<()> {
        let width = g.t.cols.max(1);
        let rows = x.len() / width;
        let args = [
            A::P(self.at(x)),
            A::P(self.at(y)),
            A::P(g.addr_a()),
            A::P(b.addr_a()),
            i(rows),
            i(width),
            A::F(eps),
            A::F(scale),
        ];
        self.launch("tp_layernorm", per_thread(rows), 0, &args)
    }

    fn attention(
        &mut self,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        out: &Buf,
        tokens: usize,
        heads: usize,
        _scratch: &Buf,
    ) -> Result<()> {
        let d = q.len() / tokens.max(1);
        let args = [
            A::P(self.at(q)),
            A::P(self.at(k)),
            A::P(self.at(v)),
            A::P(self.at(out)),
            i(tokens),
            i(d),
            i(heads),
        ];
        self.launch("tp_attention", per_thread(tokens * heads), 0, &args)
    }

    fn attn_pool(&mut self, u: &Buf, query: &DevW, out: &Buf, _scratch: &Buf) -> Result<()> {
        let d = query.t.cols.max(1);
        let l = u.len() / d;
        let shared = u32::try_from(4 * l).map_err(|_| E_SHAPE)?;
        let args = [
            A::P(self.at(u)),
            A::P(query.addr_a()),
            A::P(self.at(out)),
            i(l),
            i(d),
        ];
        self.launch("tp_attn_pool", (1, BLOCK), shared, &args)
    }

    fn gate_logits(&mut self, p: &Buf, gate: &DevW, function: GateFn, out: &Buf) -> Result<()> {
        // tp_gate with acc = 0, scale = 1 writes 0 + raw: the raw logits, but a
        // Laplace -0.0 comes out +0.0 (the bound in tests/conformance.rs).
        let args = [
            A::P(self.at(p)),
            A::P(gate.addr_a()),
            A::P(self.at(out)),
            i(gate.t.rows),
            i(gate.t.cols),
            i(usize::from(function == GateFn::Laplace)),
            i(0),
            A::F(1.0),
        ];
        self.launch("tp_gate", per_thread(gate.t.rows), 0, &args)
    }

    fn axpy(&mut self, a: f32, x: &Buf, y: &Buf) -> Result<()> {
        let args = [A::P(self.at(y)), A::P(self.at(x)), A::F(a), i(y.len())];
        self.launch("tp_axpy", per_thread(y.len()), 0, &args)
    }

    fn fill(&mut self, y: &Buf, v: f32) -> Result<()> {
        if v.to_bits() != 0 {
            return Err(invalid("the CUDA backend fills with +0.0 only"));
        }
        // SAFETY: `y` lies inside the arena (the plan proved it).
        unsafe { result::memset_d8_async(self.at(y), 0, 4 * y.len(), self.stream.cu_stream()) }
            .map_err(drv("cuMemsetD8Async"))
    }

    fn copy(&mut self, src: &Buf, dst: &Buf) -> Result<()> {
        // SAFETY: both ranges lie in the arena (the plan proved it).
        unsafe {
            result::memcpy_dtod_async(
                self.at(dst),
                self.at(src),
                4 * dst.len().min(src.len()),
                self.stream.cu_stream(),
            )
        }
        .map_err(drv("cuMemcpyDtoDAsync"))
    }

    fn route(&mut self, logits: &Buf, mask: &ExpertMask, k: usize, route: &Buf) -> Result<()> {
        let w = |n: usize| A::U((mask.0[n / 2] >> (32 * (n % 2))) as u32);
        let args = [
            A::P(self.at(logits)),
            i(logits.len()),
            w(0),
            w(1),
            w(2),
            w(3),
            w(4),
            w(5),
            w(6),
            w(7),
            i(k),
            A::P(self.at(route)),
        ];
        self.launch("tp_route", (1, 1), 0, &args)
    }

    fn read_route(
        &mut self,
        route: &Buf,
        k: usize,
        experts: &mut [u32],
        gates: &mut [f32],
    ) -> Result<usize> {
        let n = (1 + 2 * k).min(route.len()).min(self.host_route.len());
        let cs = self.stream.cu_stream();
        let at = self.at(route);
        // SAFETY: the route slot holds 1 + 2k floats (the plan proved it)
        // and `host_route` holds `n` of them.
        unsafe { result::memcpy_dtoh_async(&mut self.host_route[..n], at, cs) }
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        decode_route(&self.host_route[..n], k, experts, gates).ok_or(E_ROUTE_COUNT)
    }

    fn conv3(
        &mut self,
        w: &DevW,
        b: &DevW,
        u: &Buf,
        width: usize,
        token: usize,
        out: &Buf,
    ) -> Result<()> {
        let args = [
            A::P(w.addr_a()),
            A::P(b.addr_a()),
            A::P(self.at(u)),
            i(u.len() / width.max(1)),
            i(width),
            i(token),
            A::P(self.at(out)),
            i(w.t.rows),
        ];
        self.launch("tp_conv3_f32", per_thread(w.t.rows), 0, &args)
    }

    fn conv_window(&mut self, u: &Buf, width: usize, token: usize, window: &Buf) -> Result<()> {
        let args = [
            A::P(self.at(u)),
            i(u.len() / width.max(1)),
            i(width),
            i(token),
            A::P(self.at(window)),
        ];
        self.launch("tp_conv_cat", per_thread(3 * width), 0, &args)
    }

    fn gelu_add(&mut self, x: &Buf, residual: Option<&Buf>) -> Result<()> {
        match residual {
            Some(r) => self.launch(
                "tp_gelu_add",
                per_thread(x.len()),
                0,
                &[A::P(self.at(x)), A::P(self.at(r)), i(x.len())],
            ),
            None => self.launch(
                "tp_gelu",
                per_thread(x.len()),
                0,
                &[A::P(self.at(x)), i(x.len())],
            ),
        }
    }
}

/// Expert weights on the device: mapped package pages, or the device cache
/// filled on the copy stream ahead of the compute stream.
struct DevExperts<'t, 'm> {
    model: &'m Model<'m>,
    components: &'t HashMap<(u32, usize, usize), (u32, ExpertTensors<DevTensor>)>,
    cache: Option<&'t mut (SlotCache, DevMem)>,
    blobs: &'t HashMap<u32, u64>,
    copy: &'t Arc<CudaStream>,
    stream: &'t Arc<CudaStream>,
    pending: &'t mut Vec<(u64, Option<CudaEvent>)>,
    next: usize,
}

impl<'t> ExpertSource<DevPrims<'t>> for DevExperts<'_, '_> {
    fn prepare(&mut self, step: &Step, selected: &[u32]) -> Result<()> {
        let Step::Moe {
            group, components, ..
        } = *step
        else {
            return Err(invalid("not an expert step"));
        };
        self.pending.clear();
        self.next = 0;
        // Resolve every blob first: misses start uploading on the copy
        // stream right away, each followed by an event the compute stream
        // waits on just before that component, so uploads run ahead.
        let mut copy_waited = false;
        for &e in selected {
            for c in 0..components {
                let (blob, _) = self
                    .components
                    .get(&(group, e as usize, c))
                    .ok_or(E_COMPONENT)?;
                let Some((cache, mem)) = self.cache.as_deref_mut() else {
                    let addr = self
                        .blobs
                        .get(blob)
                        .copied()
                        .ok_or_else(|| unmapped(*blob))?;
                    self.pending.push((addr, None));
                    continue;
                };
                let src = self.model.blob(*blob).ok_or(E_COMPONENT)?.bytes;
                let look = cache.lookup(*blob, src.len())?;
                let addr = mem.ptr + (look.slot() * cache.slot_bytes()) as u64;
                if let Lookup::Miss { .. } = look {
                    if !copy_waited {
                        // An evicted slot may still be read by kernels already queued.
                        let ev = self
                            .stream
                            .record_event(None)
                            .map_err(drv("cuEventRecord"))?;
                        self.copy.wait(&ev).map_err(drv("cuStreamWaitEvent"))?;
                        copy_waited = true;
                    }
                    // SAFETY: the slot holds slot_bytes >= src.len() bytes; `src`
                    // is the package's (registered, hence pinned, or pageable)
                    // memory, alive for the task's lifetime.
                    unsafe { result::memcpy_htod_async(addr, src, self.copy.cu_stream()) }
                        .map_err(drv("cuMemcpyHtoDAsync"))?;
                    let ev = self.copy.record_event(None).map_err(drv("cuEventRecord"))?;
                    self.pending.push((addr, Some(ev)));
                } else {
                    self.pending.push((addr, None));
                }
            }
        }
        Ok(())
    }

    fn component<T: Tracer + ?Sized>(
        &mut self,
        step: &Step,
        j: usize,
        c: usize,
        _tracer: &mut T,
    ) -> Result<ExpertTensors<DevW>> {
        let Step::Moe { group, .. } = *step else {
            return Err(invalid("not an expert step"));
        };
        let (_, t) = self.components.get(&(group, j, c)).ok_or(E_COMPONENT)?;
        let (base, ev) = self.pending.get(self.next).ok_or(E_COMPONENT)?;
        self.next += 1;
        if let Some(ev) = ev {
            self.stream.wait(ev).map_err(drv("cuStreamWaitEvent"))?;
        }
        let base = *base;
        ExpertTensors::try_from_fn(|k| -> Result<DevW> {
            Ok(DevW {
                t: *t.all()[k as usize],
                base,
            })
        })
    }
}

impl Drop for CudaTask<'_> {
    fn drop(&mut self) {
        // Device buffers and registrations go after this; nothing may still read them.
        let _ = self.gpu.ctx.bind_to_thread();
        let _ = self.copy.synchronize();
        let _ = self.stream.synchronize();
    }
}

fn unmapped(blob: u32) -> CudaError {
    CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
        op: 0,
        why: if blob == u32::MAX {
            "blob not on the device"
        } else {
            "a blob of the task's path is not on the device"
        },
    })
}

const E_INPUT: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "input",
});
const E_SHAPE: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "attention pool length",
});
const E_ROUTE_COUNT: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "route slot holds more than top_k experts",
});
const E_COMPONENT: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "missing expert component",
});
