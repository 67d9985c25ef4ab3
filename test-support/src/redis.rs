//! A real Redis (Debian's `redis-server`) for tests: one process per test,
//! on a port the OS chose, with its files in a temp dir, no persistence; it
//! can be stopped and started again on the same port, and is killed when
//! dropped.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// A running (or stopped) Redis.
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts Redis on a free port and waits until it answers `PING`.
    /// Retries on another port if the chosen one was taken meanwhile.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let mut redis = Self {
                addr,
                dir: tempfile::tempdir()?,
                child: None,
            };
            match redis.resume().await {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis did not start")))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts it again on the same port and waits until it answers.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let port = self.addr.port().to_string();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot run redis-server (scripts/deps.sh installs it): {e}")
            })?;
        self.child = Some(child);
        let addr = self.addr;
        let answered = eventually(Duration::from_secs(10), || async move {
            ping(addr).await.then_some(())
        })
        .await;
        if answered.is_err() {
            self.stop();
            anyhow::bail!("redis-server on {addr} did not answer PING");
        }
        Ok(())
    }

    /// Kills the process (the port stops answering at once).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether something on `addr` answers `PING` with `+PONG`.
async fn ping(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if conn.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(conn.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
}
