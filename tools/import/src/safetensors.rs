//! safetensors reader: the header is parsed and validated in full before any
//! tensor byte is touched; tensor data is then read in place.
//!
//! Layout:
//!
//! ```text
//! u64 N                  little-endian length of the JSON header (at most 100 MB here)
//! u8  header[N]          UTF-8 JSON object:
//!                          { "NAME": {"dtype": "F32", "shape": [d0, d1, ...],
//!                                     "data_offsets": [begin, end]}, ...,
//!                            "__metadata__": {"key": "value", ...} }   (optional)
//! u8  data[]             offsets are relative to the first byte after the header
//! ```
//!
//! Validation: the header length is bounded and inside the file; the JSON must
//! be an object of such entries; every dtype must be a known safetensors dtype;
//! `end - begin` must equal the product of the shape (overflow-checked) times
//! the dtype's size; every range must lie inside the data section, and no two
//! may overlap.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{format_err, Error, Result};

/// Largest JSON header accepted (the safetensors library's own limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// Most dimensions accepted for one tensor.
pub const MAX_RANK: usize = 8;

/// Every dtype the safetensors format defines, with its element size in bytes.
const DTYPES: &[(&str, u64)] = &[
    ("BOOL", 1),
    ("U8", 1),
    ("I8", 1),
    ("F8_E5M2", 1),
    ("F8_E4M3", 1),
    ("I16", 2),
    ("U16", 2),
    ("F16", 2),
    ("BF16", 2),
    ("I32", 4),
    ("U32", 4),
    ("F32", 4),
    ("F64", 8),
    ("I64", 8),
    ("U64", 8),
];

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StTensor {
    /// Name.
    pub name: String,
    /// dtype as written (`F32`, `BF16`, ...; always one of the format's dtypes).
    pub dtype: String,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub data: Range<usize>,
}

/// A validated safetensors header.
#[derive(Clone, Debug)]
pub struct StHeader {
    tensors: Vec<StTensor>,
    index: HashMap<String, usize>,
}

