//! `taskpath export-onnx`: a task's dense parts and path experts as
//! standalone static-shape ONNX graphs plus a manifest (docs/NPU.md), or with
//! `--whole` the task as one dense graph (`<TASK>.whole.onnx`).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use taskpath_checkpoint::{write_atomic, Dataset};
use taskpath_npu::{export_task, manifest, whole_graph, CpuOnly, Executor, Precision, SegmentPlan};

use crate::util::{config_of, hex, open_model, outln, task_by_name};
use crate::DeltaArgs;

/// Arguments of `export-onnx`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Task whose path to export.
    #[arg(long)]
    pub task: String,
    /// Output directory (created; existing graph files are replaced).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Also write int8 weight-QDQ graphs (`<name>.int8.onnx`) beside the f32 ones.
    #[arg(long, conflicts_with = "whole")]
    pub int8: bool,
    /// Write the task as ONE dense graph instead (`<TASK>.whole.onnx`, f32):
    /// task inputs in, task outputs out, every expert of the path computed
    /// and weighted by the scattered top-k gates (no manifest, no segments).
    #[arg(long)]
    pub whole: bool,
    /// Dataset directory: run the task's test set (`{TASK}.test.json`) on the
    /// CPU and write each graph's inputs and the runtime's outputs as .npy
    /// under DIR/reference/ (for scripts/onnx-check.sh).
    #[arg(long, value_name = "DATA_DIR", hide = true)]
    pub dump_reference: Option<PathBuf>,
    /// Samples of the test set to dump (with --dump-reference).
    #[arg(long, default_value_t = 8, hide = true, value_parser = crate::util::within(0..=10_000usize))]
    pub dump_samples: usize,
}

/// Runs `export-onnx`.
pub fn main(a: &Args) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let task = task_by_name(&model, &a.task)?;
    let plan = SegmentPlan::new(&model, task.index)
        .with_context(|| format!("splitting task {} into segments", task.name))?;
    if a.whole {
        return whole(a, &model, &plan);
    }
    let precisions: &[Precision] = if a.int8 {
        &[Precision::F32, Precision::Int8]
    } else {
        &[Precision::F32]
    };
    let graphs = export_task(&model, &plan, precisions)
        .with_context(|| format!("exporting task {}", task.name))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut package = json!({
        "base": a.file.display().to_string(),
        "id": hex(model.base().id()),
    });
    let deltas: Vec<_> = a
        .deltas
        .deltas
        .iter()
        .zip(model.parts().skip(1))
        .map(|(p, part)| json!({"path": p.display().to_string(), "id": hex(part.id())}))
        .collect();
    package["deltas"] = json!(deltas);
    let mut bytes = 0;
    for g in &graphs {
        write_atomic(&a.out.join(g.file_name()), &g.bytes)?;
        bytes += g.bytes.len();
    }
    let m = manifest(&model, &plan, &graphs, package)?;
    write_atomic(
        &a.out.join("manifest.json"),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    outln!(
        "{}: {} graphs ({} segments x {}), {} bytes, opset {} -> {}",
        task.name,
        graphs.len(),
        plan.segments.len(),
        precisions
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" + "),
        bytes,
        taskpath_npu::OPSET,
        a.out.display()
    );
    if let Some(data) = &a.dump_reference {
        let n = dump_reference(&model, &plan, data, a.dump_samples, &a.out)?;
        outln!(
            "reference values of {n} graph runs -> {}",
            a.out.join("reference").display()
        );
    }
    Ok(())
}

