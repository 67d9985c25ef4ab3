//! Launching a real etcd (Debian's `etcd-server`) for tests.
//!
//! Each [`Etcd`] runs its own single-member cluster in a temp data dir on
//! ports the OS chose, waits until `/health` says it serves, and is killed
//! when dropped. It can be stopped and started again on the same ports and
//! data dir, which is how tests simulate an etcd outage.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A running (or stopped) single-member etcd; killed on drop.
pub struct Etcd {
    /// Client address (`http://` + this, or `https://` with TLS).
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    secure: bool,
}

/// The user [`Etcd::start_secure`] creates (with the root role).
pub const SECURE_USER: (&str, &str) = ("root", "weir-test-password");

/// Two ports the OS considers free now.
fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    // Both listeners are held until both ports are known, so they differ.
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// The etcd binary: `$WEIR_ETCD_BIN`, else `etcd` on the PATH.
fn binary() -> PathBuf {
    std::env::var_os("WEIR_ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl Etcd {
    /// Starts etcd on free ports in a new temp data dir and waits until it
    /// serves. Retries on other ports if the chosen ones were taken meanwhile.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(false).await
    }

    /// Like [`Etcd::start`], but clients must use TLS (a certificate for
    /// 127.0.0.1 signed by a test CA, [`Etcd::ca`]; made with the `openssl`
    /// command) and authenticate as [`SECURE_USER`].
    pub async fn start_secure() -> anyhow::Result<Self> {
        let etcd = Self::launch(true).await?;
        let (user, password) = SECURE_USER;
        etcd.etcdctl(&["role", "add", "root"], false)?;
        etcd.etcdctl(&["user", "add", &format!("{user}:{password}")], false)?;
        etcd.etcdctl(&["user", "grant-role", user, "root"], false)?;
        etcd.etcdctl(&["auth", "enable"], false)?;
        Ok(etcd)
    }

    async fn launch(secure: bool) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let (client, peer) = free_ports()?;
            let mut etcd = Self {
                client,
                peer,
                dir: tempfile::tempdir()?,
                child: None,
                secure,
            };
            if secure {
                etcd.make_certificates()?;
            }
            match etcd.resume().await {
                Ok(()) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The CA certificate clients of a secure etcd verify it with.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn make_certificates(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")?;
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=weir-test-ca",
                ],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(d)
                .output()?;
            if !out.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Runs `etcdctl` against this etcd (as [`SECURE_USER`] when `auth`).
    pub fn etcdctl(&self, args: &[&str], auth: bool) -> anyhow::Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint());
        if self.secure {
            cmd.arg("--cacert").arg(self.ca());
        }
        if auth {
            let (user, password) = SECURE_USER;
            cmd.arg("--user").arg(format!("{user}:{password}"));
        }
        let out = cmd.args(args).output()?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills etcd (SIGKILL): clients see it vanish at once.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same ports and data dir and waits until it serves.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let client = self.endpoint();
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new(binary());
        if self.secure {
            cmd.arg("--cert-file")
                .arg(self.dir.path().join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.path().join("server.key"));
        }
        let child = cmd
            .arg("--name")
            .arg("weir-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("weir-test={peer}"))
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary().display()))?;
        self.child = Some(child);
        if let Err(e) = self.wait_healthy().await {
            self.stop();
            bail!("{e}; etcd log:\n{}", self.log());
        }
        Ok(())
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let http = crate::client();
        let url = format!("http://{}/health", self.client);
        let healthy = crate::eventually(Duration::from_secs(20), || {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() {
                self.child = None;
            }
            // The test client speaks no TLS: ask etcdctl.
            let health = ["endpoint", "health"];
            let secure_ok = self.secure
                && exited.is_none()
                && (self.etcdctl(&health, false).is_ok() || self.etcdctl(&health, true).is_ok());
            let request = (!self.secure).then(|| http.get(&url).send());
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!("etcd exited with {status}")));
                }
                if secure_ok {
                    return Some(Ok(()));
                }
                let text = request?.await.ok()?.text().await.ok()?;
                text.contains("\"health\":\"true\"").then_some(Ok(()))
            }
        })
        .await;
        match healthy {
            Ok(outcome) => outcome,
            Err(_) => bail!("etcd not healthy within 20 s"),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
