//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! wire-compatible with Triton's clients) and `grpc.health.v1`.
//! Every response and error carries `x-weir-queue-depth` metadata.

use std::sync::Arc;

use opentelemetry::KeyValue;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::http::oip::{self, Parameters, TritonConfig};
use crate::tensor::{DataType, NamedTensor, TensorData, element_count};

/// Generated protocol types.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::{
    InferParameter, InferTensorContents, ModelConfigRequest, ModelConfigResponse,
    ModelInferRequest, ModelInferResponse, ModelInput, ModelMetadataRequest, ModelMetadataResponse,
    ModelOutput, ModelParameter, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse, infer_parameter::ParameterChoice, model_infer_response::InferOutputTensor,
    model_metadata_response::TensorMetadata,
};

/// Largest gRPC message accepted or sent.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The service over the engine.
pub struct InferenceService {
    engine: Arc<Engine>,
}

/// The tonic server for the inference service.
pub fn service(engine: Arc<Engine>) -> GrpcInferenceServiceServer<InferenceService> {
    GrpcInferenceServiceServer::new(InferenceService { engine })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

impl InferenceService {
    fn depth(&self) -> Option<MetadataValue<tonic::metadata::Ascii>> {
        self.engine.metrics().total_depth().to_string().parse().ok()
    }

    fn ok<T>(&self, message: T) -> std::result::Result<Response<T>, Status> {
        let mut response = Response::new(message);
        if let Some(v) = self.depth() {
            response.metadata_mut().insert("x-weir-queue-depth", v);
        }
        Ok(response)
    }

    fn fail(&self, e: Error) -> Status {
        let mut status = e.into_grpc();
        if let Some(v) = self.depth() {
            status.metadata_mut().insert("x-weir-queue-depth", v);
        }
        status
    }

    async fn infer(&self, req: ModelInferRequest) -> Result<ModelInferResponse> {
        let model = self
            .engine
            .resolve(&req.model_name, Some(&req.model_version))?;
        let raw = &req.raw_input_contents;
        if !raw.is_empty() && raw.len() != req.inputs.len() {
            return Err(Error::InvalidRequest(format!(
                "raw_input_contents has {} entries for {} inputs",
                raw.len(),
                req.inputs.len()
            )));
        }
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for (i, input) in req.inputs.into_iter().enumerate() {
            let datatype: DataType = input.datatype.parse().map_err(|e: Error| {
                Error::InvalidRequest(format!("input '{}': {e}", input.name))
            })?;
            let count = element_count(&input.shape, &input.name)?;
            let data = match raw.get(i) {
                Some(bytes) => TensorData::from_raw(datatype, bytes, count)
                    .map_err(|e| Error::InvalidRequest(format!("input '{}': {e}", input.name)))?,
                None => from_contents(datatype, input.contents.unwrap_or_default(), &input.name)?,
            };
            inputs.push(NamedTensor::new(input.name, input.shape, data)?);
        }
        let wanted: Vec<String> = req.outputs.into_iter().map(|o| o.name).collect();
        let parameters: Parameters = req
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_json(v)))
            .collect();
        let outputs = oip::infer(&self.engine, &model, inputs, &parameters, &wanted).await?;
        let mut response = ModelInferResponse {
            model_name: model.name().to_string(),
            model_version: model.version().to_string(),
            id: req.id,
            ..Default::default()
        };
        for t in outputs {
            response.raw_output_contents.push(t.data.to_raw());
            response.outputs.push(InferOutputTensor {
                name: t.name,
                datatype: t.data.datatype().as_str().to_string(),
                shape: t.shape,
                ..Default::default()
            });
        }
        Ok(response)
    }
}

/// A gRPC parameter as the JSON value HTTP would carry.
fn parameter_json(p: &InferParameter) -> serde_json::Value {
    use serde_json::Value;
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => Value::from(*n),
        Some(ParameterChoice::Uint64Param(n)) => Value::from(*n),
        Some(ParameterChoice::DoubleParam(x)) => {
            serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number)
        }
        Some(ParameterChoice::StringParam(s)) => Value::String(s.clone()),
        None => Value::Null,
    }
}

