//! A running model version: its configuration, its queue, its batching
//! worker and, for language models, its decode loop.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::batcher::{Batcher, InferJob};
use crate::error::{Error, Result};
use crate::lm::sampling::SamplingParams;
use crate::lm::scheduler::{EVENT_BUFFER, GenEvent, GenerateJob, Scheduler};
use crate::metrics::ModelMetrics;
use crate::queue::Admission;
use crate::repository::VerifiedVersion;
use crate::repository::model_config::{ModelConfig, ModelKind};
use crate::runtime::{self, Runtime};
use crate::tensor::NamedTensor;

/// Per-version settings taken from the command line.
#[derive(Debug, Clone, Copy)]
pub struct VersionSettings {
    /// Outstanding requests admitted per version.
    pub queue_capacity: usize,
    /// False runs every tensor request on its own (for comparisons).
    pub batching: bool,
}

/// A loaded, verified model version ready to serve.
pub struct ModelVersion {
    /// The validated `model.toml`.
    pub config: Arc<ModelConfig>,
    /// Version number (the folder name).
    pub number: u64,
    /// SHA-256 of the manifest it was loaded from.
    pub manifest_digest: String,
    /// Its bounded queue.
    pub admission: Admission,
    batcher: Batcher,
    scheduler: Option<Scheduler>,
}

impl ModelVersion {
    /// Builds sessions from verified bytes, checks them against `model.toml`
    /// and starts the workers. Blocking (ONNX Runtime compiles the graph).
    pub fn start(
        verified: &VerifiedVersion,
        number: u64,
        runtime: &Runtime,
        settings: VersionSettings,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let config = Arc::new(verified.config.clone());
        let onnx = verified.onnx()?;
        let session = runtime.session(onnx)?;
        runtime::check_session(&session, &config)?;
        let scheduler = match config.kind {
            ModelKind::Lm => Some(Scheduler::start(
                runtime.session(onnx)?,
                &config,
                metrics.clone(),
                settings.queue_capacity,
            )?),
            ModelKind::Tensor => None,
        };
        let admission = Admission::new(
            settings.queue_capacity,
            &config.name,
            &config.version,
            metrics.clone(),
        );
        let batcher = Batcher::start(
            session,
            config.clone(),
            metrics,
            settings.queue_capacity,
            settings.batching,
            admission.counter(),
        )?;
        Ok(ModelVersion {
            admission,
            config,
            number,
            manifest_digest: verified.files.manifest_digest.clone(),
            batcher,
            scheduler,
        })
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Version as a string.
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// True for language models.
    pub fn is_lm(&self) -> bool {
        self.scheduler.is_some()
    }

    /// Runs one inference through the batcher. `inputs` may come in any
    /// order; they are validated against the model here.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>> {
        let (inputs, rows) = crate::validate::inputs(&self.config, inputs)?;
        let slot = self.admission.admit()?;
        let (reply, rx) = oneshot::channel();
        self.batcher.submit(InferJob {
            inputs,
            rows,
            reply,
            slot,
        })?;
        rx.await
            .map_err(|_| Error::Unavailable(self.config.name.clone()))?
    }

    /// Starts generating; events arrive on the returned channel.
    pub fn generate(
        &self,
        prompt: Vec<u8>,
        params: SamplingParams,
    ) -> Result<mpsc::Receiver<GenEvent>> {
        let scheduler = self
            .scheduler
            .as_ref()
            .ok_or_else(|| Error::NotLanguageModel(self.config.name.clone()))?;
        let slot = self.admission.admit()?;
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        scheduler.submit(GenerateJob {
            prompt,
            params,
            events,
            slot,
            admitted: Instant::now(),
        })?;
        Ok(rx)
    }
}
