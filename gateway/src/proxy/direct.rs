//! The direct HTTP/1.x path: requests served by the gateway's own loop
//! over a connection, under the same request logic as the Pingora hooks
//! (admission, routing, peer choice and retries, upstream headers, answer
//! filters, the end-of-request record), without Pingora's per-request
//! sessions, tasks and timers.
//!
//! It takes the common case, requests with no body or a `Content-Length`
//! body of at most [`MAX_BODY`], and hands everything else to Pingora, on
//! the same connection, at a request boundary: a chunked or larger body,
//! an upgrade, `Expect`, a gRPC call, a head httparse does not accept as
//! it is, or a runtime with a pool that is not HTTP/1. Pingora then serves
//! the rest of that connection.
//!
//! A body is read after admission (a refused request costs no body read),
//! whole, once, and kept: the route's request filters see it whole and a
//! retry sends it again.

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::Peer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use weir_conf::model::Protocol;

use super::ctx::GatewayCtx;
use super::head::{AnswerHead, RawAnswer};
use super::plain::{self, Conn, Target};
use super::respond::Answer;
use super::{body, observe, request, respond, upstream};
use crate::client::{Client, Downstream};
use crate::errors::GatewayError;
use crate::request_head::{RawRequest, RequestHead, same_name};
use crate::runtime::UPSTREAM_IDLE;
use crate::state::Shared;

/// Most header fields in one head (Pingora's bound too).
const MAX_HEADERS: usize = 256;
/// Largest head read before the request is left to Pingora (which refuses
/// it with its own error).
const MAX_HEAD: usize = 64 * 1024;
/// How much an upstream body read asks for at once.
const BODY_READ: usize = 16 * 1024;
/// Largest request body (by its `Content-Length`) the direct path takes;
/// Pingora streams larger ones.
const MAX_BODY: usize = 1024 * 1024;

/// The direct path of one listener: the gateway's state and a pool of
/// upstream connections.
pub struct Direct {
    shared: Arc<Shared>,
    connector: TransportConnector,
    /// `weir_http1_direct_total{outcome="served"}`.
    served: prometheus::IntCounter,
    /// `weir_http1_direct_total{outcome="handed_over"}`.
    handed_over: prometheus::IntCounter,
}

/// What became of a connection.
pub enum Served {
    /// Closed (by either side, or after an answer that ends it).
    Closed,
    /// A request the direct path does not take: the connection and the
    /// bytes already read of that request, for Pingora.
    HandOver(Stream, BytesMut),
}

impl Direct {
    /// The direct path over `shared`, with its own upstream connection pool.
    pub fn new(shared: Arc<Shared>) -> Self {
        let counter = |outcome: &str| shared.metrics.http1_direct.with_label_values(&[outcome]);
        Self {
            served: counter("served"),
            handed_over: counter("handed_over"),
            connector: TransportConnector::new(None),
            shared,
        }
    }

    /// Serves the connection's requests until it closes or one must go to
    /// Pingora (counted). `idle`: how long to wait for a request's first
    /// byte; `header`: for the rest of its head once begun.
    pub async fn serve(
        &self,
        stream: Stream,
        idle: Duration,
        header: Duration,
        closing: impl Fn() -> bool,
    ) -> Served {
        let served = self.serve_requests(stream, idle, header, closing).await;
        if let Served::HandOver(..) = served {
            self.handed_over.inc();
        }
        served
    }

    async fn serve_requests(
        &self,
        stream: Stream,
        idle: Duration,
        header: Duration,
        closing: impl Fn() -> bool,
    ) -> Served {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let tls = stream.get_ssl_digest().is_some();
        let mut stream = ClientConn(stream);
        // `read_head` allocates it only for a head that does not come
        // alone in one read.
        let mut buf = BytesMut::new();
        let mut clocks = Clocks::default();
        loop {
            let waited = read_head(&mut stream, &mut buf, &mut clocks.client, idle, header);
            let head = match waited.await {
                Ok(Some(head)) => head,
                Ok(None) => return Served::Closed,
                Err(()) => return Served::HandOver(stream.0, buf),
            };
            // What Pingora is handed with the connection: the bytes read.
            let unread = |head: Head, buf: BytesMut| match head {
                Head::Alone(bytes) => BytesMut::from(&bytes[..]),
                Head::InBuf(_) => buf,
            };
            let Some(mut parsed) = parse_request(head.bytes(&buf)) else {
                return Served::HandOver(stream.0, unread(head, buf));
            };
            let runtime_ok = self
                .shared
                .current()
                .is_some_and(|r| r.pools.iter().all(|p| p.config.protocol == Protocol::Http1));
            if !runtime_ok {
                return Served::HandOver(stream.0, unread(head, buf));
            }
            let head_bytes = match head {
                Head::Alone(bytes) => bytes,
                Head::InBuf(end) => buf.split_to(end).freeze(),
            };
            let Some(req) = build_request(&head_bytes, &mut parsed) else {
                // Not a head Pingora would take either: it answers the
                // error its own way.
                let mut all = BytesMut::from(&head_bytes[..]);
                all.extend_from_slice(&buf);
                return Served::HandOver(stream.0, all);
            };
            let keep = parsed.keep_alive && !closing();
            let mut client = DirectClient {
                stream: &mut stream,
                pending: &mut buf,
                clocks: &mut clocks,
                read_wait: header,
                req,
                peer,
                tls,
                body_len: parsed.body_len,
                hop_by_hop: parsed.hop_by_hop,
                body: None,
                answered: None,
                sent: 0,
            };
            self.served.inc();
            // Boxed: the request's state is held while it runs, not by an
            // idle keep-alive connection between requests.
            let reusable = Box::pin(self.request(&mut client, keep)).await;
            if !(keep && reusable) {
                let _ = stream.shutdown().await;
                return Served::Closed;
            }
        }
    }

    /// One request, from admission to the end-of-request record; whether
    /// the client connection may serve another.
    async fn request(&self, client: &mut DirectClient<'_>, keep: bool) -> bool {
        let shared = &self.shared;
        let mut ctx = GatewayCtx::new();
        let (reusable, e) = match request::admit(shared, client, &mut ctx).await {
            Ok(None) => match self.proxy(client, &mut ctx, keep).await {
                Ok(reusable) => (reusable, None),
                Err(e) => {
                    self.failed(client, &mut ctx, &e).await;
                    (false, Some(e))
                }
            },
            Ok(Some(body)) => {
                // A body the answer did not need is still on the wire: the
                // connection ends with this answer.
                let keep = keep && client.body_read();
                let answer = respond::json_answer(&ctx, 200, body);
                (write_answer(client, answer, keep).await, None)
            }
            Err(err) => {
                let answer = respond::error_answer(&ctx, &err, true);
                ctx.error = Some(err);
                // An error answer closes the connection (as Pingora's).
                write_answer(client, answer, false).await;
                (false, None)
            }
        };
        if let Some(e) = &e {
            // As the Pingora hooks log it (`suppress_error_log`).
            if matches!(ctx.error, Some(GatewayError::ClientClosed(_))) {
                tracing::info!(request_id = ctx.id_str(), error = %e, "the client closed the connection");
            } else {
                tracing::error!(request_id = ctx.id_str(), error = %e, "failed to proxy the request");
            }
        }
        upstream::settle_at_end(&mut ctx, e.as_deref());
        observe::finish(shared, &*client, e.as_deref(), &mut ctx);
        reusable
    }

