//! A task touches only its path: counted blob reads, and on Linux the page
//! cache residency of the mapped package (mincore).

use std::collections::BTreeSet;

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_format::records::blob_kind;
use taskpath_pack::{pack, random_calibration, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session, SessionOptions, Tracer};

#[derive(Default)]
struct Reads(BTreeSet<u32>);
impl Tracer for Reads {
    fn blob_read(&mut self, blob: u32, _bytes: usize) {
        self.0.insert(blob);
    }
}

/// A 16-expert model with paths narrowed by calibration at 60% coverage.
fn narrowed() -> (Checkpoint, PackOptions) {
    let ck = random_checkpoint(&RandomSpec::wide_small(), 21);
    let opts = random_calibration(&ck, 24, 5, 0.6).unwrap();
    assert!(
        opts.masks.values().any(|m| m.count_ones() < 16),
        "coverage 0.6 must narrow some path"
    );
    (ck, opts)
}

/// The path as the model definition says it should be, from the checkpoint
/// config and masks alone: (kind, group, expert, component, owner) keys.
fn expected_path(
    ck: &Checkpoint,
    opts: &PackOptions,
    t: usize,
) -> BTreeSet<(u8, u16, u16, u16, u16)> {
    let c = &ck.config;
    let task = &c.tasks[t];
    let mods = c.task_modalities(task);
    let n = u16::MAX;
    let mut s = BTreeSet::new();
    let mut union = 0u64;
    for &m in &mods {
        s.insert((blob_kind::SHARED, n, n, n, m as u16));
        for h in 0..=task.stage {
            s.insert((blob_kind::ROUTER, n, n, h as u16, m as u16));
        }
        union |= opts.masks[&(t, m)];
    }
    for j in (0..c.experts).filter(|j| union & (1 << j) != 0) {
        for comp in 0..=task.stage {
            s.insert((blob_kind::EXPERT, 0, j as u16, comp as u16, n));
        }
    }
    s.insert((blob_kind::HEAD, n, n, n, t as u16));
    s
}

#[test]
fn running_a_task_reads_only_its_path_which_is_exactly_its_parts() {
    let (ck, opts) = narrowed();
    let bytes = AlignedArena::from_bytes(&pack(&ck, &opts).unwrap());
    let model = Model::from_bytes(bytes.as_slice()).unwrap();
    let mut rng = SplitMix64::new(8);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let path: BTreeSet<u32> = model.path_blobs(&info).map(|b| b.index).collect();
        let keys: BTreeSet<_> = model
            .path_blobs(&info)
            .map(|b| {
                (
                    b.rec.kind,
                    b.rec.group,
                    b.rec.expert,
                    b.rec.component,
                    b.rec.owner,
                )
            })
            .collect();
        assert_eq!(keys, expected_path(&ck, &opts, t), "path of {}", info.name);
        assert!(
            path.len() < model.blob_count(),
            "a task's path is not the whole model"
        );

        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::new(&model, t, arena.as_mut_slice()).unwrap();
        let mut reads = Reads::default();
        let mut out = vec![0f32; info.outputs];
        for _ in 0..16 {
            let x = random_inputs(&ck.config, t, &mut rng);
            let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
            s.run_traced(&refs, &mut out, &mut reads).unwrap();
        }
        let outside: Vec<_> = reads.0.difference(&path).collect();
        assert!(
            outside.is_empty(),
            "task {} read blobs outside its path: {outside:?}",
            info.name
        );
        // Its trunks, routers and head are always read.
        for b in model
            .path_blobs(&info)
            .filter(|b| b.rec.kind != blob_kind::EXPERT)
        {
            assert!(
                reads.0.contains(&b.index),
                "blob {} on the path was never read",
                b.index
            );
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn mincore_shows_only_path_pages_resident_after_a_run() {
    use std::os::fd::AsRawFd;

    let (ck, opts) = narrowed();
    let packed = pack(&ck, &opts).unwrap();
    let dir = std::env::temp_dir().join(format!("taskpath-mincore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.tpk");
    taskpath_checkpoint::write_atomic(&file, &packed).unwrap();
    let page = 4096usize;
    let mapped = Model::open(&file).unwrap();
    let model = mapped.model().unwrap();
    let map = mapped.bytes(0).unwrap();
    let data_off = model.base().header().data_off as usize;
    let pages = map.len().div_ceil(page);
    let resident = || -> Vec<bool> {
        let mut v = vec![0u8; pages];
        // SAFETY: the range is our live mapping; `v` holds one byte per page.
        let r =
            unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore failed");
        v.iter().map(|b| b & 1 == 1).collect()
    };
    let mut rng = SplitMix64::new(2);
    let f = std::fs::File::open(&file).unwrap();
    let mut checked = 0;
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        // Drop the file from the page cache and turn readahead off on the mapping.
        // SAFETY: plain syscalls on our own file descriptor and mapping.
        unsafe {
            assert_eq!(
                libc::madvise(
                    map.as_ptr() as *mut libc::c_void,
                    map.len(),
                    libc::MADV_DONTNEED
                ),
                0
            );
            assert_eq!(
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED),
                0
            );
            assert_eq!(
                libc::madvise(
                    map.as_ptr() as *mut libc::c_void,
                    map.len(),
                    libc::MADV_RANDOM
                ),
                0
            );
        }
        let before = resident();
        if before[data_off / page..].iter().all(|&r| r) {
            eprintln!("SKIP mincore check: this filesystem keeps the file cached after POSIX_FADV_DONTNEED");
            return;
        }
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::with_options(
            &model,
            t,
            arena.as_mut_slice(),
            SessionOptions {
                verify_path: false,
                ..Default::default()
            },
        )
        .unwrap();
        let x = random_inputs(&ck.config, t, &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0f32; info.outputs];
        s.run(&refs, &mut out).unwrap();
        let after = resident();
        let mut allowed = vec![false; pages];
        for b in model.path_blobs(&info) {
            let start = data_off + b.rec.offset as usize;
            allowed[start / page..(start + b.rec.len as usize).div_ceil(page)].fill(true);
        }
        let mut touched_path = 0;
        for p in data_off / page..pages {
            assert!(
                !after[p] || allowed[p],
                "task {}: page {p} outside the path is resident",
                info.name
            );
            touched_path += usize::from(after[p]);
        }
        assert!(
            touched_path > 0,
            "mincore saw no path page: the check would be vacuous"
        );
        checked += 1;
    }
    assert_eq!(checked, model.task_count());
    let _ = std::fs::remove_dir_all(&dir);
}
