//! Iteration-level batching for text generation: one decode loop per
//! language-model version. Every step runs the model once over all active
//! sequences (each its own context window); new requests join between
//! steps and finished ones leave, so N concurrent streams cost about N rows
//! of one run, not N runs.
//!
//! Each sequence streams into a bounded channel. A sequence whose client
//! reads slowly pauses (keeps its place, takes no compute) until its channel
//! has room; a sequence whose client has gone is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ort::session::Session;
use tokio::sync::mpsc;

use super::sampling::{Sampler, SamplingParams};
use super::text::{Detokenizer, Step};
use crate::error::{Error, Result};
use crate::metrics::ModelMetrics;
use crate::queue::{Intake, JobSender, Slot};
use crate::repository::model_config::{LmConfig, ModelConfig, TensorSpec};
use crate::runtime;
use crate::tensor::{DataType, NamedTensor, TensorData};

/// Capacity of each sequence's event channel.
pub const EVENT_BUFFER: usize = 64;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop sequence was generated.
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a sequence sends to its client.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// More text (never splits a UTF-8 character).
    Text(String),
    /// The end; always the last event of a successful sequence.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Prompt length in tokens (bytes).
        prompt_tokens: usize,
        /// Generated tokens (bytes), a stop sequence included.
        completion_tokens: usize,
        /// The generated token ids (causal-lm models; empty for byte-level ones).
        token_ids: Vec<u32>,
    },
    /// The model failed; the last event.
    Failed(String),
}

/// One generation request.
pub struct GenerateJob {
    /// The prompt's bytes.
    pub prompt: Vec<u8>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Where events go.
    pub events: mpsc::Sender<GenEvent>,
    /// The request's queue place, held until the sequence ends.
    pub slot: Slot,
    /// When it was admitted (for time to first token).
    pub admitted: Instant,
}

/// Handle to a model version's decode loop; dropping it lets the loop
/// finish its sequences and exit.
pub struct Scheduler {
    jobs: JobSender<GenerateJob>,
}

impl Scheduler {
    /// Starts the decode loop on its own thread.
    pub fn start(
        session: Session,
        config: &Arc<ModelConfig>,
        metrics: ModelMetrics,
        queue_capacity: usize,
    ) -> Result<Self> {
        let lm = config
            .lm
            .clone()
            .ok_or_else(|| Error::NotLanguageModel(config.name.clone()))?;
        let capacity = queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let max_active = config.max_batch_size.max(1);
        let label = format!("{}/{}", config.name, config.version);
        std::thread::Builder::new()
            .name(format!("decode-{label}"))
            .spawn(move || {
                DecodeLoop {
                    session,
                    logits: vec![TensorSpec {
                        name: lm.output.clone(),
                        datatype: DataType::Fp32,
                        shape: vec![-1, -1],
                    }],
                    lm,
                    metrics,
                    max_active,
                    active: Vec::new(),
                }
                .run(Intake::new(rx));
                tracing::info!(model = %label, "decode loop drained and stopped");
            })
            .map_err(|e| Error::Runtime(format!("cannot start the decode thread: {e}")))?;
        Ok(Scheduler {
            jobs: JobSender::new(tx, &config.name, &config.version, capacity),
        })
    }

    /// Queues a sequence.
    pub fn submit(&self, job: GenerateJob) -> Result<()> {
        self.jobs.submit(job)
    }
}

struct Sequence {
    job: GenerateJob,
    context: Vec<u8>,
    detok: Detokenizer,
    sampler: Sampler,
    outbox: VecDeque<GenEvent>,
    done: bool,
    first_token: Option<Instant>,
}

impl Sequence {
    fn new(job: GenerateJob) -> Self {
        let sampler = Sampler::new(&job.params);
        let detok = Detokenizer::new(&job.params.stop);
        let mut seq = Sequence {
            context: job.prompt.clone(),
            detok,
            sampler,
            outbox: VecDeque::new(),
            done: false,
            first_token: None,
            job,
        };
        if seq.job.params.max_tokens == 0 {
            seq.finish(FinishReason::Length);
        }
        seq
    }

    /// Sends what is queued; false when the sequence should leave (its
    /// client is gone, or it is done and everything was delivered).
    fn flush(&mut self) -> bool {
        let GenerateJob { slot, events, .. } = &mut self.job;
        send_queued(&mut self.outbox, events, self.done, || slot.release())
    }

    fn runnable(&self) -> bool {
        !self.done && self.outbox.is_empty()
    }