impl StHeader {
    /// Parses and validates the header of a safetensors file held in `bytes`.
    /// `file` names the source in error messages.
    pub fn parse(bytes: &[u8], file: &str) -> Result<StHeader> {
        let len = bytes.len() as u64;
        let trunc = |field: &str, needed: u64| Error::Truncated {
            file: file.to_string(),
            field: field.to_string(),
            needed,
            len,
        };
        let Some(n) = bytes.get(..8) else {
            return Err(trunc("header length", 8));
        };
        let n = u64::from_le_bytes(n.try_into().unwrap_or([0; 8]));
        if n > MAX_HEADER {
            return Err(format_err(
                file,
                "header length",
                format!("{n} bytes exceeds the limit of {MAX_HEADER}"),
            ));
        }
        let data_start = 8 + n;
        if data_start > len {
            return Err(trunc("JSON header", data_start));
        }
        let json = &bytes[8..data_start as usize];
        let root: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
            .map_err(|e| format_err(file, "JSON header", e.to_string()))?;
        let data_len = len - data_start;
        let mut tensors = Vec::with_capacity(root.len());
        let mut index = HashMap::with_capacity(root.len());
        for (name, v) in root {
            if name == "__metadata__" {
                if !v.is_object() {
                    return Err(format_err(file, "__metadata__", "not an object"));
                }
                continue;
            }
            let f = |what: &str| format!("tensor `{name}` {what}");
            let obj = v
                .as_object()
                .ok_or_else(|| format_err(file, f("entry"), "not an object"))?;
            let dtype = obj
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| format_err(file, f("dtype"), "missing or not a string"))?;
            let elem = DTYPES
                .iter()
                .find(|d| d.0 == dtype)
                .map(|d| d.1)
                .ok_or_else(|| format_err(file, f("dtype"), format!("unknown dtype `{dtype}`")))?;
            let shape = obj
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| format_err(file, f("shape"), "missing or not an array"))?;
            if shape.len() > MAX_RANK {
                return Err(format_err(
                    file,
                    f("shape"),
                    format!("{} dimensions (at most {MAX_RANK})", shape.len()),
                ));
            }
            let shape = shape
                .iter()
                .map(|d| d.as_u64())
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| {
                    format_err(file, f("shape"), "not an array of non-negative integers")
                })?;
            let offs = obj
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .and_then(|a| match a.as_slice() {
                    [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                    _ => None,
                })
                .ok_or_else(|| {
                    format_err(file, f("data_offsets"), "missing or not [begin, end]")
                })?;
            let bytes_needed = shape
                .iter()
                .try_fold(elem, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format_err(file, f("shape"), format!("{shape:?} overflows")))?;
            let (b, e) = offs;
            if e < b {
                return Err(format_err(
                    file,
                    f("data_offsets"),
                    format!("end {e} is before begin {b}"),
                ));
            }
            if e - b != bytes_needed {
                return Err(format_err(
                    file,
                    f("data_offsets"),
                    format!(
                        "[{b}, {e}] holds {} bytes but {dtype} {shape:?} takes {bytes_needed}",
                        e - b
                    ),
                ));
            }
            if e > data_len {
                return Err(Error::Truncated {
                    file: file.to_string(),
                    field: f("data"),
                    needed: data_start.saturating_add(e),
                    len,
                });
            }
            let data = (data_start + b) as usize..(data_start + e) as usize;
            index.insert(name.clone(), tensors.len());
            tensors.push(StTensor {
                name,
                dtype: dtype.to_string(),
                shape,
                data,
            });
        }
        let mut order: Vec<usize> = (0..tensors.len())
            .filter(|&i| !tensors[i].data.is_empty())
            .collect();
        order.sort_by_key(|&i| tensors[i].data.start);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if b.data.start < a.data.end {
                return Err(format_err(
                    file,
                    format!("tensor `{}` data_offsets", b.name),
                    format!("overlaps tensor `{}`", a.name),
                ));
            }
        }
        Ok(StHeader { tensors, index })
    }

    /// Every tensor's entry.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    /// A tensor's entry by name.
    pub fn tensor(&self, name: &str) -> Option<&StTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
}

/// Builds safetensors files in memory, for tests and fuzz seeds.
#[doc(hidden)]
pub fn build(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + data.len()]}),
        );
        off += data.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for (_, _, _, data) in tensors {
        out.extend(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build(&[
            ("a", "F32", vec![2, 2], vec![0; 16]),
            ("b", "BF16", vec![3], vec![1; 6]),
        ])
    }

    #[test]
    fn parses() {
        let b = sample();
        let h = StHeader::parse(&b, "m.safetensors").unwrap();
        let t = h.tensor("b").unwrap();
        assert_eq!(t.shape, vec![3]);
        assert_eq!(&b[t.data.clone()], &[1; 6]);
    }

    #[test]
    fn truncation_names_file_and_field() {
        let b = sample();
        for n in 0..b.len() {
            let e = StHeader::parse(&b[..n], "m.safetensors")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("m.safetensors: truncated: "), "{n}: {e}");
        }
        let e = StHeader::parse(&b[..b.len() - 1], "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor `b` data"), "{e}");
        let e = StHeader::parse(&b[..4], "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("header length"), "{e}");
    }

    #[test]
    fn bad_headers() {
        let mk = |json: &str| {
            let mut v = (json.len() as u64).to_le_bytes().to_vec();
            v.extend(json.as_bytes());
            v.extend([0u8; 64]);
            v
        };
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                "holds 4 bytes",
            ),
            (
                r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
                "unknown dtype `Q9`",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
                "overlaps",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                "before begin",
            ),
            (r#"[1,2]"#, "JSON header"),
            (
                r#"{"a":{"dtype":"F32","shape":[32],"data_offsets":[0,128]}}"#,
                "truncated",
            ),
        ];
        for (json, want) in cases {
            let e = StHeader::parse(&mk(json), "f").unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        let mut huge = (MAX_HEADER + 1).to_le_bytes().to_vec();
        huge.extend([b' '; 16]);
        assert!(StHeader::parse(&huge, "f")
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit"));
    }
}
