//! A named demo/test upstream.
//!
//! Streamed chunks and `x-test-reply` answers name the request body's
//! `model` when it has one (else `"m"` and the upstream's name).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Header a test sets to make the upstream wait before answering.
pub const DELAY_HEADER: &str = "x-test-delay-ms";
/// Header that makes the upstream echo the request body (`"body"` field)
/// and its headers (`"headers"`: lower-case name → value).
pub const ECHO_HEADER: &str = "x-test-echo";
/// Header whose value the upstream answers as a non-streamed chat completion.
pub const REPLY_HEADER: &str = "x-test-reply";
/// Header whose value the upstream streams as chat-completion SSE deltas of
/// [`SSE_CHUNK_HEADER`] characters (default 1), one write each, then `[DONE]`.
pub const SSE_HEADER: &str = "x-test-sse";
/// Header that makes a `x-test-reply` answer carry `usage` (one
/// completion token per character, one prompt token).
pub const USAGE_HEADER: &str = "x-test-usage";
/// Characters per streamed delta.
pub const SSE_CHUNK_HEADER: &str = "x-test-sse-chunk";
/// Milliseconds between streamed events (default 2).
pub const SSE_GAP_HEADER: &str = "x-test-sse-gap-ms";
/// Bytes per write of a streamed answer: each event is cut into pieces of
/// this size (UTF-8 characters and the JSON split anywhere), each its own
/// write after the gap. Default: one write per event.
pub const SSE_SPLIT_HEADER: &str = "x-test-sse-split";

/// The body type of every answer.
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running upstream; stopping or dropping it closes every connection.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The name it answers with (`x-upstream` header and `"upstream"` field).
    pub name: String,
    hits: Arc<AtomicU64>,
    failures: Arc<Failures>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A share of answers the upstream fails on purpose, and requests seen.
#[derive(Default)]
struct Failures {
    /// Requests received (counted before any delay).
    received: AtomicU64,
    /// Percent of answers that fail (0-100).
    percent: AtomicU64,
    /// Their status.
    status: AtomicU64,
    /// Answers counted for the spread.
    seen: AtomicU64,
    /// SSE streams sent to their end.
    streams_finished: AtomicU64,
    /// SSE streams dropped before their end (the peer went away).
    streams_cancelled: AtomicU64,
}

