//! Linux: from a cold page cache, one CLI command leaves exactly the
//! package's metadata and the task's path resident (mincore over the
//! file), for the bundled FLAME model's `run --task WDBC` and a language
//! model's `generate` on a narrow domain path. Without `MADV_RANDOM` on the
//! mapping the kernel's readahead (8 MiB here) pulled in the whole file.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use taskpath_format::ExpertMask;
use taskpath_profile::pagein::{drop_page_cache, page_size, resident_pages};
use taskpath_runtime::MappedModel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn taskpath(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_taskpath"))
        .args(args)
        .output()
        .expect("spawn taskpath");
    assert!(
        o.status.success(),
        "taskpath {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Drops `file` from the page cache, runs `args`, and checks that the
/// resident pages are the metadata, `task`'s path and the blobs in `extra`.
/// Returns false (and says so) where the file system keeps the file cached.
fn check(file: &Path, task: &str, extra: &[u32], args: &[&str]) -> bool {
    assert!(drop_page_cache(file));
    let mapped = MappedModel::open(file).unwrap();
    let bytes = mapped.bytes(0).unwrap();
    let page = page_size();
    let model = mapped.model().unwrap();
    let data_off = model.base().header().data_off as usize;
    let before = resident_pages(bytes).unwrap();
    if before[data_off.div_ceil(page)..].iter().all(|&r| r) {
        eprintln!("SKIP: this file system keeps the file cached after POSIX_FADV_DONTNEED");
        return false;
    }
    taskpath(args);
    let after = resident_pages(bytes).unwrap();
    let info = model.task(model.task_index(task).unwrap()).unwrap();
    let mut allowed = vec![false; after.len()];
    allowed[..data_off.div_ceil(page)].fill(true);
    let mut path_pages = 0;
    let blobs = model
        .path_blobs(&info)
        .chain(extra.iter().filter_map(|&b| model.blob(b)));
    for b in blobs {
        let start = data_off + b.rec.offset as usize;
        let (p0, p1) = (start / page, (start + b.rec.len as usize).div_ceil(page));
        allowed[p0..p1].fill(true);
        path_pages += p1 - p0;
    }
    let outside: Vec<usize> = (0..after.len())
        .filter(|&p| after[p] && !allowed[p])
        .collect();
    let missing = (0..after.len())
        .filter(|&p| allowed[p] && !after[p])
        .count();
    println!(
        "{}: {} pages; metadata {} + path {path_pages}; resident after: {} ({} outside, {missing} of the allowed not touched)",
        file.display(),
        after.len(),
        data_off.div_ceil(page),
        after.iter().filter(|&&r| r).count(),
        outside.len()
    );
    assert!(
        outside.is_empty(),
        "{} pages outside metadata + path resident, first {:?}",
        outside.len(),
        &outside[..outside.len().min(8)]
    );
    assert_eq!(
        missing, 0,
        "every path page is read (the session verifies them)"
    );
    true
}

#[test]
fn a_flame_run_reads_only_its_path() {
    let dir = std::env::temp_dir().join(format!("taskpath-resid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tpk = dir.join("ref.tpk");
    let r = root();
    taskpath(&[
        "pack",
        &r.join("models/reference/stage3").display().to_string(),
        "-o",
        &tpk.display().to_string(),
        "--calibration",
        &r.join("models/reference/data").display().to_string(),
        "--path-coverage",
        "0.9",
    ]);
    let data = r
        .join("models/reference/data/WDBC.test.json")
        .display()
        .to_string();
    let f = tpk.display().to_string();
    check(
        &tpk,
        "WDBC",
        &[],
        &["run", &f, "--task", "WDBC", "--input", &data],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_on_a_domain_path_reads_only_that_path() {
    let dir = std::env::temp_dir().join(format!("taskpath-resid-llm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = taskpath_import::Checkpoint::open(root().join("models/llm-tiny/olmoe")).unwrap();
    // A narrow path: experts 1 and 5 in layer 0, 2 and 3 in layer 1.
    let mut masks = BTreeMap::new();
    let mask = |experts: &[usize]| {
        let mut m = ExpertMask::default();
        experts.iter().for_each(|&j| m.insert(j));
        m
    };
    masks.insert(0, mask(&[1, 5]));
    masks.insert(1, mask(&[2, 3]));
    let opts = taskpath_pack::llm::LlmPackOptions {
        context: 64,
        chunk: 8,
        tasks: vec![
            ("generate".into(), BTreeMap::new()),
            ("narrow".into(), masks),
        ],
        ..Default::default()
    };
    let tpk = dir.join("lm.tpk");
    // Written back before the cache is dropped: dirty pages cannot be.
    taskpath_checkpoint::write_atomic(&tpk, &taskpath_pack::llm::pack_llm(&ck, &opts).unwrap())
        .unwrap();
    let tok_blob = {
        let m = MappedModel::open(&tpk).unwrap();
        match m.model().unwrap().meta("llm.tokenizer_blob") {
            Some(taskpath_format::MetaValue::U32(b)) => b,
            other => panic!("tokenizer blob: {other:?}"),
        }
    };
    let f = tpk.display().to_string();
    check(
        &tpk,
        "narrow",
        &[tok_blob],
        &[
            "generate",
            &f,
            "--task",
            "narrow",
            "-p",
            "hello there",
            "-n",
            "8",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
