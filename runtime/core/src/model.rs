//! A model: a base package plus any chain of delta packs, validated once.

use taskpath_format::records::{
    blob_kind, layout, BlobRec, ExpertRec, HParams, TaskRec, TensorRec,
};
use taskpath_format::Package;

use crate::error::{Error, Result};

/// Most packages (base + deltas) in one model.
pub const MAX_CHAIN: usize = 8;

/// A weight tensor borrowed from the package bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Logical rows (output dimension).
    pub rows: usize,
    /// Logical columns (input dimension).
    pub cols: usize,
    /// Weight format id (`taskpath_cpu::quant::WeightFormat`).
    pub format: u16,
    /// f32 tensors: dense data, or the `U [rows, rank]` factor. Empty otherwise.
    pub a: &'a [f32],
    /// f32 tensors: empty for dense; the `V [rank, cols]` factor for low-rank.
    pub b: &'a [f32],
    /// Raw bytes of the dense data or `U` factor (every format).
    pub raw_a: &'a [u8],
    /// Raw bytes of the `V` factor (low-rank), else empty.
    pub raw_b: &'a [u8],
    /// Rank (0 for dense).
    pub rank: usize,
    /// Global blob index.
    pub blob: u32,
}

/// The eight tensors of one expert component (Eq. 3-4 of DESIGN.md), borrowed
/// from a copy of its blob.
#[derive(Clone, Copy, Debug)]
pub struct ExpertTensors<'a> {
    /// Token-mixing convolution `[d, 3d]`.
    pub conv_w: TensorView<'a>,
    /// Convolution bias `[d]`.
    pub conv_b: TensorView<'a>,
    /// LayerNorm gain `[d]`.
    pub ln_g: TensorView<'a>,
    /// LayerNorm bias `[d]`.
    pub ln_b: TensorView<'a>,
    /// First FFN matrix `[h, d]`.
    pub fc1_w: TensorView<'a>,
    /// First FFN bias `[h]`.
    pub fc1_b: TensorView<'a>,
    /// Second FFN matrix `[d, h]`.
    pub fc2_w: TensorView<'a>,
    /// Second FFN bias `[d]`.
    pub fc2_b: TensorView<'a>,
}

impl<'a> ExpertTensors<'a> {
    /// All eight, in record order.
    pub fn all(&self) -> [&TensorView<'a>; 8] {
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

impl TensorView<'_> {
    /// Bytes of weight data this tensor reads.
    pub fn bytes(&self) -> usize {
        self.raw_a.len() + self.raw_b.len()
    }
    /// Whether the tensor is stored as f32.
    pub fn is_f32(&self) -> bool {
        self.format == taskpath_format::records::format::F32
    }
    /// Whether the tensor is a low-rank pair.
    pub fn is_low_rank(&self) -> bool {
        self.rank > 0
    }
}

/// A task as the model describes it.
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo<'a> {
    /// Global task index.
    pub index: usize,
    /// Name.
    pub name: &'a str,
    /// 0-based stage.
    pub stage: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// Bit m set for each modality the task uses.
    pub modality_mask: u32,
    /// Arena bytes its CPU plan needs.
    pub arena_bytes: usize,
    /// Which package of the chain defines it.
    pub part: usize,
    /// The raw record.
    pub rec: TaskRec,
}

impl TaskInfo<'_> {
    /// The task's modality indices in model (fusion) order.
    pub fn modalities(&self) -> impl Iterator<Item = usize> + '_ {
        let m = self.modality_mask;
        (0..32).filter(move |i| m & (1 << i) != 0)
    }
}

/// A blob of the model.
#[derive(Clone, Copy, Debug)]
pub struct BlobView<'a> {
    /// Global index.
    pub index: u32,
    /// Package of the chain holding it.
    pub part: usize,
    /// Its record.
    pub rec: BlobRec,
    /// Its bytes (in the mmap / flash; not copied).
    pub bytes: &'a [u8],
}

/// A validated model over borrowed package bytes (flash, a static array or an
/// mmap). Cheap to copy; holds no allocation.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    parts: [Option<Package<'a>>; MAX_CHAIN],
    len: usize,
}

