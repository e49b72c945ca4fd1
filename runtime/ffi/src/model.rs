//! `tp_model`: opening packages (memory or file, with delta packs), listing
//! and describing tasks.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use taskpath_runtime::{MappedModel, Model};

use crate::status::{guard, tp_status, Fail, Res};
use crate::{check_out_struct, read_versioned, write_out, TP_MAX_MODALITIES, TP_PACKAGE_ALIGN};

/// `tp_model_config.flags`: copy the package bytes (and delta bytes) into an
/// aligned heap buffer owned by the model. The caller's bytes may then be
/// freed as soon as `tp_model_open_memory` returns and need not be aligned.
/// Ignored by `tp_model_open_file`, which always maps the file.
pub const TP_MODEL_COPY: u32 = 1;

/// `tp_model_config.flags`: check the checksum of every blob of every package
/// at open, then that every weight and scale is finite (no NaN or infinity)
/// (reads all weights once). Without it, blobs are checked when a session
/// that uses them is created (checksums only).
pub const TP_MODEL_VERIFY: u32 = 2;

const MODEL_FLAGS: u32 = TP_MODEL_COPY | TP_MODEL_VERIFY;

/// A byte range in memory, such as a delta pack in flash.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_bytes {
    /// First byte; `TP_PACKAGE_ALIGN`-aligned unless `TP_MODEL_COPY` is set.
    pub data: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// Options for `tp_model_open_memory` / `tp_model_open_file`. Pass NULL for
/// the defaults, or zero-initialise and set `struct_size`:
/// `tp_model_config c = { sizeof(tp_model_config) };`
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_model_config {
    /// `sizeof(tp_model_config)`; any other value gives `TP_ERR_STRUCT_SIZE`.
    pub struct_size: u32,
    /// `TP_MODEL_*` bits; unknown bits give `TP_ERR_INVALID_ARGUMENT`.
    pub flags: u32,
    /// Delta packs in memory, applied in order on top of the base (for
    /// `tp_model_open_memory` only). Same lifetime and alignment rules as the
    /// base bytes. May be NULL when `delta_count` is 0.
    pub deltas: *const tp_bytes,
    /// Number of entries in `deltas`.
    pub delta_count: usize,
    /// Paths of delta pack files, applied in order (for `tp_model_open_file`
    /// only). May be NULL when `delta_path_count` is 0.
    pub delta_paths: *const *const c_char,
    /// Number of entries in `delta_paths`.
    pub delta_path_count: usize,
}

/// What `tp_model_task_info` reports about one task.
/// Set `struct_size = sizeof(tp_task_info)` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tp_task_info {
    /// In: `sizeof(tp_task_info)`. Out: unchanged.
    pub struct_size: u32,
    /// Global task index (base package's tasks first, then each delta's).
    pub index: u32,
    /// The task's name, NUL-terminated. Owned by the model: valid until
    /// `tp_model_close`.
    pub name: *const c_char,
    /// 0-based continual-learning stage that added the task.
    pub stage: u32,
    /// Number of outputs (logits) a run writes.
    pub outputs: u32,
    /// Number of inputs a run takes (one per modality the task uses).
    pub modality_count: u32,
    /// Bit `m` set for each model modality `m` the task uses.
    pub modality_mask: u32,
    /// `modality[i]`: model modality index of input `i` (ascending order).
    pub modality: [u32; TP_MAX_MODALITIES],
    /// `tokens[i]`: tokens of input `i`.
    pub tokens: [u32; TP_MAX_MODALITIES],
    /// `features[i]`: features per token of input `i`; input `i` is
    /// `tokens[i] * features[i]` floats, token-major.
    pub features: [u32; TP_MAX_MODALITIES],
    /// Bytes of working memory the task's plan needs (what `taskpath
    /// inspect` prints as the task's arena).
    pub arena_bytes: usize,
    /// Bytes `tp_session_create` needs: `TP_SESSION_OVERHEAD + arena_bytes`
    /// (the same value as `tp_session_arena_size`).
    pub session_bytes: usize,
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Block([u8; TP_PACKAGE_ALIGN]);

