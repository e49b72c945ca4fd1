//! GGUF (versions 2 and 3) reader: the header is parsed and validated in full
//! before any tensor byte is touched; values and tensor data are then read in
//! place from the file's bytes.
//!
//! Layout (little-endian; ggml `docs/gguf.md`):
//!
//! ```text
//! u32 magic = "GGUF" (0x47 0x47 0x55 0x46)
//! u32 version            (2 or 3; 1 used 32-bit counts and is refused)
//! u64 tensor_count
//! u64 metadata_kv_count
//! metadata_kv[metadata_kv_count]:
//!     string key         (u64 length + UTF-8 bytes, no terminator)
//!     u32    value_type  (0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool,
//!                         8 string, 9 array, 10 u64, 11 i64, 12 f64)
//!     value              (an array is: u32 element type, u64 count, elements)
//! tensor_info[tensor_count]:
//!     string name
//!     u32    n_dims      (1..=4)
//!     u64    ne[n_dims]  (ne[0] is the row length; numpy's shape is reversed)
//!     u32    ggml_type
//!     u64    offset      (from the start of the data section; a multiple of the alignment)
//! padding to `general.alignment` (u32, default 32)
//! data section
//! ```
//!
//! Validation: every count is checked against the bytes left before anything
//! is allocated for it (each entry takes at least a fixed number of bytes, so
//! a count can never ask for more memory than the file's length justifies);
//! keys and tensor names must be UTF-8 and unique; nested arrays, unknown value
//! types and unknown GGML types are refused; dimensions' products, byte sizes
//! and offsets are computed with overflow checks; every tensor must lie inside
//! the file, start at an aligned offset, and overlap no other tensor.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{format_err, Error, Result};
use crate::quant::ggml_type;

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Most dimensions a GGML tensor has.
pub const MAX_DIMS: usize = 4;

/// A metadata value type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte, 0 or 1)
    Bool = 7,
    /// string (u64 length + UTF-8)
    String = 8,
    /// array (u32 element type, u64 count, elements)
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// A metadata value. Scalars are decoded; strings and arrays are byte ranges
/// into the file, decoded on access.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any integer type, widened.
    Int(i128),
    /// f32 or f64, widened.
    Float(f64),
    /// bool.
    Bool(bool),
    /// A string: its bytes' range in the file (UTF-8 checked on access).
    String(Range<usize>),
    /// An array: element type, count, and the range of its elements.
    Array {
        /// Element type (never `Array`).
        elem: ValueType,
        /// Number of elements.
        count: usize,
        /// Byte range of the elements.
        bytes: Range<usize>,
    },
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// GGML dims, `ne[0]` (the row length) first.
    pub ne: Vec<u64>,
    /// GGML type id.
    pub ggml_type: u32,
    /// Absolute byte range of the data in the file.
    pub data: Range<usize>,
}

impl TensorInfo {
    /// The shape in numpy order (outermost first), as gguf-py prints it.
    pub fn numpy_shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    /// The GGML type's name (`Q4_K`, ...).
    pub fn type_name(&self) -> &'static str {
        ggml_type(self.ggml_type).map_or("?", |t| t.0)
    }
}

/// A validated GGUF header: metadata and tensor table, with ranges into the
/// bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// The format version (2 or 3).
    pub version: u32,
    /// The data alignment.
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    kv: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &dyn Fn() -> String) -> Result<Range<usize>> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let r = self.pos..end;
                self.pos = end;
                Ok(r)
            }
            None => Err(Error::Truncated {
                file: self.file.to_string(),
                field: field(),
                needed: (self.pos as u64).saturating_add(n as u64),
                len: self.b.len() as u64,
            }),
        }
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32> {
        let r = self.take(4, field)?;
        Ok(u32::from_le_bytes(self.b[r].try_into().unwrap_or([0; 4])))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        let r = self.take(8, field)?;
        Ok(u64::from_le_bytes(self.b[r].try_into().unwrap_or([0; 8])))
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    /// A length-prefixed string's byte range.
    fn string(&mut self, field: &dyn Fn() -> String) -> Result<Range<usize>> {
        let n = self.u64(&|| format!("{} length", field()))?;
        if n > self.left() as u64 {
            return Err(Error::Truncated {
                file: self.file.to_string(),
                field: field(),
                needed: (self.pos as u64).saturating_add(n),
                len: self.b.len() as u64,
            });
        }
        self.take(n as usize, field)
    }

    fn utf8(&mut self, field: &dyn Fn() -> String) -> Result<String> {
        let r = self.string(field)?;
        std::str::from_utf8(&self.b[r])
            .map(str::to_string)
            .map_err(|_| format_err(self.file, field(), "not valid UTF-8"))
    }
}

