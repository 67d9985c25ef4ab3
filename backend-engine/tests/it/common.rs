//! Starting the real `weir-engine` binary on OS-chosen ports over a
//! temporary copy of the model repository, and small client helpers.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long an engine may take to load its models and bind (failure
/// detection only; readiness is the "listening" line).
const START_LIMIT: Duration = Duration::from_secs(120);

/// The crate's folder.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped models folder (`repo/`, `keys/`, `golden/`), or
/// `WEIR_TEST_MODELS` when set.
pub fn models_dir() -> PathBuf {
    std::env::var_os("WEIR_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("models"))
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else `<repo>/.ort/`.
pub fn ort_lib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.ort/libonnxruntime.so.1.31.1"))
}

/// A temporary repository: `<tmp>/repo/<model>/<version>` copied from the
/// shipped one, and `<tmp>/keys/models.pub`.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    /// Copies the given `(model, version)` folders.
    pub fn with(versions: &[(&str, &str)]) -> TempRepo {
        let dir = tempfile::tempdir().unwrap();
        let src = models_dir();
        for (model, version) in versions {
            copy_version(
                &src.join("repo").join(model).join(version),
                &dir.path().join("repo").join(model).join(version),
            );
        }
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::copy(
            src.join("keys/models.pub"),
            dir.path().join("keys/models.pub"),
        )
        .unwrap();
        TempRepo { dir }
    }

    /// Every shipped model version.
    pub fn all() -> TempRepo {
        TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1"), ("tiny-lm", "2")])
    }

    /// The `repo/` folder.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// A version folder.
    pub fn version_dir(&self, model: &str, version: &str) -> PathBuf {
        self.repo().join(model).join(version)
    }

    /// Copies one more shipped version in.
    pub fn add(&self, model: &str, version: &str) {
        copy_version(
            &models_dir().join("repo").join(model).join(version),
            &self.version_dir(model, version),
        );
    }
}

/// Copies a version folder via a sibling temp folder and a rename, so a
/// watcher never sees it half-written.
pub fn copy_version(from: &Path, to: &Path) {
    let parent = to.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let staging = tempfile::tempdir_in(parent.parent().unwrap_or(parent)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), staging.path().join(entry.file_name())).unwrap();
    }
    let staged = staging.keep();
    std::fs::rename(&staged, to).unwrap();
}

/// A running engine; killed when dropped.
pub struct Engine {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Engine {
    /// Starts the engine over `repo` with extra flags; panics with its
    /// stderr if it does not come up.
    pub fn start(repo: &TempRepo, extra: &[&str]) -> Engine {
        Engine::try_start(repo, extra)
            .unwrap_or_else(|stderr| panic!("engine did not start:\n{stderr}"))
    }

    /// Starts the engine; `Err(stderr)` if it exits before listening.
    pub fn try_start(repo: &TempRepo, extra: &[&str]) -> Result<Engine, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-engine"));
        cmd.arg("--models")
            .arg(repo.repo())
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .env("ORT_DYLIB_PATH", ort_lib())
            .env("RUST_LOG", "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weir-engine");
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let found = reader.read_line(&mut line).unwrap_or(0) > 0
                && line.starts_with("weir-engine listening ");
            let _ = tx.send(found.then(|| line.trim().to_string()));
            // Keep draining so the engine never blocks on stdout.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let line = match rx.recv_timeout(START_LIMIT) {
            Ok(Some(line)) => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                // The pipe closed with the process: the reader ends.
                let _ = stderr_reader.join();
                return Err(stderr.lock().unwrap().clone());
            }
        };
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        Ok(Engine {
            http: addr("http="),
            grpc: addr("grpc="),
            child,
            stderr,
        })
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://ADDR` of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Sends SIGTERM (a clean shutdown) and waits for the exit; true when
    /// the engine exited successfully.
    pub fn terminate(&mut self) -> bool {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        sent && self.wait_success()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; true when it was successful.
    pub fn wait_success(&mut self) -> bool {
        self.child.wait().is_ok_and(|s| s.success())
    }

    /// SIGKILL: the engine vanishes without any cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the engine logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the engine to its exit and returns (success, stderr): for startup
/// failures.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-engine"));
    cmd.args(args)
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "info,ort=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run weir-engine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client for one test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// Reads a golden file by model and version.
pub fn golden(model: &str, version: &str) -> serde_json::Value {
    let dir = models_dir().join("golden");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            if v["model"] == model && v["version"] == version {
                return v;
            }
        }
    }
    panic!("no golden for {model} v{version} in {}", dir.display());
}

/// The shipped tiny-lm's context window (from its model.toml).
pub fn lm_context() -> usize {
    let toml = std::fs::read_to_string(models_dir().join("repo/tiny-lm/1/model.toml")).unwrap();
    toml.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("context")
                .map(|r| r.trim_start_matches([' ', '=']).trim().parse().unwrap())
        })
        .unwrap()
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}
