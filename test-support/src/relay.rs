//! A TCP relay that a test can cut and restore, to take a network path away
//! from one client (say, a gateway's connection to etcd) while the server
//! and every other client carry on.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A running relay from [`Relay::addr`] to a target; stopped on drop.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays `127.0.0.1:0` (an OS-chosen port) to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(accept(listener, target, rx));
        Ok(Self { addr, open, task })
    }

    /// Closes every relayed connection and refuses new ones (accepted, then
    /// closed at once) until [`Relay::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, open: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                if !*open.borrow() {
                    drop(inbound);
                    continue;
                }
                conns.spawn(relay(inbound, target, open.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|o| !*o) => {}
    }
}
