//! Dynamic batching for tensor inference: one worker thread per model
//! version owns an ONNX Runtime session; it takes the first waiting request,
//! gathers more until the batch holds `max_batch_size` rows or
//! `max_queue_delay` has passed, runs them as one, and splits the outputs.
//!
//! The delay is a cap, not a fixed wait: the worker waits only while some
//! request admitted to the model's queue is not yet in the batch (it is on
//! its way into the channel). When every admitted request is already in the
//! batch nothing else can join in time, so the batch runs at once. Under
//! load requests queue up while a batch runs, so batches fill by
//! themselves; a lone request never pays the delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use ort::session::Session;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::ModelMetrics;
use crate::queue::{JobSender, Slot, answer};
use crate::repository::model_config::ModelConfig;
use crate::runtime;
use crate::tensor::{NamedTensor, TensorData};

/// One inference request: inputs in the model's declared order, already
/// validated against the model.
pub struct InferJob {
    /// One tensor per model input, in declaration order.
    pub inputs: Vec<NamedTensor>,
    /// First-dimension size shared by the inputs (1 for unbatched models).
    pub rows: usize,
    /// Where the outputs (every declared output, in order) go.
    pub reply: oneshot::Sender<Result<Vec<NamedTensor>>>,
    /// The request's place in the model's queue, held until answered.
    pub slot: Slot,
}

/// Handle to a model version's batching worker. Dropping it lets the worker
/// finish what is queued and exit.
pub struct Batcher {
    jobs: JobSender<InferJob>,
}

impl Batcher {
    /// Starts the worker. `batching = false` runs every request on its own.
    pub fn start(
        session: Session,
        config: Arc<ModelConfig>,
        metrics: ModelMetrics,
        queue_capacity: usize,
        batching: bool,
        admitted: Arc<AtomicUsize>,
    ) -> Result<Self> {
        let capacity = queue_capacity.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let (model, version) = (config.name.clone(), config.version.clone());
        let label = format!("{model}/{version}");
        let max_rows = if batching { config.max_batch_size } else { 0 };
        std::thread::Builder::new()
            .name(format!("infer-{label}"))
            .spawn(move || worker(&rx, session, &config, &metrics, max_rows, &admitted))
            .map_err(|e| Error::Runtime(format!("cannot start the batching thread: {e}")))?;
        Ok(Batcher {
            jobs: JobSender::new(tx, &model, &version, capacity),
        })
    }

    /// Queues a job (the caller already holds its queue slot).
    pub fn submit(&self, job: InferJob) -> Result<()> {
        self.jobs.submit(job)
    }
}

fn worker(
    rx: &Receiver<InferJob>,
    mut session: Session,
    config: &ModelConfig,
    metrics: &ModelMetrics,
    max_rows: usize,
    admitted: &AtomicUsize,
) {
    let mut carry: Option<InferJob> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let deadline = Instant::now() + config.max_queue_delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    // Each job in the batch holds one admitted place.
                    let on_the_way = admitted.load(Ordering::Acquire) > batch.len();
                    if now >= deadline || !on_the_way {
                        None
                    } else {
                        rx.recv_timeout(deadline - now).ok()
                    }
                }
            };
            let Some(job) = next else { break };
            if rows + job.rows <= max_rows && same_trailing_shapes(&batch[0], &job) {
                rows += job.rows;
                batch.push(job);
            } else {
                carry = Some(job);
                break;
            }
        }
        run_batch(&mut session, config, metrics, batch);
    }
    tracing::info!(model = %config.name, version = %config.version, "batching worker drained and stopped");
}

fn same_trailing_shapes(a: &InferJob, b: &InferJob) -> bool {
    a.inputs
        .iter()
        .zip(&b.inputs)
        .all(|(x, y)| x.shape.get(1..) == y.shape.get(1..))
}

fn run_batch(
    session: &mut Session,
    config: &ModelConfig,
    metrics: &ModelMetrics,
    batch: Vec<InferJob>,
) {
    // Requests whose callers went away are not worth running.
    let batch: Vec<InferJob> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let rows: usize = batch.iter().map(|j| j.rows).sum();
    metrics.batch_size.observe(rows as f64);
    let started = Instant::now();
    let result = if let [only] = batch.as_slice() {
        runtime::run(session, &only.inputs, &config.outputs).map(|o| vec![o])
    } else {
        merged_run(session, config, &batch, rows)
    };
    metrics
        .inference_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(per_job) => {
            for (job, outputs) in batch.into_iter().zip(per_job) {
                answer(job.slot, job.reply, Ok(outputs));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for job in batch {
                answer(job.slot, job.reply, Err(Error::Runtime(message.clone())));
            }
        }
    }
}

/// Joins the jobs' inputs along the first dimension, runs once, and splits
/// every output back by each job's rows.
fn merged_run(
    session: &mut Session,
    config: &ModelConfig,
    batch: &[InferJob],
    rows: usize,
) -> Result<Vec<Vec<NamedTensor>>> {
    let mut inputs = Vec::with_capacity(config.inputs.len());
    for (i, spec) in config.inputs.iter().enumerate() {
        let mut shape = batch[0].inputs[i].shape.clone();
        let total: usize = batch.iter().map(|j| j.inputs[i].data.len()).sum();
        let mut data = TensorData::with_capacity(spec.datatype, total);
        for job in batch {
            data.extend_from(&job.inputs[i].data)?;
        }
        if let Some(first) = shape.first_mut() {
            *first = i64::try_from(rows).map_err(Error::runtime)?;
        }
        inputs.push(NamedTensor::new(spec.name.clone(), shape, data)?);
    }
    let outputs = runtime::run(session, &inputs, &config.outputs)?;
    let mut per_job: Vec<Vec<NamedTensor>> = batch.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        let out_rows = out.shape.first().copied().unwrap_or(-1);
        if usize::try_from(out_rows).ok() != Some(rows) {
            return Err(Error::Runtime(format!(
                "output '{}' has first dimension {out_rows}, expected the batch of {rows}",
                out.name
            )));
        }
        let per_row = out.data.len().checked_div(rows).unwrap_or(0);
        let mut start = 0;
        for (job, dest) in batch.iter().zip(per_job.iter_mut()) {
            let end = start + job.rows * per_row;
            let mut shape = out.shape.clone();
            shape[0] = i64::try_from(job.rows).map_err(Error::runtime)?;
            dest.push(NamedTensor::new(
                out.name.clone(),
                shape,
                out.data.slice(start, end)?,
            )?);
            start = end;
        }
    }
    Ok(per_job)
}
