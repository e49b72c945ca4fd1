//! The validating, zero-copy package reader.

use core::marker::PhantomData;

use crate::error::{FormatError, Result};
use crate::records::*;
use crate::steps;
use crate::Opcode;

/// Package magic: non-ASCII first byte, then "TPK", then CR LF SUB LF so that
/// text-mode transfers and truncated copies are caught (as PNG does).
pub const MAGIC: [u8; 8] = *b"\x89TPK\r\n\x1a\n";
/// Major version this reader implements; a breaking change bumps it.
pub const VERSION_MAJOR: u16 = 1;
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
/// Most experts (bits of `PathRec::mask`).
pub const MAX_EXPERTS: u32 = 64;
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
    hparams: HParams,
    strings: (usize, usize),
    modalities: (usize, usize),
    tensors: (usize, usize),
    experts: (usize, usize),
    tasks: (usize, usize),
    routers: (usize, usize),
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
    /// Modalities.
    modalities: ModalityRec;
    /// Tensors (global index = `hparams.tensor_base + local`).
    tensors: TensorRec;
    /// Expert components.
    experts: ExpertRec;
    /// Tasks (global index = `hparams.task_base + local`).
    tasks: TaskRec;
    /// Router heads.
    routers: RouterRec;
    /// Task paths.
    paths: PathRec;
    /// Op programs.
    program: OpRec;
    /// Memory plan slots.
    slots: SlotRec;
    /// Blobs (global index = `hparams.blob_base + local`).
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
            return Err(FormatError::Unsupported {
                field: "header.version_major",
                value: h.version_major.into(),
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
        const KINDS: usize = 13;
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
        let hp = sect(section::HPARAMS, "hparams", HParams::SIZE)?;
        if hp.len() != HParams::SIZE {
            return Err(FormatError::invalid(
                "hparams",
                None,
                hp.len() as u64,
                "exactly one record expected",
            ));
        }
        let stats = match found[section::ROUTE_STATS as usize] {
            Some(r) => {
                sect(section::ROUTE_STATS, "route_stats", StatRec::SIZE)?;
                r
            }
            None => (0, 0),
        };
        let range = |kind: u32, name: &'static str, rec: usize| -> Result<(usize, usize)> {
            sect(kind, name, rec)?;
            Ok(found[kind as usize].unwrap_or((0, 0)))
        };
        let layout = Layout {
            header: h,
            hparams: HParams::decode(hp),
            strings: range(section::STRINGS, "strings", 1)?,
            modalities: range(section::MODALITIES, "modalities", ModalityRec::SIZE)?,
            tensors: range(section::TENSORS, "tensors", TensorRec::SIZE)?,
            experts: range(section::EXPERTS, "experts", ExpertRec::SIZE)?,
            tasks: range(section::TASKS, "tasks", TaskRec::SIZE)?,
            routers: range(section::ROUTERS, "routers", RouterRec::SIZE)?,
            paths: range(section::PATHS, "paths", PathRec::SIZE)?,
            program: range(section::PROGRAM, "program", OpRec::SIZE)?,
            slots: range(section::SLOTS, "slots", SlotRec::SIZE)?,
            blobs: range(section::BLOBS, "blobs", BlobRec::SIZE)?,
            stats,
        };
        let p = Package { bytes, layout };
        p.validate_tables()?;
        Ok(p)
    }

    fn validate_tables(&self) -> Result<()> {
        let hp = &self.layout.hparams;
        let inv = FormatError::invalid;
        let dims = [
            ("hparams.d_model", hp.d_model),
            ("hparams.heads", hp.heads),
            ("hparams.ffn_hidden", hp.ffn_hidden),
        ];
        for (f, v) in dims {
            if v == 0 || v > MAX_DIM {
                return Err(inv(f, None, v.into(), "must be in 1..=65536"));
            }
        }
        if !hp.d_model.is_multiple_of(hp.heads) {
            return Err(inv(
                "hparams.heads",
                None,
                hp.heads.into(),
                "must divide d_model",
            ));
        }
        if hp.experts == 0 || hp.experts > MAX_EXPERTS {
            return Err(inv(
                "hparams.experts",
                None,
                hp.experts.into(),
                "must be in 1..=64",
            ));
        }
        if hp.top_k == 0 || hp.top_k > hp.experts {
            return Err(inv(
                "hparams.top_k",
                None,
                hp.top_k.into(),
                "must be in 1..=experts",
            ));
        }
        if hp.stages == 0 || hp.stages > 255 {
            return Err(inv(
                "hparams.stages",
                None,
                hp.stages.into(),
                "must be in 1..=255",
            ));
        }
        if hp.gating > gating::SOFTMAX {
            return Err(inv(
                "hparams.gating",
                None,
                hp.gating.into(),
                "unknown gate function",
            ));
        }
        if !(hp.ln_eps.is_finite() && hp.ln_eps > 0.0) {
            return Err(inv(
                "hparams.ln_eps",
                None,
                u64::from(hp.ln_eps.to_bits()),
                "must be finite and > 0",
            ));
        }
        if hp.reserved0 != 0 || hp.reserved1 != 0 {
            return Err(inv("hparams.reserved", None, 0, "must be zero"));
        }
        let is_delta = self.is_delta();
        let bases = [
            hp.tensor_base,
            hp.blob_base,
            hp.task_base,
            hp.expert_base,
            hp.router_base,
        ];
        if !is_delta && bases.iter().any(|&b| b != 0) {
            return Err(inv(
                "hparams.tensor_base",
                None,
                0,
                "index bases must be zero in a base package",
            ));
        }
        for (n, b) in [
            (
                "hparams.tensor_base",
                (hp.tensor_base, self.tensors().len()),
            ),
            ("hparams.blob_base", (hp.blob_base, self.blobs().len())),
            ("hparams.task_base", (hp.task_base, self.tasks().len())),
            (
                "hparams.expert_base",
                (hp.expert_base, self.experts().len()),
            ),
            (
                "hparams.router_base",
                (hp.router_base, self.routers().len()),
            ),
        ] {
            if u64::from(b.0) + b.1 as u64 >= u64::from(u32::MAX) {
                return Err(inv(n, None, b.0.into(), "global indices overflow u32"));
            }
        }

        let n_mod = self.modalities().len();
        if n_mod == 0 || n_mod > MAX_MODALITIES {
            return Err(inv(
                "modalities",
                None,
                n_mod as u64,
                "need 1..=32 modalities",
            ));
        }
        for (i, m) in self.modalities().iter().enumerate() {
            steps::add(1);
            self.check_str("modalities.name", i, m.name_off, m.name_len)?;
            if m.tokens == 0 || m.tokens > MAX_DIM {
                return Err(inv(
                    "modalities.tokens",
                    idx(i),
                    m.tokens.into(),
                    "must be in 1..=65536",
                ));
            }
            if m.features == 0 || m.features > MAX_DIM {
                return Err(inv(
                    "modalities.features",
                    idx(i),
                    m.features.into(),
                    "must be in 1..=65536",
                ));
            }
        }

        // Blobs: aligned, inside the data region, in ascending order without overlap.
        let align = self.layout.header.align();
        let data_len = self.layout.header.data_len;
        let mut prev_end = 0u64;
        let n_tasks_global = u64::from(hp.task_base) + self.tasks().len() as u64;
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
            if !(blob_kind::TRUNK..=blob_kind::HEAD).contains(&b.kind) {
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
            if !opt(b.modality, n_mod as u64) {
                return Err(inv(
                    "blobs.modality",
                    idx(i),
                    b.modality.into(),
                    "no such modality",
                ));
            }
            if !opt(b.expert, hp.experts.into()) {
                return Err(inv(
                    "blobs.expert",
                    idx(i),
                    b.expert.into(),
                    "no such expert",
                ));
            }
            if !opt(b.component, hp.stages.into()) {
                return Err(inv(
                    "blobs.component",
                    idx(i),
                    b.component.into(),
                    "beyond the last stage",
                ));
            }
            if !opt(b.task, n_tasks_global) {
                return Err(inv("blobs.task", idx(i), b.task.into(), "no such task"));
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

        let (d, n, hdim) = (hp.d_model, hp.experts, hp.ffn_hidden);
        for (i, e) in self.experts().iter().enumerate() {
            steps::add(1);
            if u32::from(e.expert) >= n {
                return Err(inv(
                    "experts.expert",
                    idx(i),
                    e.expert.into(),
                    "no such expert slot",
                ));
            }
            if u32::from(e.component) >= hp.stages {
                return Err(inv(
                    "experts.component",
                    idx(i),
                    e.component.into(),
                    "beyond the last stage",
                ));
            }
            self.local_blob(e.blob).ok_or(inv(
                "experts.blob",
                idx(i),
                e.blob.into(),
                "not a blob of this package",
            ))?;
            for (f, t, r, c) in [
                ("experts.conv_w", e.conv_w, d, 3 * d),
                ("experts.conv_b", e.conv_b, 1, d),
                ("experts.ln_g", e.ln_g, 1, d),
                ("experts.ln_b", e.ln_b, 1, d),
                ("experts.fc1_w", e.fc1_w, hdim, d),
                ("experts.fc1_b", e.fc1_b, 1, hdim),
                ("experts.fc2_w", e.fc2_w, d, hdim),
                ("experts.fc2_b", e.fc2_b, 1, d),
            ] {
                self.check_tensor(f, i, t, e.blob, r, c)?;
            }
        }
        for (i, r) in self.routers().iter().enumerate() {
            steps::add(1);
            if usize::from(r.modality) >= n_mod {
                return Err(inv(
                    "routers.modality",
                    idx(i),
                    r.modality.into(),
                    "no such modality",
                ));
            }
            if u32::from(r.head) >= hp.stages {
                return Err(inv(
                    "routers.head",
                    idx(i),
                    r.head.into(),
                    "beyond the last stage",
                ));
            }
            self.local_blob(r.blob).ok_or(inv(
                "routers.blob",
                idx(i),
                r.blob.into(),
                "not a blob of this package",
            ))?;
            self.check_tensor("routers.query", i, r.query, r.blob, 1, d)?;
            self.check_tensor("routers.gate", i, r.gate, r.blob, n, d)?;
        }
        for (i, p) in self.paths().iter().enumerate() {
            steps::add(1);
            if u64::from(p.task) < u64::from(hp.task_base) || u64::from(p.task) >= n_tasks_global {
                return Err(inv(
                    "paths.task",
                    idx(i),
                    p.task.into(),
                    "not a task of this package",
                ));
            }
            if p.modality as usize >= n_mod {
                return Err(inv(
                    "paths.modality",
                    idx(i),
                    p.modality.into(),
                    "no such modality",
                ));
            }
            let valid = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            if p.mask == 0 || p.mask & !valid != 0 {
                return Err(inv(
                    "paths.mask",
                    idx(i),
                    p.mask,
                    "must name at least one expert and no expert beyond N",
                ));
            }
        }
        for (i, s) in self.slots().iter().enumerate() {
            steps::add(1);
            end(
                "slots.len",
                idx(i),
                s.offset.into(),
                s.len.into(),
                u32::MAX.into(),
            )?;
        }
        for (i, o) in self.program().iter().enumerate() {
            steps::add(1);
            if Opcode::from_u16(o.opcode).is_none() {
                return Err(inv(
                    "program.opcode",
                    idx(i),
                    o.opcode.into(),
                    "unknown opcode",
                ));
            }
            if o.flags != 0 {
                return Err(inv("program.flags", idx(i), o.flags.into(), "must be zero"));
            }
        }
        let mod_bits = if n_mod == 32 {
            u32::MAX
        } else {
            (1u32 << n_mod) - 1
        };
        let mut prev_slots_end = 0u64;
        for (i, t) in self.tasks().iter().enumerate() {
            steps::add(1);
            self.check_str("tasks.name", i, t.name_off, t.name_len)?;
            if t.stage >= hp.stages {
                return Err(inv(
                    "tasks.stage",
                    idx(i),
                    t.stage.into(),
                    "beyond the last stage",
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
            if t.modality_mask == 0 || t.modality_mask & !mod_bits != 0 {
                return Err(inv(
                    "tasks.modality_mask",
                    idx(i),
                    t.modality_mask.into(),
                    "must name 1+ existing modalities",
                ));
            }
            let hb = self.local_blob(t.head_blob).ok_or(inv(
                "tasks.head_blob",
                idx(i),
                t.head_blob.into(),
                "not a blob of this package",
            ))?;
            if hb.kind != blob_kind::HEAD {
                return Err(inv(
                    "tasks.head_blob",
                    idx(i),
                    t.head_blob.into(),
                    "not a head blob",
                ));
            }
            end(
                "tasks.program_len",
                idx(i),
                t.program_start.into(),
                t.program_len.into(),
                self.program().len() as u64,
            )?;
            let slots_end = end(
                "tasks.slot_count",
                idx(i),
                t.slot_start.into(),
                t.slot_count.into(),
                self.slots().len() as u64,
            )?;
            // Disjoint, ascending slot ranges keep the per-slot checks below
            // linear in the slot table: tasks sharing one long range would
            // cost tasks x slots.
            if u64::from(t.slot_start) < prev_slots_end {
                return Err(inv(
                    "tasks.slot_start",
                    idx(i),
                    t.slot_start.into(),
                    "slot ranges of tasks must be ascending and disjoint",
                ));
            }
            prev_slots_end = slots_end;
            end(
                "tasks.path_len",
                idx(i),
                t.path_start.into(),
                t.path_len.into(),
                self.paths().len() as u64,
            )?;
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
            if t.path_len != t.modality_mask.count_ones() {
                return Err(inv(
                    "tasks.path_len",
                    idx(i),
                    t.path_len.into(),
                    "must equal the number of the task's modalities",
                ));
            }
            let global = u64::from(hp.task_base) + i as u64;
            let mut seen = 0u32;
            for k in 0..t.path_len {
                steps::add(1);
                let p = self.paths().get((t.path_start + k) as usize).ok_or(oob(
                    "tasks.path_start",
                    idx(i),
                    t.path_start.into(),
                    t.path_len.into(),
                    self.paths().len() as u64,
                ))?;
                let bit = 1u32 << p.modality;
                if u64::from(p.task) != global || t.modality_mask & bit == 0 || seen & bit != 0 {
                    return Err(inv(
                        "tasks.path_start",
                        idx(i),
                        t.path_start.into(),
                        "path entries must be one per task modality",
                    ));
                }
                seen |= bit;
            }
            let arena_elems = t.arena_bytes / 4;
            if t.arena_bytes % 4 != 0 || t.arena_bytes > u64::from(u32::MAX) {
                return Err(inv(
                    "tasks.arena_bytes",
                    idx(i),
                    t.arena_bytes,
                    "must be a multiple of 4 below 4 GiB",
                ));
            }
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
                    "tasks.arena_bytes",
                    idx(i),
                    s.offset.into(),
                    s.len.into(),
                    arena_elems,
                )?;
            }
        }
        for (i, s) in self.stats().iter().enumerate() {
            steps::add(1);
            if u64::from(s.task) >= n_tasks_global
                || s.modality as usize >= n_mod
                || s.expert >= n
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

    /// Tensor `t` (global) must be a local tensor of shape `[rows, cols]` in blob `blob`.
    fn check_tensor(
        &self,
        field: &'static str,
        i: usize,
        t: u32,
        blob: u32,
        rows: u32,
        cols: u32,
    ) -> Result<()> {
        let rec = self.local_tensor(t).ok_or(FormatError::invalid(
            field,
            idx(i),
            t.into(),
            "not a tensor of this package",
        ))?;
        if rec.blob != blob {
            return Err(FormatError::invalid(
                field,
                idx(i),
                t.into(),
                "tensor lies outside the record's blob",
            ));
        }
        if rec.rows != rows || rec.cols != cols {
            return Err(FormatError::invalid(
                field,
                idx(i),
                u64::from(rec.rows) << 32 | u64::from(rec.cols),
                "tensor shape does not match the hyper-parameters",
            ));
        }
        Ok(())
    }

    fn local_blob(&self, global: u32) -> Option<BlobRec> {
        self.blobs()
            .get(global.checked_sub(self.layout.hparams.blob_base)? as usize)
    }

    /// Tensor by global index, if it belongs to this package.
    pub fn local_tensor(&self, global: u32) -> Option<TensorRec> {
        self.tensors()
            .get(global.checked_sub(self.layout.hparams.tensor_base)? as usize)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.layout.header
    }
    /// The hyper-parameters.
    pub fn hparams(&self) -> &HParams {
        &self.layout.hparams
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
        let local =
            t.blob
                .checked_sub(self.layout.hparams.blob_base)
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
