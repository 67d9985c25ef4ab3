//! The validated listener settings: `[server]`, its `tls` and `tracing`.

use std::net::SocketAddr;
use std::time::Duration;

use super::values::{check_ms, parse_addr};
use crate::access::check::parse_digest;
use crate::error::Problems;
use crate::model::{Config, TracingConfig};
use crate::secrets::expand;

/// Validated listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Graceful shutdown budget.
    pub grace_period: Duration,
    /// Whether to write access-log lines.
    pub access_log: bool,
    /// How log lines are written.
    pub log_format: crate::model::LogFormat,
    /// Which HTTP/1.x path serves HTTP/1.x clients.
    pub http1_engine: crate::model::Http1Engine,
    /// Whether the worker threads share one work-stealing runtime.
    pub work_stealing: bool,
    /// Whether `X-Forwarded-For`/`-Proto` go upstream.
    pub forwarded_headers: bool,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The admin tokens (none: the admin API is open for reads, and writes
    /// only from the gateway's own host).
    pub admin_tokens: Vec<AdminToken>,
    /// Longest wait for a request header.
    pub header_read_timeout: Duration,
    /// The graceful-upgrade socket.
    pub upgrade_sock: String,
    /// Span export, when an OTLP endpoint is configured.
    pub tracing: Option<Tracing>,
    /// The TLS proxy listener, if any.
    pub tls: Option<TlsListener>,
    /// A hosts file consulted before the system resolver.
    pub hosts_file: Option<String>,
    /// Extra paths of the sandboxed gateway.
    pub sandbox: crate::model::SandboxConfig,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    /// Metrics, routes, weights and changes.
    pub read: bool,
    /// Write weights, roll back, clear rollbacks.
    pub weights: bool,
    /// CPU profiles.
    pub profile: bool,
}

impl Scopes {
    /// Every scope.
    pub const ALL: Self = Self {
        read: true,
        weights: true,
        profile: true,
    };
}

/// A validated admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Its name, for the audit log.
    pub name: String,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
    /// What it may do.
    pub scopes: Scopes,
}

/// A validated `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// Validated `[server.tracing]` with an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The OTLP/gRPC collector URL.
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
}

pub(super) fn check_server(config: &Config, problems: &mut Problems) -> Option<Server> {
    let s = &config.server;
    let proxy = parse_addr(&s.proxy, "server.proxy", problems);
    let admin = parse_addr(&s.admin, "server.admin", problems);
    if s.threads > 1024 {
        problems.push("server.threads", "must be at most 1024");
    }
    if s.grace_period_seconds > 3600 {
        problems.push("server.grace_period_seconds", "must be at most 3600");
    }
    let admin_tokens = check_admin_tokens(s, problems);
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => problems.push(
                format!("server.trusted_proxies[{i}]"),
                format!("{text:?} is not a network (10.0.0.0/8) or an address"),
            ),
        }
    }
    let header_read_timeout = check_ms(
        Some(s.header_read_timeout_ms),
        "server.header_read_timeout_ms".to_owned(),
        Duration::from_secs(10),
        problems,
    );
    if s.upgrade_sock.is_empty() {
        problems.push("server.upgrade_sock", "must be a path");
    }
    let tracing = check_tracing(&s.tracing, problems);
    for (kind, paths) in [("read", &s.sandbox.read), ("write", &s.sandbox.write)] {
        for (i, path) in paths.iter().enumerate() {
            if path.trim().is_empty() {
                problems.push(format!("server.sandbox.{kind}[{i}]"), "must be a path");
            }
        }
    }
    let tls = s.tls.as_ref().and_then(|t| {
        let listen = parse_addr(&t.listen, "server.tls.listen", problems);
        for (field, path) in [("cert", &t.cert), ("key", &t.key)] {
            if let Err(e) = std::fs::metadata(path) {
                problems.push(
                    format!("server.tls.{field}"),
                    format!("cannot read {path:?}: {e}"),
                );
            }
        }
        Some(TlsListener {
            listen: listen?,
            cert: t.cert.clone(),
            key: t.key.clone(),
        })
    });
    let (proxy, admin) = (proxy?, admin?);
    if proxy == admin && proxy.port() != 0 {
        problems.push("server.admin", "must differ from server.proxy");
    }
    if let Some(t) = &tls
        && t.listen.port() != 0
        && (t.listen == proxy || t.listen == admin)
    {
        problems.push(
            "server.tls.listen",
            "must differ from server.proxy and server.admin",
        );
    }
    Some(Server {
        proxy,
        admin,
        threads: s.threads,
        grace_period: Duration::from_secs(s.grace_period_seconds),
        access_log: s.access_log,
        log_format: s.log_format,
        http1_engine: s.http1_engine,
        work_stealing: s.work_stealing,
        forwarded_headers: s.forwarded_headers,
        trusted_proxies,
        admin_tokens,
        header_read_timeout,
        upgrade_sock: s.upgrade_sock.clone(),
        tracing,
        tls,
        hosts_file: s.hosts_file.clone(),
        sandbox: s.sandbox.clone(),
    })
}

