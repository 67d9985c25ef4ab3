//! Validated connection settings for etcd: the `[source.etcd]` table and
//! the `--register-etcd` flags, checked the same way. Connecting is in
//! `client`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Problems;
use crate::model::{EtcdConfig, EtcdTlsConfig};

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Default per-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(5_000);

/// PEM files for TLS to etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Server name to verify.
    pub domain: Option<String>,
}

/// How to reach the etcd cluster that holds the config.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs (`http://HOST:PORT` or `https://HOST:PORT`).
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/` (e.g. `/weir/`).
    pub prefix: String,
    /// Last-good cache file, if any.
    pub cache: Option<PathBuf>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// TLS files.
    pub tls: Option<TlsFiles>,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for one request.
    pub request_timeout: Duration,
    /// Lease TTL of a gateway's replica status.
    pub status_ttl: Duration,
}

impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cache", &self.cache)
            .field("user", &self.user.as_ref().map(|(u, _)| u.as_str()))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl fmt::Display for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd {} {}", self.endpoints.join(","), self.prefix)
    }
}

impl EtcdSettings {
    /// Settings for `endpoints` under `prefix` with every default. The
    /// values are checked with [`EtcdSettings::validate`].
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: normalize_prefix(prefix),
            cache: None,
            user: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            status_ttl: Duration::from_secs(10),
        }
    }

    /// Converts the `[source.etcd]` table, recording problems under `at`.
    pub fn from_config(c: &EtcdConfig, at: &str, problems: &mut Problems) -> Self {
        let mut s = Self::new(c.endpoints.clone(), &c.prefix);
        s.cache = c.cache.as_ref().map(PathBuf::from);
        match (&c.username, &c.password) {
            (Some(u), Some(p)) => {
                if let Some(p) = crate::secrets::expand(p, &format!("{at}.password"), problems) {
                    s.user = Some((u.clone(), p));
                }
            }
            (Some(u), None) => s.user = Some((u.clone(), String::new())),
            (None, Some(_)) => problems.push(format!("{at}.password"), "needs username"),
            (None, None) => {}
        }
        if let Some(t) = &c.tls {
            s.tls = Some(tls_files(t, &format!("{at}.tls"), problems));
        }
        for (name, ms, field) in [
            (
                "connect_timeout_ms",
                c.connect_timeout_ms,
                &mut s.connect_timeout,
            ),
            (
                "request_timeout_ms",
                c.request_timeout_ms,
                &mut s.request_timeout,
            ),
        ] {
            if (1..=600_000).contains(&ms) {
                *field = Duration::from_millis(ms.unsigned_abs());
            } else {
                problems.push(
                    format!("{at}.{name}"),
                    format!("{ms} must be between 1 and 600000"),
                );
            }
        }
        if (1..=300).contains(&c.status_ttl_seconds) {
            s.status_ttl = Duration::from_secs(c.status_ttl_seconds.unsigned_abs());
        } else {
            problems.push(
                format!("{at}.status_ttl_seconds"),
                format!("{} must be between 1 and 300", c.status_ttl_seconds),
            );
        }
        s.validate(at, problems);
        s
    }

    /// Checks endpoints and prefix.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.endpoints.is_empty() {
            problems.push(format!("{at}.endpoints"), "needs at least one endpoint");
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(hostport) if !hostport.is_empty() && !hostport.contains('/') => {}
                _ => problems.push(
                    format!("{at}.endpoints[{i}]"),
                    format!("{e:?} must look like http://HOST:PORT or https://HOST:PORT"),
                ),
            }
            if e.starts_with("http://") && self.tls.is_some() {
                problems.push(
                    format!("{at}.endpoints[{i}]"),
                    "TLS options need https:// endpoints",
                );
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.contains("//") {
            problems.push(
                format!("{at}.prefix"),
                format!(
                    "{:?} must start with '/' and name a key prefix such as \"/weir/\"",
                    self.prefix
                ),
            );
        }
    }

    /// A full key relative to the prefix (`None` for keys outside it).
    pub fn relative(&self, key: &[u8]) -> Option<String> {
        let rel = key.strip_prefix(self.prefix.as_bytes())?;
        Some(String::from_utf8_lossy(rel).into_owned())
    }

    /// The full key for a key relative to the prefix.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }
}

/// `weir` → `/weir/`, `/weir` → `/weir/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 2);
    if !prefix.starts_with('/') {
        p.push('/');
    }
    p.push_str(prefix);
    if !p.ends_with('/') {
        p.push('/');
    }
    p
}

fn tls_files(t: &EtcdTlsConfig, at: &str, problems: &mut Problems) -> TlsFiles {
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(format!("{at}.key"), "cert needs key");
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{at}.cert"), "key needs cert");
            None
        }
    };
    TlsFiles {
        ca: t.ca.as_ref().map(PathBuf::from),
        identity,
        domain: t.domain.clone(),
    }
}