fn count_of(c: &Cursor<'_>, n: u64, min_each: usize, field: &str) -> Result<usize> {
    let max = (c.left() / min_each) as u64;
    if n > max {
        return Err(Error::Truncated {
            file: c.file.to_string(),
            field: format!("{field} ({n} entries of at least {min_each} bytes each)"),
            needed: (c.pos as u64).saturating_add(n.saturating_mul(min_each as u64)),
            len: c.b.len() as u64,
        });
    }
    Ok(n as usize)
}

impl GgufHeader {
    /// Parses and validates the header of a GGUF file held in `bytes`.
    /// `file` names the source in error messages.
    pub fn parse(bytes: &[u8], file: &str) -> Result<GgufHeader> {
        let mut c = Cursor {
            b: bytes,
            pos: 0,
            file,
        };
        let magic = c.take(4, &|| "magic".into())?;
        if bytes[magic] != GGUF_MAGIC {
            return Err(format_err(
                file,
                "magic",
                "the file does not start with \"GGUF\"",
            ));
        }
        let version = c.u32(&|| "version".into())?;
        if version == 0x0300_0000 || version == 0x0200_0000 {
            return Err(format_err(
                file,
                "version",
                "big-endian GGUF files are not supported",
            ));
        }
        if version != 2 && version != 3 {
            return Err(format_err(
                file,
                "version",
                format!("version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.u64(&|| "tensor_count".into())?;
        let n_kv = c.u64(&|| "metadata_kv_count".into())?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        let n_kv = count_of(&c, n_kv, 13, "metadata_kv")?;
        let mut kv = Vec::new();
        let mut kv_index = HashMap::new();
        for i in 0..n_kv {
            let key = c.utf8(&|| format!("metadata key #{i}"))?;
            let ty = c.u32(&|| format!("type of metadata `{key}`"))?;
            let ty = ValueType::from_u32(ty).ok_or_else(|| {
                format_err(
                    file,
                    format!("type of metadata `{key}`"),
                    format!("unknown value type {ty}"),
                )
            })?;
            let value = Self::value(&mut c, ty, &key)?;
            if kv_index.insert(key.clone(), kv.len()).is_some() {
                return Err(format_err(
                    file,
                    format!("metadata `{key}`"),
                    "duplicate key",
                ));
            }
            kv.push((key, value));
        }
        let alignment = match kv_index.get("general.alignment").map(|&i| &kv[i].1) {
            None => 32,
            Some(Value::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() && *a <= 1 << 30 => {
                *a as usize
            }
            Some(v) => {
                return Err(format_err(
                    file,
                    "metadata `general.alignment`",
                    format!("{v:?} is not a power of two"),
                ))
            }
        };
        // A tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes.
        let n_tensors = count_of(&c, n_tensors, 32, "tensor_info")?;
        struct Raw {
            name: String,
            ne: Vec<u64>,
            ty: u32,
            offset: u64,
            size: u64,
        }
        let mut raws = Vec::new();
        for i in 0..n_tensors {
            let name = c.utf8(&|| format!("tensor #{i} name"))?;
            let n_dims = c.u32(&|| format!("tensor `{name}` n_dims"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(format_err(
                    file,
                    format!("tensor `{name}` n_dims"),
                    format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = c.u64(&|| format!("tensor `{name}` ne[{d}]"))?;
                if v > i64::MAX as u64 {
                    return Err(format_err(
                        file,
                        format!("tensor `{name}` ne[{d}]"),
                        format!("{v} is negative as int64"),
                    ));
                }
                ne.push(v);
            }
            let ty = c.u32(&|| format!("tensor `{name}` type"))?;
            let offset = c.u64(&|| format!("tensor `{name}` offset"))?;
            let (tname, blck, tsize) = ggml_type(ty).ok_or_else(|| {
                format_err(
                    file,
                    format!("tensor `{name}` type"),
                    format!("unknown GGML type id {ty}"),
                )
            })?;
            let elems = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    format_err(
                        file,
                        format!("tensor `{name}` shape"),
                        format!("{ne:?} overflows"),
                    )
                })?;
            if ne[0] % blck != 0 {
                return Err(format_err(
                    file,
                    format!("tensor `{name}` shape"),
                    format!(
                        "row length {} is not a multiple of the {tname} block length {blck}",
                        ne[0]
                    ),
                ));
            }
            let size = (elems / blck)
                .checked_mul(tsize)
                .ok_or_else(|| format_err(file, format!("tensor `{name}` size"), "overflows"))?;
            if offset % alignment as u64 != 0 {
                return Err(format_err(
                    file,
                    format!("tensor `{name}` offset"),
                    format!("{offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            raws.push(Raw {
                name,
                ne,
                ty,
                offset,
                size,
            });
        }
        let data_offset = c
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| format_err(file, "data section offset", "overflows"))?;
        let len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raws.len());
        let mut tensor_index = HashMap::with_capacity(raws.len());
        for r in raws {
            let start = (data_offset as u64).checked_add(r.offset);
            let end = start.and_then(|s| s.checked_add(r.size));
            let Some(end) = end.filter(|&e| e <= len) else {
                return Err(Error::Truncated {
                    file: file.to_string(),
                    field: format!(
                        "data of tensor `{}` ({} bytes at data offset {})",
                        r.name, r.size, r.offset
                    ),
                    needed: end.unwrap_or(u64::MAX),
                    len,
                });
            };
            let start = data_offset + r.offset as usize;
            if tensor_index.insert(r.name.clone(), tensors.len()).is_some() {
                return Err(format_err(
                    file,
                    format!("tensor `{}`", r.name),
                    "duplicate name",
                ));
            }
            tensors.push(TensorInfo {
                name: r.name,
                ne: r.ne,
                ggml_type: r.ty,
                data: start..end as usize,
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
                    format!("tensor `{}` offset", b.name),
                    format!("its data overlaps tensor `{}`", a.name),
                ));
            }
        }
        Ok(GgufHeader {
            version,
            alignment,
            data_offset,
            kv,
            kv_index,
            tensors,
            tensor_index,
        })
    }

    fn value(c: &mut Cursor<'_>, ty: ValueType, key: &str) -> Result<Value> {
        let field = || format!("value of metadata `{key}`");
        if let Some(n) = ty.fixed_size() {
            let r = c.take(n, &field)?;
            return Self::scalar(&c.b[r], ty, c.file, key);
        }
        match ty {
            ValueType::String => Ok(Value::String(c.string(&field)?)),
            _ => {
                let et = c.u32(&|| format!("element type of metadata `{key}`"))?;
                let elem = ValueType::from_u32(et).ok_or_else(|| {
                    format_err(
                        c.file,
                        format!("element type of metadata `{key}`"),
                        format!("unknown value type {et}"),
                    )
                })?;
                if elem == ValueType::Array {
                    return Err(format_err(
                        c.file,
                        format!("metadata `{key}`"),
                        "nested arrays are not supported",
                    ));
                }
                let n = c.u64(&|| format!("length of metadata `{key}`"))?;
                let min = elem.fixed_size().unwrap_or(8);
                let count = count_of(c, n, min, &format!("array `{key}`"))?;
                let start = c.pos;
                if let Some(sz) = elem.fixed_size() {
                    c.take(count * sz, &field)?;
                    if elem == ValueType::Bool {
                        if let Some(b) = c.b[start..c.pos].iter().find(|&&b| b > 1) {
                            return Err(format_err(
                                c.file,
                                format!("metadata `{key}`"),
                                format!("bool value {b}"),
                            ));
                        }
                    }
                } else {
                    for i in 0..count {
                        c.string(&|| format!("element {i} of metadata `{key}`"))?;
                    }
                }
                Ok(Value::Array {
                    elem,
                    count,
                    bytes: start..c.pos,
                })
            }
        }
    }

    fn scalar(b: &[u8], ty: ValueType, file: &str, key: &str) -> Result<Value> {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        let u = u64::from_le_bytes(a);
        Ok(match ty {
            ValueType::U8 | ValueType::U16 | ValueType::U32 | ValueType::U64 => {
                Value::Int(i128::from(u))
            }
            ValueType::I8 => Value::Int(i128::from(b[0] as i8)),
            ValueType::I16 => Value::Int(i128::from(u as u16 as i16)),
            ValueType::I32 => Value::Int(i128::from(u as u32 as i32)),
            ValueType::I64 => Value::Int(i128::from(u as i64)),
            ValueType::F32 => Value::Float(f64::from(f32::from_bits(u as u32))),
            ValueType::F64 => Value::Float(f64::from_bits(u)),
            ValueType::Bool => match b[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => {
                    return Err(format_err(
                        file,
                        format!("metadata `{key}`"),
                        format!("bool value {v}"),
                    ))
                }
            },
            ValueType::String | ValueType::Array => Value::Int(0),
        })
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    /// Every tensor's header entry, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's header entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

/// Reads metadata values of a parsed header out of the file's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    /// The header.
    pub header: &'a GgufHeader,
    /// The file's bytes.
    pub bytes: &'a [u8],
    /// The file's name, for messages.
    pub file: &'a str,
}

impl<'a> Metadata<'a> {
    fn err(&self, key: &str, detail: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_string(),
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    /// The bytes of a value's range (an error, not a panic, when `bytes` is
    /// not the buffer `header` was parsed from).
    fn slice(&self, key: &str, r: &Range<usize>) -> Result<&'a [u8]> {
        self.bytes
            .get(r.clone())
            .ok_or_else(|| self.err(key, "value lies outside the file (header and bytes differ)"))
    }

    /// Whether the key is present.
    pub fn has(&self, key: &str) -> bool {
        self.header.get(key).is_some()
    }

    /// A string value; `Ok(None)` when the key is absent.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::String(r)) => std::str::from_utf8(self.slice(key, r)?)
                .map(Some)
                .map_err(|_| self.err(key, "not valid UTF-8")),
            Some(v) => Err(self.err(key, format!("expected a string, found {}", kind(v)))),
        }
    }

    /// An unsigned integer value (any integer type, non-negative, fits usize).
    /// An array whose elements are all equal counts as that value (llama.cpp
    /// writes per-layer arrays for some keys).
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => usize::try_from(*i)
                .map(Some)
                .map_err(|_| self.err(key, format!("{i} is not a valid count"))),
            Some(Value::Array { elem, count, bytes })
                if elem.fixed_size().is_some()
                    && *elem != ValueType::F32
                    && *elem != ValueType::F64
                    && *elem != ValueType::Bool
                    && *count > 0 =>
            {
                let sz = elem.fixed_size().unwrap_or(1);
                let mut first = None;
                for ch in self.slice(key, bytes)?.chunks_exact(sz) {
                    let Value::Int(v) = GgufHeader::scalar(ch, *elem, self.file, key)? else {
                        continue;
                    };
                    match first {
                        None => first = Some(v),
                        Some(f) if f != v => {
                            return Err(self.err(
                                key,
                                "per-layer values differ; only uniform layers are supported",
                            ))
                        }
                        _ => {}
                    }
                }
                let v = first.unwrap_or(0);
                usize::try_from(v)
                    .map(Some)
                    .map_err(|_| self.err(key, format!("{v} is not a valid count")))
            }
            Some(v) => Err(self.err(key, format!("expected an integer, found {}", kind(v)))),
        }
    }

    /// A required unsigned integer value.
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// A float value (f32 or f64 as stored; integers are accepted).
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(Value::Int(i)) => Ok(Some(*i as f64)),
            Some(v) => Err(self.err(key, format!("expected a number, found {}", kind(v)))),
        }
    }

