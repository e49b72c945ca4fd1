//! `tp_session`: one task's session, living in caller-provided memory.

use std::time::Instant;

use taskpath_runtime::{
    Backend, CacheStats, CpuBackend, Prefetch, ResidencyCache, RunStats, Session, SessionOptions,
    Tracer,
};

use crate::model::{model_ref, out_handle, tp_model};
use crate::status::{guard, tp_status, Fail, Res};
use crate::{check_out_struct, read_versioned, write_out, TP_ARENA_ALIGN, TP_MAX_MODALITIES};

/// Bytes at the start of the session memory that hold the `tp_session`
/// itself; the task's planned arena follows. `tp_session_arena_size` and
/// `tp_task_info.session_bytes` include it, so a firmware can reserve
/// `TP_SESSION_OVERHEAD + arena_bytes` statically from `taskpath inspect`.
/// (The object itself takes under 600 bytes on 64-bit targets, followed by
/// the slot of `tp_prefetch_attach`'s hook; the rest is headroom so this
/// value, part of the ABI, need not change as it grows.)
pub const TP_SESSION_OVERHEAD: usize = 1024;

/// The CPU backend of the C library, checking each task's path checksums
/// at session creation (the default) or not (`TP_SESSION_NO_VERIFY`).
static CPU_VERIFIED: CpuBackend = CpuBackend {
    options: SessionOptions {
        verify_path: true,
        kernels: None,
    },
};
static CPU_UNVERIFIED: CpuBackend = CpuBackend {
    options: SessionOptions {
        verify_path: false,
        kernels: None,
    },
};

/// `tp_session_config.flags`: skip checking the checksums of the task's
/// blobs at creation (they are checked by default: one pass over the task's
/// weights). For packages already verified (e.g. with `TP_MODEL_VERIFY`).
pub const TP_SESSION_NO_VERIFY: u32 = 1;

const SESSION_FLAGS: u32 = TP_SESSION_NO_VERIFY;

/// Bytes of session memory that a session with an expert budget
/// (`tp_session_create_budgeted`) uses for its expert cache's bookkeeping,
/// after the `TP_SESSION_OVERHEAD` bytes and before the task's arena
/// (`tp_session_arena_size_budgeted` includes it). The cached expert bytes
/// themselves live in the separate budget memory.
pub const TP_CACHE_OVERHEAD: usize = 12288;

const _: () = {
    assert!(
        core::mem::size_of::<ResidencyCache<'static>>() <= TP_CACHE_OVERHEAD,
        "ResidencyCache outgrew TP_CACHE_OVERHEAD"
    );
    assert!(core::mem::align_of::<ResidencyCache<'static>>() <= TP_ARENA_ALIGN);
    assert!(TP_CACHE_OVERHEAD % TP_ARENA_ALIGN == 0);
};

/// Counters of a budgeted session's expert cache. Set `struct_size =
/// sizeof(tp_cache_stats)` before `tp_session_cache_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tp_cache_stats {
    /// In: `sizeof(tp_cache_stats)`. Out: unchanged.
    pub struct_size: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Bytes of budget memory the session was given.
    pub budget_bytes: u64,
    /// Expert fetches served from the cache.
    pub hits: u64,
    /// Expert fetches that copied the blob in from the package.
    pub misses: u64,
    /// Blobs dropped to make room for others.
    pub evictions: u64,
    /// Bytes copied from the package into the budget.
    pub bytes_copied: u64,
    /// Most bytes of expert blobs held at once (never above `budget_bytes`).
    pub peak_resident_bytes: u64,
    /// Times the cache slid its blobs together to make one gap.
    pub compactions: u64,
}

/// Callbacks receiving a session's events (the runtime's `Tracer`), with a
/// user pointer passed back to each. Any callback may be NULL (that event is
/// not reported). Zero-initialise, set `struct_size`, fill what you need.
///
/// Callbacks run on the thread calling `tp_session_run`, inside it; they
/// must not call `tp_*` functions on the same session and must return
/// (no `longjmp` out of them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_tracer {
    /// `sizeof(tp_tracer)`; any other value gives `TP_ERR_STRUCT_SIZE`.
    pub struct_size: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Passed as the first argument of every callback.
    pub user: *mut core::ffi::c_void,
    /// Op `index` of the task's program (opcode `opcode`, see
    /// docs/FORMAT.md) is about to run.
    pub op_begin:
        Option<unsafe extern "C" fn(user: *mut core::ffi::c_void, index: u32, opcode: u32)>,
    /// Op `index` finished.
    pub op_end: Option<unsafe extern "C" fn(user: *mut core::ffi::c_void, index: u32, opcode: u32)>,
    /// `bytes` of weights were read from blob `blob`.
    pub blob_read:
        Option<unsafe extern "C" fn(user: *mut core::ffi::c_void, blob: u32, bytes: usize)>,
    /// An expert component's blob is fetched for evaluation.
    pub expert_fetch: Option<unsafe extern "C" fn(user: *mut core::ffi::c_void, blob: u32)>,
    /// The router of `modality` picked `n` experts (`experts[i]`, with gate
    /// `gates[i]`); both arrays are valid during the call only.
    pub route: Option<
        unsafe extern "C" fn(
            user: *mut core::ffi::c_void,
            modality: u32,
            experts: *const u32,
            gates: *const f32,
            n: usize,
        ),
    >,
    /// A budgeted session is about to fetch expert blob `blob`; `hit` is 1
    /// when the cache holds it, else 0.
    pub cache_access:
        Option<unsafe extern "C" fn(user: *mut core::ffi::c_void, blob: u32, hit: u32)>,
}

