//! A minimal protobuf writer for the ONNX messages the exporter emits.
//!
//! Only encoding is needed, and only for a handful of messages, so the wire
//! format is written by hand (varints, length-delimited fields, packed
//! repeated scalars) rather than pulling a protobuf code generator into the
//! CLI's build. Field numbers are those of `onnx/onnx.proto` (IR version 8);
//! the tests of the `tract` feature and `scripts/onnx-check.sh`
//! (`onnx.checker.check_model`) are the independent decoders that check them.

/// ONNX `TensorProto.DataType` values used here.
pub mod dtype {
    /// `FLOAT`.
    pub const FLOAT: i32 = 1;
    /// `INT8`.
    pub const INT8: i32 = 3;
    /// `INT64`.
    pub const INT64: i32 = 7;
}

/// ONNX `AttributeProto.AttributeType` values used here.
mod attr_type {
    pub const FLOAT: u64 = 1;
    pub const INT: u64 = 2;
    pub const INTS: u64 = 7;
}

/// A message being encoded: fields are appended in any order (protobuf
/// readers accept that; we keep field-number order for readability of dumps).
#[derive(Debug, Default, Clone)]
pub struct Msg(Vec<u8>);

impl Msg {
    /// An empty message.
    pub fn new() -> Self {
        Self(Vec::new())
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    /// A varint field (int32/int64/enum; negative values as 10-byte two's complement).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    /// A `float` field (fixed32).
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    /// A `string` field.
    pub fn str(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }
    /// An embedded message field.
    pub fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
    /// A packed repeated int64 field.
    pub fn packed_ints(&mut self, field: u32, v: &[i64]) -> &mut Self {
        let mut p = Msg::new();
        for &x in v {
            p.varint(x as u64);
        }
        self.bytes(field, &p.0)
    }
    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// `TensorProto` with little-endian `raw_data`.
pub fn tensor(name: &str, dims: &[usize], data_type: i32, raw: &[u8]) -> Msg {
    let mut t = Msg::new();
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    t.packed_ints(1, &dims)
        .int(2, i64::from(data_type))
        .str(8, name)
        .bytes(9, raw);
    t
}

/// `ValueInfoProto` of a float tensor with a static shape.
pub fn value_info(name: &str, dims: &[usize]) -> Msg {
    let mut shape = Msg::new();
    for &d in dims {
        let mut dim = Msg::new();
        dim.int(1, d as i64);
        shape.msg(1, &dim);
    }
    let mut tt = Msg::new();
    tt.int(1, i64::from(dtype::FLOAT)).msg(2, &shape);
    let mut ty = Msg::new();
    ty.msg(1, &tt);
    let mut v = Msg::new();
    v.str(1, name).msg(2, &ty);
    v
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `INT`.
    Int(&'static str, i64),
    /// `FLOAT`.
    Float(&'static str, f32),
    /// `INTS`.
    Ints(&'static str, Vec<i64>),
}

impl Attr {
    fn encode(&self) -> Msg {
        let mut a = Msg::new();
        match self {
            Attr::Int(n, v) => {
                a.str(1, n).int(3, *v).int(20, attr_type::INT as i64);
            }
            Attr::Float(n, v) => {
                a.str(1, n).float(2, *v).int(20, attr_type::FLOAT as i64);
            }
            Attr::Ints(n, v) => {
                a.str(1, n);
                // Repeated int64 in AttributeProto is declared unpacked in
                // proto2; write one key per value, which every reader accepts.
                for &x in v {
                    a.int(8, x);
                }
                a.int(20, attr_type::INTS as i64);
            }
        }
        a
    }
}

/// `NodeProto`.
pub fn node(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) -> Msg {
    let mut n = Msg::new();
    for i in inputs {
        n.str(1, i);
    }
    for o in outputs {
        n.str(2, o);
    }
    n.str(3, name).str(4, op_type);
    for a in attrs {
        n.msg(5, &a.encode());
    }
    n
}

/// `ModelProto` around a `GraphProto` made of the given parts.
#[allow(clippy::too_many_arguments)]
pub fn model(
    graph_name: &str,
    doc: &str,
    nodes: &[Msg],
    initializers: &[Msg],
    inputs: &[Msg],
    outputs: &[Msg],
    opset: i64,
    metadata: &[(String, String)],
) -> Vec<u8> {
    let mut g = Msg::new();
    for n in nodes {
        g.msg(1, n);
    }
    g.str(2, graph_name);
    for t in initializers {
        g.msg(5, t);
    }
    g.str(10, doc);
    for i in inputs {
        g.msg(11, i);
    }
    for o in outputs {
        g.msg(12, o);
    }
    let mut opset_id = Msg::new();
    opset_id.str(1, "").int(2, opset);
    let mut m = Msg::new();
    m.int(1, IR_VERSION)
        .str(2, "taskpath")
        .str(3, env!("CARGO_PKG_VERSION"))
        .msg(7, &g)
        .msg(8, &opset_id);
    for (k, v) in metadata {
        let mut e = Msg::new();
        e.str(1, k).str(2, v);
        m.msg(14, &e);
    }
    m.into_bytes()
}

/// ONNX IR version written: 8 is the one released with opset 17.
pub const IR_VERSION: i64 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_spec_examples() {
        // From the protobuf encoding guide: 150 -> 96 01; 1 -> 01; 300 -> ac 02.
        let mut m = Msg::new();
        m.int(1, 150);
        assert_eq!(m.into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Msg::new();
        m.int(2, 300);
        assert_eq!(m.into_bytes(), [0x10, 0xac, 0x02]);
        // Negative int64 is ten bytes of two's complement.
        let mut m = Msg::new();
        m.int(1, -1);
        assert_eq!(
            m.into_bytes(),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn strings_and_floats_are_length_delimited_and_fixed32() {
        let mut m = Msg::new();
        m.str(2, "testing").float(3, 1.0);
        // "testing" example of the guide, then key 3<<3|5 = 0x1d and 1.0f LE.
        assert_eq!(
            m.into_bytes(),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g', 0x1d, 0, 0, 0x80, 0x3f]
        );
    }

    #[test]
    fn packed_ints_prefix_the_payload_length() {
        let mut m = Msg::new();
        m.packed_ints(4, &[3, 270, 86942]);
        // The guide's packed example: 22 06 03 8e 02 9e a7 05.
        assert_eq!(
            m.into_bytes(),
            [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]
        );
    }
}
