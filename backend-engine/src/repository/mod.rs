//! The model repository on disk: `<root>/<model>/<version>/` folders, each
//! holding `model.onnx`, `model.toml` and a signed `manifest.json`.
//! Version folders are named by non-negative integers; "latest" is the
//! highest. Other entries are ignored.

pub mod manifest;
pub mod model_config;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use manifest::{PublicKey, VerifiedFiles};
use model_config::ModelConfig;

/// A model version read from disk and verified, not yet running.
#[derive(Debug)]
pub struct VerifiedVersion {
    /// The verified file contents.
    pub files: VerifiedFiles,
    /// The parsed `model.toml`.
    pub config: ModelConfig,
}

impl VerifiedVersion {
    /// The verified ONNX bytes.
    pub fn onnx(&self) -> Result<&[u8]> {
        self.files
            .get("model.onnx")
            .ok_or_else(|| Error::ModelConfig {
                model: self.config.name.clone(),
                version: self.config.version.clone(),
                reason: "model.onnx is not listed in the manifest".to_string(),
            })
    }
}

/// A repository folder and the key its manifests must be signed with.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    key: PublicKey,
}

impl Repository {
    /// A repository at `root`, trusting `key`.
    pub fn new(root: PathBuf, key: PublicKey) -> Self {
        Repository { root, key }
    }

    /// The repository's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The trusted key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Names of the model folders, sorted.
    pub fn model_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The model's version numbers on disk, ascending.
    pub fn versions(&self, model: &str) -> Result<Vec<u64>> {
        if !is_safe_name(model) {
            return Err(Error::ModelNotFound(model.to_string()));
        }
        let dir = self.root.join(model);
        let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModelNotFound(model.to_string()),
            _ => Error::io(&dir, e),
        })?;
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && let Some(v) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
            {
                versions.push(v);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Reads and verifies one version folder, then parses its `model.toml`.
    pub fn read_version(&self, model: &str, version: u64) -> Result<VerifiedVersion> {
        if !is_safe_name(model) {
            return Err(Error::ModelNotFound(model.to_string()));
        }
        let version_str = version.to_string();
        let dir = self.root.join(model).join(&version_str);
        if !dir.is_dir() {
            return Err(Error::VersionNotFound {
                model: model.to_string(),
                version: version_str,
            });
        }
        let files = manifest::verify_dir(&dir, model, &version_str, &self.key)?;
        let toml_bytes = files.get("model.toml").ok_or_else(|| Error::ModelConfig {
            model: model.to_string(),
            version: version_str.clone(),
            reason: "model.toml is not listed in the manifest".to_string(),
        })?;
        let text = std::str::from_utf8(toml_bytes).map_err(|_| Error::ModelConfig {
            model: model.to_string(),
            version: version_str.clone(),
            reason: "model.toml is not UTF-8".to_string(),
        })?;
        let config = ModelConfig::parse(text, model, &version_str)?;
        Ok(VerifiedVersion { files, config })
    }
}

/// A model name usable as one path component.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