    /// A bool value.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected a bool, found {}", kind(v)))),
        }
    }

    /// A string array as raw byte strings; `Ok(None)` when absent.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&'a [u8]>>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::Array {
                elem: ValueType::String,
                count,
                bytes,
            }) => {
                let mut out = Vec::with_capacity(*count);
                let mut rest = self.slice(key, bytes)?;
                for _ in 0..*count {
                    let s = rest
                        .get(..8)
                        .and_then(|l| usize::try_from(u64::from_le_bytes(l.try_into().ok()?)).ok())
                        .and_then(|n| rest.get(8..8usize.checked_add(n)?))
                        .ok_or_else(|| self.err(key, "array runs past its bytes"))?;
                    out.push(s);
                    rest = &rest[8 + s.len()..];
                }
                Ok(Some(out))
            }
            Some(v) => Err(self.err(
                key,
                format!("expected an array of strings, found {}", kind(v)),
            )),
        }
    }

    /// A numeric array widened to f64 (f32 scores, i32 token types, ...).
    pub fn num_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.header.get(key) {
            None => Ok(None),
            Some(Value::Array { elem, count, bytes }) if elem.fixed_size().is_some() => {
                let sz = elem.fixed_size().unwrap_or(1);
                let mut out = Vec::with_capacity(*count);
                for ch in self.slice(key, bytes)?.chunks_exact(sz) {
                    out.push(match GgufHeader::scalar(ch, *elem, self.file, key)? {
                        Value::Int(i) => i as f64,
                        Value::Float(f) => f,
                        Value::Bool(b) => f64::from(u8::from(b)),
                        _ => 0.0,
                    });
                }
                Ok(Some(out))
            }
            Some(v) => Err(self.err(key, format!("expected a numeric array, found {}", kind(v)))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Bool(_) => "a bool",
        Value::String(_) => "a string",
        Value::Array { .. } => "an array",
    }
}

