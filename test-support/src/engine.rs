//! Launching the real `weir-engine` binary on OS-chosen ports: over the
//! shipped model repository (the gateway's tests, with the binary beside
//! `weir`) or over any repository with any flags (the engine's own tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process;

/// How long an engine may take to load its models and bind (failure
/// detection only; readiness is the "listening" line).
const START_LIMIT: Duration = Duration::from_secs(120);

/// A running `weir-engine`; killed on drop.
pub struct Engine {
    /// Its HTTP listener (OpenAI and Open Inference Protocol).
    pub http: SocketAddr,
    /// Its gRPC listener (Open Inference Protocol).
    pub grpc: SocketAddr,
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
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

    /// The shipped model repository (`backend-engine/models/repo`).
    pub fn shipped_repository() -> PathBuf {
        repo_root().join("backend-engine/models/repo")
    }

    /// The real models' repository (`scripts/setup-models.sh`: SmolLM2 and
    /// MiniLM from pinned PyPI wheels): `WEIR_MODELS_REPO`, else the
    /// script's answer (it converts on first use, then only compares
    /// stamps). Its key is `<repository>/../keys/models.pub`.
    pub fn real_repository() -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_MODELS_REPO") {
            return Ok(PathBuf::from(dir));
        }
        let out = Command::new("bash")
            .arg("scripts/setup-models.sh")
            .current_dir(repo_root())
            .stderr(Stdio::inherit())
            .output()
            .context("run scripts/setup-models.sh")?;
        if !out.status.success() {
            bail!("scripts/setup-models.sh failed");
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .last()
            .context("setup-models.sh printed nothing")?;
        Ok(PathBuf::from(last.trim()))
    }

    /// Starts `binary` serving `models` of [`Engine::real_repository`],
    /// with its key.
    pub async fn start_real(binary: &Path, models: &[&str]) -> anyhow::Result<Self> {
        let repo = Self::real_repository()?;
        let key = repo.join("../keys/models.pub").display().to_string();
        let mut args: Vec<&str> = vec!["--public-key", &key];
        args.extend(models.iter().flat_map(|m| ["--model", m]));
        Self::launch(binary, &repo, &args).await
    }

    /// The ONNX Runtime library: `ORT_DYLIB_PATH`, else `<repo>/.ort/`.
    pub fn ort_lib() -> PathBuf {
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".ort/libonnxruntime.so.1.31.1"))
    }

    /// Starts `binary` serving `models` (e.g. `["tiny-lm:1", "mlp"]`) from
    /// the shipped repository.
    pub async fn start(binary: &Path, models: &[&str]) -> anyhow::Result<Self> {
        let args: Vec<&str> = models.iter().flat_map(|m| ["--model", m]).collect();
        Self::launch(binary, &Self::shipped_repository(), &args).await
    }

    /// Starts `binary --models REPOSITORY` on OS-chosen ports with extra
    /// `args`, and waits for its "listening" line (printed once every model
    /// is loaded and both listeners are bound). The error carries the log
    /// when the engine exits first.
    pub async fn launch(binary: &Path, repository: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log_path = dir.path().join("weir-engine.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(binary)
            .arg("--models")
            .arg(repository)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(args)
            .env("ORT_DYLIB_PATH", Self::ort_lib())
            .env("RUST_LOG", "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let Some(line) = process::launch_line(stdout, "weir-engine listening ", START_LIMIT).await
        else {
            process::kill(&mut child);
            bail!(
                "weir-engine did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let field = |key: &str| crate::launch_addr(&line, key);
        Ok(Self {
            http: field("http=")?,
            grpc: field("grpc=")?,
            child,
            log_path,
            _dir: dir,
        })
    }

    /// `http://HTTP{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://GRPC`.
    pub fn grpc_url(&self) -> String {
        crate::base_url(self.grpc)
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// One sample of a metric from `/metrics` (exact series, see
    /// [`crate::sample`]); `None` when absent or the scrape fails.
    pub async fn metric_sample(&self, series: &str) -> Option<f64> {
        let text = crate::scrape(&self.url("/metrics")).await.ok()?;
        crate::sample(&text, series).ok()?
    }

    /// What the engine logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        process::signal(&self.child, signal)
    }

    /// Waits (at most `limit`) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        process::wait_exit(&mut self.child, limit).await
    }

    /// SIGKILL: the engine vanishes without any cleanup.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        process::kill(&mut self.child);
    }
}
