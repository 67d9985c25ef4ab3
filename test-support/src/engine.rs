//! Launching the real `weir-engine` binary (beside the `weir` binary under
//! test, in the same target folder) over the shipped model repository.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A running `weir-engine`; killed on drop.
pub struct Engine {
    /// Its HTTP listener (OpenAI and Open Inference Protocol).
    pub http: SocketAddr,
    /// Its gRPC listener (Open Inference Protocol).
    pub grpc: SocketAddr,
    child: Child,
    _log: tempfile::NamedTempFile,
}

/// The repository's folder (above `test-support/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Engine {
    /// The `weir-engine` binary next to `weir` (as `cargo test --workspace`
    /// builds it).
    pub fn binary_beside(weir: &Path) -> anyhow::Result<PathBuf> {
        let engine = weir.with_file_name("weir-engine");
        if !engine.exists() {
            bail!(
                "{} is missing: build the workspace (cargo test --release --workspace)",
                engine.display()
            );
        }
        Ok(engine)
    }

    /// Starts `binary` on OS-chosen ports serving `models` (e.g.
    /// `["tiny-lm:1", "mlp"]`) from the shipped repository, and waits for
    /// its "listening" line (printed once every model is loaded).
    pub async fn start(binary: &Path, models: &[&str]) -> anyhow::Result<Self> {
        let log = tempfile::NamedTempFile::new()?;
        let mut cmd = Command::new(binary);
        cmd.arg("--models")
            .arg(repo_root().join("backend-engine/models/repo"))
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]);
        for m in models {
            cmd.args(["--model", m]);
        }
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            cmd.env(
                "ORT_DYLIB_PATH",
                repo_root().join(".ort/libonnxruntime.so.1.31.1"),
            );
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.reopen()?))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("weir-engine listening "))
        })
        .await?;
        let Some(line) = line else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "weir-engine exited before listening:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        };
        let field = |key: &str| crate::launch_addr(&line, key);
        Ok(Self {
            http: field("http=")?,
            grpc: field("grpc=")?,
            child,
            _log: log,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
