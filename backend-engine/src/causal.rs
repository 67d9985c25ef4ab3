//! Generation on causal-lm models (an Optimum-style decoder with KV cache):
//! continuous batching with one decode loop per version.
//!
//! A new sequence is prefilled alone (its whole prompt in one run, empty
//! past), then joins the running batch at the next step. Each step runs the
//! decoder once for every active sequence: one new token per row, the past
//! left-padded to the longest sequence (`attention_mask` 0 on the padding),
//! `position_ids` the row's own length. Each sequence keeps its own cache
//! (`present.*` of its row); with a single active sequence the presents go
//! back in as the past without a copy. A sequence leaves as soon as it ends
//! or its client goes, freeing its cache and its share of the KV budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};
use prometheus::IntGauge;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::hf::TextTokenizer;
use crate::lm::sampling::{Sampler, SamplingParams};
use crate::lm::scheduler::{FinishReason, GenEvent};
use crate::lm::text::{Detokenizer, Step};
use crate::metrics::ModelMetrics;
use crate::queue::{Intake, JobSender, Slot};
use crate::repository::model_config::{CausalLmConfig, ModelConfig};

/// The KV-cache budget of one version, shared by its sequences; the bytes
/// reserved show in `weir_engine_kv_cache_bytes`.
#[derive(Debug)]
pub struct KvBudget {
    used: AtomicUsize,
    limit: usize,
    per_token: usize,
    gauge: IntGauge,
}

/// A sequence's share of the budget, returned when dropped.
#[derive(Debug)]
pub struct KvReservation {
    budget: Arc<KvBudget>,
    bytes: usize,
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.sub(gauge_value(self.bytes));
    }
}

impl KvBudget {
    /// A budget of `mb` MiB for tokens costing `per_token` bytes.
    pub fn new(mb: usize, per_token: usize, metrics: &ModelMetrics) -> Arc<Self> {
        let limit = mb.saturating_mul(1 << 20);
        metrics.kv_cache_limit_bytes.set(gauge_value(limit));
        Arc::new(KvBudget {
            used: AtomicUsize::new(0),
            limit,
            per_token: per_token.max(1),
            gauge: metrics.kv_cache_bytes.clone(),
        })
    }