/// The runtime's `Tracer` over a caller's `tp_tracer`.
struct CTracer<'t>(&'t tp_tracer);

impl Tracer for CTracer<'_> {
    fn op_begin(&mut self, index: u32, op: &taskpath_runtime::format::Op) {
        if let Some(f) = self.0.op_begin {
            // SAFETY: a callback the caller installed with tp_trace_attach,
            // called with the user pointer it gave, as documented.
            unsafe { f(self.0.user, index, op.opcode().into()) }
        }
    }
    fn op_end(&mut self, index: u32, op: &taskpath_runtime::format::Op) {
        if let Some(f) = self.0.op_end {
            // SAFETY: as in op_begin.
            unsafe { f(self.0.user, index, op.opcode().into()) }
        }
    }
    fn blob_read(&mut self, blob: u32, bytes: usize) {
        if let Some(f) = self.0.blob_read {
            // SAFETY: as in op_begin.
            unsafe { f(self.0.user, blob, bytes) }
        }
    }
    fn expert_fetch(&mut self, blob: u32) {
        if let Some(f) = self.0.expert_fetch {
            // SAFETY: as in op_begin.
            unsafe { f(self.0.user, blob) }
        }
    }
    fn route(&mut self, modality: u32, experts: &[u32], gates: &[f32]) {
        if let Some(f) = self.0.route {
            let n = experts.len().min(gates.len());
            // SAFETY: as in op_begin; both arrays hold n values and outlive the call.
            unsafe { f(self.0.user, modality, experts.as_ptr(), gates.as_ptr(), n) }
        }
    }
    fn wants_costly_events(&self) -> bool {
        self.0.cache_access.is_some()
    }
    fn cache_access(&mut self, blob: u32, hit: bool) {
        if let Some(f) = self.0.cache_access {
            // SAFETY: as in op_begin.
            unsafe { f(self.0.user, blob, u32::from(hit)) }
        }
    }
}

/// A prefetch hook (the runtime's `Prefetch`): when a session starts
/// encoding input `i` of its task, it calls `will_need` once per expert blob
/// that input `i + 1`'s router may pick (the task path's mask for that
/// modality, components `0..=stage`), in file order, which the packer makes
/// hottest first; nothing for the last input. Firmware can start a DMA of
/// those bytes from external flash into its budget memory meanwhile.
/// Zero-initialise, set `struct_size`, fill what you need.
///
/// Hints are sent for sessions with and without an expert budget, as the
/// Rust `Session` does: a budgeted session copies the blob into its budget
/// when the router picks it, an unbudgeted one reads it in place (then a
/// hint can still warm a flash cache or an XIP prefetcher).
///
/// `will_need` runs on the thread calling `tp_session_run`, inside it; it
/// must not call `tp_*` functions on the same session, must return (no
/// `longjmp` out of it) and must not block for long: the session waits for
/// it (start a transfer, do not wait for it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_prefetch {
    /// `sizeof(tp_prefetch)`; any other value gives `TP_ERR_STRUCT_SIZE`.
    pub struct_size: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Passed as the first argument of `will_need`.
    pub user: *mut core::ffi::c_void,
    /// Blob `blob` (global blob index, as in the tracer's `expert_fetch`)
    /// will likely be fetched soon. `bytes`, `len`: the blob's bytes in the
    /// model's package (in place in the flash/memory given to
    /// `tp_model_open_memory`, in its copy with `TP_MODEL_COPY`, or in the
    /// file's mapping), read-only, valid until `tp_model_close`. NULL: no
    /// hints are reported.
    pub will_need: Option<
        unsafe extern "C" fn(user: *mut core::ffi::c_void, blob: u32, bytes: *const u8, len: usize),
    >,
}

/// The runtime's `Prefetch` over a caller's `tp_prefetch`. Lives in the
/// session memory after the `tp_session` (at `PREFETCH_SLOT`), where the
/// session's `Session` can borrow it for as long as it lives.
struct CPrefetch(*const tp_prefetch);

impl Prefetch for CPrefetch {
    fn will_need(&mut self, blob: u32, bytes: &[u8]) {
        // SAFETY: installed by tp_prefetch_attach, which checked it; the
        // caller keeps it alive and unchanged until it detaches it or
        // destroys the session.
        let p = unsafe { &*self.0 };
        if let Some(f) = p.will_need {
            // SAFETY: a callback the caller installed, called with its user
            // pointer as documented; `bytes` are package bytes that outlive
            // the call (the model outlives its sessions).
            unsafe { f(p.user, blob, bytes.as_ptr(), bytes.len()) }
        }
    }
}

/// Offset in the session memory of the `CPrefetch` that
/// `tp_prefetch_attach` installs: after the `tp_session` (outside it, so the
/// `&mut tp_session` of each call never overlaps the `Session`'s borrow of
/// it), within `TP_SESSION_OVERHEAD`.
const PREFETCH_SLOT: usize =
    core::mem::size_of::<tp_session>().next_multiple_of(core::mem::align_of::<CPrefetch>());

const _: () = {
    assert!(
        PREFETCH_SLOT + core::mem::size_of::<CPrefetch>() <= TP_SESSION_OVERHEAD,
        "tp_session and the prefetch slot outgrew TP_SESSION_OVERHEAD"
    );
    assert!(core::mem::align_of::<CPrefetch>() <= TP_ARENA_ALIGN);
};

/// Options for `tp_session_create`. Pass NULL for the defaults, or
/// zero-initialise and set `struct_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_session_config {
    /// `sizeof(tp_session_config)`; any other value gives `TP_ERR_STRUCT_SIZE`.
    pub struct_size: u32,
    /// `TP_SESSION_*` bits; unknown bits give `TP_ERR_INVALID_ARGUMENT`.
    pub flags: u32,
}

