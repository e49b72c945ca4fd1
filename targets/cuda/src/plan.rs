//! A task's op program decoded for the device: slot offsets in f32 elements
//! and weight tensors as (blob, byte offset) pairs. The program has already
//! been checked by a CPU `Session` at `init`, so decoding here only has to be
//! faithful to `runtime/core/src/session.rs`, not to re-prove the plan.

use taskpath_runtime::format::records::OpRec;
use taskpath_runtime::format::{Opcode, Package, NONE};
use taskpath_runtime::{Model, TaskInfo, WeightFormat};

use crate::error::{CudaError, Result};
use crate::geometry::supported;

/// A weight tensor as the device sees it: its blob and the byte offsets of
/// its data (`U` factor) and `V` factor inside the blob.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tensor {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub format: WeightFormat,
    pub blob: u32,
    pub off_a: usize,
    pub off_b: usize,
    pub bytes: usize,
}

fn program(why: &str) -> CudaError {
    CudaError::Runtime(taskpath_runtime::Error::InvalidProgram {
        op: 0,
        why: match why {
            "tensor" => "no such tensor",
            "blob" => "no such blob",
            "slot" => "slot table",
            "op" => "program range",
            _ => "modality",
        },
    })
}

/// Tensor `id` of `model`, with offsets relative to its blob's bytes.
pub(crate) fn tensor(model: &Model<'_>, id: u32) -> Result<Tensor> {
    let v = model.tensor(id).ok_or_else(|| program("tensor"))?;
    let blob = model.blob(v.blob).ok_or_else(|| program("blob"))?;
    let format = WeightFormat::from_u16(v.format)
        .filter(|&f| supported(f))
        .ok_or_else(|| {
            CudaError::UnsupportedFormat(format!(
                "weight format id {} has no CUDA kernel in this build",
                v.format
            ))
        })?;
    let base = blob.bytes.as_ptr() as usize;
    let off = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
    Ok(Tensor {
        rows: v.rows,
        cols: v.cols,
        rank: v.rank,
        format,
        blob: v.blob,
        off_a: off(v.raw_a),
        off_b: if v.raw_b.is_empty() { 0 } else { off(v.raw_b) },
        bytes: v.bytes(),
    })
}

/// One op, decoded. Slot fields are element offsets into the f32 arena.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Encode {
        input: usize,
        y: usize,
        l: usize,
        w: Tensor,
        b: Tensor,
        pos: Tensor,
    },
    LayerNorm {
        x: usize,
        y: usize,
        rows: usize,
        g: Tensor,
        b: Tensor,
        scale: f32,
    },
    Linear {
        x: usize,
        y: usize,
        rows: usize,
        w: Tensor,
        b: Option<Tensor>,
    },
    Attention {
        q: usize,
        k: usize,
        v: usize,
        out: usize,
        l: usize,
        heads: usize,
    },
    AttnPool {
        u: usize,
        l: usize,
        query: Tensor,
        out: usize,
    },
    Gate {
        p: usize,
        gate: Tensor,
        logits: usize,
        acc: bool,
        scale: f32,
    },
    Route {
        logits: usize,
        mask: u64,
        route: usize,
    },
    Moe {
        u: usize,
        l: usize,
        route: usize,
        stage: usize,
        token: usize,
        out: usize,
    },
    Copy {
        src: usize,
        dst: usize,
        len: usize,
    },
}

