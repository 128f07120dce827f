//! Zero-copy weights: finding the `raw_data` of the main graph's
//! initializers in the model file's bytes.
//!
//! The protobuf decoder copies every `bytes` field, so decoding a 90 MB
//! model would copy (and page-fault in) 90 MB of weights before sharc ever
//! looks at them. Instead, this module walks the wire format of
//! `ModelProto.graph.initializer[*].raw_data` and produces a copy of the
//! model *without* the large `raw_data` payloads (fixing up the enclosing
//! length prefixes), together with the byte range of each payload in the
//! original buffer. The importer decodes the small copy and turns each
//! range into a weight that points into the memory-mapped model file.
//!
//! Anything unexpected (a malformed or truncated message, a graph field
//! given twice) makes the scan give up, and the importer falls back to the
//! ordinary decoder, which then reports the problem.

/// Field numbers from onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// The model without large initializer payloads, and where those payloads
/// are: one entry per initializer of the main graph, in order.
pub(crate) struct Stripped {
    pub bytes: Vec<u8>,
    pub raw_ranges: Vec<Option<(usize, usize)>>,
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field: its number, wire type, the byte range of the whole field
/// (tag included) and, for length-delimited fields, of the payload.
struct Field {
    number: u64,
    wire: u64,
    whole: (usize, usize),
    payload: (usize, usize),
}

/// Splits a message into fields; `None` if it is malformed.
fn fields(b: &[u8], start: usize, end: usize) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let at = pos;
        let tag = varint(b, &mut pos)?;
        let (number, wire) = (tag >> 3, tag & 7);
        if number == 0 {
            return None;
        }
        let payload = match wire {
            WIRE_VARINT => {
                let s = pos;
                varint(b, &mut pos)?;
                (s, pos)
            }
            WIRE_I64 => (pos, pos.checked_add(8)?),
            WIRE_I32 => (pos, pos.checked_add(4)?),
            WIRE_LEN => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                (pos, pos.checked_add(len)?)
            }
            _ => return None,
        };
        pos = payload.1;
        if pos > end {
            return None;
        }
        out.push(Field { number, wire, whole: (at, pos), payload });
    }
    Some(out)
}

fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | WIRE_LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Strips the `raw_data` of main-graph initializers of at least `min_len`
/// bytes. `None` when the bytes are not a model this scan understands.
pub(crate) fn strip_initializer_data(b: &[u8], min_len: usize) -> Option<Stripped> {
    let top = fields(b, 0, b.len())?;
    if top.iter().filter(|f| f.number == MODEL_GRAPH).count() != 1 {
        return None;
    }
    let mut out = Vec::with_capacity(1 << 16);
    let mut raw_ranges = Vec::new();
    for f in &top {
        if f.number != MODEL_GRAPH {
            out.extend_from_slice(&b[f.whole.0..f.whole.1]);
            continue;
        }
        if f.wire != WIRE_LEN {
            return None;
        }
        let mut graph = Vec::with_capacity(1 << 16);
        for gf in fields(b, f.payload.0, f.payload.1)? {
            if gf.number != GRAPH_INITIALIZER {
                graph.extend_from_slice(&b[gf.whole.0..gf.whole.1]);
                continue;
            }
            if gf.wire != WIRE_LEN {
                return None;
            }
            let tfs = fields(b, gf.payload.0, gf.payload.1)?;
            // For repeated occurrences of a bytes field the last one wins.
            let last_raw = tfs.iter().rev().find(|tf| tf.number == TENSOR_RAW_DATA && tf.wire == WIRE_LEN);
            let range =
                last_raw.map(|tf| (tf.payload.0, tf.payload.1 - tf.payload.0)).filter(|&(_, len)| len >= min_len);
            let mut tensor = Vec::new();
            if range.is_some() {
                for tf in tfs.iter().filter(|tf| tf.number != TENSOR_RAW_DATA) {
                    tensor.extend_from_slice(&b[tf.whole.0..tf.whole.1]);
                }
            } else {
                tensor.extend_from_slice(&b[gf.payload.0..gf.payload.1]);
            }
            raw_ranges.push(range);
            put_len_field(&mut graph, GRAPH_INITIALIZER, &tensor);
        }
        put_len_field(&mut out, MODEL_GRAPH, &graph);
    }
    Some(Stripped { bytes: out, raw_ranges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use onnx_protobuf::{Message, ModelProto};

    #[test]
    fn strips_large_payloads_and_keeps_everything_else() {
        let mut big = tensor_f32("big", &[512], &[]);
        big.raw_data = (0..2048u32).map(|i| i as u8).collect();
        let mut small = tensor_f32("small", &[2], &[]);
        small.raw_data = vec![0, 0, 128, 63, 0, 0, 0, 64];
        let typed = tensor_f32("typed", &[1], &[3.0]);
        let g = graph(
            "g",
            vec![node("Relu", &["big"], &["y"], vec![])],
            vec![],
            vec![vi("y", 1, &["512"])],
            vec![big, small, typed],
        );
        let m = model(g, 17);
        let bytes = m.write_to_bytes().unwrap();
        let s = strip_initializer_data(&bytes, 1024).unwrap();
        assert_eq!(s.raw_ranges.len(), 3);
        let (off, len) = s.raw_ranges[0].unwrap();
        assert_eq!(&bytes[off..off + len], m.graph.initializer[0].raw_data.as_slice());
        assert_eq!(s.raw_ranges[1], None);
        assert!(s.bytes.len() < bytes.len() - 2000);
        let parsed = ModelProto::parse_from_bytes(&s.bytes).unwrap();
        let mut want = m.clone();
        want.graph.as_mut().unwrap().initializer[0].raw_data.clear();
        assert_eq!(parsed, want);
    }

    #[test]
    fn malformed_input_gives_up() {
        let g = graph("g", vec![], vec![], vec![], vec![tensor_f32("t", &[1], &[1.0])]);
        let bytes = model(g, 17).write_to_bytes().unwrap();
        for cut in 1..bytes.len() {
            if let Some(s) = strip_initializer_data(&bytes[..cut], 0) {
                // A prefix that happens to be well formed must still parse.
                let _ = ModelProto::parse_from_bytes(&s.bytes);
            }
        }
        assert!(strip_initializer_data(&[0xff; 12], 0).is_none());
        assert!(strip_initializer_data(&[], 0).is_none(), "no graph");
    }
}
