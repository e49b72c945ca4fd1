//! The CUDA backend proper: context, kernels, device memory, execution.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use taskpath_runtime::format::records::{blob_kind, gating};
use taskpath_runtime::{
    Backend, CacheStats, Kernels, Model, RunStats, Session, SessionOptions, TaskInfo, WeightFormat,
};

use crate::cache::{Lookup, SlotCache};
use crate::error::{drv, CudaError, Result};
use crate::geometry::{per_thread, per_warp, quant_scratch, BLOCK};
use crate::kernels;
use crate::plan::{self, Component, Op, Tensor};

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
        CudaTask::new(gpu, &self.opts, model, task, arena)
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
    ops: Vec<Op>,
    components: HashMap<(usize, usize), Component>,
    path_union: u64,
    stream: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    residency: Residency,
    registered: Vec<Registered>,
    /// Device address of every blob kept whole on the device or mapped.
    blobs: HashMap<u32, u64>,
    cache: Option<(SlotCache, DevMem)>,
    arena: DevMem,
    inputs: Vec<(DevMem, usize)>,
    hbuf: DevMem,
    mid: DevMem,
    obuf: DevMem,
    cat: DevMem,
    tmp: DevMem,
    qb: DevMem,
    qs: DevMem,
    host_route: Vec<f32>,
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

