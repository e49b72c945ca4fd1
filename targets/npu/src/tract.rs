//! The reference delegate: runs exported ONNX graphs with tract-onnx.

use tract_onnx::prelude::*;

use crate::delegate::Delegate;
use crate::error::{Error, Result};
use crate::plan::Segment;

type Runnable = std::sync::Arc<TypedRunnableModel>;

/// A compiled segment: tract's optimized plan and the port shapes.
#[derive(Debug)]
pub struct TractHandle {
    name: String,
    model: Runnable,
    inputs: Vec<[usize; 2]>,
    outputs: Vec<[usize; 2]>,
}

/// Runs every segment it is given an ONNX payload for, on the CPU, with tract.
#[derive(Debug, Default)]
pub struct TractDelegate {
    /// Segments compiled so far.
    pub compiled: usize,
}

impl TractDelegate {
    /// A new delegate.
    pub fn new() -> Self {
        Self::default()
    }

    fn err(segment: &str, e: impl std::fmt::Display) -> Error {
        Error::Delegate {
            delegate: "tract".into(),
            segment: segment.into(),
            why: format!("{e:#}"),
        }
    }
}

/// Loads ONNX bytes into a runnable tract model with the graph's own static shapes.
pub fn load(name: &str, onnx: &[u8]) -> Result<Runnable> {
    let mut r = std::io::Cursor::new(onnx);
    tract_onnx::onnx()
        .model_for_read(&mut r)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| TractDelegate::err(name, e))
}

/// Runs a loaded graph on `[rows, cols]` f32 inputs; returns its outputs flattened.
pub fn run(name: &str, model: &Runnable, inputs: &[(&[f32], [usize; 2])]) -> Result<Vec<Vec<f32>>> {
    let ins: TVec<TValue> = inputs
        .iter()
        .map(|(v, s)| {
            tract_ndarray::Array2::from_shape_vec((s[0], s[1]), v.to_vec())
                .map(|a| Tensor::from(a).into())
                .map_err(|e| TractDelegate::err(name, e))
        })
        .collect::<Result<_>>()?;
    let outs = model.run(ins).map_err(|e| TractDelegate::err(name, e))?;
    outs.iter()
        .map(|t| {
            t.try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
                .map_err(|e| TractDelegate::err(name, e))
        })
        .collect()
}

impl Delegate for TractDelegate {
    type Handle = TractHandle;

    fn name(&self) -> &str {
        "tract"
    }

    fn is_available(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    fn compile(&mut self, segment: &Segment, payload: &[u8]) -> Result<Option<TractHandle>> {
        let model = load(&segment.name, payload)?;
        self.compiled += 1;
        Ok(Some(TractHandle {
            name: segment.name.clone(),
            model,
            inputs: segment.inputs.iter().map(|p| p.shape).collect(),
            outputs: segment.outputs.iter().map(|p| p.shape).collect(),
        }))
    }

    fn execute(
        &mut self,
        h: &mut TractHandle,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()> {
        if inputs.len() != h.inputs.len() || outputs.len() != h.outputs.len() {
            return Err(Self::err(&h.name, "wrong number of inputs or outputs"));
        }
        let ins: Vec<(&[f32], [usize; 2])> = inputs
            .iter()
            .copied()
            .zip(h.inputs.iter().copied())
            .collect();
        let outs = run(&h.name, &h.model, &ins)?;
        for (dst, src) in outputs.iter_mut().zip(outs) {
            if dst.len() != src.len() {
                return Err(Self::err(
                    &h.name,
                    format!("output of {} values, expected {}", src.len(), dst.len()),
                ));
            }
            dst.copy_from_slice(&src);
        }
        Ok(())
    }
}
