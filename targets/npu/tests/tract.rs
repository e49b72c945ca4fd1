//! The exported graphs run by tract against the CPU runtime (feature `tract`:
//! `cargo test -p taskpath-npu --features tract --release`).
#![cfg(feature = "tract")]

mod common;

use common::*;
use taskpath_npu::tract::{load, run, TractDelegate};
use taskpath_npu::{
    export_task, rel_error, CpuOnly, Executor, Plan, Precision, SegmentKind, F32_REL_BOUND,
    INT8_REL_BOUND,
};
use taskpath_runtime::Model;

const TASKS: [&str; 5] = ["DIGIT-10", "WDBC", "DIGIT-PARITY", "DIAB", "GSE-MET"];

/// Test samples per task whose every graph execution is replayed in tract.
const SAMPLES: usize = 24;

fn kind(k: SegmentKind) -> &'static str {
    match k {
        SegmentKind::Trunk { .. } => "trunk",
        SegmentKind::Router { .. } => "router",
        SegmentKind::Expert { .. } => "expert",
        SegmentKind::Head => "head",
    }
}

#[test]
fn every_exported_graph_matches_the_cpu_runtime_for_its_part() {
    let ck = checkpoint();
    let pkg = package(&ck, None, true);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    // (kind, precision) -> (max relative error, executions compared)
    let mut worst: std::collections::BTreeMap<(&str, &str), (f32, usize)> = Default::default();
    for name in TASKS {
        let t = model.task_index(name).unwrap();
        let plan = Plan::new(&model, t).unwrap();
        let graphs = export_task(&model, &plan, &[Precision::F32, Precision::Int8]).unwrap();
        let loaded: Vec<_> = graphs
            .iter()
            .map(|g| (g.segment, g.precision, load(&g.name, &g.bytes).unwrap()))
            .collect();
        let ds = test_set(name);
        let mut ex = Executor::new(&model, t, CpuOnly, |_| Ok(None)).unwrap();
        let outputs = model.task(t).unwrap().outputs;
        let mut runs = vec![0usize; plan.segments.len()];
        for x in ds.samples.iter().take(SAMPLES) {
            let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![0f32; outputs];
            let mut failure = None;
            ex.run_observed(&refs, &mut out, &mut |seg, ins, outs| {
                let si = plan
                    .segments
                    .iter()
                    .position(|s| s.name == seg.name)
                    .unwrap();
                runs[si] += 1;
                for (gs, prec, m) in &loaded {
                    if *gs != si {
                        continue;
                    }
                    let args: Vec<(&[f32], [usize; 2])> = ins
                        .iter()
                        .copied()
                        .zip(seg.inputs.iter().map(|p| p.shape))
                        .collect();
                    let got = run(&seg.name, m, &args).unwrap();
                    for ((g, want), p) in got.iter().zip(outs).zip(&seg.outputs) {
                        let e = rel_error(g, want);
                        let w = worst.entry((kind(seg.kind), prec.name())).or_default();
                        w.0 = w.0.max(e);
                        w.1 += 1;
                        if e > prec.bound(seg.kind) && failure.is_none() {
                            failure = Some(format!(
                                "{name}: {} ({}) output {}: relative error {e:e} > {:e}",
                                seg.name,
                                prec.name(),
                                p.name,
                                prec.bound(seg.kind)
                            ));
                        }
                    }
                }
            })
            .unwrap();
            if let Some(f) = failure {
                panic!("{f}");
            }
        }
        // Every dense graph ran; expert graphs run when routing picks them.
        let mut unrouted = Vec::new();
        for (si, s) in plan.segments.iter().enumerate() {
            if runs[si] == 0 {
                assert!(
                    matches!(s.kind, SegmentKind::Expert { .. }),
                    "{} never ran",
                    s.name
                );
                unrouted.push(s.name.as_str());
            }
        }
        println!("{name}: expert graphs no sample routed to: {unrouted:?}");
    }
    println!("| graph kind | precision | max relative error | outputs compared |");
    println!("|---|---|---|---|");
    for ((k, p), (e, n)) in &worst {
        println!("| {k} | {p} | {e:.2e} | {n} |");
    }
    assert!(
        worst.len() == 8,
        "every kind in both precisions was compared: {worst:?}"
    );
    let _ = (F32_REL_BOUND, INT8_REL_BOUND);
}

#[test]
fn tract_delegate_runs_whole_tasks_with_the_cpu_predictions() {
    let ck = checkpoint();
    let pkg = package(&ck, None, true);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    println!("| task | samples | precision | predictions equal to CPU | max logit rel. error |");
    println!("|---|---|---|---|---|");
    for name in TASKS {
        let t = model.task_index(name).unwrap();
        let plan = Plan::new(&model, t).unwrap();
        let ds = test_set(name);
        let want = session_outputs(&model, t, &ds);
        for prec in [Precision::F32, Precision::Int8] {
            let graphs = export_task(&model, &plan, &[prec]).unwrap();
            let mut ex = Executor::new(&model, t, TractDelegate::new(), |s| {
                Ok(graphs
                    .iter()
                    .find(|g| g.name == s.name)
                    .map(|g| g.bytes.clone()))
            })
            .unwrap();
            assert_eq!(ex.delegated_segments().len(), plan.segments.len());
            let (mut same, mut worst) = (0, 0f32);
            for (x, w) in ds.samples.iter().zip(&want) {
                let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
                let mut out = vec![0f32; w.len()];
                let st = ex.run(&refs, &mut out).unwrap();
                assert_eq!(st.cpu, 0, "every segment ran in tract");
                same += usize::from(argmax(&out) == argmax(w));
                worst = worst.max(rel_error(&out, w));
            }
            println!(
                "| {name} | {} | {} | {same}/{} | {worst:.2e} |",
                ds.samples.len(),
                prec.name(),
                ds.samples.len()
            );
            if prec == Precision::F32 {
                assert_eq!(
                    same,
                    ds.samples.len(),
                    "{name}: a prediction differs from the CPU's"
                );
            }
        }
    }
}

#[test]
fn segments_a_delegate_declines_run_on_the_cpu() {
    let ck = checkpoint();
    let pkg = package(&ck, None, false);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let t = model.task_index("DIGIT-10").unwrap();
    let plan = Plan::new(&model, t).unwrap();
    let graphs = export_task(&model, &plan, &[Precision::F32]).unwrap();
    // Only the experts go to the delegate, as on an NPU that takes the
    // expert FFNs and leaves attention to the CPU.
    let mut ex = Executor::new(&model, t, TractDelegate::new(), |s| {
        Ok(match s.kind {
            SegmentKind::Expert { .. } => graphs
                .iter()
                .find(|g| g.name == s.name)
                .map(|g| g.bytes.clone()),
            _ => None,
        })
    })
    .unwrap();
    let ds = test_set("DIGIT-10");
    let want = session_outputs(&model, t, &ds);
    for (x, w) in ds.samples.iter().zip(&want).take(32) {
        let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; w.len()];
        let st = ex.run(&refs, &mut out).unwrap();
        assert!(st.cpu > 0 && st.delegated > 0, "{st:?}");
        assert!(
            rel_error(&out, w) <= F32_REL_BOUND,
            "{}",
            rel_error(&out, w)
        );
    }
}