/// Where the package bytes live; kept alive as long as the model.
enum Storage {
    /// The caller's bytes (flash, static array, its own buffer).
    Borrowed,
    /// Aligned copies made for `TP_MODEL_COPY`: heap blocks that never move.
    Copied(#[allow(dead_code)] Vec<Vec<Block>>),
    /// Memory-mapped files (boxed so the mapping owner never moves).
    Mapped(#[allow(dead_code)] Box<MappedModel>),
}

const MODEL_TAG: u64 = u64::from_le_bytes(*b"tpMODEL1");

/// An open model: a base package plus its delta packs, validated. Opaque.
///
/// Heap-allocated by `tp_model_open_*` (the struct, task-name strings and,
/// with `TP_MODEL_COPY`, the package copies); freed by `tp_model_close`.
/// Immutable after open: any number of threads may use one model at once.
pub struct tp_model {
    tag: u64,
    /// Borrows the bytes of `storage` (or the caller's, for `Borrowed`).
    model: Model<'static>,
    names: Vec<CString>,
    sessions: AtomicUsize,
    _storage: Storage,
}

impl core::fmt::Debug for tp_model {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("tp_model")
            .field("tasks", &self.names)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl tp_model {
    fn new(model: Model<'static>, storage: Storage) -> Res<Box<Self>> {
        let names = (0..model.task_count())
            .map(|i| {
                let name = model.task(i).map(|t| t.name).unwrap_or("");
                // A hostile package could put a NUL in a name: cut it there.
                let bytes = name.as_bytes().split(|&b| b == 0).next().unwrap_or(&[]);
                CString::new(bytes).unwrap_or_default()
            })
            .collect();
        Ok(Box::new(Self {
            tag: MODEL_TAG,
            model,
            names,
            sessions: AtomicUsize::new(0),
            _storage: storage,
        }))
    }

    /// The validated model.
    pub(crate) fn model(&self) -> &Model<'static> {
        &self.model
    }

    pub(crate) fn session_opened(&self) {
        self.sessions.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn session_closed(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }

    fn task_names(&self) -> String {
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.join(", ")
    }

    pub(crate) fn unknown_task(&self, index: u32) -> Fail {
        Fail::new(
            tp_status::TP_ERR_UNKNOWN_TASK,
            format!(
                "unknown task index {index}: the model has {} tasks ({})",
                self.names.len(),
                self.task_names()
            ),
        )
    }
}

/// Checks a model handle: non-NULL, aligned, tagged as a live model.
///
/// # Safety
/// `p` is NULL or a pointer returned by `tp_model_open_*` (a model that was
/// closed is caught only while its memory has not been reused).
pub(crate) unsafe fn model_ref<'m>(p: *const tp_model, arg: &str) -> Res<&'m tp_model> {
    if p.is_null() {
        return Err(Fail::null(arg));
    }
    if !p.is_aligned() {
        return Err(Fail::new(
            tp_status::TP_ERR_INVALID_HANDLE,
            format!("`{arg}` is not a tp_model handle (misaligned pointer)"),
        ));
    }
    // SAFETY: non-null, aligned, and by the caller's contract a live tp_model.
    let m = unsafe { &*p };
    if m.tag != MODEL_TAG {
        return Err(Fail::new(
            tp_status::TP_ERR_INVALID_HANDLE,
            format!("`{arg}` is not a live tp_model handle (closed, or not a model)"),
        ));
    }
    Ok(m)
}

/// # Safety
/// `p` is NULL or points to `n` readable `T`s.
unsafe fn array<'a, T>(p: *const T, n: usize, what: &str) -> Res<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Fail::null(what));
    }
    if !p.is_aligned() {
        return Err(Fail::invalid(format!("`{what}` is misaligned")));
    }
    // SAFETY: non-null and aligned; the caller guarantees n readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn config_flags(c: &tp_model_config) -> Res<u32> {
    if c.flags & !MODEL_FLAGS != 0 {
        return Err(Fail::invalid(format!(
            "tp_model_config.flags has unknown bits {:#x} (known: TP_MODEL_COPY | TP_MODEL_VERIFY)",
            c.flags & !MODEL_FLAGS
        )));
    }
    Ok(c.flags)
}

fn copy_aligned(bytes: &[u8]) -> Res<Vec<Block>> {
    let mut v: Vec<Block> = Vec::new();
    v.try_reserve_exact(bytes.len().div_ceil(TP_PACKAGE_ALIGN))
        .map_err(|_| {
            Fail::new(
                tp_status::TP_ERR_OUT_OF_MEMORY,
                format!("cannot allocate {} bytes for the package copy", bytes.len()),
            )
        })?;
    v.extend(bytes.chunks(TP_PACKAGE_ALIGN).map(|c| {
        let mut b = Block([0; TP_PACKAGE_ALIGN]);
        b.0[..c.len()].copy_from_slice(c);
        b
    }));
    Ok(v)
}

fn block_bytes(v: &[Block], len: usize) -> &'static [u8] {
    // SAFETY: Block is repr(C) [u8; 16] without padding, so `v` is
    // 16 * v.len() >= len initialised bytes. The heap buffer is owned by the
    // model's Storage::Copied, never moved or mutated, and freed only after
    // the model (the only holder of this 'static slice) is dropped.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), len) }
}