/// Counters of a session's runs. Set `struct_size = sizeof(tp_run_stats)`
/// before `tp_session_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tp_run_stats {
    /// In: `sizeof(tp_run_stats)`. Out: unchanged.
    pub struct_size: u32,
    /// Ops the last run executed.
    pub ops: u32,
    /// Expert components the last run evaluated (selected experts x
    /// components, summed over modalities and tokens).
    pub expert_components: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Bytes of weights the last run read.
    pub weight_bytes: u64,
    /// Successful runs since the session was created.
    pub runs: u64,
    /// Wall time of the last successful run, in nanoseconds (host clock).
    pub last_run_ns: u64,
    /// Wall time of all successful runs, in nanoseconds.
    pub total_run_ns: u64,
}

const SESSION_TAG: u64 = u64::from_le_bytes(*b"tpSESSN1");

/// A session for one task. Opaque. It lives in the first
/// `TP_SESSION_OVERHEAD` bytes of the caller's session memory (the handle
/// is the memory's address); the library allocates nothing for it.
///
/// One thread at a time may use a session; different sessions (of the same
/// model or not) may run concurrently on different threads.
pub struct tp_session {
    tag: u64,
    model: *const tp_model,
    /// Borrows the model (kept open by its session count) and the caller's
    /// arena after this header.
    session: Session<'static, 'static>,
    stats: tp_run_stats,
    /// Installed by tp_trace_attach (NULL: none); the caller keeps it alive.
    tracer: *const tp_tracer,
}

impl core::fmt::Debug for tp_session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("tp_session")
            .field("task", &self.session.task().name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const _: () = {
    assert!(
        core::mem::size_of::<tp_session>() <= TP_SESSION_OVERHEAD,
        "tp_session outgrew TP_SESSION_OVERHEAD"
    );
    assert!(core::mem::align_of::<tp_session>() <= TP_ARENA_ALIGN);
    assert!(TP_SESSION_OVERHEAD % TP_ARENA_ALIGN == 0);
};

/// Session memory a task with `arena_bytes` of plan needs.
pub(crate) fn session_bytes(arena_bytes: usize) -> usize {
    TP_SESSION_OVERHEAD.saturating_add(arena_bytes)
}

/// Checks a session handle: non-NULL, aligned, tagged as live.
///
/// # Safety
/// `p` is NULL or a handle from `tp_session_create` whose memory is still
/// the caller's session memory (destroyed sessions are recognised by their
/// cleared tag while that memory is not reused).
unsafe fn session_mut<'s>(p: *mut tp_session, arg: &str) -> Res<&'s mut tp_session> {
    if p.is_null() {
        return Err(Fail::null(arg));
    }
    if (p as usize) % TP_ARENA_ALIGN != 0 {
        return Err(Fail::new(
            tp_status::TP_ERR_INVALID_HANDLE,
            format!("`{arg}` is not a tp_session handle (misaligned pointer)"),
        ));
    }
    // SAFETY: non-null and aligned; by contract it is session memory
    // written by tp_session_create: its tag field is read first, as a plain
    // u64, before the rest is trusted.
    let tag = unsafe {
        p.cast::<u8>()
            .add(core::mem::offset_of!(tp_session, tag))
            .cast::<u64>()
            .read()
    };
    if tag != SESSION_TAG {
        return Err(Fail::new(
            tp_status::TP_ERR_INVALID_HANDLE,
            format!("`{arg}` is not a live tp_session handle (destroyed, or not a session)"),
        ));
    }
    // SAFETY: tagged, so tp_session_create wrote a tp_session here; the
    // caller guarantees no other thread uses it during this call.
    Ok(unsafe { &mut *p })
}

/// The expert budget of a budgeted session: memory and length.
type Budget = Option<(*mut core::ffi::c_void, usize)>;

fn create(
    model: *const tp_model,
    task: u32,
    arena: *mut core::ffi::c_void,
    len: usize,
    config: *const tp_session_config,
    budget: Budget,
    out: *mut *mut tp_session,
) -> Res {
    // SAFETY: checked non-null; the caller guarantees it is writable.
    let out = unsafe { out_handle(out)? };
    // SAFETY: NULL or a live model handle, by contract.
    let m: &'static tp_model = unsafe { model_ref(model, "model")? };
    // SAFETY: NULL or a tp_session_config, by contract.
    let cfg = unsafe { read_versioned(config, "tp_session_config")? };
    let flags = cfg.map_or(0, |c| c.flags);
    if flags & !SESSION_FLAGS != 0 {
        return Err(Fail::invalid(format!(
            "tp_session_config.flags has unknown bits {:#x} (known: TP_SESSION_NO_VERIFY)",
            flags & !SESSION_FLAGS
        )));
    }
    let info = m
        .model()
        .task(task as usize)
        .map_err(|_| m.unknown_task(task))?;
    if arena.is_null() {
        return Err(Fail::null("arena"));
    }
    if (arena as usize) % TP_ARENA_ALIGN != 0 {
        return Err(Fail::new(
            tp_status::TP_ERR_ARENA_MISALIGNED,
            format!(
                "session memory at {:#x} is not {TP_ARENA_ALIGN}-byte aligned",
                arena as usize
            ),
        ));
    }
    let cache_bytes = if budget.is_some() {
        TP_CACHE_OVERHEAD
    } else {
        0
    };
    let need = session_bytes(info.arena_bytes).saturating_add(cache_bytes);
    if len < need {
        return Err(Fail::new(
            tp_status::TP_ERR_ARENA_TOO_SMALL,
            format!(
                "arena too small: task {:?} needs {need} bytes \
                 (TP_SESSION_OVERHEAD {TP_SESSION_OVERHEAD} + cache {cache_bytes} + planned arena {}), got {len}",
                info.name, info.arena_bytes
            ),
        ));
    }
    if let Some((b, _)) = budget {
        if b.is_null() {
            return Err(Fail::null("budget"));
        }
    }
    let header = arena.cast::<tp_session>();
    // SAFETY: the caller gives `len >= need` writable bytes at `arena`, kept
    // for this session alone until tp_session_destroy; the bytes after the
    // header are disjoint from it. The lifetime is the session's, enforced
    // at run time (the handle's tag and the model's session count).
    let work: &'static mut [u8] = unsafe {
        std::slice::from_raw_parts_mut(
            arena.cast::<u8>().add(TP_SESSION_OVERHEAD + cache_bytes),
            len - TP_SESSION_OVERHEAD - cache_bytes,
        )
    };
    // The backend is chosen through the runtime's `Backend` interface; the
    // C library carries the CPU backend (with or without path checks).
    let backend = if flags & TP_SESSION_NO_VERIFY == 0 {
        &CPU_VERIFIED
    } else {
        &CPU_UNVERIFIED
    };
    let mut session = backend
        .init(m.model(), task as usize, work)
        .map_err(|e| Fail::runtime(e, format!("creating a session for task {:?}", info.name)))?;
    if let Some((b, blen)) = budget {
        // SAFETY: by contract `budget` is `blen` writable bytes kept for this
        // session alone until tp_session_destroy, disjoint from `arena`.
        let mem: &'static mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(b.cast::<u8>(), blen) };
        let cache = ResidencyCache::new(m.model(), mem)
            .map_err(|e| Fail::runtime(e, "creating the expert cache in `budget`"))?;
        let at = arena
            .cast::<u8>()
            .wrapping_add(TP_SESSION_OVERHEAD)
            .cast::<ResidencyCache<'static>>();
        // SAFETY: the TP_CACHE_OVERHEAD bytes after the session header are
        // in the caller's memory (len >= need), aligned (TP_SESSION_OVERHEAD
        // is a multiple of TP_ARENA_ALIGN >= its alignment), large enough
        // (asserted at compile time) and disjoint from the header and `work`;
        // they stay put until tp_session_destroy, which drops the session
        // that borrows the cache (the cache itself needs no drop).
        let cache: &'static mut ResidencyCache<'static> = unsafe {
            at.write(cache);
            &mut *at
        };
        session = session
            .with_blob_source(cache)
            .map_err(|e| Fail::runtime(e, format!("budget for task {:?}", info.name)))?;
    }
    m.session_opened();
    // SAFETY: `header` is TP_ARENA_ALIGN-aligned (>= align_of tp_session)
    // and the first TP_SESSION_OVERHEAD >= size_of tp_session bytes of the
    // caller's memory, disjoint from `work`.
    unsafe {
        header.write(tp_session {
            tag: SESSION_TAG,
            model,
            session,
            stats: tp_run_stats {
                struct_size: core::mem::size_of::<tp_run_stats>() as u32,
                ..Default::default()
            },
            tracer: core::ptr::null(),
        })
    };
    *out = header;
    Ok(())
}

