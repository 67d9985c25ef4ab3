//! Generation on causal-lm models (an Optimum-style decoder with KV cache):
//! continuous batching with one decode loop per version.
//!
//! A new sequence is prefilled alone, in chunks of at most `prefill_chunk`
//! prompt tokens (`--prefill-chunk`): the first with an empty past, each
//! next one on the cache the previous left; the last chunk's logits give
//! its first token, and it joins the running batch. Each pass of the loop
//! runs one chunk of the oldest sequence still prefilling, then one decode
//! step of the running batch, so a long prompt delays the running streams
//! by one chunk per token instead of stalling them for its whole prefill.
//! A prompt's chunks depend only on its length, never on what else runs,
//! so a greedy answer is the same alone and among others.
//!
//! A decode step runs the decoder once for every runnable sequence: one
//! new token per row, the past left-padded to the longest sequence
//! (`attention_mask` 0 on the padding), `position_ids` the row's own
//! length. Each sequence keeps its own cache (`present.*` of its row); with
//! a single active sequence the presents go back in as the past without a
//! copy. A sequence leaves as soon as it ends or its client goes, freeing
//! its cache, its queue place and its share of the KV budget
//! ([`budget`]).

mod budget;
mod sequence;

use std::sync::Arc;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};

pub use budget::{KvBudget, KvReservation};
pub use sequence::CausalJob;
use sequence::{Sequence, accept};

use crate::error::{Error, Result};
use crate::hf::TextTokenizer;
use crate::metrics::ModelMetrics;
use crate::queue::{Intake, JobSender};
use crate::repository::model_config::{CausalLmConfig, ModelConfig};

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
        prefill_chunk: usize,
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
            prefill_chunk: prefill_chunk.max(1),
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

struct DecodeLoop {
    session: Session,
    lm: CausalLmConfig,
    /// (past input, present output) names per cache tensor.
    names: Vec<(String, String)>,
    stop_ids: Vec<u32>,
    tokenizer: Arc<TextTokenizer>,
    metrics: ModelMetrics,
    max_active: usize,
    /// Most prompt tokens per prefill run.
    prefill_chunk: usize,
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
            self.active.extend(intake.take(room).map(Sequence::new));
            self.active.retain_mut(Sequence::flush);
            let chunk = self.prefill_chunk();
            // A first token from the chunk leaves before the step, so its
            // sequence joins the step at once.
            self.active.retain_mut(Sequence::flush);
            if self.active.iter().any(Sequence::runnable) {
                if self.active.iter().any(Sequence::prefilling) {
                    self.metrics.decode_steps_during_prefill.inc();
                }
                self.step();
                self.active.retain_mut(Sequence::flush);
            } else if !chunk && !self.active.is_empty() {
                intake.pause();
            }
        }
    }

    /// Runs the next chunk of the oldest sequence still prefilling: up to
    /// `prefill_chunk` prompt tokens on top of the ones already cached. The
    /// last chunk's logits give the first token. False when no sequence
    /// was prefilling.
    fn prefill_chunk(&mut self) -> bool {
        let Some(seq) = self.active.iter_mut().find(|s| s.prefilling()) else {
            return false;
        };
        let (start, len) = (seq.past, seq.job.prompt.len());
        let end = len.min(start + self.prefill_chunk);
        let ids: Vec<i64> = seq.job.prompt[start..end]
            .iter()
            .map(|&t| i64::from(t))
            .collect();
        let mask = vec![1i64; end];
        let positions: Vec<i64> = (start..end).map(|p| p as i64).collect();
        let shape = [1, self.lm.num_kv_heads, 0, self.lm.head_dim];
        let empty = if seq.cache.is_empty() {
            (0..self.names.len())
                .map(|_| {
                    Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                        .map(Tensor::into_dyn)
                        .map_err(Error::runtime)
                })
                .collect::<Result<Vec<DynValue>>>()
        } else {
            Ok(Vec::new())
        };
        let result = empty.and_then(|empty| {
            let cache = if seq.cache.is_empty() {
                &empty
            } else {
                &seq.cache
            };
            let past = cache.iter().map(SessionInputValue::from).collect();
            forward_with(
                &mut self.session,
                &self.names,
                &self.lm,
                &ids,
                1,
                end - start,
                &mask,
                &positions,
                past,
            )
        });
        self.metrics.prefill_chunks.inc();
        match result {
            Ok(out) => {
                seq.cache = out.presents;
                seq.past = end;
                if end == len {
                    accept(
                        &self.tokenizer,
                        &self.stop_ids,
                        &self.metrics,
                        seq,
                        &out.logits,
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "prefill failed");
                seq.fail(&e.to_string());
            }
        }
        true
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
