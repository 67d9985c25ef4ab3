//! A named demo/test upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Header a test sets to make the upstream wait before answering.
pub const DELAY_HEADER: &str = "x-test-delay-ms";

/// A running upstream; stopping or dropping it closes every connection.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The name it answers with (`x-upstream` header and `"upstream"` field).
    pub name: String,
    hits: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream on `addr` (use port 0 for an OS-chosen port).
    pub async fn start(name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        // A deep accept queue: tests open a thousand connections at once.
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.to_owned(), Arc::clone(&hits)));
        Ok(Self {
            addr,
            name: name.to_owned(),
            hits,
            task: Some(task),
        })
    }

    /// Starts an upstream on `127.0.0.1:0`.
    pub async fn local(name: &str) -> anyhow::Result<Self> {
        Self::start(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Closes the listener and every open connection.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, name: String, hits: Arc<AtomicU64>) {
    // Connection tasks live in this set: aborting the accept task drops the set,
    // which aborts (closes) every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let name = name.clone();
                let hits = Arc::clone(&hits);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, name.clone(), Arc::clone(&hits))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    name: String,
    hits: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = req
        .headers()
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "upstream": name,
        "method": method,
        "version": version,
        "path": path,
        "request_id": request_id,
        "body_bytes": body_len,
    })
    .to_string();
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name.as_str())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}
