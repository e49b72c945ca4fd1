//! Fixed-size little-endian records of the package tables (docs/FORMAT.md).
//!
//! Records are decoded field by field from byte slices, so the reader needs no
//! alignment and no `unsafe`; each record's size is asserted at compile time.

/// Little-endian scalar decoding/encoding for record fields.
pub trait Le: Sized + Copy {
    /// Bytes this type occupies.
    const N: usize;
    /// Reads from `b[at..at + N]`; the caller guarantees the range.
    fn read(b: &[u8], at: usize) -> Self;
    /// Appends the little-endian bytes.
    #[cfg(feature = "std")]
    fn write(self, out: &mut std::vec::Vec<u8>);
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const N: usize = core::mem::size_of::<$t>();
            #[inline]
            fn read(b: &[u8], at: usize) -> Self {
                let mut a = [0u8; core::mem::size_of::<$t>()];
                a.copy_from_slice(&b[at..at + Self::N]);
                <$t>::from_le_bytes(a)
            }
            #[cfg(feature = "std")]
            fn write(self, out: &mut std::vec::Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le!(u8, u16, u32, u64, f32);

/// A fixed-size table record.
pub trait Record: Sized + Copy {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// Table name used in error messages.
    const TABLE: &'static str;
    /// Decodes from exactly `SIZE` bytes.
    fn decode(b: &[u8]) -> Self;
    /// Appends the encoding (exactly `SIZE` bytes).
    #[cfg(feature = "std")]
    fn encode(&self, out: &mut std::vec::Vec<u8>);
}

macro_rules! record {
    ($(#[$m:meta])* $name:ident, $table:literal, $size:literal,
     { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(0 $(+ core::mem::size_of::<$t>())* == $size);
        impl Record for $name {
            const SIZE: usize = $size;
            const TABLE: &'static str = $table;
            #[allow(unused_assignments)]
            fn decode(b: &[u8]) -> Self {
                let mut at = 0;
                $( let $f = <$t as Le>::read(b, at); at += <$t as Le>::N; )*
                Self { $($f),* }
            }
            #[cfg(feature = "std")]
            fn encode(&self, out: &mut std::vec::Vec<u8>) {
                $( Le::write(self.$f, out); )*
            }
        }
    };
}

/// Reference to a UTF-8 string in the string table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrRef {
    /// Byte offset in the string section.
    pub off: u32,
    /// Byte length.
    pub len: u32,
}

/// "No tensor / no slot" marker in optional index fields.
pub const NONE: u32 = u32::MAX;

/// Section kinds (append-only; never renumber).
pub mod section {
    /// UTF-8 string bytes.
    pub const STRINGS: u32 = 1;
    /// One [`super::HParams`] record.
    pub const HPARAMS: u32 = 2;
    /// [`super::ModalityRec`] table.
    pub const MODALITIES: u32 = 3;
    /// [`super::TensorRec`] table.
    pub const TENSORS: u32 = 4;
    /// [`super::ExpertRec`] table.
    pub const EXPERTS: u32 = 5;
    /// [`super::TaskRec`] table.
    pub const TASKS: u32 = 6;
    /// [`super::RouterRec`] table.
    pub const ROUTERS: u32 = 7;
    /// [`super::PathRec`] table.
    pub const PATHS: u32 = 8;
    /// [`super::OpRec`] table (the op program of every task).
    pub const PROGRAM: u32 = 9;
    /// [`super::SlotRec`] table (memory plans).
    pub const SLOTS: u32 = 10;
    /// [`super::BlobRec`] table.
    pub const BLOBS: u32 = 11;
    /// [`super::StatRec`] table (optional routing statistics).
    pub const ROUTE_STATS: u32 = 12;
    /// Flag bit: a reader that does not know this section must refuse the file.
    pub const FLAG_REQUIRED: u32 = 1;
}

record!(
    /// Section table entry. `offset`/`len` are absolute file positions inside the
    /// metadata region (after the header, before the data region).
    SectionRec, "sections", 24, {
    /// A [`section`] kind.
    kind: u32,
    /// [`section::FLAG_REQUIRED`] or 0.
    flags: u32,
    /// File offset.
    offset: u64,
    /// Byte length.
    len: u64,
});

/// Router gate function ids.
pub mod gating {
    /// `-||p - w||_2`.
    pub const LAPLACE: u32 = 0;
    /// `w . p`.
    pub const SOFTMAX: u32 = 1;
}

record!(
    /// Architecture hyper-parameters (exactly one record). The `*_base` fields
    /// are the global index of this package's first record in each table: 0 in a
    /// base package, the base chain's counts in a delta pack.
    HParams, "hparams", 64, {
    /// Model width D.
    d_model: u32,
    /// Attention heads.
    heads: u32,
    /// Shared expert pool size N (<= 64).
    experts: u32,
    /// Experts kept per (sample, modality).
    top_k: u32,
    /// Expert FFN hidden width.
    ffn_hidden: u32,
    /// Rank of low-rank components (informational).
    rank: u32,
    /// Stages (router heads / components per slot) up to and including this package.
    stages: u32,
    /// A [`gating`] id.
    gating: u32,
    /// LayerNorm epsilon.
    ln_eps: f32,
    /// Global index of this package's first tensor.
    tensor_base: u32,
    /// Global index of this package's first blob.
    blob_base: u32,
    /// Global index of this package's first task.
    task_base: u32,
    /// Global index of this package's first expert record.
    expert_base: u32,
    /// Global index of this package's first router record.
    router_base: u32,
    /// Reserved, zero.
    reserved0: u32,
    /// Reserved, zero.
    reserved1: u32,
});

record!(
    /// An input modality.
    ModalityRec, "modalities", 16, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// Tokens per sample L.
    tokens: u32,
    /// Features per token F.
    features: u32,
});

/// Weight formats (append-only). The ids, encodings and byte layouts are
/// those of `taskpath_cpu::quant::WeightFormat` (docs/KERNELS.md): 1 f32,
/// 2 f16, 3 int8 per-row, 4..=11 int4/int2 group-wise LUT layouts. The reader
/// checks the id is known and the bytes lie in the blob; the runtime checks
/// the length against the layout when it binds a kernel.
pub mod format {
    /// IEEE f32, little-endian, row-major.
    pub const F32: u16 = 1;
    /// Largest weight format id this version knows.
    pub const MAX_ID: u16 = 11;
}

/// Tensor layouts.
pub mod layout {
    /// `rows * cols` values, row-major.
    pub const DENSE: u16 = 0;
    /// Factor pair: `U [rows, rank]` at `offset`, `V [rank, cols]` at `offset2`.
    pub const LOW_RANK: u16 = 1;
}

record!(
    /// A weight tensor inside a blob. Vectors have `rows == 1`.
    TensorRec, "tensors", 48, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// Global blob index.
    blob: u32,
    /// A [`format`] id.
    format: u16,
    /// A [`layout`] id.
    layout: u16,
    /// Byte offset of the (first factor's) data inside the blob, 16-aligned.
    offset: u32,
    /// Logical rows (matrix output dimension).
    rows: u32,
    /// Logical columns (matrix input dimension).
    cols: u32,
    /// Rank for [`layout::LOW_RANK`], 0 otherwise.
    rank: u32,
    /// Byte offset of the second factor, 16-aligned (low-rank only, else 0).
    offset2: u32,
    /// Bytes of the (first factor's) data.
    bytes: u32,
    /// Bytes of the second factor (low-rank only, else 0).
    bytes2: u32,
    /// Reserved, zero.
    reserved: u32,
});

record!(
    /// One component of one expert slot: the tensors of `fc2(GELU(fc1(LN(u + GELU(conv(u))))))`.
    ExpertRec, "experts", 40, {
    /// Expert slot j.
    expert: u16,
    /// Component (= stage that added it).
    component: u16,
    /// Global blob holding all of this component's tensors.
    blob: u32,
    /// Conv weight `[D, 3D]`.
    conv_w: u32,
    /// Conv bias `[D]`.
    conv_b: u32,
    /// LN gain.
    ln_g: u32,
    /// LN bias.
    ln_b: u32,
    /// fc1 weight `[H, D]`.
    fc1_w: u32,
    /// fc1 bias.
    fc1_b: u32,
    /// fc2 weight `[D, H]`.
    fc2_w: u32,
    /// fc2 bias.
    fc2_b: u32,
});

record!(
    /// One router head of one modality.
    RouterRec, "routers", 16, {
    /// Modality index.
    modality: u16,
    /// Head (= stage that added it).
    head: u16,
    /// Global blob holding the query and gate vectors.
    blob: u32,
    /// Pooling query `[D]`.
    query: u32,
    /// Gate vectors `[N, D]`.
    gate: u32,
});

record!(
    /// A task: its stage, modalities, head, op program and memory plan.
    TaskRec, "tasks", 64, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// 0-based stage.
    stage: u32,
    /// Number of outputs (logits).
    outputs: u32,
    /// Bit m set when the task uses modality m.
    modality_mask: u32,
    /// Global blob of the task head.
    head_blob: u32,
    /// First op in the program table (package-local index).
    program_start: u32,
    /// Number of ops.
    program_len: u32,
    /// First slot in the slot table (package-local index).
    slot_start: u32,
    /// Number of slots.
    slot_count: u32,
    /// First path entry (package-local index).
    path_start: u32,
    /// Number of path entries (one per modality of the task).
    path_len: u32,
    /// Task-local slot receiving the outputs.
    output_slot: u32,
    /// Reserved, zero.
    reserved: u32,
    /// Bytes of arena the CPU f32 plan needs (slots and scratch).
    arena_bytes: u64,
});