impl<'m> CudaTask<'m> {
    fn new(
        gpu: &'m Gpu,
        opts: &CudaOptions,
        model: &'m Model<'m>,
        task: usize,
        arena: &'m mut [u8],
    ) -> Result<Self> {
        // The CPU session proves the program consistent (slots, shapes,
        // path, checksums); the device then runs the same program.
        let so = SessionOptions {
            verify_path: true,
            kernels: Some(Kernels::generic()),
        };
        let _checked = Session::with_options(model, task, &mut *arena, so)?;
        let info = model.task(task)?;
        let ops = plan::decode(model, &info)?;
        let path_union = info
            .modalities()
            .filter_map(|m| model.path_mask(&info, m))
            .fold(0u64, |a, b| a | b);
        let hp = model.hparams();
        let (d, h, n) = (
            hp.d_model as usize,
            hp.ffn_hidden as usize,
            hp.experts as usize,
        );
        let mut components = HashMap::new();
        for j in (0..n.min(64)).filter(|j| path_union & (1 << j) != 0) {
            for c in 0..=info.stage {
                let comp = plan::component(model, j, c)?;
                if comp.tensors().iter().any(|t| t.blob != comp.blob) {
                    return Err(CudaError::Runtime(
                        taskpath_runtime::Error::InvalidProgram {
                            op: 0,
                            why: "an expert tensor outside its component's blob",
                        },
                    ));
                }
                components.insert((j, c), comp);
            }
        }
        // Scratch sizes over every matrix the task multiplies.
        let mut mats: Vec<(Tensor, usize)> = Vec::new();
        for op in &ops {
            match op {
                Op::Encode { w, l, .. } => mats.push((*w, *l)),
                Op::Linear { w, rows, .. } => mats.push((*w, *rows)),
                _ => {}
            }
        }
        for c in components.values() {
            mats.extend([(c.conv_w, 1), (c.fc1_w, 1), (c.fc2_w, 1)]);
        }
        let (mut tmp_len, mut qb_len, mut qs_len) = (1usize, 1usize, 1usize);
        for (t, rows) in &mats {
            tmp_len = tmp_len.max(rows * t.rank);
            for cols in [t.cols, t.rank] {
                let (b, s) = quant_scratch(t.format, cols);
                qb_len = qb_len.max(b);
                qs_len = qs_len.max(s);
            }
        }

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
            let per_op = hp.top_k as usize * (info.stage + 1);
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
        let mem = |n: usize| DevMem::new(&gpu.ctx, n);
        Ok(Self {
            gpu,
            model,
            ops,
            components,
            path_union,
            residency,
            blobs,
            cache,
            arena: mem(info.arena_bytes)?,
            inputs,
            hbuf: mem(4 * d)?,
            mid: mem(4 * h)?,
            obuf: mem(4 * d)?,
            cat: mem(4 * 3 * d)?,
            tmp: mem(4 * tmp_len)?,
            qb: mem(qb_len)?,
            qs: mem(4 * qs_len)?,
            host_route: vec![0.0; 1 + 2 * hp.top_k as usize],
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

    fn f(&self, name: &'static str) -> Result<&CudaFunction> {
        self.gpu.funcs.get(name).ok_or_else(|| CudaError::Driver {
            what: "kernel lookup",
            error: name.into(),
        })
    }

    fn launch(
        &self,
        name: &'static str,
        (grid, block): (u32, u32),
        shared: u32,
        args: &[A],
    ) -> Result<()> {
        let f = self.f(name)?;
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

    fn slot(&self, off: usize) -> u64 {
        self.arena.ptr + 4 * off as u64
    }

    fn blob_addr(&self, blob: u32) -> Result<u64> {
        self.blobs.get(&blob).copied().ok_or_else(|| unmapped(blob))
    }

    /// `y[rows, n_out] = W x + b` for one stored matrix (not low-rank).
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
    ) -> Result<()> {
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
                        &[
                            A::P(xr),
                            i(n_in),
                            i(nb),
                            A::P(self.qb.ptr),
                            A::P(self.qs.ptr),
                        ],
                    )?;
                    self.launch(
                        "tp_linear_i8",
                        per_warp(n_out),
                        0,
                        &[
                            A::P(w),
                            A::P(self.qb.ptr),
                            A::P(self.qs.ptr),
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
                let (hts, xs) = (self.qs.ptr, self.qs.ptr + 4 * ng as u64);
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
                            A::P(self.qb.ptr),
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
                            A::P(self.qb.ptr),
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

    /// `y = W x + b` with W at blob address `base`, through `tmp` when low-rank.
    fn linear(&self, w: &Tensor, base: u64, x: u64, b: u64, rows: usize, y: u64) -> Result<()> {
        let a = base + w.off_a as u64;
        if w.rank > 0 {
            let v = base + w.off_b as u64;
            self.matmul(w.format, w.rank, w.cols, v, x, 0, rows, self.tmp.ptr)?;
            self.matmul(w.format, w.rows, w.rank, a, self.tmp.ptr, b, rows, y)
        } else {
            self.matmul(w.format, w.rows, w.cols, a, x, b, rows, y)
        }
    }

    /// Device address of a dense (non-expert) f32 tensor.
    fn dense(&self, t: &Tensor, stats: &mut RunStats) -> Result<u64> {
        stats.weight_bytes += t.bytes;
        Ok(self.blob_addr(t.blob)? + t.off_a as u64)
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
        let hp = self.model.hparams();
        let (d, kk) = (hp.d_model as usize, hp.top_k as usize);
        let mut stats = RunStats::default();
        for n in 0..self.ops.len() {
            self.op(self.ops[n], d, kk, &mut stats)?;
            stats.ops += 1;
        }
        let out = self.task.rec.output_slot;
        let part = self.model.part(self.task.part).ok_or(E::UnknownTask)?;
        let off = part
            .slots()
            .get((self.task.rec.slot_start + out) as usize)
            .ok_or(E::InvalidProgram {
                op: 0,
                why: "output slot",
            })?
            .offset as usize;
        // SAFETY: `outputs.len()` floats lie inside the arena (the session
        // check at init proved the output slot large enough).
        unsafe { result::memcpy_dtoh_async(outputs, self.slot(off), cs) }
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        Ok(stats)
    }

    fn op(&mut self, op: Op, d: usize, kk: usize, stats: &mut RunStats) -> Result<()> {
        let hp = self.model.hparams();
        match op {
            Op::Encode {
                input,
                y,
                l,
                w,
                b,
                pos,
            } => {
                let x = self.inputs.get(input).map(|m| m.0.ptr).ok_or(E_INPUT)?;
                stats.weight_bytes += w.bytes;
                let base = self.blob_addr(w.blob)?;
                let bp = self.dense(&b, stats)?;
                self.linear(&w, base, x, bp, l, self.slot(y))?;
                let pp = self.dense(&pos, stats)?;
                self.launch(
                    "tp_add",
                    per_thread(l * d),
                    0,
                    &[A::P(self.slot(y)), A::P(pp), i(l * d)],
                )?;
            }
            Op::LayerNorm {
                x,
                y,
                rows,
                g,
                b,
                scale,
            } => {
                let (gp, bp) = (self.dense(&g, stats)?, self.dense(&b, stats)?);
                let args = [
                    A::P(self.slot(x)),
                    A::P(self.slot(y)),
                    A::P(gp),
                    A::P(bp),
                    i(rows),
                    i(g.cols),
                    A::F(hp.ln_eps),
                    A::F(scale),
                ];
                self.launch("tp_layernorm", per_thread(rows), 0, &args)?;
            }
            Op::Linear { x, y, rows, w, b } => {
                stats.weight_bytes += w.bytes;
                let base = self.blob_addr(w.blob)?;
                let bp = match &b {
                    Some(b) => self.dense(b, stats)?,
                    None => 0,
                };
                self.linear(&w, base, self.slot(x), bp, rows, self.slot(y))?;
            }
            Op::Attention {
                q,
                k,
                v,
                out,
                l,
                heads,
            } => {
                let args = [
                    A::P(self.slot(q)),
                    A::P(self.slot(k)),
                    A::P(self.slot(v)),
                    A::P(self.slot(out)),
                    i(l),
                    i(d),
                    i(heads),
                ];
                self.launch("tp_attention", per_thread(l * heads), 0, &args)?;
            }
            Op::AttnPool { u, l, query, out } => {
                let qp = self.dense(&query, stats)?;
                let shared = u32::try_from(4 * l).map_err(|_| E_SHAPE)?;
                let args = [
                    A::P(self.slot(u)),
                    A::P(qp),
                    A::P(self.slot(out)),
                    i(l),
                    i(d),
                ];
                self.launch("tp_attn_pool", (1, BLOCK), shared, &args)?;
            }
            Op::Gate {
                p,
                gate,
                logits,
                acc,
                scale,
            } => {
                let gp = self.dense(&gate, stats)?;
                let args = [
                    A::P(self.slot(p)),
                    A::P(gp),
                    A::P(self.slot(logits)),
                    i(gate.rows),
                    i(d),
                    i(usize::from(hp.gating != gating::SOFTMAX)),
                    i(usize::from(acc)),
                    A::F(scale),
                ];
                self.launch("tp_gate", per_thread(gate.rows), 0, &args)?;
            }
            Op::Route {
                logits,
                mask,
                route,
            } => {
                let args = [
                    A::P(self.slot(logits)),
                    i(hp.experts as usize),
                    A::U(mask as u32),
                    A::U((mask >> 32) as u32),
                    i(kk),
                    A::P(self.slot(route)),
                ];
                self.launch("tp_route", (1, 1), 0, &args)?;
            }
            Op::Moe {
                u,
                l,
                route,
                stage,
                token,
                out,
            } => self.moe(u, l, route, stage, token, out, d, kk, stats)?,
            Op::Copy { src, dst, len } => {
                // SAFETY: both ranges lie in the arena (session check at init).
                unsafe {
                    result::memcpy_dtod_async(
                        self.slot(dst),
                        self.slot(src),
                        4 * len,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(drv("cuMemcpyDtoDAsync"))?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn moe(
        &mut self,
        u: usize,
        l: usize,
        route: usize,
        stage: usize,
        token: usize,
        out: usize,
        d: usize,
        kk: usize,
        stats: &mut RunStats,
    ) -> Result<()> {
        let cs = self.stream.cu_stream();
        // SAFETY: `out` holds d floats of the arena.
        unsafe { result::memset_d8_async(self.slot(out), 0, 4 * d, cs) }
            .map_err(drv("cuMemsetD8Async"))?;
        // The host picks the expert blobs, so it needs the route now.
        let mut host_route = std::mem::take(&mut self.host_route);
        // SAFETY: the route slot holds 1 + 2k floats (session check at init).
        let copied =
            unsafe { result::memcpy_dtoh_async(&mut host_route[..], self.slot(route), cs) }
                .map_err(drv("cuMemcpyDtoHAsync"))
                .and_then(|()| {
                    self.stream
                        .synchronize()
                        .map_err(drv("cuStreamSynchronize"))
                });
        self.host_route = host_route;
        copied?;
        let r = &self.host_route;
        let got = r[0] as usize;
        if got > kk {
            return Err(E_ROUTE_COUNT);
        }
        let mut work: Vec<(Component, f32)> = Vec::with_capacity(got * (stage + 1));
        for j in 0..got {
            let (e, g) = (r[1 + j], r[1 + kk + j]);
            if !(e >= 0.0 && (e as u64) < 64 && self.path_union & (1 << e as u64) != 0) {
                return Err(E_ROUTE_PATH);
            }
            for c in 0..=stage {
                let comp = *self.components.get(&(e as usize, c)).ok_or(E_COMPONENT)?;
                work.push((comp, g));
            }
        }
        // Resolve every blob first: misses start uploading on the copy
        // stream right away, each followed by an event the compute stream
        // waits on just before that component, so uploads run ahead.
        let mut addrs: Vec<(u64, Option<CudaEvent>)> = Vec::with_capacity(work.len());
        let mut copy_waited = false;
        for (comp, _) in &work {
            let Some((cache, mem)) = self.cache.as_mut() else {
                addrs.push((self.blob_addr(comp.blob)?, None));
                continue;
            };
            let src = self.model.blob(comp.blob).ok_or(E_COMPONENT)?.bytes;
            let look = cache.lookup(comp.blob, src.len())?;
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
                addrs.push((addr, Some(ev)));
            } else {
                addrs.push((addr, None));
            }
        }
        let ut = self.slot(u) + 4 * (token * d) as u64;
        for ((comp, g), (base, ev)) in work.iter().zip(&addrs) {
            if let Some(ev) = ev {
                self.stream.wait(ev).map_err(drv("cuStreamWaitEvent"))?;
            }
            self.component(comp, *base, u, l, token, ut, *g, out, d)?;
            stats.weight_bytes += comp.tensors().iter().map(|t| t.bytes).sum::<usize>();
            stats.expert_components += 1;
        }
        Ok(())
    }

    /// `out += g * fc2(GELU(fc1(LN(u_t + GELU(conv(u)_t)))))` for one component.
    #[allow(clippy::too_many_arguments)]
    fn component(
        &self,
        c: &Component,
        base: u64,
        u: usize,
        l: usize,
        token: usize,
        ut: u64,
        g: f32,
        out: usize,
        d: usize,
    ) -> Result<()> {
        let h = self.model.hparams().ffn_hidden as usize;
        let v = |t: &Tensor| base + t.off_a as u64;
        if c.conv_w.format == WeightFormat::F32 && c.conv_w.rank == 0 {
            // Dense f32: the CPU skips the zero-padded taps (conv3_at), so must we.
            let args = [
                A::P(v(&c.conv_w)),
                A::P(v(&c.conv_b)),
                A::P(self.slot(u)),
                i(l),
                i(d),
                i(token),
                A::P(self.hbuf.ptr),
                i(c.conv_w.rows),
            ];
            self.launch("tp_conv3_f32", per_thread(c.conv_w.rows), 0, &args)?;
        } else {
            let cat = self.cat.ptr;
            self.launch(
                "tp_conv_cat",
                per_thread(3 * d),
                0,
                &[A::P(self.slot(u)), i(l), i(d), i(token), A::P(cat)],
            )?;
            self.linear(&c.conv_w, base, cat, v(&c.conv_b), 1, self.hbuf.ptr)?;
        }
        self.launch(
            "tp_gelu_add",
            per_thread(d),
            0,
            &[A::P(self.hbuf.ptr), A::P(ut), i(d)],
        )?;
        self.launch(
            "tp_layernorm",
            per_thread(1),
            0,
            &[
                A::P(self.hbuf.ptr),
                A::P(self.hbuf.ptr),
                A::P(v(&c.ln_g)),
                A::P(v(&c.ln_b)),
                i(1),
                i(d),
                A::F(self.model.hparams().ln_eps),
                A::F(1.0),
            ],
        )?;
        self.linear(&c.fc1_w, base, self.hbuf.ptr, v(&c.fc1_b), 1, self.mid.ptr)?;
        self.launch("tp_gelu", per_thread(h), 0, &[A::P(self.mid.ptr), i(h)])?;
        self.linear(&c.fc2_w, base, self.mid.ptr, v(&c.fc2_b), 1, self.obuf.ptr)?;
        self.launch(
            "tp_axpy",
            per_thread(d),
            0,
            &[A::P(self.slot(out)), A::P(self.obuf.ptr), A::F(g), i(d)],
        )
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
const E_ROUTE_PATH: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "route names an expert outside the task's path",
});
const E_COMPONENT: CudaError = CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
    op: 0,
    why: "missing expert component",
});
