//! A model: a base package plus any chain of delta packs, validated once.

use taskpath_format::records::{
    blob_kind, layout, BlobRec, ComponentRec, ExpertRec, GroupRec, TaskRec, TensorRec,
};
use taskpath_format::{ExpertKind, ExpertMask, MetaValue, Op, Package, WeightFormat};

use crate::error::{Error, Result};

/// Most packages (base + deltas) in one model.
pub const MAX_CHAIN: usize = 8;

/// A weight tensor borrowed from the package bytes (or a RAM copy of its blob).
#[derive(Clone, Copy, Debug, Default)]
pub struct TensorView<'a> {
    /// Logical rows (output dimension).
    pub rows: usize,
    /// Logical columns (input dimension).
    pub cols: usize,
    /// Weight format id ([`WeightFormat`]).
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

/// The tensors of one expert component of kind [`ExpertKind::ConvFfn`]
/// (docs/DESIGN.md, "The reference model"), in record order.
#[derive(Clone, Copy, Debug)]
pub struct ExpertTensors<W> {
    /// Token-mixing convolution `[d, 3d]`.
    pub conv_w: W,
    /// Convolution bias `[d]`.
    pub conv_b: W,
    /// LayerNorm gain `[d]`.
    pub ln_g: W,
    /// LayerNorm bias `[d]`.
    pub ln_b: W,
    /// First FFN matrix `[h, d]`.
    pub fc1_w: W,
    /// First FFN bias `[h]`.
    pub fc1_b: W,
    /// Second FFN matrix `[d, h]`.
    pub fc2_w: W,
    /// Second FFN bias `[d]`.
    pub fc2_b: W,
}

impl<W> ExpertTensors<W> {
    /// All eight, in record order.
    pub fn all(&self) -> [&W; 8] {
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
    /// The eight from a function of their position in the record.
    pub fn try_from_fn<E>(
        mut f: impl FnMut(u32) -> core::result::Result<W, E>,
    ) -> core::result::Result<Self, E> {
        Ok(Self {
            conv_w: f(0)?,
            conv_b: f(1)?,
            ln_g: f(2)?,
            ln_b: f(3)?,
            fc1_w: f(4)?,
            fc1_b: f(5)?,
            fc2_w: f(6)?,
            fc2_b: f(7)?,
        })
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
    /// Arena bytes a [`crate::Session`] of this task needs on this platform:
    /// its plan ([`crate::Plan::storage_bytes`]) plus its slots.
    pub arena_bytes: usize,
    /// Bytes of the task's slots (the package's `slot_bytes`).
    pub slot_bytes: usize,
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

/// One path entry of a task: the experts of `group` its router `router` may pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    /// Global group index.
    pub group: u32,
    /// Router id within the task.
    pub router: u32,
    /// The experts.
    pub mask: ExpertMask,
}

/// A validated model over borrowed package bytes (flash, a static array or an
/// mmap). Cheap to copy; holds no allocation.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    parts: [Option<Package<'a>>; MAX_CHAIN],
    len: usize,
}

/// Whether two packages' metadata agree on every key both have.
fn same_metadata(a: &Package<'_>, b: &Package<'_>) -> bool {
    a.meta_entries()
        .all(|(k, v)| b.meta(k).is_none_or(|w| meta_eq(v, w)))
}

fn meta_eq(a: MetaValue<'_>, b: MetaValue<'_>) -> bool {
    match (a, b) {
        // Bit equality: a NaN-free table, but -0.0 and 0.0 are different hyper-parameters.
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    }
}

impl<'a> Model<'a> {
    /// Validates a base package (header, tables, metadata checksum).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_package(Package::parse(bytes)?)
    }

    /// [`Model::from_bytes`] for a package that must be signed by `key` (an
    /// ed25519 public key): the signature is checked first, over the exact
    /// package bytes, and only then is the package parsed. Refuses an
    /// unsigned package ([`Error::Unsigned`]), one signed by another key
    /// ([`Error::KeyMismatch`]) and one whose bytes changed after signing,
    /// checksums re-sealed or not ([`Error::BadSignature`]). Hashes the whole
    /// package once (docs/FORMAT.md, "Signature record"); allocates nothing.
    #[cfg(feature = "signing")]
    pub fn from_bytes_verified(bytes: &'a [u8], key: &[u8; 32]) -> Result<Self> {
        taskpath_format::signature::verify_package(bytes, key)?;
        Self::from_bytes(bytes)
    }