/// Reads the 32-byte public key of a `*_verified` call.
///
/// # Safety
/// `key` is NULL or points to 32 readable bytes.
unsafe fn public_key(key: *const u8) -> Res<[u8; 32]> {
    if key.is_null() {
        return Err(Fail::null("public_key"));
    }
    let mut k = [0u8; 32];
    // SAFETY: non-null; the caller guarantees 32 readable bytes. A byte
    // pointer has no alignment requirement, and the bytes are copied.
    k.copy_from_slice(unsafe { std::slice::from_raw_parts(key, 32) });
    Ok(k)
}

fn open_memory(
    data: *const u8,
    len: usize,
    key: Option<&[u8; 32]>,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> Res {
    // SAFETY: `out` is checked non-null; the caller guarantees it is writable.
    let out = unsafe { out_handle(out)? };
    // SAFETY: the caller guarantees config is NULL or a tp_model_config.
    let cfg = unsafe { read_versioned(config, "tp_model_config")? };
    let flags = cfg.as_ref().map(config_flags).transpose()?.unwrap_or(0);
    if data.is_null() {
        return Err(Fail::null("data"));
    }
    let deltas: &[tp_bytes] = match &cfg {
        Some(c) => {
            if c.delta_path_count != 0 {
                return Err(Fail::invalid(
                    "tp_model_config.delta_paths is for tp_model_open_file; \
                     give delta packs in memory as tp_model_config.deltas",
                ));
            }
            // SAFETY: the caller guarantees `deltas` holds delta_count entries.
            unsafe { array(c.deltas, c.delta_count, "tp_model_config.deltas")? }
        }
        None => &[],
    };
    let mut parts: Vec<(&'static [u8], String)> = Vec::with_capacity(1 + deltas.len());
    // SAFETY: the caller guarantees `len` readable bytes at `data` that stay
    // valid and unchanged until tp_model_close (or, with TP_MODEL_COPY, until
    // this call returns, since they are copied below before the model uses them).
    parts.push((
        unsafe { std::slice::from_raw_parts(data, len) },
        "package".into(),
    ));
    for (i, d) in deltas.iter().enumerate() {
        if d.data.is_null() {
            return Err(Fail::null(&format!("tp_model_config.deltas[{i}].data")));
        }
        // SAFETY: as for the base bytes, by the same contract.
        let bytes = unsafe { std::slice::from_raw_parts(d.data, d.len) };
        parts.push((bytes, format!("delta pack {i}")));
    }
    let storage = if flags & TP_MODEL_COPY != 0 {
        let copies = parts
            .iter()
            .map(|(b, _)| copy_aligned(b))
            .collect::<Res<Vec<_>>>()?;
        for ((bytes, _), copy) in parts.iter_mut().zip(&copies) {
            *bytes = block_bytes(copy, bytes.len());
        }
        Storage::Copied(copies)
    } else {
        for (bytes, what) in &parts {
            let addr = bytes.as_ptr() as usize;
            if addr % TP_PACKAGE_ALIGN != 0 {
                return Err(Fail::new(
                    tp_status::TP_ERR_PACKAGE_MISALIGNED,
                    format!(
                        "{what} bytes at {addr:#x} are not {TP_PACKAGE_ALIGN}-byte aligned \
                         (align the array, e.g. __attribute__((aligned(16))), or set TP_MODEL_COPY)"
                    ),
                ));
            }
        }
        Storage::Borrowed
    };
    let mut model = match key {
        Some(k) => Model::from_bytes_verified(parts[0].0, k),
        None => Model::from_bytes(parts[0].0),
    }
    .map_err(|e| Fail::runtime(e, "opening the package"))?;
    for (bytes, what) in &parts[1..] {
        model = match key {
            Some(k) => model.with_delta_verified(bytes, k),
            None => model.with_delta(bytes),
        }
        .map_err(|e| Fail::runtime(e, format!("adding {what}")))?;
    }
    finish_open(model, storage, flags, out)
}

fn finish_open(
    model: Model<'static>,
    storage: Storage,
    flags: u32,
    out: &mut *mut tp_model,
) -> Res {
    // Sessions rely on every task's program having been checked once.
    taskpath_runtime::plan::check_all(&model)
        .map_err(|e| Fail::runtime(e, "checking the tasks' op programs"))?;
    if flags & TP_MODEL_VERIFY != 0 {
        model
            .verify()
            .map_err(|e| Fail::runtime(e, "TP_MODEL_VERIFY: checking every blob"))?;
    }
    *out = Box::into_raw(tp_model::new(model, storage)?);
    Ok(())
}

/// Checks an out-handle pointer and sets `*out = NULL`.
///
/// # Safety
/// `out` is NULL or writable for a pointer.
pub(crate) unsafe fn out_handle<'a, T>(out: *mut *mut T) -> Res<&'a mut *mut T> {
    if out.is_null() {
        return Err(Fail::null("out"));
    }
    if !out.is_aligned() {
        return Err(Fail::invalid("`out` is misaligned"));
    }
    // SAFETY: non-null, aligned, writable by the caller's contract.
    let out = unsafe { &mut *out };
    *out = std::ptr::null_mut();
    Ok(out)
}

/// # Safety
/// `p` is a NUL-terminated string.
unsafe fn c_path(p: *const c_char, what: &str) -> Res<PathBuf> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-null; the caller guarantees NUL termination.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| Fail::invalid(format!("`{what}` is not UTF-8")))
    }
}

