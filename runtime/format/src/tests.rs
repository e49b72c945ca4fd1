//! Unit tests of the reader and writer, small enough to run under Miri
//! (`scripts/miri.sh`), which checks the zero-copy casts (`bytemuck`) and
//! every slice access for undefined behaviour. Oracles: the values written,
//! hand-computed offsets, and `FormatError::field`.

use std::vec;
use std::vec::Vec;

use crate::records::*;
use crate::writer::PackageWriter;
use crate::*;

/// 16-byte aligned copy of `bytes` (the reader's alignment requirement),
/// starting `skew` bytes into the buffer.
struct Aligned {
    buf: Vec<u128>,
    skew: usize,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8], skew: usize) -> Self {
        let mut buf = vec![0u128; (bytes.len() + skew).div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[skew..skew + bytes.len()]
            .copy_from_slice(bytes);
        Self {
            buf,
            skew,
            len: bytes.len(),
        }
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.buf)[self.skew..self.skew + self.len]
    }
}

const WEIGHTS: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 3.5, -4.0, 1.5, 8.0];

/// A tiny valid package: one modality "m" (2 x 3), one head blob holding an
/// f32 `[2, 4]` tensor at offset 16, `tasks` tasks with two slots each.
fn tiny(tasks: usize) -> Vec<u8> {
    let mut w = PackageWriter::default();
    w.hparams = HParams {
        d_model: 4,
        heads: 2,
        experts: 2,
        top_k: 1,
        ffn_hidden: 4,
        stages: 1,
        ln_eps: 1e-5,
        ..Default::default()
    };
    let (mo, ml) = w.string("m");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: 2,
        features: 3,
    });
    let mut blob = vec![0u8; 16];
    for v in WEIGHTS {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    w.blobs.push((
        BlobRec {
            kind: blob_kind::HEAD,
            format: 1,
            modality: NONE16,
            expert: NONE16,
            component: NONE16,
            task: NONE16,
            ..Default::default()
        },
        blob,
    ));
    let (to, tl) = w.string("head.w");
    w.tensors.push(TensorRec {
        name_off: to,
        name_len: tl,
        blob: 0,
        format: format::F32,
        layout: layout::DENSE,
        offset: 16,
        rows: 2,
        cols: 4,
        bytes: 32,
        ..Default::default()
    });
    for i in 0..tasks {
        let (no, nl) = w.string(&std::format!("task{i}"));
        w.tasks.push(TaskRec {
            name_off: no,
            name_len: nl,
            outputs: 2,
            modality_mask: 1,
            slot_start: 2 * i as u32,
            slot_count: 2,
            path_start: i as u32,
            path_len: 1,
            output_slot: 1,
            arena_bytes: 64,
            ..Default::default()
        });
        w.slots.push(SlotRec { offset: 0, len: 8 });
        w.slots.push(SlotRec { offset: 8, len: 8 });
        w.paths.push(PathRec {
            task: i as u32,
            modality: 0,
            mask: 0b11,
        });
    }
    w.finish(MIN_ALIGN_LOG2, 0)
}

