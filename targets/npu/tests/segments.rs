//! The segmenter, the CPU executor and the exporter, without tract.

mod common;

use common::*;
use taskpath_cpu::quant::WeightFormat;
use taskpath_npu::export::quantize_rows;
use taskpath_npu::{
    export_task, manifest, rel_error, CpuOnly, Delegate, Executor, Precision, Segment, SegmentKind,
    SegmentPlan, Source, Step,
};
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::{AlignedArena, Model};

/// Every sample of every bundled test set through the executor with no
/// delegate equals the session bit for bit.
fn assert_bit_identical(model: &Model<'_>, tasks: &[&str]) {
    for &name in tasks {
        let t = model.task_index(name).unwrap();
        let info = model.task(t).unwrap();
        let ds = test_set(name);
        let want = session_outputs(model, t, &ds);
        let mut ex = Executor::new(model, t, CpuOnly, |_| Ok(None)).unwrap();
        assert!(ex.delegated_segments().is_empty());
        for (x, w) in ds.samples.iter().zip(&want) {
            let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![0f32; info.outputs];
            let st = ex.run(&refs, &mut out).unwrap();
            assert_eq!(st.delegated, 0);
            let a: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            let b: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                a, b,
                "task {name}: segmented CPU run differs from the session"
            );
        }
    }
}

const TASKS: [&str; 5] = ["DIGIT-10", "WDBC", "DIGIT-PARITY", "DIAB", "GSE-MET"];

#[test]
fn cpu_executor_equals_the_session_bit_for_bit_f32_and_narrow_paths() {
    let ck = checkpoint();
    let pkg = package(&ck, None, true);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    assert_bit_identical(&model, &TASKS);
}

#[test]
fn cpu_executor_equals_the_session_bit_for_bit_int4_experts() {
    let ck = checkpoint();
    let pkg = package(&ck, Some(WeightFormat::I4G32), false);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    assert_bit_identical(&model, &TASKS);
}

#[test]
fn cpu_executor_follows_a_delta_chain() {
    let ck = checkpoint();
    let opts = PackOptions::default();
    let base = AlignedArena::from_bytes(&pack(&ck.stage_prefix(0).unwrap(), &opts).unwrap());
    let m0 = Model::from_bytes(base.as_slice()).unwrap();
    let d1 =
        AlignedArena::from_bytes(&pack_delta(&ck.stage_prefix(1).unwrap(), &m0, &opts).unwrap());
    let m1 = m0.with_delta(d1.as_slice()).unwrap();
    let d2 = AlignedArena::from_bytes(&pack_delta(&ck, &m1, &opts).unwrap());
    let m2 = m1.with_delta(d2.as_slice()).unwrap();
    // DIAB lives in the first delta, GSE-MET in the second.
    assert_eq!(m2.task(m2.task_index("GSE-MET").unwrap()).unwrap().part, 2);
    assert_bit_identical(&m2, &["DIAB", "GSE-MET", "WDBC"]);
}