record!(
    /// The expert mask (path) of one (task, modality).
    PathRec, "paths", 16, {
    /// Global task index.
    task: u32,
    /// Modality index.
    modality: u32,
    /// Bit j set when expert j is on the path.
    mask: u64,
});

record!(
    /// An arena slot of a task's memory plan, in f32 elements.
    SlotRec, "slots", 8, {
    /// Start, in f32 elements from the arena base.
    offset: u32,
    /// Length in f32 elements.
    len: u32,
});

record!(
    /// One op of a task's program: `opcode` and up to seven arguments, whose
    /// meaning depends on the opcode (docs/FORMAT.md, "Op program").
    OpRec, "program", 32, {
    /// An [`crate::Opcode`].
    opcode: u16,
    /// Reserved, zero.
    flags: u16,
    /// Argument 0.
    a0: u32,
    /// Argument 1.
    a1: u32,
    /// Argument 2.
    a2: u32,
    /// Argument 3.
    a3: u32,
    /// Argument 4.
    a4: u32,
    /// Argument 5.
    a5: u32,
    /// Argument 6.
    a6: u32,
});

/// Blob kinds.
pub mod blob_kind {
    /// A modality's trunk: encoder, position embedding, LayerNorms, attention.
    pub const TRUNK: u8 = 1;
    /// One router head of one modality.
    pub const ROUTER: u8 = 2;
    /// One component of one expert slot.
    pub const EXPERT: u8 = 3;
    /// One task's fusion LayerNorm and head.
    pub const HEAD: u8 = 4;
}