/// Builds GGUF files in memory, for tests and fuzz seeds.
#[doc(hidden)]
pub mod build {
    /// A metadata value to write.
    #[derive(Clone, Debug)]
    pub enum V {
        /// u32
        U32(u32),
        /// i32
        I32(i32),
        /// u64
        U64(u64),
        /// f32
        F32(f32),
        /// bool
        Bool(bool),
        /// string
        Str(String),
        /// array of strings
        Strs(Vec<String>),
        /// array of f32
        F32s(Vec<f32>),
        /// array of i32
        I32s(Vec<i32>),
    }

    fn s(out: &mut Vec<u8>, x: &str) {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    }

    /// Writes a GGUF v3 file: metadata, then tensors (name, ne, type id, raw
    /// bytes) at 32-byte aligned offsets.
    pub fn gguf(kv: &[(&str, V)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut o = Vec::new();
        o.extend(b"GGUF");
        o.extend(3u32.to_le_bytes());
        o.extend((tensors.len() as u64).to_le_bytes());
        o.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            s(&mut o, k);
            match v {
                V::U32(x) => {
                    o.extend(4u32.to_le_bytes());
                    o.extend(x.to_le_bytes());
                }
                V::I32(x) => {
                    o.extend(5u32.to_le_bytes());
                    o.extend(x.to_le_bytes());
                }
                V::U64(x) => {
                    o.extend(10u32.to_le_bytes());
                    o.extend(x.to_le_bytes());
                }
                V::F32(x) => {
                    o.extend(6u32.to_le_bytes());
                    o.extend(x.to_le_bytes());
                }
                V::Bool(x) => {
                    o.extend(7u32.to_le_bytes());
                    o.push(u8::from(*x));
                }
                V::Str(x) => {
                    o.extend(8u32.to_le_bytes());
                    s(&mut o, x);
                }
                V::Strs(xs) => {
                    o.extend(9u32.to_le_bytes());
                    o.extend(8u32.to_le_bytes());
                    o.extend((xs.len() as u64).to_le_bytes());
                    for x in xs {
                        s(&mut o, x);
                    }
                }
                V::F32s(xs) => {
                    o.extend(9u32.to_le_bytes());
                    o.extend(6u32.to_le_bytes());
                    o.extend((xs.len() as u64).to_le_bytes());
                    for x in xs {
                        o.extend(x.to_le_bytes());
                    }
                }
                V::I32s(xs) => {
                    o.extend(9u32.to_le_bytes());
                    o.extend(5u32.to_le_bytes());
                    o.extend((xs.len() as u64).to_le_bytes());
                    for x in xs {
                        o.extend(x.to_le_bytes());
                    }
                }
            }
        }
        let mut off = 0u64;
        let mut offs = Vec::new();
        for (name, ne, ty, data) in tensors {
            s(&mut o, name);
            o.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                o.extend(d.to_le_bytes());
            }
            o.extend(ty.to_le_bytes());
            o.extend(off.to_le_bytes());
            offs.push(off);
            off = (off + data.len() as u64).div_ceil(32) * 32;
        }
        while o.len() % 32 != 0 {
            o.push(0);
        }
        let base = o.len();
        for ((_, _, _, data), off) in tensors.iter().zip(offs) {
            o.resize(base + off as usize, 0);
            o.extend(data);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::build::{gguf, V};
    use super::*;

    fn sample() -> Vec<u8> {
        gguf(
            &[
                ("general.architecture", V::Str("llama".into())),
                ("llama.block_count", V::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    V::Strs(vec!["a".into(), "bc".into()]),
                ),
                ("llama.rope.freq_base", V::F32(1e4)),
            ],
            &[
                ("x", vec![4, 2], 0, vec![1; 32]),
                ("y", vec![32], 8, vec![2; 34]),
            ],
        )
    }

    #[test]
    fn parses_and_reads() {
        let b = sample();
        let h = GgufHeader::parse(&b, "t.gguf").unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.tensors().len(), 2);
        let y = h.tensor("y").unwrap();
        assert_eq!(y.numpy_shape(), vec![32]);
        assert_eq!(&b[y.data.clone()], &[2; 34][..]);
        let m = Metadata {
            header: &h,
            bytes: &b,
            file: "t.gguf",
        };
        assert_eq!(m.str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(m.usize("llama.block_count").unwrap(), Some(2));
        assert_eq!(m.f64("llama.rope.freq_base").unwrap(), Some(1e4));
        let toks = m.str_array("tokenizer.ggml.tokens").unwrap().unwrap();
        assert_eq!(toks, vec![&b"a"[..], &b"bc"[..]]);
        assert!(m
            .usize("general.architecture")
            .unwrap_err()
            .to_string()
            .contains("expected an integer"));
    }

    #[test]
    fn every_truncation_is_an_error_naming_a_field() {
        let b = sample();
        for n in 0..b.len() {
            let e = GgufHeader::parse(&b[..n], "t.gguf")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.gguf: "), "{e}");
            assert!(e.contains("truncated") || e.contains("invalid"), "{e}");
        }
        let e = GgufHeader::parse(&b[..b.len() - 1], "t.gguf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated: data of tensor `y`"), "{e}");
    }