    /// After a failed proxy attempt: the recorded gateway error, else one
    /// made from the failure, unless an answer has begun or the client is
    /// gone (as the Pingora hook `fail_to_proxy`).
    async fn failed(&self, client: &mut DirectClient<'_>, ctx: &mut GatewayCtx, e: &Error) {
        let err = ctx
            .error
            .take()
            .unwrap_or_else(|| GatewayError::from_proxy_error(e));
        let gone = matches!(err, GatewayError::ClientClosed(_));
        if !gone && client.answered.is_none() {
            let answer = respond::error_answer(ctx, &err, true);
            write_answer(client, answer, false).await;
        }
        ctx.error = Some(err);
    }

    /// Proxies the admitted request: peer, body, connection, upstream
    /// request, answer; retried as the route and Pingora's policy say.
    /// Whether the client connection stays usable.
    async fn proxy(
        &self,
        client: &mut DirectClient<'_>,
        ctx: &mut GatewayCtx,
        keep: bool,
    ) -> Result<bool> {
        let shared = &self.shared;
        let raw = client.body().await?;
        loop {
            let peer = upstream::choose_target(shared, ctx).map_err(|e| respond::refuse(ctx, e))?;
            // The route's filters (or usage, or a rename) take the body
            // whole, again for each attempt: a fallback arm may rename it
            // otherwise. The result's length is known before the head goes,
            // so it is sent with a `Content-Length`.
            body::new_attempt(ctx);
            let mut body = (!raw.is_empty()).then(|| raw.clone());
            body::request_body(ctx, &mut body, true).map_err(|e| respond::refuse(ctx, e))?;
            let body = body.unwrap_or_default();
            let (mut conn, reused) = match self.connect(&peer, ctx.start).await {
                Ok(got) => got,
                Err(e) => {
                    let e = upstream::connect_failed(shared, ctx, &peer, e);
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            // The upstream head is the client's, its connection's own
            // fields left out and the gateway's edits written in (no copy
            // of the request's header map).
            let mut edits = super::upstream_edits(shared, &*client, ctx)?;
            if ctx.body.buffered {
                let length = super::fields::FieldValue::number(body.len() as u64);
                edits.set_value(&header::CONTENT_LENGTH, length);
            }
            let upstream_req = UpstreamRequest {
                req: &client.req,
                edits: &edits,
                hop_by_hop: client.hop_by_hop,
                body: &body,
            };
            let clock = &mut client.clocks.upstream;
            let sent = exchange(&mut conn, &peer, upstream_req, clock);
            let exchange = watching(client.stream, client.pending, sent).await?;
            let Answered {
                mut resp,
                framing,
                upstream_keeps,
                rest: mut ubuf,
            } = match exchange {
                Ok(got) => got,
                Err(e) => {
                    let e = upstream::proxy_failed(&peer, &*client, e, ctx, reused);
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            observe::grpc_status_in_head(ctx, &resp);
            if let Err(e) = upstream::answered(shared, &*client, &resp, ctx) {
                let e = upstream::proxy_failed(&peer, &*client, e, ctx, reused);
                if e.retry() {
                    continue;
                }
                return Err(e);
            }
            body::response_header(ctx, &mut resp, true)?;
            respond::decorate(&mut resp, ctx)?;
            let framing = if *client.req.method() == http::Method::HEAD {
                Framing::Empty
            } else {
                framing
            };
            let http11 = client.req.version() == http::Version::HTTP_11;
            let (chunked, keep) = client_framing(&mut resp, framing, http11, keep)?;
            let mut out = Vec::with_capacity(512);
            resp.write_h1(&mut out);
            client.answered = Some(resp.status().as_u16());
            let read_timeout = peer.read_timeout();
            let mut writer = BodyWriter {
                stream: client.stream,
                out,
                chunked: chunked && !matches!(framing, Framing::Empty),
                sent: 0,
            };
            let upstream = Upstream {
                conn: &mut conn,
                buf: &mut ubuf,
                read_timeout,
                clock: &mut client.clocks.upstream,
            };
            let whole = relay_body(upstream, framing, ctx, &mut writer, client.pending).await;
            client.sent += writer.sent;
            let upstream_done = whole?;
            if upstream_done && upstream_keeps {
                match conn {
                    Conn::Plain(conn, addr) => {
                        let since = ctx.upstream.header_at.unwrap_or(ctx.start);
                        plain::keep(addr, conn, since);
                    }
                    Conn::Layered(conn) => {
                        // (Only a layered target makes a layered connection.)
                        if let Target::Layered(peer) = &peer {
                            self.connector.release_stream(
                                conn,
                                peer.reuse_hash(),
                                peer.idle_timeout(),
                            );
                        }
                    }
                }
            }
            return Ok(keep);
        }
    }

    /// A connection to `peer` and whether it was reused: a plain one of
    /// this thread's ([`plain`]; `now` to judge idle ones by), else
    /// Pingora's.
    async fn connect(&self, peer: &Target, now: std::time::Instant) -> Result<(Conn, bool)> {
        match peer {
            Target::Plain { addr, timeouts } => {
                if let Some(conn) = plain::reuse(*addr, now, Some(UPSTREAM_IDLE)) {
                    return Ok((Conn::Plain(conn, *addr), true));
                }
                let conn = plain::connect(*addr, Some(timeouts.connect)).await?;
                Ok((Conn::Plain(conn, *addr), false))
            }
            Target::Layered(peer) => {
                let (conn, reused) = self.connector.get_stream(&**peer).await?;
                Ok((Conn::Layered(conn), reused))
            }
        }
    }
}

/// How the answer goes to the client, its fields set to match: whether
/// its body is chunk-framed here, and whether the client connection is
/// kept after it. An answer with neither a length nor a chunked coding
/// (read until the upstream closes) is chunk-framed for an HTTP/1.1
/// client; HTTP/1.0 has no chunked coding (RFC 9112 §6.1), so such an
/// answer, or a chunked one, ends with the connection there.
fn client_framing(
    resp: &mut impl AnswerHead,
    framing: Framing,
    http11: bool,
    mut keep: bool,
) -> Result<(bool, bool)> {
    // The only transfer coding left on the answer is `chunked`: the
    // upstream's are removed with the hop-by-hop fields, and only that one
    // is set again (by `parse_response` or the answer filters).
    let mut chunked = resp.has("transfer-encoding");
    let delimited = chunked || matches!(framing, Framing::Empty) || resp.has("content-length");
    let value = http::HeaderValue::from_static;
    if http11 && !delimited {
        resp.set(&header::TRANSFER_ENCODING, value("chunked"))?;
        chunked = true;
    } else if !http11 && (chunked || !delimited) {
        resp.remove(&header::TRANSFER_ENCODING);
        (chunked, keep) = (false, false);
    }
    if !keep {
        resp.set(&header::CONNECTION, value("close"))?;
    } else if !http11 {
        resp.set(&header::CONNECTION, value("keep-alive"))?;
    }
    Ok((chunked, keep))
}

/// The client's connection as the direct path reads and writes it: its
/// TCP socket itself while Pingora's stream holds nothing of its own
/// (Pingora patch 20: no bytes read ahead or rewound, no write buffered),
/// else Pingora's stream (TLS, a Unix socket, bytes it holds). Handed back
/// whole to Pingora with a connection the direct path does not serve.
struct ClientConn(Stream);

impl ClientConn {
    fn socket(&mut self) -> Option<&mut tokio::net::TcpStream> {
        self.0
            .as_any_mut()
            .downcast_mut::<pingora_core::protocols::l4::stream::Stream>()?
            .tcp_mut()
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(socket) = this.socket() {
            return Pin::new(socket).poll_read(cx, buf);
        }
        Pin::new(&mut this.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ClientConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(socket) = this.socket() {
            return Pin::new(socket).poll_write(cx, buf);
        }
        Pin::new(&mut this.0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.socket().is_some() {
            // Nothing buffered: a socket's flush does nothing.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Awaits `work` (the upstream's part) while watching the client: a
/// client that closes or fails before it ends stops the request (as
/// Pingora's `abort_on_close`: counted as 499); bytes it sends meanwhile
/// (its next request, pipelined) are kept in `pending`, and end the watch,
/// which does not begin while `pending` holds any (it is not to grow
/// without bound). The watch costs no system call while the client is
/// quiet (its socket was read short, so Tokio knows it is not readable).
async fn watching<T>(
    stream: &mut ClientConn,
    pending: &mut BytesMut,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    let mut work = std::pin::pin!(work);
    let mut watch = pending.is_empty();
    // The watch reads onto its own stack: a client that stays quiet (the
    // common case) has no buffer made for it. What does not fit stays in
    // the socket for the next head's read.
    let mut early = [0u8; 256];
    loop {
        let read = std::future::poll_fn(|cx| {
            let mut into = tokio::io::ReadBuf::new(&mut early);
            Pin::new(&mut *stream)
                .poll_read(cx, &mut into)
                .map_ok(|()| into.filled().len())
        });
        let read = tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            read = read, if watch => read,
        };
        match read {
            Ok(0) => {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "Prematurely before response header is sent",
                )
                .map_err(|e: Box<Error>| e.into_down());
            }
            Err(e) => {
                return Err(
                    Error::because(ErrorType::ReadError, "reading from the client", e).into_down(),
                );
            }
            // The next request, early: kept; no more watching.
            Ok(n) => {
                pending.extend_from_slice(&early[..n]);
                watch = false;
            }
        }
    }
}

/// How an answer's body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A request head as httparse saw it, when the direct path takes it.
#[derive(Clone)]
struct Parsed {
    method: std::ops::Range<usize>,
    target: std::ops::Range<usize>,
    http11: bool,
    keep_alive: bool,
    /// The body's `Content-Length` (0 without one).
    body_len: usize,
    /// A field is the connection's own (hop-by-hop, or `Connection`).
    hop_by_hop: bool,
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

/// A request's head, as [`read_head`] read it.
enum Head {
    /// A read between requests brought this head and nothing more (a
    /// request without a body, not pipelined: the common case): its
    /// bytes, copied once from the read, and the buffer left empty.
    Alone(Bytes),
    /// The head is the first bytes of the buffer, this many.
    InBuf(usize),
}

impl Head {
    /// The head's bytes.
    fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Head::Alone(bytes) => bytes,
            Head::InBuf(end) => &buf[..*end],
        }
    }
}

/// Reads until a whole head is there ([`Head`]). `Ok(None)`: the
/// connection is to be closed: the client closed or stayed silent between
/// two requests (`idle`), or its head did not arrive whole within `header`
/// of its first byte (as Pingora patch 2 bounds it). `Err`: anything else
/// (a head too large, a read error, a close within a head), left to
/// Pingora.
async fn read_head(
    stream: &mut ClientConn,
    buf: &mut BytesMut,
    clock: &mut Clock,
    idle: Duration,
    header: Duration,
) -> std::result::Result<Option<Head>, ()> {
    if buf.is_empty() {
        // Between requests the connection holds no buffer: the first bytes
        // are read onto the wait's own stack, then kept.
        *buf = BytesMut::new();
        // Not cleared first: the read fills what it reports.
        let mut first = [MaybeUninit::<u8>::uninit(); 2048];
        let mut first = tokio::io::ReadBuf::uninit(&mut first);
        let read = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut first));
        let idle_until = || later(Instant::now(), idle);
        match clock.until(idle_until, read).await {
            None => return Ok(None),
            Some(Err(_)) => return Err(()),
            Some(Ok(())) if first.filled().is_empty() => return Ok(None),
            Some(Ok(())) => {
                let read = first.filled();
                if head_end(read) == Some(read.len()) {
                    // No growable buffer for it, and none split.
                    return Ok(Some(Head::Alone(Bytes::copy_from_slice(read))));
                }
                buf.reserve(2048);
                buf.extend_from_slice(read);
            }
        }
    }
    // The head has begun (now, or with bytes already read): the rest of it
    // is due within `header`, from the first read that waits (a head that
    // came whole reads no clock).
    let mut due = None;
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(Some(Head::InBuf(end)));
        }
        if buf.len() > MAX_HEAD {
            return Err(());
        }
        room_to_read(buf, 4096);
        let due = || *due.get_or_insert_with(|| later(Instant::now(), header));
        match clock.until(due, stream.read_buf(buf)).await {
            None => return Ok(None),
            Some(Ok(0)) | Some(Err(_)) => return Err(()),
            Some(Ok(_)) => {}
        }
    }
}

/// Room for the next read into `buf`: `more` bytes, when less than 1 KiB
/// is free.
fn room_to_read(buf: &mut BytesMut, more: usize) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(more);
    }
}