/// "Not applicable" marker for the u16 index fields of [`BlobRec`].
pub const NONE16: u16 = u16::MAX;

record!(
    /// A blob: a page-aligned run of bytes in the data region.
    BlobRec, "blobs", 40, {
    /// Offset from the start of the data region (a multiple of the blob alignment).
    offset: u64,
    /// Length in bytes.
    len: u64,
    /// xxh3-64 of the blob's bytes.
    checksum: u64,
    /// A [`blob_kind`].
    kind: u8,
    /// Dominant weight [`format`] of the blob's matrices.
    format: u8,
    /// Reserved, zero.
    reserved0: u16,
    /// Modality (trunk, router) or [`NONE16`].
    modality: u16,
    /// Expert slot or [`NONE16`].
    expert: u16,
    /// Component / router head / stage, or [`NONE16`].
    component: u16,
    /// Global task index (head) or [`NONE16`].
    task: u16,
    /// Reserved, zero.
    reserved1: u32,
});

record!(
    /// Calibration routing statistics of one (task, modality, expert).
    StatRec, "route_stats", 24, {
    /// Global task index.
    task: u32,
    /// Modality index.
    modality: u32,
    /// Expert slot.
    expert: u32,
    /// Calibration samples that selected it.
    picks: u32,
    /// Share of the gate mass it received (0..=1).
    mass: f32,
    /// Number of calibration samples.
    samples: u32,
});
