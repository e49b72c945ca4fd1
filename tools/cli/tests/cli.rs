//! End-to-end tests of the `taskpath` binary: each test generates a small
//! random checkpoint in its own temporary directory and drives the CLI.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use taskpath_runtime::{AlignedArena, Model, Session};

mod common;
use common::{fails, ok, refused};

struct Tmp(common::Tmp);

impl Tmp {
    fn new(name: &str) -> Self {
        Self(common::Tmp::new("cli", name))
    }
}

impl std::ops::Deref for Tmp {
    type Target = common::Tmp;
    fn deref(&self) -> &common::Tmp {
        &self.0
    }
}

/// Runs the CLI, killing it (and failing) if it has not exited after
/// `limit` seconds: a hang must show as a failure, not a stuck test run.
fn finishes(mut cmd: Command, limit: u64) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit} s (hung); stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Recomputes a package's metadata and header checksums after an edit of
/// its metadata region (what a hostile writer does to pass the checks).
fn reseal(b: &mut [u8]) {
    let rd = |o: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[o..o + n]);
        u64::from_le_bytes(v) as usize
    };
    let (hlen, data_off) = (rd(12, 4), rd(48, 8));
    let m = xxhash_rust::xxh3::xxh3_64(&b[hlen..data_off]);
    b[64..72].copy_from_slice(&m.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&b[..120]);
    b[120..128].copy_from_slice(&h.to_le_bytes());
}