/// A model's configuration as Triton's `ModelConfig` message.
fn config_message(config: &crate::repository::model_config::ModelConfig) -> proto::ModelConfig {
    let triton = TritonConfig::of(config);
    let data_type = |d: DataType| {
        proto::DataType::from_str_name(d.triton_name()).unwrap_or(proto::DataType::TypeInvalid)
            as i32
    };
    proto::ModelConfig {
        name: config.name.clone(),
        platform: oip::PLATFORM.to_string(),
        backend: oip::BACKEND.to_string(),
        max_batch_size: i32::try_from(triton.max_batch_size).unwrap_or(i32::MAX),
        input: triton
            .inputs
            .iter()
            .map(|(s, dims)| ModelInput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                dims: dims.to_vec(),
            })
            .collect(),
        output: triton
            .outputs
            .iter()
            .map(|(s, dims)| ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                dims: dims.to_vec(),
            })
            .collect(),
        parameters: [(
            "kind".to_string(),
            ModelParameter {
                string_value: config.kind.as_str().to_string(),
            },
        )]
        .into(),
    }
}

fn from_contents(datatype: DataType, c: InferTensorContents, name: &str) -> Result<TensorData> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Uint8 => TensorData::Uint8(
            c.uint_contents
                .into_iter()
                .map(|v| {
                    u8::try_from(v).map_err(|_| {
                        Error::InvalidRequest(format!("input '{name}': {v} is not a UINT8"))
                    })
                })
                .collect::<Result<_>>()?,
        ),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> std::result::Result<Response<ServerLiveResponse>, Status> {
        self.ok(ServerLiveResponse { live: true })
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> std::result::Result<Response<ServerReadyResponse>, Status> {
        self.ok(ServerReadyResponse {
            ready: !self.engine.models().is_empty(),
        })
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> std::result::Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.engine.resolve(&r.name, Some(&r.version)).is_ok();
        self.ok(ModelReadyResponse { ready })
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> std::result::Result<Response<ServerMetadataResponse>, Status> {
        self.ok(ServerMetadataResponse {
            name: crate::http::SERVER_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: crate::http::EXTENSIONS
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
        })
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> std::result::Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self
            .engine
            .resolve(&r.name, Some(&r.version))
            .map_err(|e| self.fail(e))?;
        let versions = self
            .engine
            .models()
            .get(model.name())
            .map(|s| {
                s.versions
                    .values()
                    .map(|v| v.version().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let meta = |specs: &[crate::repository::model_config::TensorSpec]| {
            specs
                .iter()
                .map(|s| TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.as_str().to_string(),
                    shape: s.shape.clone(),
                })
                .collect()
        };
        self.ok(ModelMetadataResponse {
            name: model.name().to_string(),
            versions,
            platform: oip::PLATFORM.to_string(),
            inputs: meta(&model.config.inputs),
            outputs: meta(&model.config.outputs),
        })
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> std::result::Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let model = self
            .engine
            .resolve(&r.name, Some(&r.version))
            .map_err(|e| self.fail(e))?;
        self.ok(ModelConfigResponse {
            config: Some(config_message(&model.config)),
        })
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> std::result::Result<Response<ModelInferResponse>, Status> {
        // A server span in the caller's trace (`crate::otel`), when spans
        // are exported.
        let span = crate::otel::RequestSpan::start(
            "inference.GRPCInferenceService/ModelInfer".to_owned(),
            request.metadata().as_ref(),
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                KeyValue::new("rpc.method", "ModelInfer"),
            ],
        );
        let request = request.into_inner();
        if let Some(span) = &span {
            span.set([
                KeyValue::new("weir.model", request.model_name.clone()),
                KeyValue::new("weir.model_version", request.model_version.clone()),
            ]);
        }
        let result = self.infer(request).await.map_err(|e| self.fail(e));
        if let Some(span) = &span {
            let code = result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
            span.set([KeyValue::new("rpc.grpc.status_code", code as i64)]);
            if let Err(status) = &result {
                span.fail(status.message().to_owned());
            }
        }
        result.and_then(|r| self.ok(r))
    }
}
