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
    tiny_with(tasks, crate::WeightFormat::F32)
}

/// [`tiny`] with its head tensor packed in `fmt` (`WEIGHTS` quantised).
fn tiny_with(tasks: usize, fmt: crate::WeightFormat) -> Vec<u8> {
    let mut w = PackageWriter::default();
    w.arch("test");
    w.meta("test.d_model", crate::MetaValue::U32(4));
    w.meta("test.eps", crate::MetaValue::F32(1e-5));
    w.meta("test.gating", crate::MetaValue::Str("softmax"));
    let (go, gl) = w.string("experts");
    w.groups.push(GroupRec {
        name_off: go,
        name_len: gl,
        experts: 2,
        top_k: 1,
        kind: crate::ExpertKind::ConvFfn as u32,
        ..Default::default()
    });
    let (mo, ml) = w.string("m");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: 2,
        features: 3,
        ..Default::default()
    });
    let mut blob = vec![0u8; 16];
    let mut packed = vec![0u8; fmt.packed_bytes(2, 4)];
    crate::weight::quantize(fmt, 2, 4, &WEIGHTS, &mut packed).unwrap();
    blob.extend_from_slice(&packed);
    w.blobs.push((
        BlobRec {
            kind: blob_kind::HEAD,
            format: fmt.id() as u8,
            group: NONE16,
            expert: NONE16,
            component: NONE16,
            owner: NONE16,
            ..Default::default()
        },
        blob,
    ));
    let (to, tl) = w.string("head.w");
    w.tensors.push(TensorRec {
        name_off: to,
        name_len: tl,
        blob: 0,
        format: fmt.id(),
        layout: layout::DENSE,
        offset: 16,
        rows: 2,
        cols: 4,
        bytes: packed.len() as u32,
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
            program_len: 1,
            slot_bytes: 64,
            ..Default::default()
        });
        w.slots.push(SlotRec {
            offset: 0,
            len: 8,
            kind: 0,
        });
        w.slots.push(SlotRec {
            offset: 8,
            len: 8,
            kind: 0,
        });
        w.paths.push(PathRec {
            task: i as u32,
            mask0: 0b11,
            ..Default::default()
        });
    }
    // One op every task shares: copy slot 0 into slot 1.
    w.program.push(
        crate::Op::Copy {
            src: crate::SlotId(0),
            src_offset: 0,
            dst: crate::SlotId(1),
            dst_offset: 0,
            len: 8,
        }
        .encode(),
    );
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

/// Every weight format id this build knows (the GGUF block formats 12 and
/// 13 included) is accepted in blobs and tensors; the next id is refused.
#[test]
fn every_known_weight_format_id_is_accepted() {
    for f in crate::weight::ALL {
        let a = Aligned::new(&tiny_with(1, f), 0);
        let p = Package::parse(a.bytes()).unwrap_or_else(|e| panic!("{f}: {e}"));
        let rec = p.tensors().get(0).unwrap();
        assert_eq!(rec.format, f.id());
        assert_eq!(rec.bytes as usize, f.packed_bytes(2, 4));
    }
    assert_eq!(usize::from(format::MAX_ID), crate::weight::ALL.len());
}

#[test]
fn written_tables_read_back_and_f32_data_is_borrowed_in_place() {
    let a = Aligned::new(&tiny(3), 0);
    let p = Package::parse(a.bytes()).unwrap();
    assert_eq!(p.tasks().len(), 3);
    assert_eq!(p.slots().len(), 6);
    assert_eq!(p.arch(), "test");
    assert_eq!(p.meta("test.d_model"), Some(crate::MetaValue::U32(4)));
    assert_eq!(p.meta("test.eps"), Some(crate::MetaValue::F32(1e-5)));
    assert_eq!(
        p.meta("test.gating"),
        Some(crate::MetaValue::Str("softmax"))
    );
    assert_eq!(p.meta("test.missing"), None);
    assert_eq!(p.meta_entries().count(), 3);
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
        program_start: 7,
        program_len: 8,
        slot_start: 9,
        slot_count: 10,
        path_start: 11,
        path_len: 12,
        output_slot: 13,
        plan_tensors: 6,
        reserved: 14,
        slot_bytes: 0x0102_0304_0506_0708,
    };
    let mut out = Vec::new();
    t.encode(&mut out);
    assert_eq!(out.len(), TaskRec::SIZE);
    // Little-endian, in field order: slot_bytes is the last 8 bytes.
    assert_eq!(&out[56..], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(TaskRec::decode(&out), t);
    let b = BlobRec {
        offset: 1 << 40,
        len: 3,
        checksum: u64::MAX,
        kind: 4,
        format: 5,
        reserved0: 6,
        group: 7,
        expert: 8,
        component: 9,
        owner: 10,
        reserved1: 11,
    };
    let mut out = Vec::new();
    b.encode(&mut out);
    assert_eq!(out.len(), 40);
    assert_eq!(out[24], 4);
    assert_eq!(BlobRec::decode(&out), b);
}

