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

/// "Not applicable" marker for the u16 index fields of [`BlobRec`].
pub const NONE16: u16 = u16::MAX;

/// Section kinds (append-only within a major version; never renumber).
pub mod section {
    /// UTF-8 string bytes.
    pub const STRINGS: u32 = 1;
    /// One [`super::ModelRec`] record.
    pub const MODEL: u32 = 2;
    /// [`super::ModalityRec`] table (the model's inputs).
    pub const MODALITIES: u32 = 3;
    /// [`super::TensorRec`] table.
    pub const TENSORS: u32 = 4;
    /// [`super::ExpertRec`] table.
    pub const EXPERTS: u32 = 5;
    /// [`super::TaskRec`] table.
    pub const TASKS: u32 = 6;
    /// [`super::GroupRec`] table (expert groups).
    pub const GROUPS: u32 = 7;
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
    /// [`super::KvRec`] table (architecture metadata, keys ascending).
    pub const METADATA: u32 = 13;
    /// [`super::ComponentRec`] table (the `(group, expert, component)` index).
    pub const COMPONENTS: u32 = 14;
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

record!(
    /// The model (exactly one record): its architecture tag and, in a delta
    /// pack, where this package's records continue the chain's global indices.
    /// Everything else an architecture needs to describe itself is in the
    /// metadata table ([`KvRec`]); what the runtime needs to run a task is in
    /// the task's op program.
    ModelRec, "model", 48, {
    /// Architecture tag (`"flame"`, `"mixtral"`...): string offset.
    arch_off: u32,
    /// Architecture tag: string length.
    arch_len: u32,
    /// Global index of this package's first tensor.
    tensor_base: u32,
    /// Global index of this package's first blob.
    blob_base: u32,
    /// Global index of this package's first task.
    task_base: u32,
    /// Global index of this package's first expert record.
    expert_base: u32,
    /// Global index of this package's first group.
    group_base: u32,
    /// Reserved, zero.
    reserved0: u32,
    /// Reserved, zero.
    reserved1: u32,
    /// Reserved, zero.
    reserved2: u32,
    /// Reserved, zero.
    reserved3: u32,
    /// Reserved, zero.
    reserved4: u32,
});

/// Metadata value types of [`KvRec::vtype`].
pub mod kv_type {
    /// `u32` in the low half of `value`.
    pub const U32: u32 = 1;
    /// `i32` (two's complement) in the low half of `value`.
    pub const I32: u32 = 2;
    /// `u64`.
    pub const U64: u32 = 3;
    /// `f32` bits in the low half of `value`.
    pub const F32: u32 = 4;
    /// `f64` bits.
    pub const F64: u32 = 5;
    /// 0 or 1.
    pub const BOOL: u32 = 6;
    /// A string: offset in the low half of `value`, length in the high half.
    pub const STR: u32 = 7;
}

record!(
    /// One metadata entry, in the manner of GGUF's key/value metadata: a new
    /// architecture describes itself with new keys, not new record fields.
    /// Keys are dotted names (`"flame.d_model"`), strictly ascending in byte
    /// order within a package, so each appears once.
    KvRec, "metadata", 24, {
    /// Key: string offset.
    key_off: u32,
    /// Key: string length.
    key_len: u32,
    /// A [`kv_type`].
    vtype: u32,
    /// Reserved, zero.
    reserved: u32,
    /// The value, encoded per `vtype`.
    value: u64,
});

/// Input kinds of [`ModalityRec::kind`].
pub mod input_kind {
    /// `tokens x features` f32 values.
    pub const FEATURES: u32 = 0;
    /// Token ids (`features` = 1).
    pub const TOKEN_IDS: u32 = 1;
}

record!(
    /// An input of the model (a modality).
    ModalityRec, "modalities", 24, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// Tokens per sample L.
    tokens: u32,
    /// Features per token F.
    features: u32,
    /// An [`input_kind`].
    kind: u32,
    /// Reserved, zero.
    reserved: u32,
});

