//! The file types: what an operator writes in TOML (or, later, JSON in etcd).
//!
//! These types mirror the document one to one and reject unknown fields, so a
//! typo is an error rather than a silently ignored setting. They are converted
//! into the validated runtime [`crate::Snapshot`] by [`crate::Snapshot::build`].

use serde::{Deserialize, Serialize};

/// Largest config document, in bytes: a config file, and each document under
/// the etcd prefix. Larger ones are refused before they are parsed.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Why a document of `len` bytes is refused, if it is.
pub fn oversized(len: usize) -> Option<String> {
    (len > MAX_DOCUMENT).then(|| {
        format!("the document is {len} bytes, larger than the limit of {MAX_DOCUMENT} bytes")
    })
}

/// A whole Weir config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener addresses and process settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Default timeouts for every route (a route may override them).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Named sets of upstream backends.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Routes, matched by host and longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Sandboxed Wasm content filters that routes refer to by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<crate::filters::types::FilterConfig>,
    /// Clients: API keys (as SHA-256 digests) and limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<crate::access::types::TenantConfig>,
    /// JWT issuers.
    #[serde(
        default,
        skip_serializing_if = "crate::access::types::AuthConfig::is_empty"
    )]
    pub auth: crate::access::types::AuthConfig,
    /// Where tenant limits are kept (like `[server]`, read from the file
    /// even when pools and routes come from etcd).
    #[serde(
        default,
        skip_serializing_if = "crate::access::types::LimitsConfig::is_default"
    )]
    pub limits: crate::access::types::LimitsConfig,
    /// Arms rolled back by a gateway's canary check (kept in etcd under
    /// `rollbacks/<route>/<arm>`; cleared with `weirctl rollback clear`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<crate::resilience::types::RollbackRecord>,
    /// Where pools, routes and timeouts come from when not from this file
    /// (read at start; changes need a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceConfig>,
}

/// The `[source]` table: an external config source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Take pools, routes and timeouts from etcd and watch them; this file
    /// then only provides `[server]` and `[source]`.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

/// `[source.etcd]`: where the live config is kept in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster, e.g. `["http://10.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Key prefix holding the config (default `/weir/`).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// File where the last applied config is kept, so a gateway started
    /// while etcd is unreachable still routes (no cache when absent).
    #[serde(default)]
    pub cache: Option<String>,
    /// User name for etcd authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for etcd authentication (needs `username`); `${file:PATH}`
    /// or `${env:NAME}` reads it from a file or the environment.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to the etcd endpoints (`https://` URLs).
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
    /// Longest wait for a connection to etcd, milliseconds (default 2000).
    #[serde(default = "default_etcd_connect_ms")]
    pub connect_timeout_ms: i64,
    /// Longest wait for one etcd request, milliseconds (default 5000).
    #[serde(default = "default_etcd_request_ms")]
    pub request_timeout_ms: i64,
    /// Lease TTL of the status this gateway keeps at `<prefix>-status/`
    /// for `weirctl status`, seconds (default 10): a replica that dies
    /// disappears from the list this long after its last keep-alive.
    #[serde(default = "default_status_ttl")]
    pub status_ttl_seconds: i64,
}

impl EtcdConfig {
    /// `endpoints` with every other setting at its default.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: default_etcd_prefix(),
            cache: None,
            username: None,
            password: None,
            tls: None,
            connect_timeout_ms: default_etcd_connect_ms(),
            request_timeout_ms: default_etcd_request_ms(),
            status_ttl_seconds: default_status_ttl(),
        }
    }
}

/// `[source.etcd.tls]`: PEM files for TLS to etcd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) that signed the etcd server certificates.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate, for clusters that require client auth (needs `key`).
    #[serde(default)]
    pub cert: Option<String>,
    /// Private key of the client certificate.
    #[serde(default)]
    pub key: Option<String>,
    /// Server name to verify, when it differs from the endpoint host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// The default etcd key prefix.
pub fn default_etcd_prefix() -> String {
    "/weir/".to_owned()
}
fn default_etcd_connect_ms() -> i64 {
    2_000
}
fn default_etcd_request_ms() -> i64 {
    5_000
}

fn default_status_ttl() -> i64 {
    10
}

