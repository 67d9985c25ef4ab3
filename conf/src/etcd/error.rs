//! Errors of etcd requests.

/// A failed etcd operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The request failed (etcd unreachable, refused, ...).
    #[error("etcd {op}: {source}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        source: Box<etcd_client::Error>,
    },
    /// The request took longer than the request timeout.
    #[error("etcd {0}: timed out")]
    Timeout(&'static str),
    /// The server closed the watch stream.
    #[error("etcd closed the watch stream")]
    Closed,
    /// The server cancelled the watch (for a reason other than compaction).
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
    /// The TLS files could not be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// A lease could not be kept.
    #[error("etcd lease: {0}")]
    Lease(String),
}

impl EtcdError {
    /// Wraps a client error.
    pub fn request(op: &'static str, source: etcd_client::Error) -> Self {
        Self::Request {
            op,
            source: Box::new(source),
        }
    }
}
