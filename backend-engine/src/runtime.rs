//! ONNX Runtime: finding and loading the shared library, choosing the
//! execution device, building sessions and running them on
//! [`NamedTensor`]s.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use crate::error::{Error, Result};
use crate::repository::model_config::{ModelConfig, TensorSpec};
use crate::tensor::{DataType, NamedTensor, TensorData};

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one).
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The execution device asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CPU only.
    Cpu,
    /// CUDA on the given device; fail if unavailable.
    Cuda(i32),
    /// CUDA device 0 when it works, else CPU.
    Auto,
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceRequest::Cpu),
            "auto" => Ok(DeviceRequest::Auto),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("'{other}': expected cpu, cuda, cuda:N or auto")),
        }
    }
}

/// The device sessions actually run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// ONNX Runtime's CUDA provider on this device.
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How sessions are built: the device and CPU thread counts.
#[derive(Debug, Clone)]
pub struct Runtime {
    device: Device,
    intra_threads: usize,
}

/// Finds the library: `--ort-lib` first, then `ORT_DYLIB_PATH`.
pub fn resolve_library(flag: Option<&Path>) -> Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os(ORT_DYLIB_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(Error::OrtLibrary(format!(
                    "no library given: pass --ort-lib PATH or set {ORT_DYLIB_ENV} to \
                     libonnxruntime.so.1.31.1 (scripts/setup-ort.sh fetches it into .ort/)"
                )));
            }
        },
    };
    if !path.is_file() {
        return Err(Error::OrtLibrary(format!(
            "{} does not exist (from --ort-lib or {ORT_DYLIB_ENV}); run scripts/setup-ort.sh",
            path.display()
        )));
    }
    Ok(path)
}

/// Loads the library and creates the process's environment (once; later
/// calls reuse it whatever path they pass).
pub fn init_environment(library: &Path) -> Result<&'static ort::environment::Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let builder = ort::init_from(library)
        .map_err(|e| Error::OrtLibrary(format!("{}: {e}", library.display())))?;
    let env = builder
        .with_name("weir-engine")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::OrtLibrary(format!("{}: {e}", library.display())))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

fn environment() -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT
        .get()
        .ok_or_else(|| Error::OrtLibrary("ONNX Runtime is not initialised".to_string()))
}

impl Runtime {
    /// Chooses the device: probes CUDA when asked for (or for `auto`).
    pub fn new(request: DeviceRequest, intra_threads: usize) -> Result<Self> {
        let device = match request {
            DeviceRequest::Cpu => Device::Cpu,
            DeviceRequest::Cuda(n) => {
                probe_cuda(n).map_err(|why| {
                    Error::Device(format!(
                        "--device cuda:{n} asked for, but CUDA is unavailable: {why} \
                         (use --device auto to fall back to the CPU)"
                    ))
                })?;
                Device::Cuda(n)
            }
            DeviceRequest::Auto => match probe_cuda(0) {
                Ok(()) => Device::Cuda(0),
                Err(why) => {
                    tracing::info!(reason = %why, "--device auto: CUDA unavailable, using the CPU");
                    Device::Cpu
                }
            },
        };
        tracing::info!(%device, intra_threads, "execution provider chosen");
        Ok(Runtime {
            device,
            intra_threads: intra_threads.max(1),
        })
    }

    /// The device sessions run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Builds a session from verified ONNX bytes (its thread pool sleeps
    /// between ops: see [`Runtime::session_with`]).
    pub fn session(&self, onnx: &[u8]) -> Result<Session> {
        self.session_with(onnx, false)
    }

