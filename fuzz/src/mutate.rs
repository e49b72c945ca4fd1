//! Structure-aware mutation of a valid package (docs/FORMAT.md): the fuzz
//! input is not a package but a short program of edits, each setting one
//! header field, section table entry or table-record field to a chosen value,
//! after which the checksums are re-sealed so that validation — not the
//! checksum — has to catch the edit.
//!
//! This file depends only on `std` and `xxhash-rust`, so the regression tests
//! in `tests/tests/fuzz_regressions.rs` include it by path and replay a
//! crashing input byte for byte.

/// One integer field of the package: where it is and how wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Absolute file offset.
    pub at: usize,
    /// Width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// Section kind it belongs to (0 = header, 255 = section table).
    pub table: u32,
    /// Offset of the record (header, section entry, table record) that
    /// holds it, and that record's size.
    pub record: (usize, usize),
}

fn rd(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + width) {
        v[..width].copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

fn wr(b: &mut [u8], at: usize, width: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + width) {
        s.copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

/// Field widths of one record of each section kind (records.rs order).
fn record_widths(kind: u32) -> &'static [usize] {
    match kind {
        2 => &[4; 12],
        3 => &[4; 6],
        4 => &[4, 4, 4, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4],
        5 => &[4, 2, 2, 4, 4, 4, 4],
        6 => &[4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8],
        7 => &[4; 8],
        8 => &[4, 4, 4, 4, 8, 8, 8, 8],
        9 => &[2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
        10 => &[4, 4, 4],
        11 => &[8, 8, 8, 1, 1, 2, 2, 2, 2, 2, 4],
        12 => &[4; 7],
        13 => &[4, 4, 4, 4, 8],
        14 => &[4; 4],
        _ => &[],
    }
}

/// Header fields: (offset, width).
const HEADER: [(usize, usize); 19] = [
    (8, 2),
    (10, 2),
    (12, 4),
    (16, 4),
    (20, 4),
    (24, 8),
    (32, 8),
    (40, 4),
    (44, 4),
    (48, 8),
    (56, 8),
    (64, 8),
    (72, 8),
    (80, 8),
    (88, 8),
    (96, 8),
    (104, 8),
    (112, 8),
    (120, 8),
];

/// Every mutable field of a well-formed package, header first. Tables are
/// found through the package's own section table; bytes that do not parse
/// as one contribute no fields.
pub fn fields(pkg: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = HEADER
        .iter()
        .map(|&(at, width)| Field {
            at,
            width,
            table: 0,
            record: (0, 128),
        })
        .collect();
    let (st, n) = (rd(pkg, 32, 8) as usize, rd(pkg, 40, 4) as usize);
    for i in 0..n.min(64) {
        let e = st + 24 * i;
        if e + 24 > pkg.len() {
            break;
        }
        for (off, width) in [(0, 4), (4, 4), (8, 8), (16, 8)] {
            out.push(Field {
                at: e + off,
                width,
                table: 255,
                record: (e, 24),
            });
        }
        let kind = rd(pkg, e, 4) as u32;
        let (off, len) = (rd(pkg, e + 8, 8) as usize, rd(pkg, e + 16, 8) as usize);
        if off.checked_add(len).is_none_or(|end| end > pkg.len()) {
            continue;
        }
        if kind == 1 {
            // Strings: every byte (names are short).
            out.extend((off..off + len).map(|at| Field {
                at,
                width: 1,
                table: kind,
                record: (at, 1),
            }));
            continue;
        }
        let widths = record_widths(kind);
        let size: usize = widths.iter().sum();
        if size == 0 {
            continue;
        }
        for r in 0..len / size {
            let mut at = off + r * size;
            for &width in widths {
                out.push(Field {
                    at,
                    width,
                    table: kind,
                    record: (off + r * size, size),
                });
                at += width;
            }
        }
    }
    out
}

/// Reads the edit program; returns zeros once the input runs out, so every
/// input, even an empty one, is a valid program.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut v = [0u8; N];
        for x in &mut v {
            *x = self.b.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
        v
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Flag bit of the program's first byte: leave the checksums as the edits
/// left them (the checksum checks themselves get exercised too).
pub const NO_RESEAL: u8 = 0x20;
/// Flag bit: also recompute every blob checksum that can be located, so an
/// edited blob offset or length reaches the runtime instead of stopping at
/// the path check.
pub const RESEAL_BLOBS: u8 = 0x40;
/// Flag bit: truncate (or, rarely, extend) the package after the edits.
pub const RESIZE: u8 = 0x80;

/// Applies the edit program `input` to a copy of `pkg` (whose fields are
/// `fields`). The first byte holds the edit count (low 2 bits + 1) and the
/// flags above; each edit is a field selector (u32), an operation (u8) and
/// its operands.
pub fn apply(pkg: &[u8], fields: &[Field], input: &[u8]) -> Vec<u8> {
    let mut out = pkg.to_vec();
    let mut r = Reader { b: input, at: 0 };
    let head = r.u8();
    let edits = 1 + usize::from(head & 3);
    let len = out.len() as u64;
    let (hlen, st, data_off) = (rd(pkg, 12, 4), rd(pkg, 32, 8), rd(pkg, 48, 8));
    for _ in 0..edits {
        if fields.is_empty() {
            break;
        }
        let f = fields[r.u32() as usize % fields.len()];
        let bits = 8 * f.width as u32;
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let old = rd(&out, f.at, f.width);
        let op = r.u8();
        if op % 13 == 12 {
            // A semantic edit: the whole record replaced by another record
            // of the same table (an op by another op, as a `Moe` became a
            // `Copy`; a slot, task or path entry by another one).
            let g = fields[r.u32() as usize % fields.len()];
            if g.table == f.table && g.record.1 == f.record.1 && g.record != f.record {
                let (from, to, n) = (g.record.0, f.record.0, f.record.1);
                let src = out[from..from + n].to_vec();
                out[to..to + n].copy_from_slice(&src);
            }
            continue;
        }
        let new = match op % 13 {
            0 => 0,
            1 => u64::MAX,
            2 => old.wrapping_add(i64::from(r.u8() as i8) as u64),
            3 => old ^ (1u64 << (r.u8() as u32 % bits)),
            4 => r.u64(),
            5 => {
                // Another field's value: offsets and indices that point at
                // each other, a length copied into an offset.
                let g = fields[r.u32() as usize % fields.len()];
                rd(&out, g.at, g.width)
            }
            6 => 1u64 << (r.u8() % 64),
            7 => {
                let picks = [
                    len,
                    len - 1,
                    hlen,
                    st,
                    data_off,
                    len / 2,
                    128,
                    4096,
                    1 << 32,
                ];
                picks[r.u8() as usize % picks.len()]
            }
            8 => {
                // A step of a record size (counts and lengths move by
                // whole records).
                let unit = [1u64, 4, 8, 16, 24, 32, 40, 48, 64, 4096][r.u8() as usize % 10];
                let k = i64::from(r.u8() as i8);
                old.wrapping_add((k as u64).wrapping_mul(unit))
            }
            9 => old.wrapping_mul(2),
            10 => old / 2,
            _ => u64::from(u32::MAX),
        };
        wr(&mut out, f.at, f.width, new & mask);
    }
    if head & RESIZE != 0 {
        let n = r.u32() as usize;
        if n % 16 == 15 {
            out.resize(out.len() + n % 8192, 0);
        } else {
            out.truncate(n % (out.len() + 1));
        }
    }
    if head & NO_RESEAL == 0 {
        if head & RESEAL_BLOBS != 0 {
            reseal_blobs(&mut out);
        }
        reseal(&mut out);
    }
    out
}

/// Recomputes the metadata checksum (over the edited header's
/// `[header_len, data_off)` when that range lies in the file) and then the
/// header checksum.
pub fn reseal(b: &mut [u8]) {
    if b.len() < 128 {
        return;
    }
    let (hlen, data_off) = (rd(b, 12, 4) as usize, rd(b, 48, 8));
    if let Ok(data_off) = usize::try_from(data_off) {
        if hlen <= data_off && data_off <= b.len() {
            let m = xxhash_rust::xxh3::xxh3_64(&b[hlen..data_off]);
            wr(b, 64, 8, m);
        }
    }
    let h = xxhash_rust::xxh3::xxh3_64(&b[..120]);
    wr(b, 120, 8, h);
}

/// Recomputes the checksum of every blob whose record and range lie in the
/// file (before [`reseal`], which then covers the new blob table).
pub fn reseal_blobs(b: &mut [u8]) {
    if b.len() < 128 {
        return;
    }
    let (st, n, data_off) = (rd(b, 32, 8) as usize, rd(b, 40, 4) as usize, rd(b, 48, 8));
    let Some((off, len)) = (0..n.min(64))
        .map(|i| st.saturating_add(24 * i))
        .filter(|&e| e.saturating_add(24) <= b.len())
        .find(|&e| rd(b, e, 4) == 11)
        .map(|e| (rd(b, e + 8, 8) as usize, rd(b, e + 16, 8) as usize))
    else {
        return;
    };
    if off.checked_add(len).is_none_or(|end| end > b.len()) {
        return;
    }
    for r in 0..len / 40 {
        let rec = off + 40 * r;
        let start = data_off.checked_add(rd(b, rec, 8));
        let end = start.and_then(|s| s.checked_add(rd(b, rec + 8, 8)));
        if let (Some(s), Some(e)) = (start, end) {
            if s <= e && e <= b.len() as u64 {
                let c = xxhash_rust::xxh3::xxh3_64(&b[s as usize..e as usize]);
                wr(b, rec + 16, 8, c);
            }
        }
    }
}
