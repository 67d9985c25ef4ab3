//! The last-good cache: the documents of the last applied etcd config, kept
//! in one local JSON file so a gateway started while etcd is unreachable can
//! still route.
//!
//! The file is replaced atomically (write a sibling, sync, rename), so a
//! reader sees the old or the new version, never a torn one.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::layout::Docs;

/// Format version written into the file.
const FORMAT: u32 = 1;

/// The cache file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Format version (1).
    pub format: u32,
    /// The prefix the documents were read under.
    pub prefix: String,
    /// The etcd revision they were read at.
    pub revision: i64,
    /// Relative key → value.
    pub docs: std::collections::BTreeMap<String, String>,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The cache file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a cache this version understands.
    #[error("{path}: not a usable cache: {message}")]
    Format {
        /// The cache file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl CacheFile {
    /// A cache of `docs` read at `revision` under `prefix`.
    pub fn new(prefix: &str, revision: i64, docs: &Docs) -> Self {
        Self {
            format: FORMAT,
            prefix: prefix.to_owned(),
            revision,
            docs: docs
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }

    /// The documents as raw values.
    pub fn docs(&self) -> Docs {
        self.docs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect()
    }

    /// Reads and checks a cache written for `prefix`.
    pub fn read(path: &Path, prefix: &str) -> Result<Self, CacheError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CacheError::Io {
            path: shown.clone(),
            source,
        })?;
        let cache: CacheFile = serde_json::from_str(&text).map_err(|e| CacheError::Format {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if cache.format != FORMAT {
            return Err(CacheError::Format {
                path: shown,
                message: format!("format {} (expected {FORMAT})", cache.format),
            });
        }
        if cache.prefix != prefix {
            return Err(CacheError::Format {
                path: shown,
                message: format!("written for prefix {:?}, not {prefix:?}", cache.prefix),
            });
        }
        Ok(cache)
    }

    /// Writes the file atomically: a sibling temp file of its own, fsync,
    /// rename; concurrent writers (replicas on a shared volume) each rename
    /// a whole file.
    pub fn write(&self, path: &Path) -> Result<(), CacheError> {
        let shown = path.display().to_string();
        let io = |source| CacheError::Io {
            path: shown.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| CacheError::Format {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        // A name no other writer uses: gateways in containers are all PID 1
        // on a shared cache volume, so the process id alone is not enough;
        // `create_new` refuses a name that is taken all the same.
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(
            ".tmp.{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let tmp = path.with_file_name(tmp_name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
