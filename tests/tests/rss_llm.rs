//! Linux: decoding a language model from a memory-mapped package adds no
//! anonymous memory beyond the session's stated arena (KV cache plus
//! scratch, `TaskInfo::arena_bytes`, what `inspect` prints) and a fixed
//! slack. The weights stay file-backed pages (RssFile), which the kernel may
//! drop and re-read; a control shows the measure sees a RAM copy of them.
//! A process of its own (one test per file): RSS is per process.

#![cfg(target_os = "linux")]

use std::path::Path;

use taskpath_import::Checkpoint;
use taskpath_pack::llm::{pack_llm, LlmPackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

/// Allocator and bookkeeping noise of the test itself (the logits vector,
/// stdio buffers, the session's plan header): far below the package.
const SLACK: usize = 256 * 1024;

/// (RssAnon, RssFile) in bytes.
fn status() -> (usize, usize) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{key} missing in /proc/self/status"))
            * 1024
    };
    (kb("RssAnon:"), kb("RssFile:"))
}

#[test]
fn decode_adds_at_most_the_arena_plus_slack_of_anonymous_memory() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llm-tiny/qwen2moe");
    let ck = Checkpoint::open(src).unwrap();
    let opts = LlmPackOptions {
        context: 128,
        chunk: 16,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("taskpath-rss-llm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, pack_llm(&ck, &opts).unwrap()).unwrap();
    drop(ck);
    let mapped = Model::open(&path).unwrap();
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let pkg_bytes = mapped.bytes(0).unwrap().len();
    assert!(
        pkg_bytes > 2 * (info.arena_bytes + SLACK),
        "package {pkg_bytes} B"
    );
    let mut logits = vec![0f32; info.outputs];
    let prompt: Vec<u32> = (0..48).map(|i| (i * 11 + 3) % 512).collect();

    // Give freed heap (the packing's buffers) back to the kernel, so the
    // session's memory cannot hide in pages the process already holds.
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe { libc::malloc_trim(0) };
    let (anon0, file0) = status();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(&model, 0, arena.as_mut_slice()).unwrap();
    for c in prompt.chunks(16) {
        s.step(c, &mut logits).unwrap();
    }
    for i in 0..64u32 {
        s.step(&[(i * 7) % 512], &mut logits).unwrap();
    }
    let (anon1, file1) = status();
    let grew = anon1.saturating_sub(anon0);
    println!(
        "package {pkg_bytes} B mapped; arena {} B (KV cache + scratch); RssAnon +{grew} B over \
         48 prompt + 64 decoded tokens (limit arena + {SLACK} slack); RssFile +{} B",
        info.arena_bytes,
        file1.saturating_sub(file0)
    );
    assert!(
        grew <= info.arena_bytes + SLACK,
        "anonymous RSS grew by {grew} B, over the {}-byte arena + {SLACK} slack",
        info.arena_bytes
    );

    // Control: the same measure sees a RAM copy of the package.
    let copy = AlignedArena::from_bytes(mapped.bytes(0).unwrap());
    let (anon2, _) = status();
    assert!(
        anon2.saturating_sub(anon1) >= pkg_bytes * 9 / 10,
        "a {pkg_bytes}-byte copy added only {} B",
        anon2.saturating_sub(anon1)
    );
    drop(copy);
    let _ = std::fs::remove_dir_all(&dir);
}
