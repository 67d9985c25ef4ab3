//! A measuring stick for `loadtest/budget.py --floors`: the least an
//! HTTP/1.1 keep-alive proxy on Tokio does per request, to set beside
//! weir and nginx. One current-thread runtime; per client connection one
//! task that reads a request head (httparse), copies it to a pooled
//! upstream connection without `Connection`, adds one header, reads the
//! answer's head and `Content-Length` body, and writes it back with one
//! more header.
//!
//! With `--header-maps` it also does what weir's hooks need of a proxy
//! engine: each head becomes a `pingora_http` header (an `http` header map,
//! values sliced from one shared copy of the head), the request is
//! cloned for the upstream as Pingora does, and both heads are written
//! back from their maps: the floor of an engine that keeps the types the
//! hooks use.
//!
//! It is not a proxy to run: no chunked bodies (the connection is closed),
//! no timeouts, no validation beyond httparse's. What it shows is what the
//! runtime and the kernel cost, without a proxy framework on top.
//!
//! ```text
//! floor_tokio --upstream 127.0.0.1:8080 [--header-maps]
//! floor_tokio listening proxy=127.0.0.1:PORT
//! ```

use std::cell::RefCell;
use std::io::{Error, ErrorKind, Write};
use std::rc::Rc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Most header fields read in one message.
const MAX_HEADERS: usize = 64;

/// A head's fields, copied to `out` without `Connection`; the value of
/// `Content-Length` (0 when absent), or an error for chunked framing.
fn copy_fields(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut length = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::new(ErrorKind::Unsupported, "chunked framing"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad content-length"))?;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    Ok(length)
}

/// Reads from `conn` into `buf[*have..]`, growing `*have`; an error at end
/// of stream.
async fn fill(conn: &mut TcpStream, buf: &mut [u8], have: &mut usize) -> std::io::Result<()> {
    let free = buf
        .get_mut(*have..)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "message too large"))?;
    match conn.read(free).await? {
        0 => Err(ErrorKind::UnexpectedEof.into()),
        n => {
            *have += n;
            Ok(())
        }
    }
}

/// Where a head's pieces lie in its buffer, as httparse found them: the
/// maps are built from these over one shared copy of the head, each value
/// a slice of it (Pingora freezes its read buffer instead of copying).
struct Spans {
    method: std::ops::Range<usize>,
    target: std::ops::Range<usize>,
    code: u16,
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Spans {
    fn of(base: &[u8], fields: &[httparse::Header<'_>]) -> Self {
        let at = |piece: &[u8]| {
            let start = piece.as_ptr() as usize - base.as_ptr() as usize;
            start..start + piece.len()
        };
        Spans {
            method: 0..0,
            target: 0..0,
            code: 0,
            fields: fields
                .iter()
                .map(|h| (at(h.name.as_bytes()), at(h.value)))
                .collect(),
        }
    }

    fn request(base: &[u8], req: &httparse::Request<'_, '_>) -> Self {
        let at = |piece: &[u8]| {
            let start = piece.as_ptr() as usize - base.as_ptr() as usize;
            start..start + piece.len()
        };
        Spans {
            method: at(req.method.unwrap_or("").as_bytes()),
            target: at(req.path.unwrap_or("").as_bytes()),
            ..Spans::of(base, req.headers)
        }
    }

    /// Each field as a name and a value sliced from `head`.
    fn fields<'a>(
        &'a self,
        head: &'a bytes::Bytes,
    ) -> impl Iterator<Item = std::io::Result<(http::HeaderName, http::HeaderValue)>> + 'a {
        self.fields.iter().map(|(name, value)| {
            let name = http::HeaderName::from_bytes(&head[name.clone()]).map_err(invalid)?;
            let value =
                http::HeaderValue::from_maybe_shared(head.slice(value.clone())).map_err(invalid)?;
            Ok((name, value))
        })
    }
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidData, e.to_string())
}

