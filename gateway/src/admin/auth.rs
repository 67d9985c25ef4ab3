//! Who is calling the admin API, and what they may do.
//!
//! With admin tokens configured (`[server] admin_token_sha256`, or named
//! tokens with scopes in `[[server.admin_tokens]]`), every path but
//! `/healthz` and `/readyz` needs `Authorization: Bearer <token>` (401
//! otherwise), and a path outside the token's scopes answers 403. The
//! caller, with the token's name, goes into the request's extensions for
//! the audit log.
//!
//! With no token configured the admin API is open for reads and profiles,
//! as before tokens existed, and **writes are accepted only from the
//! gateway's own host** (a loopback peer address), recorded as actor
//! `local`: a workstation or a demo needs no token, while a gateway whose
//! admin port is reachable from the network cannot be re-weighted by anyone
//! who reaches it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use weir_conf::snapshot::{AdminToken, Scopes};

use super::error;
use crate::state::Shared;

/// The admin API's caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or `local`.
    pub name: String,
    /// `token` or `local`, as the audit log records it.
    pub kind: &'static str,
    /// What it may do.
    pub scopes: Scopes,
}

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Metrics, routes, weights, changes.
    Read,
    /// Writes of weights and rollbacks.
    Weights,
    /// CPU profiles.
    Profile,
}

/// Finds the caller of `req` among `tokens` (`None` when no token is
/// configured: the caller is `local`, with writes only from a loopback
/// peer).
fn identify(
    tokens: &[AdminToken],
    authorization: Option<&[u8]>,
    peer: Option<SocketAddr>,
) -> Result<Caller, Box<Response>> {
    if tokens.is_empty() {
        let loopback = peer.is_some_and(|p| p.ip().is_loopback());
        return Ok(Caller {
            name: "local".to_owned(),
            kind: "local",
            scopes: Scopes {
                read: true,
                weights: loopback,
                profile: true,
            },
        });
    }
    let presented = authorization.and_then(crate::access::bearer_token);
    let found = presented.and_then(|token| {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token).into();
        tokens.iter().find(|t| t.digest == digest)
    });
    match found {
        Some(t) => Ok(Caller {
            name: t.name.clone(),
            kind: "token",
            scopes: t.scopes,
        }),
        None => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "the admin API needs Authorization: Bearer <admin token>",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
            );
            Err(Box::new(resp))
        }
    }
}

/// What `method` on `path` needs.
fn need(method: &axum::http::Method, path: &str) -> Need {
    if path.starts_with("/debug/pprof") {
        Need::Profile
    } else if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Need::Read
    } else {
        Need::Weights
    }
}

/// The admin API's gate: identifies the caller, checks the path's scope,
/// and passes the [`Caller`] on in the request's extensions.
pub async fn require(
    State(shared): State<Arc<Shared>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = match identify(&shared.admin_tokens, authorization, peer) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let need = need(req.method(), req.uri().path());
    let allowed = match need {
        Need::Read => caller.scopes.read,
        Need::Weights => caller.scopes.weights,
        Need::Profile => caller.scopes.profile,
    };
    if !allowed {
        let message = if caller.kind == "local" {
            "admin writes need an admin token, or a request from the gateway's own host, when no token is configured".to_owned()
        } else {
            format!(
                "admin token {:?} lacks the {} scope",
                caller.name,
                match need {
                    Need::Read => "read",
                    Need::Weights => "weights",
                    Need::Profile => "profile",
                }
            )
        };
        return error(StatusCode::FORBIDDEN, "permission_denied", &message);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn token(name: &str, secret: &str, scopes: Scopes) -> AdminToken {
        use sha2::Digest;
        AdminToken {
            name: name.to_owned(),
            digest: sha2::Sha256::digest(secret.as_bytes()).into(),
            scopes,
        }
    }

    #[test]
    fn without_tokens_only_loopback_callers_write() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let c = identify(&[], None, Some(local)).unwrap();
        assert!(c.scopes.weights && c.scopes.read);
        assert_eq!((c.name.as_str(), c.kind), ("local", "local"));
        let c = identify(&[], None, Some(remote)).unwrap();
        assert!(!c.scopes.weights && c.scopes.read);
        assert!(!identify(&[], None, None).unwrap().scopes.weights);
    }

    #[test]
    fn tokens_name_the_caller_and_carry_their_scopes() {
        let read_only = Scopes {
            read: true,
            ..Scopes::default()
        };
        let tokens = [
            token("ci", "s3cret", Scopes::ALL),
            token("grafana", "viewer", read_only),
        ];
        let c = identify(&tokens, Some(b"Bearer s3cret"), None).unwrap();
        assert_eq!((c.name.as_str(), c.kind), ("ci", "token"));
        assert!(c.scopes.weights);
        let c = identify(&tokens, Some(b"bearer viewer"), None).unwrap();
        assert_eq!(c.name, "grafana");
        assert!(!c.scopes.weights);
        let bad = identify(&tokens, Some(b"Bearer nope"), None).unwrap_err();
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        assert!(identify(&tokens, None, None).is_err());
        // A loopback peer gets nothing without a token once tokens exist.
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(identify(&tokens, None, Some(local)).is_err());
    }

    #[test]
    fn paths_need_their_scope() {
        use axum::http::Method;
        assert_eq!(need(&Method::GET, "/metrics"), Need::Read);
        assert_eq!(need(&Method::GET, "/admin/changes"), Need::Read);
        assert_eq!(
            need(&Method::PUT, "/admin/routes/chat/weights"),
            Need::Weights
        );
        assert_eq!(
            need(&Method::POST, "/admin/routes/chat/rollback"),
            Need::Weights
        );
        assert_eq!(
            need(&Method::DELETE, "/admin/rollbacks/chat/v2"),
            Need::Weights
        );
        assert_eq!(need(&Method::GET, "/debug/pprof/profile"), Need::Profile);
    }
}
