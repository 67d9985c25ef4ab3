//! A running model version: its configuration, its queue, its batching
//! worker and, for language models, its decode loop.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::batcher::{Batcher, InferJob};
use crate::causal::{CausalJob, CausalScheduler, KvBudget};
use crate::embed::{EmbedJob, Embedder};
use crate::error::{Error, Result};
use crate::hf::{ChatTemplate, TemplateMessage, TextTokenizer};
use crate::lm::sampling::SamplingParams;
use crate::lm::scheduler::{EVENT_BUFFER, GenEvent, GenerateJob, Scheduler};
use crate::lm::{ChatMessage, render_chat};
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
    /// Longest context a causal-lm sequence may use, unless its
    /// `model.toml` says less.
    pub max_context: usize,
    /// KV-cache budget per causal-lm version in MiB, overriding `model.toml`.
    pub kv_cache_mb: Option<usize>,
    /// Most prompt tokens one causal-lm prefill run takes.
    pub prefill_chunk: usize,
}

/// Default KV-cache budget (MiB) when neither `model.toml` nor the command
/// line sets one.
pub const DEFAULT_KV_CACHE_MB: usize = 512;

/// How a version serves requests, by kind.
enum Worker {
    /// Tensor requests through the dynamic batcher.
    Tensor(Batcher),
    /// Byte-level generation (and tensor requests).
    Lm(Batcher, Scheduler),
    /// Generation with a tokenizer and KV cache.
    CausalLm(Box<CausalLm>),
    /// Sentence embeddings.
    Embedding(Embedder, Arc<TextTokenizer>),
}

struct CausalLm {
    scheduler: CausalScheduler,
    tokenizer: Arc<TextTokenizer>,
    template: Option<ChatTemplate>,
    budget: Arc<KvBudget>,
    context: usize,
}

/// Options of one generation beyond sampling.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenOptions {
    /// The client set `max_tokens` (else it may be shortened to fit the context).
    pub explicit_max_tokens: bool,
    /// Keep generating past stop tokens.
    pub ignore_eos: bool,
}