/// Every op survives encode then decode, and the decoder refuses unknown
/// opcodes, flags, a NONE where a slot is required, bad flags and non-zero
/// unused words, naming the field.
#[test]
fn ops_round_trip_and_the_decoder_checks_every_word() {
    let s = crate::SlotId;
    let t = crate::TensorId;
    let ops = [
        Op::Encode {
            input: 1,
            out: s(2),
            w: t(3),
            b: t(4),
            pos: t(5),
            tmp: None,
        },
        Op::LayerNorm {
            x: s(1),
            y: s(1),
            g: t(2),
            b: t(3),
            scale: 2.5,
            rows: 7,
            eps: 1e-5,
        },
        Op::Linear {
            x: s(1),
            y: s(2),
            w: t(3),
            b: None,
            rows: 4,
            tmp: Some(s(9)),
        },
        Op::Attention {
            q: s(1),
            k: s(2),
            v: s(3),
            out: s(4),
            tokens: 8,
            width: 16,
            heads: 2,
            scratch: s(5),
        },
        Op::AttnPool {
            u: s(1),
            tokens: 8,
            query: t(2),
            out: s(3),
            scratch: s(4),
        },
        Op::Gate {
            p: s(1),
            gate: t(2),
            logits: s(3),
            accumulate: true,
            scale: 0.5,
            tmp: s(4),
            function: crate::GateFn::Laplace,
        },
        Op::Route {
            logits: s(1),
            group: 2,
            router: 3,
            route: s(4),
        },
        Op::Moe {
            u: s(1),
            tokens: 8,
            width: 16,
            route: s(2),
            group: 0,
            router: 1,
            components: 3,
            token: 7,
            out: s(3),
            scratch: s(4),
            eps: 1e-6,
        },
        Op::Copy {
            src: s(1),
            src_offset: 2,
            dst: s(3),
            dst_offset: 4,
            len: 5,
        },
        Op::Embed {
            input: 0,
            out: s(1),
            table: t(2),
            rows: 64,
            scale: 1.5,
        },
        Op::RmsNorm {
            x: s(1),
            y: s(2),
            g: t(3),
            rows: 16,
            per_token: 4,
            eps: 1e-6,
        },
        Op::Rope {
            x: s(1),
            rows: 16,
            heads: 4,
            head_dim: 32,
            rot_dims: 16,
            rot_offset: 16,
            theta: 1e6,
            factor: 2.0,
            style: crate::RopeStyle::Interleaved,
        },
        Op::KvAttention {
            q: s(1),
            k: s(2),
            v: s(3),
            out: s(4),
            k_cache: s(5),
            v_cache: s(6),
            rows: 16,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            v_dim: 48,
            context: 256,
            scale: 0.125,
            scratch: s(7),
        },
        Op::SiluMul {
            x: s(1),
            up: s(2),
            rows: 16,
            width: 96,
        },
        Op::Axpy {
            x: s(1),
            y: s(2),
            rows: 16,
            width: 64,
            a: 0.25,
            gate: Some(s(3)),
        },
        Op::RouteTokens {
            logits: s(1),
            group: 2,
            router: 0,
            route: s(3),
            rows: 16,
            mode: crate::RouteMode::SoftmaxTopK,
            scale: 2.5,
        },
        Op::MoeTokens {
            x: s(1),
            route: s(2),
            group: 3,
            router: 0,
            rows: 16,
            width: 64,
            out: s(4),
            scratch: s(5),
        },
        Op::LastRow {
            x: s(1),
            out: s(2),
            rows: 16,
            width: 64,
            scale: 0.5,
        },
        Op::CopyCols {
            src: s(1),
            dst: s(2),
            rows: 16,
            src_width: 96,
            src_off: 32,
            src_step: 0,
            dst_width: 128,
            dst_off: 16,
            dst_step: 32,
            width: 16,
            count: 4,
        },
    ];
    for op in ops {
        let rec = op.encode();
        assert_eq!(Op::decode(&rec, 0), Ok(op));
        assert_eq!(rec.opcode, op.opcode());
        let mut out = Vec::new();
        rec.encode(&mut out);
        assert_eq!(out.len(), OpRec::SIZE);
        assert_eq!(OpRec::decode(&out), rec);
        // The last argument word is past every op's fields.
        let mut r = rec;
        r.args[OP_ARGS - 1] = 1;
        assert_eq!(Op::decode(&r, 3).unwrap_err().field(), "program.args");
        let mut r = rec;
        r.flags = 1;
        assert_eq!(Op::decode(&r, 3).unwrap_err().field(), "program.flags");
    }
    let mut r = ops[0].encode();
    r.args[1] = NONE;
    assert_eq!(Op::decode(&r, 0).unwrap_err().field(), "program.args");
    let mut r = ops[5].encode();
    r.args[3] = 2;
    assert_eq!(Op::decode(&r, 0).unwrap_err().field(), "program.args");
    let mut r = ops[1].encode();
    r.args[6] = f32::NAN.to_bits();
    assert_eq!(Op::decode(&r, 0).unwrap_err().field(), "program.args");
    let mut r = ops[1].encode();
    r.opcode = 999;
    assert_eq!(Op::decode(&r, 0).unwrap_err().field(), "program.opcode");
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
            edited(&base, |b| wr(b, tasks + 32, 4, u64::from(u32::MAX))),
        ),
        (
            "tasks.slot_start",
            edited(&base, |b| wr(b, tasks + 64 + 28, 4, 0)),
        ),
        (
            "tasks.path_start",
            edited(&base, |b| wr(b, tasks + 64 + 36, 4, 0)),
        ),
        (
            "tasks.slot_bytes",
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

/// `first_non_finite` agrees with the oracle, the first non-finite value
/// that `dequantize` returns, after NaN, infinity and huge-but-finite bit
/// patterns are written over every stored value, scale and zero point of
/// every format (a huge i8row scale times -128 overflows to infinity).
#[test]
fn first_non_finite_matches_dequantize_for_every_format_and_position() {
    use crate::weight::{dequantize, first_non_finite, quantize};
    let (rows, cols) = (17, 40);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03)
        .collect();
    let f16_bits: [u16; 3] = [0x7E00, 0x7C00, 0xFC00];
    let f32_bits: [u32; 3] = [0x7FC0_0000, 0x7F80_0000, 3.0e38f32.to_bits()];
    let step = if cfg!(miri) { 37 } else { 2 };
    for fmt in crate::weight::ALL {
        let mut packed = vec![0u8; fmt.packed_bytes(rows, cols)];
        quantize(fmt, rows, cols, &w, &mut packed).unwrap();
        assert_eq!(
            first_non_finite(fmt, rows, cols, &packed),
            Ok(None),
            "{fmt}"
        );
        let mut out = vec![0f32; rows * cols];
        let mut found = 0;
        for at in (0..packed.len()).step_by(step) {
            let patterns = f16_bits
                .iter()
                .map(|b| b.to_le_bytes().to_vec())
                .chain(f32_bits.iter().map(|b| b.to_le_bytes().to_vec()));
            for pat in patterns {
                if at + pat.len() > packed.len() {
                    continue;
                }
                let mut m = packed.clone();
                m[at..at + pat.len()].copy_from_slice(&pat);
                dequantize(fmt, rows, cols, &m, &mut out).unwrap();
                let want = out.iter().position(|v| !v.is_finite());
                let got = first_non_finite(fmt, rows, cols, &m).unwrap();
                assert_eq!(got, want, "{fmt}, pattern {pat:x?} at byte {at}");
                found += usize::from(got.is_some());
            }
        }
        assert!(found > 0, "{fmt}: no mutation was non-finite");
    }
    assert!(first_non_finite(crate::WeightFormat::F32, 2, 4, &[0; 31]).is_err());
}

