//! Sentence embeddings: one worker thread per embedding version owns the
//! encoder session. It takes every request waiting when it wakes (up to
//! `max_batch_size` rows per run), pads each run to its longest input
//! (id 0, mask 0, on the right), pools the token vectors over the
//! attention mask and L2-normalises them when `model.toml` says so.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::ModelMetrics;
use crate::queue::{self, JobSender, Slot};
use crate::repository::model_config::{EmbeddingConfig, ModelConfig, Pooling};

/// One request: token ids per input.
pub struct EmbedJob {
    /// Token ids of each input (special tokens included).
    pub inputs: Vec<Vec<u32>>,
    /// One vector per input, in order.
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
    /// The request's queue place, held until answered.
    pub slot: Slot,
}

/// Handle to the worker; dropping it lets the worker drain and stop.
pub struct Embedder {
    jobs: JobSender<EmbedJob>,
}

impl Embedder {
    /// Starts the worker thread.
    pub fn start(
        session: Session,
        config: &Arc<ModelConfig>,
        metrics: ModelMetrics,
        queue_capacity: usize,
    ) -> Result<Self> {
        let settings = config
            .embedding
            .clone()
            .ok_or_else(|| Error::Runtime("not an embedding model".to_string()))?;
        let capacity = queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let token_types = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let worker = Worker {
            session,
            settings,
            token_types,
            max_rows: config.max_batch_size.max(1),
            metrics,
        };
        std::thread::Builder::new()
            .name(format!("embed-{}/{}", config.name, config.version))
            .spawn(move || worker.run(&rx))
            .map_err(|e| Error::Runtime(format!("cannot start the embedding thread: {e}")))?;
        Ok(Embedder {
            jobs: JobSender::new(tx, &config.name, &config.version, capacity),
        })
    }

    /// Queues a request.
    pub fn submit(&self, job: EmbedJob) -> Result<()> {
        self.jobs.submit(job)
    }
}

struct Worker {
    session: Session,
    settings: EmbeddingConfig,
    token_types: bool,
    max_rows: usize,
    metrics: ModelMetrics,
}

impl Worker {
    fn run(mut self, rx: &Receiver<EmbedJob>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            let mut rows: usize = jobs[0].inputs.len();
            while rows < self.max_rows {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.inputs.len();
                        jobs.push(job);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let all: Vec<&[u32]> = jobs
                .iter()
                .flat_map(|j| j.inputs.iter().map(Vec::as_slice))
                .collect();
            let mut vectors = Vec::with_capacity(all.len());
            let mut failure = None;
            for chunk in all.chunks(self.max_rows) {
                match self.embed(chunk) {
                    Ok(v) => vectors.extend(v),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            let mut vectors = vectors.into_iter();
            for job in jobs {
                let answer = match &failure {
                    Some(m) => Err(Error::Runtime(m.clone())),
                    None => Ok(vectors.by_ref().take(job.inputs.len()).collect()),
                };
                queue::answer(job.slot, job.reply, answer);
            }
        }
    }

    /// One encoder run over `rows` inputs, padded to the longest.
    fn embed(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        let s = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        for (r, row) in rows.iter().enumerate() {
            for (t, id) in row.iter().enumerate() {
                ids[r * s + t] = i64::from(*id);
                mask[r * s + t] = 1;
            }
        }
        let types = vec![0i64; b * s];
        let shape = [b, s];
        fn view(shape: [usize; 2], v: &[i64]) -> Result<SessionInputValue<'_>> {
            Ok(TensorRef::from_array_view((shape, v))
                .map_err(Error::runtime)?
                .into())
        }
        let mut feeds = vec![
            ("input_ids".to_string(), view(shape, &ids)?),
            ("attention_mask".to_string(), view(shape, &mask)?),
        ];
        if self.token_types {
            feeds.push(("token_type_ids".to_string(), view(shape, &types)?));
        }
        self.metrics.batch_size.observe(b as f64);
        let started = Instant::now();
        let outputs = self.session.run(feeds).map_err(Error::runtime)?;
        self.metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| Error::Runtime("the model produced no last_hidden_state".into()))?;
        let (out_shape, data) = hidden.try_extract_tensor::<f32>().map_err(Error::runtime)?;
        let dim = self.settings.dimensions;
        if out_shape.len() != 3 || data.len() != b * s * dim {
            return Err(Error::Runtime(format!(
                "last_hidden_state has shape {:?}, expected [{b}, {s}, {dim}]",
                &out_shape[..]
            )));
        }
        Ok((0..b)
            .map(|r| {
                let row = |t: usize| &data[(r * s + t) * dim..(r * s + t + 1) * dim];
                let len = rows[r].len().max(1);
                let mut v = pool(self.settings.pooling, len, dim, row);
                if self.settings.normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect())
    }
}

/// Pools the first `len` (unmasked) token vectors.
fn pool<'a>(
    pooling: Pooling,
    len: usize,
    dim: usize,
    row: impl Fn(usize) -> &'a [f32],
) -> Vec<f32> {
    match pooling {
        Pooling::Cls => row(0).to_vec(),
        Pooling::Last => row(len - 1).to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f64; dim];
            for t in 0..len {
                for (acc, x) in sum.iter_mut().zip(row(t)) {
                    *acc += f64::from(*x);
                }
            }
            #[expect(clippy::cast_possible_truncation, reason = "vectors are f32")]
            sum.iter().map(|x| (x / len as f64) as f32).collect()
        }
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        #[expect(clippy::cast_possible_truncation, reason = "vectors are f32")]
        let scale = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= scale);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn pooling_uses_only_real_tokens() {
        let data = [1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0];
        let row = |t: usize| &data[t * 2..t * 2 + 2];
        assert_eq!(pool(Pooling::Mean, 2, 2, row), vec![2.0, 3.0]);
        assert_eq!(pool(Pooling::Cls, 2, 2, row), vec![1.0, 2.0]);
        assert_eq!(pool(Pooling::Last, 2, 2, row), vec![3.0, 4.0]);
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
