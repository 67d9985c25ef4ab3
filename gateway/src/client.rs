//! What the request logic reads of the client side of a request, whichever
//! HTTP engine serves it. The hooks' files and the route choice take a
//! [`Client`] (or, to read a body ahead for its `model`, a [`Downstream`])
//! rather than Pingora's `Session`, so the same logic can run under
//! another engine.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use pingora_proxy::Session;

use crate::errors::GatewayError;
use crate::request_head::RequestHead;

/// Facts of the client side of one request.
pub trait Client {
    /// The request as read (and as the request phase rewrote it).
    fn request(&self) -> &dyn RequestHead;
    /// The peer's address; `None` on a Unix socket.
    fn peer(&self) -> Option<SocketAddr>;
    /// Whether the client connected over TLS.
    fn tls(&self) -> bool;
    /// The final status answered to the client so far (not an interim
    /// `1xx`), if an answer has begun.
    fn answered(&self) -> Option<u16>;
    /// Request body bytes read from the client.
    fn bytes_read(&self) -> usize;
    /// Answer body bytes sent to the client.
    fn bytes_sent(&self) -> usize;
    /// Whether the request may be sent to an upstream again: an idempotent
    /// method, with its whole body still held.
    fn replayable(&self) -> bool;
}

/// A client whose request can be changed and whose body can be read ahead
/// (kept for the upstream and for retries).
pub trait Downstream: Client {
    /// The request, to rewrite before it goes upstream.
    fn request_mut(&mut self) -> &mut dyn RequestHead;
    /// The whole request body, read ahead and kept for the upstream; at
    /// most `limit` bytes (more is [`GatewayError::BodyTooLarge`]).
    fn read_ahead(
        &mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Bytes, GatewayError>> + Send;
}

impl Client for Session {
    fn request(&self) -> &dyn RequestHead {
        self.req_header()
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.client_addr()?.as_inet().copied()
    }

    fn tls(&self) -> bool {
        self.digest().is_some_and(|d| d.ssl_digest.is_some())
    }

    fn answered(&self) -> Option<u16> {
        self.response_written()
            .filter(|r| !r.status.is_informational())
            .map(|r| r.status.as_u16())
    }

    fn bytes_read(&self) -> usize {
        self.body_bytes_read()
    }

    fn bytes_sent(&self) -> usize {
        self.body_bytes_sent()
    }

    fn replayable(&self) -> bool {
        self.req_header().method.is_idempotent() && !self.as_ref().retry_buffer_truncated()
    }
}

impl Downstream for Session {
    fn request_mut(&mut self) -> &mut dyn RequestHead {
        self.req_header_mut()
    }

    async fn read_ahead(&mut self, limit: usize) -> Result<Bytes, GatewayError> {
        // Pingora keeps what is read here and sends it upstream (again on
        // a retry).
        self.as_mut().enable_retry_buffering();
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self
            .as_mut()
            .read_request_body()
            .await
            .map_err(|e| GatewayError::from_proxy_error(&e))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}