    /// Builds a session; `spin` lets its intra-op threads spin between ops
    /// instead of sleeping. A causal-lm decode loop runs step after step on
    /// one thread of its own, and each step is hundreds of small ops: waking
    /// sleeping threads for each cost SmolLM2-135M 13 % of its tokens/s on
    /// 2 cores (35 vs 41 tok/s, one stream, `--intra-threads 2`). Other
    /// sessions run in short bursts among the engine's own batching threads,
    /// where spinning would take their cores.
    pub fn session_with(&self, onnx: &[u8], spin: bool) -> Result<Session> {
        let env = environment()?;
        let mut builder = Session::builder(env)
            .map_err(Error::runtime)?
            .with_intra_threads(self.intra_threads)
            .map_err(Error::runtime)?
            .with_inter_threads(1)
            .map_err(Error::runtime)?
            .with_config_entry(
                "session.intra_op.allow_spinning",
                if spin { "1" } else { "0" },
            )
            .map_err(Error::runtime)?;
        if let Device::Cuda(n) = self.device {
            builder = builder
                .with_execution_providers([cuda_provider(n)])
                .map_err(Error::runtime)?;
        }
        builder.commit_from_memory(onnx).map_err(Error::runtime)
    }
}

/// The CUDA provider on `device`, with TF32 off: matrix products stay
/// in full FP32, so answers match the CPU's (TF32 moved the shipped mlp's
/// probabilities by ~2e-4).
fn cuda_provider(device: i32) -> ort::ep::ExecutionProviderDispatch {
    ort::ep::CUDA::default()
        .with_device_id(device)
        .with_tf32(false)
        .build()
        .error_on_failure()
}

/// Registers the CUDA provider on a throwaway session builder: this loads
/// the provider library and its CUDA dependencies and opens the device.
fn probe_cuda(device: i32) -> std::result::Result<(), String> {
    use ort::ep::ExecutionProvider as _;
    let env = environment().map_err(|e| e.to_string())?;
    if !ort::ep::CUDA::is_available().map_err(|e| e.to_string())? {
        return Err(
            "the loaded ONNX Runtime library was built without the CUDA provider \
                    (use the onnxruntime-gpu library: scripts/setup-ort.sh --gpu)"
                .to_string(),
        );
    }
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_execution_providers([cuda_provider(device)])
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Checks that the session's graph has the inputs and outputs that
/// `model.toml` declares, with the same element types and compatible shapes.
pub fn check_session(session: &Session, config: &ModelConfig) -> Result<()> {
    let mut problems = Vec::new();
    if let Some(names) = fixed_names(config) {
        for (side, wanted, outlets) in [
            ("input", &names.0, session.inputs()),
            ("output", &names.1, session.outputs()),
        ] {
            for name in wanted {
                if !outlets.iter().any(|o| o.name() == name) {
                    problems.push(format!(
                        "the ONNX graph has no {side} '{name}' (kind = \"{}\")",
                        config.kind.as_str()
                    ));
                }
            }
        }
        return finish(config, problems);
    }
    let sides = [
        ("input", &config.inputs, session.inputs()),
        ("output", &config.outputs, session.outputs()),
    ];
    for (side, specs, outlets) in sides {
        for spec in specs {
            match outlets.iter().find(|o| o.name() == spec.name) {
                None => problems.push(format!(
                    "{side} '{}' is declared in model.toml but the ONNX graph has {side}s {:?}",
                    spec.name,
                    outlets.iter().map(|o| o.name()).collect::<Vec<_>>()
                )),
                Some(outlet) => check_outlet(side, spec, outlet.dtype(), &mut problems),
            }
        }
    }
    for outlet in session.inputs() {
        if !config.inputs.iter().any(|s| s.name == outlet.name()) {
            problems.push(format!(
                "input '{}' of the ONNX graph is missing from model.toml",
                outlet.name()
            ));
        }
    }
    finish(config, problems)
}

fn finish(config: &ModelConfig, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::ModelConfig {
            model: config.name.clone(),
            version: config.version.clone(),
            reason: problems.join("; "),
        })
    }
}

