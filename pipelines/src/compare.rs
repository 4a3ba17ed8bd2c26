//! Comparing artifacts by what they hold: per-tensor distances between two
//! safetensors files (`pipe diff`), and the first difference between two versions of
//! an artifact, decoded as tensors or JSON (`pipe verify`).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::tensors::{TensorFile, TensorFileError};

/// One tensor of two checkpoints (A and B).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDiff {
    pub name: String,
    pub shape_a: Option<Vec<usize>>,
    pub shape_b: Option<Vec<usize>>,
    pub norm_a: Option<f64>,
    pub norm_b: Option<f64>,
    /// `||B - A|| / ||A||` (L2 over all elements); `None` when the shapes differ, the
    /// tensor is on one side only, or A is all zeros and B is not.
    pub rel_l2: Option<f64>,
    /// `max |B - A|` over elements; `None` as for `rel_l2` (shapes).
    pub max_abs: Option<f64>,
}

/// Per-tensor comparison of two safetensors files, by tensor name.
pub fn diff_tensors(a: &[u8], b: &[u8]) -> Result<Vec<TensorDiff>, TensorFileError> {
    let (a, b) = (TensorFile::decode(a)?, TensorFile::decode(b)?);
    let mut names: Vec<&str> = a.names().chain(b.names()).collect();
    names.sort_unstable();
    names.dedup();
    let mut diffs = Vec::new();
    for name in names {
        let (shape_a, shape_b) = (a.shape(name).ok().map(<[usize]>::to_vec), b.shape(name).ok().map(<[usize]>::to_vec));
        let (values_a, values_b) = (values(&a, name), values(&b, name));
        let norm = |values: &Option<Vec<f64>>| values.as_ref().map(|v| v.iter().map(|x| x * x).sum::<f64>().sqrt());
        let (norm_a, norm_b) = (norm(&values_a), norm(&values_b));
        let (mut rel_l2, mut max_abs) = (None, None);
        if let (Some(va), Some(vb)) = (&values_a, &values_b) {
            if shape_a == shape_b && va.len() == vb.len() {
                let diff: f64 = va.iter().zip(vb).map(|(x, y)| (y - x) * (y - x)).sum::<f64>().sqrt();
                max_abs = Some(va.iter().zip(vb).map(|(x, y)| (y - x).abs()).fold(0.0, f64::max));
                let base = norm_a.unwrap_or(0.0);
                rel_l2 = if base > 0.0 {
                    Some(diff / base)
                } else if diff == 0.0 {
                    Some(0.0)
                } else {
                    None
                };
            }
        }
        diffs.push(TensorDiff { name: name.to_string(), shape_a, shape_b, norm_a, norm_b, rel_l2, max_abs });
    }
    Ok(diffs)
}

fn values(file: &TensorFile, name: &str) -> Option<Vec<f64>> {
    if let Ok(values) = file.f32(name) {
        return Some(values.into_iter().map(f64::from).collect());
    }
    file.u32(name).ok().map(|values| values.into_iter().map(f64::from).collect())
}

/// Where two versions of an artifact first differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The first element (flat row-major index, and its coordinates) that differs.
    Tensor {
        name: String,
        index: usize,
        coords: Vec<usize>,
        a: String,
        b: String,
    },
    TensorShape {
        name: String,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    /// A tensor present in only one version (`in_a` tells which).
    TensorOnlyIn {
        name: String,
        in_a: bool,
    },
    /// The first JSON field that differs (`path` like `train_loss[3]` or `metadata.hidden`).
    Json {
        path: String,
        a: String,
        b: String,
    },
    /// Neither decodes (or both decode equal): the first differing byte.
    Bytes {
        offset: usize,
        a: Option<u8>,
        b: Option<u8>,
    },
}

impl Difference {
    /// One line, naming the two sides `a_label` and `b_label` (e.g. "cached", "rerun").
    pub fn describe(&self, a_label: &str, b_label: &str) -> String {
        match self {
            Difference::Tensor { name, index, coords, a, b } => {
                let at = coords.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                format!("tensor `{name}` at [{at}] (flat index {index}): {a_label} {a} vs {b_label} {b}")
            }
            Difference::TensorShape { name, a, b } => {
                format!("tensor `{name}` shape: {a_label} {a:?} vs {b_label} {b:?}")
            }
            Difference::TensorOnlyIn { name, in_a } => {
                format!("tensor `{name}` only in the {} version", if *in_a { a_label } else { b_label })
            }
            Difference::Json { path, a, b } => format!("field `{path}`: {a_label} {a} vs {b_label} {b}"),
            Difference::Bytes { offset, a, b } => {
                let byte = |v: &Option<u8>| v.map_or("end of file".to_string(), |v| format!("0x{v:02x}"));
                format!("byte {offset}: {a_label} {} vs {b_label} {}", byte(a), byte(b))
            }
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("a", "b"))
    }
}

/// The first difference between versions `a` and `b` of the artifact `name`, decoded
/// by its extension; `None` when the bytes are identical.
pub fn first_difference(name: &str, a: &[u8], b: &[u8]) -> Option<Difference> {
    if a == b {
        return None;
    }
    let decoded = if name.ends_with(".safetensors") {
        match (TensorFile::decode(a), TensorFile::decode(b)) {
            (Ok(ta), Ok(tb)) => first_tensor_difference(&ta, &tb),
            _ => None,
        }
    } else if name.ends_with(".json") {
        match (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b)) {
            (Ok(va), Ok(vb)) => first_json_difference("", &va, &vb),
            _ => None,
        }
    } else {
        None
    };
    decoded.or_else(|| {
        let offset = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        Some(Difference::Bytes { offset, a: a.get(offset).copied(), b: b.get(offset).copied() })
    })
}

