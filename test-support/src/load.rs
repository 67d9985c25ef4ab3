//! A closed-loop load for tests: `clients` concurrent clients sending GETs
//! through a gateway until stopped, recording every failure and which
//! upstream (`x-upstream`) and arm (`x-weir-arm`) answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Weir, eventually};

#[derive(Default)]
struct Record {
    failures: Vec<String>,
    served: HashMap<String, usize>,
    fallbacks: usize,
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A running load; stop it with [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    record: Arc<Mutex<Record>>,
    workers: tokio::task::JoinSet<()>,
}

/// What a load saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests completed (answered or failed).
    pub sent: usize,
    /// One line per failed request (a non-200 status or a transport error).
    pub failures: Vec<String>,
    /// Answers per `x-upstream` value.
    pub served: HashMap<String, usize>,
    /// Answers that carried `x-weir-fallback: 1`.
    pub fallbacks: usize,
}

impl Load {
    /// GETs of `/v1/chat/completions` from `clients` clients.
    pub fn start(weir: &Weir, clients: usize) -> Self {
        Self::start_with(weir, clients, &[])
    }

    /// Like [`Load::start`], with extra request headers.
    pub fn start_with(weir: &Weir, clients: usize, headers: &[(&str, &str)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let record = Arc::new(Mutex::new(Record::default()));
        let client = crate::client();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, url) = (client.clone(), weir.url("/v1/chat/completions"));
            let (stop, sent, record) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&record));
            let headers = headers.clone();
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut req = client.get(&url);
                    for (k, v) in &headers {
                        req = req.header(k, v);
                    }
                    let resp = req.send().await;
                    let mut r = record.lock().unwrap_or_else(|p| p.into_inner());
                    match resp {
                        Ok(resp) if resp.status() == 200 => {
                            let h = resp.headers();
                            let upstream = h
                                .get("x-upstream")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            *r.served.entry(upstream).or_insert(0) += 1;
                            if h.get("x-weir-fallback").is_some() {
                                r.fallbacks += 1;
                            }
                        }
                        Ok(resp) => r.failures.push(format!("status {}", resp.status())),
                        Err(e) => r.failures.push(format!("error {}", chain(&e))),
                    }
                    drop(r);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Self {
            stop,
            sent,
            record,
            workers,
        }
    }

    /// Requests completed so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> usize {
        self.lock().failures.len()
    }

    /// Answers from `upstream` so far.
    pub fn served_by(&self, upstream: &str) -> usize {
        self.lock().served.get(upstream).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `n` more requests have completed (at most 30 s).
    pub async fn advance(&self, n: usize) -> anyhow::Result<()> {
        let target = self.sent() + n;
        let sent = Arc::clone(&self.sent);
        eventually(Duration::from_secs(30), || {
            let now = sent.load(Ordering::Relaxed);
            async move { (now >= target).then_some(()) }
        })
        .await
    }

    /// Stops the clients and reports what they saw.
    pub async fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        let r = std::mem::take(&mut *self.lock());
        Report {
            sent: self.sent(),
            failures: r.failures,
            served: r.served,
            fallbacks: r.fallbacks,
        }
    }
}