/// The end of the head in `buf` (after its blank line), if it is there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i;
        match buf.get(at + 1..) {
            Some([b'\n', ..]) => return Some(at + 2),
            Some([b'\r', b'\n', ..]) => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// The length of the CRLF-ended line at the start of `buf` (with its
/// CRLF), if it is all there.
fn line_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf).map(|i| i + 1)
}

/// Where `piece`, a slice httparse returned of `whole`, lies in it.
fn span(whole: &[u8], piece: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (piece.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(piece.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// Parses a request head the direct path takes: HTTP/1.0 or 1.1, no body
/// or one `Content-Length` of at most [`MAX_BODY`], no upgrade or
/// `Expect`, not gRPC, not `CONNECT`.
fn parse_request(head: &[u8]) -> Option<Parsed> {
    // Left uninitialised: httparse fills what it uses (no 8 KiB cleared
    // per request).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let at = |piece: &[u8]| span(head, piece);
    let method = req.method?;
    if method.eq_ignore_ascii_case("CONNECT") {
        return None;
    }
    let http11 = req.version? == 1;
    let mut keep_alive = http11;
    let mut body_len = None;
    let mut hop = false;
    let mut spans = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let is = |n: &str| same_name(name, n.as_bytes());
        if is("transfer-encoding") || is("upgrade") || is("expect") {
            return None;
        }
        hop |= is_hop_by_hop(name);
        if is("content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|n| *n <= MAX_BODY)?;
            // Two lengths, even equal ones, are Pingora's to judge.
            if body_len.replace(n).is_some() {
                return None;
            }
        }
        if is("content-type")
            && value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
        {
            return None;
        }
        if is("connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if same_name(token, b"close") {
                    keep_alive = false;
                } else if same_name(token, b"keep-alive") {
                    keep_alive = true;
                } else if same_name(token, b"upgrade") {
                    return None;
                }
            }
        }
        spans.push((at(name)?, at(value)?));
    }
    Some(Parsed {
        method: at(method.as_bytes())?,
        target: at(req.path?.as_bytes())?,
        http11,
        keep_alive,
        body_len: body_len.unwrap_or(0),
        hop_by_hop: hop,
        fields: spans,
    })
}