/// Listener addresses and process settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the proxy listener, e.g. `127.0.0.1:8080`.
    #[serde(default = "default_proxy")]
    pub proxy: String,
    /// Address of the admin listener (health, readiness, metrics, routes).
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Proxy worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub threads: usize,
    /// Seconds a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// Write one access-log line per request (at `info`, target `weir::access`).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Log lines as `text` (key=value, the default) or `json` (one JSON
    /// object per line, for log shippers).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Which HTTP/1.x path serves plaintext and TLS HTTP/1.x clients:
    /// `direct` (the default), the gateway's own loop for plain requests
    /// (no body or a `Content-Length` one up to 1 MiB, no upgrade, every
    /// pool HTTP/1), which hands anything else to Pingora on the same
    /// connection, or `pingora` for every request. The environment
    /// variable `WEIR_HTTP1_ENGINE` overrides it.
    #[serde(default, skip_serializing_if = "Http1Engine::is_default")]
    pub http1_engine: Http1Engine,
    /// How the proxy's worker threads share connections: `false` (the
    /// default) gives each thread a runtime of its own that serves the
    /// connections it is handed, as nginx's workers do (no task moves
    /// between threads: cheaper per request); `true` runs one runtime
    /// whose idle threads take tasks from busy ones (evens out a few
    /// long, CPU-heavy connections, at a cost on every request).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub work_stealing: bool,
    /// Send `X-Forwarded-For` and `X-Forwarded-Proto` upstream (default
    /// true). A client's own `X-Forwarded-For` is kept (and extended) only
    /// when it connects from one of `trusted_proxies`; otherwise it is
    /// replaced by the client's address.
    #[serde(default = "default_true")]
    pub forwarded_headers: bool,
    /// Networks of the proxies in front of the gateway (CIDRs such as
    /// `10.0.0.0/8`, or single addresses) whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are believed; the access log's client is then
    /// the first address, from the right, that is not one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// SHA-256 (hex, optionally `sha256:`-prefixed) of the token the admin
    /// API requires as `Authorization: Bearer <token>` (all paths but
    /// `/healthz` and `/readyz`); absent = the admin API is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_sha256: Option<String>,
    /// Named admin tokens with scopes (`[[server.admin_tokens]]`): the
    /// audit log names the token that made a change, and a token without
    /// the `weights` scope cannot write. `admin_token_sha256` is a token
    /// named `admin` with every scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_tokens: Vec<AdminTokenConfig>,
    /// Longest wait for the next bytes of a client's request header (also
    /// the idle time of a kept-alive client connection, and between reads of
    /// a body), milliseconds, rounded up to whole seconds for the header
    /// (default 10000); the connection is closed after.
    #[serde(default = "default_header_read_ms")]
    pub header_read_timeout_ms: i64,
    /// Unix socket a new `weir --upgrade` takes the proxy's listening socket
    /// over through (graceful upgrade); both processes must name the same.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// A second proxy listener speaking TLS (ALPN `h2` and `http/1.1`), with
    /// the same routes as `proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListenerConfig>,
    /// OpenTelemetry spans of each request, exported over OTLP (off unless
    /// `otlp_endpoint` is set).
    #[serde(default, skip_serializing_if = "TracingConfig::is_default")]
    pub tracing: TracingConfig,
    /// A hosts(5)-format file whose names resolve before the system
    /// resolver is asked (re-read at every refresh): for names the system
    /// does not know, and for tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<String>,
    /// `[server.sandbox]`: paths the sandboxed gateway may reach beyond
    /// the ones this file names (read at start; `weir --sandbox`).
    #[serde(default, skip_serializing_if = "SandboxConfig::is_empty")]
    pub sandbox: SandboxConfig,
}

/// `[server.sandbox]`: extra file-system rights of the sandboxed gateway
/// (`weir --sandbox`, docs/security.md). The folders of the files this
/// config names are readable anyway; list here what a later config (from
/// etcd, or a reloaded file) may name elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Folders (or files) that may be read, with everything beneath.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Folders (or files) that may be read and written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
}