fn same_arch(a: &HParams, b: &HParams) -> bool {
    a.d_model == b.d_model
        && a.heads == b.heads
        && a.experts == b.experts
        && a.top_k == b.top_k
        && a.ffn_hidden == b.ffn_hidden
        && a.gating == b.gating
        && a.ln_eps.to_bits() == b.ln_eps.to_bits()
}

impl<'a> Model<'a> {
    /// Validates a base package (header, tables, metadata checksum).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_package(Package::parse(bytes)?)
    }

    /// A model over an already validated base package.
    pub fn from_package(p: Package<'a>) -> Result<Self> {
        if p.is_delta() {
            return Err(Error::DeltaMismatch {
                why: "a delta pack cannot be opened without its base",
            });
        }
        let mut parts = [None; MAX_CHAIN];
        parts[0] = Some(p);
        Ok(Self { parts, len: 1 })
    }

    /// Adds a delta pack to the chain; refuses one whose base is not the
    /// current last package or whose architecture or index bases disagree.
    pub fn with_delta(self, bytes: &'a [u8]) -> Result<Self> {
        self.with_delta_package(Package::parse(bytes)?)
    }

    /// [`Model::with_delta`] over an already validated package.
    pub fn with_delta_package(mut self, d: Package<'a>) -> Result<Self> {
        let mismatch = |why| Err(Error::DeltaMismatch { why });
        if !d.is_delta() {
            return mismatch("not a delta pack");
        }
        if self.len == MAX_CHAIN {
            return Err(Error::ChainTooLong);
        }
        let last = self.last();
        if d.header().base_id != last.id() {
            return mismatch("its base id is not the checksum of the package before it (wrong base or out of order)");
        }
        let (hd, hl) = (d.hparams(), last.hparams());
        if !same_arch(hd, hl) {
            return mismatch("architecture hyper-parameters differ");
        }
        if hd.stages <= hl.stages {
            return mismatch("a delta must add at least one stage");
        }
        // A stage may bring new modalities (new trunks), appended after the
        // chain's: the ones already there keep their index, shape and name.
        let prev = last.modalities();
        let dm = d.modalities();
        if dm.len() < prev.len()
            || prev.iter().zip(dm.iter()).any(|(a, b)| {
                a.tokens != b.tokens
                    || a.features != b.features
                    || last.str(a.name_off, a.name_len) != d.str(b.name_off, b.name_len)
            })
        {
            return mismatch("its modalities do not extend the chain's");
        }
        let count =
            |f: fn(&Package<'a>) -> usize| self.parts().map(|p| f(&p)).sum::<usize>() as u32;
        if hd.tensor_base != count(|p| p.tensors().len())
            || hd.blob_base != count(|p| p.blobs().len())
            || hd.task_base != count(|p| p.tasks().len())
            || hd.expert_base != count(|p| p.experts().len())
            || hd.router_base != count(|p| p.routers().len())
        {
            return mismatch("its index bases do not continue the chain");
        }
        self.parts[self.len] = Some(d);
        self.len += 1;
        Ok(self)
    }

    /// Packages of the chain, base first.
    pub fn parts(&self) -> impl Iterator<Item = Package<'a>> + '_ {
        self.parts[..self.len].iter().flatten().copied()
    }
    /// Package `i` of the chain.
    pub fn part(&self, i: usize) -> Option<Package<'a>> {
        self.parts.get(i).copied().flatten()
    }
    /// Number of packages in the chain.
    pub fn chain_len(&self) -> usize {
        self.len
    }
    /// The base package.
    pub fn base(&self) -> Package<'a> {
        // parts[0] is always set by construction.
        self.parts[0].unwrap_or_else(|| unreachable!())
    }
    fn last(&self) -> Package<'a> {
        self.parts[self.len - 1].unwrap_or_else(|| unreachable!())
    }
    /// Hyper-parameters (of the last package: `stages` grows along the chain).
    pub fn hparams(&self) -> HParams {
        *self.last().hparams()
    }

    /// Number of tasks across the chain.
    pub fn task_count(&self) -> usize {
        self.parts().map(|p| p.tasks().len()).sum()
    }
    /// Task by global index.
    pub fn task(&self, index: usize) -> Result<TaskInfo<'a>> {
        let mut rest = index;
        for (part, p) in self.parts().enumerate() {
            let tasks = p.tasks();
            if rest < tasks.len() {
                let rec = tasks.get(rest).ok_or(Error::UnknownTask)?;
                return Ok(TaskInfo {
                    index,
                    name: p.str(rec.name_off, rec.name_len),
                    stage: rec.stage as usize,
                    outputs: rec.outputs as usize,
                    modality_mask: rec.modality_mask,
                    arena_bytes: rec.arena_bytes as usize,
                    part,
                    rec,
                });
            }
            rest -= tasks.len();
        }
        Err(Error::UnknownTask)
    }
    /// Global index of the task named `name` (a later delta's task of the
    /// same name shadows nothing: names are unique along a chain).
    pub fn task_index(&self, name: &str) -> Result<usize> {
        (0..self.task_count())
            .find(|&i| self.task(i).is_ok_and(|t| t.name == name))
            .ok_or(Error::UnknownTask)
    }
    /// Name and `(tokens, features)` of modality `m`.
    pub fn modality(&self, m: usize) -> Option<(&'a str, usize, usize)> {
        let b = self.last();
        let r = b.modalities().get(m)?;
        Some((
            b.str(r.name_off, r.name_len),
            r.tokens as usize,
            r.features as usize,
        ))
    }
    /// Number of modalities.
    pub fn modality_count(&self) -> usize {
        self.last().modalities().len()
    }

    /// The expert mask of `(task, modality)`.
    pub fn path_mask(&self, task: &TaskInfo<'a>, modality: usize) -> Option<u64> {
        let p = self.part(task.part)?;
        (0..task.rec.path_len)
            .filter_map(|k| p.paths().get((task.rec.path_start + k) as usize))
            .find(|e| e.modality as usize == modality)
            .map(|e| e.mask)
    }

    /// Tensor by global index.
    pub fn tensor_rec(&self, global: u32) -> Option<(Package<'a>, TensorRec)> {
        self.parts()
            .find_map(|p| p.local_tensor(global).map(|t| (p, t)))
    }
    /// Tensor by global index, borrowed from the package bytes.
    pub fn tensor(&self, global: u32) -> Option<TensorView<'a>> {
        let (p, t) = self.tensor_rec(global)?;
        let local = t.blob.checked_sub(p.hparams().blob_base)?;
        Self::view(&t, p.blob_bytes(local as usize)?)
    }

    /// Tensor by global index, borrowed from `blob`: a RAM copy of its blob.
    pub fn tensor_in<'b>(&self, global: u32, blob: &'b [u8]) -> Option<TensorView<'b>> {
        let (_, t) = self.tensor_rec(global)?;
        Self::view(&t, blob)
    }

    /// The tensors of expert component `e`, borrowed from `blob` (its blob's
    /// bytes); `None` when one of them lies outside that blob.
    pub fn expert_tensors<'b>(&self, e: &ExpertRec, blob: &'b [u8]) -> Option<ExpertTensors<'b>> {
        let t = |id: u32| self.tensor_in(id, blob);
        Some(ExpertTensors {
            conv_w: t(e.conv_w)?,
            conv_b: t(e.conv_b)?,
            ln_g: t(e.ln_g)?,
            ln_b: t(e.ln_b)?,
            fc1_w: t(e.fc1_w)?,
            fc1_b: t(e.fc1_b)?,
            fc2_w: t(e.fc2_w)?,
            fc2_b: t(e.fc2_b)?,
        })
    }

    fn view<'b>(t: &TensorRec, blob: &'b [u8]) -> Option<TensorView<'b>> {
        let (raw_a, raw_b) = taskpath_format::tensor_raw(t, blob).ok()?;
        let (a, b) = if t.format == taskpath_format::records::format::F32 {
            taskpath_format::tensor_data(t, blob).ok()?
        } else {
            (&[][..], &[][..])
        };
        Some(TensorView {
            rows: t.rows as usize,
            cols: t.cols as usize,
            format: t.format,
            a,
            b,
            raw_a,
            raw_b,
            rank: if t.layout == layout::LOW_RANK {
                t.rank as usize
            } else {
                0
            },
            blob: t.blob,
        })
    }

    /// Number of blobs across the chain.
    pub fn blob_count(&self) -> usize {
        self.parts().map(|p| p.blobs().len()).sum()
    }
    /// Blob by global index.
    pub fn blob(&self, global: u32) -> Option<BlobView<'a>> {
        for (part, p) in self.parts().enumerate() {
            if let Some(local) = global.checked_sub(p.hparams().blob_base) {
                if let (Some(rec), Some(bytes)) =
                    (p.blobs().get(local as usize), p.blob_bytes(local as usize))
                {
                    return Some(BlobView {
                        index: global,
                        part,
                        rec,
                        bytes,
                    });
                }
            }
        }
        None
    }
    /// Checks the checksum of blob `global`.
    pub fn verify_blob(&self, global: u32) -> Result<()> {
        for p in self.parts() {
            if let Some(local) = global.checked_sub(p.hparams().blob_base) {
                if (local as usize) < p.blobs().len() {
                    return Ok(p.verify_blob(local as usize)?);
                }
            }
        }
        Err(Error::InvalidProgram {
            op: 0,
            why: "blob index out of range",
        })
    }
    /// Checks every blob checksum of every package.
    pub fn verify(&self) -> Result<()> {
        self.parts()
            .try_for_each(|p| p.verify_all().map_err(Error::from))
    }

    /// Component `c` of expert slot `j`. A scan of the expert tables: sessions
    /// look components up through an index built at creation instead.
    pub fn expert(&self, j: usize, c: usize) -> Option<ExpertRec> {
        self.expert_index(j, c).and_then(|i| self.expert_at(i))
    }

    /// Global position of component `c` of expert `j` in the chain's expert
    /// tables (base first), found by a scan; see [`Model::expert_at`].
    pub fn expert_index(&self, j: usize, c: usize) -> Option<usize> {
        let mut base = 0;
        for p in self.parts() {
            let t = p.experts();
            if let Some(k) = t
                .iter()
                .position(|e| usize::from(e.expert) == j && usize::from(e.component) == c)
            {
                return Some(base + k);
            }
            base += t.len();
        }
        None
    }

    /// Expert record `i` of the chain's expert tables (base first): constant
    /// work per package of the chain.
    pub fn expert_at(&self, i: usize) -> Option<ExpertRec> {
        let mut rest = i;
        for p in self.parts() {
            let t = p.experts();
            if rest < t.len() {
                return t.get(rest);
            }
            rest -= t.len();
        }
        None
    }

    /// Every expert component's blob, in global blob (file) order: the blobs
    /// a [`crate::ResidencyCache`] holds.
    pub fn expert_blobs(&self) -> impl Iterator<Item = BlobView<'a>> + '_ {
        (0..self.blob_count() as u32)
            .filter_map(|i| self.blob(i))
            .filter(|b| b.rec.kind == blob_kind::EXPERT)
    }

    /// Bytes of all expert blobs (the 100% residency budget).
    pub fn expert_bytes(&self) -> usize {
        self.expert_blobs().map(|b| b.bytes.len()).sum()
    }

    /// Whether blob `b` is on the path of `task`: the trunks and router heads
    /// `0..=stage` of its modalities, components `0..=stage` of the experts in
    /// its modalities' masks, and its head.
    pub fn on_path(&self, task: &TaskInfo<'a>, b: &BlobRec) -> bool {
        let mod_ok = |m: u16| usize::from(m) < 32 && task.modality_mask & (1 << m) != 0;
        match b.kind {
            blob_kind::TRUNK => mod_ok(b.modality),
            blob_kind::ROUTER => mod_ok(b.modality) && usize::from(b.component) <= task.stage,
            blob_kind::EXPERT => {
                let union = task
                    .modalities()
                    .filter_map(|m| self.path_mask(task, m))
                    .fold(0u64, |a, m| a | m);
                usize::from(b.component) <= task.stage
                    && b.expert < 64
                    && union & (1 << b.expert) != 0
            }
            blob_kind::HEAD => usize::from(b.task) == task.index,
            _ => false,
        }
    }

    /// Global indices of the blobs on `task`'s path, in file order.
    pub fn path_blobs<'s>(
        &'s self,
        task: &'s TaskInfo<'a>,
    ) -> impl Iterator<Item = BlobView<'a>> + 's {
        (0..self.blob_count() as u32)
            .filter_map(|i| self.blob(i))
            .filter(move |b| self.on_path(task, &b.rec))
    }

    /// Bytes of weights on `task`'s path.
    pub fn path_bytes(&self, task: &TaskInfo<'a>) -> usize {
        self.path_blobs(task).map(|b| b.bytes.len()).sum()
    }
}