    fn accept(&mut self, token: usize, metrics: &ModelMetrics) {
        let now = Instant::now();
        if self.first_token.is_none() {
            self.first_token = Some(now);
            let ttft = now.duration_since(self.job.admitted);
            metrics.ttft_seconds.observe(ttft.as_secs_f64());
            metrics.genai.first_token(ttft);
        }
        metrics.output_tokens.inc();
        let byte = u8::try_from(token).unwrap_or(b'?');
        self.context.push(byte);
        match self.detok.push(byte) {
            Step::Text(text) => {
                if !text.is_empty() {
                    self.outbox.push_back(GenEvent::Text(text));
                }
                if self.detok.generated().len() >= self.job.params.max_tokens {
                    self.finish(FinishReason::Length);
                }
            }
            Step::Stopped(text) => {
                if !text.is_empty() {
                    self.outbox.push_back(GenEvent::Text(text));
                }
                self.finish(FinishReason::Stop);
            }
        }
        if self.done {
            metrics.genai.finished(
                self.job.admitted,
                self.first_token,
                now,
                self.job.prompt.len(),
                self.detok.generated().len(),
            );
        }
        if self.done
            && let Some(first) = self.first_token
        {
            let secs = now.duration_since(first).as_secs_f64();
            let tokens = self.detok.generated().len() as f64;
            if secs > 0.0 {
                metrics.tokens_per_second.observe(tokens / secs);
            }
        }
    }

    fn finish(&mut self, reason: FinishReason) {
        if reason == FinishReason::Length {
            let rest = self.detok.finish();
            if !rest.is_empty() {
                self.outbox.push_back(GenEvent::Text(rest));
            }
        }
        self.outbox.push_back(GenEvent::Finished {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.detok.generated().len(),
            token_ids: Vec::new(),
        });
        self.done = true;
    }

    fn fail(&mut self, message: &str) {
        self.outbox.clear();
        self.outbox.push_back(GenEvent::Failed(message.to_string()));
        self.done = true;
    }
}

struct DecodeLoop {
    session: Session,
    logits: Vec<TensorSpec>,
    lm: LmConfig,
    metrics: ModelMetrics,
    max_active: usize,
    active: Vec<Sequence>,
}

impl DecodeLoop {
    fn run(mut self, mut intake: Intake<GenerateJob>) {
        while intake.collect(self.active.is_empty()) {
            let room = self.max_active.saturating_sub(self.active.len());
            self.active.extend(intake.take(room).map(Sequence::new));
            self.active.retain_mut(Sequence::flush);
            if self.active.iter().any(Sequence::runnable) {
                self.step();
                // Deliver this step's text before the next step.
                self.active.retain_mut(Sequence::flush);
            } else if !self.active.is_empty() {
                intake.pause();
            }
        }
    }

    /// One model run over every runnable sequence.
    fn step(&mut self) {
        let context = self.lm.context;
        let rows: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.active[i].runnable())
            .collect();
        let mut ids = Vec::with_capacity(rows.len() * context);
        for &i in &rows {
            let ctx = &self.active[i].context;
            let window = &ctx[ctx.len().saturating_sub(context)..];
            ids.extend(std::iter::repeat_n(self.lm.pad_id, context - window.len()));
            ids.extend(window.iter().map(|b| i64::from(*b)));
        }
        self.metrics.batch_size.observe(rows.len() as f64);
        let started = Instant::now();
        let result = self.forward(rows.len(), ids);
        self.metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(logits) => {
                let vocab = self.lm.vocab_size;
                for (row, &i) in rows.iter().enumerate() {
                    let slice = logits.get(row * vocab..(row + 1) * vocab).unwrap_or(&[]);
                    let token = self.active[i].sampler.sample(slice);
                    self.active[i].accept(token, &self.metrics);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "decode step failed");
                for &i in &rows {
                    self.active[i].fail(&message);
                }
            }
        }
    }

    fn forward(&mut self, rows: usize, ids: Vec<i64>) -> Result<Vec<f32>> {
        let shape = vec![
            i64::try_from(rows).map_err(Error::runtime)?,
            i64::try_from(self.lm.context).map_err(Error::runtime)?,
        ];
        let input = NamedTensor::new(self.lm.input.clone(), shape, TensorData::Int64(ids))?;
        let mut out = runtime::run(&mut self.session, &[input], &self.logits)?;
        match out.pop().map(|t| t.data) {
            Some(TensorData::Fp32(v)) if v.len() == rows * self.lm.vocab_size => Ok(v),
            _ => Err(Error::Runtime(format!(
                "output '{}' is not FP32 [{rows}, {}]",
                self.lm.output, self.lm.vocab_size
            ))),
        }
    }
}

/// Sends a sequence's queued events in order without waiting, for both
/// decode loops. Once the sequence is `done`, `finish` runs just before its
/// last event leaves (the answer is complete: its queue place, and budget,
/// go back). Returns false when the sequence should leave (its client is
/// gone, or it is done and everything was delivered); true while it stays
/// (more to come, or the channel is full and the rest waits in `outbox`).
pub(crate) fn send_queued(
    outbox: &mut VecDeque<GenEvent>,
    events: &mpsc::Sender<GenEvent>,
    done: bool,
    mut finish: impl FnMut(),
) -> bool {
    while let Some(event) = outbox.pop_front() {
        if done && outbox.is_empty() {
            finish();
        }
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                outbox.push_front(event);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    !done
}