impl SandboxConfig {
    /// Whether nothing is listed (then it is not serialized).
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which HTTP/1.x path serves HTTP/1.x clients (`[server] http1_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// Pingora's HTTP/1 proxy, for every request.
    Pingora,
    /// The gateway's direct path for plain requests, Pingora for the rest.
    #[default]
    Direct,
}

impl Http1Engine {
    /// Whether this is the default (then it is not serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The engine `WEIR_HTTP1_ENGINE` names (`pingora` or `direct`), if set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var("WEIR_HTTP1_ENGINE").as_deref() {
            Err(_) | Ok("") => Ok(None),
            Ok("pingora") => Ok(Some(Self::Pingora)),
            Ok("direct") => Ok(Some(Self::Direct)),
            Ok(other) => Err(format!(
                "WEIR_HTTP1_ENGINE={other:?}: expected \"pingora\" or \"direct\""
            )),
        }
    }
}

/// `[[server.admin_tokens]]`: one named admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// The name the audit log records for changes made with it (1-64
    /// bytes, unique).
    pub name: String,
    /// SHA-256 of the token (hex, optionally `sha256:`-prefixed).
    pub sha256: String,
    /// What it may do: `read` (metrics, routes, weights, changes),
    /// `weights` (write weights, roll back, clear rollbacks), `profile`
    /// (CPU profiles).
    pub scopes: Vec<String>,
}

/// `[server.tls]`: the TLS proxy listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address of the TLS listener, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// PEM certificate chain (leaf first).
    pub cert: String,
    /// PEM private key of the certificate.
    pub key: String,
}

/// `[server.tracing]`: span export over OTLP/gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; absent = no spans
    /// (the `traceparent` is still propagated).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `weir`).
    pub service_name: String,
    /// Share of new traces recorded, 0.0-1.0 (default 1.0); a caller's
    /// `traceparent` decides for the traces it started (its sampled flag).
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "weir".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    /// Whether every field has its default (then it is not serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            proxy: default_proxy(),
            admin: default_admin(),
            threads: 0,
            grace_period_seconds: default_grace(),
            access_log: true,
            log_format: LogFormat::Text,
            http1_engine: Http1Engine::Direct,
            work_stealing: false,
            forwarded_headers: true,
            trusted_proxies: Vec::new(),
            admin_token_sha256: None,
            admin_tokens: Vec::new(),
            header_read_timeout_ms: default_header_read_ms(),
            upgrade_sock: default_upgrade_sock(),
            tls: None,
            tracing: TracingConfig::default(),
            hosts_file: None,
            sandbox: SandboxConfig::default(),
        }
    }
}

fn default_proxy() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_admin() -> String {
    "127.0.0.1:9090".to_owned()
}
fn default_upgrade_sock() -> String {
    "/tmp/weir-upgrade.sock".to_owned()
}
fn default_header_read_ms() -> i64 {
    10_000
}
fn default_grace() -> u64 {
    5
}
fn default_true() -> bool {
    true
}

/// Upstream timeouts in milliseconds. Omitted values fall back to the
/// top-level `[timeouts]` table, then to the built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP connect timeout to one backend (default 1000 ms).
    pub connect_ms: Option<i64>,
    /// Longest wait for the next bytes from the upstream, which bounds the gap
    /// between streamed chunks (default 30000 ms).
    pub read_ms: Option<i64>,
    /// Longest time to write the request to the upstream (default 60000 ms).
    pub write_ms: Option<i64>,
    /// Longest time for the whole exchange with the upstream, from choosing
    /// a backend to the last byte of the answer (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<i64>,
}

/// The wire protocol a pool's backends speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC backends).
    H2c,
    /// HTTP/2 over TLS, negotiated with ALPN (needs `tls`).
    H2,
}

/// `resolve = { refresh_ms }`: how often the pool's host names are looked
/// up again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveConfig {
    /// Milliseconds between lookups (default 5000, 100 to 3600000).
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: i64,
}

fn default_refresh_ms() -> i64 {
    5_000
}

/// TLS to a pool's backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Server name sent (SNI) and verified; default: the backend's host
    /// name, or its IP address (verified against the certificate's IP
    /// addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of the CAs that may sign the backends' certificates;
    /// default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Verify the backends' certificates (default true; false logs a
    /// warning at every load).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM file of a client certificate chain (with `client_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM file of the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// Headers the gateway sets on, or removes from, every request it sends to
/// a pool's backends. Values may name secrets: `${env:NAME}` (an
/// environment variable of the gateway) or `${file:PATH}` (a file's
/// contents, without a trailing newline), read when the config is loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolHeadersConfig {
    /// Header name → value.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: std::collections::BTreeMap<String, String>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl PoolHeadersConfig {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// How a pool spreads requests over its backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices (drawn by weight) on a peak-EWMA load estimate:
    /// requests in flight (and their age) times latency, plus the queue
    /// depth the backend reports.
    #[default]
    LeastRequest,
    /// Weighted round robin, blind to load.
    RoundRobin,
}

/// A named set of backends that serve one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name that arms refer to.
    pub name: String,
    /// Protocol spoken to every backend of the pool.
    #[serde(default)]
    pub protocol: Protocol,
    /// How requests are spread over the backends (default least request).
    #[serde(default, skip_serializing_if = "is_default_balance")]
    pub balance: Balance,
    /// TLS to the backends (none: plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Headers set on or removed from every request to the backends
    /// (credentials of a provider, say).
    #[serde(default, skip_serializing_if = "PoolHeadersConfig::is_empty")]
    pub headers: PoolHeadersConfig,
    /// How backends given by host name are re-resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<ResolveConfig>,
    /// Send the client's `Host` upstream; by default the backend's host
    /// name (or `tls.sni`) replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_host: bool,
    /// The backends; traffic is spread by their weights.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Backends register themselves in etcd (`weir-engine --register-etcd
    /// URL --pool NAME`) and join `backends`; the list may then be empty
    /// (the pool has no backend until one registers). Registered members
    /// join any pool; this only allows the empty list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registered: bool,
    /// Active health checking of the backends.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Circuit breaker of each backend (on by default).
    #[serde(
        default,
        skip_serializing_if = "crate::resilience::types::BreakerConfig::is_default"
    )]
    pub breaker: crate::resilience::types::BreakerConfig,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `IP:PORT`, or `HOST:PORT`: a name the gateway resolves off the
    /// request path (every address it resolves to becomes a backend).
    pub address: String,
    /// Relative share of the pool's traffic (default 1, must be >= 1).
    #[serde(default = "default_backend_weight")]
    pub weight: i64,
}