impl Failures {
    /// Whether the next answer fails, spreading failures evenly: with 20%,
    /// exactly one answer in every five.
    fn next(&self) -> Option<u16> {
        let p = self.percent.load(Ordering::Relaxed);
        if p == 0 {
            return None;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let fail = (n + 1) * p / 100 > n * p / 100;
        fail.then(|| u16::try_from(self.status.load(Ordering::Relaxed)).unwrap_or(500))
    }
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
        let failures = Arc::new(Failures::default());
        let task = tokio::spawn(serve(
            listener,
            name.to_owned(),
            Arc::clone(&hits),
            Arc::clone(&failures),
        ));
        Ok(Self {
            addr,
            name: name.to_owned(),
            hits,
            failures,
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

    /// Requests received so far, answered or not (counted on arrival,
    /// before any `x-test-delay-ms` wait).
    pub fn received(&self) -> u64 {
        self.failures.received.load(Ordering::Relaxed)
    }

    /// SSE streams sent to their end, and dropped before it (the connection
    /// closed mid-stream).
    pub fn streams(&self) -> (u64, u64) {
        (
            self.failures.streams_finished.load(Ordering::Relaxed),
            self.failures.streams_cancelled.load(Ordering::Relaxed),
        )
    }

    /// Makes `percent` of the answers from now on fail with `status`, spread
    /// evenly (20% = every fifth answer); 0 stops failing.
    pub fn fail_share(&self, percent: u64, status: u16) {
        self.failures
            .status
            .store(u64::from(status), Ordering::Relaxed);
        self.failures.seen.store(0, Ordering::Relaxed);
        self.failures
            .percent
            .store(percent.min(100), Ordering::Relaxed);
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

async fn serve(listener: TcpListener, name: String, hits: Arc<AtomicU64>, failures: Arc<Failures>) {
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
                let failures = Arc::clone(&failures);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, name.clone(), Arc::clone(&hits), Arc::clone(&failures))
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
    failures: Arc<Failures>,
) -> Result<Response<Body>, Infallible> {
    failures.received.fetch_add(1, Ordering::Relaxed);
    let text_header = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned)
    };
    let delay = text_header(DELAY_HEADER).and_then(|v| v.parse::<u64>().ok());
    let echo = req.headers().contains_key(ECHO_HEADER);
    // Echo mode also returns every request header (lower-case name → value).
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let reply = text_header(REPLY_HEADER);
    let sse = text_header(SSE_HEADER);
    let sse_chunk = text_header(SSE_CHUNK_HEADER)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let sse_split = text_header(SSE_SPLIT_HEADER).and_then(|v| v.parse::<usize>().ok());
    let sse_gap = text_header(SSE_GAP_HEADER)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(2)
        .min(60_000);
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    let request_id = text_header("x-request-id").unwrap_or_default();
    let tenant = text_header("x-weir-tenant");
    let traceparent = text_header("traceparent");
    let credentials =
        req.headers().contains_key("authorization") || req.headers().contains_key("x-api-key");
    let with_usage = req.headers().contains_key(USAGE_HEADER);
    let content_length = text_header("content-length");
    let transfer_encoding = text_header("transfer-encoding");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        // An aborted request (the client or a proxy gave up mid-body) is
        // not answered and not counted.
        Err(_) => return Ok(Response::new(full(String::new()))),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let asked = parsed
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_owned);
    let builder = Response::builder().header("x-upstream", name.as_str());
    let resp = if let Some(status) = failures.next() {
        let answer = serde_json::json!({ "upstream": name, "error": "failing on purpose" });
        builder
            .status(status)
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
    } else if let Some(text) = sse {
        let include_usage = parsed
            .as_ref()
            .is_some_and(|v| v["stream_options"]["include_usage"] == true);
        let shape = SseShape {
            chunk: sse_chunk,
            split: sse_split,
            include_usage,
            gap: Duration::from_millis(sse_gap),
            model: asked.unwrap_or_else(|| "m".to_owned()),
        };
        builder
            .header("content-type", "text/event-stream")
            .body(sse_body(
                &text,
                shape,
                StreamEnd(Some(Arc::clone(&failures))),
            ))
    } else if let Some(text) = reply {
        let model = asked.unwrap_or_else(|| name.clone());
        let mut answer = serde_json::json!({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        });
        if with_usage {
            answer["usage"] = usage(text.chars().count());
        }
        let answer = answer.to_string();
        builder
            .header("content-type", "application/json")
            .body(full(answer))
    } else {
        let mut answer = serde_json::json!({
            "upstream": name,
            "method": method,
            "version": version,
            "path": path,
            "request_id": request_id,
            "body_bytes": body.len(),
            "tenant": tenant,
            "credentials": credentials,
            "traceparent": traceparent,
        });
        if echo {
            answer["headers"] = headers.into();
            answer["body"] = String::from_utf8_lossy(&body).into_owned().into();
            answer["content_length"] = content_length.into();
            answer["transfer_encoding"] = transfer_encoding.into();
        }
        builder
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
    };
    Ok(resp.unwrap_or_else(|_| Response::new(full(String::new()))))
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

/// The `usage` of an answer of `completion` tokens (one per character)
/// to a one-token prompt.
fn usage(completion: usize) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": 1, "completion_tokens": completion, "total_tokens": completion + 1,
    })
}

/// `text` as chat-completion chunk events of `chunk` characters, each its
/// own write, then (when asked for) a usage-only chunk, then `data: [DONE]`.
/// Counts a stream as finished or, when dropped first, cancelled.
struct StreamEnd(Option<Arc<Failures>>);

impl StreamEnd {
    fn finished(&mut self) {
        if let Some(f) = self.0.take() {
            f.streams_finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.streams_cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a streamed answer is written.
struct SseShape {
    /// Characters per delta.
    chunk: usize,
    /// Bytes per write, when events are cut.
    split: Option<usize>,
    /// A usage-only chunk before `[DONE]`.
    include_usage: bool,
    /// Pause before each write.
    gap: Duration,
    /// The `model` each chunk names.
    model: String,
}

fn sse_body(text: &str, shape: SseShape, end: StreamEnd) -> Body {
    let SseShape {
        chunk,
        split,
        include_usage,
        gap,
        model,
    } = shape;
    let chars: Vec<char> = text.chars().collect();
    let mut events: Vec<Bytes> = chars
        .chunks(chunk)
        .map(|piece| {
            let content: String = piece.iter().collect();
            let data = serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
            });
            Bytes::from(format!("data: {data}\n\n"))
        })
        .collect();
    if include_usage {
        let data = serde_json::json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": usage(chars.len()),
        });
        events.push(Bytes::from(format!("data: {data}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    if let Some(size) = split.filter(|&s| s > 0) {
        events = events
            .iter()
            .flat_map(|e| {
                e.chunks(size)
                    .map(Bytes::copy_from_slice)
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    let last = events.len();
    let end = Arc::new(std::sync::Mutex::new(end));
    let frames = futures::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| {
        let end = Arc::clone(&end);
        async move {
            // A pause between writes so each arrives as its own chunk.
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if i + 1 == last
                && let Ok(mut end) = end.lock()
            {
                end.finished();
            }
            Ok::<_, Infallible>(hyper::body::Frame::data(event))
        }
    });
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}