/// Replaces every occurrence of `from` by `to` (same length) in the
/// package's metadata region and re-seals it.
fn rename_in_package(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let data_off = u64::from_le_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let mut hits = 0;
    let mut i = 128;
    while i + from.len() <= data_off {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    reseal(bytes);
    hits
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {out}"))
}

/// `gen-random` (small shape: modalities a [5x3] and b [3x7]; task0 on a,b at
/// stage 0, task1 on b at stage 1; 4 experts, top-2) and `pack`.
fn packed(name: &str, extra_pack: &[&str]) -> Tmp {
    let t = Tmp::new(name);
    ok(&[
        "gen-random",
        &t.s("ck"),
        "--shape",
        "small",
        "--seed",
        "5",
        "--train-samples",
        "24",
        "--test-samples",
        "6",
        "--per-stage",
    ]);
    let (ck, out) = (t.s("ck"), t.s("model.tpk"));
    let mut args = vec!["pack", &ck, "-o", &out];
    args.extend(extra_pack);
    let stdout = ok(&args);
    assert!(
        stdout.contains("2 tasks") && stdout.contains("blobs"),
        "{stdout}"
    );
    t
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

/// Deterministic inputs of task0: a [5 tokens x 3], b [3 tokens x 7].
fn task0_inputs() -> (Vec<f32>, Vec<f32>) {
    let a = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
    let b = (0..21).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.2).collect();
    (a, b)
}

fn outputs(v: &Value) -> Vec<Vec<f64>> {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn pack_verify_and_inspect_agree_with_the_runtime() {
    let t = packed("inspect", &[]);
    let out = ok(&["verify", &t.s("model.tpk")]);
    let model_file = Model::open(t.path("model.tpk")).unwrap();
    let model = model_file.model().unwrap();
    assert_eq!(
        out.trim(),
        format!("ok: {} blobs, 2 tasks verified", model.blob_count())
    );

    let r = json(&["inspect", &t.s("model.tpk"), "--json"]);
    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), model.task_count());
    for (i, task) in tasks.iter().enumerate() {
        let info = model.task(i).unwrap();
        assert_eq!(task["name"], info.name);
        assert_eq!(task["stage"], info.stage);
        assert_eq!(
            task["arena_bytes"].as_u64().unwrap() as usize,
            info.arena_bytes
        );
        assert_eq!(
            task["path_bytes"].as_u64().unwrap() as usize,
            model.path_bytes(&info)
        );
        let mods: Vec<&str> = task["modalities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(mods, if i == 0 { vec!["a", "b"] } else { vec!["b"] });
        for m in &mods {
            // No calibration: every expert is on every path.
            assert_eq!(
                task["experts"][m],
                serde_json::json!([0, 1, 2, 3]),
                "{task}"
            );
        }
    }
    assert_eq!(r["arch"]["arch"], "flame");
    assert_eq!(r["arch"]["metadata"]["flame.experts"], 4);
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["experts"], 4);
    assert_eq!(groups[0]["kind"], "conv_ffn");
    assert_eq!(groups[0]["components"], model.components(0));
    assert_eq!(r["packages"][0]["header"]["align_log2"], 12);
    assert_eq!(r["packages"][0]["header"]["base_id"], Value::Null);

    let blobs = r["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), model.blob_count());
    let file_len = std::fs::metadata(t.path("model.tpk")).unwrap().len();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(b["id"], i);
        assert!(
            ["shared", "router", "expert", "head"].contains(&b["kind"].as_str().unwrap()),
            "{b}"
        );
        assert_eq!(b["format"], "f32");
        let sum = b["checksum"].as_str().unwrap();
        assert!(sum.starts_with("0x") && sum.len() == 18, "{sum}");
        let (off, len) = (b["offset"].as_u64().unwrap(), b["length"].as_u64().unwrap());
        assert_eq!(off % 4096, 0, "blob {i} at {off} is not page-aligned");
        assert!(len > 0 && off + len <= file_len);
        match b["kind"].as_str().unwrap() {
            "shared" | "router" => assert!(b["modality"].is_string(), "{b}"),
            "expert" => assert!(
                b["expert"].is_u64() && b["group"] == 0 && b["modality"].is_null(),
                "{b}"
            ),
            _ => assert!(b["task"].is_string(), "{b}"),
        }
        spans.push((off, len));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blobs overlap: {w:?}");
    }
    // Offsets are absolute: the file bytes there are the runtime's blob bytes.
    let bytes = std::fs::read(t.path("model.tpk")).unwrap();
    for (i, b) in blobs.iter().enumerate() {
        let (off, len) = (
            b["offset"].as_u64().unwrap() as usize,
            b["length"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            &bytes[off..off + len],
            model.blob(i as u32).unwrap().bytes,
            "blob {i}"
        );
    }

    let human = ok(&["inspect", &t.s("model.tpk")]);
    for needle in [
        "package 0 (base)",
        "section",
        "architecture:",
        "modalities:",
        "tasks:",
        "paths",
        "blobs (",
        "task0",
        "task1",
        "tensors",
    ] {
        assert!(
            human.contains(needle),
            "inspect output lacks {needle:?}:\n{human}"
        );
    }
}

#[test]
fn json_and_npy_inputs_give_identical_outputs() {
    let t = packed("run", &[]);
    let (a, b) = task0_inputs();
    let nested =
        |v: &[f32], f: usize| -> Vec<Vec<f32>> { v.chunks(f).map(<[f32]>::to_vec).collect() };
    let input = serde_json::json!({"inputs": {"a": nested(&a, 3), "b": nested(&b, 7)}});
    std::fs::write(t.path("in.json"), input.to_string()).unwrap();
    write_npy(&t.path("a.npy"), &[5, 3], &a);
    write_npy(&t.path("b.npy"), &[21], &b);

    let tpk = t.s("model.tpk");
    let from_json = json(&[
        "run",
        &tpk,
        "--task",
        "task0",
        "--input",
        &t.s("in.json"),
        "--json",
    ]);
    let from_npy = json(&[
        "run",
        &tpk,
        "--task",
        "task0",
        "--input",
        &t.s("a.npy"),
        "--input",
        &t.s("b.npy"),
        "--json",
    ]);
    assert_eq!(outputs(&from_json), outputs(&from_npy));
    assert_eq!(from_json["argmax"], from_npy["argmax"]);
    assert_eq!(outputs(&from_json)[0].len(), 2);

    // The same numbers as a session of the runtime itself.
    let mapped = Model::open(&tpk).unwrap();
    let model = mapped.model().unwrap();
    let info = model.task(0).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(&model, 0, arena.as_mut_slice()).unwrap();
    let mut out = vec![0f32; 2];
    s.run(&[&a, &b], &mut out).unwrap();
    let want: Vec<f64> = out.iter().map(|x| f64::from(*x)).collect();
    assert_eq!(outputs(&from_json)[0], want);

    // A dataset file runs every sample; the text form prints timing.
    let ds = json(&[
        "run",
        &tpk,
        "--input",
        &t.s("ck/data/task1.test.json"),
        "--json",
    ]);
    assert_eq!(ds["task"], "task1");
    assert_eq!(outputs(&ds).len(), 6);
    // Read whole instead of mapped: the same numbers.
    let read = json(&[
        "--no-mmap",
        "run",
        &tpk,
        "--input",
        &t.s("ck/data/task1.test.json"),
        "--json",
    ]);
    assert_eq!(outputs(&read), outputs(&ds));
    assert_eq!(ds["runs"], 6);
    let text = ok(&[
        "run",
        &tpk,
        "--task",
        "task0",
        "--input",
        &t.s("in.json"),
        "--repeat",
        "3",
    ]);
    assert!(
        text.contains("sample 0: argmax") && text.contains("timing: 3 runs, mean"),
        "{text}"
    );
}

#[test]
fn unknown_task_lists_the_available_names() {
    let t = packed("unknown", &[]);
    std::fs::write(t.path("in.json"), "{\"inputs\": {}}").unwrap();
    let err = fails(&[
        "run",
        &t.s("model.tpk"),
        "--task",
        "nope",
        "--input",
        &t.s("in.json"),
    ]);
    assert!(err.contains("unknown task \"nope\""), "{err}");
    assert!(err.contains("task0, task1"), "{err}");
    let err = fails(&[
        "eval",
        &t.s("model.tpk"),
        "--data",
        &t.s("ck/data"),
        "--tasks",
        "task0,zzz",
    ]);
    assert!(err.contains("unknown task \"zzz\""), "{err}");
}

#[test]
fn wrong_input_shapes_name_the_modality_and_expected_shape() {
    let t = packed("shape", &[]);
    let tpk = t.s("model.tpk");
    let (a, b) = task0_inputs();
    let nested =
        |v: &[f32], f: usize| -> Vec<Vec<f32>> { v.chunks(f).map(<[f32]>::to_vec).collect() };
    // Modality a with 4 tokens instead of 5.
    let bad = serde_json::json!({"inputs": {"a": nested(&a[..12], 3), "b": nested(&b, 7)}});
    std::fs::write(t.path("bad.json"), bad.to_string()).unwrap();
    let err = fails(&["run", &tpk, "--task", "task0", "--input", &t.s("bad.json")]);
    assert!(
        err.contains("modality a: expected 5 tokens x 3 features, got 4 tokens"),
        "{err}"
    );
    // A missing modality and an unknown one.
    let missing = serde_json::json!({"inputs": {"a": nested(&a, 3)}});
    std::fs::write(t.path("missing.json"), missing.to_string()).unwrap();
    let err = fails(&[
        "run",
        &tpk,
        "--task",
        "task0",
        "--input",
        &t.s("missing.json"),
    ]);
    assert!(err.contains("no modality b"), "{err}");
    // .npy of the wrong shape, count and dtype.
    write_npy(&t.path("a.npy"), &[3, 5], &a);
    write_npy(&t.path("b.npy"), &[3, 7], &b);
    let err = fails(&[
        "run",
        &tpk,
        "--task",
        "task0",
        "--input",
        &t.s("a.npy"),
        "--input",
        &t.s("b.npy"),
    ]);
    assert!(
        err.contains("for modality a: shape [3, 5], expected 5 tokens x 3 features"),
        "{err}"
    );
    let err = fails(&["run", &tpk, "--task", "task0", "--input", &t.s("b.npy")]);
    assert!(err.contains("takes 2 inputs (a, b)"), "{err}");
    let mut f8 = std::fs::read(t.path("b.npy")).unwrap();
    let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
    f8[at + 2] = b'8';
    std::fs::write(t.path("b8.npy"), f8).unwrap();
    let err = fails(&["run", &tpk, "--task", "task1", "--input", &t.s("b8.npy")]);
    assert!(err.contains("dtype \"<f8\" is not supported"), "{err}");
}

#[test]
fn verify_names_the_corrupt_blob() {
    let t = packed("corrupt", &[]);
    let r = json(&["inspect", &t.s("model.tpk"), "--json"]);
    let off = r["blobs"][3]["offset"].as_u64().unwrap() as usize;
    let mut bytes = std::fs::read(t.path("model.tpk")).unwrap();
    bytes[off + 5] ^= 0x40;
    std::fs::write(t.path("bad.tpk"), bytes).unwrap();
    let err = fails(&["verify", &t.s("bad.tpk")]);
    assert!(
        err.contains("blobs[3]") && err.contains("checksum mismatch"),
        "{err}"
    );
    // A corrupt header or table is refused when the file is opened.
    let mut bytes = std::fs::read(t.path("model.tpk")).unwrap();
    bytes[200] ^= 1;
    std::fs::write(t.path("meta.tpk"), bytes).unwrap();
    let err = fails(&["verify", &t.s("meta.tpk")]);
    assert!(err.contains("meta.tpk"), "{err}");
    let err = fails(&["verify", &t.s("absent.tpk")]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn pack_options_are_checked() {
    let t = packed("options", &[]);
    let err = fails(&[
        "pack",
        &t.s("ck"),
        "-o",
        &t.s("x.tpk"),
        "--path-coverage",
        "0.9",
    ]);
    assert!(err.contains("--path-coverage needs --calibration"), "{err}");
    std::fs::remove_file(t.path("ck/data/task1.train.json")).unwrap();
    let err = fails(&[
        "pack",
        &t.s("ck"),
        "-o",
        &t.s("x.tpk"),
        "--calibration",
        &t.s("ck/data"),
    ]);
    assert!(
        err.contains("task1") && err.contains("task1.train.json"),
        "{err}"
    );
    let err = fails(&["pack", &t.s("nowhere"), "-o", &t.s("x.tpk")]);
    assert!(
        err.contains("nowhere: no such file") && err.contains("model.json"),
        "{err}"
    );
    let err = refused(&["pack", &t.s("ck"), "-o", &t.s("x.tpk"), "--align-log2", "8"]);
    assert!(
        err.contains("--align-log2") && err.contains("at least 12 and at most 24"),
        "{err}"
    );
    assert!(!t.path("x.tpk").exists());
    let err = fails(&["gen-random", &t.s("g"), "--shape", "small", "--heads", "3"]);
    assert!(err.contains("heads (3) must divide d_model (16)"), "{err}");
}

#[test]
fn calibrated_paths_keep_between_top_k_and_all_experts() {
    let t = Tmp::new("calib");
    ok(&[
        "gen-random",
        &t.s("ck"),
        "--shape",
        "small",
        "--experts",
        "6",
        "--train-samples",
        "32",
        "--test-samples",
        "4",
    ]);
    let out = ok(&[
        "pack",
        &t.s("ck"),
        "-o",
        &t.s("m.tpk"),
        "--calibration",
        &t.s("ck/data"),
        "--path-coverage",
        "0.5",
    ]);
    assert!(out.contains("calibrated on 64 samples of 2 tasks"), "{out}");
    let r = json(&["inspect", &t.s("m.tpk"), "--json"]);
    let mut narrower = false;
    for task in r["tasks"].as_array().unwrap() {
        for (m, experts) in task["experts"].as_object().unwrap() {
            let n = experts.as_array().unwrap().len();
            assert!((2..=6).contains(&n), "{m}: {experts}");
            narrower |= n < 6;
            let stats = task["routing"][m].as_array().unwrap();
            assert_eq!(stats.len(), 6);
            assert!(stats.iter().all(|s| s["samples"] == 32));
            let mass: f64 = stats.iter().map(|s| s["mass"].as_f64().unwrap()).sum();
            assert!(
                (mass - 1.0).abs() < 1e-3,
                "gate mass shares sum to 1: {mass}"
            );
        }
    }
    assert!(
        narrower,
        "coverage 0.5 keeps fewer than all experts somewhere"
    );
    ok(&["verify", &t.s("m.tpk")]);
    let rows = json(&["eval", &t.s("m.tpk"), "--data", &t.s("ck/data"), "--json"]);
    assert_eq!(rows.as_array().unwrap().len(), 2);
}

#[test]
fn add_task_extends_the_base_without_changing_it() {
    let t = packed("delta", &[]);
    ok(&["pack", &t.s("ck/stage0"), "-o", &t.s("base.tpk")]);
    let before = std::fs::read(t.path("base.tpk")).unwrap();
    let out = ok(&[
        "add-task",
        &t.s("base.tpk"),
        &t.s("ck/stage1"),
        "-o",
        &t.s("d1.tpkd"),
        "--calibration",
        &t.s("ck/data"),
        "--path-coverage",
        "0.9",
    ]);
    assert!(out.contains("1 new tasks (task1)"), "{out}");
    assert_eq!(
        std::fs::read(t.path("base.tpk")).unwrap(),
        before,
        "the base is never written"
    );
    let v = ok(&["verify", &t.s("base.tpk"), "--deltas", &t.s("d1.tpkd")]);
    assert!(v.contains("2 tasks verified"), "{v}");
    let r = json(&[
        "inspect",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("d1.tpkd"),
        "--json",
    ]);
    assert_eq!(r["packages"].as_array().unwrap().len(), 2);
    assert_eq!(r["packages"][1]["header"]["delta"], true);
    assert_eq!(
        r["packages"][1]["header"]["base_id"],
        r["packages"][0]["header"]["package_id"]
    );
    assert_eq!(r["tasks"][1]["name"], "task1");
    assert_eq!(r["tasks"][1]["package"], 1);
    assert!(
        r["tasks"][1]["routing"]["b"].is_array(),
        "delta keeps the new task's statistics"
    );
    assert!(
        r["tasks"][0]["routing"].is_null(),
        "base task has no statistics"
    );
    // Earlier tasks give identical outputs with or without the delta.
    let ds = t.s("ck/data/task0.test.json");
    let alone = json(&["run", &t.s("base.tpk"), "--input", &ds, "--json"]);
    let chained = json(&[
        "run",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("d1.tpkd"),
        "--input",
        &ds,
        "--json",
    ]);
    assert_eq!(outputs(&alone), outputs(&chained));
    // Without calibration, the chain computes the new task exactly as the
    // full checkpoint packed directly does.
    ok(&[
        "add-task",
        &t.s("base.tpk"),
        &t.s("ck/stage1"),
        "-o",
        &t.s("full.tpkd"),
    ]);
    let ds1 = t.s("ck/data/task1.test.json");
    let direct = json(&["run", &t.s("model.tpk"), "--input", &ds1, "--json"]);
    let via_delta = json(&[
        "run",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("full.tpkd"),
        "--input",
        &ds1,
        "--json",
    ]);
    assert_eq!(outputs(&direct).len(), 6);
    assert_eq!(outputs(&direct), outputs(&via_delta));
    // A delta of nothing new is refused.
    let err = fails(&[
        "add-task",
        &t.s("base.tpk"),
        &t.s("ck/stage0"),
        "-o",
        &t.s("d0.tpkd"),
    ]);
    assert!(err.contains("adds no task"), "{err}");
}

#[test]
fn eval_reports_accuracy_and_agreement_with_stored_logits() {
    let t = packed("eval", &[]);
    let tpk = t.s("model.tpk");
    let text = ok(&["eval", &tpk, "--data", &t.s("ck/data")]);
    assert!(
        text.contains("task0") && text.contains("task1") && text.contains("µs/sample"),
        "{text}"
    );
    assert!(text.contains("accuracy is not defined"), "{text}");

    // Label the test set of task0 with the runtime's own predictions and logits.
    let run = json(&[
        "run",
        &tpk,
        "--input",
        &t.s("ck/data/task0.test.json"),
        "--json",
    ]);
    let mut ds: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path("ck/data/task0.test.json")).unwrap())
            .unwrap();
    for (i, s) in ds["samples"].as_array_mut().unwrap().iter_mut().enumerate() {
        s["label"] = run["argmax"][i].clone();
        s["logits"] = run["outputs"][i].clone();
    }
    std::fs::create_dir_all(t.path("labelled")).unwrap();
    std::fs::write(t.path("labelled/task0.test.json"), ds.to_string()).unwrap();
    let rows = json(&["eval", &tpk, "--data", &t.s("labelled"), "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "only task0 has a test set there");
    let r = &rows[0];
    assert_eq!(r["samples"], 6);
    assert_eq!(r["accuracy"], 1.0);
    assert_eq!(r["balanced_accuracy"], 1.0);
    assert_eq!(r["agreement"]["predictions"], 1.0);
    assert_eq!(r["agreement"]["max_abs"], 0.0);
    let err = fails(&["eval", &tpk, "--data", &t.s("labelled"), "--tasks", "task1"]);
    assert!(err.contains("task1.test.json"), "{err}");
}

#[test]
fn demo_packs_verifies_and_evaluates() {
    let t = Tmp::new("demo");
    ok(&[
        "gen-random",
        &t.s("ck"),
        "--shape",
        "small",
        "--train-samples",
        "16",
        "--test-samples",
        "4",
    ]);
    let out = ok(&[
        "demo",
        "--model",
        &t.s("ck"),
        "--data",
        &t.s("ck/data"),
        "--out",
        &t.s("out"),
    ]);
    for needle in [
        "== 1/6 model",
        "== 2/6 pack",
        "calibrating",
        "== 3/6 verify",
        "ok: ",
        "== 4/6 eval",
        "task0",
        "task1",
        "== 5/6 profile",
        "no meter",
        // The language model is not where this test runs from.
        "== 6/6 language model",
        "skipped: ",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
    assert!(t.path("out/model.tpk").is_file());
    // the profile step's files; the trace has complete ("X") events
    for f in [
        "trace.json",
        "summary.md",
        "latency.png",
        "experts.png",
        "ops.png",
    ] {
        assert!(
            t.path(&format!("out/profile/{f}")).is_file(),
            "demo wrote no profile/{f}"
        );
    }
    let trace = std::fs::read_to_string(t.path("out/profile/trace.json")).unwrap();
    assert!(
        trace.contains("\"ph\":\"X\""),
        "trace.json has no complete events"
    );
}

/// Every numeric option is range-checked before anything is opened or
/// allocated, and the message states the range (the findings of issue 17:
/// `run --repeat u64::MAX` and `profile --runs` panicked with "capacity
/// overflow", `residency --budgets 1e300` panicked and `1e5` aborted).
#[test]
fn numeric_options_are_bounded_and_state_their_range() {
    let max = "18446744073709551615";
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "m.tpk", "--input", "x", "--repeat", max],
            "at least 1 and at most 1000000",
        ),
        (
            &["run", "m.tpk", "--input", "x", "--repeat", "0"],
            "at least 1 and at most 1000000",
        ),
        (
            &["profile", "m.tpk", "--out", "o", "--runs", max],
            "at least 1 and at most 1000000",
        ),
        (
            &["profile", "m.tpk", "--out", "o", "--warmup", max],
            "at least 0 and at most 1000000",
        ),
        (
            &["profile", "m.tpk", "--out", "o", "--trace-runs", "0"],
            "at least 1 and at most 100000",
        ),
        (
            &["profile", "m.tpk", "--out", "o", "--interval-ms", "0"],
            "at least 1 and at most 3600000",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--budgets", "1e300"],
            "greater than 0 and at most 1",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--budgets", "1e5"],
            "greater than 0 and at most 1",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--budgets", "0.5,1.5"],
            "greater than 0 and at most 1",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--budgets", "0"],
            "greater than 0 and at most 1",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--budgets", "NaN"],
            "greater than 0 and at most 1",
        ),
        (
            &["residency", "m.tpk", "--data", "d", "--pin-fraction", "2"],
            "at least 0 and at most 1",
        ),
        (
            &["bench", "m.tpk", "--threads", "5000"],
            "at least 1 and at most 1024",
        ),
        (
            &["bench", "m.tpk", "--threads", "2,0"],
            "at least 1 and at most 1024",
        ),
        (
            &["bench", "m.tpk", "-r", "0"],
            "at least 1 and at most 10000",
        ),
        (
            &["bench", "m.tpk", "-n", max],
            "at least 0 and at most 1048576",
        ),
        (
            &["bench", "m.tpk", "-p", max],
            "at least 0 and at most 1048576",
        ),
        (
            &["bench", "m.tpk", "--warmup", max],
            "at least 0 and at most 1048576",
        ),
        (
            &["gen-random", "g", "--d", "100000"],
            "at least 1 and at most 4096",
        ),
        (
            &["gen-random", "g", "--heads", "0"],
            "at least 1 and at most 256",
        ),
        (
            &["gen-random", "g", "--experts", "65"],
            "at least 1 and at most 64",
        ),
        (
            &["gen-random", "g", "--top-k", "0"],
            "at least 1 and at most 64",
        ),
        (
            &["gen-random", "g", "--stages", "256"],
            "at least 1 and at most 255",
        ),
        (
            &["gen-random", "g", "--ffn-hidden", max],
            "at least 1 and at most 65536",
        ),
        (
            &["gen-random", "g", "--rank", "5000"],
            "at least 0 and at most 4096",
        ),
        (
            &["gen-random", "g", "--train-samples", max],
            "at least 0 and at most 100000",
        ),
        (
            &["gen-random", "g", "--test-samples=-1"],
            "at least 0 and at most 100000",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "-n", max],
            "at least 0 and at most 1048576",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "--temp", "1e9"],
            "at least 0 and at most 100",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "--temp", "nan"],
            "at least 0 and at most 100",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "--top-k", max],
            "at least 0 and at most 16777216",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "--top-p", "0"],
            "greater than 0 and at most 1",
        ),
        (
            &["generate", "m.tpk", "-p", "hi", "-t", "17"],
            "at least 1 and at most 16",
        ),
        (
            &["eval", "m.tpk", "--corpus", "c", "--jobs", "0"],
            "at least 1 and at most 64",
        ),
        (
            &["eval", "m.tpk", "--corpus", "c", "--window", "1"],
            "at least 2 and at most 1048576",
        ),
        (
            &["eval", "m.tpk", "--corpus", "c", "--max-tokens", "1"],
            "at least 2",
        ),
        (
            &["pack", "ck", "-o", "x.tpk", "--context", "0"],
            "at least 1 and at most 1048576",
        ),
        (
            &["pack", "ck", "-o", "x.tpk", "--chunk", "5000"],
            "at least 1 and at most 4096",
        ),
        (
            &["pack", "ck", "-o", "x.tpk", "--align-log2", "40"],
            "at least 12 and at most 24",
        ),
        (
            &["pack", "ck", "-o", "x.tpk", "--path-coverage", "1.5"],
            "greater than 0 and at most 1",
        ),
        (
            &[
                "export-onnx",
                "m.tpk",
                "--task",
                "t",
                "--out",
                "o",
                "--dump-samples",
                max,
            ],
            "at least 0 and at most 10000",
        ),
    ];
    for (args, range) in cases {
        let err = refused(args);
        assert!(err.contains(range), "{args:?}: {err}");
    }
}