fn is_default_balance(b: &Balance) -> bool {
    *b == Balance::default()
}

fn default_backend_weight() -> i64 {
    1
}

/// How backends are probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `tcp` (a connect succeeds), `http` (`GET path` answers 2xx) or `none`.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// Path probed by `http` checks.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Milliseconds between probes (default 1000, at least 50).
    #[serde(default = "default_health_interval")]
    pub interval_ms: i64,
    /// Milliseconds a probe may take before it counts as failed (default 1000).
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: i64,
    /// Consecutive failures before a backend is marked unhealthy (default 3).
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: i64,
    /// Consecutive successes before it is healthy again (default 2).
    #[serde(default = "default_healthy")]
    pub healthy_threshold: i64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::default(),
            path: default_health_path(),
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            unhealthy_threshold: default_unhealthy(),
            healthy_threshold: default_healthy(),
        }
    }
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}
fn default_health_interval() -> i64 {
    1000
}
fn default_health_timeout() -> i64 {
    1000
}
fn default_unhealthy() -> i64 {
    3
}
fn default_healthy() -> i64 {
    2
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect must succeed.
    #[default]
    Tcp,
    /// An HTTP `GET` of `path` must answer 2xx (HTTP/1.1 pools only).
    Http,
    /// No active checks: every backend counts as healthy (connect failures
    /// still retry on another backend).
    None,
}

/// A route: which requests it takes and how it splits them over arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, reported in `x-weir-route` and metrics.
    pub name: String,
    /// Path prefix the request path must start with (default `/`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Exact `Host` (without port) the request must carry; absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// A gRPC service (`inference.GRPCInferenceService`) or method
    /// (`inference.GRPCInferenceService/ModelInfer`): the route takes only
    /// gRPC calls to it (instead of a `prefix`); its pools speak `h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Models this route serves: the `model` field of an OpenAI JSON body
    /// or the name in an Open Inference Protocol path (`/v2/models/NAME/...`).
    /// `tiny-lm` also takes `tiny-lm:2`. Empty = any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Header whose value names an arm and forces it (default `x-ab-group`).
    #[serde(default = "default_ab_header")]
    pub ab_header: String,
    /// Header whose value keeps one user on one arm (weighted rendezvous hash).
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// Arm used when the chosen one cannot serve (and the stable baseline).
    #[serde(default)]
    pub fallback: Option<String>,
    /// Per-route timeout overrides.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Automatic rollback of canary arms to the fallback arm (needs `fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<crate::resilience::types::RollbackConfig>,
    /// Retries on another backend, and their budget.
    #[serde(
        default,
        skip_serializing_if = "crate::resilience::types::RetryConfig::is_default"
    )]
    pub retry: crate::resilience::types::RetryConfig,
    /// The versions traffic is split over.
    #[serde(default)]
    pub arms: Vec<ArmConfig>,
    /// Whether callers must authenticate (`"required"`) or not (`"none"`).
    #[serde(
        default,
        skip_serializing_if = "crate::access::types::AuthMode::is_none"
    )]
    pub auth: crate::access::types::AuthMode,
    /// Tenants allowed on this route (empty = every authenticated tenant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Largest request body, bytes (default 32 MiB); larger ones get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<i64>,
    /// Content filters over request and response bodies.
    #[serde(
        default,
        skip_serializing_if = "crate::filters::types::RouteFiltersConfig::is_empty"
    )]
    pub filters: crate::filters::types::RouteFiltersConfig,
}

fn default_prefix() -> String {
    "/".to_owned()
}
fn default_ab_header() -> String {
    "x-ab-group".to_owned()
}

/// One arm of a route: a pool and its share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// Unique name within the route, reported in `x-weir-arm`.
    pub name: String,
    /// The pool that serves this arm.
    pub pool: String,
    /// Relative share of weighted and sticky traffic (>= 0; 0 = only by A/B header).
    pub weight: i64,
    /// The model name this arm's upstream knows: an OpenAI body's `model`
    /// is rewritten to it on the way up, and the answer's `model` (JSON and
    /// every SSE chunk) back to what the client asked for. A request that
    /// names this model exactly is sent to this arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}