/// Creates a session for task `task` in caller-provided memory.
///
/// - `arena`, `len`: the session memory, `TP_ARENA_ALIGN`-aligned
///   (`TP_ERR_ARENA_MISALIGNED`), at least `tp_session_arena_size(model,
///   task)` bytes (`TP_ERR_ARENA_TOO_SMALL`), e.g. a static array. The
///   session keeps using it until `tp_session_destroy`: the caller must not
///   read, write or free it meanwhile. Its first `TP_SESSION_OVERHEAD`
///   bytes hold the session object, the rest is the task's working memory.
/// - `config`: NULL for the defaults (blob checksums of the task's path are
///   verified now), or options. Not retained.
/// - `out`: receives the handle (equal to `arena`); set to NULL on failure.
///
/// Checks the task's whole op program against the package, so later runs
/// meet no surprise. Allocates nothing. The model must stay open until the
/// session is destroyed (`tp_model_close` returns `TP_ERR_BUSY` meanwhile).
///
/// # Safety
/// `model` is NULL or a live model handle; `arena` is NULL or `len`
/// writable bytes; `config` is NULL or a valid `tp_session_config`; `out`
/// is writable.
#[no_mangle]
pub unsafe extern "C" fn tp_session_create(
    model: *const tp_model,
    task: u32,
    arena: *mut core::ffi::c_void,
    len: usize,
    config: *const tp_session_config,
    out: *mut *mut tp_session,
) -> tp_status {
    guard("tp_session_create", || {
        create(model, task, arena, len, config, None, out)
    })
}

