//! Tensors as the protocols carry them: a name, a datatype, a shape and
//! row-major data; with the raw little-endian encoding that gRPC's
//! `raw_*_contents` and HTTP's binary extension share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Open Inference Protocol datatypes the engine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    /// Boolean (one byte per element on the wire).
    #[serde(rename = "BOOL")]
    Bool,
    /// Unsigned 8-bit integer.
    #[serde(rename = "UINT8")]
    Uint8,
    /// Signed 32-bit integer.
    #[serde(rename = "INT32")]
    Int32,
    /// Signed 64-bit integer.
    #[serde(rename = "INT64")]
    Int64,
    /// 32-bit float.
    #[serde(rename = "FP32")]
    Fp32,
    /// 64-bit float.
    #[serde(rename = "FP64")]
    Fp64,
    /// Byte strings (UTF-8 text for ONNX string tensors).
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    /// The protocol's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Triton's model-configuration name for the type (`TYPE_FP32`, and
    /// `TYPE_STRING` for BYTES).
    pub fn triton_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Bytes per element in the raw encoding (None for BYTES).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 => Some(1),
            DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "unsupported datatype '{other}' (supported: BOOL, UINT8, INT32, INT64, FP32, FP64, BYTES)"
                )));
            }
        })
    }
}

/// Row-major tensor elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// BOOL elements.
    Bool(Vec<bool>),
    /// UINT8 elements.
    Uint8(Vec<u8>),
    /// INT32 elements.
    Int32(Vec<i32>),
    /// INT64 elements.
    Int64(Vec<i64>),
    /// FP32 elements.
    Fp32(Vec<f32>),
    /// FP64 elements.
    Fp64(Vec<f64>),
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any [`TensorData`] variant.
macro_rules! each_variant {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    /// The datatype of these elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty vector of the given type with room for `n` elements.
    pub fn with_capacity(datatype: DataType, n: usize) -> Self {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(n)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(n)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(n)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(n)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(n)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(n)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(n)),
        }
    }

    /// Appends `other` (same datatype) to `self`.
    pub fn extend_from(&mut self, other: &TensorData) -> Result<()> {
        match (self, other) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::Uint8(a), TensorData::Uint8(b)) => a.extend_from_slice(b),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
            (a, b) => {
                return Err(Error::Runtime(format!(
                    "cannot join {} and {} tensors",
                    a.datatype(),
                    b.datatype()
                )));
            }
        }
        Ok(())
    }

    /// Elements `start..end` as a new vector.
    pub fn slice(&self, start: usize, end: usize) -> Result<TensorData> {
        if start > end || end > self.len() {
            return Err(Error::Runtime(format!(
                "slice {start}..{end} out of a tensor of {} elements",
                self.len()
            )));
        }
        Ok(match self {
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::Uint8(v) => TensorData::Uint8(v[start..end].to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v[start..end].to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v[start..end].to_vec()),
            TensorData::Fp32(v) => TensorData::Fp32(v[start..end].to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v[start..end].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
        })
    }

    /// Decodes the raw little-endian encoding of `count` elements
    /// (BYTES: each element a u32 little-endian length and the bytes).
    pub fn from_raw(datatype: DataType, raw: &[u8], count: usize) -> Result<TensorData> {
        if let Some(size) = datatype.element_size() {
            let want = count
                .checked_mul(size)
                .ok_or_else(|| Error::InvalidRequest("tensor shape is too large".to_string()))?;
            if raw.len() != want {
                return Err(Error::InvalidRequest(format!(
                    "raw {datatype} data has {} bytes; the shape needs {count} elements = {want} bytes",
                    raw.len()
                )));
            }
        }
        Ok(match datatype {
            DataType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
            DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
            DataType::Int32 => TensorData::Int32(chunks(raw, i32::from_le_bytes)),
            DataType::Int64 => TensorData::Int64(chunks(raw, i64::from_le_bytes)),
            DataType::Fp32 => TensorData::Fp32(chunks(raw, f32::from_le_bytes)),
            DataType::Fp64 => TensorData::Fp64(chunks(raw, f64::from_le_bytes)),
            DataType::Bytes => TensorData::Bytes(decode_bytes_elements(raw, count)?),
        })
    }

    /// The raw little-endian encoding (see [`TensorData::from_raw`]).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|e| e.len() + 4).sum());
                for e in v {
                    // Elements come from requests bounded far below 4 GiB.
                    let len = u32::try_from(e.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(e);
                }
                out
            }
        }
    }

    /// The elements as a flat JSON array (BYTES as UTF-8 strings, lossily).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            TensorData::Bool(v) => Value::from(v.clone()),
            TensorData::Uint8(v) => Value::from(v.clone()),
            TensorData::Int32(v) => Value::from(v.clone()),
            TensorData::Int64(v) => Value::from(v.clone()),
            TensorData::Fp32(v) => {
                Value::Array(v.iter().map(|x| json_float(f64::from(*x))).collect())
            }
            TensorData::Fp64(v) => Value::Array(v.iter().map(|x| json_float(*x)).collect()),
            TensorData::Bytes(v) => Value::Array(
                v.iter()
                    .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
                    .collect(),
            ),
        }
    }

    /// Decodes JSON `data` (flat or nested arrays) of the given datatype.
    pub fn from_json(
        datatype: DataType,
        data: &serde_json::Value,
        name: &str,
    ) -> Result<TensorData> {
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        let bad = |i: usize, what: &str| {
            Error::InvalidRequest(format!(
                "input '{name}': element {i} is not {what} (datatype {datatype})"
            ))
        };
        macro_rules! collect {
            ($variant:ident, $conv:expr, $what:expr) => {
                TensorData::$variant(
                    flat.iter()
                        .enumerate()
                        .map(|(i, v)| $conv(v).ok_or_else(|| bad(i, $what)))
                        .collect::<Result<Vec<_>>>()?,
                )
            };
        }
        Ok(match datatype {
            DataType::Bool => collect!(Bool, |v: &&serde_json::Value| v.as_bool(), "a boolean"),
            DataType::Uint8 => collect!(
                Uint8,
                |v: &&serde_json::Value| v.as_u64().and_then(|x| u8::try_from(x).ok()),
                "an integer in 0..=255"
            ),
            DataType::Int32 => collect!(
                Int32,
                |v: &&serde_json::Value| v.as_i64().and_then(|x| i32::try_from(x).ok()),
                "a 32-bit integer"
            ),
            DataType::Int64 => collect!(Int64, |v: &&serde_json::Value| v.as_i64(), "an integer"),
            #[expect(
                clippy::cast_possible_truncation,
                reason = "FP32 tensors hold f32 by definition"
            )]
            DataType::Fp32 => collect!(
                Fp32,
                |v: &&serde_json::Value| v.as_f64().map(|x| x as f32),
                "a number"
            ),
            DataType::Fp64 => collect!(Fp64, |v: &&serde_json::Value| v.as_f64(), "a number"),
            DataType::Bytes => collect!(
                Bytes,
                |v: &&serde_json::Value| v.as_str().map(|s| s.as_bytes().to_vec()),
                "a string"
            ),
        })
    }
}

