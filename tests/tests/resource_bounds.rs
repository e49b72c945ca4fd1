//! Resource bounds of the package reader on hostile input (docs/FORMAT.md,
//! "Resource bounds"): whatever the counts, lengths and offsets say,
//! parsing allocates nothing and takes at most `meta_len + 256` steps, where
//! `meta_len = data_off - header_len` is the metadata region (so never more
//! than the file length).
//!
//! Allocation is measured with a counting global allocator (per thread, so
//! parallel tests do not disturb each other); work with the reader's own
//! step meter (`taskpath_format::steps`, feature `count-steps`: one step per
//! record, section entry, path entry or slot visited and per 64 bytes hashed
//! or UTF-8 checked), which is exact and immune to machine load, unlike a
//! timing. Each family of hostile files is built at two sizes 8x apart and
//! must stay within the bound at both: a walk quadratic in the file size
//! (as every task sharing one slot range was before the ascending-slots
//! rule) exceeds it.

#[path = "../../fuzz/src/mutate.rs"]
#[allow(dead_code)]
mod mutate;

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use taskpath_format::records::*;
use taskpath_format::{steps, FormatError, Package, MAX_NAME_LEN};
use taskpath_runtime::{AlignedArena, Model};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter
// is a const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + l.size() as u64));
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + new as u64));
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by this thread while `f` runs.
fn allocated<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    (ALLOCATED.with(Cell::get) - before, r)
}

/// A minimal valid package: one modality, one head blob, `tasks` tasks with
/// `slots` slots each, every task named by one string of `name_len` bytes.
/// With `share_slots` every task claims the same slot range (refused: a
/// quadratic walk otherwise); with `long_names` every name is the whole
/// string table.
struct Spec {
    tasks: usize,
    slots: usize,
    name_len: usize,
    share_slots: bool,
}

fn build(s: &Spec) -> Vec<u8> {
    let mut w = common::one_head_writer();
    let (no, nl) = w.string(&"n".repeat(s.name_len));
    for i in 0..s.tasks {
        let slot_start = if s.share_slots {
            0
        } else {
            w.slots.len() as u32
        };
        if !s.share_slots || i == 0 {
            w.slots.extend((0..s.slots as u32).map(|k| SlotRec {
                offset: k,
                len: 1,
                kind: 0,
            }));
        }
        w.tasks.push(TaskRec {
            name_off: no,
            name_len: nl,
            outputs: 1,
            modality_mask: 1,
            slot_start,
            slot_count: s.slots as u32,
            path_start: i as u32,
            path_len: 1,
            program_len: 1,
            slot_bytes: 4 * s.slots as u64,
            ..Default::default()
        });
        w.paths.push(common::one_expert_path(i as u32));
    }
    w.finish(12, 0)
}