/// `--header-maps`: the request head as a `RequestHeader`, copied for the
/// upstream without `Connection` and with one header added, written to
/// `out`; the body's length.
fn request_through_maps(
    head: &bytes::Bytes,
    spans: &Spans,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let method = std::str::from_utf8(&head[spans.method.clone()]).map_err(invalid)?;
    let mut parsed = pingora_http::RequestHeader::build_no_case(
        method,
        &head[spans.target.clone()],
        Some(spans.fields.len()),
    )
    .map_err(invalid)?;
    for field in spans.fields(head) {
        let (name, value) = field?;
        parsed.append_header(name, value).map_err(invalid)?;
    }
    let length = content_length(&parsed.headers)?;
    let mut upstream = parsed.clone();
    upstream.remove_header(&http::header::CONNECTION);
    upstream
        .insert_header("x-forwarded-for", "127.0.0.1")
        .map_err(invalid)?;
    out.clear();
    out.extend_from_slice(upstream.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(upstream.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    upstream.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
    Ok(length)
}

/// `--header-maps`: the answer's head as a `ResponseHeader` with one
/// header added, written to `out`; the body's length.
fn response_through_maps(
    head: &bytes::Bytes,
    spans: &Spans,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut parsed =
        pingora_http::ResponseHeader::build_no_case(spans.code, Some(spans.fields.len() + 1))
            .map_err(invalid)?;
    for field in spans.fields(head) {
        let (name, value) = field?;
        parsed.append_header(name, value).map_err(invalid)?;
    }
    let length = content_length(&parsed.headers)?;
    parsed.remove_header(&http::header::CONNECTION);
    parsed
        .insert_header("x-request-id", "0123456789abcdef")
        .map_err(invalid)?;
    out.clear();
    write!(out, "HTTP/1.1 {}\r\n", parsed.status)?;
    parsed.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
    Ok(length)
}

/// A map's `Content-Length` (0 when absent); chunked framing refused.
fn content_length(headers: &http::HeaderMap) -> std::io::Result<usize> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(Error::new(ErrorKind::Unsupported, "chunked framing"));
    }
    match headers.get(http::header::CONTENT_LENGTH) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad content-length")),
    }
}

thread_local! {
    /// Idle upstream connections (one runtime thread: no lock).
    static POOL: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
}

async fn serve(mut client: TcpStream, upstream: Rc<str>, maps: bool) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    let mut answer = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    loop {
        // The request head, then its body.
        let (head, length) = loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&buf[..have]) {
                Ok(httparse::Status::Complete(head)) if maps => {
                    let spans = Spans::request(&buf, &req);
                    let frozen = bytes::Bytes::copy_from_slice(&buf[..head]);
                    break (head, request_through_maps(&frozen, &spans, &mut out)?);
                }
                Ok(httparse::Status::Complete(head)) => {
                    out.clear();
                    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
                    out.extend_from_slice(b" HTTP/1.1\r\n");
                    let length = copy_fields(req.headers, &mut out)?;
                    out.extend_from_slice(b"x-forwarded-for: 127.0.0.1\r\n\r\n");
                    break (head, length);
                }
                Ok(httparse::Status::Partial) if have == 0 => {
                    // Between two requests: the client may leave.
                    match client.read(&mut buf).await? {
                        0 => return Ok(()),
                        n => have = n,
                    }
                }
                Ok(httparse::Status::Partial) => fill(&mut client, &mut buf, &mut have).await?,
                Err(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
            }
        };
        let end = head + length;
        while have < end {
            fill(&mut client, &mut buf, &mut have).await?;
        }
        out.extend_from_slice(&buf[head..end]);
        buf.copy_within(end..have, 0);
        have -= end;

        let pooled = POOL.with(|p| p.borrow_mut().pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(&*upstream).await?;
                conn.set_nodelay(true)?;
                conn
            }
        };
        conn.write_all(&out).await?;

        // The answer's head, then its body.
        let mut got = 0;
        let (head, length) = loop {
            fill(&mut conn, &mut answer, &mut got).await?;
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut fields);
            let parsed = resp
                .parse(&answer[..got])
                .map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
            if let (httparse::Status::Complete(head), true) = (parsed, maps) {
                let mut spans = Spans::of(&answer, resp.headers);
                spans.code = resp.code.unwrap_or(502);
                let frozen = bytes::Bytes::copy_from_slice(&answer[..head]);
                break (head, response_through_maps(&frozen, &spans, &mut out)?);
            }
            if let httparse::Status::Complete(head) = parsed {
                out.clear();
                write!(
                    out,
                    "HTTP/1.1 {} {}\r\n",
                    resp.code.unwrap_or(502),
                    resp.reason.unwrap_or("")
                )?;
                let length = copy_fields(resp.headers, &mut out)?;
                out.extend_from_slice(b"x-request-id: 0123456789abcdef\r\n\r\n");
                break (head, length);
            }
        };
        let end = head + length;
        while got < end {
            fill(&mut conn, &mut answer, &mut got).await?;
        }
        out.extend_from_slice(&answer[head..end]);
        if got == end {
            POOL.with(|p| p.borrow_mut().push(conn));
        }
        client.write_all(&out).await?;
    }
}

/// weir's allocator, so that only the proxy around it differs.
#[global_allocator]
static GLOBAL: weir_gateway::alloc::Allocator = weir_gateway::alloc::Allocator;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let upstream: Rc<str> = args
        .iter()
        .position(|a| a == "--upstream")
        .and_then(|i| args.get(i + 1))
        .context("usage: floor_tokio --upstream HOST:PORT")?
        .as_str()
        .into();
    let maps = args.iter().any(|a| a == "--header-maps");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("floor_tokio listening proxy={}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = Rc::clone(&upstream);
            tokio::task::spawn_local(async move {
                let _ = serve(client, upstream, maps).await;
            });
        }
    })
}
