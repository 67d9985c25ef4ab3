//! Watching the config prefix.
//!
//! The [`Watcher`] task reads every key under the prefix at revision `R`,
//! then watches the prefix from `R + 1`. Each watch response updates its copy
//! of the documents and publishes the whole set on a `tokio::sync::watch`
//! channel, which keeps only the latest value: a consumer that is busy
//! applying one update finds the next one already coalesced with every event
//! that arrived meanwhile.
//!
//! When etcd goes away the task reconnects with exponential backoff and
//! resumes the watch after the last revision it has seen. When that revision
//! has been compacted, or etcd cancels the watch, it reads everything again
//! (a full resync) and watches on from there, so no update is lost.

use std::sync::Arc;
use std::time::Instant;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;

use super::backoff::Backoff;
pub use super::backoff::{MAX as BACKOFF_MAX, MIN as BACKOFF_MIN};
use super::error::EtcdError;
use super::layout::Docs;
use super::settings::EtcdSettings;

/// Up to 25 % more on each reconnect delay, so that many gateways do not
/// reconnect in lockstep.
const JITTER: f64 = 0.25;

/// One state of the documents under the prefix.
#[derive(Debug, Clone)]
pub struct Update {
    /// The etcd revision this state reflects.
    pub revision: i64,
    /// Relative key → value.
    pub docs: Arc<Docs>,
    /// When the newest event of this state arrived.
    pub received: Instant,
}

/// The watcher's connection state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// A watch (or the initial read) is established.
    pub connected: bool,
    /// Failed connection attempts since the last success.
    pub failures: u64,
    /// Full reads after the first one (compaction, cancelled watch).
    pub resyncs: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// A running watch of the prefix; stopped when dropped.
pub struct Watcher {
    updates: watch::Receiver<Option<Arc<Update>>>,
    status: watch::Receiver<WatchStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts watching on the current tokio runtime.
    pub fn spawn(settings: EtcdSettings) -> Self {
        let (tx, updates) = watch::channel(None);
        let (status_tx, status) = watch::channel(WatchStatus::default());
        let task = tokio::spawn(run(settings, tx, status_tx));
        Self {
            updates,
            status,
            task,
        }
    }

    /// The latest state of the documents (`None` until the first read).
    pub fn updates(&self) -> watch::Receiver<Option<Arc<Update>>> {
        self.updates.clone()
    }

    /// The connection state.
    pub fn status(&self) -> watch::Receiver<WatchStatus> {
        self.status.clone()
    }
}

/// What the task knows between connections.
struct Tracker {
    docs: Docs,
    /// The last revision whose state `docs` reflects; `None` forces a full read.
    revision: Option<i64>,
    reads: u64,
    backoff: Backoff,
}

struct Channels {
    updates: watch::Sender<Option<Arc<Update>>>,
    status: watch::Sender<WatchStatus>,
}

impl Channels {
    fn publish(&self, t: &Tracker, revision: i64, received: Instant) {
        self.updates.send_replace(Some(Arc::new(Update {
            revision,
            docs: Arc::new(t.docs.clone()),
            received,
        })));
    }

    fn connected(&self, t: &mut Tracker) {
        t.backoff.reset();
        self.status.send_if_modified(|s| {
            let changed = !s.connected || s.failures != 0;
            s.connected = true;
            s.failures = 0;
            changed
        });
    }
}

async fn run(
    settings: EtcdSettings,
    updates: watch::Sender<Option<Arc<Update>>>,
    status: watch::Sender<WatchStatus>,
) {
    let ch = Channels { updates, status };
    let mut t = Tracker {
        docs: Docs::new(),
        revision: None,
        reads: 0,
        backoff: Backoff::new().with_jitter(JITTER),
    };
    loop {
        let err = session(&settings, &mut t, &ch).await;
        tracing::warn!(etcd = %settings, error = %err, retry_in = ?t.backoff.delay(), "etcd watch lost");
        ch.status.send_modify(|s| {
            s.connected = false;
            s.failures += 1;
            s.last_error = Some(err.to_string());
        });
        t.backoff.wait().await;
    }
}

/// One connection: returns the error that ended it.
async fn session(settings: &EtcdSettings, t: &mut Tracker, ch: &Channels) -> EtcdError {
    let mut client = match settings.connect().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    loop {
        if t.revision.is_none()
            && let Err(e) = read_all(settings, &mut client, t, ch).await
        {
            return e;
        }
        let start = t.revision.unwrap_or(0) + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut stream = match settings
            .timed(
                "watch",
                client.watch(settings.prefix.clone(), Some(options)),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return e,
        };
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return EtcdError::Closed,
                Err(e) => return EtcdError::request("watch", &settings.endpoints, e),
            };
            let received = Instant::now();
            if msg.compact_revision() > 0 {
                tracing::warn!(
                    etcd = %settings,
                    from = start,
                    compacted = msg.compact_revision(),
                    "revision compacted; reading everything again"
                );
                t.revision = None;
                break;
            }
            if msg.canceled() {
                // Not a compaction (permissions, a server-side limit): read
                // everything again after the reconnect backoff, so a watch
                // that keeps being cancelled cannot spin.
                tracing::warn!(
                    etcd = %settings,
                    from = start,
                    reason = msg.cancel_reason(),
                    "watch cancelled; reading everything again"
                );
                t.revision = None;
                return EtcdError::Cancelled(msg.cancel_reason().to_owned());
            }
            if msg.created() {
                ch.connected(t);
            }
            if msg.events().is_empty() {
                continue;
            }
            let mut revision = t.revision.unwrap_or(0);
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(rel) = settings.relative(kv.key()) else {
                    continue;
                };
                match ev.event_type() {
                    EventType::Put => {
                        t.docs.insert(rel, kv.value().to_vec());
                    }
                    EventType::Delete => {
                        t.docs.remove(&rel);
                    }
                }
                revision = revision.max(kv.mod_revision());
            }
            t.revision = Some(revision);
            ch.publish(t, revision, received);
        }
    }
}

/// Reads every document under the prefix and publishes them.
async fn read_all(
    settings: &EtcdSettings,
    client: &mut Client,
    t: &mut Tracker,
    ch: &Channels,
) -> Result<(), EtcdError> {
    let resp = settings.get_prefix(client).await?;
    let received = Instant::now();
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    t.docs = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((settings.relative(kv.key())?, kv.value().to_vec())))
        .collect();
    t.revision = Some(revision);
    t.reads += 1;
    if t.reads > 1 {
        ch.status.send_modify(|s| s.resyncs += 1);
    }
    tracing::info!(etcd = %settings, revision, keys = t.docs.len(), "read the config prefix");
    ch.connected(t);
    ch.publish(t, revision, received);
    Ok(())
}
