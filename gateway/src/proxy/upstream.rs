//! The upstream side of a request: choosing the peer (the route's total
//! deadline, a backend of the arm whose breaker admits the request, the
//! fallback arm when the arm has none), retries within the route's attempts
//! and retry budget, and telling each backend's breaker how its attempt went.

use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::Backend;

use super::ctx::{GatewayCtx, Routed, UpstreamState};
use super::head::AnswerHead;
use super::plain::Target;
use crate::breaker::Outcome;
use crate::client::Client;
use crate::errors::GatewayError;
use crate::pool::PoolRt;
use crate::runtime::RouteRt;
use crate::state::Shared;
use crate::window::now_ms;

impl UpstreamState {
    /// The backend of the current attempt.
    pub(super) fn backend(&self) -> Option<&pingora_load_balancing::Backend> {
        self.backend.as_ref()
    }

    /// Tells the pending attempt's breaker how it went.
    fn settle(&mut self, outcome: Outcome) {
        if let Some(a) = self.attempt.take() {
            a.settle(outcome, now_ms());
        }
    }

    /// Settles the attempt as a failure of `kind` when its breaker counts
    /// that kind, else as ignored.
    fn settle_failure(&mut self, kind: FailureKind) {
        let counts = self.attempt.as_ref().is_some_and(|a| {
            let s = a.settings();
            match kind {
                FailureKind::Connect => s.on_connect,
                FailureKind::Timeout => s.on_timeout,
            }
        });
        self.settle(if counts {
            Outcome::Failure
        } else {
            Outcome::Ignored
        });
    }

    /// What is left of a route's total timeout; the clock starts at the
    /// first backend choice of the request that began at `start`.
    fn remaining(&mut self, total: Option<Duration>, start: Instant) -> Option<Duration> {
        let total = total?;
        let deadline = *self.deadline.get_or_insert(start + total);
        Some(deadline.saturating_duration_since(Instant::now()))
    }
}

/// The header in which weir-engine reports the requests it holds.
const QUEUE_DEPTH: &str = "x-weir-queue-depth";

/// Failures a breaker may count besides statuses.
#[derive(Clone, Copy)]
enum FailureKind {
    Connect,
    Timeout,
}

/// Whether Pingora's error is a connect, read or write timeout.
fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// The peer for the next attempt: a healthy backend of the arm whose breaker
/// admits the request, not tried before; the route's fallback arm when the
/// arm has none.
pub(super) fn choose_peer(
    shared: &Shared,
    ctx: &mut GatewayCtx,
) -> Result<Box<HttpPeer>, GatewayError> {
    choose(shared, ctx, RouteRt::peer)
}

/// [`choose_peer`] for the direct path: a backend it reaches over plain
/// TCP needs no `HttpPeer` ([`Target`]).
pub(super) fn choose_target(shared: &Shared, ctx: &mut GatewayCtx) -> Result<Target, GatewayError> {
    choose(shared, ctx, Target::new)
}

/// The choice of [`choose_peer`], its attempt described by `describe`.
fn choose<T>(
    shared: &Shared,
    ctx: &mut GatewayCtx,
    describe: impl Fn(&RouteRt, &Backend, &PoolRt, Option<Duration>) -> T,
) -> Result<T, GatewayError> {
    // An attempt nobody settled (a stale keep-alive connection retried by
    // Pingora) says nothing about the backend.
    ctx.upstream.settle(Outcome::Ignored);
    if let Some(spans) = ctx.observe.spans.as_mut() {
        spans.routed();
    }
    let Some(Routed {
        runtime,
        route: Some(route_idx),
        arm: Some(arm_idx),
    }) = ctx.routed.as_mut()
    else {
        return Err(GatewayError::Internal(
            "upstream_peer without a route".to_owned(),
        ));
    };
    let route = &runtime.routes[*route_idx];
    let up = &mut ctx.upstream;
    let remaining = up.remaining(route.config.timeouts.total, ctx.start);
    if remaining.is_some_and(|r| r.is_zero()) {
        return Err(GatewayError::UpstreamTimeout(
            "the route's total timeout passed".into(),
        ));
    }
    let now = now_ms();
    if let Some(tag) = up.pinned {
        // A task poll: the backend that runs the task, once.
        let arm = &route.arms[*arm_idx];
        return match arm.pool.pick_tagged(tag) {
            Some((backend, in_flight)) if !up.tried.contains(&backend.addr) => {
                up.in_flight = Some(in_flight);
                let peer = describe(route, &backend, &arm.pool, remaining);
                up.backend = Some(backend);
                Ok(peer)
            }
            _ => Err(up
                .connect_error
                .take()
                .unwrap_or_else(|| GatewayError::NoHealthyBackend {
                    route: route.config.name.clone(),
                    arm: arm.name.clone(),
                })),
        };
    }
    loop {
        let arm = &route.arms[*arm_idx];
        if let Some((backend, attempt, in_flight)) = arm.pool.pick(&up.tried, now) {
            up.attempt = attempt;
            // Ends the previous attempt's count, if any.
            up.in_flight = Some(in_flight);
            let peer = describe(route, &backend, &arm.pool, remaining);
            up.backend = Some(backend);
            return Ok(peer);
        }
        match route.config.fallback {
            Some(fb) if fb != *arm_idx && !up.fallback => {
                shared
                    .metrics
                    .fallbacks
                    .with_label_values(&[
                        route.config.name.as_str(),
                        arm.name.as_str(),
                        route.arms[fb].name.as_str(),
                    ])
                    .inc();
                up.fallback = true;
                *arm_idx = fb;
            }
            // Backends were tried and failed: report that failure (502/504)
            // rather than "no healthy backend" (503).
            _ => {
                return Err(up.connect_error.take().unwrap_or_else(|| {
                    GatewayError::NoHealthyBackend {
                        route: route.config.name.clone(),
                        arm: arm.name.clone(),
                    }
                }));
            }
        }
    }
}