/// `check_finite` (what `verify` runs) refuses a NaN weight or scale, naming
/// the tensor's index; an infinite float metadata value is refused by
/// `parse` already.
#[test]
fn check_finite_names_the_tensor_and_the_first_bad_value() {
    for fmt in crate::weight::ALL {
        let base = tiny_with(1, fmt);
        let a = Aligned::new(&base, 0);
        let p = Package::parse(a.bytes()).unwrap();
        p.check_finite().unwrap();
        // Blob bytes are not covered by the metadata checksum: no reseal
        // needed for `parse`, and `check_finite` does not look at checksums.
        let at = p.blob_file_offset(0).unwrap() as usize + 16;
        let mut b = base.clone();
        // Row 0's f32 value 0 or i8row scale, its f16 value 0, or the f16
        // scale of its first group or block (after the group's weights).
        let nan_at = if fmt.is_gguf_block() {
            at + fmt.q_block_bytes() - 32
        } else if fmt.is_lut() {
            let (g, bits, _) = crate::weight::lut_params(fmt);
            at + 16 * g * bits as usize / 8
        } else {
            at
        };
        if matches!(fmt, crate::WeightFormat::F32 | crate::WeightFormat::I8Row) {
            b[nan_at..nan_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        } else {
            b[nan_at..nan_at + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
        }
        let a = Aligned::new(&b, 0);
        let p = Package::parse(a.bytes()).unwrap();
        let e = p.check_finite().unwrap_err();
        match e {
            FormatError::Invalid {
                field: "tensors.data",
                index: Some(0),
                ..
            } => {}
            other => panic!("{fmt}: {other}"),
        }
        assert!(std::format!("{e}").contains("tensors[0].data"), "{e}");
    }
    // The metadata value `test.eps` (f32 bits in the low half of a u64),
    // re-sealed.
    let base = tiny(1);
    let (h, d) = (rd(&base, 12, 4) as usize, rd(&base, 48, 8) as usize);
    let mut pat = 1e-5f32.to_bits().to_le_bytes().to_vec();
    pat.extend([0; 4]);
    let at = h + base[h..d].windows(8).position(|x| x == pat).unwrap();
    let a = edited(&base, |b| {
        b[at..at + 4].copy_from_slice(&f32::INFINITY.to_bits().to_le_bytes())
    });
    assert_eq!(err(&a).field(), "metadata.value");
}
