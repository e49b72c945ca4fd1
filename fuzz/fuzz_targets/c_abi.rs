//! (d) The C ABI driven as a C caller would: open a package from memory
//! (raw fuzz bytes, a structure-aware mutation of a base, or a base plus a
//! mutated delta pack), then for every task query its info, look it up by
//! name, size, create, run, read stats and destroy a session, and close the
//! model. Sizes, counts and flags are fuzzed too (arena too small or
//! misaligned, wrong input and output counts, unknown flag bits). The
//! harness keeps the pointer contracts; everything the library is told
//! about sizes may be wrong. A panic — even one the ABI's guard would turn
//! into `TP_ERR_PANIC` — aborts the run (libfuzzer-sys' panic hook), and a
//! failure must leave a non-empty `tp_last_error`.
#![no_main]

use std::ffi::CStr;
use std::ptr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskpath_ffi::*;
use taskpath_fuzz::exercise::{aligned, MAX_ARENA};
use taskpath_fuzz::{load, mutate, Seed};
use taskpath_runtime::AlignedArena;

static SMALL: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    ["small.tpk", "small-s0.tpk", "small-s1.tpkd"]
        .iter()
        .map(|n| load(n))
        .collect()
});

fn ok(s: tp_status, what: &str) -> bool {
    assert_ne!(s, tp_status::TP_ERR_PANIC, "{what}: caught panic");
    if s == tp_status::TP_OK {
        return true;
    }
    // SAFETY: tp_last_error never returns NULL and its string is valid until
    // this thread's next tp_* call.
    let msg = unsafe { CStr::from_ptr(tp_last_error()) };
    assert!(
        !msg.to_bytes().is_empty(),
        "{what} failed with {s:?} but left no message"
    );
    // SAFETY: a static NUL-terminated string, never NULL.
    let name = unsafe { CStr::from_ptr(tp_status_name(s as u32)) };
    assert!(name.to_bytes().starts_with(b"TP_"));
    false
}

