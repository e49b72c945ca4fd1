//! The validating, zero-copy package reader.

use core::marker::PhantomData;

use crate::error::{FormatError, Result};
use crate::records::*;
use crate::steps;
use crate::{ExpertKind, Op};

/// Package magic: non-ASCII first byte, then "TPK", then CR LF SUB LF so that
/// text-mode transfers and truncated copies are caught (as PNG does).
pub const MAGIC: [u8; 8] = *b"\x89TPK\r\n\x1a\n";
/// Major version this reader implements; a breaking change bumps it.
pub const VERSION_MAJOR: u16 = 2;
/// Minor version written by this crate; readers accept any minor of their major.
pub const VERSION_MINOR: u16 = 0;
/// Size of the fixed header this version writes.
pub const HEADER_LEN: usize = 128;
/// Header flag: the package is a delta pack on top of `base_id`.
pub const FLAG_DELTA: u32 = 1;
/// Smallest blob alignment (log2): one 4 KiB page.
pub const MIN_ALIGN_LOG2: u32 = 12;
/// Largest blob alignment (log2) accepted.
pub const MAX_ALIGN_LOG2: u32 = 24;
/// Alignment the package bytes must start on, so f32 tensors can be borrowed in place.
pub const BASE_ALIGN: usize = 16;
/// Most sections a package may list.
pub const MAX_SECTIONS: u32 = 64;
/// Most modalities (bits of `TaskRec::modality_mask`).
pub const MAX_MODALITIES: usize = 32;
/// Most experts of a group (bits of a [`crate::ExpertMask`]).
pub const MAX_EXPERTS: u32 = 256;
/// Most experts a routing op keeps.
pub const MAX_TOP_K: u32 = 64;
/// Most components (stages) per expert.
pub const MAX_COMPONENTS: u32 = 255;
/// Largest accepted model width, heads, hidden width, token count or feature count.
pub const MAX_DIM: u32 = 1 << 16;
/// Longest accepted name (modality, tensor, task), in bytes. Without a cap,
/// every record could name the whole string table: validation would do
/// `records x strings` work and a caller copying names (the C ABI keeps a
/// NUL-terminated copy of each task name) would allocate as much.
pub const MAX_NAME_LEN: u32 = 256;

/// The fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Major version.
    pub version_major: u16,
    /// Minor version.
    pub version_minor: u16,
    /// Bytes of header (>= 128; a later minor may grow it).
    pub header_len: u32,
    /// [`FLAG_DELTA`] or 0.
    pub flags: u32,
    /// log2 of the blob alignment.
    pub align_log2: u32,
    /// Total file length.
    pub file_len: u64,
    /// Section table offset.
    pub section_table_off: u64,
    /// Section count.
    pub section_count: u32,
    /// Data region offset.
    pub data_off: u64,
    /// Data region length.
    pub data_len: u64,
    /// xxh3-64 of the metadata region `[header_len, data_off)`; also the package id.
    pub meta_checksum: u64,
    /// For a delta pack, the id (`meta_checksum`) of the package it extends; else 0.
    pub base_id: u64,
    /// xxh3-64 of header bytes `[0, 120)`.
    pub header_checksum: u64,
}

impl Header {
    /// Decodes the first 128 bytes (no validation).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            version_major: Le::read(b, 8),
            version_minor: Le::read(b, 10),
            header_len: Le::read(b, 12),
            flags: Le::read(b, 16),
            align_log2: Le::read(b, 20),
            file_len: Le::read(b, 24),
            section_table_off: Le::read(b, 32),
            section_count: Le::read(b, 40),
            data_off: Le::read(b, 48),
            data_len: Le::read(b, 56),
            meta_checksum: Le::read(b, 64),
            base_id: Le::read(b, 72),
            header_checksum: Le::read(b, 120),
        }
    }

    /// Encodes into 128 bytes, computing the header checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version_major.to_le_bytes());
        b[10..12].copy_from_slice(&self.version_minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20..24].copy_from_slice(&self.align_log2.to_le_bytes());
        b[24..32].copy_from_slice(&self.file_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.section_table_off.to_le_bytes());
        b[40..44].copy_from_slice(&self.section_count.to_le_bytes());
        b[48..56].copy_from_slice(&self.data_off.to_le_bytes());
        b[56..64].copy_from_slice(&self.data_len.to_le_bytes());
        b[64..72].copy_from_slice(&self.meta_checksum.to_le_bytes());
        b[72..80].copy_from_slice(&self.base_id.to_le_bytes());
        let c = xxhash_rust::xxh3::xxh3_64(&b[..120]);
        b[120..].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Blob alignment in bytes.
    pub fn align(&self) -> u64 {
        1u64 << self.align_log2
    }
}

/// A borrowed table of fixed-size records, decoded on access.
#[derive(Clone, Copy)]
pub struct Table<'a, R> {
    bytes: &'a [u8],
    _r: PhantomData<R>,
}

impl<R> core::fmt::Debug for Table<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Table({} bytes)", self.bytes.len())
    }
}