fn rd(b: &[u8], at: usize, n: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(&b[at..at + n]);
    u64::from_le_bytes(v)
}
fn wr(b: &mut [u8], at: usize, n: usize, v: u64) {
    b[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
}
/// File offset of the section table entry of `kind`.
fn entry(b: &[u8], kind: u32) -> usize {
    let (st, n) = (rd(b, 32, 8) as usize, rd(b, 40, 4) as usize);
    (0..n)
        .map(|i| st + 24 * i)
        .find(|&e| rd(b, e, 4) == u64::from(kind))
        .expect("section present")
}
fn section(b: &[u8], kind: u32) -> usize {
    rd(b, entry(b, kind) + 8, 8) as usize
}

fn parse(bytes: &[u8]) -> Result<usize, FormatError> {
    Package::parse(bytes).map(|p| p.tasks().len())
}

/// The documented bound on the steps of one parse of `bytes`.
fn bound(bytes: &[u8]) -> u64 {
    let (header_len, data_off) = (rd(bytes, 12, 4), rd(bytes, 48, 8));
    data_off.saturating_sub(header_len).min(bytes.len() as u64) + 256
}

/// Parses `bytes`, returning the result, the bytes allocated and the steps
/// taken.
fn measured(bytes: &[u8]) -> (Result<usize, FormatError>, u64, u64) {
    let s0 = steps::taken();
    let (alloc, r) = allocated(|| parse(bytes));
    (r, alloc, steps::taken() - s0)
}

/// A hostile variant of `base` made by `edit`, re-sealed.
fn hostile(base: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> AlignedArena {
    let mut b = base.to_vec();
    edit(&mut b);
    mutate::reseal(&mut b);
    AlignedArena::from_bytes(&b)
}

#[test]
fn parsing_and_opening_allocate_nothing() {
    let a = AlignedArena::from_bytes(&build(&Spec {
        tasks: 64,
        slots: 4,
        name_len: 8,
        share_slots: false,
    }));
    let (bytes, r) = allocated(|| parse(a.as_slice()));
    assert_eq!(r.unwrap(), 64);
    assert_eq!(bytes, 0, "Package::parse allocated");
    let (bytes, r) = allocated(|| Model::from_bytes(a.as_slice()).map(|m| m.task_count()));
    assert_eq!(r.unwrap(), 64);
    assert_eq!(bytes, 0, "Model::from_bytes allocated");
    // The counter works: a Vec is seen.
    let (bytes, _) = allocated(|| vec![0u8; 100]);
    assert!(bytes >= 100);
}

/// Counts, lengths and offsets that claim far more than the file holds.
#[test]
fn hostile_counts_and_offsets_are_refused_cheaply_and_without_allocation() {
    let base = build(&Spec {
        tasks: 256,
        slots: 8,
        name_len: 8,
        share_slots: false,
    });
    let valid = AlignedArena::from_bytes(&base);
    let (r, alloc, n_valid) = measured(valid.as_slice());
    assert_eq!(r.unwrap(), 256);
    assert_eq!(alloc, 0);
    assert!(
        n_valid <= bound(valid.as_slice()),
        "{n_valid} steps on the valid file"
    );
    let tasks = section(&base, section::TASKS);
    let cases: Vec<(&str, &str, AlignedArena)> = vec![
        (
            "2^32 tasks (tasks section length)",
            "sections.len",
            hostile(&base, |b| {
                let e = entry(b, section::TASKS);
                wr(b, e + 16, 8, (1u64 << 32) * TaskRec::SIZE as u64);
            }),
        ),
        (
            "u64::MAX section length",
            "sections.len",
            hostile(&base, |b| {
                let e = entry(b, section::SLOTS);
                wr(b, e + 16, 8, u64::MAX);
            }),
        ),
        (
            "2^32 - 1 sections",
            "header.section_count",
            hostile(&base, |b| wr(b, 40, 4, u64::from(u32::MAX))),
        ),
        (
            "section table inside the header",
            "header.section_table_off",
            hostile(&base, |b| wr(b, 32, 8, 16)),
        ),
        (
            "blob table overlapping the header",
            "sections.offset",
            hostile(&base, |b| {
                let e = entry(b, section::BLOBS);
                wr(b, e + 8, 8, 0);
            }),
        ),
        (
            "blob table overlapping the section table",
            "sections.offset",
            hostile(&base, |b| {
                let e = entry(b, section::BLOBS);
                wr(b, e + 8, 8, 128);
            }),
        ),
        (
            "blob range wrapping around u64",
            "blobs.len",
            hostile(&base, |b| {
                let blobs = section(b, section::BLOBS);
                wr(b, blobs, 8, 0);
                wr(b, blobs + 8, 8, u64::MAX - 8);
            }),
        ),
        (
            "task claiming 2^32 - 1 slots",
            "tasks.slot_count",
            hostile(&base, |b| wr(b, tasks + 32, 4, u64::from(u32::MAX))),
        ),
        (
            "task claiming 2^32 - 1 ops",
            "tasks.program_len",
            hostile(&base, |b| wr(b, tasks + 24, 4, u64::from(u32::MAX))),
        ),
        (
            "task claiming 2^32 - 1 path entries",
            "tasks.path_len",
            hostile(&base, |b| wr(b, tasks + 40, 4, u64::from(u32::MAX))),
        ),
        (
            "task claiming a 2^64 - 1 byte arena",
            "tasks.slot_bytes",
            hostile(&base, |b| wr(b, tasks + 56, 8, u64::MAX)),
        ),
        (
            "every task sharing one slot range (offsets pointing at each other)",
            "tasks.slot_start",
            hostile(&base, |b| {
                for t in 0..256 {
                    wr(b, tasks + 64 * t + 28, 4, 0);
                }
            }),
        ),
        (
            "task paths pointing at the previous task's entry",
            "tasks.path_start",
            hostile(&base, |b| wr(b, tasks + 64 + 36, 4, 0)),
        ),
        (
            "task name longer than the cap",
            "tasks.name",
            hostile(&base, |b| {
                wr(b, tasks, 4, 0);
                wr(b, tasks + 4, 4, u64::from(MAX_NAME_LEN) + 1);
            }),
        ),
    ];
    for (what, field, a) in &cases {
        let (r, alloc, n) = measured(a.as_slice());
        let e = r.expect_err(what);
        assert_eq!(e.field(), *field, "{what}: error {e} names another field");
        assert_eq!(alloc, 0, "{what}: parse allocated {alloc} bytes");
        // Refusing never costs more than accepting the valid file it was
        // made from, which is itself within the bound.
        assert!(
            n <= n_valid,
            "{what}: {n} steps to refuse, {n_valid} to accept"
        );
    }
}

/// Builds `spec` at two sizes 8x apart; both must parse (or be refused)
/// within the step bound and without allocating.
fn assert_linear(what: &str, spec: impl Fn(usize) -> Spec) {
    let mut last = 0;
    for k in [1, 8] {
        let a = AlignedArena::from_bytes(&build(&spec(k)));
        let b = a.as_slice();
        let (_, alloc, n) = measured(b);
        println!("{what}: {} B, {n} steps, bound {}", b.len(), bound(b));
        assert_eq!(alloc, 0, "{what}: parse allocated {alloc} bytes");
        assert!(
            n <= bound(b),
            "{what}: {n} steps for {} bytes of metadata: validation is not linear",
            bound(b) - 256
        );
        assert!(n > last, "{what}: the step meter did not count");
        last = n;
    }
}

#[test]
fn validation_work_is_linear_in_file_size() {
    // The most work per byte the format allows: every task names the
    // longest legal name and owns its slots and path entry.
    assert_linear("many tasks with the longest names", |k| Spec {
        tasks: 500 * k,
        slots: 4,
        name_len: MAX_NAME_LEN as usize,
        share_slots: false,
    });
    assert_linear("few tasks with many slots", |k| Spec {
        tasks: 4,
        slots: 2000 * k,
        name_len: 8,
        share_slots: false,
    });
    // Refused at the second task; before the ascending-slots rule this was
    // tasks x slots steps (quadratic in the file size).
    assert_linear("every task claiming every slot", |k| Spec {
        tasks: 300 * k,
        slots: 300 * k,
        name_len: 8,
        share_slots: true,
    });
}

/// Before the name cap, every task could name the whole string table:
/// `tasks x strings` UTF-8 checks at parse and as many bytes of name copies
/// in a caller that keeps names (the C ABI). Now a name over the cap is
/// refused and a name within it costs at most the cap.
#[test]
fn names_cannot_multiply_the_string_table() {
    let a = AlignedArena::from_bytes(&build(&Spec {
        tasks: 4,
        slots: 1,
        name_len: MAX_NAME_LEN as usize + 1,
        share_slots: false,
    }));
    let e = parse(a.as_slice()).unwrap_err();
    assert_eq!(e.field(), "tasks.name", "{e}");
    let a = AlignedArena::from_bytes(&build(&Spec {
        tasks: 4,
        slots: 1,
        name_len: MAX_NAME_LEN as usize,
        share_slots: false,
    }));
    assert_eq!(parse(a.as_slice()).unwrap(), 4);
}

/// A package whose one task has `n` ops, each copying a state slot into a
/// slot of its own: `n + 1` slots, all used, never live at once.
fn many_slots(n: u32) -> Vec<u8> {
    let mut w = common::one_head_writer();
    common::one_task(&mut w, n, n + 1, 16 * (u64::from(n) + 1));
    for k in 0..=n {
        w.slots.push(SlotRec {
            offset: 4 * k,
            len: 4,
            kind: u32::from(k == 0),
        });
    }
    for k in 1..=n {
        w.program.push(
            taskpath_format::Op::Copy {
                src: taskpath_format::SlotId(0),
                src_offset: 0,
                dst: taskpath_format::SlotId(k),
                dst_offset: 0,
                len: 4,
            }
            .encode(),
        );
    }
    w.finish(12, 0)
}

/// The meaning check (`check_all`: plan, dataflow, what the task needs) on
/// a task with many slots grows like n log n, not n² (the overlap test
/// compared every pair of slots: a package listing a million slots made
/// `verify` hang). Timed at two sizes 8x apart in one process, best of 3:
/// quadratic work would take about 64x longer at the larger size.
#[test]
fn the_meaning_check_is_not_quadratic_in_the_slot_count() {
    let time = |n: u32| {
        let b = AlignedArena::from_bytes(&many_slots(n));
        let m = Model::from_bytes(b.as_slice()).unwrap();
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                let r = taskpath_runtime::plan::check_all(&m);
                // Refused for what the task lacks (its input is never read),
                // after the dataflow and overlap checks passed.
                let e = r.unwrap_err().to_string();
                assert!(e.contains("a task input no op reads"), "{e}");
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (small, large) = (time(20_000), time(160_000));
    eprintln!(
        "check_all: 20k slots {small:.3} s, 160k slots {large:.3} s ({:.1}x)",
        large / small
    );
    assert!(
        large / small < 30.0,
        "{:.1}x for 8x the slots",
        large / small
    );
}
