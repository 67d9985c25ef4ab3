//! Binding the listeners and serving HTTP and gRPC until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Args;
use crate::engine::Engine;
use crate::error::{Error, Result};

/// After a shutdown signal, how long open connections (e.g. long streams)
/// may take to finish before the engine stops anyway.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A running engine's bound addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// HTTP address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
}

impl Bound {
    /// The line printed on stdout once both listeners accept connections;
    /// tests and launchers wait for it.
    pub fn listening_line(&self) -> String {
        format!(
            "weir-engine listening http={} grpc={}",
            self.http, self.grpc
        )
    }
}

/// Loads the models, binds both listeners, calls `on_bound`, and serves
/// until `shutdown` resolves; in-flight requests are allowed to finish.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    run_with(args, None, shutdown, on_bound).await
}

/// Listeners bound before the runtime started (to sandbox the process
/// after binding them and before any thread exists).
#[derive(Debug)]
pub struct Listeners {
    /// HTTP.
    pub http: std::net::TcpListener,
    /// gRPC.
    pub grpc: std::net::TcpListener,
}

impl Listeners {
    /// Binds both of `args`'s addresses.
    pub fn bind(args: &Args) -> Result<Self> {
        let bind = |addr: SocketAddr, flag: &str| {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| Error::Config(format!("{flag} {addr}: {e}")))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::Config(format!("{flag} {addr}: {e}")))?;
            Ok::<_, Error>(l)
        };
        Ok(Self {
            http: bind(args.http, "--http")?,
            grpc: bind(args.grpc, "--grpc")?,
        })
    }
}

/// [`run`] on listeners already bound (`None`: bind them here).
pub async fn run_with(
    args: Args,
    listeners: Option<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    let engine_args = args.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::start(&engine_args))
        .await
        .map_err(|e| Error::Runtime(format!("startup task failed: {e}")))??;
    serve_with(engine, &args, listeners, shutdown, on_bound).await
}

/// Serves an already started engine.
pub async fn serve(
    engine: Arc<Engine>,
    args: &Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    serve_with(engine, args, None, shutdown, on_bound).await
}

/// [`serve`] on listeners already bound (`None`: bind them here).
pub async fn serve_with(
    engine: Arc<Engine>,
    args: &Args,
    listeners: Option<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    let listeners = match listeners {
        Some(l) => l,
        None => Listeners::bind(args)?,
    };
    let http_listener = TcpListener::from_std(listeners.http)
        .map_err(|e| Error::Config(format!("--http {}: {e}", args.http)))?;
    let grpc_listener = TcpListener::from_std(listeners.grpc)
        .map_err(|e| Error::Config(format!("--grpc {}: {e}", args.grpc)))?;
    let bound = Bound {
        http: http_listener
            .local_addr()
            .map_err(|e| Error::Config(e.to_string()))?,
        grpc: grpc_listener
            .local_addr()
            .map_err(|e| Error::Config(e.to_string()))?,
    };

    crate::otel::start(args)?;
    if args.watch {
        crate::watch::spawn(engine.clone())?;
    }
    let janitor_engine = engine.clone();
    let janitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            janitor_engine.tasks.purge();
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stop_rx_drain = stop_rx.clone();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::grpc::proto::grpc_inference_service_server::GrpcInferenceServiceServer<crate::grpc::InferenceService>>()
        .await;
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(crate::grpc::service(engine.clone()))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(grpc_listener),
            stopped(stop_rx.clone()),
        );
    // TCP_NODELAY on every connection: without it a streamed answer's
    // second event waits for the client's delayed ACK (~40 ms) on a reused
    // connection.
    use axum::serve::ListenerExt;
    let http_listener = http_listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = axum::serve(http_listener, crate::http::router(engine.clone()))
        .with_graceful_shutdown(stopped(stop_rx));

    // Join the gateway pool (if asked) before announcing the listeners, so a
    // launcher that waits for the line knows the member is in etcd.
    let registration = match args.register.resolve(bound.http) {
        Ok(None) => None,
        Ok(Some((settings, options))) => Some(
            weir_conf::etcd::Registration::start(settings, options)
                .await
                .map_err(|e| Error::Config(format!("--register-etcd: {e}")))?,
        ),
        Err(e) => return Err(Error::Config(e.to_string())),
    };
    // On shutdown, leave the pool first so gateways stop sending new
    // requests while the open ones drain.
    let leave = registration.map(|registration| {
        let rx = stop_rx_drain.clone();
        tokio::spawn(async move {
            stopped(rx).await;
            if let Err(e) = registration.deregister().await {
                tracing::warn!(error = %e, "cannot deregister; the lease will expire");
            }
        })
    });
    on_bound(bound);
    tracing::info!(http = %bound.http, grpc = %bound.grpc, device = %engine.device(), "serving");
    let servers = async { tokio::join!(http, grpc) };
    tokio::pin!(servers);
    let drain_limit = async {
        stopped(stop_rx_drain.clone()).await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    let result = tokio::select! {
        (h, g) = &mut servers => {
            h.map_err(|e| Error::Runtime(format!("HTTP server: {e}")))
                .and(g.map_err(|e| Error::Runtime(format!("gRPC server: {e}"))))
        }
        () = drain_limit => {
            tracing::warn!(limit = ?DRAIN_LIMIT, "connections still open after the drain limit; stopping anyway");
            Ok(())
        }
    };
    janitor.abort();
    if let Some(leave) = leave {
        if *stop_rx_drain.borrow() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), leave).await;
        } else {
            leave.abort();
        }
    }
    tracing::info!("stopped");
    result
}
