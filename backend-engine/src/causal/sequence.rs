//! One causal-lm sequence in the decode loop: its job, its cache, its
//! sampler and the text it hands out.

use std::collections::VecDeque;
use std::time::Instant;

use ort::value::DynValue;
use tokio::sync::mpsc;

use super::budget::KvReservation;
use crate::error::Result;
use crate::hf::TextTokenizer;
use crate::lm::sampling::{Sampler, SamplingParams};
use crate::lm::scheduler::{FinishReason, GenEvent, send_queued};
use crate::lm::text::{Detokenizer, Step};
use crate::metrics::ModelMetrics;
use crate::queue::Slot;

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

/// A sequence in the decode loop.
pub(super) struct Sequence {
    pub(super) job: CausalJob,
    pub(super) generated: Vec<u32>,
    /// present/past tensors, [1, heads, past, head_dim], in `names` order.
    pub(super) cache: Vec<DynValue>,
    pub(super) past: usize,
    sampler: Sampler,
    text: TextStream,
    outbox: VecDeque<GenEvent>,
    done: bool,
    first_token: Option<Instant>,
}

impl Sequence {
    pub(super) fn new(job: CausalJob) -> Self {
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
    pub(super) fn flush(&mut self) -> bool {
        if self.job.events.is_closed() {
            return false;
        }
        let CausalJob {
            slot,
            reservation,
            events,
            ..
        } = &mut self.job;
        // The answer is complete: its place and budget go back as its last
        // event leaves.
        send_queued(&mut self.outbox, events, self.done, || {
            slot.release();
            reservation.release();
        })
    }

    /// Ready for a decode step: prefilled, not done, nothing left to send.
    pub(super) fn runnable(&self) -> bool {
        !self.done && self.outbox.is_empty() && !self.prefilling() && !self.cache.is_empty()
    }

    /// Part of the prompt is not in the cache yet.
    pub(super) fn prefilling(&self) -> bool {
        !self.done && self.past < self.job.prompt.len()
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

    pub(super) fn fail(&mut self, message: &str) {
        self.outbox.clear();
        self.outbox.push_back(GenEvent::Failed(message.to_string()));
        self.done = true;
        self.cache.clear();
    }
}

/// Samples the next token from `logits` and hands out its text.
pub(super) fn accept(
    tokenizer: &TextTokenizer,
    stop_ids: &[u32],
    metrics: &ModelMetrics,
    seq: &mut Sequence,
    logits: &[f32],
) {
    let now = Instant::now();
    if seq.first_token.is_none() {
        seq.first_token = Some(now);
        let ttft = now.duration_since(seq.job.admitted);
        metrics.ttft_seconds.observe(ttft.as_secs_f64());
        metrics.genai.first_token(ttft);
    }
    metrics.output_tokens.inc();
    let token = u32::try_from(seq.sampler.sample(logits)).unwrap_or(0);
    seq.generated.push(token);
    if !seq.job.ignore_eos && stop_ids.contains(&token) {
        // The stop token ends the answer (and still counts below).
        seq.finish(FinishReason::Stop, tokenizer);
    } else {
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
    }
    if seq.done {
        metrics.genai.finished(
            seq.job.admitted,
            seq.first_token,
            now,
            seq.job.prompt.len(),
            seq.generated.len(),
        );
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
