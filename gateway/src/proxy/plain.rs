//! The direct path's upstream connections to peers without TLS: Tokio's
//! `TcpStream` itself, connected here and kept idle per worker thread,
//! instead of Pingora's boxed stream (a write buffer, a read-rewind
//! buffer and timing records around the socket) and its connection pool
//! (a reuse hash of the peer, a lock and a map per get and per return).
//!
//! Peers with TLS, or at an address other than an IP's, are connected by
//! Pingora as before: see [`Target`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::Backend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weir_conf::model::Protocol;

use crate::pool::PoolRt;
use crate::runtime::{AttemptTimeouts, RouteRt};

/// Most idle connections one worker thread keeps (Pingora's pool's
/// default size); the longest idle goes first.
const MAX_IDLE: usize = 128;

/// An upstream connection of the direct path.
pub(super) enum Conn {
    /// A plain TCP connection to the address given, pooled here.
    Plain(TcpStream, SocketAddr),
    /// A connection made and pooled by Pingora (TLS, or other options).
    Layered(Stream),
}

/// Where an attempt of the direct path goes.
pub(super) enum Target {
    /// A backend at an IP address, over HTTP/1 without TLS: connected
    /// and kept here, with no `HttpPeer` made for the attempt.
    Plain {
        /// The backend's address.
        addr: SocketAddr,
        /// The attempt's timeouts.
        timeouts: AttemptTimeouts,
    },
    /// Any other (TLS, a Unix socket): Pingora's peer and connector.
    Layered(Box<HttpPeer>),
}

impl Target {
    /// The target of an attempt at `backend` of `pool` on `route`
    /// (`remaining` of the route's total timeout).
    pub(super) fn new(
        route: &RouteRt,
        backend: &Backend,
        pool: &PoolRt,
        remaining: Option<Duration>,
    ) -> Self {
        match backend.addr.as_inet() {
            Some(addr) if pool.tls.is_none() && pool.config.protocol == Protocol::Http1 => {
                Self::Plain {
                    addr: *addr,
                    timeouts: route.timeouts(remaining),
                }
            }
            _ => Self::Layered(route.peer(backend, pool, remaining)),
        }
    }

    /// The limit on each read of the answer.
    pub(super) fn read_timeout(&self) -> Option<Duration> {
        match self {
            Self::Plain { timeouts, .. } => Some(timeouts.read),
            Self::Layered(peer) => peer.options.read_timeout,
        }
    }

    /// The limit on each write of the request.
    pub(super) fn write_timeout(&self) -> Option<Duration> {
        match self {
            Self::Plain { timeouts, .. } => Some(timeouts.write),
            Self::Layered(peer) => peer.options.write_timeout,
        }
    }
}

impl std::fmt::Display for Target {
    /// As Pingora shows its peers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain { addr, .. } => write!(f, "addr: {addr}, scheme: HTTP"),
            Self::Layered(peer) => peer.fmt(f),
        }
    }
}

/// An idle connection and when it became idle.
struct Idle {
    addr: SocketAddr,
    conn: TcpStream,
    since: Instant,
}

thread_local! {
    /// This worker thread's idle connections, the most recent last (a
    /// connection belongs to the runtime of the thread that made it).
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `addr` that is still open and has been idle for
/// less than `idle_timeout` at `now`, the most recently used first.
/// Expired and closed ones met on the way are dropped.
pub(super) fn reuse(
    addr: SocketAddr,
    now: Instant,
    idle_timeout: Option<Duration>,
) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|idle| {
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let Some(entry) = idle.get(i) else { break };
            if entry.addr != addr {
                continue;
            }
            let entry = idle.remove(i);
            let expired =
                idle_timeout.is_some_and(|t| now.saturating_duration_since(entry.since) >= t);
            if !expired && open(&entry.conn) {
                return Some(entry.conn);
            }
        }
        None
    })
}

/// Whether an idle connection is still open with nothing to read: the
/// upstream neither closed it nor sent anything unasked. Costs no system
/// call while the socket is not known to be readable.
fn open(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Keeps `conn` to `addr`, idle since `since`, for a later request on this
/// thread.
pub(super) fn keep(addr: SocketAddr, conn: TcpStream, since: Instant) {
    IDLE.with_borrow_mut(|idle| {
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle { addr, conn, since });
    });
}

/// A new connection to `addr` within `timeout`, with Nagle's algorithm off
/// (as Pingora's connector sets it); errors as Pingora's connector gives
/// them.
pub(super) async fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<TcpStream> {
    let failed = |e: std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ErrorType::ConnectRefused
        } else {
            ErrorType::ConnectError
        };
        Error::because(kind, format!("Fail to connect to {addr}"), e)
    };
    let conn = match timeout {
        Some(t) => match tokio::time::timeout(t, TcpStream::connect(addr)).await {
            Ok(conn) => conn.map_err(failed)?,
            Err(e) => {
                return Err(Error::because(
                    ErrorType::ConnectTimedout,
                    format!("timeout {t:?} connecting to server {addr}"),
                    e,
                ));
            }
        },
        None => TcpStream::connect(addr).await.map_err(failed)?,
    };
    conn.set_nodelay(true).map_err(failed)?;
    Ok(conn)
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_read(cx, buf),
            Conn::Layered(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_write(cx, buf),
            Conn::Layered(c) => Pin::new(c).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_flush(cx),
            Conn::Layered(c) => Pin::new(c).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(c, _) => Pin::new(c).poll_shutdown(cx),
            Conn::Layered(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(connect(addr, None), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_open_connection_is_reused_and_a_closed_or_expired_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let now = Instant::now();
        let minute = Some(Duration::from_secs(60));

        // Open: the same connection comes back, once.
        let (conn, _server) = pair(&listener).await;
        let local = conn.local_addr().unwrap();
        keep(addr, conn, now);
        assert!(reuse(other, now, minute).is_none());
        let again = reuse(addr, now, minute).unwrap();
        assert_eq!(again.local_addr().unwrap(), local);
        assert!(reuse(addr, now, minute).is_none());

        // Idle longer than the timeout: dropped.
        keep(addr, again, now);
        assert!(reuse(addr, now + Duration::from_secs(61), minute).is_none());
        assert!(reuse(addr, now, minute).is_none());

        // Closed by the upstream: dropped once the close is seen.
        let (conn, server) = pair(&listener).await;
        drop(server);
        conn.readable().await.unwrap();
        keep(addr, conn, now);
        assert!(reuse(addr, now, minute).is_none());

        // Something unasked to read: dropped.
        let (conn, mut server) = pair(&listener).await;
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        conn.readable().await.unwrap();
        keep(addr, conn, now);
        assert!(reuse(addr, now, minute).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_most_so_many_connections_are_kept_the_oldest_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let now = Instant::now();
        let mut servers = Vec::new();
        let mut first = None;
        for _ in 0..=MAX_IDLE {
            let (conn, server) = pair(&listener).await;
            servers.push(server);
            first.get_or_insert(conn.local_addr().unwrap());
            keep(addr, conn, now);
        }
        let mut back = Vec::new();
        while let Some(conn) = reuse(addr, now, None) {
            back.push(conn.local_addr().unwrap());
        }
        assert_eq!(back.len(), MAX_IDLE);
        assert!(!back.contains(&first.unwrap()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_a_connect_error() {
        // A port just freed: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = connect(addr, Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectRefused);
    }
}
