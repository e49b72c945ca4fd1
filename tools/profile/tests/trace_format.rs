//! The trace of a real run (the bundled trained model, packed here) checked
//! against the Chrome Trace Event Format's rules by an independent validator
//! written from the format's document ("Trace Event Format", Google, the
//! JSON Object Format with `traceEvents`), not from the writer's code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_pack::{pack, PackOptions};
use taskpath_profile::chrome::{chrome_json, Recorder, TraceMeta};
use taskpath_profile::driver::{activations, expert_blobs, profile_task, Options};
use taskpath_profile::energy::Meter;
use taskpath_runtime::{MappedModel, Model, RunStats, Session};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/reference")
}

/// Bytes of the largest expert blob: a budget of a few of them makes the
/// residency cache both hit and miss.
fn largest_expert_blob(model: &Model<'_>) -> usize {
    (0..model.blob_count() as u32)
        .filter_map(|b| model.blob(b))
        .filter(|b| b.rec.kind == taskpath_format::records::blob_kind::EXPERT)
        .map(|b| b.bytes.len())
        .max()
        .unwrap()
}

/// `(start, end, name)` of a complete event, µs.
type Span = (f64, f64, String);

/// Violations of the format's rules, empty when the trace is valid.
fn validate(v: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(events) = v.get("traceEvents").and_then(Value::as_array) else {
        return vec!["no traceEvents array".into()];
    };
    // Complete events per (pid, tid), to check nesting.
    let mut lanes: BTreeMap<(i64, i64), Vec<Span>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let mut err = |m: &str| bad.push(format!("event {i}: {m}: {e}"));
        let Some(ph) = e.get("ph").and_then(Value::as_str) else {
            err("no ph");
            continue;
        };
        let name = e.get("name").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            err("no name");
        }
        let pid = e.get("pid").and_then(Value::as_i64);
        let tid = e.get("tid").and_then(Value::as_i64);
        if pid.is_none() || tid.is_none() {
            err("pid and tid must be integers");
        }
        let ts = e.get("ts").and_then(Value::as_f64);
        match ph {
            "X" => {
                let dur = e.get("dur").and_then(Value::as_f64);
                match (ts, dur) {
                    (Some(ts), Some(dur)) if ts >= 0.0 && dur >= 0.0 => {
                        lanes
                            .entry((pid.unwrap_or(0), tid.unwrap_or(0)))
                            .or_default()
                            .push((ts, ts + dur, name.unwrap_or("").to_string()));
                    }
                    _ => err("X needs ts >= 0 and dur >= 0 (microseconds)"),
                }
                if e.get("args").is_some_and(|a| !a.is_object()) {
                    err("args must be an object");
                }
            }
            "M" => {
                let ok = match name {
                    Some("process_name" | "thread_name") => {
                        e.pointer("/args/name").and_then(Value::as_str).is_some()
                    }
                    Some("process_sort_index" | "thread_sort_index") => e
                        .pointer("/args/sort_index")
                        .and_then(Value::as_i64)
                        .is_some(),
                    _ => false,
                };
                if !ok {
                    err("metadata event with an unknown name or without its args");
                }
            }
            "C" => {
                if ts.is_none_or(|t| t < 0.0) {
                    err("counter without ts");
                }
                let args = e.get("args").and_then(Value::as_object);
                if !args.is_some_and(|a| !a.is_empty() && a.values().all(Value::is_number)) {
                    err("counter args must be a non-empty object of numbers");
                }
            }
            _ => err("unexpected phase"),
        }
    }
    // On one thread, complete events must nest: sorted by start (longest
    // first on ties), each event lies inside or after every open one. The
    // slack is half a nanosecond: ts and dur are decimal microseconds.
    const EPS: f64 = 0.0005;
    for ((pid, tid), mut evs) in lanes {
        evs.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut open: Vec<Span> = Vec::new();
        for e in evs {
            while open.last().is_some_and(|o| o.1 <= e.0 + EPS) {
                open.pop();
            }
            if let Some(o) = open.last() {
                if e.1 > o.1 + EPS {
                    bad.push(format!(
                        "pid {pid} tid {tid}: {} [{}, {}] overlaps {} [{}, {}] without nesting",
                        e.2, e.0, e.1, o.2, o.0, o.1
                    ));
                }
            }
            open.push(e);
        }
    }
    bad
}

#[test]
fn the_validator_rejects_what_the_format_forbids() {
    let bad = serde_json::json!({"traceEvents": [
        {"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"name": "b", "ph": "X", "pid": 1, "tid": 1, "ts": 5, "dur": 10},
        {"name": "c", "ph": "X", "pid": 1, "tid": 2, "ts": 0},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 1},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {}},
        {"name": "n", "ph": "C", "pid": 1, "tid": 0, "ts": 1, "args": {"v": "x"}},
    ]});
    let errs = validate(&bad);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(errs[4].contains("without nesting"));
    let good = serde_json::json!({"traceEvents": [
        {"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"name": "b", "ph": "X", "pid": 1, "tid": 1, "ts": 2, "dur": 8},
        {"name": "c", "ph": "X", "pid": 1, "tid": 1, "ts": 10, "dur": 1},
    ]});
    assert!(validate(&good).is_empty());
}

