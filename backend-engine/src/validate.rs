//! Checking an inference request's tensors against the model: names,
//! datatypes, ranks, fixed dimensions, batch size. Every message names the
//! tensor and says what was expected.

use crate::error::{Error, Result};
use crate::repository::model_config::ModelConfig;
use crate::tensor::NamedTensor;

/// Orders `given` as the model declares its inputs and returns them with the
/// batch size (rows of the first dimension; 1 for unbatched models).
pub fn inputs(config: &ModelConfig, given: Vec<NamedTensor>) -> Result<(Vec<NamedTensor>, usize)> {
    let declared: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
    let mut slots: Vec<Option<NamedTensor>> = config.inputs.iter().map(|_| None).collect();
    for t in given {
        let Some(i) = declared.iter().position(|n| *n == t.name) else {
            return Err(Error::InvalidRequest(format!(
                "unknown input '{}' for model '{}' (inputs: {})",
                t.name,
                config.name,
                declared.join(", ")
            )));
        };
        if slots[i].is_some() {
            return Err(Error::InvalidRequest(format!(
                "input '{}' given twice",
                t.name
            )));
        }
        slots[i] = Some(t);
    }
    let mut ordered = Vec::with_capacity(slots.len());
    let mut rows: Option<usize> = None;
    for (spec, slot) in config.inputs.iter().zip(slots) {
        let t = slot.ok_or_else(|| {
            Error::InvalidRequest(format!(
                "missing input '{}' for model '{}'",
                spec.name, config.name
            ))
        })?;
        if t.data.datatype() != spec.datatype {
            return Err(Error::InvalidRequest(format!(
                "input '{}': datatype {} does not match the model's {}",
                t.name,
                t.data.datatype(),
                spec.datatype
            )));
        }
        let fits = t.shape.len() == spec.shape.len()
            && t.shape
                .iter()
                .zip(&spec.shape)
                .all(|(g, s)| *s < 0 || g == s);
        if !fits {
            return Err(Error::InvalidRequest(format!(
                "input '{}': shape {:?} does not match the model's {:?} (-1 = any size)",
                t.name, t.shape, spec.shape
            )));
        }
        if config.max_batch_size > 0 {
            let r = t
                .shape
                .first()
                .and_then(|d| usize::try_from(*d).ok())
                .unwrap_or(0);
            if r == 0 {
                return Err(Error::InvalidRequest(format!(
                    "input '{}': the batch dimension must be at least 1",
                    t.name
                )));
            }
            if r > config.max_batch_size {
                return Err(Error::InvalidRequest(format!(
                    "input '{}': batch of {r} exceeds the model's max_batch_size {}",
                    t.name, config.max_batch_size
                )));
            }
            if let Some(prev) = rows
                && prev != r
            {
                return Err(Error::InvalidRequest(format!(
                    "input '{}': batch of {r} differs from the other inputs' {prev}",
                    t.name
                )));
            }
            rows = Some(r);
        }
        ordered.push(t);
    }
    Ok((ordered, rows.unwrap_or(1)))
}

/// Keeps the outputs that were asked for (all when `wanted` is empty), in
/// the order asked; unknown names are an error.
pub fn select_outputs(
    config: &ModelConfig,
    outputs: Vec<NamedTensor>,
    wanted: &[String],
) -> Result<Vec<NamedTensor>> {
    known_outputs(config, wanted)?;
    if wanted.is_empty() {
        return Ok(outputs);
    }
    let mut outputs = outputs;
    let mut selected = Vec::with_capacity(wanted.len());
    for name in wanted {
        if let Some(i) = outputs.iter().position(|o| &o.name == name) {
            selected.push(outputs.swap_remove(i));
        }
    }
    Ok(selected)
}

/// Checks that every output asked for is one the model gives (before any
/// work is spent on the request).
pub fn known_outputs(config: &ModelConfig, wanted: &[String]) -> Result<()> {
    for name in wanted {
        if !config.outputs.iter().any(|o| &o.name == name) {
            return Err(Error::InvalidRequest(format!(
                "unknown output '{name}' for model '{}' (outputs: {})",
                config.name,
                config
                    .outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::tensor::TensorData;

    fn mlp() -> ModelConfig {
        ModelConfig::parse(
            r#"
name = "mlp"
version = "1"
kind = "tensor"
max_batch_size = 8
[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [-1, 16]
[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [-1, 4]
"#,
            "mlp",
            "1",
        )
        .unwrap()
    }

    fn t(name: &str, shape: Vec<i64>, n: usize) -> NamedTensor {
        NamedTensor::new(name, shape, TensorData::Fp32(vec![0.0; n])).unwrap()
    }

    #[test]
    fn accepts_a_good_batch() {
        let (ins, rows) = inputs(&mlp(), vec![t("INPUT0", vec![3, 16], 48)]).unwrap();
        assert_eq!((ins.len(), rows), (1, 3));
    }

    #[test]
    fn clear_messages_for_bad_inputs() {
        let cases = [
            (vec![t("nope", vec![1, 16], 16)], "unknown input 'nope'"),
            (vec![], "missing input 'INPUT0'"),
            (vec![t("INPUT0", vec![1, 15], 15)], "shape [1, 15]"),
            (
                vec![t("INPUT0", vec![9, 16], 144)],
                "exceeds the model's max_batch_size 8",
            ),
        ];
        for (given, want) in cases {
            let err = inputs(&mlp(), given).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let int = NamedTensor::new("INPUT0", vec![1, 16], TensorData::Int64(vec![0; 16])).unwrap();
        let err = inputs(&mlp(), vec![int]).unwrap_err().to_string();
        assert!(err.contains("datatype INT64"), "{err}");
    }
}