/// Weight format ids (append-only). The ids, byte layouts and size rules are
/// [`crate::WeightFormat`]'s (docs/KERNELS.md): 1 f32, 2 f16, 3 int8
/// per-row, 4..=11 int4/int2 group-wise LUT layouts, 12 q4_0 and 13 q8_0
/// (GGUF Q4_0 / Q8_0 values).
pub mod format {
    /// IEEE f32, little-endian, row-major.
    pub const F32: u16 = 1;
    /// Largest weight format id this version knows (`weight::ALL.len()`).
    pub const MAX_ID: u16 = 13;
}

const _: () = assert!(format::MAX_ID as usize == crate::weight::ALL.len());

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
    /// An expert group: a pool of experts that routing ops choose from. The
    /// FLAME model has one (shared by all modalities); a decoder LLM has one
    /// per MoE layer.
    GroupRec, "groups", 32, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// Experts in the group, `1..=MAX_EXPERTS`.
    experts: u32,
    /// Experts a routing op keeps, `1..=min(experts, MAX_TOP_K)`.
    top_k: u32,
    /// The expert's function: an [`crate::ExpertKind`] id.
    kind: u32,
    /// Reserved, zero.
    reserved0: u32,
    /// Reserved, zero.
    reserved1: u32,
    /// Reserved, zero.
    reserved2: u32,
});

record!(
    /// One component of one expert of one group: its blob and its tensors,
    /// `tensor_count` consecutive global tensor ids in the order its
    /// [`crate::ExpertKind`] defines.
    ExpertRec, "experts", 24, {
    /// Global group index.
    group: u32,
    /// Expert j within the group.
    expert: u16,
    /// Component (= stage that added it).
    component: u16,
    /// Global blob holding all of this component's tensors.
    blob: u32,
    /// First tensor (global index).
    tensor_start: u32,
    /// Number of tensors (the kind's count).
    tensor_count: u32,
    /// Reserved, zero.
    reserved: u32,
});

record!(
    /// The explicit `(group, expert, component) -> expert record` index: the
    /// expert records of component `component` of group `group` are
    /// `first_expert + j` for expert `j` (every expert of the group, in order).
    ComponentRec, "components", 16, {
    /// Global group index.
    group: u32,
    /// Component.
    component: u32,
    /// Global expert-record index of expert 0's record.
    first_expert: u32,
    /// Reserved, zero.
    reserved: u32,
});

record!(
    /// A task: its stage, inputs, op program and memory plan.
    TaskRec, "tasks", 64, {
    /// Name: string offset.
    name_off: u32,
    /// Name: string length.
    name_len: u32,
    /// 0-based stage.
    stage: u32,
    /// Number of outputs (logits).
    outputs: u32,
    /// Bit m set when the task uses modality (input) m.
    modality_mask: u32,
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
    /// Number of path entries (one per `(group, router)` the task routes with).
    path_len: u32,
    /// Task-local slot receiving the outputs.
    output_slot: u32,
    /// Tensor references of its ops, in op order (the size of its plan's tensor table).
    plan_tensors: u32,
    /// Reserved, zero.
    reserved: u32,
    /// Bytes of the slots region of its arena (every slot ends inside it).
    slot_bytes: u64,
});

/// Words of an [`ExpertMask`]: up to 256 experts per group.
pub const MASK_WORDS: usize = 4;

record!(
    /// The expert mask (path) of one `(task, group, router)`.
    PathRec, "paths", 48, {
    /// Global task index.
    task: u32,
    /// Global group index.
    group: u32,
    /// Router id within the task (FLAME: the modality index).
    router: u32,
    /// Reserved, zero.
    reserved: u32,
    /// Bits 0..64 of the mask: bit j set when expert j may be routed to.
    mask0: u64,
    /// Bits 64..128.
    mask1: u64,
    /// Bits 128..192.
    mask2: u64,
    /// Bits 192..256.
    mask3: u64,
});

impl PathRec {
    /// The mask.
    pub fn mask(&self) -> ExpertMask {
        ExpertMask([self.mask0, self.mask1, self.mask2, self.mask3])
    }
    /// Sets the mask.
    pub fn set_mask(&mut self, m: ExpertMask) {
        [self.mask0, self.mask1, self.mask2, self.mask3] = m.0;
    }
}

/// A set of experts of one group (at most 256).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExpertMask(pub [u64; MASK_WORDS]);