/// A started generation.
pub struct Generation {
    /// Events of the sequence.
    pub events: mpsc::Receiver<GenEvent>,
    /// The prompt's token ids (causal-lm models).
    pub prompt_ids: Vec<u32>,
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
    worker: Worker,
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
        let session = runtime.session_with(onnx, config.kind == ModelKind::CausalLm)?;
        runtime::check_session(&session, &config)?;
        let admission = Admission::new(
            settings.queue_capacity,
            &config.name,
            &config.version,
            metrics.clone(),
        );
        let worker = match (&config.kind, &config.causal_lm, &config.embedding) {
            (ModelKind::CausalLm, Some(lm), _) => {
                let tokenizer = Arc::new(TextTokenizer::load(verified, &lm.tokenizer)?);
                let template = match &lm.chat_template {
                    Some(file) => Some(ChatTemplate::load(
                        verified,
                        file,
                        &lm.bos_token,
                        &lm.eos_token,
                    )?),
                    None => None,
                };
                let mb = settings
                    .kv_cache_mb
                    .or(lm.kv_cache_mb)
                    .unwrap_or(DEFAULT_KV_CACHE_MB);
                let budget = KvBudget::new(mb, lm.kv_bytes_per_token(), &metrics);
                Worker::CausalLm(Box::new(CausalLm {
                    scheduler: CausalScheduler::start(
                        session,
                        &config,
                        tokenizer.clone(),
                        metrics,
                        settings.queue_capacity,
                        settings.prefill_chunk,
                    )?,
                    tokenizer,
                    template,
                    budget,
                    context: lm.context.min(settings.max_context).max(1),
                }))
            }
            (ModelKind::Embedding, _, Some(e)) => {
                let tokenizer = Arc::new(TextTokenizer::load(verified, &e.tokenizer)?);
                Worker::Embedding(
                    Embedder::start(session, &config, metrics, settings.queue_capacity)?,
                    tokenizer,
                )
            }
            _ => {
                let scheduler = match config.kind {
                    ModelKind::Lm => Some(Scheduler::start(
                        runtime.session(onnx)?,
                        &config,
                        metrics.clone(),
                        settings.queue_capacity,
                    )?),
                    _ => None,
                };
                let batcher = Batcher::start(
                    session,
                    config.clone(),
                    metrics,
                    settings.queue_capacity,
                    settings.batching,
                    admission.counter(),
                )?;
                match scheduler {
                    Some(s) => Worker::Lm(batcher, s),
                    None => Worker::Tensor(batcher),
                }
            }
        };
        Ok(ModelVersion {
            admission,
            config,
            number,
            manifest_digest: verified.files.manifest_digest.clone(),
            worker,
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

    /// True for models that generate text.
    pub fn is_lm(&self) -> bool {
        matches!(self.worker, Worker::Lm(..) | Worker::CausalLm(_))
    }

    /// Runs one inference through the batcher. `inputs` may come in any
    /// order; they are validated against the model here.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>> {
        let (Worker::Tensor(batcher) | Worker::Lm(batcher, _)) = &self.worker else {
            return Err(Error::InvalidRequest(format!(
                "model '{}' (kind {}) takes no tensor requests; use /v1/{}",
                self.config.name,
                self.config.kind.as_str(),
                if self.config.kind == ModelKind::Embedding {
                    "embeddings"
                } else {
                    "completions or /v1/chat/completions"
                }
            )));
        };
        let (inputs, rows) = crate::validate::inputs(&self.config, inputs)?;
        let slot = self.admission.admit()?;
        let (reply, rx) = oneshot::channel();
        batcher.submit(InferJob {
            inputs,
            rows,
            reply,
            slot,
        })?;
        rx.await
            .map_err(|_| Error::Unavailable(self.config.name.clone()))?
    }

    /// Renders a conversation into the prompt text: the model's chat
    /// template, or the byte-level models' plain join.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.worker {
            Worker::CausalLm(c) => {
                let template = c.template.as_ref().ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "model '{}' has no chat template; use /v1/completions",
                        self.config.name
                    ))
                })?;
                let messages: Vec<TemplateMessage> = messages
                    .iter()
                    .map(|m| TemplateMessage {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect();
                template.render(&messages, true)
            }
            _ => Ok(render_chat(messages)),
        }
    }

    /// Starts generating; events arrive on the returned channel.
    pub fn generate(
        &self,
        prompt: &str,
        mut params: SamplingParams,
        options: GenOptions,
    ) -> Result<Generation> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        match &self.worker {
            Worker::Lm(_, scheduler) => {
                let slot = self.admission.admit()?;
                scheduler.submit(GenerateJob {
                    prompt: prompt.as_bytes().to_vec(),
                    params,
                    events,
                    slot,
                    admitted: Instant::now(),
                })?;
                Ok(Generation {
                    events: rx,
                    prompt_ids: Vec::new(),
                })
            }
            Worker::CausalLm(c) => {
                let ids = c.tokenizer.encode(prompt, false)?;
                if ids.is_empty() {
                    return Err(Error::InvalidRequest("prompt: must not be empty".into()));
                }
                let room = c.context.saturating_sub(ids.len());
                if room == 0 || (options.explicit_max_tokens && params.max_tokens > room) {
                    return Err(Error::InvalidRequest(format!(
                        "this model's maximum context length is {} tokens; the prompt has {} \
                         and max_tokens asks for {} more",
                        c.context,
                        ids.len(),
                        params.max_tokens
                    )));
                }
                params.max_tokens = params.max_tokens.min(room);
                let reservation = c
                    .budget
                    .reserve(&self.config.name, ids.len() + params.max_tokens)?;
                let slot = self.admission.admit()?;
                c.scheduler.submit(CausalJob {
                    prompt: ids.clone(),
                    params,
                    ignore_eos: options.ignore_eos,
                    events,
                    slot,
                    reservation,
                    admitted: Instant::now(),
                })?;
                Ok(Generation {
                    events: rx,
                    prompt_ids: ids,
                })
            }
            _ => Err(Error::NotLanguageModel(self.config.name.clone())),
        }
    }

    /// Embeds texts (`Left`) or token arrays (`Right`); returns the vectors
    /// and the number of tokens used.
    pub async fn embed(&self, inputs: EmbedInput) -> Result<(Vec<Vec<f32>>, usize)> {
        let (Worker::Embedding(embedder, tokenizer), Some(settings)) =
            (&self.worker, &self.config.embedding)
        else {
            return Err(Error::InvalidRequest(format!(
                "model '{}' (kind {}) is not an embedding model",
                self.config.name,
                self.config.kind.as_str()
            )));
        };
        let ids: Vec<Vec<u32>> = match inputs {
            EmbedInput::Texts(texts) => texts
                .iter()
                .map(|t| tokenizer.encode(t, true))
                .collect::<Result<_>>()?,
            EmbedInput::Tokens(tokens) => {
                let vocab = tokenizer.vocab_size();
                for (i, t) in tokens.iter().enumerate() {
                    if t.len() > settings.max_tokens {
                        return Err(Error::InvalidRequest(format!(
                            "input[{i}]: {} tokens, more than the model's {}",
                            t.len(),
                            settings.max_tokens
                        )));
                    }
                    if let Some(bad) = t.iter().find(|&&id| id as usize >= vocab) {
                        return Err(Error::InvalidRequest(format!(
                            "input[{i}]: token id {bad} is outside the vocabulary (0..{vocab})"
                        )));
                    }
                }
                tokens
            }
        };
        let used = ids.iter().map(Vec::len).sum();
        let slot = self.admission.admit()?;
        let (reply, rx) = oneshot::channel();
        embedder.submit(EmbedJob {
            inputs: ids,
            reply,
            slot,
        })?;
        let vectors = rx
            .await
            .map_err(|_| Error::Unavailable(self.config.name.clone()))??;
        Ok((vectors, used))
    }
}

/// What `/v1/embeddings` embeds.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    /// Texts, tokenized by the model's tokenizer.
    Texts(Vec<String>),
    /// Token ids, as given.
    Tokens(Vec<Vec<u32>>),
}