/// `export-onnx --whole`: the task's dense graph, and with
/// `--dump-reference` the runtime's outputs on test samples as
/// `reference/<TASK>.whole/<k>/{in.<modality>,out.logits}.npy`.
fn whole(a: &Args, model: &taskpath_runtime::Model<'_>, plan: &SegmentPlan) -> Result<()> {
    let g = whole_graph(model, plan, Precision::F32)
        .with_context(|| format!("exporting task {} as one graph", plan.task_name))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_atomic(&a.out.join(g.file_name()), &g.bytes)?;
    outln!(
        "{}: 1 whole graph, {} bytes, opset {} -> {}",
        plan.task_name,
        g.bytes.len(),
        taskpath_npu::OPSET,
        a.out.join(g.file_name()).display()
    );
    let Some(data) = &a.dump_reference else {
        return Ok(());
    };
    let ds = test_set(model, plan, data)?;
    let mut ex = Executor::new(model, plan.task, CpuOnly, |_| Ok(None))?;
    let info = model.task(plan.task)?;
    let names: Vec<(String, [usize; 2])> = info
        .modalities()
        .map(|m| {
            let (n, l, f) = model.modality(m).unwrap_or(("?", 0, 0));
            (n.to_string(), [l, f])
        })
        .collect();
    let dir = a.out.join("reference").join(&g.name);
    let mut n = 0;
    for (k, x) in ds.samples.iter().take(a.dump_samples).enumerate() {
        let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
        let mut logits = vec![0f32; info.outputs];
        ex.run(&refs, &mut logits)?;
        let d = dir.join(k.to_string());
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        for ((name, shape), v) in names.iter().zip(&x.inputs) {
            write_atomic(&d.join(format!("in.{name}.npy")), &npy(shape, v))?;
        }
        write_atomic(&d.join("out.logits.npy"), &npy(&[1, info.outputs], &logits))?;
        n += 1;
    }
    outln!("reference values of {n} samples -> {}", dir.display());
    Ok(())
}

/// The task's bundled test set `DATA_DIR/{TASK}.test.json`, checked against the model.
fn test_set(
    model: &taskpath_runtime::Model<'_>,
    plan: &SegmentPlan,
    data: &Path,
) -> Result<Dataset> {
    let path = data.join(format!("{}.test.json", plan.task_name));
    let ds = Dataset::load(&path).with_context(|| format!("reading {}", path.display()))?;
    ds.validate_against(&config_of(model)?)
        .with_context(|| format!("checking {} against the model", path.display()))?;
    ensure!(
        ds.task == plan.task_name,
        "{} holds task {}, not {}",
        path.display(),
        ds.task,
        plan.task_name
    );
    Ok(ds)
}

/// Runs up to `samples` test samples through the CPU executor and writes,
/// for each graph, up to `samples` executions as
/// `reference/<graph>/<k>/{in,out}.<port>.npy`.
fn dump_reference(
    model: &taskpath_runtime::Model<'_>,
    plan: &SegmentPlan,
    data: &Path,
    samples: usize,
    out: &Path,
) -> Result<usize> {
    let ds = test_set(model, plan, data)?;
    let mut ex = Executor::new(model, plan.task, CpuOnly, |_| Ok(None))?;
    let outputs = model.task(plan.task)?.outputs;
    let mut count = vec![0usize; plan.segments.len()];
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for x in ds.samples.iter().take(samples) {
        let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
        let mut logits = vec![0f32; outputs];
        ex.run_observed(&refs, &mut logits, &mut |seg, ins, outs| {
            let si = plan
                .segments
                .iter()
                .position(|s| s.name == seg.name)
                .unwrap_or(0);
            if count[si] >= samples {
                return;
            }
            let dir = out
                .join("reference")
                .join(&seg.name)
                .join(count[si].to_string());
            for (p, v) in seg.inputs.iter().zip(ins) {
                files.push((dir.join(format!("in.{}.npy", p.name)), npy(&p.shape, v)));
            }
            for (p, v) in seg.outputs.iter().zip(outs) {
                files.push((dir.join(format!("out.{}.npy", p.name)), npy(&p.shape, v)));
            }
            count[si] += 1;
        })?;
    }
    for (p, b) in &files {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(p, b)?;
    }
    Ok(count.iter().sum())
}

/// A version 1.0 `.npy` file of little-endian float32 in C order.
fn npy(shape: &[usize; 2], data: &[f32]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        shape[0], shape[1]
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_through_the_reader() {
        let v = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.0];
        let a = crate::npy::parse(&npy(&[2, 3], &v)).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, v);
    }
}