    /// Reserves room for `tokens` cached positions.
    pub fn reserve(self: &Arc<Self>, model: &str, tokens: usize) -> Result<KvReservation> {
        let bytes = tokens.saturating_mul(self.per_token);
        if bytes > self.limit {
            return Err(Error::InvalidRequest(format!(
                "prompt + max_tokens = {tokens} tokens need {} MiB of KV cache, more than \
                 model '{model}''s whole budget of {} MiB (kv_cache_mb / --kv-cache-mb)",
                bytes.div_ceil(1 << 20),
                self.limit >> 20
            )));
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + bytes > self.limit {
                return Err(Error::KvCacheFull {
                    model: model.to_string(),
                    needed_mb: bytes.div_ceil(1 << 20),
                    free_mb: (self.limit - used) >> 20,
                });
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.gauge.add(gauge_value(bytes));
                    return Ok(KvReservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// One generation request, already tokenized and admitted.
pub struct CausalJob {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Keep going past stop tokens (until `max_tokens`).
    pub ignore_eos: bool,
    /// Where events go.
    pub events: mpsc::Sender<GenEvent>,
    /// The queue place, held until the sequence ends.
    pub slot: Slot,
    /// The KV-cache share, held until the sequence ends.
    pub reservation: KvReservation,
    /// When it was admitted.
    pub admitted: Instant,
}

/// Handle to a version's decode loop.
pub struct CausalScheduler {
    jobs: JobSender<CausalJob>,
}

impl CausalScheduler {
    /// Starts the decode loop on its own thread.
    pub fn start(
        session: Session,
        config: &Arc<ModelConfig>,
        tokenizer: Arc<TextTokenizer>,
        metrics: ModelMetrics,
        queue_capacity: usize,
    ) -> Result<Self> {
        let lm = config
            .causal_lm
            .clone()
            .ok_or_else(|| Error::NotLanguageModel(config.name.clone()))?;
        let stop_ids = lm
            .stop_tokens
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .collect();
        let capacity = queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let label = format!("{}/{}", config.name, config.version);
        let names = (0..lm.num_layers)
            .flat_map(|i| {
                ["key", "value"].map(|k| {
                    (
                        format!("past_key_values.{i}.{k}"),
                        format!("present.{i}.{k}"),
                    )
                })
            })
            .collect();
        let decode = DecodeLoop {
            session,
            lm,
            names,
            stop_ids,
            tokenizer,
            metrics,
            max_active: config.max_batch_size.max(1),
            active: Vec::new(),
        };
        std::thread::Builder::new()
            .name(format!("causal-{label}"))
            .spawn(move || {
                decode.run(Intake::new(rx));
                tracing::info!(model = %label, "decode loop drained and stopped");
            })
            .map_err(|e| Error::Runtime(format!("cannot start the decode thread: {e}")))?;
        Ok(CausalScheduler {
            jobs: JobSender::new(tx, &config.name, &config.version, capacity),
        })
    }

    /// Queues a sequence.
    pub fn submit(&self, job: CausalJob) -> Result<()> {
        self.jobs.submit(job)
    }
}

/// Incremental detokenization: text leaves only once the tokens decode to
/// whole characters (byte-level BPE splits characters across tokens), and
/// stop strings are cut by the byte-level [`Detokenizer`].
struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    stops: Detokenizer,
}

impl TextStream {
    /// Adds a token; returns the text that may leave and whether a stop
    /// string completed.
    fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<(String, bool)> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() <= before.len() || now.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok((String::new(), false));
        }
        let delta = now.get(before.len()..).unwrap_or_default().to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(self.feed(&delta))
    }

    fn feed(&mut self, text: &str) -> (String, bool) {
        let mut out = String::new();
        for &b in text.as_bytes() {
            match self.stops.push(b) {
                Step::Text(t) => out.push_str(&t),
                Step::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        (out, false)
    }

    /// Whatever is still held (at the end of a sequence).
    fn finish(&mut self, tokenizer: &TextTokenizer) -> String {
        let before = tokenizer
            .decode(&self.ids[self.prefix..self.read])
            .unwrap_or_default();
        let now = tokenizer
            .decode(&self.ids[self.prefix..])
            .unwrap_or_default();
        let rest = now.get(before.len()..).unwrap_or_default().to_string();
        let (mut out, stopped) = self.feed(&rest);
        if !stopped {
            out.push_str(&self.stops.finish());
        }
        out
    }
}

struct Sequence {
    job: CausalJob,
    generated: Vec<u32>,
    /// present/past tensors, [1, heads, past, head_dim], in `names` order.
    cache: Vec<DynValue>,
    past: usize,
    sampler: Sampler,
    text: TextStream,
    outbox: VecDeque<GenEvent>,
    done: bool,
    first_token: Option<Instant>,
}

impl Sequence {
    fn new(job: CausalJob) -> Self {
        Sequence {
            sampler: Sampler::new(&job.params),
            text: TextStream {
                ids: Vec::new(),
                prefix: 0,
                read: 0,
                stops: Detokenizer::new(&job.params.stop),
            },
            generated: Vec::new(),
            cache: Vec::new(),
            past: 0,
            outbox: VecDeque::new(),
            done: false,
            first_token: None,
            job,
        }
    }

    /// Sends what is queued; false when the sequence should leave (its
    /// client is gone, or it is done and everything was delivered). A gone
    /// client is noticed here even with nothing to send, so a cancelled
    /// request frees its place and KV budget at the next step.
    fn flush(&mut self) -> bool {
        if self.job.events.is_closed() {
            return false;
        }
        while let Some(event) = self.outbox.pop_front() {
            match self.job.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        !self.done
    }

    fn runnable(&self) -> bool {
        !self.done && self.outbox.is_empty() && !self.cache.is_empty()
    }

    fn finish(&mut self, reason: FinishReason, tokenizer: &TextTokenizer) {
        if reason == FinishReason::Length {
            let rest = self.text.finish(tokenizer);
            if !rest.is_empty() {
                self.outbox.push_back(GenEvent::Text(rest));
            }
        }
        self.outbox.push_back(GenEvent::Finished {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated.len(),
            token_ids: self.generated.clone(),
        });
        self.done = true;
        self.cache.clear();
    }

    fn fail(&mut self, message: &str) {
        self.outbox.clear();
        self.outbox.push_back(GenEvent::Failed(message.to_string()));
        self.done = true;
        self.cache.clear();
    }
}

struct DecodeLoop {
    session: Session,
    lm: CausalLmConfig,
    /// (past input, present output) names per cache tensor.
    names: Vec<(String, String)>,
    stop_ids: Vec<u32>,
    tokenizer: Arc<TextTokenizer>,
    metrics: ModelMetrics,
    max_active: usize,
    active: Vec<Sequence>,
}

/// Logits of each row's last position, and the presents.
struct StepOutput {
    logits: Vec<f32>,
    presents: Vec<DynValue>,
}

impl DecodeLoop {
    fn run(mut self, mut intake: Intake<CausalJob>) {
        while intake.collect(self.active.is_empty()) {
            let room = self.max_active.saturating_sub(self.active.len());
            let jobs: Vec<CausalJob> = intake.take(room).collect();
            for job in jobs {
                if job.events.is_closed() {
                    continue;
                }
                let mut seq = Sequence::new(job);
                self.prefill(&mut seq);
                self.active.push(seq);
            }
            self.active.retain_mut(Sequence::flush);
            if self.active.iter().any(Sequence::runnable) {
                self.step();
                self.active.retain_mut(Sequence::flush);
            } else if !self.active.is_empty() {
                intake.pause();
            }
        }
    }

    /// Runs the whole prompt with an empty past and takes the first token.
    fn prefill(&mut self, seq: &mut Sequence) {
        let s = seq.job.prompt.len();
        let ids: Vec<i64> = seq.job.prompt.iter().map(|&t| i64::from(t)).collect();
        let mask = vec![1i64; s];
        let positions: Vec<i64> = (0..s).map(|p| p as i64).collect();
        let shape = [1, self.lm.num_kv_heads, 0, self.lm.head_dim];
        let empty: Result<Vec<DynValue>> = (0..self.names.len())
            .map(|_| {
                Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                    .map(Tensor::into_dyn)
                    .map_err(Error::runtime)
            })
            .collect();
        let result = empty.and_then(|empty| {
            let past = empty.iter().map(SessionInputValue::from).collect();
            self.forward(&ids, 1, s, &mask, &positions, past)
        });
        match result {
            Ok(out) => {
                seq.cache = out.presents;
                seq.past = s;
                accept(
                    &self.tokenizer,
                    &self.stop_ids,
                    &self.metrics,
                    seq,
                    &out.logits,
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "prefill failed");
                seq.fail(&e.to_string());
            }
        }
    }

    /// One decoder run: one new token for every runnable sequence.
    fn step(&mut self) {
        let rows: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.active[i].runnable())
            .collect();
        let b = rows.len();
        let longest = rows.iter().map(|&i| self.active[i].past).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b);
        let mut mask = vec![0i64; b * (longest + 1)];
        let mut positions = Vec::with_capacity(b);
        for (r, &i) in rows.iter().enumerate() {
            let seq = &self.active[i];
            ids.push(i64::from(seq.generated.last().copied().unwrap_or(0)));
            positions.push(seq.past as i64);
            let row = &mut mask[r * (longest + 1)..(r + 1) * (longest + 1)];
            row[longest - seq.past..].fill(1);
        }
        self.metrics.batch_size.observe(b as f64);
        let result = if b == 1 {
            let seq = &self.active[rows[0]];
            let past: Vec<SessionInputValue<'_>> =
                seq.cache.iter().map(SessionInputValue::from).collect();
            let (session, names) = (&mut self.session, &self.names);
            forward_with(
                session, names, &self.lm, &ids, 1, 1, &mask, &positions, past,
            )
        } else {
            self.batched_past(&rows, longest).and_then(|past| {
                let past = past.iter().map(SessionInputValue::from).collect();
                forward_with(
                    &mut self.session,
                    &self.names,
                    &self.lm,
                    &ids,
                    b,
                    1,
                    &mask,
                    &positions,
                    past,
                )
            })
        };
        match result.and_then(|out| self.split(&rows, longest, out)) {
            Ok(logits) => {
                let vocab = self.lm.vocab_size;
                for (r, &i) in rows.iter().enumerate() {
                    let row = logits.get(r * vocab..(r + 1) * vocab).unwrap_or(&[]);
                    let seq = &mut self.active[i];
                    seq.past += 1;
                    accept(&self.tokenizer, &self.stop_ids, &self.metrics, seq, row);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "decode step failed");
                for &i in &rows {
                    self.active[i].fail(&e.to_string());
                }
            }
        }
    }

    /// Left-pads every row's cache to `longest` positions and stacks them.
    fn batched_past(&self, rows: &[usize], longest: usize) -> Result<Vec<DynValue>> {
        let (heads, dim) = (self.lm.num_kv_heads, self.lm.head_dim);
        let b = rows.len();
        let mut out = Vec::with_capacity(self.names.len());
        for j in 0..self.names.len() {
            let mut buf = vec![0f32; b * heads * longest * dim];
            for (r, &i) in rows.iter().enumerate() {
                let seq = &self.active[i];
                let t = seq.past;
                let (_, data) = seq.cache[j]
                    .try_extract_tensor::<f32>()
                    .map_err(Error::runtime)?;
                for h in 0..heads {
                    let dst = ((r * heads + h) * longest + (longest - t)) * dim;
                    let src = h * t * dim;
                    buf[dst..dst + t * dim].copy_from_slice(&data[src..src + t * dim]);
                }
            }
            out.push(
                Tensor::from_array(([b, heads, longest, dim], buf))
                    .map_err(Error::runtime)?
                    .into_dyn(),
            );
        }
        Ok(out)
    }

    /// Gives each row its new cache; returns the logits.
    fn split(&mut self, rows: &[usize], longest: usize, out: StepOutput) -> Result<Vec<f32>> {
        if rows.len() == 1 {
            self.active[rows[0]].cache = out.presents;
            return Ok(out.logits);
        }
        let (heads, dim) = (self.lm.num_kv_heads, self.lm.head_dim);
        let width = longest + 1;
        let mut caches: Vec<Vec<DynValue>> = rows.iter().map(|_| Vec::new()).collect();
        for present in &out.presents {
            let (_, data) = present
                .try_extract_tensor::<f32>()
                .map_err(Error::runtime)?;
            for (r, &i) in rows.iter().enumerate() {
                let t = self.active[i].past + 1;
                let mut buf = Vec::with_capacity(heads * t * dim);
                for h in 0..heads {
                    let src = ((r * heads + h) * width + (width - t)) * dim;
                    buf.extend_from_slice(&data[src..src + t * dim]);
                }
                caches[r].push(
                    Tensor::from_array(([1, heads, t, dim], buf))
                        .map_err(Error::runtime)?
                        .into_dyn(),
                );
            }
        }
        for (r, &i) in rows.iter().enumerate() {
            self.active[i].cache = std::mem::take(&mut caches[r]);
        }
        Ok(out.logits)
    }

    fn forward(
        &mut self,
        ids: &[i64],
        b: usize,
        s: usize,
        mask: &[i64],
        positions: &[i64],
        past: Vec<SessionInputValue<'_>>,
    ) -> Result<StepOutput> {
        forward_with(
            &mut self.session,
            &self.names,
            &self.lm,
            ids,
            b,
            s,
            mask,
            positions,
            past,
        )
    }
}

/// Samples the next token from `logits` and hands out its text.
fn accept(
    tokenizer: &TextTokenizer,
    stop_ids: &[u32],
    metrics: &ModelMetrics,
    seq: &mut Sequence,
    logits: &[f32],
) {
    let now = Instant::now();
    if seq.first_token.is_none() {
        seq.first_token = Some(now);
        metrics
            .ttft_seconds
            .observe(now.duration_since(seq.job.admitted).as_secs_f64());
    }
    metrics.output_tokens.inc();
    let token = u32::try_from(seq.sampler.sample(logits)).unwrap_or(0);
    seq.generated.push(token);
    if !seq.job.ignore_eos && stop_ids.contains(&token) {
        seq.finish(FinishReason::Stop, tokenizer);
        return;
    }
    match seq.text.push(tokenizer, token) {
        Ok((text, stopped)) => {
            if !text.is_empty() {
                seq.outbox.push_back(GenEvent::Text(text));
            }
            if stopped {
                seq.finish(FinishReason::Stop, tokenizer);
            } else if seq.generated.len() >= seq.job.params.max_tokens {
                seq.finish(FinishReason::Length, tokenizer);
            }
        }
        Err(e) => seq.fail(&e.to_string()),
    }
    if seq.done
        && let Some(first) = seq.first_token
    {
        let secs = now.duration_since(first).as_secs_f64();
        if secs > 0.0 {
            metrics
                .tokens_per_second
                .observe(seq.generated.len() as f64 / secs);
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the decoder's inputs, spelled out"
)]
fn forward_with(
    session: &mut Session,
    names: &[(String, String)],
    lm: &CausalLmConfig,
    ids: &[i64],
    b: usize,
    s: usize,
    mask: &[i64],
    positions: &[i64],
    past: Vec<SessionInputValue<'_>>,
) -> Result<StepOutput> {
    let total = mask.len() / b.max(1);
    let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(3 + names.len());
    feeds.push((
        "input_ids".into(),
        TensorRef::from_array_view(([b, s], ids))
            .map_err(Error::runtime)?
            .into(),
    ));
    feeds.push((
        "attention_mask".into(),
        TensorRef::from_array_view(([b, total], mask))
            .map_err(Error::runtime)?
            .into(),
    ));
    feeds.push((
        "position_ids".into(),
        TensorRef::from_array_view(([b, s], positions))
            .map_err(Error::runtime)?
            .into(),
    ));
    for ((name, _), value) in names.iter().zip(past) {
        feeds.push((name.clone(), value));
    }
    let mut outputs = session.run(feeds).map_err(Error::runtime)?;
    let vocab = lm.vocab_size;
    let logits = {
        let value = outputs
            .get("logits")
            .ok_or_else(|| Error::Runtime("the model produced no logits".into()))?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(Error::runtime)?;
        if data.len() != b * s * vocab {
            return Err(Error::Runtime(format!(
                "logits hold {} values, expected [{b}, {s}, {vocab}]",
                data.len()
            )));
        }
        let mut last = Vec::with_capacity(b * vocab);
        for r in 0..b {
            let at = (r * s + s - 1) * vocab;
            last.extend_from_slice(&data[at..at + vocab]);
        }
        last
    };
    let presents = names
        .iter()
        .map(|(_, present)| {
            outputs
                .remove(present)
                .ok_or_else(|| Error::Runtime(format!("the model produced no {present}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StepOutput { logits, presents })
}