/// Decodes the op program of `task`.
pub(crate) fn decode(model: &Model<'_>, task: &TaskInfo<'_>) -> Result<Vec<Op>> {
    let part: Package<'_> = model
        .part(task.part)
        .ok_or(CudaError::Runtime(taskpath_runtime::Error::UnknownTask))?;
    let slot = |id: u32| -> Result<usize> {
        if id == NONE {
            return Ok(0);
        }
        part.slots()
            .get((task.rec.slot_start + id) as usize)
            .map(|s| s.offset as usize)
            .ok_or_else(|| program("slot"))
    };
    let mut ops = Vec::with_capacity(task.rec.program_len as usize);
    for i in 0..task.rec.program_len {
        let o: OpRec = part
            .program()
            .get((task.rec.program_start + i) as usize)
            .ok_or_else(|| program("op"))?;
        let opcode = Opcode::from_u16(o.opcode).ok_or_else(|| program("op"))?;
        let op = match opcode {
            Opcode::Encode => {
                let input = o.a0 as usize;
                let m = task
                    .modalities()
                    .nth(input)
                    .ok_or_else(|| program("modality"))?;
                let (_, l, _) = model.modality(m).ok_or_else(|| program("modality"))?;
                Op::Encode {
                    input,
                    y: slot(o.a1)?,
                    l,
                    w: tensor(model, o.a2)?,
                    b: tensor(model, o.a3)?,
                    pos: tensor(model, o.a4)?,
                }
            }
            Opcode::LayerNorm => Op::LayerNorm {
                x: slot(o.a0)?,
                y: slot(o.a1)?,
                rows: o.a5 as usize,
                g: tensor(model, o.a2)?,
                b: tensor(model, o.a3)?,
                scale: f32::from_bits(o.a4),
            },
            Opcode::Linear => Op::Linear {
                x: slot(o.a0)?,
                y: slot(o.a1)?,
                rows: o.a4 as usize,
                w: tensor(model, o.a2)?,
                b: if o.a3 == NONE {
                    None
                } else {
                    Some(tensor(model, o.a3)?)
                },
            },
            Opcode::Attention => Op::Attention {
                q: slot(o.a0)?,
                k: slot(o.a1)?,
                v: slot(o.a2)?,
                out: slot(o.a3)?,
                l: o.a4 as usize,
                heads: o.a5 as usize,
            },
            Opcode::AttnPool => Op::AttnPool {
                u: slot(o.a0)?,
                l: o.a1 as usize,
                query: tensor(model, o.a2)?,
                out: slot(o.a3)?,
            },
            Opcode::Gate => Op::Gate {
                p: slot(o.a0)?,
                gate: tensor(model, o.a1)?,
                logits: slot(o.a2)?,
                acc: o.a3 != 0,
                scale: f32::from_bits(o.a4),
            },
            Opcode::Route => Op::Route {
                logits: slot(o.a0)?,
                mask: model
                    .path_mask(task, o.a1 as usize)
                    .ok_or_else(|| program("modality"))?,
                route: slot(o.a2)?,
            },
            Opcode::Moe => Op::Moe {
                u: slot(o.a0)?,
                l: o.a1 as usize,
                route: slot(o.a2)?,
                stage: o.a3 as usize,
                token: o.a4 as usize,
                out: slot(o.a5)?,
            },
            Opcode::Copy => Op::Copy {
                src: slot(o.a0)? + o.a1 as usize,
                dst: slot(o.a2)? + o.a3 as usize,
                len: o.a4 as usize,
            },
        };
        ops.push(op);
    }
    Ok(ops)
}

/// The eight tensors of one expert component.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Component {
    pub blob: u32,
    pub conv_w: Tensor,
    pub conv_b: Tensor,
    pub ln_g: Tensor,
    pub ln_b: Tensor,
    pub fc1_w: Tensor,
    pub fc1_b: Tensor,
    pub fc2_w: Tensor,
    pub fc2_b: Tensor,
}

impl Component {
    pub fn tensors(&self) -> [&Tensor; 8] {
        [
            &self.conv_w,
            &self.conv_b,
            &self.ln_g,
            &self.ln_b,
            &self.fc1_w,
            &self.fc1_b,
            &self.fc2_w,
            &self.fc2_b,
        ]
    }
}

/// Component `c` of expert `j`.
pub(crate) fn component(model: &Model<'_>, j: usize, c: usize) -> Result<Component> {
    let e = model.expert(j, c).ok_or(CudaError::Runtime(
        taskpath_runtime::Error::InvalidProgram {
            op: 0,
            why: "missing expert component",
        },
    ))?;
    Ok(Component {
        blob: e.blob,
        conv_w: tensor(model, e.conv_w)?,
        conv_b: tensor(model, e.conv_b)?,
        ln_g: tensor(model, e.ln_g)?,
        ln_b: tensor(model, e.ln_b)?,
        fc1_w: tensor(model, e.fc1_w)?,
        fc1_b: tensor(model, e.fc1_b)?,
        fc2_w: tensor(model, e.fc2_w)?,
        fc2_b: tensor(model, e.fc2_b)?,
    })
}