/// The request as the hooks see it: the head's bytes and the spans of its
/// fields ([`RawRequest`]); `None` for what Pingora would refuse.
///
/// The usual target, origin-form ASCII with no fragment, becomes the URI
/// over the head's own bytes, and its authority check is the part of
/// Pingora's that applies to it (one `Host` at most, without userinfo: an
/// origin-form target carries no authority to reconcile); any other
/// target goes through Pingora's own parse and check.
fn build_request(head: &Bytes, parsed: &mut Parsed) -> Option<RawRequest> {
    let method = http::Method::from_bytes(&head[parsed.method.clone()]).ok()?;
    let version = if parsed.http11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    let field = |span: &std::ops::Range<usize>| head.get(span.clone());
    let mut hosts = parsed
        .fields
        .iter()
        .filter(|(name, _)| field(name).is_some_and(|n| same_name(n, b"host")));
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some()
        || host
            .and_then(|(_, v)| field(v))
            .is_some_and(|v| v.contains(&b'@'))
    {
        return None;
    }
    let target = &head[parsed.target.clone()];
    let origin = target.first() == Some(&b'/') && target.is_ascii() && !target.contains(&b'#');
    let shared = head.slice(parsed.target.clone());
    let path = origin
        .then(|| http::uri::PathAndQuery::from_maybe_shared(shared.clone()).ok())
        .flatten();
    let (uri, wire_target) = match path {
        Some(path) => (http::Uri::from(path), shared),
        None => {
            let req = pingora_checked(head, parsed, &method)?;
            let wire = Bytes::copy_from_slice(req.raw_path());
            (http::request::Parts::from(req).uri, wire)
        }
    };
    Some(RawRequest::new(
        head.clone(),
        method,
        version,
        uri,
        wire_target,
        std::mem::take(&mut parsed.fields),
    ))
}

/// The request as Pingora parses and checks a target that is not the
/// usual one (absolute-form, `*`, a fragment, bytes beyond ASCII).
fn pingora_checked(head: &Bytes, parsed: &Parsed, method: &http::Method) -> Option<RequestHeader> {
    let mut req = RequestHeader::build_no_case(
        method.clone(),
        &head[parsed.target.clone()],
        Some(parsed.fields.len()),
    )
    .ok()?;
    for (name, value) in &parsed.fields {
        let name = http::HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = http::HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        req.append_header(name, value).ok()?;
    }
    pingora_core::protocols::http::authority::validate_request_authority(&req).ok()?;
    Some(req)
}

/// Writes the request's field lines as they go upstream: the client's as
/// sent, less its connection's own when it has any (`hop_by_hop`) and
/// those the edits decide, then the fields the edits set.
fn write_upstream_fields(
    req: &RawRequest,
    edits: &super::fields::FieldEdits,
    hop_by_hop: bool,
    out: &mut Vec<u8>,
) {
    let (head, spans) = (req.head(), req.spans());
    if !hop_by_hop {
        return edits.write_h1(head, spans, |_| true, out);
    }
    let named = connection_named(req);
    let keep =
        |name: &[u8]| !is_hop_by_hop(name) && !named.iter().any(|n| n.eq_ignore_ascii_case(name));
    edits.write_h1(head, spans, keep, out);
}

/// The field names the request's `Connection` fields list: with the
/// `Connection` field itself and the fixed list ([`is_hop_by_hop`]), its
/// connection's own fields (RFC 9110 §7.6.1), not sent upstream.
fn connection_named(req: &RawRequest) -> Vec<&[u8]> {
    req.fields()
        .filter(|(name, _)| same_name(name, b"connection"))
        .flat_map(|(_, value)| value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
        .collect()
}

/// What the upstream answered: the answer's head (hop-by-hop fields
/// removed), its framing, whether the upstream keeps the connection, and
/// the bytes read past the head.
struct Answered {
    resp: RawAnswer,
    framing: Framing,
    upstream_keeps: bool,
    rest: BytesMut,
}

/// The request as it goes upstream: the client's, less the fields of its
/// connection (`skip`), with the gateway's edits, and the body to send.
struct UpstreamRequest<'a> {
    req: &'a RawRequest,
    edits: &'a super::fields::FieldEdits,
    /// Whether the request has fields of its connection's own.
    hop_by_hop: bool,
    body: &'a [u8],
}

/// Writes the request (its head, then its body) to the upstream and reads
/// the answer's head.
async fn exchange(
    conn: &mut Conn,
    peer: &Target,
    up: UpstreamRequest<'_>,
    clock: &mut Clock,
) -> Result<Answered> {
    let req = up.req;
    let mut out = Vec::with_capacity(512 + up.body.len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.wire_target());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_upstream_fields(req, up.edits, up.hop_by_hop, &mut out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(up.body);
    let write = async {
        conn.write_all(&out).await?;
        conn.flush().await
    };
    with_timeout(clock, peer.write_timeout(), write, ErrorType::WriteTimedout)
        .await
        .map_err(|e| e.into_up())?;
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        loop {
            room_to_read(&mut buf, 4096);
            if conn.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the upstream closed before answering",
                ));
            }
            if let Some(end) = head_end(&buf) {
                // Interim answers (1xx other than 101) are dropped.
                if buf.starts_with(b"HTTP/1.1 1") || buf.starts_with(b"HTTP/1.0 1") {
                    let _ = buf.split_to(end);
                    continue;
                }
                return Ok(end);
            }
            if buf.len() > MAX_HEAD {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the upstream's answer header is too large",
                ));
            }
        }
    };
    let end = with_timeout(clock, peer.read_timeout(), read, ErrorType::ReadTimedout)
        .await
        .map_err(|e| e.into_up())?;
    let head = buf.split_to(end).freeze();
    let (resp, framing, upstream_keeps) =
        parse_response(&head, req.method()).map_err(|e| e.into_up())?;
    Ok(Answered {
        resp,
        framing,
        upstream_keeps,
        rest: buf,
    })
}

/// The timers of one client connection: one for its waits on the client,
/// one for its waits on upstreams.
#[derive(Default)]
struct Clocks {
    client: Clock,
    upstream: Clock,
}