fn first_tensor_difference(a: &TensorFile, b: &TensorFile) -> Option<Difference> {
    let mut names: Vec<&str> = a.names().chain(b.names()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (shape_a, shape_b) = match (a.shape(name), b.shape(name)) {
            (Ok(x), Ok(y)) => (x.to_vec(), y.to_vec()),
            (Ok(_), Err(_)) => return Some(Difference::TensorOnlyIn { name: name.into(), in_a: true }),
            _ => return Some(Difference::TensorOnlyIn { name: name.into(), in_a: false }),
        };
        if shape_a != shape_b {
            return Some(Difference::TensorShape { name: name.into(), a: shape_a, b: shape_b });
        }
        // Bitwise, so -0.0 vs 0.0 and NaN payloads count as differences, as they do in the bytes.
        let elements: (Vec<u32>, Vec<u32>, bool) = match (a.f32(name), b.f32(name)) {
            (Ok(x), Ok(y)) => (x.iter().map(|v| v.to_bits()).collect(), y.iter().map(|v| v.to_bits()).collect(), true),
            _ => (a.u32(name).unwrap_or_default(), b.u32(name).unwrap_or_default(), false),
        };
        let (x, y, float) = elements;
        if let Some(index) = x.iter().zip(&y).position(|(p, q)| p != q) {
            let show = |bits: u32| if float { format!("{:?}", f32::from_bits(bits)) } else { bits.to_string() };
            return Some(Difference::Tensor {
                name: name.into(),
                index,
                coords: coords(index, &shape_a),
                a: show(x[index]),
                b: show(y[index]),
            });
        }
    }
    let meta = |file: &TensorFile| file.meta::<Value>().unwrap_or(Value::Null);
    first_json_difference("metadata", &meta(a), &meta(b))
}

fn coords(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut coords = vec![0; shape.len()];
    for (coord, dim) in coords.iter_mut().zip(shape).rev() {
        if *dim > 0 {
            *coord = index % dim;
            index /= dim;
        }
    }
    coords
}

fn first_json_difference(path: &str, a: &Value, b: &Value) -> Option<Difference> {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let missing = Value::String("(absent)".into());
                first_json_difference(&join(key), x.get(key).unwrap_or(&missing), y.get(key).unwrap_or(&missing))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_json_difference(&format!("{path}[{i}]"), p, q))
        }
        _ if a == b => None,
        _ => Some(Difference::Json { path: path.to_string(), a: short_json(a), b: short_json(b) }),
    }
}

fn short_json(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("[{} items]", items.len()),
        Value::Object(map) => format!("{{{} fields}}", map.len()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(w: &[f32], extra: bool) -> Vec<u8> {
        let mut file = TensorFile::default();
        file.push_f32("w", vec![2, 2], w.to_vec());
        file.push_u32("labels", vec![2], vec![1, 2]);
        if extra {
            file.push_f32("z", vec![1], vec![0.0]);
        }
        file.encode(&serde_json::json!({ "hidden": [4] })).unwrap()
    }

    #[test]
    fn tensor_distances() {
        let a = checkpoint(&[3.0, 0.0, 0.0, 4.0], false);
        let b = checkpoint(&[3.0, 0.0, 0.0, 4.5], true);
        let diffs = diff_tensors(&a, &b).unwrap();
        let names: Vec<&str> = diffs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["labels", "w", "z"]);
        let w = &diffs[1];
        assert_eq!(w.shape_a, Some(vec![2, 2]));
        assert_eq!(w.norm_a, Some(5.0));
        assert_eq!(w.rel_l2, Some(0.1));
        assert_eq!(w.max_abs, Some(0.5));
        assert_eq!(diffs[0].rel_l2, Some(0.0));
        assert_eq!((diffs[2].shape_a.as_ref(), diffs[2].rel_l2), (None, None), "only in B");
    }

    #[test]
    fn first_difference_decodes_tensors_json_and_bytes() {
        let a = checkpoint(&[1.0, 2.0, 3.0, 4.0], false);
        assert_eq!(first_difference("c.safetensors", &a, &a), None);
        let b = checkpoint(&[1.0, 2.0, -3.0, 4.0], false);
        let diff = first_difference("c.safetensors", &a, &b).unwrap();
        assert_eq!(diff.describe("cached", "rerun"), "tensor `w` at [1, 0] (flat index 2): cached 3.0 vs rerun -3.0");

        let x = br#"{"train_loss": [2.3, 1.0], "steps": 10}"#;
        let y = br#"{"train_loss": [2.3, 1.5], "steps": 10}"#;
        assert_eq!(
            first_difference("metrics.json", x, y),
            Some(Difference::Json { path: "train_loss[1]".into(), a: "1.0".into(), b: "1.5".into() })
        );
        assert_eq!(
            first_difference("blob.bin", b"abcd", b"abXd"),
            Some(Difference::Bytes { offset: 2, a: Some(b'c'), b: Some(b'X') })
        );
        // A safetensors file whose header is damaged falls back to bytes.
        let mut broken = a.clone();
        broken[9] ^= 0xff;
        assert!(matches!(first_difference("c.safetensors", &a, &broken), Some(Difference::Bytes { offset: 9, .. })));
    }
}