impl<'a, R: Record + 'a> Table<'a, R> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            _r: PhantomData,
        }
    }
    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / R::SIZE
    }
    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Record `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<R> {
        let start = i.checked_mul(R::SIZE)?;
        self.bytes.get(start..start + R::SIZE).map(R::decode)
    }
    /// All records in order.
    pub fn iter(&self) -> impl Iterator<Item = R> + 'a {
        self.bytes.chunks_exact(R::SIZE).map(R::decode)
    }
}

/// Where each table of a validated package lies: plain ranges, no borrow, so an
/// owner of the bytes (an mmap) can keep it and re-view the package for free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    header: Header,
    model: ModelRec,
    strings: (usize, usize),
    metadata: (usize, usize),
    modalities: (usize, usize),
    tensors: (usize, usize),
    groups: (usize, usize),
    experts: (usize, usize),
    components: (usize, usize),
    tasks: (usize, usize),
    paths: (usize, usize),
    program: (usize, usize),
    slots: (usize, usize),
    blobs: (usize, usize),
    stats: (usize, usize),
}

/// A validated package: every table, index, range and the metadata checksum
/// have been checked, so accessors cannot fail on well-formed indices.
/// Blob checksums are checked on demand ([`Package::verify_blob`]).
#[derive(Clone, Copy, Debug)]
pub struct Package<'a> {
    bytes: &'a [u8],
    layout: Layout,
}

/// A metadata value ([`KvRec`] decoded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetaValue<'a> {
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    Str(&'a str),
}

impl core::fmt::Display for MetaValue<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::U32(v) => write!(f, "{v}"),
            Self::I32(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::F32(v) => write!(f, "{v:?}"),
            Self::F64(v) => write!(f, "{v:?}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::Str(v) => write!(f, "{v:?}"),
        }
    }
}

macro_rules! tables {
    ($($(#[$m:meta])* $name:ident: $rec:ty;)*) => {
        impl<'a> Package<'a> {
            $(
                $(#[$m])*
                pub fn $name(&self) -> Table<'a, $rec> {
                    let (a, b) = self.layout.$name;
                    Table::new(self.bytes.get(a..b).unwrap_or(&[]))
                }
            )*
        }
    };
}

tables! {
    /// Metadata entries, keys ascending.
    metadata: KvRec;
    /// Modalities (inputs).
    modalities: ModalityRec;
    /// Tensors (global index = `model.tensor_base + local`).
    tensors: TensorRec;
    /// Expert groups (global index = `model.group_base + local`).
    groups: GroupRec;
    /// Expert components (global index = `model.expert_base + local`).
    experts: ExpertRec;
    /// The `(group, component)` index into the expert records.
    components: ComponentRec;
    /// Tasks (global index = `model.task_base + local`).
    tasks: TaskRec;
    /// Task paths.
    paths: PathRec;
    /// Op programs.
    program: OpRec;
    /// Memory plan slots.
    slots: SlotRec;
    /// Blobs (global index = `model.blob_base + local`).
    blobs: BlobRec;
    /// Routing statistics (may be empty).
    stats: StatRec;
}

fn oob(field: &'static str, index: Option<u32>, offset: u64, len: u64, bound: u64) -> FormatError {
    FormatError::OutOfBounds {
        field,
        index,
        offset,
        len,
        bound,
    }
}

fn idx(i: usize) -> Option<u32> {
    Some(i as u32)
}

/// `offset + len` without overflow, as an `OutOfBounds` error when it does.
fn end(field: &'static str, index: Option<u32>, offset: u64, len: u64, bound: u64) -> Result<u64> {
    match offset.checked_add(len) {
        Some(e) if e <= bound => Ok(e),
        _ => Err(oob(field, index, offset, len, bound)),
    }
}

impl<'a> Package<'a> {
    /// Parses and validates a package. `bytes` may be longer than the package
    /// (trailing erased flash); it must start on a [`BASE_ALIGN`] boundary.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if !(bytes.as_ptr() as usize).is_multiple_of(BASE_ALIGN) {
            return Err(FormatError::Misaligned {
                required: BASE_ALIGN as u32,
            });
        }
        let have = bytes.len() as u64;
        let Some(hb) = bytes.first_chunk::<HEADER_LEN>() else {
            if bytes.len() >= 8 && bytes[..8] != MAGIC {
                return Err(FormatError::BadMagic);
            }
            return Err(FormatError::Truncated {
                field: "header",
                need: HEADER_LEN as u64,
                have,
            });
        };
        if hb[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let h = Header::decode(hb);
        if h.version_major != VERSION_MAJOR {
            return Err(FormatError::Version {
                found: h.version_major,
                supported: VERSION_MAJOR,
            });
        }
        steps::scan(120);
        let actual = xxhash_rust::xxh3::xxh3_64(&hb[..120]);
        if actual != h.header_checksum {
            return Err(FormatError::Checksum {
                field: "header",
                index: None,
                expected: h.header_checksum,
                actual,
            });
        }
        if hb[44..48] != [0; 4] || hb[80..120].iter().any(|&b| b != 0) {
            return Err(FormatError::invalid(
                "header.reserved",
                None,
                0,
                "reserved header bytes must be zero",
            ));
        }
        if (h.header_len as usize) < HEADER_LEN {
            return Err(FormatError::invalid(
                "header.header_len",
                None,
                h.header_len.into(),
                "must be >= 128",
            ));
        }
        if h.flags & !FLAG_DELTA != 0 {
            return Err(FormatError::Unsupported {
                field: "header.flags",
                value: h.flags.into(),
            });
        }
        let is_delta = h.flags & FLAG_DELTA != 0;
        if is_delta == (h.base_id == 0) {
            return Err(FormatError::invalid(
                "header.base_id",
                None,
                h.base_id,
                "must be non-zero exactly when the delta flag is set",
            ));
        }
        if !(MIN_ALIGN_LOG2..=MAX_ALIGN_LOG2).contains(&h.align_log2) {
            return Err(FormatError::invalid(
                "header.align_log2",
                None,
                h.align_log2.into(),
                "blob alignment must be 4 KiB..16 MiB",
            ));
        }
        if h.file_len > have {
            return Err(FormatError::Truncated {
                field: "header.file_len",
                need: h.file_len,
                have,
            });
        }
        let bytes = &bytes[..h.file_len as usize];
        let file_len = h.file_len;
        if h.data_off < u64::from(h.header_len) || !h.data_off.is_multiple_of(h.align()) {
            return Err(FormatError::invalid(
                "header.data_off",
                None,
                h.data_off,
                "must be blob-aligned and after the header",
            ));
        }
        let data_end = end("header.data_len", None, h.data_off, h.data_len, file_len)?;
        if data_end != file_len {
            return Err(FormatError::invalid(
                "header.data_len",
                None,
                h.data_len,
                "data region must end the file",
            ));
        }
        let meta_end = h.data_off;
        if h.section_count > MAX_SECTIONS {
            return Err(FormatError::invalid(
                "header.section_count",
                None,
                h.section_count.into(),
                "more than 64 sections",
            ));
        }
        if h.section_table_off < u64::from(h.header_len) {
            return Err(oob(
                "header.section_table_off",
                None,
                h.section_table_off,
                0,
                meta_end,
            ));
        }
        let st_end = end(
            "header.section_table_off",
            None,
            h.section_table_off,
            u64::from(h.section_count) * SectionRec::SIZE as u64,
            meta_end,
        )?;
        let meta = &bytes[h.header_len as usize..meta_end as usize];
        steps::scan(meta.len());
        let actual = xxhash_rust::xxh3::xxh3_64(meta);
        if actual != h.meta_checksum {
            return Err(FormatError::Checksum {
                field: "metadata",
                index: None,
                expected: h.meta_checksum,
                actual,
            });
        }
        let sections: Table<'_, SectionRec> =
            Table::new(&bytes[h.section_table_off as usize..st_end as usize]);

        // Locate each known section once; refuse duplicates and unknown required ones.
        const KINDS: usize = 15;
        let mut found: [Option<(usize, usize)>; KINDS] = [None; KINDS];
        for (i, s) in sections.iter().enumerate() {
            steps::add(1);
            let s_end = end("sections.len", idx(i), s.offset, s.len, meta_end)?;
            if s.offset < u64::from(h.header_len) {
                return Err(oob("sections.offset", idx(i), s.offset, s.len, meta_end));
            }
            if s.offset < st_end && s_end > h.section_table_off {
                return Err(FormatError::invalid(
                    "sections.offset",
                    idx(i),
                    s.offset,
                    "section overlaps the section table",
                ));
            }
            if s.flags & !section::FLAG_REQUIRED != 0 {
                return Err(FormatError::invalid(
                    "sections.flags",
                    idx(i),
                    s.flags.into(),
                    "unknown flag bits",
                ));
            }
            let k = s.kind as usize;
            if k == 0 || k >= KINDS {
                if s.flags & section::FLAG_REQUIRED != 0 {
                    return Err(FormatError::Unsupported {
                        field: "sections.kind",
                        value: s.kind.into(),
                    });
                }
                continue;
            }
            if found[k].is_some() {
                return Err(FormatError::invalid(
                    "sections.kind",
                    idx(i),
                    s.kind.into(),
                    "section kind listed twice",
                ));
            }
            found[k] = Some((s.offset as usize, s_end as usize));
        }
        let sect = |kind: u32, name: &'static str, rec: usize| -> Result<&'a [u8]> {
            let (a, b) =
                found[kind as usize].ok_or(FormatError::MissingSection { section: name })?;
            if (b - a) % rec != 0 {
                return Err(FormatError::invalid(
                    name,
                    None,
                    (b - a) as u64,
                    "section length is not a multiple of its record size",
                ));
            }
            Ok(&bytes[a..b])
        };
        let mr = sect(section::MODEL, "model", ModelRec::SIZE)?;
        if mr.len() != ModelRec::SIZE {
            return Err(FormatError::invalid(
                "model",
                None,
                mr.len() as u64,
                "exactly one record expected",
            ));
        }
        // Optional sections: absent means empty.
        let optional = |kind: u32, name: &'static str, rec: usize| -> Result<(usize, usize)> {
            match found[kind as usize] {
                Some(r) => {
                    sect(kind, name, rec)?;
                    Ok(r)
                }
                None => Ok((0, 0)),
            }
        };
        let range = |kind: u32, name: &'static str, rec: usize| -> Result<(usize, usize)> {
            sect(kind, name, rec)?;
            Ok(found[kind as usize].unwrap_or((0, 0)))
        };
        let layout = Layout {
            header: h,
            model: ModelRec::decode(mr),
            strings: range(section::STRINGS, "strings", 1)?,
            metadata: range(section::METADATA, "metadata", KvRec::SIZE)?,
            modalities: range(section::MODALITIES, "modalities", ModalityRec::SIZE)?,
            tensors: range(section::TENSORS, "tensors", TensorRec::SIZE)?,
            groups: range(section::GROUPS, "groups", GroupRec::SIZE)?,
            experts: range(section::EXPERTS, "experts", ExpertRec::SIZE)?,
            components: range(section::COMPONENTS, "components", ComponentRec::SIZE)?,
            tasks: range(section::TASKS, "tasks", TaskRec::SIZE)?,
            paths: range(section::PATHS, "paths", PathRec::SIZE)?,
            program: range(section::PROGRAM, "program", OpRec::SIZE)?,
            slots: range(section::SLOTS, "slots", SlotRec::SIZE)?,
            blobs: range(section::BLOBS, "blobs", BlobRec::SIZE)?,
            stats: optional(section::ROUTE_STATS, "route_stats", StatRec::SIZE)?,
        };
        let p = Package { bytes, layout };
        p.validate_tables()?;
        Ok(p)
    }

    fn validate_tables(&self) -> Result<()> {
        let m = &self.layout.model;
        let inv = FormatError::invalid;
        self.check_str("model.arch", 0, m.arch_off, m.arch_len)?;
        if [
            m.reserved0,
            m.reserved1,
            m.reserved2,
            m.reserved3,
            m.reserved4,
        ]
        .iter()
        .any(|&r| r != 0)
        {
            return Err(inv("model.reserved", None, 0, "must be zero"));
        }
        let bases = [
            ("model.tensor_base", m.tensor_base, self.tensors().len()),
            ("model.blob_base", m.blob_base, self.blobs().len()),
            ("model.task_base", m.task_base, self.tasks().len()),
            ("model.expert_base", m.expert_base, self.experts().len()),
            ("model.group_base", m.group_base, self.groups().len()),
        ];
        for (n, base, len) in bases {
            if !self.is_delta() && base != 0 {
                return Err(inv(
                    n,
                    None,
                    base.into(),
                    "index bases must be zero in a base package",
                ));
            }
            if u64::from(base) + len as u64 >= u64::from(u32::MAX) {
                return Err(inv(n, None, base.into(), "global indices overflow u32"));
            }
        }
        self.validate_metadata()?;

        let n_mod = self.modalities().len();
        if n_mod == 0 || n_mod > MAX_MODALITIES {
            return Err(inv(
                "modalities",
                None,
                n_mod as u64,
                "need 1..=32 modalities",
            ));
        }
        for (i, r) in self.modalities().iter().enumerate() {
            steps::add(1);
            self.check_str("modalities.name", i, r.name_off, r.name_len)?;
            if r.tokens == 0 || r.tokens > MAX_DIM {
                return Err(inv(
                    "modalities.tokens",
                    idx(i),
                    r.tokens.into(),
                    "must be in 1..=65536",
                ));
            }
            if r.features == 0 || r.features > MAX_DIM {
                return Err(inv(
                    "modalities.features",
                    idx(i),
                    r.features.into(),
                    "must be in 1..=65536",
                ));
            }
            match r.kind {
                input_kind::FEATURES => {}
                input_kind::TOKEN_IDS if r.features == 1 => {}
                input_kind::TOKEN_IDS => {
                    return Err(inv(
                        "modalities.features",
                        idx(i),
                        r.features.into(),
                        "token-id inputs have one feature",
                    ))
                }
                k => {
                    return Err(inv(
                        "modalities.kind",
                        idx(i),
                        k.into(),
                        "unknown input kind",
                    ))
                }
            }
            if r.reserved != 0 {
                return Err(inv(
                    "modalities.reserved",
                    idx(i),
                    r.reserved.into(),
                    "must be zero",
                ));
            }
        }

        let n_groups_global = u64::from(m.group_base) + self.groups().len() as u64;
        let n_tasks_global = u64::from(m.task_base) + self.tasks().len() as u64;
        for (i, g) in self.groups().iter().enumerate() {
            steps::add(1);
            self.check_str("groups.name", i, g.name_off, g.name_len)?;
            if g.experts == 0 || g.experts > MAX_EXPERTS {
                return Err(inv(
                    "groups.experts",
                    idx(i),
                    g.experts.into(),
                    "must be in 1..=256",
                ));
            }
            if g.top_k == 0 || g.top_k > g.experts.min(MAX_TOP_K) {
                return Err(inv(
                    "groups.top_k",
                    idx(i),
                    g.top_k.into(),
                    "must be in 1..=min(experts, 64)",
                ));
            }
            if ExpertKind::from_u32(g.kind).is_none() {
                return Err(FormatError::Unsupported {
                    field: "groups.kind",
                    value: g.kind.into(),
                });
            }
            if g.reserved0 != 0 || g.reserved1 != 0 || g.reserved2 != 0 {
                return Err(inv("groups.reserved", idx(i), 0, "must be zero"));
            }
        }

        // Blobs: aligned, inside the data region, in ascending order without overlap.
        let align = self.layout.header.align();
        let data_len = self.layout.header.data_len;
        let mut prev_end = 0u64;
        for (i, b) in self.blobs().iter().enumerate() {
            steps::add(1);
            if b.offset % align != 0 {
                return Err(inv(
                    "blobs.offset",
                    idx(i),
                    b.offset,
                    "not aligned to the blob alignment",
                ));
            }
            let e = end("blobs.len", idx(i), b.offset, b.len, data_len)?;
            if b.offset < prev_end {
                return Err(inv(
                    "blobs.offset",
                    idx(i),
                    b.offset,
                    "blobs must be in ascending order without overlap",
                ));
            }
            prev_end = e;
            if !(blob_kind::SHARED..=blob_kind::DATA).contains(&b.kind) {
                return Err(inv(
                    "blobs.kind",
                    idx(i),
                    b.kind.into(),
                    "unknown blob kind",
                ));
            }
            if b.format == 0 || u16::from(b.format) > format::MAX_ID {
                return Err(FormatError::Unsupported {
                    field: "blobs.format",
                    value: b.format.into(),
                });
            }
            if b.reserved0 != 0 || b.reserved1 != 0 {
                return Err(inv("blobs.reserved", idx(i), 0, "must be zero"));
            }
            let opt = |v: u16, bound: u64| v == NONE16 || u64::from(v) < bound;
            let is_expert = b.kind == blob_kind::EXPERT;
            if is_expert != (b.group != NONE16)
                || is_expert != (b.expert != NONE16)
                || (is_expert && b.component == NONE16)
            {
                return Err(inv(
                    "blobs.group",
                    idx(i),
                    b.group.into(),
                    "expert blobs, and only they, name a group, expert and component",
                ));
            }
            if !opt(b.group, n_groups_global) {
                return Err(inv("blobs.group", idx(i), b.group.into(), "no such group"));
            }
            if !opt(b.expert, MAX_EXPERTS.into()) {
                return Err(inv(
                    "blobs.expert",
                    idx(i),
                    b.expert.into(),
                    "no such expert",
                ));
            }
            if !opt(b.component, MAX_COMPONENTS.into()) {
                return Err(inv(
                    "blobs.component",
                    idx(i),
                    b.component.into(),
                    "beyond the last stage",
                ));
            }
            let owner_bound = match b.kind {
                blob_kind::HEAD => n_tasks_global,
                _ => n_mod as u64,
            };
            if !opt(b.owner, owner_bound) {
                return Err(inv(
                    "blobs.owner",
                    idx(i),
                    b.owner.into(),
                    "no such modality or task",
                ));
            }
        }

        for (i, t) in self.tensors().iter().enumerate() {
            steps::add(1);
            self.check_str("tensors.name", i, t.name_off, t.name_len)?;
            let blob = self.local_blob(t.blob).ok_or(inv(
                "tensors.blob",
                idx(i),
                t.blob.into(),
                "not a blob of this package",
            ))?;
            if t.format == 0 || t.format > format::MAX_ID {
                return Err(FormatError::Unsupported {
                    field: "tensors.format",
                    value: t.format.into(),
                });
            }
            if t.rows == 0 || t.cols == 0 {
                return Err(inv("tensors.rows", idx(i), 0, "empty tensor"));
            }
            if t.reserved != 0 {
                return Err(inv(
                    "tensors.reserved",
                    idx(i),
                    t.reserved.into(),
                    "must be zero",
                ));
            }
            let (rows, cols, rank) = (u64::from(t.rows), u64::from(t.cols), u64::from(t.rank));
            let check_range = |field, off: u32, bytes: u32| -> Result<()> {
                if !off.is_multiple_of(16) {
                    return Err(inv(
                        field,
                        idx(i),
                        off.into(),
                        "tensor data must be 16-byte aligned",
                    ));
                }
                end(field, idx(i), off.into(), bytes.into(), blob.len).map(|_| ())
            };
            // f32 sizes are known here; other formats' sizes are the kernel
            // layout's, checked by the runtime when it binds the kernel.
            let f32_size = |field, elems: u64, bytes: u32| -> Result<()> {
                // rows x cols of two u32s times 4 can pass 2^64: checked.
                if t.format == format::F32 && elems.checked_mul(4) != Some(u64::from(bytes)) {
                    return Err(inv(
                        field,
                        idx(i),
                        bytes.into(),
                        "f32 tensor bytes must be 4 x its elements",
                    ));
                }
                Ok(())
            };
            match t.layout {
                layout::DENSE => {
                    if t.rank != 0 || t.offset2 != 0 || t.bytes2 != 0 {
                        return Err(inv(
                            "tensors.rank",
                            idx(i),
                            t.rank.into(),
                            "dense tensors have rank 0",
                        ));
                    }
                    f32_size("tensors.bytes", rows * cols, t.bytes)?;
                    check_range("tensors.offset", t.offset, t.bytes)?;
                }
                layout::LOW_RANK => {
                    if t.rank == 0 || t.rank > MAX_DIM {
                        return Err(inv(
                            "tensors.rank",
                            idx(i),
                            t.rank.into(),
                            "low-rank tensors need rank in 1..=65536",
                        ));
                    }
                    f32_size("tensors.bytes", rows * rank, t.bytes)?;
                    f32_size("tensors.bytes2", rank * cols, t.bytes2)?;
                    check_range("tensors.offset", t.offset, t.bytes)?;
                    check_range("tensors.offset2", t.offset2, t.bytes2)?;
                }
                other => {
                    return Err(inv(
                        "tensors.layout",
                        idx(i),
                        other.into(),
                        "unknown layout",
                    ))
                }
            }
            if t.bytes == 0 {
                return Err(inv("tensors.bytes", idx(i), 0, "empty tensor data"));
            }
        }

        for (i, e) in self.experts().iter().enumerate() {
            steps::add(1);
            if u64::from(e.group) >= n_groups_global {
                return Err(inv(
                    "experts.group",
                    idx(i),
                    e.group.into(),
                    "no such group",
                ));
            }
            if let Some(g) = self.local_group(e.group) {
                if u32::from(e.expert) >= g.experts {
                    return Err(inv(
                        "experts.expert",
                        idx(i),
                        e.expert.into(),
                        "no such expert in its group",
                    ));
                }
                let kind = ExpertKind::from_u32(g.kind).map_or(0, |k| k.tensors());
                if e.tensor_count != kind {
                    return Err(inv(
                        "experts.tensor_count",
                        idx(i),
                        e.tensor_count.into(),
                        "not the tensor count of its group's expert kind",
                    ));
                }
            }
            if u32::from(e.component) >= MAX_COMPONENTS {
                return Err(inv(
                    "experts.component",
                    idx(i),
                    e.component.into(),
                    "beyond the last stage",
                ));
            }
            if e.reserved != 0 {
                return Err(inv(
                    "experts.reserved",
                    idx(i),
                    e.reserved.into(),
                    "must be zero",
                ));
            }
            let b = self.local_blob(e.blob).ok_or(inv(
                "experts.blob",
                idx(i),
                e.blob.into(),
                "not a blob of this package",
            ))?;
            if b.kind != blob_kind::EXPERT
                || u32::from(b.group) != e.group
                || b.expert != e.expert
                || b.component != e.component
            {
                return Err(inv(
                    "experts.blob",
                    idx(i),
                    e.blob.into(),
                    "not the expert blob of this group, expert and component",
                ));
            }
            if e.tensor_count == 0 || e.tensor_count > 64 {
                return Err(inv(
                    "experts.tensor_count",
                    idx(i),
                    e.tensor_count.into(),
                    "must be in 1..=64",
                ));
            }
            for k in 0..e.tensor_count {
                steps::add(1);
                let t = e
                    .tensor_start
                    .checked_add(k)
                    .and_then(|t| self.local_tensor(t));
                if t.is_none_or(|t| t.blob != e.blob) {
                    return Err(inv(
                        "experts.tensor_start",
                        idx(i),
                        e.tensor_start.into(),
                        "its tensors must be tensors of this package in its blob",
                    ));
                }
            }
        }

        // The (group, component) index: blocks of one record per expert, in
        // order, covering the expert table exactly, (group, component) ascending.
        let mut next = u64::from(m.expert_base);
        let mut prev: Option<(u32, u32)> = None;
        for (i, c) in self.components().iter().enumerate() {
            steps::add(1);
            if c.reserved != 0 {
                return Err(inv(
                    "components.reserved",
                    idx(i),
                    c.reserved.into(),
                    "must be zero",
                ));
            }
            if prev.is_some_and(|p| p >= (c.group, c.component)) {
                return Err(inv(
                    "components.group",
                    idx(i),
                    c.group.into(),
                    "(group, component) pairs must be strictly ascending",
                ));
            }
            prev = Some((c.group, c.component));
            if u64::from(c.first_expert) != next {
                return Err(inv(
                    "components.first_expert",
                    idx(i),
                    c.first_expert.into(),
                    "component blocks must cover the expert table in order",
                ));
            }
            let mut j = 0u32;
            while let Some(e) = self.local_expert(c.first_expert + j) {
                if (e.group, u32::from(e.component)) != (c.group, c.component) {
                    break;
                }
                if u32::from(e.expert) != j {
                    return Err(inv(
                        "experts.expert",
                        idx((c.first_expert + j - m.expert_base) as usize),
                        e.expert.into(),
                        "a component's experts must be listed 0, 1, 2, ...",
                    ));
                }
                j += 1;
            }
            if let Some(g) = self.local_group(c.group) {
                if j != g.experts {
                    return Err(inv(
                        "components.first_expert",
                        idx(i),
                        c.first_expert.into(),
                        "the block must hold one record for every expert of the group",
                    ));
                }
            }
            if j == 0 {
                return Err(inv(
                    "components.first_expert",
                    idx(i),
                    c.first_expert.into(),
                    "empty block",
                ));
            }
            next += u64::from(j);
        }
        if next != u64::from(m.expert_base) + self.experts().len() as u64 {
            return Err(inv(
                "components",
                None,
                next,
                "every expert record must belong to a component block",
            ));
        }

        for (i, o) in self.program().iter().enumerate() {
            steps::add(1);
            // A build without the decoder ops cannot read their arguments:
            // it opens the package and refuses the tasks that use them.
            if cfg!(feature = "decoder") || !crate::op::opcode::is_token_stream(o.opcode) {
                Op::decode(&o, i as u32)?;
            }
        }

        let mut prev_slots_end = 0u64;
        let mut prev_path_end = 0u64;
        for (i, t) in self.tasks().iter().enumerate() {
            steps::add(1);
            self.check_str("tasks.name", i, t.name_off, t.name_len)?;
            if t.stage >= MAX_COMPONENTS {
                return Err(inv(
                    "tasks.stage",
                    idx(i),
                    t.stage.into(),
                    "must be below 255",
                ));
            }
            if t.outputs == 0 || t.outputs > MAX_DIM {
                return Err(inv(
                    "tasks.outputs",
                    idx(i),
                    t.outputs.into(),
                    "must be in 1..=65536",
                ));
            }
            if t.modality_mask == 0 || (n_mod < 32 && t.modality_mask >> n_mod != 0) {
                return Err(inv(
                    "tasks.modality_mask",
                    idx(i),
                    t.modality_mask.into(),
                    "must name at least one modality, and only existing ones",
                ));
            }
            end(
                "tasks.program_len",
                idx(i),
                t.program_start.into(),
                t.program_len.into(),
                self.program().len() as u64,
            )?;
            if t.program_len == 0 {
                return Err(inv("tasks.program_len", idx(i), 0, "empty op program"));
            }
            if t.plan_tensors > t.program_len.saturating_mul(3) {
                return Err(inv(
                    "tasks.plan_tensors",
                    idx(i),
                    t.plan_tensors.into(),
                    "an op names at most three tensors",
                ));
            }
            let slots_end = end(
                "tasks.slot_count",
                idx(i),
                t.slot_start.into(),
                t.slot_count.into(),
                self.slots().len() as u64,
            )?;
            // Ascending, disjoint slot ranges keep validation linear (docs/FORMAT.md).
            if u64::from(t.slot_start) < prev_slots_end {
                return Err(inv(
                    "tasks.slot_start",
                    idx(i),
                    t.slot_start.into(),
                    "slot ranges of tasks must be ascending and disjoint",
                ));
            }
            prev_slots_end = slots_end;
            let path_end = end(
                "tasks.path_len",
                idx(i),
                t.path_start.into(),
                t.path_len.into(),
                self.paths().len() as u64,
            )?;
            if u64::from(t.path_start) < prev_path_end {
                return Err(inv(
                    "tasks.path_start",
                    idx(i),
                    t.path_start.into(),
                    "path ranges of tasks must be ascending and disjoint",
                ));
            }
            prev_path_end = path_end;
            if t.output_slot >= t.slot_count {
                return Err(inv(
                    "tasks.output_slot",
                    idx(i),
                    t.output_slot.into(),
                    "not a slot of the task",
                ));
            }
            if t.reserved != 0 {
                return Err(inv(
                    "tasks.reserved",
                    idx(i),
                    t.reserved.into(),
                    "must be zero",
                ));
            }
            let global = u64::from(m.task_base) + i as u64;
            let mut prev_key: Option<(u32, u32)> = None;
            for k in 0..t.path_len {
                steps::add(1);
                let p = self.paths().get((t.path_start + k) as usize).ok_or(oob(
                    "tasks.path_start",
                    idx(i),
                    t.path_start.into(),
                    t.path_len.into(),
                    self.paths().len() as u64,
                ))?;
                let at = idx((t.path_start + k) as usize);
                if u64::from(p.task) != global {
                    return Err(inv(
                        "paths.task",
                        at,
                        p.task.into(),
                        "not the task whose range holds it",
                    ));
                }
                if prev_key.is_some_and(|q| q >= (p.group, p.router)) {
                    return Err(inv(
                        "paths.router",
                        at,
                        p.router.into(),
                        "a task's (group, router) entries must be strictly ascending",
                    ));
                }
                prev_key = Some((p.group, p.router));
                if u64::from(p.group) >= n_groups_global {
                    return Err(inv("paths.group", at, p.group.into(), "no such group"));
                }
                if p.reserved != 0 {
                    return Err(inv("paths.reserved", at, p.reserved.into(), "must be zero"));
                }
                let mask = p.mask();
                let n = self.local_group(p.group).map_or(MAX_EXPERTS, |g| g.experts);
                if mask.is_empty() || !mask.within(n as usize) {
                    return Err(inv(
                        "paths.mask",
                        at,
                        mask.0[0],
                        "empty, or names experts beyond its group's",
                    ));
                }
            }
            if t.slot_bytes % 4 != 0 || t.slot_bytes > u64::from(u32::MAX) {
                return Err(inv(
                    "tasks.slot_bytes",
                    idx(i),
                    t.slot_bytes,
                    "must be a multiple of 4 below 4 GiB",
                ));
            }
            let elems = t.slot_bytes / 4;
            #[cfg(feature = "std")]
            let mut used = 0u64;
            for k in 0..t.slot_count {
                steps::add(1);
                let s = self.slots().get((t.slot_start + k) as usize).ok_or(oob(
                    "tasks.slot_start",
                    idx(i),
                    t.slot_start.into(),
                    t.slot_count.into(),
                    self.slots().len() as u64,
                ))?;
                end(
                    "tasks.slot_bytes",
                    idx(i),
                    s.offset.into(),
                    s.len.into(),
                    elems,
                )?;
                #[cfg(feature = "std")]
                {
                    used = used.max(u64::from(s.offset) + u64::from(s.len));
                }
                if s.kind > slot_kind::STATE {
                    return Err(inv(
                        "slots.kind",
                        idx((t.slot_start + k) as usize),
                        s.kind.into(),
                        "unknown slot kind",
                    ));
                }
            }
            // A host sizes a session's arena by slot_bytes: a value beyond
            // what the slots use would make every run allocate it. (Without
            // std the caller's static arena bounds it, and flash is short.)
            #[cfg(feature = "std")]
            if t.slot_bytes > (used * 4).next_multiple_of(64) + 64 {
                return Err(inv(
                    "tasks.slot_bytes",
                    idx(i),
                    t.slot_bytes,
                    "more than its slots use",
                ));
            }
        }
        for (i, s) in self.stats().iter().enumerate() {
            steps::add(1);
            if u64::from(s.task) >= n_tasks_global
                || u64::from(s.group) >= n_groups_global
                || s.expert >= MAX_EXPERTS
                || s.picks > s.samples
                || !(0.0..=1.0).contains(&s.mass)
            {
                return Err(inv(
                    "route_stats.task",
                    idx(i),
                    s.task.into(),
                    "statistics entry out of range",
                ));
            }
        }
        Ok(())
    }

    fn validate_metadata(&self) -> Result<()> {
        let inv = FormatError::invalid;
        let mut prev: Option<&[u8]> = None;
        for (i, kv) in self.metadata().iter().enumerate() {
            steps::add(1);
            self.check_str("metadata.key", i, kv.key_off, kv.key_len)?;
            let key = self.str(kv.key_off, kv.key_len).as_bytes();
            if prev.is_some_and(|p| p >= key) {
                return Err(inv(
                    "metadata.key",
                    idx(i),
                    kv.key_off.into(),
                    "keys must be strictly ascending (each key once)",
                ));
            }
            prev = Some(key);
            if kv.reserved != 0 {
                return Err(inv(
                    "metadata.reserved",
                    idx(i),
                    kv.reserved.into(),
                    "must be zero",
                ));
            }
            let hi = kv.value >> 32;
            let ok = match kv.vtype {
                kv_type::U32 | kv_type::I32 => hi == 0,
                kv_type::F32 => hi == 0 && f32::from_bits(kv.value as u32).is_finite(),
                kv_type::F64 => f64::from_bits(kv.value).is_finite(),
                kv_type::U64 => true,
                kv_type::BOOL => kv.value <= 1,
                kv_type::STR => {
                    self.check_str("metadata.value", i, kv.value as u32, hi as u32)?;
                    true
                }
                _ => {
                    return Err(FormatError::Unsupported {
                        field: "metadata.vtype",
                        value: kv.vtype.into(),
                    })
                }
            };
            if !ok {
                return Err(inv(
                    "metadata.value",
                    idx(i),
                    kv.value,
                    "not a valid value of its type (finite floats, 32-bit values, bools 0/1)",
                ));
            }
        }
        Ok(())
    }

    fn check_str(&self, field: &'static str, i: usize, off: u32, len: u32) -> Result<()> {
        if len > MAX_NAME_LEN {
            return Err(FormatError::invalid(
                field,
                idx(i),
                len.into(),
                "name longer than 256 bytes",
            ));
        }
        let e = end(
            field,
            idx(i),
            off.into(),
            len.into(),
            self.strings().len() as u64,
        )?;
        steps::scan(len as usize);
        if len == 0 || core::str::from_utf8(&self.strings()[off as usize..e as usize]).is_err() {
            return Err(FormatError::invalid(
                field,
                idx(i),
                off.into(),
                "empty or not UTF-8",
            ));
        }
        Ok(())
    }

    fn local_blob(&self, global: u32) -> Option<BlobRec> {
        self.blobs()
            .get(global.checked_sub(self.layout.model.blob_base)? as usize)
    }

    /// Tensor by global index, if it belongs to this package.
    pub fn local_tensor(&self, global: u32) -> Option<TensorRec> {
        self.tensors()
            .get(global.checked_sub(self.layout.model.tensor_base)? as usize)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.layout.header
    }
    /// The model record (architecture tag, index bases).
    pub fn model(&self) -> &ModelRec {
        &self.layout.model
    }
    /// The architecture tag (`"flame"`, `"mixtral"`, ...).
    pub fn arch(&self) -> &'a str {
        self.str(self.layout.model.arch_off, self.layout.model.arch_len)
    }
    /// Every metadata entry as `(key, value)`, keys ascending.
    pub fn meta_entries(&self) -> impl Iterator<Item = (&'a str, MetaValue<'a>)> + 'a {
        let p = *self;
        self.metadata()
            .iter()
            .map(move |kv| (p.str(kv.key_off, kv.key_len), p.meta_value(&kv)))
    }
    /// The metadata value of `key` (a binary search: keys are ascending).
    pub fn meta(&self, key: &str) -> Option<MetaValue<'a>> {
        let t = self.metadata();
        let (mut lo, mut hi) = (0, t.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let kv = t.get(mid)?;
            match self
                .str(kv.key_off, kv.key_len)
                .as_bytes()
                .cmp(key.as_bytes())
            {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => return Some(self.meta_value(&kv)),
            }
        }
        None
    }
    fn meta_value(&self, kv: &KvRec) -> MetaValue<'a> {
        let lo = kv.value as u32;
        match kv.vtype {
            kv_type::U32 => MetaValue::U32(lo),
            kv_type::I32 => MetaValue::I32(lo as i32),
            kv_type::F32 => MetaValue::F32(f32::from_bits(lo)),
            kv_type::F64 => MetaValue::F64(f64::from_bits(kv.value)),
            kv_type::BOOL => MetaValue::Bool(kv.value != 0),
            kv_type::STR => MetaValue::Str(self.str(lo, (kv.value >> 32) as u32)),
            _ => MetaValue::U64(kv.value),
        }
    }
    /// Group by global index, if it belongs to this package.
    pub fn local_group(&self, global: u32) -> Option<GroupRec> {
        self.groups()
            .get(global.checked_sub(self.layout.model.group_base)? as usize)
    }
    /// Expert record by global index, if it belongs to this package.
    pub fn local_expert(&self, global: u32) -> Option<ExpertRec> {
        self.experts()
            .get(global.checked_sub(self.layout.model.expert_base)? as usize)
    }
    /// Where the tables lie, to re-view the same bytes later with [`Package::view`].
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Re-views bytes that [`Package::parse`] validated into `layout`, without
    /// re-validating. Accessors stay memory-safe on other bytes (they return
    /// empty tables), so a mix-up can give wrong answers but never UB or panics;
    /// it is refused when the length differs.
    pub fn view(bytes: &'a [u8], layout: Layout) -> Option<Self> {
        let bytes = bytes.get(..layout.header.file_len as usize)?;
        Some(Self { bytes, layout })
    }
    /// The section table.
    pub fn sections(&self) -> Table<'a, SectionRec> {
        let h = &self.layout.header;
        let start = h.section_table_off as usize;
        let len = h.section_count as usize * SectionRec::SIZE;
        Table::new(self.bytes.get(start..start + len).unwrap_or(&[]))
    }
    fn strings(&self) -> &'a [u8] {
        let (a, b) = self.layout.strings;
        self.bytes.get(a..b).unwrap_or(&[])
    }
    /// Whether this is a delta pack.
    pub fn is_delta(&self) -> bool {
        self.layout.header.flags & FLAG_DELTA != 0
    }
    /// The package id: the metadata checksum, which covers every blob checksum.
    pub fn id(&self) -> u64 {
        self.layout.header.meta_checksum
    }
    /// The whole package.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// A validated string (empty on a bad reference, which validation rules out).
    pub fn str(&self, off: u32, len: u32) -> &'a str {
        let (a, b) = (off as usize, (off as usize).saturating_add(len as usize));
        self.strings()
            .get(a..b)
            .and_then(|s| core::str::from_utf8(s).ok())
            .unwrap_or("")
    }
    /// Bytes of blob `local` (local index), unchecked against its checksum.
    pub fn blob_bytes(&self, local: usize) -> Option<&'a [u8]> {
        let b = self.blobs().get(local)?;
        // Checked: a `view` over other bytes may hold any offsets.
        let start = self.layout.header.data_off.checked_add(b.offset)?;
        let end = start.checked_add(b.len)?;
        self.bytes
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
    /// File offset of blob `local`.
    pub fn blob_file_offset(&self, local: usize) -> Option<u64> {
        self.layout
            .header
            .data_off
            .checked_add(self.blobs().get(local)?.offset)
    }
    /// Checks blob `local`'s checksum.
    pub fn verify_blob(&self, local: usize) -> Result<()> {
        let rec = self.blobs().get(local).ok_or(FormatError::invalid(
            "blobs",
            None,
            local as u64,
            "no such blob",
        ))?;
        let bytes = self.blob_bytes(local).unwrap_or(&[]);
        let actual = xxhash_rust::xxh3::xxh3_64(bytes);
        if actual != rec.checksum {
            return Err(FormatError::Checksum {
                field: "blobs",
                index: idx(local),
                expected: rec.checksum,
                actual,
            });
        }
        Ok(())
    }
    /// Checks every blob checksum (the header, metadata and tables were checked by `parse`).
    pub fn verify_all(&self) -> Result<()> {
        (0..self.blobs().len()).try_for_each(|i| self.verify_blob(i))
    }
    /// The f32 values of a local tensor's first factor (`U` for low-rank, the
    /// whole tensor for dense) and second factor (`V`, empty for dense).
    pub fn tensor_f32(&self, t: &TensorRec) -> Result<(&'a [f32], &'a [f32])> {
        let local = t
            .blob
            .checked_sub(self.layout.model.blob_base)
            .ok_or(FormatError::invalid(
                "tensors.blob",
                None,
                t.blob.into(),
                "not a blob of this package",
            ))?;
        let blob = self.blob_bytes(local as usize).ok_or(FormatError::invalid(
            "tensors.blob",
            None,
            t.blob.into(),
            "no such blob",
        ))?;
        tensor_data(t, blob)
    }

    /// Checks that every value of local tensor `local` is finite: its f32
    /// or f16 values, or the scales (and zero points) its packed format
    /// stores ([`crate::weight::first_non_finite`]). A NaN scale passes every
    /// checksum and turns every output into NaN, so `verify` refuses it.
    ///
    /// The error is [`FormatError::Invalid`] on `tensors.data` with the
    /// tensor's local index and the row-major index of the first bad value
    /// (of `U` and then `V` for a low-rank tensor, `V` counted after `U`).
    /// Reads the whole tensor; not for the inference path.
    pub fn check_tensor_finite(&self, local: usize) -> Result<()> {
        let t = self.tensors().get(local).ok_or(FormatError::invalid(
            "tensors",
            None,
            local as u64,
            "no such tensor",
        ))?;
        let at = idx(local);
        let blob = t
            .blob
            .checked_sub(self.layout.model.blob_base)
            .and_then(|b| self.blob_bytes(b as usize))
            .ok_or(FormatError::invalid(
                "tensors.blob",
                at,
                t.blob.into(),
                "not a blob of this package",
            ))?;
        let fmt = crate::WeightFormat::from_u16(t.format).ok_or(FormatError::Unsupported {
            field: "tensors.format",
            value: t.format.into(),
        })?;
        let (a, b) = tensor_raw(&t, blob)?;
        let (rows, cols, rank) = (t.rows as usize, t.cols as usize, t.rank as usize);
        let factors: [(usize, usize, &[u8]); 2] = if t.layout == layout::LOW_RANK {
            [(rows, rank, a), (rank, cols, b)]
        } else {
            [(rows, cols, a), (0, 0, &[])]
        };
        let mut before = 0u64;
        for (r, c, bytes) in factors {
            match crate::weight::first_non_finite(fmt, r, c, bytes) {
                Ok(None) => before += (r * c) as u64,
                Ok(Some(i)) => {
                    return Err(FormatError::invalid(
                        "tensors.data",
                        at,
                        before + i as u64,
                        "value (or its scale) is NaN or infinite",
                    ))
                }
                Err(_) => {
                    return Err(FormatError::invalid(
                        "tensors.bytes",
                        at,
                        bytes.len() as u64,
                        "do not match the tensor's format layout",
                    ))
                }
            }
        }
        Ok(())
    }

    /// [`Package::check_tensor_finite`] for every tensor, in table order.
    /// (Float metadata values are checked by [`Package::parse`].)
    pub fn check_finite(&self) -> Result<()> {
        (0..self.tensors().len()).try_for_each(|i| self.check_tensor_finite(i))
    }
}

/// The raw bytes of tensor `t` inside `blob` (its blob's bytes, from the
/// package or from a RAM copy): `(dense or U, V or empty)`.
pub fn tensor_raw<'b>(t: &TensorRec, blob: &'b [u8]) -> Result<(&'b [u8], &'b [u8])> {
    let get = |off: u32, bytes: u32| -> Result<&'b [u8]> {
        let e = end(
            "tensors.offset",
            None,
            off.into(),
            bytes.into(),
            blob.len() as u64,
        )?;
        Ok(&blob[off as usize..e as usize])
    };
    if t.layout == layout::LOW_RANK {
        Ok((get(t.offset, t.bytes)?, get(t.offset2, t.bytes2)?))
    } else {
        Ok((get(t.offset, t.bytes)?, &[]))
    }
}

/// The f32 data of tensor `t` inside `blob` (its blob's bytes, from the
/// package or from a RAM copy): `(dense or U, V or empty)`. Fails, never
/// panics, when the ranges leave the blob or the bytes are misaligned.
pub fn tensor_data<'b>(t: &TensorRec, blob: &'b [u8]) -> Result<(&'b [f32], &'b [f32])> {
    if t.format != format::F32 {
        return Err(FormatError::invalid(
            "tensors.format",
            None,
            t.format.into(),
            "not an f32 tensor",
        ));
    }
    let (a, b) = tensor_raw(t, blob)?;
    let cast = |x: &'b [u8]| -> Result<&'b [f32]> {
        if x.is_empty() {
            // An empty byte slice may dangle at an odd address.
            return Ok(&[]);
        }
        bytemuck::try_cast_slice(x).map_err(|_| FormatError::Misaligned { required: 4 })
    };
    Ok((cast(a)?, cast(b)?))
}