/// A connection's timer for one kind of wait, kept across its requests.
/// Most reads and writes complete at once under load, and a wait that does
/// not would otherwise register a timer of its own and remove it again: this
/// one is armed once and moved only when a wait must end earlier than it
/// is set for. Set later than a wait's end, it fires early at most once per
/// timeout period, and is moved on.
#[derive(Default)]
struct Clock {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Clock {
    /// `step`, or `None` when the time `due` gives comes first (`due` is
    /// asked only if `step` waits: most do not, and a clock reading is
    /// among the dearer things a request does).
    async fn until<F: Future>(
        &mut self,
        due: impl FnOnce() -> Instant,
        step: F,
    ) -> Option<F::Output> {
        let mut step = std::pin::pin!(step);
        let first = std::future::poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = first {
            return Some(out);
        }
        let due = due();
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if due < sleep.deadline() {
                    sleep.as_mut().reset(due);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        // `step` has just been polled, in this same task: its waker is set,
        // and it is not polled again before something wakes the task (a
        // second poll at once would find it waiting still, at the cost of
        // its I/O readiness check).
        let mut step_polled = true;
        std::future::poll_fn(|cx| {
            if !std::mem::take(&mut step_polled)
                && let Poll::Ready(out) = step.as_mut().poll(cx)
            {
                return Poll::Ready(Some(out));
            }
            while sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() >= due {
                    return Poll::Ready(None);
                }
                sleep.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }
}

/// `wait` after `at`; a wait too long to add is as good as forever (a
/// year).
fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// An I/O step under an optional timeout, as Pingora's errors.
async fn with_timeout<T>(
    clock: &mut Clock,
    limit: Option<Duration>,
    step: impl std::future::Future<Output = std::io::Result<T>>,
    timed_out: ErrorType,
) -> Result<T> {
    let io_error = |e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ErrorType::ConnectionClosed,
            std::io::ErrorKind::InvalidData => ErrorType::InvalidHTTPHeader,
            _ if timed_out == ErrorType::WriteTimedout => ErrorType::WriteError,
            _ => ErrorType::ReadError,
        };
        Error::because(kind, "upstream I/O", e)
    };
    match limit {
        Some(limit) => match clock.until(|| later(Instant::now(), limit), step).await {
            Some(r) => r.map_err(io_error),
            None => Error::e_explain(timed_out, format!("timeout: {limit:?}")),
        },
        None => step.await.map_err(io_error),
    }
}

/// The answer's head, its hop-by-hop fields left out, how its body is
/// delimited, and whether the upstream keeps the connection open after it
/// (no `Connection: close`). Field names and values are as httparse
/// checked them (the same characters `http`'s types accept).
fn parse_response(head: &Bytes, method: &http::Method) -> Result<(RawAnswer, Framing, bool)> {
    let invalid = |why: &str| Error::explain(ErrorType::InvalidHTTPHeader, why.to_owned());
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    match config.parse_response_with_uninit_headers(&mut parsed, head, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("invalid upstream answer header")),
    }
    let code = parsed.code.ok_or_else(|| invalid("no status"))?;
    let status = http::StatusCode::from_u16(code).map_err(|_| invalid("invalid status"))?;
    let at = |piece: &[u8]| span(head, piece).ok_or_else(|| invalid("upstream header"));
    let reason = parsed.reason.map(|r| at(r.as_bytes())).transpose()?;
    // One pass over the fields, with the connection's own (hop-by-hop)
    // ones left out as they come: the fixed list and those `Connection`
    // names (RFC 9110 §7.6.1), noted first.
    let mut named: Vec<&[u8]> = Vec::new();
    let mut upstream_closes = false;
    for h in parsed.headers.iter() {
        if same_name(h.name.as_bytes(), b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if same_name(token, b"close") {
                    upstream_closes = true;
                } else if !token.is_empty() && !is_hop_by_hop(token) {
                    // (`keep-alive` names a field left out anyway.)
                    named.push(token);
                }
            }
        }
    }
    // Whether the final transfer coding is chunked, when there is one.
    let mut chunked = None;
    let mut length: Option<&[u8]> = None;
    let mut lengths_differ = false;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            if same_name(name, b"transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = Some(same_name(last.trim_ascii(), b"chunked"));
            }
            continue;
        }
        if same_name(name, b"content-length") {
            match length {
                Some(first) => lengths_differ |= first != h.value,
                None => length = Some(h.value),
            }
        }
        spans.push((at(name)?, at(h.value)?));
    }
    let mut resp = RawAnswer::new(head.clone(), status, reason, spans);
    let framing = if *method == http::Method::HEAD
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        if length.is_some() {
            resp.remove(&header::CONTENT_LENGTH);
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(first) = length {
        if lengths_differ {
            return Err(invalid("conflicting Content-Length"));
        }
        let n = std::str::from_utf8(first)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| invalid("invalid Content-Length"))?;
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if chunked == Some(true) {
        // Kept as the client's framing unless the filters change it.
        resp.set(
            &header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        )?;
    }
    Ok((resp, framing, !upstream_closes))
}

/// Whether `name` is one of the fixed hop-by-hop fields (RFC 9110 §7.6.1,
/// and the `Keep-Alive` and `Proxy-Connection` of older peers).
fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &str| same_name(name, n.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// Writes the status line and fields of `resp`.
fn write_response_head(resp: &ResponseHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        resp.get_reason_phrase()
            .or_else(|| resp.status.canonical_reason())
            .unwrap_or("")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    resp.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
}

/// The answer going to the client: the head first (written with the first
/// piece of body), then each piece, chunk-framed when `chunked`.
struct BodyWriter<'a> {
    stream: &'a mut ClientConn,
    out: Vec<u8>,
    chunked: bool,
    sent: usize,
}

impl BodyWriter<'_> {
    async fn piece(&mut self, data: &[u8], end: bool) -> Result<()> {
        if !data.is_empty() {
            if self.chunked {
                self.out
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            } else {
                self.out.extend_from_slice(data);
            }
            self.sent += data.len();
        }
        if end && self.chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        // Small pieces are gathered; each write flushes what is there.
        let down = |e: std::io::Error| {
            Error::because(ErrorType::WriteError, "writing to the client", e).into_down()
        };
        self.stream.write_all(&self.out).await.map_err(down)?;
        self.stream.flush().await.map_err(down)?;
        self.out.clear();
        Ok(())
    }
}

/// Reads the answer's body from the upstream, passes each piece through
/// the answer filters and writes it to the client. Whether the upstream
/// connection ended cleanly at the body's end (and may be pooled).
async fn relay_body(
    upstream: Upstream<'_>,
    framing: Framing,
    ctx: &mut GatewayCtx,
    writer: &mut BodyWriter<'_>,
    pending: &mut BytesMut,
) -> Result<bool> {
    let Upstream {
        conn,
        buf,
        read_timeout,
        clock,
    } = upstream;
    let mut decoder = match framing {
        Framing::Empty => {
            let mut none = None;
            body::response_body(ctx, &mut none, true)?;
            writer.piece(&[], true).await?;
            return Ok(buf.is_empty());
        }
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(ChunkState::Size),
        Framing::Close => Decoder::Close,
    };
    loop {
        let (data, end) = decoder.take(buf)?;
        if !data.is_empty() || end {
            let mut piece = (!data.is_empty()).then_some(data);
            body::response_body(ctx, &mut piece, end)?;
            writer
                .piece(piece.as_deref().unwrap_or_default(), end)
                .await?;
        }
        if end {
            return Ok(buf.is_empty() && !matches!(decoder, Decoder::Close));
        }
        room_to_read(buf, BODY_READ);
        // A client that leaves while the upstream is quiet (a long
        // stream) stops the request at once, not at the next write.
        let read = with_timeout(
            clock,
            read_timeout,
            conn.read_buf(buf),
            ErrorType::ReadTimedout,
        );
        let n = watching(writer.stream, pending, read)
            .await?
            .map_err(|e| e.into_up())?;
        if n == 0 {
            if let Decoder::Close = decoder {
                let mut none = None;
                body::response_body(ctx, &mut none, true)?;
                writer.piece(&[], true).await?;
                return Ok(false);
            }
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "the upstream closed within the body",
            )
            .map_err(|e: Box<Error>| e.into_up());
        }
    }
}

/// The upstream side of an answer being relayed: its connection, the bytes
/// read of it, and how long a read may wait.
struct Upstream<'a> {
    conn: &'a mut Conn,
    buf: &'a mut BytesMut,
    read_timeout: Option<Duration>,
    clock: &'a mut Clock,
}

/// Where a chunked body's decoding stands.
#[derive(Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// Decodes an answer body from the bytes read so far.
enum Decoder {
    Length(usize),
    Chunked(ChunkState),
    Close,
}