impl ExpertMask {
    /// Experts `0..n` (n <= 256).
    pub fn all(n: usize) -> Self {
        let mut m = Self::default();
        for j in 0..n.min(MASK_WORDS * 64) {
            m.insert(j);
        }
        m
    }
    /// Whether expert `j` is in the set.
    pub fn contains(&self, j: usize) -> bool {
        self.0
            .get(j / 64)
            .is_some_and(|w| w & (1u64 << (j % 64)) != 0)
    }
    /// Adds expert `j` (ignored past 256).
    pub fn insert(&mut self, j: usize) {
        if let Some(w) = self.0.get_mut(j / 64) {
            *w |= 1u64 << (j % 64);
        }
    }
    /// Number of experts in the set.
    pub fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
    /// The union.
    pub fn union(&self, o: &Self) -> Self {
        Self(core::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    /// Whether every expert lies below `n`.
    pub fn within(&self, n: usize) -> bool {
        (n..MASK_WORDS * 64).all(|j| !self.contains(j))
    }
    /// The experts, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MASK_WORDS * 64).filter(move |&j| self.contains(j))
    }
}

/// Slot kinds of [`SlotRec::kind`].
pub mod slot_kind {
    /// Free between runs; planned by live range.
    pub const SCRATCH: u32 = 0;
    /// Persists across runs in the caller's arena (a KV cache); cleared by
    /// `Session::reset`. Never shares bytes with any other slot.
    pub const STATE: u32 = 1;
}

record!(
    /// An arena slot of a task's memory plan, in f32 elements.
    SlotRec, "slots", 12, {
    /// Start, in f32 elements from the start of the slots region.
    offset: u32,
    /// Length in f32 elements.
    len: u32,
    /// A [`slot_kind`].
    kind: u32,
});

/// Arguments an [`OpRec`] carries.
pub const OP_ARGS: usize = 15;

/// One op of a task's program, encoded: an opcode and up to [`OP_ARGS`]
/// argument words. Only [`crate::Op::decode`] and [`crate::Op::encode`] know
/// what each argument means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpRec {
    /// An [`crate::Op`] opcode.
    pub opcode: u16,
    /// Reserved, zero.
    pub flags: u16,
    /// Argument words; those past the op's count are zero.
    pub args: [u32; OP_ARGS],
}

impl Record for OpRec {
    const SIZE: usize = 4 + 4 * OP_ARGS;
    const TABLE: &'static str = "program";
    fn decode(b: &[u8]) -> Self {
        Self {
            opcode: Le::read(b, 0),
            flags: Le::read(b, 2),
            args: core::array::from_fn(|i| Le::read(b, 4 + 4 * i)),
        }
    }
    #[cfg(feature = "std")]
    fn encode(&self, out: &mut std::vec::Vec<u8>) {
        Le::write(self.opcode, out);
        Le::write(self.flags, out);
        for a in self.args {
            Le::write(a, out);
        }
    }
}

/// Blob kinds.
pub mod blob_kind {
    /// Dense weights shared by the tasks that use them: a modality's trunk
    /// (FLAME), attention, norms, embeddings (LLMs).
    pub const SHARED: u8 = 1;
    /// Router weights.
    pub const ROUTER: u8 = 2;
    /// One component of one expert of one group.
    pub const EXPERT: u8 = 3;
    /// One task's head.
    pub const HEAD: u8 = 4;
    /// Bytes that are not weights (a tokenizer).
    pub const DATA: u8 = 5;
}

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
    /// Global group (expert blobs) or [`NONE16`].
    group: u16,
    /// Expert (expert blobs) or [`NONE16`].
    expert: u16,
    /// Component / router head / stage, or [`NONE16`].
    component: u16,
    /// Owner: modality (shared, router), global task (head), or [`NONE16`].
    owner: u16,
    /// Reserved, zero.
    reserved1: u32,
});

record!(
    /// Calibration routing statistics of one (task, group, router, expert).
    StatRec, "route_stats", 28, {
    /// Global task index.
    task: u32,
    /// Global group index.
    group: u32,
    /// Router id within the task.
    router: u32,
    /// Expert j.
    expert: u32,
    /// Calibration samples (tokens, for LLMs) that selected it.
    picks: u32,
    /// Share of the gate mass it received (0..=1).
    mass: f32,
    /// Number of calibration samples (tokens).
    samples: u32,
});