fn rd(b: &[u8], at: usize, n: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(&b[at..at + n]);
    u64::from_le_bytes(v)
}
fn wr(b: &mut [u8], at: usize, n: usize, v: u64) {
    b[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
}
/// Re-seals the metadata and header checksums after an edit.
fn reseal(b: &mut [u8]) {
    let (h, d) = (rd(b, 12, 4) as usize, rd(b, 48, 8) as usize);
    if h <= d && d <= b.len() {
        let m = xxhash_rust::xxh3::xxh3_64(&b[h..d]);
        wr(b, 64, 8, m);
    }
    let c = xxhash_rust::xxh3::xxh3_64(&b[..120]);
    wr(b, 120, 8, c);
}
/// Section table entry of `kind`.
fn entry(b: &[u8], kind: u32) -> usize {
    (0..rd(b, 40, 4) as usize)
        .map(|i| rd(b, 32, 8) as usize + 24 * i)
        .find(|&e| rd(b, e, 4) == u64::from(kind))
        .unwrap()
}
fn edited(base: &[u8], edit: impl FnOnce(&mut [u8])) -> Aligned {
    let mut b = base.to_vec();
    edit(&mut b);
    reseal(&mut b);
    Aligned::new(&b, 0)
}
fn err(a: &Aligned) -> FormatError {
    Package::parse(a.bytes()).expect_err("edit was accepted")
}

#[test]
fn written_tables_read_back_and_f32_data_is_borrowed_in_place() {
    let a = Aligned::new(&tiny(3), 0);
    let p = Package::parse(a.bytes()).unwrap();
    assert_eq!(p.tasks().len(), 3);
    assert_eq!(p.slots().len(), 6);
    assert_eq!(p.hparams().d_model, 4);
    let t = p.tasks().get(2).unwrap();
    assert_eq!(p.str(t.name_off, t.name_len), "task2");
    assert_eq!((t.slot_start, t.slot_count, t.path_start), (4, 2, 2));
    assert!(p.tasks().get(3).is_none());
    assert!(p.tasks().get(usize::MAX).is_none());
    assert_eq!(p.tasks().iter().count(), 3);
    let rec = p.tensors().get(0).unwrap();
    let (w, v) = p.tensor_f32(&rec).unwrap();
    assert_eq!(w, &WEIGHTS);
    assert!(v.is_empty());
    // Zero-copy: the floats live inside the package bytes, 16 bytes into the
    // blob, which starts at data_off (4096: one page of metadata).
    let at = w.as_ptr() as usize - a.bytes().as_ptr() as usize;
    assert_eq!(at, p.header().data_off as usize + 16);
    assert_eq!(p.header().data_off, 4096);
    p.verify_all().unwrap();
    let (raw, _) = tensor_raw(&rec, p.blob_bytes(0).unwrap()).unwrap();
    assert_eq!(raw.len(), 32);
    assert_eq!(p.blob_file_offset(0), Some(4096));
}

#[test]
fn records_round_trip_through_their_encoding() {
    let t = TaskRec {
        name_off: 1,
        name_len: 2,
        stage: 3,
        outputs: 4,
        modality_mask: 5,
        head_blob: 6,
        program_start: 7,
        program_len: 8,
        slot_start: 9,
        slot_count: 10,
        path_start: 11,
        path_len: 12,
        output_slot: 13,
        reserved: 14,
        arena_bytes: 0x0102_0304_0506_0708,
    };
    let mut out = Vec::new();
    t.encode(&mut out);
    assert_eq!(out.len(), TaskRec::SIZE);
    // Little-endian, in field order: arena_bytes is the last 8 bytes.
    assert_eq!(&out[56..], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(TaskRec::decode(&out), t);
    let b = BlobRec {
        offset: 1 << 40,
        len: 3,
        checksum: u64::MAX,
        kind: 4,
        format: 5,
        reserved0: 6,
        modality: 7,
        expert: 8,
        component: 9,
        task: 10,
        reserved1: 11,
    };
    let mut out = Vec::new();
    b.encode(&mut out);
    assert_eq!(out.len(), 40);
    assert_eq!(out[24], 4);
    assert_eq!(BlobRec::decode(&out), b);
}

#[test]
fn header_round_trips_and_its_checksum_covers_every_field() {
    let a = Aligned::new(&tiny(1), 0);
    let h = *Package::parse(a.bytes()).unwrap().header();
    let enc = h.encode();
    assert_eq!(&enc[..], &a.bytes()[..HEADER_LEN]);
    assert_eq!(Header::decode(&enc), h);
    for at in (8..120).step_by(8) {
        let mut b = a.bytes().to_vec();
        b[at] ^= 1;
        let e = Package::parse(Aligned::new(&b, 0).bytes()).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Checksum {
                    field: "header",
                    ..
                }
            ) || e.field() == "header.version_major",
            "byte {at}: {e}"
        );
    }
}