#[test]
fn the_trace_of_a_real_run_follows_the_chrome_trace_event_format() {
    let ck = Checkpoint::load(&reference().join("stage3")).unwrap();
    let bytes = pack(&ck, &PackOptions::default()).unwrap();
    let path = std::env::temp_dir().join(format!("taskpath-trace-{}.tpk", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let mapped = MappedModel::open(&path).unwrap();
    let model = mapped.model().unwrap();
    let mut rec = Recorder::new();
    rec.set_expert_blobs(expert_blobs(&model));
    let tasks = ["DIAB", "DIGIT-10"];
    let mut expected_stats: Vec<RunStats> = Vec::new();
    for (lane, name) in tasks.iter().enumerate() {
        let task = model.task(model.task_index(name).unwrap()).unwrap();
        let ds = Dataset::load(&reference().join(format!("data/{name}.test.json"))).unwrap();
        let samples = &ds.samples[..4];
        let opts = Options {
            warmup: 1,
            runs: 3,
            trace_runs: Some(4),
            budget: Some(largest_expert_blob(&model).div_ceil(64) * 64 * 4),
            verify: true,
        };
        let mut meter = Meter::None("test".into());
        let p = profile_task(
            &model,
            mapped.bytes(0).unwrap(),
            &task,
            samples,
            lane as u32,
            &opts,
            &mut meter,
            &mut rec,
            &mut || {},
        )
        .unwrap();
        assert_eq!(p.latencies_ns.len(), 3);
        assert!(p.cache.is_some());
        // The untraced session's own counters are the oracle for the spans.
        let mut arena = taskpath_runtime::AlignedArena::new(task.arena_bytes);
        let mut s = Session::new(&model, task.index, arena.as_mut_slice()).unwrap();
        let x: Vec<&[f32]> = samples[0].inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; task.outputs];
        expected_stats.push(s.run(&x, &mut out).unwrap());
    }
    let json = chrome_json(
        &rec,
        &TraceMeta {
            process: "test",
            lanes: &tasks.map(String::from),
            modalities: &(0..model.modality_count())
                .map(|m| model.modality(m).unwrap().0.to_string())
                .collect::<Vec<_>>(),
        },
    );
    let v: Value = serde_json::from_str(&json).expect("the trace is JSON");
    let errs = validate(&v);
    assert!(errs.is_empty(), "{errs:#?}");

    let events = v["traceEvents"].as_array().unwrap();
    let count = |tid: i64, cat: &str| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == tid && e["cat"] == cat)
            .count()
    };
    for (lane, st) in expected_stats.iter().enumerate() {
        let tid = lane as i64 + 1;
        assert_eq!(count(tid, "inference"), 4);
        assert_eq!(count(tid, "op"), 4 * st.ops as usize);
        assert_eq!(count(tid, "expert"), 4 * st.expert_components as usize);
        // Weight bytes of the op spans of one inference = RunStats' count.
        let first_end = events
            .iter()
            .find(|e| e["tid"] == tid && e["cat"] == "inference")
            .map(|e| e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap())
            .unwrap();
        let bytes: u64 = events
            .iter()
            .filter(|e| {
                e["tid"] == tid && e["cat"] == "op" && e["ts"].as_f64().unwrap() < first_end
            })
            .map(|e| e["args"]["weight_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(bytes, st.weight_bytes as u64);
    }
    // Every expert span names an expert and says whether the cache hit.
    assert!(events
        .iter()
        .filter(|e| e["cat"] == "expert")
        .all(|e| e["name"].as_str().unwrap().starts_with("expert ")
            && e["args"]["cache_hit"].is_boolean()));
    assert!(events
        .iter()
        .any(|e| e["ph"] == "C" && e["name"] == "residency cache"));
    // Router decisions: top_k experts per route, within the expert count.
    let g = model.group(0).unwrap();
    for r in &rec.routes {
        assert!(!r.experts.is_empty() && r.experts.len() <= g.top_k as usize);
        assert!(r.experts.iter().all(|&e| e < g.experts));
    }
    let acts = activations(&rec, g.experts as usize);
    for (counts, routes) in acts.values() {
        assert!(counts.iter().sum::<u64>() <= routes * u64::from(g.top_k));
    }
    let _ = std::fs::remove_file(&path);
    drop(mapped);
    let _ = Model::from_bytes(&bytes).unwrap();
}