#[test]
fn every_task_splits_into_trunks_routers_path_experts_and_one_head() {
    let ck = checkpoint();
    let pkg = package(&ck, None, true);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let d = match model.meta("flame.d_model") {
        Some(taskpath_runtime::format::MetaValue::U32(d)) => d as usize,
        other => panic!("flame.d_model: {other:?}"),
    };
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let plan = SegmentPlan::new(&model, t).unwrap();
        let mods: Vec<usize> = info.modalities().collect();
        let union = model
            .paths(&info)
            .fold(taskpath_runtime::format::ExpertMask::default(), |a, e| {
                a.union(&e.mask)
            });
        let count =
            |f: &dyn Fn(&SegmentKind) -> bool| plan.segments.iter().filter(|s| f(&s.kind)).count();
        assert_eq!(
            count(&|k| matches!(k, SegmentKind::Trunk { .. })),
            mods.len()
        );
        assert_eq!(
            count(&|k| matches!(k, SegmentKind::Router { .. })),
            mods.len()
        );
        assert_eq!(count(&|k| matches!(k, SegmentKind::Head)), 1);
        assert_eq!(
            count(&|k| matches!(k, SegmentKind::Expert { .. })),
            union.count() as usize * (info.stage + 1),
            "task {}: one expert segment per component on the path",
            info.name
        );
        // Every op is in exactly one dense segment or is glue.
        let mut seen = vec![0u32; info.rec.program_len as usize];
        for s in &plan.segments {
            for &i in &s.ops {
                seen[i as usize] += 1;
            }
        }
        for st in &plan.steps {
            if let Step::Route(i) | Step::Moe(i) = *st {
                seen[i as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "task {}: {seen:?}", info.name);
        // Ports: trunk x [L, F] -> u [L, D]; router u -> logits [1, N];
        // head y.<m> [1, D] per modality -> logits [1, outputs].
        for s in &plan.segments {
            match s.kind {
                SegmentKind::Trunk { modality } => {
                    let (_, l, f) = model.modality(modality).unwrap();
                    assert_eq!(s.inputs.len(), 1);
                    assert!(matches!(s.inputs[0].source, Source::TaskInput(_)));
                    assert_eq!(s.inputs[0].shape, [l, f]);
                    assert_eq!(s.outputs.len(), 1);
                    assert_eq!(s.outputs[0].shape, [l, d]);
                }
                SegmentKind::Router { modality } => {
                    let (_, l, _) = model.modality(modality).unwrap();
                    assert_eq!(s.inputs[0].shape, [l, d]);
                    assert_eq!(s.outputs[0].shape, [1, ck.config.experts]);
                }
                SegmentKind::Head => {
                    assert_eq!(s.inputs.len(), mods.len());
                    for (p, &m) in s.inputs.iter().zip(&mods) {
                        assert_eq!(p.name, format!("y.{}", model.modality(m).unwrap().0));
                        assert_eq!(p.shape, [1, d]);
                    }
                    assert_eq!(s.outputs[0].shape, [1, info.outputs]);
                    assert_eq!(s.name, format!("head.{}", info.name));
                }
                SegmentKind::Expert { expert, .. } => {
                    assert!(union.contains(expert));
                    assert_eq!(s.inputs[0].shape, [1, 3 * d]);
                    assert_eq!(s.outputs[0].shape, [1, d]);
                }
            }
        }
    }
}

#[test]
fn export_writes_a_graph_per_segment_and_precision_and_a_manifest_naming_the_blobs() {
    let ck = checkpoint();
    for quant in [None, Some(WeightFormat::I4G32)] {
        let pkg = package(&ck, quant, true);
        let model = Model::from_bytes(pkg.as_slice()).unwrap();
        for t in 0..model.task_count() {
            let plan = SegmentPlan::new(&model, t).unwrap();
            let graphs = export_task(&model, &plan, &[Precision::F32, Precision::Int8]).unwrap();
            assert_eq!(graphs.len(), 2 * plan.segments.len());
            for g in &graphs {
                // ModelProto field 1 (ir_version) = 8 comes first.
                assert_eq!(&g.bytes[..2], &[0x08, 0x08], "{}", g.name);
                assert!(!g.tensors.is_empty(), "{} maps no package tensor", g.name);
            }
            let m = manifest(&model, &plan, &graphs, serde_json::json!({"base": "mem"})).unwrap();
            assert_eq!(m["opset"], 17);
            let mg = m["graphs"].as_array().unwrap();
            assert_eq!(mg.len(), plan.segments.len());
            for (g, s) in mg.iter().zip(&plan.segments) {
                assert_eq!(g["name"], s.name.as_str());
                assert_eq!(g["files"]["f32"], format!("{}.onnx", s.name));
                assert_eq!(g["files"]["int8"], format!("{}.int8.onnx", s.name));
                let blobs = g["blobs"].as_array().unwrap();
                assert_eq!(blobs.len(), s.blobs.len());
                assert!(!blobs.is_empty());
                for b in blobs {
                    let v = model.blob(b["index"].as_u64().unwrap() as u32).unwrap();
                    assert_eq!(b["checksum"], format!("{:#018x}", v.rec.checksum));
                    assert_eq!(b["len"], v.rec.len);
                }
                // Every tensor it maps lives in one of its blobs.
                for tn in g["tensors"].as_array().unwrap() {
                    let blob = tn["blob"].as_u64().unwrap();
                    assert!(s.blobs.contains(&(blob as u32)), "{}: {tn}", s.name);
                }
                if quant.is_some() && matches!(s.kind, SegmentKind::Expert { .. }) {
                    assert!(g["tensors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|tn| tn["format"] == WeightFormat::I4G32.name()));
                }
            }
        }
    }
}

#[test]
fn executor_refuses_bad_inputs_with_a_message() {
    let ck = checkpoint();
    let pkg = package(&ck, None, false);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let t = model.task_index("WDBC").unwrap();
    let mut ex = Executor::new(&model, t, CpuOnly, |_| Ok(None)).unwrap();
    let x = vec![0f32; 10];
    let mut out = vec![0f32; 2];
    let e = ex.run(&[&x, &x], &mut out).unwrap_err().to_string();
    assert!(e.contains("2 inputs given, the task takes 3"), "{e}");
    let short = vec![0f32; 9];
    let e = ex.run(&[&x, &short, &x], &mut out).unwrap_err().to_string();
    assert!(e.contains("input 1 (cell_se) has 9 values"), "{e}");
    let mut out3 = vec![0f32; 3];
    let e = ex.run(&[&x, &x, &x], &mut out3).unwrap_err().to_string();
    assert!(e.contains("2 outputs"), "{e}");
    assert!(ex.run(&[&x, &x, &x], &mut out).is_ok());
}

/// A delegate whose hardware is missing.
#[derive(Clone)]
struct NoDriver;

impl Delegate for NoDriver {
    type Handle = ();
    fn name(&self) -> &str {
        "npu"
    }
    fn is_available(&self) -> Result<(), String> {
        Err("no NPU driver on this machine".into())
    }
    fn compile(&mut self, _: &Segment, _: &[u8]) -> taskpath_npu::Result<Option<()>> {
        panic!("an unavailable delegate is never asked to compile")
    }
    fn execute(
        &mut self,
        _: &mut (),
        _: &[&[f32]],
        _: &mut [&mut [f32]],
    ) -> taskpath_npu::Result<()> {
        panic!("an unavailable delegate is never asked to execute")
    }
}

#[test]
fn an_unavailable_delegate_gets_nothing_and_its_reason_is_kept() {
    let ck = checkpoint();
    let pkg = package(&ck, None, false);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let t = model.task_index("DIAB").unwrap();
    let mut ex = Executor::new(&model, t, NoDriver, |_| Ok(Some(vec![1, 2, 3]))).unwrap();
    assert_eq!(
        ex.unavailable_reason(),
        Some("no NPU driver on this machine")
    );
    assert!(ex.delegated_segments().is_empty());
    let ds = test_set("DIAB");
    let want = session_outputs(&model, t, &ds);
    let x = &ds.samples[0];
    let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
    let mut out = vec![0f32; 2];
    let st = ex.run(&refs, &mut out).unwrap();
    assert_eq!(st.delegated, 0);
    assert_eq!(out, want[0]);
}

#[test]
fn int8_weights_are_symmetric_per_row() {
    // Row 0: max 1.0 -> scale 1/127; 0.5 * 127 = 63.5 rounds half to even.
    // Row 1: all zero -> scale 0, zeros. Row 2: max 254 -> scale 2.
    let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 254.0, -3.0, 1.0];
    let (q, s) = quantize_rows(3, 3, &w);
    assert_eq!(q, [64, -127, 32, 0, 0, 0, 127, -2, 0]);
    assert_eq!(s, [1.0 / 127.0, 0.0, 2.0]);
}

/// The exporter's int8 integers and scales are the i8row package format's,
/// bit for bit: one quantizer (`taskpath_format::weight::i8_row`).
#[test]
fn int8_export_quantizer_is_the_packages() {
    use taskpath_runtime::format::weight::{dequantize, quantize, I8_BLOCK, ROW_TILE_8};
    use taskpath_runtime::WeightFormat;
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
    };
    for (rows, cols) in [(1, 1), (3, 5), (8, 32), (13, 77), (16, 128)] {
        let mut w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        // Ties at exactly .5 after scaling, and an all-zero row.
        w[0] = 1.0;
        if cols > 1 {
            w[1] = 0.5;
        }
        if rows > 2 {
            w[2 * cols..3 * cols].fill(0.0);
        }
        let f = WeightFormat::I8Row;
        let mut packed = vec![0u8; f.packed_bytes(rows, cols)];
        quantize(f, rows, cols, &w, &mut packed).unwrap();
        let (q, s) = quantize_rows(rows, cols, &w);
        let (tb, k) = (f.tile_bytes(cols), f.padded_cols(cols));
        assert_eq!(k % I8_BLOCK, 0);
        for r in 0..rows {
            let tile = &packed[(r / ROW_TILE_8) * tb..][..tb];
            let i = r % ROW_TILE_8;
            let scale = f32::from_le_bytes(tile[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(
                scale.to_bits(),
                s[r].to_bits(),
                "{rows}x{cols} row {r} scale"
            );
            for c in 0..cols {
                let pq = tile[4 * ROW_TILE_8 + i * k + c] as i8;
                assert_eq!(pq, q[r * cols + c], "{rows}x{cols} [{r},{c}]");
            }
        }
        // And dequantizing either gives the same values.
        let mut deq = vec![0f32; rows * cols];
        dequantize(f, rows, cols, &packed, &mut deq).unwrap();
        for (i, v) in deq.iter().enumerate() {
            let want = s[i / cols] * f32::from(q[i]);
            assert_eq!(v.to_bits(), want.to_bits());
        }
    }
}

#[test]
fn rel_error_is_relative_to_the_reference_scale() {
    assert_eq!(rel_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    assert!((rel_error(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-6);
    assert_eq!(rel_error(&[0.0], &[0.0]), 0.0);
    assert_eq!(rel_error(&[1e-9], &[0.0]), f32::INFINITY);
    assert_eq!(rel_error(&[f32::NAN], &[1.0]), f32::INFINITY);
    assert_eq!(rel_error(&[1.0], &[1.0, 2.0]), f32::INFINITY);
}

/// An available delegate that takes every graph it is offered and "runs"
/// it by refusing nothing but computing nothing either: it declines at
/// compile time, so the backend runs everything on the CPU primitives.
#[derive(Clone)]
struct Declines(std::rc::Rc<std::cell::Cell<usize>>);

impl Delegate for Declines {
    type Handle = ();
    fn name(&self) -> &str {
        "declines"
    }
    fn is_available(&self) -> Result<(), String> {
        Ok(())
    }
    fn compile(&mut self, seg: &Segment, payload: &[u8]) -> taskpath_npu::Result<Option<()>> {
        // The payload is the segment's exported ONNX graph.
        assert!(!payload.is_empty(), "{}: empty payload", seg.name);
        self.0.set(self.0.get() + 1);
        Ok(None)
    }
    fn execute(
        &mut self,
        _: &mut (),
        _: &[&[f32]],
        _: &mut [&mut [f32]],
    ) -> taskpath_npu::Result<()> {
        panic!("nothing was compiled")
    }
}

/// The NPU is a runtime `Backend`: callers use the four verbs; an
/// unavailable delegate is refused with its reason, an available one is
/// offered every segment's exported graph, and what it declines runs on the
/// CPU with the session's exact outputs.
#[test]
fn the_npu_backend_runs_through_the_runtime_backend_trait() {
    use taskpath_npu::NpuBackend;
    use taskpath_runtime::Backend;
    let ck = checkpoint();
    let pkg = package(&ck, None, false);
    let model = Model::from_bytes(pkg.as_slice()).unwrap();
    let t = model.task_index("WDBC").unwrap();
    let info = model.task(t).unwrap();
    let e = NpuBackend::new(NoDriver, Precision::F32)
        .is_available()
        .unwrap_err();
    assert!(e.to_string().contains("no NPU driver"), "{e}");
    let offered = std::rc::Rc::new(std::cell::Cell::new(0));
    let npu = NpuBackend::new(Declines(offered.clone()), Precision::Int8);
    npu.is_available().unwrap();
    let mut arena = vec![0u8; info.arena_bytes];
    let mut h = npu.init(&model, t, &mut arena).unwrap();
    let plan = SegmentPlan::new(&model, t).unwrap();
    assert_eq!(offered.get(), plan.segments.len());
    let ds = test_set("WDBC");
    let want = session_outputs(&model, t, &ds);
    for (x, w) in ds.samples.iter().zip(&want).take(8) {
        let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; info.outputs];
        npu.execute(&mut h, &refs, &mut out).unwrap();
        assert_eq!(&out, w);
    }
}

/// A minimal protobuf reader for the whole-graph test: the fields of one
/// message as `(field, wire value)`, length-delimited ones as bytes.
fn pb_fields(mut b: &[u8]) -> Vec<(u32, PbVal<'_>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for s in 0.. {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << (7 * s);
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let v = match wire {
            0 => PbVal::Int(varint(&mut b)),
            2 => {
                let n = varint(&mut b) as usize;
                let (x, rest) = b.split_at(n);
                b = rest;
                PbVal::Bytes(x)
            }
            5 => {
                b = &b[4..];
                PbVal::Int(0)
            }
            1 => {
                b = &b[8..];
                PbVal::Int(0)
            }
            w => panic!("wire type {w}"),
        };
        out.push((field, v));
    }
    out
}

#[derive(Clone, Copy)]
enum PbVal<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn pb_msgs(b: &[u8], field: u32) -> Vec<&[u8]> {
    pb_fields(b)
        .into_iter()
        .filter_map(|(f, v)| match v {
            PbVal::Bytes(x) if f == field => Some(x),
            _ => None,
        })
        .collect()
}

fn pb_str(b: &[u8], field: u32) -> String {
    pb_msgs(b, field)
        .first()
        .map(|x| String::from_utf8(x.to_vec()).unwrap())
        .unwrap_or_default()
}

/// Name and static dims of a `ValueInfoProto`.
fn pb_value_info(v: &[u8]) -> (String, Vec<u64>) {
    let ty = pb_msgs(v, 2)[0];
    let tt = pb_msgs(ty, 1)[0];
    let shape = pb_msgs(tt, 2)[0];
    let dims = pb_msgs(shape, 1)
        .into_iter()
        .map(|d| match pb_fields(d)[0].1 {
            PbVal::Int(x) => x,
            PbVal::Bytes(_) => panic!("symbolic dim"),
        })
        .collect();
    (pb_str(v, 1), dims)
}

/// `export-onnx --whole` for every task of the bundled model (f32 and i4g32
/// experts): the graph reads back with the task's inputs (one per modality,
/// `[tokens, features]`) and one output `logits` `[1, outputs]`, every node
/// input is defined before it is used, routing is TopK + ScatterElements and
/// there is no control flow; every path expert is computed. The values are
/// checked by onnxruntime (scripts/onnx-check.sh --whole).
#[test]
fn whole_task_graphs_have_the_task_interface_and_no_control_flow() {
    let ck = checkpoint();
    for quant in [None, Some(WeightFormat::I4G32)] {
        let pkg = package(&ck, quant, false);
        let model = Model::from_bytes(pkg.as_slice()).unwrap();
        for t in 0..model.task_count() {
            let plan = SegmentPlan::new(&model, t).unwrap();
            let info = model.task(t).unwrap();
            let g = taskpath_npu::whole_graph(&model, &plan, Precision::F32).unwrap();
            assert_eq!(g.file_name(), format!("{}.whole.onnx", info.name));
            let graph = pb_msgs(&g.bytes, 7)[0];
            let inputs: Vec<_> = pb_msgs(graph, 11).into_iter().map(pb_value_info).collect();
            let want: Vec<_> = info
                .modalities()
                .map(|m| {
                    let (n, l, f) = model.modality(m).unwrap();
                    (n.to_string(), vec![l as u64, f as u64])
                })
                .collect();
            assert_eq!(inputs, want, "{}", info.name);
            let outputs: Vec<_> = pb_msgs(graph, 12).into_iter().map(pb_value_info).collect();
            assert_eq!(
                outputs,
                vec![("logits".to_string(), vec![1, info.outputs as u64])]
            );
            let mut defined: std::collections::HashSet<String> =
                inputs.into_iter().map(|(n, _)| n).collect();
            defined.extend(pb_msgs(graph, 5).into_iter().map(|t| pb_str(t, 8)));
            let mut ops = std::collections::BTreeMap::<String, usize>::new();
            for n in pb_msgs(graph, 1) {
                for i in pb_msgs(n, 1) {
                    let i = String::from_utf8(i.to_vec()).unwrap();
                    assert!(
                        defined.contains(&i),
                        "{}: {i} used before it is defined",
                        info.name
                    );
                }
                defined.extend(
                    pb_msgs(n, 2)
                        .into_iter()
                        .map(|o| String::from_utf8(o.to_vec()).unwrap()),
                );
                *ops.entry(pb_str(n, 4)).or_default() += 1;
            }
            assert!(defined.contains("logits"));
            for cf in ["If", "Loop", "Scan", "Where", "NonZero"] {
                assert!(!ops.contains_key(cf), "{}: {cf} in the graph", info.name);
            }
            let routes = plan
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Route(_)))
                .count();
            assert_eq!(ops.get("TopK"), Some(&routes), "{}", info.name);
            assert_eq!(ops.get("ScatterElements"), Some(&routes), "{}", info.name);
            // Every expert of each modality's path, every component: three
            // Gemms (conv, fc1, fc2) per component of a dense expert.
            let path_components: usize = plan
                .ops
                .iter()
                .map(|o| match o.step {
                    taskpath_runtime::plan::Step::Moe {
                        mask, components, ..
                    } => (0..64).filter(|&j| mask.contains(j)).count() * components,
                    _ => 0,
                })
                .sum();
            assert!(path_components > 0);
            assert_eq!(
                ops.get("LayerNormalization").copied().unwrap_or(0)
                    - plan
                        .ops
                        .iter()
                        .filter(|o| matches!(o.op, taskpath_format::Op::LayerNorm { .. }))
                        .count(),
                path_components,
                "{}: one expert LayerNorm per path component",
                info.name
            );
        }
    }
}