const NOT_THE_TOKEN: &str = "must be the token's SHA-256 as 64 hex digits, never the token itself";

fn check_admin_tokens(s: &crate::model::ServerConfig, problems: &mut Problems) -> Vec<AdminToken> {
    let mut out = Vec::new();
    if let Some(text) = &s.admin_token_sha256 {
        let at = "server.admin_token_sha256";
        if let Some(text) = expand(text, at, problems) {
            match parse_digest(&text) {
                Some(digest) => out.push(AdminToken {
                    name: "admin".to_owned(),
                    digest,
                    scopes: Scopes::ALL,
                }),
                None => problems.push(at, NOT_THE_TOKEN),
            }
        }
    }
    for (i, t) in s.admin_tokens.iter().enumerate() {
        let at = format!("server.admin_tokens[{i}]");
        if t.name.is_empty() || t.name.len() > 64 {
            problems.push(format!("{at}.name"), "must be 1-64 bytes");
        } else if out.iter().any(|o: &AdminToken| o.name == t.name) {
            problems.push(
                format!("{at}.name"),
                format!(
                    "{:?} is taken (admin_token_sha256 is named \"admin\")",
                    t.name
                ),
            );
        }
        let digest = match expand(&t.sha256, &format!("{at}.sha256"), problems) {
            Some(text) => {
                let digest = parse_digest(&text);
                if digest.is_none() {
                    problems.push(format!("{at}.sha256"), NOT_THE_TOKEN);
                }
                digest
            }
            None => None,
        };
        let mut scopes = Scopes::default();
        if t.scopes.is_empty() {
            problems.push(
                format!("{at}.scopes"),
                "name at least one of read, weights, profile",
            );
        }
        for scope in &t.scopes {
            match scope.as_str() {
                "read" => scopes.read = true,
                "weights" => scopes.weights = true,
                "profile" => scopes.profile = true,
                other => problems.push(
                    format!("{at}.scopes"),
                    format!("unknown scope {other:?} (read, weights, profile)"),
                ),
            }
        }
        if let Some(digest) = digest {
            if out.iter().any(|o| o.digest == digest) {
                problems.push(
                    format!("{at}.sha256"),
                    "another admin token has the same digest",
                );
            }
            out.push(AdminToken {
                name: t.name.clone(),
                digest,
                scopes,
            });
        }
    }
    out
}

fn check_tracing(t: &TracingConfig, problems: &mut Problems) -> Option<Tracing> {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        problems.push(
            "server.tracing.sample_ratio",
            format!("{} must be between 0.0 and 1.0", t.sample_ratio),
        );
    }
    if t.service_name.is_empty() {
        problems.push("server.tracing.service_name", "must not be empty");
    }
    let endpoint = t.otlp_endpoint.as_ref()?;
    let ok = ["http://", "https://"].iter().any(|scheme| {
        endpoint
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if !ok {
        problems.push(
            "server.tracing.otlp_endpoint",
            format!("{endpoint:?} must be an http:// or https:// URL of an OTLP/gRPC collector"),
        );
    }
    Some(Tracing {
        endpoint: endpoint.clone(),
        service_name: t.service_name.clone(),
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
    })
}