/// Bounds that depend on the package or on several options together are
/// checked once it is open, before anything is allocated, with the range.
#[test]
fn data_dependent_bounds_are_errors_not_aborts() {
    let t = packed("bounds", &[]);
    let m = t.s("model.tpk");
    let err = fails(&[
        "profile",
        &m,
        "--inputs",
        &t.s("ck/data"),
        "--out",
        &t.s("p"),
        "--budget",
        "1000000000000000",
        "--quiet",
    ]);
    assert!(
        err.contains("--budget must be at least 1 and at most"),
        "{err}"
    );
    let err = fails(&[
        "gen-random",
        &t.s("g"),
        "--shape",
        "small",
        "--d",
        "4096",
        "--ffn-hidden",
        "65536",
        "--experts",
        "64",
        "--stages",
        "255",
    ]);
    assert!(
        err.contains("parameter count must be at least 0 and at most 268435456"),
        "{err}"
    );
    assert!(!t.path("g").exists());
    let err = fails(&["pack", &t.s("ck"), "-o", &t.s("x.tpk"), "--budget", "0"]);
    assert!(err.contains("--budget must be at least 1"), "{err}");
    // --repeat is counted, not stored: many runs cost no memory.
    let (a, b) = task0_inputs();
    let input = serde_json::json!({"inputs": {"a": a, "b": b}});
    std::fs::write(t.path("in.json"), input.to_string()).unwrap();
    let v = json(&[
        "run",
        &m,
        "--task",
        "task0",
        "--input",
        &t.s("in.json"),
        "--repeat",
        "300",
        "--json",
    ]);
    assert_eq!(v["runs"], 300);
    assert!(v["min_us"].as_f64().unwrap() <= v["mean_us"].as_f64().unwrap());
}