    /// [`Model::with_delta`] for a delta pack that must be signed by `key`,
    /// checked as [`Model::from_bytes_verified`] checks a base.
    #[cfg(feature = "signing")]
    pub fn with_delta_verified(self, bytes: &'a [u8], key: &[u8; 32]) -> Result<Self> {
        taskpath_format::signature::verify_package(bytes, key)?;
        self.with_delta(bytes)
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
        let m = Self { parts, len: 1 };
        m.check_part(&p)?;
        Ok(m)
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
        if d.arch() != last.arch() || !same_metadata(&d, &last) || !same_metadata(&last, &d) {
            return mismatch("architecture or its metadata differ");
        }
        // A stage may bring new modalities (new trunks), appended after the
        // chain's: the ones already there keep their index, shape and name.
        let prev = last.modalities();
        let dm = d.modalities();
        if dm.len() < prev.len()
            || prev.iter().zip(dm.iter()).any(|(a, b)| {
                a.tokens != b.tokens
                    || a.features != b.features
                    || a.kind != b.kind
                    || last.str(a.name_off, a.name_len) != d.str(b.name_off, b.name_len)
            })
        {
            return mismatch("its modalities do not extend the chain's");
        }
        let count =
            |f: fn(&Package<'a>) -> usize| self.parts().map(|p| f(&p)).sum::<usize>() as u32;
        let m = d.model();
        if m.tensor_base != count(|p| p.tensors().len())
            || m.blob_base != count(|p| p.blobs().len())
            || m.task_base != count(|p| p.tasks().len())
            || m.expert_base != count(|p| p.experts().len())
            || m.group_base != count(|p| p.groups().len())
        {
            return mismatch("its index bases do not continue the chain");
        }
        self.parts[self.len] = Some(d);
        self.len += 1;
        if let Err(e) = self.check_part(&d) {
            self.len -= 1;
            return Err(e);
        }
        Ok(self)
    }

    /// The checks of a package that need the chain before it: its expert
    /// records, component blocks and path masks against groups defined earlier.
    fn check_part(&self, p: &Package<'a>) -> Result<()> {
        let bad = |why| Err(Error::DeltaMismatch { why });
        for c in p.components().iter() {
            let Some(g) = self.group(c.group) else {
                return bad("a component block names a group the chain does not have");
            };
            let n = p
                .components()
                .iter()
                .filter(|x| x.group == c.group && x.component == c.component)
                .count();
            if n != 1
                || self.parts().take_while(|q| q.id() != p.id()).any(|q| {
                    q.components()
                        .iter()
                        .any(|x| x.group == c.group && x.component == c.component)
                })
            {
                return bad("a (group, component) block is defined twice along the chain");
            }
            let block = (0..g.experts).filter_map(|j| self.expert_at(c.first_expert + j));
            if block.count() as u32 != g.experts {
                return bad("a component block lacks experts of its group");
            }
            for j in 0..g.experts {
                match self.expert_at(c.first_expert + j) {
                    Some(e) if e.expert as u32 == j && e.group == c.group => {
                        let k = ExpertKind::from_u32(g.kind).map_or(0, |k| k.tensors());
                        if e.tensor_count != k {
                            return bad("an expert's tensor count is not its group's kind's");
                        }
                    }
                    _ => {
                        return bad("a component block does not list its group's experts in order")
                    }
                }
            }
        }
        for t in p.tasks().iter() {
            for k in 0..t.path_len {
                if let Some(e) = p.paths().get((t.path_start + k) as usize) {
                    let ok = self
                        .group(e.group)
                        .is_some_and(|g| e.mask().within(g.experts as usize));
                    if !ok {
                        return bad("a path mask names experts its group does not have");
                    }
                }
            }
        }
        Ok(())
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
    /// The architecture tag (`"flame"`, ...).
    pub fn arch(&self) -> &'a str {
        self.base().arch()
    }
    /// Metadata value of `key` (the last package's: a delta repeats its base's).
    pub fn meta(&self, key: &str) -> Option<MetaValue<'a>> {
        self.parts[..self.len]
            .iter()
            .rev()
            .flatten()
            .find_map(|p| p.meta(key))
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
                let slot_bytes = rec.slot_bytes as usize;
                return Ok(TaskInfo {
                    index,
                    name: p.str(rec.name_off, rec.name_len),
                    stage: rec.stage as usize,
                    outputs: rec.outputs as usize,
                    modality_mask: rec.modality_mask,
                    arena_bytes: crate::plan::storage_bytes(&rec) + slot_bytes,
                    slot_bytes,
                    part,
                    rec,
                });
            }
            rest -= tasks.len();
        }
        Err(Error::UnknownTask)
    }
    /// Global index of the task named `name` (names are unique along a chain).
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
    /// Whether modality `m` is an input of token ids (a language model's).
    pub fn is_token_input(&self, m: usize) -> bool {
        self.last()
            .modalities()
            .get(m)
            .is_some_and(|r| r.kind == taskpath_format::records::input_kind::TOKEN_IDS)
    }
    /// Number of modalities.
    pub fn modality_count(&self) -> usize {
        self.last().modalities().len()
    }

    /// Op `i` of `task`'s program, decoded.
    pub fn op(&self, task: &TaskInfo<'a>, i: u32) -> Result<Op> {
        let p = self.part(task.part).ok_or(Error::UnknownTask)?;
        if i >= task.rec.program_len {
            return Err(Error::InvalidProgram {
                op: i,
                why: "beyond the task's program",
            });
        }
        let rec = p
            .program()
            .get((task.rec.program_start + i) as usize)
            .ok_or(Error::InvalidProgram {
                op: i,
                why: "program range",
            })?;
        if !cfg!(feature = "decoder") && taskpath_format::opcode::is_token_stream(rec.opcode) {
            return Err(Error::UnsupportedOp {
                op: i,
                feature: "decoder",
            });
        }
        Ok(Op::decode(&rec, i)?)
    }

    /// The ops of `task`'s program, decoded (the package parser decoded each
    /// once already, so these never fail on a validated package).
    pub fn ops<'s>(&'s self, task: &'s TaskInfo<'a>) -> impl Iterator<Item = Op> + 's {
        (0..task.rec.program_len).filter_map(move |i| self.op(task, i).ok())
    }

    /// The path entries of `task`, ascending by `(group, router)`.
    pub fn paths<'s>(&'s self, task: &TaskInfo<'a>) -> impl Iterator<Item = PathEntry> + 's {
        let p = self.part(task.part);
        let (start, len) = (task.rec.path_start, task.rec.path_len);
        (0..len).filter_map(move |k| {
            let e = p?.paths().get((start + k) as usize)?;
            Some(PathEntry {
                group: e.group,
                router: e.router,
                mask: e.mask(),
            })
        })
    }

    /// The expert mask of `task`'s router `router` in `group`.
    pub fn path_mask(&self, task: &TaskInfo<'a>, group: u32, router: u32) -> Option<ExpertMask> {
        self.paths(task)
            .find(|e| e.group == group && e.router == router)
            .map(|e| e.mask)
    }

    /// The smallest expert budget at which one token's active experts of
    /// every MoE layer of `task` fit at once: over its `MoeTokens` ops, the
    /// largest sum of the group's `top_k` largest expert blobs (cache
    /// footprints) that op's path allows; 0 for a task without them.
    /// Sessions refuse a smaller budget ([`crate::Session::with_blob_source`]).
    #[cfg(feature = "decoder")]
    pub fn layer_expert_budget(&self, task: &TaskInfo<'a>) -> usize {
        let mut need = 0;
        for op in self.ops(task) {
            let Op::MoeTokens { group, router, .. } = op else {
                continue;
            };
            let (Some(g), Some(mask)) = (self.group(group), self.path_mask(task, group, router))
            else {
                continue;
            };
            let size = |j: usize| {
                self.expert(group, j, 0)
                    .and_then(|e| self.blob(e.blob))
                    .map_or(0, |b| crate::residency::cache_footprint(b.bytes.len()))
            };
            let (mut taken, mut sum) = (ExpertMask::default(), 0);
            for _ in 0..g.top_k {
                let Some(j) = mask
                    .iter()
                    .filter(|&j| !taken.contains(j))
                    .max_by_key(|&j| size(j))
                else {
                    break;
                };
                taken.insert(j);
                sum += size(j);
            }
            need = need.max(sum);
        }
        need
    }

    /// Number of expert groups across the chain.
    pub fn group_count(&self) -> usize {
        self.parts().map(|p| p.groups().len()).sum()
    }
    /// Group by global index.
    pub fn group(&self, global: u32) -> Option<GroupRec> {
        self.parts().find_map(|p| p.local_group(global))
    }
    /// Name of group `global`.
    pub fn group_name(&self, global: u32) -> Option<&'a str> {
        self.parts()
            .find_map(|p| p.local_group(global).map(|g| p.str(g.name_off, g.name_len)))
    }
    /// Components group `global` has along the chain (`max component + 1`).
    pub fn components(&self, group: u32) -> usize {
        self.parts()
            .flat_map(|p| p.components().iter())
            .filter(|c| c.group == group)
            .map(|c| c.component as usize + 1)
            .max()
            .unwrap_or(0)
    }
    /// The `(group, component)` block, wherever along the chain it is.
    pub fn component_block(&self, group: u32, component: usize) -> Option<ComponentRec> {
        self.parts().find_map(|p| {
            let t = p.components();
            let key = (group, component as u32);
            // Blocks are ascending by (group, component) within a package.
            let (mut lo, mut hi) = (0, t.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                let c = t.get(mid)?;
                match (c.group, c.component).cmp(&key) {
                    core::cmp::Ordering::Less => lo = mid + 1,
                    core::cmp::Ordering::Greater => hi = mid,
                    core::cmp::Ordering::Equal => return Some(c),
                }
            }
            None
        })
    }
    /// Component `c` of expert `j` of `group`, through the package's index.
    pub fn expert(&self, group: u32, j: usize, c: usize) -> Option<ExpertRec> {
        let b = self.component_block(group, c)?;
        let e = self.expert_at(b.first_expert.checked_add(u32::try_from(j).ok()?)?)?;
        (usize::from(e.expert) == j && e.group == group && usize::from(e.component) == c)
            .then_some(e)
    }
    /// Expert record by global index.
    pub fn expert_at(&self, global: u32) -> Option<ExpertRec> {
        self.parts().find_map(|p| p.local_expert(global))
    }

    /// Tensor by global index.
    pub fn tensor_rec(&self, global: u32) -> Option<(Package<'a>, TensorRec)> {
        self.parts()
            .find_map(|p| p.local_tensor(global).map(|t| (p, t)))
    }
    /// Tensor by global index, borrowed from the package bytes.
    pub fn tensor(&self, global: u32) -> Option<TensorView<'a>> {
        let (p, t) = self.tensor_rec(global)?;
        let local = t.blob.checked_sub(p.model().blob_base)?;
        Self::view(&t, p.blob_bytes(local as usize)?)
    }

    /// Tensor by global index, borrowed from `blob`: a RAM copy of its blob.
    pub fn tensor_in<'b>(&self, global: u32, blob: &'b [u8]) -> Option<TensorView<'b>> {
        let (_, t) = self.tensor_rec(global)?;
        Self::view(&t, blob)
    }

    /// The tensors of expert component `e` (kind [`ExpertKind::ConvFfn`]),
    /// borrowed from `blob` (its blob's bytes); `None` when one of them lies
    /// outside that blob.
    pub fn expert_tensors<'b>(
        &self,
        e: &ExpertRec,
        blob: &'b [u8],
    ) -> Option<ExpertTensors<TensorView<'b>>> {
        ExpertTensors::try_from_fn(|k| {
            (k < e.tensor_count)
                .then(|| self.tensor_in(e.tensor_start + k, blob))
                .flatten()
                .ok_or(())
        })
        .ok()
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
            if let Some(local) = global.checked_sub(p.model().blob_base) {
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
            if let Some(local) = global.checked_sub(p.model().blob_base) {
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
    /// Checks every blob checksum of every package, then that every weight
    /// and scale is finite
    /// ([`taskpath_format::Package::check_finite`]): a NaN that passes the
    /// checksums would otherwise turn every output into NaN. Reads every
    /// byte; sessions do not call it.
    pub fn verify(&self) -> Result<()> {
        self.parts()
            .try_for_each(|p| p.verify_all().map_err(Error::from))?;
        self.parts()
            .try_for_each(|p| p.check_finite().map_err(Error::from))
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

    /// Whether blob `b` is on the path of `task`: a blob one of its ops
    /// names a tensor of, or component `< components` of an expert in the
    /// path mask of the router a `Moe` or `MoeTokens` op of the task runs.
    pub fn on_path(&self, task: &TaskInfo<'a>, b: &BlobView<'a>) -> bool {
        let mut hit = false;
        for op in self.ops(task) {
            if let Some((group, router, components)) = op.expert_use() {
                hit |= b.rec.kind == blob_kind::EXPERT
                    && u32::from(b.rec.group) == group
                    && u32::from(b.rec.component) < components
                    && self
                        .path_mask(task, group, router)
                        .is_some_and(|m| m.contains(b.rec.expert.into()));
            }
            op.for_each_tensor(|t| {
                hit |= self.tensor_rec(t.0).is_some_and(|(_, r)| r.blob == b.index);
            });
            if hit {
                return true;
            }
        }
        false
    }

    /// The blobs on `task`'s path, in file order.
    pub fn path_blobs<'s>(
        &'s self,
        task: &'s TaskInfo<'a>,
    ) -> impl Iterator<Item = BlobView<'a>> + 's {
        (0..self.blob_count() as u32)
            .filter_map(|i| self.blob(i))
            .filter(move |b| self.on_path(task, b))
    }

    /// Bytes of weights on `task`'s path.
    pub fn path_bytes(&self, task: &TaskInfo<'a>) -> usize {
        self.path_blobs(task).map(|b| b.bytes.len()).sum()
    }

    /// The weight format of a tensor view, when this build knows it.
    pub fn format_of(t: &TensorView<'_>) -> Option<WeightFormat> {
        WeightFormat::from_u16(t.format)
    }
}