/// [`tp_session_create`] with an expert budget: the task's expert blobs are
/// copied on demand into `budget` (`budget_len` bytes, 16-byte aligned, e.g.
/// fast on-chip RAM) and kept there, least recently used evicted first,
/// instead of being read in place from the package (external flash). Outputs
/// are bit-identical to the unbudgeted session's.
///
/// - `arena`, `len`: as for `tp_session_create`, but at least
///   `tp_session_arena_size_budgeted` bytes (the cache's bookkeeping,
///   `TP_CACHE_OVERHEAD` bytes, lives there too).
/// - `budget`, `budget_len`: the budget memory (`TP_ERR_NULL_ARGUMENT` if
///   NULL, `TP_ERR_ARENA_MISALIGNED` if not 16-byte aligned), at least
///   `tp_model_min_expert_budget` bytes and enough for each of the task's
///   expert blobs (`TP_ERR_BUDGET_TOO_SMALL`, reported here, never in
///   `tp_session_run`). Used by the session until `tp_session_destroy`.
///
/// Allocates nothing. `tp_session_cache_stats` reads the cache's counters.
///
/// # Safety
/// As `tp_session_create`; `budget` is NULL or `budget_len` writable bytes
/// disjoint from `arena`.
#[no_mangle]
pub unsafe extern "C" fn tp_session_create_budgeted(
    model: *const tp_model,
    task: u32,
    arena: *mut core::ffi::c_void,
    len: usize,
    config: *const tp_session_config,
    budget: *mut core::ffi::c_void,
    budget_len: usize,
    out: *mut *mut tp_session,
) -> tp_status {
    guard("tp_session_create_budgeted", || {
        create(
            model,
            task,
            arena,
            len,
            config,
            Some((budget, budget_len)),
            out,
        )
    })
}

/// Bytes of session memory task `task` needs with an expert budget, into
/// `*size`: `tp_session_arena_size` plus `TP_CACHE_OVERHEAD`.
///
/// # Safety
/// `model` is NULL or a live model handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_session_arena_size_budgeted(
    model: *const tp_model,
    task: u32,
    size: *mut usize,
) -> tp_status {
    guard("tp_session_arena_size_budgeted", || {
        // SAFETY: the caller's contract, passed on.
        unsafe { arena_size(model, task, size, TP_CACHE_OVERHEAD) }
    })
}

/// The smallest expert budget for `model` into `*size`: its largest expert
/// blob, rounded up to 64 bytes. Budgets are usually chosen as a share of
/// the model's expert bytes (`taskpath residency` measures hit rates).
///
/// # Safety
/// `model` is NULL or a live model handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_model_min_expert_budget(
    model: *const tp_model,
    size: *mut usize,
) -> tp_status {
    guard("tp_model_min_expert_budget", || {
        // SAFETY: NULL or a live model handle, by contract.
        let m = unsafe { model_ref(model, "model")? };
        if size.is_null() {
            return Err(Fail::null("size"));
        }
        // SAFETY: non-null and writable by contract.
        unsafe { write_out(size, ResidencyCache::min_budget(m.model())) };
        Ok(())
    })
}

/// The smallest expert budget `tp_session_create_budgeted` accepts for task
/// `task` into `*size`: at least `tp_model_min_expert_budget`, and for a
/// language-model task enough for one token's active experts of every MoE
/// layer at once (its top-k largest expert blobs), below which every token
/// would re-read its layers' experts.
///
/// # Safety
/// `model` is NULL or a live model handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_task_min_expert_budget(
    model: *const tp_model,
    task: u32,
    size: *mut usize,
) -> tp_status {
    guard("tp_task_min_expert_budget", || {
        // SAFETY: NULL or a live model handle, by contract.
        let m = unsafe { model_ref(model, "model")? };
        if size.is_null() {
            return Err(Fail::null("size"));
        }
        let model = m.model();
        let info = model
            .task(task as usize)
            .map_err(|_| m.unknown_task(task))?;
        let need = ResidencyCache::min_budget(model).max(model.layer_expert_budget(&info));
        // SAFETY: non-null and writable by contract.
        unsafe { write_out(size, need) };
        Ok(())
    })
}

/// Copies a budgeted session's cache counters into `*stats`. The caller
/// sets `stats->struct_size = sizeof(tp_cache_stats)` first. A session made
/// by `tp_session_create` (no budget) gives `TP_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `stats` is NULL or a writable `tp_cache_stats` with `struct_size` set.
#[no_mangle]
pub unsafe extern "C" fn tp_session_cache_stats(
    session: *mut tp_session,
    stats: *mut tp_cache_stats,
) -> tp_status {
    guard("tp_session_cache_stats", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        // SAFETY: NULL or a writable tp_cache_stats with struct_size set.
        unsafe { check_out_struct(stats, "stats", "tp_cache_stats")? };
        let src = s.session.blob_source().ok_or_else(|| {
            Fail::invalid("the session has no expert budget (use tp_session_create_budgeted)")
        })?;
        let st: CacheStats = src
            .cache_stats()
            .ok_or_else(|| Fail::invalid("the session's blob source keeps no cache counters"))?;
        let v = tp_cache_stats {
            struct_size: core::mem::size_of::<tp_cache_stats>() as u32,
            reserved: 0,
            budget_bytes: src.capacity() as u64,
            hits: st.hits,
            misses: st.misses,
            evictions: st.evictions,
            bytes_copied: st.bytes_copied,
            peak_resident_bytes: st.peak_resident_bytes,
            compactions: st.compactions,
        };
        // SAFETY: checked non-null, aligned and of our size.
        unsafe { write_out(stats, v) };
        Ok(())
    })
}

/// Installs `tracer`'s callbacks for the session's later runs, replacing any
/// installed before; `tracer == NULL` removes them. The struct is *not*
/// copied: it (and what `user` points to) must stay valid until it is
/// replaced, removed or the session destroyed. Sessions without a tracer run
/// the untraced code (no callback checks at all).
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `tracer` is NULL or a `tp_tracer` whose non-NULL callbacks are valid
/// functions, kept alive as above.
#[no_mangle]
pub unsafe extern "C" fn tp_trace_attach(
    session: *mut tp_session,
    tracer: *const tp_tracer,
) -> tp_status {
    guard("tp_trace_attach", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        // SAFETY: NULL or a tp_tracer, by contract (checked, then retained).
        unsafe { read_versioned(tracer, "tp_tracer")? };
        s.tracer = tracer;
        Ok(())
    })
}