#[test]
fn misaligned_bytes_are_refused_not_read() {
    let bytes = tiny(1);
    for skew in [1, 4, 8] {
        let a = Aligned::new(&bytes, skew);
        assert_eq!(
            Package::parse(a.bytes()).unwrap_err(),
            FormatError::Misaligned { required: 16 }
        );
    }
    // tensor_data on a blob copy at an odd address: an error, never a
    // misaligned &[f32].
    let a = Aligned::new(&bytes, 0);
    let p = Package::parse(a.bytes()).unwrap();
    let rec = p.tensors().get(0).unwrap();
    let blob = p.blob_bytes(0).unwrap();
    let odd = Aligned::new(blob, 1);
    assert_eq!(
        tensor_data(&rec, odd.bytes()).unwrap_err(),
        FormatError::Misaligned { required: 4 }
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny(2);
    // Under Miri every parse is slow: a stride still covers the header, the
    // section table, each section and the data.
    let step = if cfg!(miri) { 61 } else { 1 };
    for n in (0..bytes.len()).step_by(step) {
        let a = Aligned::new(&bytes[..n], 0);
        assert!(Package::parse(a.bytes()).is_err(), "prefix of {n} bytes");
    }
    // Trailing bytes (erased flash) are allowed.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xFF; 100]);
    let a = Aligned::new(&longer, 0);
    assert_eq!(
        Package::parse(a.bytes()).unwrap().bytes().len(),
        bytes.len()
    );
}

#[test]
fn hostile_offsets_and_counts_name_their_field() {
    let base = tiny(2);
    let tasks = rd(&base, entry(&base, section::TASKS) + 8, 8) as usize;
    let cases: [(&str, Aligned); 9] = [
        (
            "header.section_count",
            edited(&base, |b| wr(b, 40, 4, u64::from(u32::MAX))),
        ),
        (
            "header.section_table_off",
            edited(&base, |b| wr(b, 32, 8, 0)),
        ),
        (
            "sections.len",
            edited(&base, |b| {
                let e = entry(b, section::TASKS);
                wr(b, e + 16, 8, (1u64 << 32) * 64);
            }),
        ),
        (
            "sections.offset",
            edited(&base, |b| {
                let e = entry(b, section::BLOBS);
                wr(b, e + 8, 8, 0);
            }),
        ),
        (
            "tasks.slot_count",
            edited(&base, |b| wr(b, tasks + 36, 4, u64::from(u32::MAX))),
        ),
        (
            "tasks.slot_start",
            edited(&base, |b| wr(b, tasks + 64 + 32, 4, 0)),
        ),
        (
            "tasks.path_start",
            edited(&base, |b| wr(b, tasks + 64 + 40, 4, 0)),
        ),
        (
            "tasks.arena_bytes",
            edited(&base, |b| wr(b, tasks + 56, 8, u64::MAX)),
        ),
        (
            "tasks.name",
            edited(&base, |b| wr(b, tasks + 4, 4, u64::from(MAX_NAME_LEN) + 1)),
        ),
    ];
    for (field, a) in &cases {
        assert_eq!(err(a).field(), *field, "{}", err(a));
    }
}

#[test]
fn a_view_over_other_bytes_never_panics() {
    let a = Aligned::new(&tiny(2), 0);
    let layout = Package::parse(a.bytes()).unwrap().layout();
    // Shorter bytes: refused.
    assert!(Package::view(&a.bytes()[..100], layout).is_none());
    // Same length, other contents (all 0xFF: every offset and length huge).
    let junk = Aligned::new(&vec![0xFF; a.bytes().len()], 0);
    let v = Package::view(junk.bytes(), layout).unwrap();
    for i in 0..v.blobs().len() {
        assert!(v.blob_bytes(i).is_none());
        let _ = v.blob_file_offset(i);
        assert!(v.verify_blob(i).is_err());
    }
    for t in v.tensors().iter() {
        assert!(v.tensor_f32(&t).is_err());
    }
    for t in v.tasks().iter() {
        assert_eq!(v.str(t.name_off, t.name_len), "");
    }
    assert!(v.sections().len() <= MAX_SECTIONS as usize);
}

#[test]
fn no_single_metadata_byte_flip_panics() {
    let base = tiny(2);
    let data_off = rd(&base, 48, 8) as usize;
    let meta_end = base[..data_off]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(data_off, |p| p + 1);
    let step = if cfg!(miri) { 23 } else { 1 };
    for at in (0..meta_end).step_by(step) {
        for bit in [0, 7] {
            let a = edited(&base, |b| b[at] ^= 1 << bit);
            if let Ok(p) = Package::parse(a.bytes()) {
                let _ = p.verify_all();
                for t in p.tensors().iter() {
                    let _ = p.tensor_f32(&t);
                }
            }
        }
    }
}
