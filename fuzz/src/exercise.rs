//! What every fuzz target does with a package the reader accepted: open each
//! task, create its session and run it on fixed inputs. Shared by the fuzz
//! targets and, by path, by `tests/tests/fuzz_regressions.rs`.

use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions};

/// Largest arena a harness allocates for one task. The format allows up to
/// 4 GiB (docs/FORMAT.md, "Resource bounds"); a hostile package can claim
/// that much, and allocating it is the caller's decision, so the harness
/// skips such tasks instead of exhausting its memory limit.
pub const MAX_ARENA: usize = 64 << 20;

/// Most tasks exercised per package (a hostile task table may list
/// thousands; each is validated by the reader anyway).
pub const MAX_TASKS: usize = 32;

/// Deterministic inputs for `task`: `tokens x features` values per modality.
pub fn inputs(model: &Model<'_>, task: usize) -> Vec<Vec<f32>> {
    let Ok(info) = model.task(task) else {
        return Vec::new();
    };
    info.modalities()
        .map(|m| {
            let (_, l, f) = model.modality(m).unwrap_or(("", 0, 0));
            (0..l * f)
                .map(|i| ((i * 37 + m * 11) % 19) as f32 / 9.5 - 1.0)
                .collect()
        })
        .collect()
}

/// Opens every task of `model`, creates its session (verifying the path's
/// checksums when `verify_path`) and runs it once. Errors are expected on
/// hostile packages and only rendered (their `Display` must not panic
/// either); a panic is the bug a fuzz target looks for. Returns how many
/// tasks ran to completion.
pub fn exercise(model: &Model<'_>, verify_path: bool) -> usize {
    let mut ran = 0;
    // The meaning check that every host open runs must not panic either;
    // the sessions below run whatever it says, so a program it refuses
    // still has to be memory-safe to execute.
    if let Err(e) = taskpath_runtime::plan::check_all(model) {
        let _ = e.to_string();
    }
    let _ = format!("{:?}", model.arch());
    for p in model.parts() {
        for (k, v) in p.meta_entries() {
            let _ = format!("{k} = {v}");
        }
    }
    for t in 0..model.task_count().min(MAX_TASKS) {
        let info = match model.task(t) {
            Ok(i) => i,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let _ = model.path_bytes(&info);
        if info.arena_bytes > MAX_ARENA {
            continue;
        }
        let mut arena = AlignedArena::new(info.arena_bytes);
        let opts = SessionOptions {
            verify_path,
            ..SessionOptions::default()
        };
        let mut s = match Session::with_options(model, t, arena.as_mut_slice(), opts) {
            Ok(s) => s,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let x = inputs(model, t);
        let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; info.outputs];
        match s.run(&refs, &mut out) {
            Ok(_) => ran += 1,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    ran
}

/// A 64-byte aligned copy of `bytes` (the reader needs 16-byte alignment;
/// libFuzzer's buffers have none).
pub fn aligned(bytes: &[u8]) -> AlignedArena {
    AlignedArena::from_bytes(bytes)
}
