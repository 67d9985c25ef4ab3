//! Starting the real `weir-engine` binary (through the launcher in
//! `weir-test-support`) over a temporary copy of the model repository, and
//! small client helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

pub use weir_test_support::Engine;

/// The engine binary under test.
fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir-engine"))
}

/// Starts the engine over `repo` with extra flags; panics with its log if
/// it does not come up.
pub async fn start_engine(repo: &TempRepo, extra: &[&str]) -> Engine {
    match try_start_engine(repo, extra).await {
        Ok(engine) => engine,
        Err(e) => panic!("{e:#}"),
    }
}

/// Starts the engine over `repo`; the error carries its log if it exits
/// before listening.
pub async fn try_start_engine(repo: &TempRepo, extra: &[&str]) -> anyhow::Result<Engine> {
    Engine::launch(binary(), &repo.repo(), extra).await
}

/// Runs the engine to its exit and returns (success, stderr): for startup
/// failures.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(binary());
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
