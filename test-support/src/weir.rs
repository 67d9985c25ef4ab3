//! Launching the real `weir` binary for black-box tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process;

/// How long `weir` may take to print its launch line (failure detection
/// only).
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running `weir` process with its temp dir; killed on drop.
pub struct Weir {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The TLS proxy listener, when `[server.tls]` is configured.
    pub tls: Option<SocketAddr>,
    /// The config file it watches.
    pub config_path: PathBuf,
    /// Its stderr log.
    pub log_path: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Weir {
    /// Writes `config` to a temp dir and starts `binary --config FILE`, then
    /// waits for the launch line and for `/readyz` to answer 200.
    pub async fn start(binary: &Path, config: &str) -> anyhow::Result<Self> {
        Self::start_with(binary, config, &[]).await
    }

    /// Like [`Weir::start`], with extra command-line arguments.
    pub async fn start_with(binary: &Path, config: &str, args: &[&str]) -> anyhow::Result<Self> {
        let weir = Self::spawn(binary, config, args).await?;
        weir.wait_ready().await?;
        Ok(weir)
    }

    /// Like [`Weir::start`], with extra environment variables.
    pub async fn start_with_env(
        binary: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let weir = Self::spawn_env(binary, config, &[], env).await?;
        weir.wait_ready().await?;
        Ok(weir)
    }

    /// Starts `binary --config FILE ARGS...` and waits for its launch line
    /// only (the gateway may not be ready: see [`Weir::wait_ready`]).
    pub async fn spawn(binary: &Path, config: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_env(binary, config, args, &[]).await
    }

    async fn spawn_env(
        binary: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.path().join("weir.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("WEIR_LOG", "info,weir::access=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let Some(line) = process::launch_line(stdout, "weir listening ", START_LIMIT).await else {
            process::kill(&mut child);
            bail!(
                "weir exited before listening:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let field = |key: &str| crate::launch_addr(&line, key);
        let weir = Self {
            proxy: field("proxy=")?,
            admin: field("admin=")?,
            tls: field("tls=").ok(),
            config_path,
            log_path,
            child,
            _dir: dir,
        };
        Ok(weir)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = crate::client();
        let url = format!("http://{}/readyz", self.admin);
        crate::eventually(Duration::from_secs(20), || {
            let req = client.get(&url).send();
            async move {
                req.await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await
        .with_context(|| format!("weir not ready; log:\n{}", self.log()))
    }

    /// Replaces the config file atomically (write a sibling, then rename).
    pub fn write_config(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.config_path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `http://proxy` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// `http://admin` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Reads one sample of a metric from `/metrics` (exact series match, e.g.
    /// `weir_config_reloads_total{result="rejected"}`); 0 when absent, an
    /// error when the scrape fails.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(crate::sample(&self.scrape().await?, series)?.unwrap_or(0.0))
    }

    /// One sample of a metric; `None` when the series is absent or the
    /// scrape fails.
    pub async fn metric_sample(&self, series: &str) -> Option<f64> {
        crate::sample(&self.scrape().await.ok()?, series).ok()?
    }

    /// The text of the admin port's `/metrics`.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        crate::scrape(&self.admin_url("/metrics")).await
    }

    /// GETs an admin path and parses its JSON body (e.g. `/admin/routes`).
    pub async fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(crate::client()
            .get(self.admin_url(path))
            .send()
            .await?
            .json()
            .await?)
    }

    /// `/readyz`: its status code and JSON body.
    pub async fn readyz(&self) -> anyhow::Result<(u16, serde_json::Value)> {
        let resp = crate::client()
            .get(self.admin_url("/readyz"))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    /// The process's resident memory (Linux `/proc`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        process::signal(&self.child, signal)
    }

    /// Waits (at most `limit`) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        process::wait_exit(&mut self.child, limit).await
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        process::kill(&mut self.child);
    }
}