fn open_file(
    path: *const c_char,
    key: Option<&[u8; 32]>,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> Res {
    // SAFETY: checked non-null; the caller guarantees it is writable.
    let out = unsafe { out_handle(out)? };
    // SAFETY: the caller guarantees config is NULL or a tp_model_config.
    let cfg = unsafe { read_versioned(config, "tp_model_config")? };
    let flags = cfg.as_ref().map(config_flags).transpose()?.unwrap_or(0);
    // SAFETY: the caller guarantees a NUL-terminated path.
    let base = unsafe { c_path(path, "path")? };
    let mut deltas = Vec::new();
    if let Some(c) = &cfg {
        if c.delta_count != 0 {
            return Err(Fail::invalid(
                "tp_model_config.deltas is for tp_model_open_memory; \
                 give delta pack files as tp_model_config.delta_paths",
            ));
        }
        // SAFETY: the caller guarantees delta_path_count entries.
        let paths = unsafe {
            array(
                c.delta_paths,
                c.delta_path_count,
                "tp_model_config.delta_paths",
            )?
        };
        for (i, &p) in paths.iter().enumerate() {
            // SAFETY: each entry is NULL (checked) or NUL-terminated.
            deltas.push(unsafe { c_path(p, &format!("tp_model_config.delta_paths[{i}]"))? });
        }
    }
    let mapped = match key {
        Some(k) => MappedModel::open_verified(&base, &deltas, k),
        None => MappedModel::open_with_deltas(&base, &deltas),
    }
    .map(Box::new)
    .map_err(|e| {
        let files: Vec<String> = std::iter::once(&base)
            .chain(&deltas)
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        Fail::runtime(e, format!("opening {}", files.join(" + ")))
    })?;
    let ptr: *const MappedModel = &*mapped;
    // SAFETY: the MappedModel is boxed and stored in the tp_model next to the
    // view, so the mappings the view borrows live exactly as long as it does;
    // the box never moves its contents and the maps are read-only.
    let model: Model<'static> = unsafe { &*ptr }
        .model()
        .map_err(|e| Fail::runtime(e, "viewing the mapped package"))?;
    finish_open(model, Storage::Mapped(mapped), flags, out)
}

/// Opens a package held in memory (flash, XIP, a static array, a buffer).
///
/// - `data`, `len`: the package bytes. Must be `TP_PACKAGE_ALIGN`-aligned
///   (else `TP_ERR_PACKAGE_MISALIGNED`) and must stay valid and unchanged
///   until `tp_model_close`: the model reads weights in place, never copying
///   them. With `TP_MODEL_COPY` in `config->flags` the bytes are copied into
///   an aligned heap buffer instead; they need not be aligned and may be
///   freed on return.
/// - `config`: NULL for the defaults, or options (delta packs in memory).
///   Not retained.
/// - `out`: receives the new model; set to NULL on failure.
///
/// Validates the header, tables and metadata checksum of each package
/// (`TP_ERR_FORMAT` names the first bad field) and the delta chain.
/// Allocates the `tp_model` (a few hundred bytes plus the task names) on the
/// heap. Release it with `tp_model_close`.
///
/// # Safety
/// `data` points to `len` readable bytes, `config` is NULL or a valid
/// `tp_model_config`, `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn tp_model_open_memory(
    data: *const u8,
    len: usize,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> tp_status {
    guard("tp_model_open_memory", || {
        open_memory(data, len, None, config, out)
    })
}

/// `tp_model_open_memory` for a package that must be signed by
/// `public_key` (32 bytes, an ed25519 public key; docs/FORMAT.md,
/// "Signature record"). The package and every delta pack in
/// `config->deltas` must each carry a signature by that key, checked over
/// their exact bytes before they are parsed (after the copy, with
/// `TP_MODEL_COPY`). Refusals, each with its own status:
/// `TP_ERR_UNSIGNED` (no signature), `TP_ERR_KEY_MISMATCH` (signed by
/// another key; `tp_last_error` names its fingerprint),
/// `TP_ERR_BAD_SIGNATURE` (modified after signing, even with every
/// checksum re-sealed), `TP_ERR_INVALID_KEY` (`public_key` is no valid
/// key). The signature record lies right after the package's `file_len`
/// bytes: `len` must include it. Hashes each package once (SHA-512);
/// allocates as `tp_model_open_memory` does.
///
/// # Safety
/// As `tp_model_open_memory`; `public_key` is NULL or points to 32
/// readable bytes (not retained).
#[no_mangle]
pub unsafe extern "C" fn tp_model_open_verified(
    data: *const u8,
    len: usize,
    public_key: *const u8,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> tp_status {
    guard("tp_model_open_verified", || {
        // SAFETY: the caller guarantees `out` is NULL or writable; it is
        // set to NULL first, so every failure below leaves it NULL.
        unsafe { out_handle(out)? };
        // SAFETY: the caller guarantees NULL or 32 readable bytes.
        let key = unsafe { self::public_key(public_key)? };
        open_memory(data, len, Some(&key), config, out)
    })
}

/// Opens a package file by memory-mapping it (read-only, shared). Pages are
/// read from the file only when a session touches them.
///
/// - `path`: NUL-terminated file path (bytes passed to the OS as is).
///   Not retained.
/// - `config`: NULL for the defaults, or options (delta pack files in
///   `delta_paths`). Not retained.
/// - `out`: receives the new model; set to NULL on failure.
///
/// The file must not be truncated or rewritten while the model is open.
/// Allocates the `tp_model` and the mapping handles on the heap. Release
/// with `tp_model_close`. `TP_ERR_IO` names the file that failed.
///
/// # Safety
/// `path` is NULL or NUL-terminated, `config` is NULL or a valid
/// `tp_model_config`, `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn tp_model_open_file(
    path: *const c_char,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> tp_status {
    guard("tp_model_open_file", || open_file(path, None, config, out))
}

/// `tp_model_open_file` for a package (and delta pack files in
/// `config->delta_paths`) that must be signed by `public_key`, with the
/// refusals of `tp_model_open_verified`. Reads every byte of every file
/// once at open (the signature covers them all).
///
/// # Safety
/// As `tp_model_open_file`; `public_key` is NULL or points to 32 readable
/// bytes (not retained).
#[no_mangle]
pub unsafe extern "C" fn tp_model_open_file_verified(
    path: *const c_char,
    public_key: *const u8,
    config: *const tp_model_config,
    out: *mut *mut tp_model,
) -> tp_status {
    guard("tp_model_open_file_verified", || {
        // SAFETY: the caller guarantees `out` is NULL or writable; it is
        // set to NULL first, so every failure below leaves it NULL.
        unsafe { out_handle(out)? };
        // SAFETY: the caller guarantees NULL or 32 readable bytes.
        let key = unsafe { self::public_key(public_key)? };
        open_file(path, Some(&key), config, out)
    })
}

/// Closes a model and sets `*model` to NULL. Unmaps files and frees
/// everything `tp_model_open_*` allocated; caller-owned package bytes may be
/// released afterwards.
///
/// - `model == NULL`: `TP_ERR_NULL_ARGUMENT`.
/// - `*model == NULL`: does nothing, returns `TP_OK` (closing twice through
///   the same variable is harmless).
/// - The model still has sessions: `TP_ERR_BUSY`, nothing is closed. Destroy
///   its sessions first.
///
/// # Safety
/// `model` is NULL or points to NULL or to a handle from `tp_model_open_*`.
/// No other thread may use the model during or after this call.
#[no_mangle]
pub unsafe extern "C" fn tp_model_close(model: *mut *mut tp_model) -> tp_status {
    guard("tp_model_close", || {
        if model.is_null() {
            return Err(Fail::null("model"));
        }
        // SAFETY: non-null; the caller guarantees it points to a handle slot.
        let slot = unsafe { &mut *model };
        if slot.is_null() {
            return Ok(());
        }
        // SAFETY: a handle from tp_model_open_* by the caller's contract.
        let m = unsafe { model_ref(*slot, "*model")? };
        let live = m.sessions.load(Ordering::Acquire);
        if live != 0 {
            return Err(Fail::new(
                tp_status::TP_ERR_BUSY,
                format!("the model still has {live} live session(s); destroy them first"),
            ));
        }
        // SAFETY: the pointer came from Box::into_raw in finish_open and is
        // live (tag checked); the tag is cleared so a stale copy of the handle
        // is recognised while the memory is not reused.
        let mut b = unsafe { Box::from_raw(*slot) };
        b.tag = 0;
        drop(b);
        *slot = std::ptr::null_mut();
        Ok(())
    })
}

/// Number of tasks of the model (base and deltas) into `*count`.
///
/// # Safety
/// `model` is NULL or a live model handle; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_model_task_count(model: *const tp_model, count: *mut u32) -> tp_status {
    guard("tp_model_task_count", || {
        // SAFETY: NULL or a live handle, by contract.
        let m = unsafe { model_ref(model, "model")? };
        if count.is_null() {
            return Err(Fail::null("count"));
        }
        // SAFETY: non-null and writable by contract.
        unsafe { write_out(count, m.model.task_count() as u32) };
        Ok(())
    })
}

/// Describes task `index` into `*info`. The caller sets
/// `info->struct_size = sizeof(tp_task_info)` first; the library fills every
/// field. `info->name` points into the model (valid until `tp_model_close`).
/// `TP_ERR_UNKNOWN_TASK` for an index `>= tp_model_task_count`.
///
/// # Safety
/// `model` is NULL or a live model handle; `info` is NULL or a writable
/// `tp_task_info` whose `struct_size` is initialised.
#[no_mangle]
pub unsafe extern "C" fn tp_model_task_info(
    model: *const tp_model,
    index: u32,
    info: *mut tp_task_info,
) -> tp_status {
    guard("tp_model_task_info", || {
        // SAFETY: NULL or a live handle, by contract.
        let m = unsafe { model_ref(model, "model")? };
        // SAFETY: NULL or a writable tp_task_info with struct_size set.
        unsafe { check_out_struct(info, "info", "tp_task_info")? };
        let t = m
            .model
            .task(index as usize)
            .map_err(|_| m.unknown_task(index))?;
        let mut out = tp_task_info {
            struct_size: core::mem::size_of::<tp_task_info>() as u32,
            index,
            name: m.names[index as usize].as_ptr(),
            stage: t.stage as u32,
            outputs: t.outputs as u32,
            modality_count: t.modality_mask.count_ones(),
            modality_mask: t.modality_mask,
            modality: [0; TP_MAX_MODALITIES],
            tokens: [0; TP_MAX_MODALITIES],
            features: [0; TP_MAX_MODALITIES],
            arena_bytes: t.arena_bytes,
            session_bytes: crate::session::session_bytes(t.arena_bytes),
        };
        for (i, mi) in t.modalities().enumerate() {
            let (_, l, f) = m.model.modality(mi).ok_or_else(|| {
                Fail::new(
                    tp_status::TP_ERR_FORMAT,
                    format!("task {index} uses modality {mi}, which the model does not have"),
                )
            })?;
            out.modality[i] = mi as u32;
            out.tokens[i] = l as u32;
            out.features[i] = f as u32;
        }
        // SAFETY: checked non-null, aligned and of our size above.
        unsafe { write_out(info, out) };
        Ok(())
    })
}

/// Finds the task named `name` (NUL-terminated, UTF-8) and writes its index
/// to `*index`. `TP_ERR_UNKNOWN_TASK` (listing the model's tasks) if none.
///
/// # Safety
/// `model` is NULL or a live model handle; `name` is NULL or NUL-terminated;
/// `index` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tp_model_find_task(
    model: *const tp_model,
    name: *const c_char,
    index: *mut u32,
) -> tp_status {
    guard("tp_model_find_task", || {
        // SAFETY: NULL or a live handle, by contract.
        let m = unsafe { model_ref(model, "model")? };
        if name.is_null() {
            return Err(Fail::null("name"));
        }
        if index.is_null() {
            return Err(Fail::null("index"));
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let name = unsafe { CStr::from_ptr(name) };
        let i = m
            .names
            .iter()
            .position(|n| n.as_c_str() == name)
            .ok_or_else(|| {
                Fail::new(
                    tp_status::TP_ERR_UNKNOWN_TASK,
                    format!(
                        "unknown task {:?}: the model has {}",
                        name.to_string_lossy(),
                        m.task_names()
                    ),
                )
            })?;
        // SAFETY: non-null and writable by contract.
        unsafe { write_out(index, i as u32) };
        Ok(())
    })
}