/// `bench --threads N` where a thread cannot be started: an error naming the
/// thread, never a panic or threads waiting forever on the start line. An
/// enormous RUST_MIN_STACK makes every spawn beyond the address space fail.
#[test]
fn bench_threads_that_cannot_start_are_an_error_not_a_hang() {
    let t = packed("spawn", &[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskpath"));
    cmd.args([
        "bench",
        &t.s("model.tpk"),
        "--inputs",
        &t.s("ck/data"),
        "--threads",
        "8",
        "-r",
        "1",
        "-n",
        "1",
        "--warmup",
        "0",
    ])
    .env("RUST_MIN_STACK", (1u64 << 45).to_string());
    let o = finishes(cmd, 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    assert!(err.contains("starting bench thread"), "{err}");
}

/// Names with control characters are escaped wherever the CLI prints them,
/// and a package with two tasks of one name is refused by `verify` (and
/// such a checkpoint by `pack`), even with every checksum re-sealed.
#[test]
fn hostile_names_are_escaped_and_duplicates_refused() {
    let t = packed("names", &[]);
    let clean = std::fs::read(t.path("model.tpk")).unwrap();

    let mut bytes = clean.clone();
    assert!(rename_in_package(&mut bytes, b"task0", b"\x1b[31m") >= 1);
    std::fs::write(t.path("esc.tpk"), &bytes).unwrap();
    ok(&["verify", &t.s("esc.tpk")]);
    for args in [
        vec!["inspect", &t.s("esc.tpk")[..]],
        vec!["inspect", &t.s("esc.tpk")[..], "--json"],
    ] {
        let out = ok(&args);
        assert!(!out.contains('\x1b'), "{args:?}: raw ESC in {out:?}");
        assert!(out.contains("\\u001b[31m"), "{args:?}: {out}");
    }
    // The JSON stays JSON, with the name's true value.
    let v = json(&["inspect", &t.s("esc.tpk"), "--json"]);
    assert!(v.to_string().contains("\\u001b[31m"), "{v}");
    let err = fails(&[
        "run",
        &t.s("esc.tpk"),
        "--task",
        "nope",
        "--input",
        &t.s("x.json"),
    ]);
    assert!(!err.contains('\x1b'), "{err:?}");

    let mut bytes = clean.clone();
    assert!(rename_in_package(&mut bytes, b"task1", b"task0") >= 1);
    std::fs::write(t.path("dup.tpk"), &bytes).unwrap();
    let err = fails(&["verify", &t.s("dup.tpk")]);
    assert!(err.contains("both named \"task0\""), "{err}");

    let mj = std::fs::read_to_string(t.path("ck/model.json")).unwrap();
    std::fs::write(
        t.path("ck/model.json"),
        mj.replace("\"task1\"", "\"task0\""),
    )
    .unwrap();
    let err = fails(&["pack", &t.s("ck"), "-o", &t.s("dup2.tpk")]);
    assert!(err.contains("duplicate task \"task0\""), "{err}");
    assert!(!t.path("dup2.tpk").exists());
}

/// A checkpoint's safetensors header is checked before its data is read: a
/// 3 GiB file (sparse) with a wrong header is refused under a 1 GiB address
/// space limit, where reading it whole would abort.
#[cfg(unix)]
#[test]
fn safetensors_headers_are_checked_before_the_data_is_read() {
    let t = packed("header", &[]);
    let st = t.path("ck/model.safetensors");
    let write = |header: &str, len: u64| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        std::fs::write(&st, &b).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&st)
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    let pack_limited = || {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "ulimit -v 1048576; exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_taskpath"),
            "pack",
            &t.s("ck"),
            "-o",
            &t.s("x.tpk"),
        ]);
        let o = finishes(cmd, 60);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.starts_with("error: ") && err.contains("model.safetensors"),
            "{err}"
        );
        err
    };
    let big = 3u64 << 30;
    write(
        r#"{"enc.a.w":{"dtype":"F64","shape":[16,3],"data_offsets":[0,384]}}"#,
        big,
    );
    assert!(pack_limited().contains("expected F32"));
    write(
        r#"{"nonsense":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        big,
    );
    assert!(pack_limited().contains("not one model.json describes"));
    write(
        r#"{"enc.a.w":{"dtype":"F32","shape":[16,3],"data_offsets":[0,192]}}"#,
        big,
    );
    assert!(pack_limited().contains("data region"));
    // A header length beyond the file.
    std::fs::write(&st, u64::MAX.to_le_bytes()).unwrap();
    assert!(pack_limited().contains("header length"));
    assert!(!t.path("x.tpk").exists());
}

