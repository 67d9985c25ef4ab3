//! Errors of etcd requests.

/// A failed etcd operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No etcd endpoint could be reached.
    #[error("cannot reach etcd at {endpoints}: {cause}")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The innermost cause, e.g. `connection refused`.
        cause: String,
    },
    /// etcd answered the request with an error (permission denied, ...).
    #[error("etcd {op}: {message}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The error in one line.
        message: String,
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
    /// A client error of `op` against `endpoints`, in one line: a connection
    /// that failed becomes [`EtcdError::Unreachable`] with its innermost
    /// cause, a refused request keeps etcd's own message.
    pub fn request(op: &'static str, endpoints: &[String], error: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let unreachable = |cause: String| Self::Unreachable {
            endpoints: endpoints.join(","),
            cause,
        };
        match &error {
            E::GRpcStatus(status) => match innermost(status) {
                Some(cause) => unreachable(cause),
                None => Self::Request {
                    op,
                    message: format!("{:?}: {}", status.code(), status.message()),
                },
            },
            E::TransportError(e) => unreachable(innermost(e).unwrap_or_else(|| e.to_string())),
            E::IoError(e) => unreachable(io_cause(e)),
            other => Self::Request {
                op,
                message: other.to_string(),
            },
        }
    }
}

/// The OS error that ended a connection attempt, if one is in the chain.
fn innermost(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = error.source();
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io_cause(io));
        }
        next = e.source();
    }
    None
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::TimedOut
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::AddrNotAvailable
        | K::NotConnected => e.kind().to_string(),
        _ => e.to_string(),
    }
}
