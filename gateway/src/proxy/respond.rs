//! What the gateway writes itself: gateway-made errors (OpenAI-shaped JSON,
//! or a gRPC status for gRPC calls, see [`crate::grpc`]), the `x-weir-*` and
//! `x-request-id` headers on every answer, and the answer after a failed
//! proxy attempt.

use bytes::Bytes;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

use super::ctx::GatewayCtx;
use super::head::AnswerHead;
use crate::errors::GatewayError;

/// An answer the gateway makes itself, ready to write.
pub(super) enum Answer {
    /// A gRPC status: one header block that ends the stream (a
    /// trailers-only answer).
    Grpc(ResponseHeader),
    /// A status with a whole body; `close`: the client connection is not
    /// kept after it.
    Full {
        header: ResponseHeader,
        body: Bytes,
        close: bool,
    },
}

impl Answer {
    /// The status the answer is recorded with (200 for a gRPC status,
    /// which travels in the header block).
    pub(super) fn status(&self) -> u16 {
        match self {
            Answer::Grpc(_) => 200,
            Answer::Full { header, .. } => header.status.as_u16(),
        }
    }
}

/// The answer for a gateway-made error: a gRPC status for a gRPC call
/// (`h1`: the client speaks HTTP/1.x), else OpenAI-shaped JSON after which
/// the connection closes.
pub(super) fn error_answer(ctx: &GatewayCtx, err: &GatewayError, h1: bool) -> Result<Answer> {
    if ctx.grpc {
        let mut resp = crate::grpc::error_response(err, h1)?;
        decorate(&mut resp, ctx)?;
        return Ok(Answer::Grpc(resp));
    }
    let body = Bytes::from(err.body());
    let extra = err.headers();
    let mut resp = ResponseHeader::build(err.status(), Some(6 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    decorate(&mut resp, ctx)?;
    Ok(Answer::Full {
        header: resp,
        body,
        close: true,
    })
}

/// An answer the gateway gives itself: `status` with a JSON body.
pub(super) fn json_answer(ctx: &GatewayCtx, status: u16, body: Bytes) -> Result<Answer> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    decorate(&mut resp, ctx)?;
    Ok(Answer::Full {
        header: resp,
        body,
        close: false,
    })
}

/// Writes `answer` to the client through Pingora.
async fn write(session: &mut Session, answer: Answer) -> Result<()> {
    match answer {
        Answer::Grpc(resp) => {
            let task = pingora_core::protocols::http::HttpTask::Header(Box::new(resp), true);
            session.write_response_tasks(vec![task]).await.map(|_| ())
        }
        Answer::Full {
            header,
            body,
            close,
        } => {
            if close {
                session.set_keepalive(None);
            }
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(body), true).await
        }
    }
}

/// Writes a gateway-made error and records it in the context. Returns the
/// status written (200 for a gRPC status), 0 if nothing could be written.
pub(super) async fn answer_error(
    session: &mut Session,
    ctx: &mut GatewayCtx,
    err: GatewayError,
) -> u16 {
    let h1 = session.req_header().version < http::Version::HTTP_2;
    let answer = error_answer(ctx, &err, h1);
    ctx.error = Some(err);
    let written = match answer {
        Ok(answer) => {
            let status = answer.status();
            write(session, answer).await.map(|()| status)
        }
        Err(e) => Err(e),
    };
    written.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "could not write the error response");
        0
    })
}

/// Writes an answer the gateway gives itself: `status` with a JSON body.
pub(super) async fn answer_json(
    session: &mut Session,
    ctx: &mut GatewayCtx,
    status: u16,
    body: Bytes,
) {
    let written = match json_answer(ctx, status, body) {
        Ok(answer) => write(session, answer).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not write the answer");
    }
}

/// Records `err` as the answer and returns the error that stops proxying
/// (`fail_to_proxy` then writes it).
pub(super) fn refuse(ctx: &mut GatewayCtx, err: GatewayError) -> Box<Error> {
    let status = err.status();
    let message = err.to_string();
    ctx.error = Some(err);
    Error::explain(ErrorType::HTTPStatus(status), message)
}

/// Adds the `x-weir-*`, `x-ratelimit-*` and `x-request-id` headers.
pub(super) fn decorate(resp: &mut impl AnswerHead, ctx: &GatewayCtx) -> Result<()> {
    use crate::headers::{X_REQUEST_ID, X_WEIR_ARM, X_WEIR_FALLBACK, X_WEIR_ROUTE};
    if let Some(id) = &ctx.request_id {
        resp.set_static_value(&X_REQUEST_ID, id)?;
    }
    if let Some(route) = ctx.route() {
        resp.set_static(&X_WEIR_ROUTE, route.name_header.clone())?;
        if let Some(arm) = ctx.arm() {
            resp.set_static(&X_WEIR_ARM, arm.name_header.clone())?;
        }
    }
    if ctx.upstream.fallback {
        resp.set_static(&X_WEIR_FALLBACK, http::HeaderValue::from_static("1"))?;
    }
    for (name, value) in ctx.rate_headers.pairs() {
        resp.set(&http::HeaderName::from_static(name), value.into())?;
    }
    Ok(())
}

/// The answer after proxying failed: the recorded gateway error, else one
/// made from Pingora's, unless an answer has already begun or the client is
/// gone.
pub(super) async fn fail_to_proxy(
    session: &mut Session,
    e: &Error,
    ctx: &mut GatewayCtx,
) -> FailToProxy {
    let err = match ctx.error.take() {
        Some(err) => err,
        None => GatewayError::from_proxy_error(e),
    };
    let gone = matches!(err, GatewayError::ClientClosed(_));
    // An interim answer (`100 Continue`) does not stop the final one.
    let answered = session
        .response_written()
        .is_some_and(|r| !r.status.is_informational());
    let code = if gone || answered {
        ctx.error = Some(err);
        0
    } else {
        answer_error(session, ctx, err).await
    };
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

/// What the arm's pool says about the request it is sent: headers removed,
/// then headers set (credentials of a provider, say); and `Host`, which
/// becomes the pool's `tls.sni`, or the host name the backend was resolved
/// from, unless the pool preserves the client's.
pub(super) fn pool_headers(ctx: &GatewayCtx, edits: &mut super::fields::FieldEdits) -> Result<()> {
    let Some(pool) = ctx.arm().map(|a| &a.pool) else {
        return Ok(());
    };
    let h = &pool.config.headers;
    for name in &h.remove {
        // A name that cannot be a field's names none to remove.
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            edits.remove(&name);
        }
    }
    for (name, value) in &h.set {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "invalid pool header name")?;
        edits.set_str(&name, value.expose())?;
    }
    if !pool.config.preserve_host {
        if let Some(sni) = pool.tls.as_ref().and_then(|t| t.sni.as_deref()) {
            edits.set_str(&http::header::HOST, sni)?;
        } else if let Some((backend, name)) = ctx
            .upstream
            .backend()
            .and_then(|b| Some((b, pool.host_name(b)?)))
        {
            // The name the backend was resolved from, with its port (as a
            // client of that name would send it).
            let port = backend.addr.as_inet().map_or(0, |a| a.port());
            edits.set_str(&http::header::HOST, &format!("{name}:{port}"))?;
        }
    }
    Ok(())
}