    #[test]
    fn hostile_counts_and_overlaps() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufHeader::parse(&b, "t").unwrap_err().to_string();
        assert!(e.contains("tensor_info"), "{e}");
        let mut b = sample();
        b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let e = GgufHeader::parse(&b, "t").unwrap_err().to_string();
        assert!(e.contains("metadata_kv"), "{e}");
        // Both tensors at offset 0.
        let mut b = sample();
        let pos = b.windows(1).rposition(|w| w == b"y").unwrap();
        let off = pos + 1 + 4 + 8 + 4;
        b[off..off + 8].copy_from_slice(&0u64.to_le_bytes());
        let e = GgufHeader::parse(&b, "t").unwrap_err().to_string();
        assert!(e.contains("overlaps tensor `x`"), "{e}");
        // Unknown GGML type.
        let mut b = sample();
        b[off - 4..off].copy_from_slice(&99u32.to_le_bytes());
        let e = GgufHeader::parse(&b, "t").unwrap_err().to_string();
        assert!(e.contains("unknown GGML type id 99"), "{e}");
        // Bad magic / version.
        let mut b = sample();
        b[0] = b'X';
        assert!(GgufHeader::parse(&b, "t")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut b = sample();
        b[4] = 1;
        assert!(GgufHeader::parse(&b, "t")
            .unwrap_err()
            .to_string()
            .contains("version 1"));
    }
}
