//! Holding a proxy port from start-up until Pingora listens on it.

use std::net::SocketAddr;

use anyhow::Context;

/// A listen address with a concrete port, and for a port-0 address the
/// socket that holds the chosen port until Pingora listens on it.
///
/// Pingora binds its own socket when its service starts, after the address
/// has been announced. A port only probed and released could be taken by
/// another process in between, and readiness would then mistake that
/// process's listener for ours. The held socket is bound with
/// `SO_REUSEADDR` and never listens: Linux lets Pingora's `SO_REUSEADDR`
/// listener bind the same address, while no other bind to port 0 and no
/// outgoing connection is given the port.
pub(crate) struct ListenPort {
    pub(crate) addr: SocketAddr,
    _hold: Option<socket2::Socket>,
}

impl ListenPort {
    /// Holds `addr` (a port-0 address: an OS-chosen port) until Pingora
    /// listens on it. A port another process listens on is refused here,
    /// with a clear error, instead of Pingora retrying its bind for ever
    /// while readiness sees the other process. During an `upgrade` an
    /// explicit port belongs to the old process, whose socket is taken over.
    pub(crate) fn reserve(addr: SocketAddr, upgrade: bool) -> anyhow::Result<Self> {
        if upgrade && addr.port() != 0 {
            return Ok(Self { addr, _hold: None });
        }
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("cannot bind {addr}: is another process listening on it?"))?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .context("not an IP address")?;
        Ok(Self {
            addr,
            _hold: Some(socket),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::TcpStream;

    use super::*;

    /// The held port accepts nothing itself, and a listener bound the way
    /// Pingora binds (`SO_REUSEADDR`) takes it over while it is held.
    #[tokio::test]
    async fn a_held_port_refuses_connections_until_pingora_style_listener_binds_it() {
        let held = ListenPort::reserve("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_ne!(held.addr.port(), 0);
        assert!(
            TcpStream::connect(held.addr).is_err(),
            "the hold must not listen"
        );

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(held.addr).unwrap();
        let listener = socket.listen(16).unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(held.addr), listener.accept());
        client.unwrap();
        accepted.unwrap();
        drop(held);
    }

    #[test]
    fn an_explicit_port_is_held_and_a_taken_one_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = ListenPort::reserve(addr, false).err().unwrap();
        assert!(
            format!("{err:#}").contains(&format!("cannot bind {addr}")),
            "{err:#}"
        );
        // During an upgrade the old process holds it: not ours to check.
        let port = ListenPort::reserve(addr, true).unwrap();
        assert!(port._hold.is_none());
        drop(taken);
        let free = ListenPort::reserve(addr, false).unwrap();
        assert_eq!(free.addr, addr);
        assert!(free._hold.is_some());
    }
}