/// Installs `prefetch`'s `will_need` hook for the session's later runs,
/// replacing any installed before; `prefetch == NULL` removes it. The struct
/// is *not* copied: it (and what `user` points to) must stay valid and
/// unchanged until it is replaced, removed or the session destroyed.
///
/// Works on sessions with and without an expert budget (hints are sent
/// either way, see `tp_prefetch`). On failure (`TP_ERR_NULL_ARGUMENT`,
/// `TP_ERR_INVALID_HANDLE`, `TP_ERR_STRUCT_SIZE`) the hook installed
/// before, if any, stays. Allocates nothing: the adapter lives in the
/// session's `TP_SESSION_OVERHEAD` bytes.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `prefetch` is NULL or a `tp_prefetch` whose `will_need`, if non-NULL, is
/// a valid function, kept alive as above.
#[no_mangle]
pub unsafe extern "C" fn tp_prefetch_attach(
    session: *mut tp_session,
    prefetch: *const tp_prefetch,
) -> tp_status {
    guard("tp_prefetch_attach", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        // SAFETY: NULL or a tp_prefetch, by contract (checked, then retained).
        unsafe { read_versioned(prefetch, "tp_prefetch")? };
        // End the session's borrow of the slot before the slot is rewritten.
        s.session.set_prefetch(None);
        if prefetch.is_null() {
            return Ok(());
        }
        let slot = session
            .cast::<u8>()
            .wrapping_add(PREFETCH_SLOT)
            .cast::<CPrefetch>();
        // SAFETY: the slot is in the caller's session memory (within the
        // first TP_SESSION_OVERHEAD bytes, asserted at compile time), aligned
        // (the handle is TP_ARENA_ALIGN-aligned, PREFETCH_SLOT a multiple of
        // CPrefetch's alignment), disjoint from the `tp_session` borrowed as
        // `s` and from the arena; nothing borrows it now (cleared above). It
        // stays put until tp_session_destroy drops the session that borrows
        // it (CPrefetch itself needs no drop).
        let hook: &'static mut CPrefetch = unsafe {
            slot.write(CPrefetch(prefetch));
            &mut *slot
        };
        s.session.set_prefetch(Some(hook));
        Ok(())
    })
}

/// Bytes of session memory task `task` needs, into `*size`:
/// `TP_SESSION_OVERHEAD` plus the arena of the task's memory plan.
///
/// # Safety
/// `model` is NULL or a live model handle; `size` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_session_arena_size(
    model: *const tp_model,
    task: u32,
    size: *mut usize,
) -> tp_status {
    guard("tp_session_arena_size", || {
        // SAFETY: the caller's contract, passed on.
        unsafe { arena_size(model, task, size, 0) }
    })
}

/// Both arena-size queries: session memory for `task`, plus `extra`.
///
/// # Safety
/// `model` is NULL or a live model handle; `size` is NULL or writable.
unsafe fn arena_size(model: *const tp_model, task: u32, size: *mut usize, extra: usize) -> Res {
    // SAFETY: NULL or a live model handle, by contract.
    let m = unsafe { model_ref(model, "model")? };
    if size.is_null() {
        return Err(Fail::null("size"));
    }
    let info = m
        .model()
        .task(task as usize)
        .map_err(|_| m.unknown_task(task))?;
    let need = session_bytes(info.arena_bytes).saturating_add(extra);
    // SAFETY: non-null and writable by contract.
    unsafe { write_out(size, need) };
    Ok(())
}

fn run(
    session: *mut tp_session,
    inputs: *const *const f32,
    n_inputs: usize,
    outputs: *mut f32,
    n_outputs: usize,
) -> Res {
    // SAFETY: NULL or a live session handle, by contract.
    let s = unsafe { session_mut(session, "session")? };
    // SAFETY: the model outlives its sessions (tp_model_close refuses to
    // close a model with live sessions).
    let model = unsafe { &*s.model }.model();
    let task = *s.session.task();
    let expected = task.modality_mask.count_ones() as usize;
    if n_inputs != expected {
        return Err(Fail::new(
            tp_status::TP_ERR_INPUT_COUNT,
            format!(
                "wrong number of inputs: task {:?} takes {expected}, got n_inputs = {n_inputs}",
                task.name
            ),
        ));
    }
    if inputs.is_null() && n_inputs > 0 {
        return Err(Fail::null("inputs"));
    }
    if outputs.is_null() {
        return Err(Fail::null("outputs"));
    }
    if n_outputs != task.outputs {
        return Err(Fail::new(
            tp_status::TP_ERR_OUTPUT_SHAPE,
            format!(
                "wrong output count: task {:?} has {} outputs, got n_outputs = {n_outputs}",
                task.name, task.outputs
            ),
        ));
    }
    if !outputs.is_aligned() {
        return Err(Fail::invalid("`outputs` is not aligned for float"));
    }
    if !inputs.is_aligned() {
        return Err(Fail::invalid("`inputs` is misaligned"));
    }
    let mut xs: [&[f32]; TP_MAX_MODALITIES] = [&[]; TP_MAX_MODALITIES];
    for (i, m) in task.modalities().enumerate() {
        // SAFETY: `inputs` holds n_inputs == expected pointers, by contract.
        let p = unsafe { *inputs.add(i) };
        if p.is_null() {
            return Err(Fail::null(&format!("inputs[{i}]")));
        }
        if !p.is_aligned() {
            return Err(Fail::invalid(format!(
                "inputs[{i}] is not aligned for float"
            )));
        }
        let (_, l, f) = model
            .modality(m)
            .ok_or_else(|| Fail::new(tp_status::TP_ERR_FORMAT, "task modality out of range"))?;
        // SAFETY: by contract inputs[i] points to tokens[i] * features[i]
        // readable floats (tp_task_info), not written during the call.
        xs[i] = unsafe { std::slice::from_raw_parts(p, l * f) };
        finite(xs[i], &format!("inputs[{i}] value"))?;
    }
    // SAFETY: non-null, aligned, n_outputs writable floats by contract,
    // disjoint from the session memory and the inputs.
    let out = unsafe { std::slice::from_raw_parts_mut(outputs, n_outputs) };
    let started = Instant::now();
    let st = if s.tracer.is_null() {
        CPU_VERIFIED.execute(&mut s.session, &xs[..expected], out)
    } else {
        // SAFETY: installed by tp_trace_attach, kept alive by the caller.
        let mut t = CTracer(unsafe { &*s.tracer });
        s.session.run_traced(&xs[..expected], out, &mut t)
    }
    .map_err(|e| Fail::runtime(e, format!("running task {:?}", task.name)))?;
    finite(out, "output")?;
    record(&mut s.stats, &st, started);
    Ok(())
}

