//! Package writer (std): tables in, one aligned `.tpk` byte image out.

use std::collections::HashMap;
use std::vec::Vec;

use crate::records::*;
use crate::{Header, FLAG_DELTA, HEADER_LEN, MIN_ALIGN_LOG2, VERSION_MAJOR, VERSION_MINOR};

/// Collects tables and blobs, then lays out a package.
#[derive(Debug, Default)]
pub struct PackageWriter {
    strings: Vec<u8>,
    string_index: HashMap<String, (u32, u32)>,
    /// The model record (architecture tag and index bases; see [`Self::arch`]).
    pub model: ModelRec,
    /// Metadata entries (any order: [`Self::finish`] sorts them by key).
    pub metadata: Vec<KvRec>,
    /// Modalities.
    pub modalities: Vec<ModalityRec>,
    /// Tensors.
    pub tensors: Vec<TensorRec>,
    /// Expert groups.
    pub groups: Vec<GroupRec>,
    /// Expert components.
    pub experts: Vec<ExpertRec>,
    /// The `(group, component)` index.
    pub components: Vec<ComponentRec>,
    /// Tasks.
    pub tasks: Vec<TaskRec>,
    /// Paths.
    pub paths: Vec<PathRec>,
    /// Op program.
    pub program: Vec<OpRec>,
    /// Slots.
    pub slots: Vec<SlotRec>,
    /// Blob records (offset, length and checksum are filled in by [`Self::finish`]) and bytes.
    pub blobs: Vec<(BlobRec, Vec<u8>)>,
    /// Routing statistics.
    pub stats: Vec<StatRec>,
}

fn table<R: Record>(rows: &[R]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * R::SIZE);
    for r in rows {
        r.encode(&mut out);
    }
    out
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl PackageWriter {
    /// Interns a string; returns `(offset, len)` for a record.
    pub fn string(&mut self, s: &str) -> (u32, u32) {
        if let Some(&r) = self.string_index.get(s) {
            return r;
        }
        let r = (self.strings.len() as u32, s.len() as u32);
        self.strings.extend_from_slice(s.as_bytes());
        self.string_index.insert(s.to_string(), r);
        r
    }

    /// Sets the architecture tag.
    pub fn arch(&mut self, tag: &str) {
        (self.model.arch_off, self.model.arch_len) = self.string(tag);
    }

    /// Adds metadata entry `key = value`.
    pub fn meta(&mut self, key: &str, value: crate::MetaValue<'_>) {
        use crate::MetaValue as V;
        let (vtype, value) = match value {
            V::U32(v) => (kv_type::U32, u64::from(v)),
            V::I32(v) => (kv_type::I32, u64::from(v as u32)),
            V::U64(v) => (kv_type::U64, v),
            V::F32(v) => (kv_type::F32, u64::from(v.to_bits())),
            V::F64(v) => (kv_type::F64, v.to_bits()),
            V::Bool(v) => (kv_type::BOOL, u64::from(v)),
            V::Str(v) => {
                let (off, len) = self.string(v);
                (kv_type::STR, u64::from(off) | u64::from(len) << 32)
            }
        };
        let (key_off, key_len) = self.string(key);
        self.metadata.push(KvRec {
            key_off,
            key_len,
            vtype,
            reserved: 0,
            value,
        });
    }

    /// Lays out the package: header, section table, sections, then blobs each
    /// aligned to `1 << align_log2`, in the order they were added. `base_id`
    /// is 0 for a base package, the base's id for a delta pack.
    pub fn finish(mut self, align_log2: u32, base_id: u64) -> Vec<u8> {
        let align_log2 = align_log2.max(MIN_ALIGN_LOG2);
        let align = 1u64 << align_log2;
        let mut data_cursor = 0u64;
        for (rec, bytes) in &mut self.blobs {
            rec.offset = data_cursor;
            rec.len = bytes.len() as u64;
            rec.checksum = xxhash_rust::xxh3::xxh3_64(bytes);
            data_cursor = align_up(data_cursor + rec.len, align);
        }
        let blob_recs: Vec<BlobRec> = self.blobs.iter().map(|(r, _)| *r).collect();
        let strings = &self.strings;
        let key = |kv: &KvRec| &strings[kv.key_off as usize..(kv.key_off + kv.key_len) as usize];
        let mut metadata = self.metadata.clone();
        metadata.sort_by(|a, b| key(a).cmp(key(b)));
        let mut sections: Vec<(u32, Vec<u8>)> = vec![
            (section::STRINGS, std::mem::take(&mut self.strings)),
            (section::MODEL, table(&[self.model])),
            (section::METADATA, table(&metadata)),
            (section::MODALITIES, table(&self.modalities)),
            (section::TENSORS, table(&self.tensors)),
            (section::GROUPS, table(&self.groups)),
            (section::EXPERTS, table(&self.experts)),
            (section::COMPONENTS, table(&self.components)),
            (section::TASKS, table(&self.tasks)),
            (section::PATHS, table(&self.paths)),
            (section::PROGRAM, table(&self.program)),
            (section::SLOTS, table(&self.slots)),
            (section::BLOBS, table(&blob_recs)),
        ];
        if !self.stats.is_empty() {
            sections.push((section::ROUTE_STATS, table(&self.stats)));
        }
        let st_off = HEADER_LEN as u64;
        let mut cursor = st_off + (sections.len() * SectionRec::SIZE) as u64;
        let mut entries = Vec::new();
        for (kind, bytes) in &sections {
            cursor = align_up(cursor, 8);
            let flags = if *kind == section::ROUTE_STATS {
                0
            } else {
                section::FLAG_REQUIRED
            };
            entries.push(SectionRec {
                kind: *kind,
                flags,
                offset: cursor,
                len: bytes.len() as u64,
            });
            cursor += bytes.len() as u64;
        }
        let data_off = align_up(cursor, align);
        let file_len = data_off + data_cursor;
        // The last blob's padding is not part of the file.
        let file_len = match self.blobs.last() {
            Some((r, _)) => data_off + r.offset + r.len,
            None => file_len,
        };
        let mut out = vec![0u8; file_len as usize];
        let mut st = Vec::new();
        for e in &entries {
            e.encode(&mut st);
        }
        out[st_off as usize..st_off as usize + st.len()].copy_from_slice(&st);
        for (e, (_, bytes)) in entries.iter().zip(&sections) {
            out[e.offset as usize..e.offset as usize + bytes.len()].copy_from_slice(bytes);
        }
        for (rec, bytes) in &self.blobs {
            let at = (data_off + rec.offset) as usize;
            out[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let meta_checksum = xxhash_rust::xxh3::xxh3_64(&out[HEADER_LEN..data_off as usize]);
        let header = Header {
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            header_len: HEADER_LEN as u32,
            flags: if base_id != 0 { FLAG_DELTA } else { 0 },
            align_log2,
            file_len,
            section_table_off: st_off,
            section_count: entries.len() as u32,
            data_off,
            data_len: file_len - data_off,
            meta_checksum,
            base_id,
            header_checksum: 0,
        };
        out[..HEADER_LEN].copy_from_slice(&header.encode());
        out
    }
}
