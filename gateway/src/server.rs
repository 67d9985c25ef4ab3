//! Process wiring: the Pingora server, the proxy service and the control
//! service (config source, admin listener, readiness).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{BackgroundService, background_service};
use weir_conf::etcd::EtcdSettings;
use weir_conf::model::EtcdConfig;
use weir_conf::{Config, ConfigError, Snapshot};

use crate::listen::ListenPort;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::state::{Origin, Shared};

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The demo config compiled into the binary.
    Embedded,
    /// A TOML file, watched for changes.
    File(PathBuf),
    /// Pools, routes and timeouts from etcd, watched; `[server]` from `base`
    /// (the file, or the embedded demo config).
    Etcd {
        /// The file or demo config, with the command-line etcd flags applied.
        base: Box<Config>,
        /// How to reach etcd.
        settings: Box<EtcdSettings>,
    },
}

/// Command-line settings of the etcd source; they override `[source.etcd]`.
#[derive(Debug, Clone, Default)]
pub struct EtcdFlags {
    /// `--etcd URL[,URL]`.
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`.
    pub prefix: Option<String>,
    /// `--etcd-cache`.
    pub cache: Option<PathBuf>,
}

impl ConfigSource {
    /// Chooses the source: etcd when `flags` name endpoints or the config has
    /// a `[source.etcd]` table, else the file, else the embedded demo config.
    pub fn resolve(file: Option<PathBuf>, flags: EtcdFlags) -> Result<Self, ConfigError> {
        let plain = match &file {
            Some(p) => ConfigSource::File(p.clone()),
            None => ConfigSource::Embedded,
        };
        let mut base = match &file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
                weir_conf::parse_toml(&text, &p.display().to_string())?
            }
            None => weir_conf::parse_toml(weir_conf::DEMO_CONFIG, "embedded demo config")?,
        };
        let from_file = base.source.as_ref().and_then(|s| s.etcd.clone());
        let mut etcd = match (from_file, flags.endpoints.is_empty()) {
            (Some(e), _) => e,
            (None, false) => EtcdConfig::new(Vec::new()),
            (None, true) => {
                if flags.prefix.is_some() || flags.cache.is_some() {
                    let mut problems = weir_conf::Problems::default();
                    problems.push("--etcd", "--etcd-prefix and --etcd-cache need --etcd URL");
                    return Err(ConfigError::Invalid { problems });
                }
                return Ok(plain);
            }
        };
        if !flags.endpoints.is_empty() {
            etcd.endpoints = flags.endpoints;
        }
        if let Some(prefix) = flags.prefix {
            etcd.prefix = prefix;
        }
        if let Some(cache) = flags.cache {
            etcd.cache = Some(cache.display().to_string());
        }
        base.source.get_or_insert_default().etcd = Some(etcd.clone());
        // Validates [server] and [source] (pools and routes come from etcd).
        Snapshot::build(base.clone())?;
        // Snapshot::build checked [source.etcd] with these same rules.
        let mut problems = weir_conf::Problems::default();
        let settings = EtcdSettings::from_config(&etcd, "source.etcd", &mut problems);
        Ok(ConfigSource::Etcd {
            base: Box::new(base),
            settings: Box::new(settings),
        })
    }

    /// Loads and validates the config once (for etcd: the base config, whose
    /// `[server]` table is used).
    pub fn load(&self) -> Result<Snapshot, ConfigError> {
        match self {
            ConfigSource::Embedded => weir_conf::demo(),
            ConfigSource::File(p) => weir_conf::load_file(p),
            ConfigSource::Etcd { base, .. } => Snapshot::build(base.as_ref().clone()),
        }
    }

    /// Where a snapshot loaded by [`ConfigSource::load`] comes from.
    fn origin(&self) -> Origin {
        match self {
            ConfigSource::File(p) => Origin::File(p.display().to_string()),
            ConfigSource::Embedded | ConfigSource::Etcd { .. } => Origin::Embedded,
        }
    }
}

/// Binds `addr` once the old process of a graceful upgrade lets it go.
async fn bind_when_free(addr: SocketAddr) -> tokio::net::TcpListener {
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "admin listener taken over");
                return l;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The proxy's listener app: Pingora's HTTP proxy, with the wait for a
/// client's request header bounded by `[server] header_read_timeout_ms`
/// rather than Pingora's fixed 60 s: the whole header (all its reads
/// together, and the idle time of a kept-alive connection before its next
/// request) and, on a new connection, the first bytes that tell HTTP/2 from
/// HTTP/1.x (patched Pingora, see `third_party/pingora/PATCHES.md`).
///
/// At shutdown, Pingora closes the client connections that sit idle between
/// two requests at once; a client that is just sending its next request on
/// one gets a reset. The listener waits half the grace period first: every
/// request in that time is answered with `Connection: close`, so busy
/// clients leave on their own (to the new process, in an upgrade).
struct Listener {
    proxy: Arc<pingora_proxy::HttpProxy<Gateway>>,
    /// The direct HTTP/1.x path, when on.
    direct: Option<crate::proxy::direct::Direct>,
    header_timeout: Duration,
    drain: Duration,
}

#[async_trait]
impl HttpServerApp for Listener {
    // A plain future, not boxed per request (third_party/pingora/PATCHES.md,
    // patch 5): the proxy's future is built in place inside the connection's.
    fn process_new_http(
        self: &Arc<Self>,
        mut session: pingora_core::protocols::http::ServerSession,
        shutdown: &ShutdownWatch,
    ) -> impl std::future::Future<Output = Option<ReusedHttpStream>> + Send {
        if !*shutdown.borrow() {
            let secs = self.header_timeout.as_secs_f64().ceil().max(1.0) as u64;
            session.set_keepalive(Some(secs));
        }
        session.set_read_timeout(Some(self.header_timeout));
        session.set_request_header_timeout(Some(self.header_timeout));
        // Pipelined HTTP/1.1 requests are answered one after the other, in
        // order (RFC 9112 §9.3.2); without this Pingora answers the first
        // and closes the connection on the rest.
        session.set_pipelining_enabled(true);
        // Field names are not kept in the case they were sent in (HTTP/1.x
        // names are case-insensitive; HTTP/2 ones lower case): one header
        // map per request instead of two (Pingora patch 12). The answer
        // follows the request.
        session.set_keep_header_case(false);
        self.proxy.process_new_http(session, shutdown)
    }

    fn process_http1(
        self: &Arc<Self>,
        stream: pingora_core::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> impl std::future::Future<Output = ()> + Send {
        use crate::proxy::direct::Served;
        use pingora_core::protocols::http::ServerSession;
        async move {
            let Some(direct) = &self.direct else {
                let session = ServerSession::new_http1(stream);
                return pingora_core::apps::serve_http1(self, session, shutdown).await;
            };
            let (idle, header) = (self.header_timeout, self.header_timeout);
            match direct
                .serve(stream, idle, header, || *shutdown.borrow())
                .await
            {
                Served::Closed => {}
                Served::HandOver(stream, prefix) => {
                    let mut session = ServerSession::new_http1(stream);
                    if !prefix.is_empty() {
                        session.set_pipelined_prefix(prefix);
                    }
                    pingora_core::apps::serve_http1(self, session, shutdown).await;
                }
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    fn h2_options(&self) -> Option<pingora_core::protocols::http::v2::server::H2Options> {
        self.proxy.h2_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(self.drain).await;
        self.proxy.http_cleanup().await
    }
}

/// The admin listener: bound, or (during a graceful upgrade, while the old
/// process still holds the port) to be bound once the port is free.
enum AdminSocket {
    Bound(TcpListener),
    Later(SocketAddr),
}

fn bind_admin(addr: SocketAddr, upgrade: bool) -> anyhow::Result<(AdminSocket, SocketAddr)> {
    match TcpListener::bind(addr) {
        Ok(l) => {
            l.set_nonblocking(true)?;
            let local = l.local_addr()?;
            Ok((AdminSocket::Bound(l), local))
        }
        Err(e) if upgrade && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::info!(%addr, "admin port still held by the old process; taking it once it is free");
            Ok((AdminSocket::Later(addr), addr))
        }
        Err(e) => Err(e).with_context(|| format!("cannot bind admin listener {addr}")),
    }
}

/// Runs the gateway on `loaded` (what [`ConfigSource::load`] gave) until it
/// is told to stop. With `upgrade`, the proxy's listening socket is taken
/// over from the running process (see `--upgrade`).
pub fn serve(
    source: ConfigSource,
    loaded: Result<Snapshot, ConfigError>,
    upgrade: bool,
    sandbox: weir_conf::sandbox::Mode,
) -> anyhow::Result<()> {
    let snapshot = loaded.map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let proxy_port = ListenPort::reserve(snapshot.server.proxy, upgrade)?;
    let proxy_addr = proxy_port.addr;
    let mut listeners = vec![proxy_port];
    let (admin, admin_addr) = bind_admin(snapshot.server.admin, upgrade)?;

    let shared = Arc::new(Shared::new(
        Metrics::new()?,
        snapshot.server.admin_tokens.clone(),
    ));
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "weir".to_owned());
    shared.set_rollback_sink(crate::state::RollbackSink {
        etcd: match &source {
            ConfigSource::Etcd { settings, .. } => Some(settings.as_ref().clone()),
            _ => None,
        },
        identity: format!("{host} {proxy_addr}"),
    });
    let threads = match snapshot.server.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let grace = snapshot.server.grace_period.as_secs();
    // Nothing here reads how long a stream's reads and writes waited:
    // timing them costs two clock readings for every read that waits
    // (Pingora patch 17).
    pingora_core::protocols::l4::stream::set_pending_time_tracking(false);
    let conf = ServerConf {
        threads,
        work_stealing: snapshot.server.work_stealing,
        // The grace period is the whole budget: Pingora waits all of it for
        // what is in flight, then stops its runtimes; a second wait of the
        // same length for tasks still running (a stream longer than the
        // grace period) would double the time to exit.
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(0),
        upgrade_sock: snapshot.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // A graceful upgrade takes the old process's sockets over here, through
    // the upgrade socket: before the sandbox, which leaves no folder of it
    // writable.
    server.bootstrap();

    // No thread has started yet (Landlock binds only threads started
    // after it): the sandbox now, the exporter and Pingora's runtimes after.
    let (config_file, cache) = match &source {
        ConfigSource::File(p) => (Some(p.as_path()), None),
        ConfigSource::Etcd { settings, .. } => (None, settings.cache.as_deref()),
        ConfigSource::Embedded => (None, None),
    };
    crate::sandbox::enter(
        sandbox,
        &crate::sandbox::rules(&snapshot, config_file, cache),
    )?;
    shared.metrics.sandbox_enabled.set(i64::from(
        crate::sandbox::APPLIED
            .get()
            .is_some_and(weir_conf::sandbox::Report::enabled),
    ));
    if let Some(settings) = &snapshot.server.tracing {
        let otel = crate::otel::Otel::start(settings)
            .map_err(|e| anyhow::anyhow!("cannot start the OTLP exporter: {e}"))?;
        tracing::info!(endpoint = %settings.endpoint, "exporting spans over OTLP");
        let _ = shared.otel.set(otel);
    }

    let mut http =
        pingora_proxy::http_proxy(&server.configuration, Gateway::new(Arc::clone(&shared)));
    // HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what gRPC clients
    // speak in plaintext) on the same port: a connection that opens with the
    // HTTP/2 preface is served as HTTP/2.
    // The first bytes of a connection must arrive within the header
    // timeout too: before them Pingora cannot tell HTTP/2 from HTTP/1.x.
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2c_preface_timeout = Some(snapshot.server.header_read_timeout);
    http.server_options = Some(options);
    let engine = weir_conf::model::Http1Engine::from_env()
        .map_err(|e| anyhow::anyhow!(e))?
        .unwrap_or(snapshot.server.http1_engine);
    let direct = (engine == weir_conf::model::Http1Engine::Direct)
        .then(|| crate::proxy::direct::Direct::new(Arc::clone(&shared)));
    let app = Listener {
        proxy: Arc::new(http),
        direct,
        header_timeout: snapshot.server.header_read_timeout,
        drain: snapshot.server.grace_period / 2,
    };
    let mut proxy = pingora_core::services::listening::Service::new("weir proxy".to_owned(), app);
    // No L4 read buffer on plaintext connections: Pingora reads request
    // headers and bodies into buffers of its own, and a 64 KiB buffer per
    // accepted connection is what an idle or slow client costs the most.
    proxy.add_listener(
        pingora_core::listeners::ListenerConfig::tcp(proxy_addr.to_string())
            .l4_buffer(pingora_core::protocols::l4::stream::L4BufferSettings::default().read(0)),
    );
    let mut tls_addr = None;
    if let Some(tls) = &snapshot.server.tls {
        let port = ListenPort::reserve(tls.listen, upgrade)?;
        let addr = port.addr;
        listeners.push(port);
        tls_addr = Some(addr);
        let mut settings =
            pingora_core::listeners::tls::TlsSettings::intermediate(&tls.cert, &tls.key)
                .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
        // ALPN: HTTP/2 (gRPC) preferred, HTTP/1.1 allowed.
        settings.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, settings);
    }

    // From etcd, the first snapshot is the first one read there.
    let first = (!matches!(source, ConfigSource::Etcd { .. })).then_some(snapshot);
    let control = Control {
        shared,
        source,
        first: Mutex::new(first),
        admin: Mutex::new(Some(admin)),
        listeners: Mutex::new(listeners),
        proxy_addr,
        admin_addr,
        host: host.clone(),
    };
    server.add_service(proxy);
    server.add_service(background_service("control", control));

    // The launch line that tests and scripts wait for.
    match tls_addr {
        Some(tls) => println!("weir listening proxy={proxy_addr} admin={admin_addr} tls={tls}"),
        None => println!("weir listening proxy={proxy_addr} admin={admin_addr}"),
    }
    tracing::info!(%proxy_addr, %admin_addr, threads, "weir starting");
    server.run_forever();
}

/// Config source, admin server and readiness, on their own runtime.
struct Control {
    shared: Arc<Shared>,
    source: ConfigSource,
    first: Mutex<Option<Snapshot>>,
    admin: Mutex<Option<AdminSocket>>,
    /// The proxy listener first, then the TLS one if configured.
    listeners: Mutex<Vec<ListenPort>>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    host: String,
}

impl Control {
    fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
        slot.lock().ok().and_then(|mut s| s.take())
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        let admin = Self::take(&self.admin);
        let app = crate::admin::router(Arc::clone(&self.shared));
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let listener = match admin {
                Some(AdminSocket::Bound(l)) => tokio::net::TcpListener::from_std(l),
                // Off the startup path: the proxy serves meanwhile.
                Some(AdminSocket::Later(addr)) => Ok(bind_when_free(addr).await),
                None => return,
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot use the admin listener");
                    return;
                }
            };
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        if let Some(snapshot) = Self::take(&self.first) {
            match self.shared.publish(snapshot, self.source.origin()).await {
                Ok(generation) => tracing::info!(generation, "config applied"),
                Err(e) => self.shared.reject("startup", &e),
            }
        }
        tasks.spawn(crate::source::watch_names(Arc::clone(&self.shared)));
        tasks.spawn(crate::alloc::purge_freed_memory());
        let (fleet_stop, fleet_stop_rx) = tokio::sync::watch::channel(false);
        let mut fleet = None;
        match &self.source {
            ConfigSource::File(path) => {
                let shared = Arc::clone(&self.shared);
                let path = path.clone();
                tasks.spawn(async move {
                    if let Err(e) = crate::source::watch_file(shared, path).await {
                        tracing::error!(error = %e, "config watch stopped");
                    }
                });
            }
            ConfigSource::Etcd { base, settings } => {
                tasks.spawn(crate::etcd::run(
                    Arc::clone(&self.shared),
                    base.as_ref().clone(),
                    settings.as_ref().clone(),
                ));
                let reporter = crate::fleet::Reporter {
                    shared: Arc::clone(&self.shared),
                    settings: settings.as_ref().clone(),
                    proxy: self.proxy_addr,
                    admin: self.admin_addr,
                    host: self.host.clone(),
                };
                fleet = Some(tokio::spawn(reporter.run(fleet_stop_rx)));
            }
            ConfigSource::Embedded => {}
        }
        let listeners =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
        let proxy_addr = self.proxy_addr;
        let up = tokio::task::spawn_blocking(move || addrs.iter().all(|a| wait_for_listener(*a)));
        let up = matches!(up.await, Ok(true));
        // Pingora listens on the held ports now (or never will): let them go.
        drop(listeners);
        if up {
            // Ready once a snapshot is live too (from etcd that may come later).
            self.shared.set_ready(true);
            if self.shared.current().is_some() {
                tracing::info!(%proxy_addr, "weir ready");
            } else {
                tracing::warn!(%proxy_addr, "proxy listening; not ready until a config is live");
            }
        } else {
            tracing::error!(%proxy_addr, "the proxy listener did not come up; not ready");
        }
        let _ = shutdown.changed().await;
        self.shared.set_ready(false);
        tracing::info!("shutting down");
        // The replica status goes now rather than when its lease ends.
        let _ = fleet_stop.send(true);
        if let Some(fleet) = fleet {
            let _ = tokio::time::timeout(Duration::from_secs(2), fleet).await;
        }
        tasks.abort_all();
    }
}

/// Waits (bounded) until something accepts connections on `addr`.
fn wait_for_listener(addr: SocketAddr) -> bool {
    let mut delay = Duration::from_millis(2);
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    false
}