/// Runs the session's task once.
///
/// - `inputs`: `n_inputs` pointers, one per task input in the order of
///   `tp_task_info.modality`; `inputs[i]` points to `tokens[i] *
///   features[i]` floats (token-major). Read only during the call.
/// - `n_inputs`: must equal `tp_task_info.modality_count`
///   (`TP_ERR_INPUT_COUNT`).
/// - `outputs`, `n_outputs`: receives the task's logits; `n_outputs` must
///   equal `tp_task_info.outputs` (`TP_ERR_OUTPUT_SHAPE`). Written only on
///   success, and on `TP_ERR_NON_FINITE` for an output the task computed as
///   NaN or infinite (which the caller must not use).
/// - A NaN or infinite input value: `TP_ERR_NON_FINITE`, nothing run.
///
/// Allocates nothing; results are bit-identical to the Rust API's
/// `Session::run` on the same inputs.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `inputs` holds `n_inputs` pointers to readable floats as above;
/// `outputs` is NULL or `n_outputs` writable floats.
#[no_mangle]
pub unsafe extern "C" fn tp_session_run(
    session: *mut tp_session,
    inputs: *const *const f32,
    n_inputs: usize,
    outputs: *mut f32,
    n_outputs: usize,
) -> tp_status {
    guard("tp_session_run", || {
        run(session, inputs, n_inputs, outputs, n_outputs)
    })
}

fn step(
    session: *mut tp_session,
    tokens: *const u32,
    n_tokens: usize,
    logits: *mut f32,
    n_logits: usize,
) -> Res {
    // SAFETY: NULL or a live session handle, by contract.
    let s = unsafe { session_mut(session, "session")? };
    let task = *s.session.task();
    if tokens.is_null() {
        return Err(Fail::null("tokens"));
    }
    if logits.is_null() {
        return Err(Fail::null("logits"));
    }
    if !tokens.is_aligned() || !logits.is_aligned() {
        return Err(Fail::invalid("`tokens` or `logits` is misaligned"));
    }
    // Checked here, before the slices are made, so an absurd count is an
    // error rather than a read past the caller's buffer.
    let shape = s.session.plan().tokens().ok_or_else(|| {
        Fail::new(
            tp_status::TP_ERR_TASK_KIND,
            format!(
                "task {:?} is not a language-model task: use tp_session_run",
                task.name
            ),
        )
    })?;
    if n_tokens == 0 || n_tokens > shape.capacity {
        return Err(Fail::new(
            tp_status::TP_ERR_CONTEXT_FULL,
            format!(
                "n_tokens = {n_tokens}: a step takes 1..={} tokens (the task's chunk)",
                shape.capacity
            ),
        ));
    }
    if n_logits != task.outputs {
        return Err(Fail::new(
            tp_status::TP_ERR_OUTPUT_SHAPE,
            format!(
                "wrong logits count: task {:?} has a vocabulary of {}, got n_logits = {n_logits}",
                task.name, task.outputs
            ),
        ));
    }
    // SAFETY: non-null, aligned, n_tokens readable u32 by contract (n_tokens
    // checked against the chunk above).
    let ids = unsafe { std::slice::from_raw_parts(tokens, n_tokens) };
    // SAFETY: non-null, aligned, n_logits writable floats by contract,
    // disjoint from the session memory and the tokens.
    let out = unsafe { std::slice::from_raw_parts_mut(logits, n_logits) };
    let started = Instant::now();
    let st = if s.tracer.is_null() {
        s.session.step(ids, out)
    } else {
        // SAFETY: installed by tp_trace_attach, kept alive by the caller.
        let mut t = CTracer(unsafe { &*s.tracer });
        s.session.step_traced(ids, out, &mut t)
    }
    .map_err(|e| Fail::runtime(e, format!("stepping task {:?}", task.name)))?;
    finite(out, "logit")?;
    record(&mut s.stats, &st, started);
    Ok(())
}

/// Folds one call's counters and time into a session's statistics.
fn record(acc: &mut tp_run_stats, st: &RunStats, started: Instant) {
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    acc.ops = st.ops;
    acc.expert_components = st.expert_components;
    acc.weight_bytes = st.weight_bytes as u64;
    acc.runs += 1;
    acc.last_run_ns = ns;
    acc.total_run_ns = acc.total_run_ns.saturating_add(ns);
}

/// `TP_ERR_NON_FINITE` naming the first NaN or infinity of `values`.
fn finite(values: &[f32], what: &str) -> Res {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(j) => Err(Fail::new(
            tp_status::TP_ERR_NON_FINITE,
            format!("{what} {j} is {}: not a finite number", values[j]),
        )),
    }
}