fn json_float(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn flatten<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn chunks<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

fn decode_bytes_elements(raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4 + 1));
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(Error::InvalidRequest(
                "raw BYTES data ends inside a 4-byte length prefix".to_string(),
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(Error::InvalidRequest(format!(
                "raw BYTES element {} declares {len} bytes but only {} remain",
                out.len(),
                tail.len()
            )));
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    if out.len() != count {
        return Err(Error::InvalidRequest(format!(
            "raw BYTES data holds {} elements; the shape needs {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Tensor name (an input or output of the model).
    pub name: String,
    /// Dimensions; every one is non-negative.
    pub shape: Vec<i64>,
    /// Elements, row-major.
    pub data: TensorData,
}

/// Number of elements that `shape` holds, or an error for negative or
/// overflowing dimensions.
pub fn element_count(shape: &[i64], name: &str) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        let d = usize::try_from(*d).map_err(|_| {
            Error::InvalidRequest(format!("tensor '{name}': dimension {d} is negative"))
        })?;
        acc.checked_mul(d)
            .ok_or_else(|| Error::InvalidRequest(format!("tensor '{name}': shape is too large")))
    })
}

impl NamedTensor {
    /// Builds a tensor, checking that the data fills the shape exactly.
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Result<Self> {
        let name = name.into();
        let want = element_count(&shape, &name)?;
        if data.len() != want {
            return Err(Error::InvalidRequest(format!(
                "tensor '{name}': shape {shape:?} needs {want} elements but {} were given",
                data.len()
            )));
        }
        Ok(NamedTensor { name, shape, data })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn raw_round_trip_for_every_type() {
        let cases = vec![
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![1, 255]),
            TensorData::Int32(vec![-1, 7]),
            TensorData::Int64(vec![i64::MIN, 3]),
            TensorData::Fp32(vec![0.5, -2.25]),
            TensorData::Fp64(vec![1e300, -0.0]),
            TensorData::Bytes(vec![b"hi".to_vec(), vec![], "中".as_bytes().to_vec()]),
        ];
        for data in cases {
            let raw = data.to_raw();
            let back = TensorData::from_raw(data.datatype(), &raw, data.len()).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn raw_size_mismatch_is_a_clear_error() {
        let err = TensorData::from_raw(DataType::Fp32, &[0; 6], 2).unwrap_err();
        assert!(err.to_string().contains("6 bytes"), "{err}");
        let err = TensorData::from_raw(DataType::Bytes, &[5, 0, 0, 0, b'a'], 1).unwrap_err();
        assert!(err.to_string().contains("declares 5 bytes"), "{err}");
    }

    #[test]
    fn json_nested_and_flat_agree() {
        let nested = serde_json::json!([[1, 2], [3, 4]]);
        let flat = serde_json::json!([1, 2, 3, 4]);
        assert_eq!(
            TensorData::from_json(DataType::Int64, &nested, "x").unwrap(),
            TensorData::from_json(DataType::Int64, &flat, "x").unwrap()
        );
        let err =
            TensorData::from_json(DataType::Int64, &serde_json::json!([1, "a"]), "x").unwrap_err();
        assert!(err.to_string().contains("element 1"), "{err}");
    }

    #[test]
    fn shape_must_match_data() {
        assert!(NamedTensor::new("x", vec![2, 2], TensorData::Fp32(vec![0.0; 3])).is_err());
        assert!(NamedTensor::new("x", vec![-1], TensorData::Fp32(vec![])).is_err());
        assert!(NamedTensor::new("x", vec![0, 4], TensorData::Fp32(vec![])).is_ok());
    }
}