/// A connect failure: counted (breaker too); retried on another backend
/// within the route's attempts and budget, whatever the method, since
/// nothing reached the upstream.
pub(super) fn connect_failed(
    shared: &Shared,
    ctx: &mut GatewayCtx,
    peer: &dyn std::fmt::Display,
    mut e: Box<Error>,
) -> Box<Error> {
    if let Some(addr) = ctx.upstream.backend.as_ref().map(|b| b.addr.clone()) {
        let pool = ctx.arm().map_or("", |a| a.pool.config.name.as_str());
        shared
            .metrics
            .connect_failures
            .with_label_values(&[pool, &addr.to_string()])
            .inc();
        ctx.upstream.tried.push(addr);
    }
    tracing::warn!(request_id = ctx.id_str(), peer = %peer, error = %e, "upstream connect failed");
    ctx.upstream.settle_failure(if is_timeout(&e) {
        FailureKind::Timeout
    } else {
        FailureKind::Connect
    });
    ctx.upstream.connect_error = Some(GatewayError::from_proxy_error(&e));
    e.set_retry(take_retry(shared, ctx, "connect"));
    e
}

/// The upstream's answer header: its status goes to the breaker, and a
/// status the route retries is retried for idempotent requests.
pub(super) fn answered(
    shared: &Shared,
    client: &dyn Client,
    resp: &impl AnswerHead,
    ctx: &mut GatewayCtx,
) -> Result<()> {
    let status = resp.status().as_u16();
    ctx.upstream.status = Some(status);
    let now = std::time::Instant::now();
    ctx.upstream.header_at = Some(now);
    if let Some(f) = ctx.upstream.in_flight.as_mut() {
        f.answered(crate::balance::ns_at(now), status < 500);
        if let Some(depth) = resp
            .field(QUEUE_DEPTH)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            f.load().set_queue(depth);
        }
    }
    if ctx
        .upstream
        .attempt
        .as_ref()
        .is_some_and(|a| a.settings().fails_on(status))
    {
        ctx.upstream.settle(Outcome::Failure);
    }
    let retried = ctx
        .route()
        .is_some_and(|r| r.config.retry.retries_status(status));
    // The upstream saw this request: only idempotent ones (with their whole
    // body still held) may be sent again.
    if retried && client.replayable() && take_retry(shared, ctx, "status") {
        let up = &mut ctx.upstream;
        if let Some(addr) = up.backend.as_ref().map(|b| b.addr.clone()) {
            up.tried.push(addr);
        }
        up.status = None;
        up.retry_status = true;
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "upstream status retried on another backend",
        ));
    }
    Ok(())
}

/// An error while proxying: a status turned into a retry is retried;
/// timeouts count for the breaker; otherwise Pingora's own policy (a request
/// on a reused connection that the upstream had closed is sent again, if
/// that is safe).
pub(super) fn proxy_failed(
    peer: &dyn std::fmt::Display,
    client: &dyn Client,
    e: Box<Error>,
    ctx: &mut GatewayCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if std::mem::take(&mut ctx.upstream.retry_status) {
        e.set_retry(true);
        return e;
    }
    if is_timeout(&e) {
        ctx.upstream.settle_failure(FailureKind::Timeout);
    }
    if !client.replayable() {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
    }
    e
}

/// At the end of the request: the attempt's last word to its breaker.
pub(super) fn settle_at_end(ctx: &mut GatewayCtx, e: Option<&Error>) {
    let up = &mut ctx.upstream;
    match e {
        Some(e) if is_timeout(e) => up.settle_failure(FailureKind::Timeout),
        _ if up.status.is_some() => up.settle(Outcome::Success),
        _ => up.settle(Outcome::Ignored),
    }
}

/// Takes a retry for `cause` if the route's attempts and budget allow it.
fn take_retry(shared: &Shared, ctx: &mut GatewayCtx, cause: &str) -> bool {
    let Some(route) = ctx.routed.as_ref().and_then(Routed::route) else {
        return false;
    };
    if ctx.upstream.retries >= route.config.retry.attempts {
        return false;
    }
    let granted = route.budget.try_retry(&route.config.retry, now_ms());
    let outcome = if granted {
        "retried"
    } else {
        "budget_exhausted"
    };
    shared
        .metrics
        .retries
        .with_label_values(&[route.config.name.as_str(), cause, outcome])
        .inc();
    if granted {
        ctx.upstream.retries += 1;
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_deadline_starts_at_the_request_and_is_kept_across_attempts() {
        let mut up = UpstreamState::default();
        assert_eq!(up.remaining(None, Instant::now()), None);
        assert!(up.deadline.is_none(), "no total timeout: no deadline");
        let start = Instant::now();
        let first = up.remaining(Some(Duration::from_secs(30)), start);
        assert!(first.is_some_and(|r| r <= Duration::from_secs(30)));
        assert_eq!(up.deadline, Some(start + Duration::from_secs(30)));
        // A later attempt keeps the first deadline, whatever total it sees.
        let again = up.remaining(Some(Duration::from_secs(300)), Instant::now());
        assert!(again.is_some_and(|r| r <= Duration::from_secs(30)));
        // A request that started long ago has nothing left.
        let mut late = UpstreamState::default();
        let now = Instant::now();
        let left = late.remaining(Some(Duration::from_millis(1)), now);
        assert!(left.is_some_and(|r| r <= Duration::from_millis(1)));
        let later = now + Duration::from_millis(2);
        assert_eq!(
            late.deadline.map(|d| d.saturating_duration_since(later)),
            Some(Duration::ZERO)
        );
    }
}