/// Runs a language-model task on `n_tokens` token ids at the session's
/// position (a prompt chunk, or one decode step), appending them to its KV
/// cache, and writes the last token's logits.
///
/// - `tokens`: `n_tokens` ids, each below the vocabulary
///   (`TP_ERR_TOKEN_OUT_OF_RANGE`); `1 <= n_tokens <= tp_token_shape.chunk`,
///   and the position plus `n_tokens` at most `tp_token_shape.context`
///   (`TP_ERR_CONTEXT_FULL`; `tp_session_reset` starts over).
/// - `logits`, `n_logits`: `n_logits` must equal the vocabulary
///   (`tp_task_info.outputs`, `TP_ERR_OUTPUT_SHAPE`). Written only on
///   success, and on `TP_ERR_NON_FINITE` for a NaN or infinite logit.
/// - A fixed-shape task: `TP_ERR_TASK_KIND`.
///
/// Allocates nothing; results are bit-identical to the Rust API's
/// `Session::step`.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `tokens` is NULL or `n_tokens` readable `uint32_t`; `logits` is NULL or
/// `n_logits` writable floats.
#[no_mangle]
pub unsafe extern "C" fn tp_session_step(
    session: *mut tp_session,
    tokens: *const u32,
    n_tokens: usize,
    logits: *mut f32,
    n_logits: usize,
) -> tp_status {
    guard("tp_session_step", || {
        step(session, tokens, n_tokens, logits, n_logits)
    })
}

/// A language-model task's shape, fixed when its package was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tp_token_shape {
    /// Most tokens one `tp_session_step` takes (the prefill chunk).
    pub chunk: u32,
    /// Positions the KV cache holds.
    pub context: u32,
    /// Vocabulary: logits per step.
    pub vocab: u32,
    /// Tokens stepped since creation or the last `tp_session_reset`.
    pub position: u32,
}

/// Writes the session's token shape and position into `*shape`;
/// `TP_ERR_TASK_KIND` for a fixed-shape task.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `shape` is NULL or a writable `tp_token_shape`.
#[no_mangle]
pub unsafe extern "C" fn tp_session_token_shape(
    session: *mut tp_session,
    shape: *mut tp_token_shape,
) -> tp_status {
    guard("tp_session_token_shape", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        if shape.is_null() {
            return Err(Fail::null("shape"));
        }
        if !shape.is_aligned() {
            return Err(Fail::invalid("`shape` is misaligned"));
        }
        let t = s.session.plan().tokens().ok_or_else(|| {
            Fail::new(
                tp_status::TP_ERR_TASK_KIND,
                "not a language-model task".to_string(),
            )
        })?;
        let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let out = tp_token_shape {
            chunk: c(t.capacity),
            context: c(t.context),
            vocab: c(t.vocab),
            position: c(s.session.position()),
        };
        // SAFETY: non-null, aligned and writable by contract.
        unsafe { write_out(shape, out) };
        Ok(())
    })
}

/// Clears the session's KV cache: the next `tp_session_step` starts at
/// position 0. Allocates nothing.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now.
#[no_mangle]
pub unsafe extern "C" fn tp_session_reset(session: *mut tp_session) -> tp_status {
    guard("tp_session_reset", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        s.session.reset();
        Ok(())
    })
}

/// Copies the session's counters into `*stats` (zero before the first run).
/// The caller sets `stats->struct_size = sizeof(tp_run_stats)` first.
///
/// # Safety
/// `session` is NULL or a live session handle used by no other thread now;
/// `stats` is NULL or a writable `tp_run_stats` with `struct_size` set.
#[no_mangle]
pub unsafe extern "C" fn tp_session_stats(
    session: *mut tp_session,
    stats: *mut tp_run_stats,
) -> tp_status {
    guard("tp_session_stats", || {
        // SAFETY: NULL or a live session handle, by contract.
        let s = unsafe { session_mut(session, "session")? };
        // SAFETY: NULL or a writable tp_run_stats with struct_size set.
        unsafe { check_out_struct(stats, "stats", "tp_run_stats")? };
        // SAFETY: checked non-null, aligned and of our size.
        unsafe { write_out(stats, s.stats) };
        Ok(())
    })
}

/// Destroys a session and sets `*session` to NULL. The session memory
/// belongs to the caller again (nothing is freed: nothing was allocated).
///
/// - `session == NULL`: `TP_ERR_NULL_ARGUMENT`.
/// - `*session == NULL`: does nothing, returns `TP_OK`.
///
/// # Safety
/// `session` is NULL or points to NULL or to a handle from
/// `tp_session_create`, used by no other thread now.
#[no_mangle]
pub unsafe extern "C" fn tp_session_destroy(session: *mut *mut tp_session) -> tp_status {
    guard("tp_session_destroy", || {
        if session.is_null() {
            return Err(Fail::null("session"));
        }
        // SAFETY: non-null; the caller guarantees it points to a handle slot.
        let slot = unsafe { &mut *session };
        if slot.is_null() {
            return Ok(());
        }
        // SAFETY: a handle from tp_session_create, by contract.
        let s = unsafe { session_mut(*slot, "*session")? };
        // SAFETY: the model outlives its sessions (see tp_model_close).
        let m = unsafe { &*s.model };
        s.tag = 0;
        // SAFETY: `s` is a tp_session written by tp_session_create and not
        // yet dropped (its tag was live); it is not used again (tag cleared).
        unsafe { core::ptr::drop_in_place(s as *mut tp_session) };
        m.session_closed();
        *slot = core::ptr::null_mut();
        Ok(())
    })
}