#[test]
fn keygen_sign_and_verify_from_the_command_line() {
    let t = packed("sign", &[]);
    let out = ok(&["keygen", "-o", &t.s("keys/vendor")]);
    assert!(out.contains("fingerprint"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path("keys/vendor.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    // Never over an existing key.
    let before = std::fs::read(t.path("keys/vendor.key")).unwrap();
    let err = fails(&["keygen", "-o", &t.s("keys/vendor")]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(t.path("keys/vendor.key")).unwrap(), before);
    // Two keys from the OS random source differ.
    std::fs::create_dir_all(t.path("other")).unwrap();
    ok(&["keygen", "-o", &t.s("other")]);
    assert_ne!(
        std::fs::read(t.path("other/taskpath.pub")).unwrap(),
        std::fs::read(t.path("keys/vendor.pub")).unwrap()
    );
    let (key, public) = (t.s("keys/vendor.key"), t.s("keys/vendor.pub"));
    ok(&[
        "pack",
        &t.s("ck/stage0"),
        "-o",
        &t.s("base.tpk"),
        "--sign",
        &key,
    ]);
    ok(&[
        "add-task",
        &t.s("base.tpk"),
        &t.s("ck/stage1"),
        "-o",
        &t.s("d1.tpkd"),
        "--sign",
        &key,
    ]);
    let v = ok(&[
        "verify",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("d1.tpkd"),
        "--key",
        &public,
    ]);
    assert!(v.contains("ok: 2 packages signed by key"), "{v}");
    // Signed packages run as before without a key.
    let ds = t.s("ck/data/task0.test.json");
    let signed = json(&["run", &t.s("base.tpk"), "--input", &ds, "--json"]);
    ok(&["pack", &t.s("ck/stage0"), "-o", &t.s("plain.tpk")]);
    let plain = json(&["run", &t.s("plain.tpk"), "--input", &ds, "--json"]);
    assert_eq!(outputs(&signed), outputs(&plain));
    // Unsigned, another key's delta, and a re-sealed edit: each refused with
    // its own message naming the file.
    let err = fails(&["verify", &t.s("plain.tpk"), "--key", &public]);
    assert!(err.contains("unsigned package"), "{err}");
    ok(&[
        "add-task",
        &t.s("base.tpk"),
        &t.s("ck/stage1"),
        "-o",
        &t.s("other.tpkd"),
        "--sign",
        &t.s("other/taskpath.key"),
    ]);
    let err = fails(&[
        "verify",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("other.tpkd"),
        "--key",
        &public,
    ]);
    assert!(
        err.contains("signed by another key") && err.contains("other.tpkd"),
        "{err}"
    );
    let mut b = std::fs::read(t.path("d1.tpkd")).unwrap();
    b[72] ^= 1; // header.base_id
    reseal(&mut b);
    std::fs::write(t.path("tampered.tpkd"), &b).unwrap();
    let err = fails(&[
        "verify",
        &t.s("base.tpk"),
        "--deltas",
        &t.s("tampered.tpkd"),
        "--key",
        &public,
    ]);
    assert!(err.contains("modified after it was signed"), "{err}");
    // Keys swapped or missing are named before any work.
    let err = fails(&["pack", &t.s("ck"), "-o", &t.s("x.tpk"), "--sign", &public]);
    assert!(err.contains("holds a public key"), "{err}");
    assert!(!t.path("x.tpk").exists());
    let err = fails(&["verify", &t.s("base.tpk"), "--key", &key]);
    assert!(err.contains("holds a secret key"), "{err}");
    let err = fails(&["verify", &t.s("base.tpk"), "--key", &t.s("nope.pub")]);
    assert!(err.contains("nope.pub"), "{err}");
}