/// The inputs and outputs the causal-lm and embedding kinds need by name.
fn fixed_names(config: &ModelConfig) -> Option<(Vec<String>, Vec<String>)> {
    if let Some(lm) = &config.causal_lm {
        let mut inputs: Vec<String> = ["input_ids", "attention_mask", "position_ids"]
            .map(String::from)
            .to_vec();
        let mut outputs = vec!["logits".to_string()];
        for i in 0..lm.num_layers {
            for k in ["key", "value"] {
                inputs.push(format!("past_key_values.{i}.{k}"));
                outputs.push(format!("present.{i}.{k}"));
            }
        }
        return Some((inputs, outputs));
    }
    config.embedding.as_ref().map(|_| {
        (
            vec!["input_ids".to_string(), "attention_mask".to_string()],
            vec!["last_hidden_state".to_string()],
        )
    })
}

fn check_outlet(side: &str, spec: &TensorSpec, dtype: &ValueType, problems: &mut Vec<String>) {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        problems.push(format!(
            "{side} '{}' is not a tensor in the ONNX graph",
            spec.name
        ));
        return;
    };
    if element_type(spec.datatype) != *ty {
        problems.push(format!(
            "{side} '{}': model.toml says {}, the ONNX graph says {ty:?}",
            spec.name, spec.datatype
        ));
    }
    let graph: &[i64] = shape;
    let compatible = graph.len() == spec.shape.len()
        && graph
            .iter()
            .zip(&spec.shape)
            .all(|(g, s)| *g < 0 || *s < 0 || g == s);
    if !compatible {
        problems.push(format!(
            "{side} '{}': model.toml shape {:?} does not fit the ONNX graph's {graph:?}",
            spec.name, spec.shape
        ));
    }
}

fn element_type(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

/// Runs the session on `inputs` and returns the outputs named in `outputs`
/// (their declared datatypes), in that order.
pub fn run(
    session: &mut Session,
    inputs: &[NamedTensor],
    outputs: &[TensorSpec],
) -> Result<Vec<NamedTensor>> {
    let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for t in inputs {
        let shape = t.shape.clone();
        let value: SessionInputValue<'_> = match &t.data {
            TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Uint8(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))
                .map_err(Error::runtime)?
                .into(),
            TensorData::Bytes(v) => {
                let strings = v
                    .iter()
                    .map(|b| {
                        String::from_utf8(b.clone()).map_err(|_| {
                            Error::InvalidRequest(format!(
                                "input '{}': BYTES elements must be UTF-8 text for this model",
                                t.name
                            ))
                        })
                    })
                    .collect::<Result<Vec<String>>>()?;
                Tensor::from_string_array((shape, strings.as_slice()))
                    .map_err(Error::runtime)?
                    .into()
            }
        };
        feeds.push((t.name.clone(), value));
    }
    let results = session.run(feeds).map_err(Error::runtime)?;
    let mut out = Vec::with_capacity(outputs.len());
    for spec in outputs {
        let value = results.get(&spec.name).ok_or_else(|| {
            Error::Runtime(format!("the model produced no output '{}'", spec.name))
        })?;
        let (shape, data) = extract(value, spec.datatype)
            .map_err(|e| Error::Runtime(format!("output '{}': {e}", spec.name)))?;
        out.push(NamedTensor::new(spec.name.clone(), shape, data)?);
    }
    Ok(out)
}

fn extract(
    value: &ort::value::DynValue,
    datatype: DataType,
) -> ort::Result<(Vec<i64>, TensorData)> {
    macro_rules! numeric {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    Ok(match datatype {
        DataType::Bool => numeric!(bool, Bool),
        DataType::Uint8 => numeric!(u8, Uint8),
        DataType::Int32 => numeric!(i32, Int32),
        DataType::Int64 => numeric!(i64, Int64),
        DataType::Fp32 => numeric!(f32, Fp32),
        DataType::Fp64 => numeric!(f64, Fp64),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings()?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn device_flag_parses() {
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert!("cuda:-1".parse::<DeviceRequest>().is_err());
        assert!("tpu".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn missing_library_names_both_sources() {
        let err = resolve_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--ort-lib") && err.contains(ORT_DYLIB_ENV),
            "{err}"
        );
    }
}
