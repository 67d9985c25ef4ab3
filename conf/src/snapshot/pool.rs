//! The validated pools: backends, health checks and breaker settings.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::upstream::{PoolHeaders, UpstreamTls, check_headers, check_tls};
use super::values::MAX_TIMEOUT_MS;
use crate::error::Problems;
use crate::model::{Balance, HealthCheckKind, PoolConfig, Protocol};
use crate::names::{check_name, entry_path};
use crate::resilience::check::{Breaker, check_breaker};

/// Largest weight a backend may have.
pub const MAX_BACKEND_WEIGHT: i64 = 65_535;

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Protocol spoken upstream.
    pub protocol: Protocol,
    /// How requests are spread over the backends.
    pub balance: Balance,
    /// Backends with their weights.
    pub backends: Vec<Backend>,
    /// Backends given by host name, resolved by the gateway.
    pub names: Vec<NamedBackend>,
    /// How often those names are looked up again.
    pub refresh: Duration,
    /// Health checking.
    pub health: HealthCheck,
    /// Circuit breaker settings of each backend.
    pub breaker: Breaker,
    /// TLS to the backends.
    pub tls: Option<UpstreamTls>,
    /// Headers set on or removed from requests to the backends.
    pub headers: PoolHeaders,
    /// Keep the client's `Host`.
    pub preserve_host: bool,
}

/// A backend given by host name: the gateway resolves it, and every
/// address it gets becomes a backend with this weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedBackend {
    /// The host name (lower case).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The weight of each of its addresses.
    pub weight: u32,
}

/// A validated backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight within the pool (>= 1).
    pub weight: u32,
}

/// Validated health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: HealthCheckKind,
    /// Probe path for HTTP checks.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Longest a probe may take.
    pub timeout: Duration,
    /// Failures before unhealthy.
    pub unhealthy_threshold: usize,
    /// Successes before healthy.
    pub healthy_threshold: usize,
}

pub(super) fn check_pools(pools: &[PoolConfig], problems: &mut Problems) -> Vec<Pool> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let at = entry_path("pools", i, &p.name);
        check_name(&p.name, &format!("{at}.name"), problems);
        if !seen.insert(p.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate pool name");
        }
        if p.backends.is_empty() && !p.registered {
            problems.push(
                format!("{at}.backends"),
                "needs at least one backend (or registered = true for a pool of registered members)",
            );
        }
        let mut addrs = HashSet::new();
        let mut hosts = HashSet::new();
        let mut backends = Vec::with_capacity(p.backends.len());
        let mut names = Vec::new();
        for (j, b) in p.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            if !(1..=MAX_BACKEND_WEIGHT).contains(&b.weight) {
                problems.push(
                    format!("{bat}.weight"),
                    format!("{} must be between 1 and {MAX_BACKEND_WEIGHT}", b.weight),
                );
            }
            let weight = u32::try_from(b.weight.clamp(1, MAX_BACKEND_WEIGHT)).unwrap_or(1);
            if let Ok(addr) = b.address.parse::<SocketAddr>() {
                if !addrs.insert(addr) {
                    problems.push(format!("{bat}.address"), format!("{addr} is listed twice"));
                }
                backends.push(Backend { addr, weight });
            } else if let Some((host, port)) = parse_host_port(&b.address) {
                if !hosts.insert((host.clone(), port)) {
                    problems.push(
                        format!("{bat}.address"),
                        format!("{host}:{port} is listed twice"),
                    );
                }
                names.push(NamedBackend { host, port, weight });
            } else {
                problems.push(
                    format!("{bat}.address"),
                    format!(
                        "{} is not an IP:PORT or HOST:PORT address",
                        crate::error::quoted(&b.address)
                    ),
                );
            }
        }
        let refresh = match &p.resolve {
            Some(r) if !(100..=MAX_TIMEOUT_MS).contains(&r.refresh_ms) => {
                problems.push(
                    format!("{at}.resolve.refresh_ms"),
                    format!("{} must be between 100 and {MAX_TIMEOUT_MS}", r.refresh_ms),
                );
                Duration::from_secs(5)
            }
            Some(r) => Duration::from_millis(r.refresh_ms.unsigned_abs()),
            None => Duration::from_secs(5),
        };
        let h = &p.health_check;
        if !(50..=MAX_TIMEOUT_MS).contains(&h.interval_ms) {
            problems.push(
                format!("{at}.health_check.interval_ms"),
                format!("{} must be between 50 and {MAX_TIMEOUT_MS}", h.interval_ms),
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&h.timeout_ms) {
            problems.push(
                format!("{at}.health_check.timeout_ms"),
                format!("{} must be between 1 and {MAX_TIMEOUT_MS}", h.timeout_ms),
            );
        }
        for (name, v) in [
            ("unhealthy_threshold", h.unhealthy_threshold),
            ("healthy_threshold", h.healthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                problems.push(
                    format!("{at}.health_check.{name}"),
                    format!("{v} must be between 1 and 100"),
                );
            }
        }
        if h.kind == HealthCheckKind::Http {
            if p.protocol != Protocol::Http1 {
                problems.push(
                    format!("{at}.health_check.kind"),
                    "http checks need protocol = \"http1\"; use \"tcp\" for h2c pools",
                );
            }
            if !h.path.starts_with('/') {
                problems.push(format!("{at}.health_check.path"), "must start with '/'");
            }
        }
        let breaker = check_breaker(&p.breaker, &at, problems);
        let tls = check_tls(p.tls.as_ref(), p.protocol, &at, problems);
        let headers = check_headers(&p.headers, &at, problems);
        out.push(Pool {
            breaker,
            tls,
            headers,
            preserve_host: p.preserve_host,
            name: p.name.clone(),
            protocol: p.protocol,
            balance: p.balance,
            backends,
            names,
            refresh,
            health: HealthCheck {
                kind: h.kind,
                path: h.path.clone(),
                interval: Duration::from_millis(
                    h.interval_ms.clamp(50, MAX_TIMEOUT_MS).unsigned_abs(),
                ),
                timeout: Duration::from_millis(
                    h.timeout_ms.clamp(1, MAX_TIMEOUT_MS).unsigned_abs(),
                ),
                unhealthy_threshold: usize::try_from(h.unhealthy_threshold.clamp(1, 100))
                    .unwrap_or(1),
                healthy_threshold: usize::try_from(h.healthy_threshold.clamp(1, 100)).unwrap_or(1),
            },
        });
    }
    out
}

/// `HOST:PORT` with a DNS name (lower-cased): labels of letters, digits and
/// `-`, at most 253 bytes; a port from 1 to 65535.
fn parse_host_port(value: &str) -> Option<(String, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All digits and dots is a malformed IP address, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    ok.then(|| (host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::parse_host_port;

    #[test]
    fn host_port_names() {
        assert_eq!(
            parse_host_port("vllm.models.svc.cluster.local:8000"),
            Some(("vllm.models.svc.cluster.local".into(), 8000))
        );
        assert_eq!(
            parse_host_port("LocalHost:1"),
            Some(("localhost".into(), 1))
        );
        for bad in [
            "nope", "a:0", "a:70000", ":80", "-a:1", "a..b:1", "1.2.3:80", "a b:1", "a_b:1",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
    }
}