/// Longest chunk-size or trailer line accepted from an upstream.
const MAX_LINE: usize = 4096;

impl Decoder {
    /// What was decoded so far, waiting for the rest of a line; an error
    /// when the line is longer than any an upstream should send.
    fn waiting(buf: &BytesMut, out: BytesMut) -> Result<(Bytes, bool)> {
        if buf.len() > MAX_LINE {
            return Err(chunk_error());
        }
        Ok((out.freeze(), false))
    }

    /// The body bytes that `buf` holds now (taken from it) and whether the
    /// body ended.
    fn take(&mut self, buf: &mut BytesMut) -> Result<(Bytes, bool)> {
        match self {
            Decoder::Length(left) => {
                let n = (*left).min(buf.len());
                *left -= n;
                Ok((buf.split_to(n).freeze(), *left == 0))
            }
            Decoder::Close => Ok((buf.split().freeze(), false)),
            Decoder::Chunked(state) => {
                let mut out = BytesMut::new();
                loop {
                    match *state {
                        ChunkState::Size => {
                            let Some(line) = line_end(buf) else {
                                return Self::waiting(buf, out);
                            };
                            let size = match httparse::parse_chunk_size(&buf[..line]) {
                                Ok(httparse::Status::Complete((_, size))) => {
                                    usize::try_from(size).map_err(|_| chunk_error())?
                                }
                                _ => return Err(chunk_error()),
                            };
                            let _ = buf.split_to(line);
                            *state = if size == 0 {
                                ChunkState::Trailers
                            } else {
                                ChunkState::Data(size)
                            };
                        }
                        ChunkState::Data(left) => {
                            if buf.is_empty() {
                                return Ok((out.freeze(), false));
                            }
                            let n = left.min(buf.len());
                            out.extend_from_slice(&buf.split_to(n));
                            *state = if n == left {
                                ChunkState::DataEnd
                            } else {
                                ChunkState::Data(left - n)
                            };
                        }
                        ChunkState::DataEnd => {
                            if buf.len() < 2 {
                                return Ok((out.freeze(), false));
                            }
                            if &buf[..2] != b"\r\n" {
                                return Err(chunk_error());
                            }
                            let _ = buf.split_to(2);
                            *state = ChunkState::Size;
                        }
                        ChunkState::Trailers => {
                            let Some(line) = line_end(buf) else {
                                return Self::waiting(buf, out);
                            };
                            let _ = buf.split_to(line);
                            if line <= 2 {
                                return Ok((out.freeze(), true));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn chunk_error() -> Box<Error> {
    Error::explain(
        ErrorType::InvalidHTTPHeader,
        "invalid chunked body from the upstream",
    )
    .into_up()
}

/// Writes a gateway-made answer; whether the connection stays usable.
async fn write_answer(client: &mut DirectClient<'_>, answer: Result<Answer>, keep: bool) -> bool {
    let Ok(Answer::Full {
        header: mut resp,
        body,
        close,
    }) = answer
    else {
        return false;
    };
    let keep = keep && !close;
    if !keep && resp.insert_header(header::CONNECTION, "close").is_err() {
        return false;
    }
    let mut out = Vec::with_capacity(256 + body.len());
    write_response_head(&resp, &mut out);
    out.extend_from_slice(&body);
    client.answered = Some(resp.status.as_u16());
    let written = async {
        client.stream.write_all(&out).await?;
        client.stream.flush().await
    }
    .await;
    client.sent += body.len();
    written.is_ok() && keep
}

/// The client side of a request on the direct path: the connection,
/// the bytes read past the head, and the request.
struct DirectClient<'a> {
    stream: &'a mut ClientConn,
    pending: &'a mut BytesMut,
    clocks: &'a mut Clocks,
    /// How long one read of the body may wait (as Pingora's read timeout).
    read_wait: Duration,
    req: RawRequest,
    peer: Option<SocketAddr>,
    tls: bool,
    /// The body's `Content-Length`.
    body_len: usize,
    /// The request has fields of the connection's own, to leave out
    /// upstream.
    hop_by_hop: bool,
    /// The body, once read.
    body: Option<Bytes>,
    answered: Option<u16>,
    sent: usize,
}

impl DirectClient<'_> {
    /// Whether the request's body is off the wire (read, or none).
    fn body_read(&self) -> bool {
        self.body_len == 0 || self.body.is_some()
    }

    /// The whole body, read once (what came with the head first).
    async fn body(&mut self) -> Result<Bytes> {
        if let Some(body) = &self.body {
            return Ok(body.clone());
        }
        if self.body_len == 0 {
            // (Splitting no bytes off would still share the buffer.)
            return Ok(Bytes::new());
        }
        while self.pending.len() < self.body_len {
            let left = self.body_len - self.pending.len();
            room_to_read(self.pending, left.clamp(4096, BODY_READ));
            let wait = self.read_wait;
            let due = || later(Instant::now(), wait);
            let read = self
                .clocks
                .client
                .until(due, self.stream.read_buf(self.pending));
            let failed = match read.await {
                Some(Ok(0)) => Error::explain(
                    ErrorType::ConnectionClosed,
                    "the client closed within the request body",
                ),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Error::because(ErrorType::ReadError, "reading the request body", e),
                None => Error::explain(ErrorType::ReadTimedout, "reading the request body"),
            };
            return Err(failed.into_down());
        }
        let body = self.pending.split_to(self.body_len).freeze();
        self.body = Some(body.clone());
        Ok(body)
    }
}

impl Client for DirectClient<'_> {
    fn request(&self) -> &dyn RequestHead {
        &self.req
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn tls(&self) -> bool {
        self.tls
    }

    fn answered(&self) -> Option<u16> {
        self.answered
    }

    fn bytes_read(&self) -> usize {
        self.body.as_ref().map_or(0, Bytes::len)
    }

    fn bytes_sent(&self) -> usize {
        self.sent
    }

    fn replayable(&self) -> bool {
        // The body, if any, is held whole: what matters is the method.
        self.req.method().is_idempotent()
    }
}

impl Downstream for DirectClient<'_> {
    fn request_mut(&mut self) -> &mut dyn RequestHead {
        &mut self.req
    }

    async fn read_ahead(&mut self, limit: usize) -> Result<Bytes, GatewayError> {
        if self.body_len > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        self.body()
            .await
            .map_err(|e| GatewayError::from_proxy_error(&e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_with_crlf_or_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nhost: a\n\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn only_plain_requests_with_a_small_length_body_are_taken() {
        let taken = |head: &str| parse_request(head.as_bytes()).is_some();
        assert!(taken("GET /a HTTP/1.1\r\nhost: t\r\n\r\n"));
        assert!(taken("GET /a HTTP/1.0\r\n\r\n"));
        assert!(taken("DELETE /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n"));
        assert!(taken("POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\n"));
        let largest = format!("POST /a HTTP/1.1\r\ncontent-length: {MAX_BODY}\r\n\r\n");
        assert!(taken(&largest));
        let larger = format!(
            "POST /a HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(!taken(&larger));
        for refused in [
            "POST /a HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            "POST /a HTTP/1.1\r\ncontent-length: +5\r\n\r\n",
            "POST /a HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "POST /a HTTP/1.1\r\ncontent-type: application/grpc+proto\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nbad header\r\n\r\n",
            // Not the whole head (a pipelined rest is split off first).
            "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ] {
            assert!(!taken(refused), "{refused:?}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let keep = |head: &str| parse_request(head.as_bytes()).unwrap().keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nconnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        let len = |head: &str| parse_request(head.as_bytes()).unwrap().body_len;
        assert_eq!(len("GET / HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(len("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"), 12);
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn the_request_keeps_its_fields_and_refuses_a_bad_authority() {
        let head =
            Bytes::from_static(b"GET /p?q=1 HTTP/1.1\r\nHost: t\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
        let req = build_request(&head, &mut parse_request(&head).unwrap()).unwrap();
        assert_eq!(*req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/p");
        assert_eq!(req.fields().filter(|(n, _)| *n == b"x-a").count(), 2);
        assert_eq!(req.version(), http::Version::HTTP_11);
        let two_hosts = Bytes::from_static(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n");
        assert!(build_request(&two_hosts, &mut parse_request(&two_hosts).unwrap()).is_none());
    }

    /// The request as Pingora builds and checks it from the same head.
    fn pingora_built(head: &Bytes, parsed: &Parsed) -> Option<RequestHeader> {
        let method = std::str::from_utf8(&head[parsed.method.clone()]).ok()?;
        let target = &head[parsed.target.clone()];
        let mut req = RequestHeader::build_no_case(method, target, None).ok()?;
        req.set_version(if parsed.http11 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
        for (name, value) in &parsed.fields {
            let name = http::HeaderName::from_bytes(&head[name.clone()]).ok()?;
            let value = http::HeaderValue::from_bytes(&head[value.clone()]).ok()?;
            req.append_header(name, value).ok()?;
        }
        pingora_core::protocols::http::authority::validate_request_authority(&req).ok()?;
        Some(req)
    }

    #[test]
    fn the_request_is_what_pingora_would_build_and_accept() {
        for head in [
            "GET /p?q=1&r=%20 HTTP/1.1\r\nHost: t:8080\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET //double/slash HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET http://t/p?q HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET http://t/p HTTP/1.1\r\nhost: other\r\n\r\n",
            "GET http://u@t/p HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET ?q HTTP/1.1\r\nhost: t\r\n\r\n",
            "GET /p HTTP/1.1\r\nhost: u@t\r\n\r\n",
            "GET /p HTTP/1.1\r\nhost: t\r\nHOST: t\r\n\r\n",
            "POST /p HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nx-b: \u{e9}\r\n\r\n",
        ] {
            let head = Bytes::from(head.to_owned());
            let Some(parsed) = parse_request(&head) else {
                continue;
            };
            let ours = build_request(&head, &mut parsed.clone());
            let theirs = pingora_built(&head, &parsed);
            assert_eq!(ours.is_some(), theirs.is_some(), "{head:?}");
            let (Some(ours), Some(theirs)) = (ours, theirs) else {
                continue;
            };
            assert_eq!(*ours.method(), theirs.method, "{head:?}");
            assert_eq!(*ours.uri(), theirs.uri, "{head:?}");
            assert_eq!(ours.wire_target(), theirs.raw_path(), "{head:?}");
            assert_eq!(ours.version(), theirs.version, "{head:?}");
            let mut fields: Vec<(String, Vec<u8>)> = ours
                .fields()
                .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
                .collect();
            let mut expected: Vec<(String, Vec<u8>)> = theirs
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            fields.sort();
            expected.sort();
            assert_eq!(fields, expected, "{head:?}");
        }
    }

    fn framing_of(head: &str, method: http::Method) -> Result<(RawAnswer, Framing, bool)> {
        parse_response(&Bytes::from(head.to_owned()), &method)
    }

    #[test]
    fn an_answer_is_framed_as_rfc_9112_says() {
        let get = http::Method::GET;
        let (_, f, keeps) =
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", get.clone()).unwrap();
        assert!(matches!(f, Framing::Length(12)) && keeps);
        // Transfer-Encoding overrides Content-Length, which is dropped.
        let (resp, f, _) = framing_of(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            get.clone(),
        )
        .unwrap();
        assert!(matches!(f, Framing::Chunked));
        assert!(!resp.has("content-length"));
        assert_eq!(resp.field("transfer-encoding"), Some(&b"chunked"[..]));
        let (_, f, _) = framing_of(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            get.clone(),
        )
        .unwrap();
        assert!(matches!(f, Framing::Close));
        let (_, f, _) = framing_of("HTTP/1.1 200 OK\r\n\r\n", get.clone()).unwrap();
        assert!(matches!(f, Framing::Close));
        for empty in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
        ] {
            let (_, f, _) = framing_of(empty, get.clone()).unwrap();
            assert!(matches!(f, Framing::Empty), "{empty}");
        }
        let (_, f, _) = framing_of(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            http::Method::HEAD,
        )
        .unwrap();
        assert!(matches!(f, Framing::Empty));
        // The upstream's connection fields are its own.
        let (resp, _, keeps) = framing_of(
            "HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\nkeep-alive: 5\r\ncontent-length: 0\r\n\r\n",
            get.clone(),
        )
        .unwrap();
        assert!(!keeps);
        for gone in ["connection", "x-hop", "keep-alive"] {
            assert!(!resp.has(gone), "{gone}");
        }
        // A named field before the `Connection` that names it; the rest kept.
        let (resp, _, keeps) = framing_of(
            "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nx-kept: 2\r\nConnection: X-HOP\r\nTE: x\r\ncontent-length: 0\r\n\r\n",
            get.clone(),
        )
        .unwrap();
        assert!(keeps);
        assert!(!resp.has("x-hop") && !resp.has("te"));
        assert_eq!(resp.field("x-kept"), Some(&b"2"[..]));
        assert_eq!(resp.field("content-length"), Some(&b"0"[..]));
        let mut wire = Vec::new();
        resp.write_h1(&mut wire);
        assert_eq!(
            wire,
            b"HTTP/1.1 200 OK\r\nx-kept: 2\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn the_fixed_hop_by_hop_fields_are_known_in_any_case() {
        for name in [
            "TE",
            "trailer",
            "Upgrade",
            "connection",
            "Keep-Alive",
            "proxy-connection",
            "Transfer-Encoding",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["tea", "content-length", "x-connection", "host", ""] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
        let flagged = |head: &str| parse_request(head.as_bytes()).unwrap().hop_by_hop;
        assert!(!flagged("GET / HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(flagged("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
        assert!(flagged("GET / HTTP/1.1\r\nte: trailers\r\n\r\n"));
    }

    #[test]
    fn a_bad_answer_head_is_an_error_not_a_panic() {
        let get = http::Method::GET;
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad\r\n\r\n",
        ] {
            assert!(framing_of(bad, get.clone()).is_err(), "{bad:?}");
        }
    }

    /// Feeds `wire` to a chunked decoder `step` bytes at a time.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool)> {
        let mut decoder = Decoder::Chunked(ChunkState::Size);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            let (data, end) = decoder.take(&mut buf)?;
            body.extend_from_slice(&data);
            if end {
                return Ok((body, true));
            }
        }
        Ok((body, false))
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\ntrailer: x\r\n\r\n";
        for step in 1..=wire.len() {
            let (body, end) = decode(wire, step).unwrap();
            assert_eq!(body, b"hello world!", "step {step}");
            assert!(end, "step {step}");
        }
        let (body, end) = decode(b"5\r\nhel", 64).unwrap();
        assert_eq!((body.as_slice(), end), (&b"hel"[..], false));
    }

    #[test]
    fn a_bad_chunked_body_is_an_error() {
        assert!(decode(b"zz\r\n", 64).is_err());
        assert!(decode(b"3\r\nabcX\r\n", 64).is_err());
        let endless = vec![b'1'; MAX_LINE + 10];
        assert!(decode(&endless, 64).is_err());
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let mut decoder = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(
            decoder.take(&mut buf).unwrap(),
            (Bytes::from_static(b"hel"), false)
        );
        buf.extend_from_slice(b"loNEXT");
        assert_eq!(
            decoder.take(&mut buf).unwrap(),
            (Bytes::from_static(b"lo"), true)
        );
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn the_fields_a_connection_names_are_found() {
        let request = |head: &'static str| {
            let head = Bytes::from_static(head.as_bytes());
            build_request(&head, &mut parse_request(&head).unwrap()).unwrap()
        };
        let none = request("GET / HTTP/1.1\r\nx-keep: 1\r\n\r\n");
        assert!(connection_named(&none).is_empty());
        let named = request(
            "GET / HTTP/1.1\r\nConnection: X-Named, close\r\nx-keep: 1\r\nconnection: ,x-other\r\n\r\n",
        );
        assert_eq!(
            connection_named(&named),
            [&b"X-Named"[..], b"close", b"x-other"]
        );
    }

    #[test]
    fn the_upstream_head_is_the_clients_less_its_connections_fields() {
        let head = Bytes::from_static(
            b"POST /p HTTP/1.1\r\nHost: t\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Keep: a\r\nX-Request-Id: old\r\ncontent-length: 2\r\n\r\n",
        );
        let parsed = parse_request(&head).unwrap();
        let req = build_request(&head, &mut parsed.clone()).unwrap();
        let mut edits = super::super::fields::FieldEdits::default();
        edits.set(
            &http::HeaderName::from_static("x-request-id"),
            http::HeaderValue::from_static("new"),
        );
        let mut out = Vec::new();
        write_upstream_fields(&req, &edits, parsed.hop_by_hop, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Host: t\r\nX-Keep: a\r\ncontent-length: 2\r\nx-request-id: new\r\n"
        );
    }

    /// A step that is pending once, then done.
    async fn pending_once() {
        tokio::task::yield_now().await;
    }

    /// The server end of a connection from `client`, once it is readable
    /// (the client wrote or closed).
    async fn readable_server_end(
        listener: &tokio::net::TcpListener,
        client: impl FnOnce(tokio::net::TcpStream) -> Option<tokio::net::TcpStream>,
    ) -> (ClientConn, Option<tokio::net::TcpStream>) {
        let conn = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (conn, accepted) = tokio::join!(conn, listener.accept());
        let kept = client(conn.unwrap());
        let (server, _) = accepted.unwrap();
        server.readable().await.unwrap();
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        (ClientConn(server), kept)
    }

    #[tokio::test]
    async fn a_watched_client_keeps_its_early_bytes_and_is_gone_when_it_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Bytes of the next request while the work runs: kept, and the
        // work's result comes when it is done.
        let (mut conn, _kept) = readable_server_end(&listener, |c| {
            c.try_write(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
            Some(c)
        })
        .await;
        let mut pending = BytesMut::new();
        let done = watching(&mut conn, &mut pending, async {
            pending_once().await;
            7
        })
        .await;
        assert_eq!(done.unwrap(), 7);
        assert_eq!(&pending[..], b"GET /next HTTP/1.1\r\n\r\n");

        // A client that closes: the work is stopped.
        let (mut conn, _) = readable_server_end(&listener, |c| {
            drop(c);
            None
        })
        .await;
        let mut pending = BytesMut::new();
        let gone = watching(&mut conn, &mut pending, std::future::pending::<()>()).await;
        assert_eq!(gone.unwrap_err().etype(), &ErrorType::ConnectionClosed);
    }

    #[tokio::test]
    async fn a_head_read_alone_needs_no_buffer_and_one_with_more_keeps_it_all() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        let mut conn = ClientConn(server);
        let (mut buf, mut clock) = (BytesMut::new(), Clock::default());
        let wait = Duration::from_secs(30);

        let get = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        client.write_all(get).await.unwrap();
        let head = read_head(&mut conn, &mut buf, &mut clock, wait, wait).await;
        let bytes = match head {
            Ok(Some(Head::Alone(bytes))) => bytes,
            _ => Bytes::new(),
        };
        assert_eq!(&bytes[..], get, "a head alone");
        assert!(buf.is_empty() && buf.capacity() == 0);

        // A head with a body after it stays in the buffer, body and all.
        let post = b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        client.write_all(post).await.unwrap();
        let head = read_head(&mut conn, &mut buf, &mut clock, wait, wait).await;
        let end = match head {
            Ok(Some(Head::InBuf(end))) => end,
            _ => 0,
        };
        assert_eq!(&buf[..end], &post[..post.len() - 2], "a head in the buffer");
        assert_eq!(&buf[end..], b"hi");
    }

    #[tokio::test]
    async fn a_clock_ends_a_wait_at_its_due_time_whatever_it_was_set_for() {
        let mut clock = Clock::default();
        let ms = Duration::from_millis;
        // A step done at once arms nothing, nor reads the clock.
        let asked = std::cell::Cell::new(false);
        let due = || {
            asked.set(true);
            Instant::now()
        };
        assert_eq!(clock.until(due, async { 1 }).await, Some(1));
        assert!(!asked.get());
        assert!(clock.sleep.is_none());
        // Armed an hour ahead by a wait that ended...
        let hour = later(Instant::now(), Duration::from_secs(3600));
        assert_eq!(clock.until(|| hour, pending_once()).await, Some(()));
        // ...a wait due sooner still ends when due, not in an hour.
        let due = later(Instant::now(), ms(20));
        let never = std::future::pending::<()>();
        let waited = tokio::time::timeout(Duration::from_secs(10), clock.until(|| due, never));
        assert_eq!(waited.await.unwrap(), None);
        assert!(Instant::now() >= due);
        // Fired already: a later wait is not ended by the old time.
        let due = later(Instant::now(), Duration::from_secs(10));
        let step = tokio::time::sleep(ms(40));
        assert_eq!(clock.until(|| due, step).await, Some(()));
        assert!(Instant::now() < due);
    }

    /// A future that counts its polls.
    struct Counted<'a, F> {
        polls: &'a std::cell::Cell<u32>,
        inner: Pin<Box<F>>,
    }

    impl<F: Future> Future for Counted<'_, F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
            self.polls.set(self.polls.get() + 1);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn a_waiting_step_is_polled_again_only_when_woken() {
        let mut clock = Clock::default();
        let polls = std::cell::Cell::new(0);
        let step = Counted {
            polls: &polls,
            inner: Box::pin(tokio::time::sleep(Duration::from_millis(20))),
        };
        let due = later(Instant::now(), Duration::from_secs(10));
        assert_eq!(clock.until(|| due, step).await, Some(()));
        // Once before the clock is armed (waiting), once when it is done.
        assert_eq!(polls.get(), 2);
    }

    #[test]
    fn a_span_outside_its_buffer_is_none() {
        let whole = b"abcdef";
        assert_eq!(span(whole, &whole[2..4]), Some(2..4));
        assert_eq!(span(whole, &whole[6..]), Some(6..6));
        let elsewhere = vec![b'z'; 2];
        assert_eq!(span(whole, &elsewhere), None);
    }
}