fn exercise_model(model: *mut tp_model, knobs: &[u8; 4]) {
    let mut count = 0u32;
    // SAFETY: `model` is a live handle; `count` is writable.
    if !ok(
        unsafe { tp_model_task_count(model, &mut count) },
        "task_count",
    ) {
        return;
    }
    // One index past the end too: TP_ERR_UNKNOWN_TASK, not a panic.
    for t in 0..=count.min(8) {
        // SAFETY: tp_task_info is plain data; zeroed is a valid value.
        let mut info: tp_task_info = unsafe { std::mem::zeroed() };
        info.struct_size = std::mem::size_of::<tp_task_info>() as u32;
        // SAFETY: live handle, writable info with struct_size set.
        if !ok(
            unsafe { tp_model_task_info(model, t, &mut info) },
            "task_info",
        ) {
            continue;
        }
        let mut found = u32::MAX;
        // SAFETY: info.name is the model's NUL-terminated string; `found` writable.
        let _ = ok(
            unsafe { tp_model_find_task(model, info.name, &mut found) },
            "find_task",
        );
        let mut need = 0usize;
        // SAFETY: live handle, writable size.
        if !ok(
            unsafe { tp_session_arena_size(model, t, &mut need) },
            "arena_size",
        ) {
            continue;
        }
        if need > MAX_ARENA + TP_SESSION_OVERHEAD {
            continue;
        }
        // Too small by a fuzzed amount, or misaligned by 4, now and then.
        let short = if knobs[0] & 1 != 0 {
            usize::from(knobs[0] >> 1)
        } else {
            0
        };
        let skew = if knobs[0] == 0xFF { 4 } else { 0 };
        let mut arena = AlignedArena::new(need + 64);
        let len = need.saturating_sub(short);
        // SAFETY: `skew + len` <= need + 64 bytes of the arena.
        let mem = unsafe { arena.as_mut_slice().as_mut_ptr().add(skew) }.cast();
        let cfg = tp_session_config {
            struct_size: std::mem::size_of::<tp_session_config>() as u32,
            flags: u32::from(knobs[1] & 1) | if knobs[1] == 0xFE { 8 } else { 0 },
        };
        let mut s: *mut tp_session = ptr::null_mut();
        // SAFETY: `len` writable bytes at `mem`, kept until destroy below.
        if !ok(
            unsafe { tp_session_create(model, t, mem, len, &cfg, &mut s) },
            "session_create",
        ) {
            assert!(s.is_null(), "failed create must leave the handle NULL");
            continue;
        }
        let n = info.modality_count as usize;
        let xs: Vec<Vec<f32>> = (0..TP_MAX_MODALITIES)
            .map(|i| {
                let k = if i < n {
                    (info.tokens[i] * info.features[i]) as usize
                } else {
                    0
                };
                (0..k)
                    .map(|j| ((j * 7 + i) % 13) as f32 / 6.5 - 1.0)
                    .collect()
            })
            .collect();
        // Every entry points at floats, so a wrong count stays inside the contract.
        let ptrs: Vec<*const f32> = xs.iter().map(|x| x.as_ptr()).collect();
        let n_in = if knobs[2] & 3 == 3 {
            usize::from(knobs[2] >> 2) % TP_MAX_MODALITIES
        } else {
            n
        };
        let n_out = if knobs[3] & 3 == 3 {
            usize::from(knobs[3] >> 2)
        } else {
            info.outputs as usize
        };
        let mut out = vec![0f32; n_out.max(info.outputs as usize)];
        for _ in 0..2 {
            // SAFETY: live session; `n_in` valid input pointers (of the
            // shapes in `info` where in range); `n_out` writable floats.
            let _ = ok(
                unsafe { tp_session_run(s, ptrs.as_ptr(), n_in, out.as_mut_ptr(), n_out) },
                "session_run",
            );
        }
        let mut st = tp_run_stats {
            struct_size: std::mem::size_of::<tp_run_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: live session, writable stats with struct_size set.
        let _ = ok(unsafe { tp_session_stats(s, &mut st) }, "session_stats");
        // SAFETY: a live handle, then the NULL it was set to (a no-op).
        assert!(ok(unsafe { tp_session_destroy(&mut s) }, "session_destroy"));
        assert!(s.is_null());
        // SAFETY: as above.
        assert!(ok(
            unsafe { tp_session_destroy(&mut s) },
            "session_destroy twice"
        ));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, k0, k1, k2, k3, rest @ ..] = data else {
        return;
    };
    let knobs = [*k0, *k1, *k2, *k3];
    // SAFETY: takes any u32.
    let _ = unsafe { CStr::from_ptr(tp_status_name(u32::from(*k0) << 4 | u32::from(*k1))) };
    let (base, delta): (AlignedArena, Option<AlignedArena>) = match mode % 3 {
        0 => (aligned(rest), None),
        1 => {
            let s = &SMALL[0];
            (
                aligned(&mutate::apply(s.bytes.as_slice(), &s.fields, rest)),
                None,
            )
        }
        _ => {
            let (b, d) = (&SMALL[1], &SMALL[2]);
            let m = mutate::apply(d.bytes.as_slice(), &d.fields, rest);
            (aligned(b.bytes.as_slice()), Some(aligned(&m)))
        }
    };
    let deltas: Vec<tp_bytes> = delta
        .iter()
        .map(|d| tp_bytes {
            data: d.as_slice().as_ptr(),
            len: d.as_slice().len(),
        })
        .collect();
    // Flags: COPY and VERIFY from the fuzz byte; rarely an unknown bit.
    let cfg = tp_model_config {
        struct_size: std::mem::size_of::<tp_model_config>() as u32,
        flags: u32::from(flags & 3) | if flags & 0xF0 == 0xF0 { 0x100 } else { 0 },
        deltas: if deltas.is_empty() {
            ptr::null()
        } else {
            deltas.as_ptr()
        },
        delta_count: deltas.len(),
        delta_paths: ptr::null(),
        delta_path_count: 0,
    };
    // Misaligned package bytes (refused unless COPY) when bit 2 is set.
    let skew = usize::from(flags & 4 != 0 && !base.as_slice().is_empty());
    let bytes = &base.as_slice()[skew..];
    let mut model: *mut tp_model = ptr::null_mut();
    let cfg_ptr = if flags & 8 != 0 && deltas.is_empty() {
        ptr::null()
    } else {
        &cfg as *const _
    };
    // SAFETY: `bytes` (and the deltas) stay alive and unchanged until close;
    // cfg is valid; `model` is writable.
    let opened = ok(
        unsafe { tp_model_open_memory(bytes.as_ptr(), bytes.len(), cfg_ptr, &mut model) },
        "model_open_memory",
    );
    if !opened {
        assert!(model.is_null(), "failed open must leave the handle NULL");
        return;
    }
    exercise_model(model, &knobs);
    // SAFETY: a live handle with no sessions left, then NULL (a no-op).
    assert!(ok(unsafe { tp_model_close(&mut model) }, "model_close"));
    assert!(model.is_null());
});
