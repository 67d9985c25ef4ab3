//! `manifest.json`: the SHA-256 of every file of a model version, signed
//! with ed25519. Nothing of a version is used unless this verifies.
//!
//! Signed message (UTF-8):
//! `"weir-model-manifest/1\nmodel=<model>\nversion=<version>\n"` followed, for
//! each file sorted by path, by `"<sha256 hex>  <path>\n"`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the manifest inside a version folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest as stored on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// Manifest format; only 1 exists.
    format: u32,
    /// Model name; must equal the model folder's name.
    model: String,
    /// Model version; must equal the version folder's name.
    version: String,
    /// File path (relative to the version folder) → lowercase SHA-256 hex.
    files: BTreeMap<String, String>,
    /// First 16 hex digits of SHA-256 over the signing key's 32 raw bytes.
    key_id: String,
    /// Standard base64 of the ed25519 signature over the signed message.
    signature: String,
}

/// An ed25519 public key that model manifests must be signed with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    bytes: [u8; 32],
    key_id: String,
}

impl PublicKey {
    /// Parses the key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        let key_id = hex::encode(&digest[..8]);
        PublicKey { bytes, key_id }
    }

    /// Reads a key file holding the 32 raw key bytes as hex (whitespace ignored).
    pub fn from_hex_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let raw = hex::decode(&cleaned).map_err(|e| {
            Error::Config(format!(
                "{}: not a hex ed25519 public key: {e}",
                path.display()
            ))
        })?;
        let bytes: [u8; 32] = raw.try_into().map_err(|raw: Vec<u8>| {
            Error::Config(format!(
                "{}: an ed25519 public key has 32 bytes, this one has {}",
                path.display(),
                raw.len()
            ))
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key's id as manifests name it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The files of a version folder, read once and verified; later steps use
/// these bytes, never the files again, so what runs is what was verified.
#[derive(Debug)]
pub struct VerifiedFiles {
    files: BTreeMap<String, Vec<u8>>,
    /// SHA-256 over the manifest file: identifies this exact content.
    pub manifest_digest: String,
}

impl VerifiedFiles {
    /// The verified bytes of one file.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }
}

/// The message a manifest's signature covers.
pub fn signed_message(model: &str, version: &str, files: &BTreeMap<String, String>) -> String {
    let mut msg = format!("weir-model-manifest/1\nmodel={model}\nversion={version}\n");
    for (path, digest) in files {
        msg.push_str(digest);
        msg.push_str("  ");
        msg.push_str(path);
        msg.push('\n');
    }
    msg
}

/// Reads `dir` (a `<model>/<version>` folder) and verifies it against its
/// manifest and `key`: format, names, key id, signature, then every file's
/// digest; files on disk that the manifest does not list are refused too.
pub fn verify_dir(
    dir: &Path,
    model: &str,
    version: &str,
    key: &PublicKey,
) -> Result<VerifiedFiles> {
    let refuse = |reason: String| Error::Verification {
        model: model.to_string(),
        version: version.to_string(),
        reason,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        refuse(format!(
            "{}: cannot read manifest: {e}",
            manifest_path.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| refuse(format!("{MANIFEST_FILE}: malformed: {e}")))?;
    if manifest.format != 1 {
        return Err(refuse(format!(
            "{MANIFEST_FILE}: format {} is not supported (only 1)",
            manifest.format
        )));
    }
    if manifest.model != model || manifest.version != version {
        return Err(refuse(format!(
            "{MANIFEST_FILE}: describes {}/{}, but sits in {model}/{version}",
            manifest.model, manifest.version
        )));
    }
    if manifest.key_id != key.key_id {
        return Err(refuse(format!(
            "{MANIFEST_FILE}: signed by key {}, but the engine trusts key {}",
            manifest.key_id, key.key_id
        )));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(manifest.signature.trim())
        .map_err(|e| refuse(format!("{MANIFEST_FILE}: signature is not base64: {e}")))?;
    let message = signed_message(&manifest.model, &manifest.version, &manifest.files);
    UnparsedPublicKey::new(&ED25519, &key.bytes)
        .verify(message.as_bytes(), &signature)
        .map_err(|_| {
            refuse(format!(
                "{MANIFEST_FILE}: ed25519 signature does not verify with key {}",
                key.key_id
            ))
        })?;

    let on_disk = list_files(dir).map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
    for name in &on_disk {
        if !manifest.files.contains_key(name) {
            return Err(refuse(format!(
                "{name}: file is not listed in {MANIFEST_FILE}"
            )));
        }
    }
    let mut files = BTreeMap::new();
    for (path, want) in &manifest.files {
        if !is_plain_name(path) {
            return Err(refuse(format!(
                "{MANIFEST_FILE}: '{path}' is not a plain file name inside the version folder"
            )));
        }
        let bytes = std::fs::read(dir.join(path)).map_err(|e| {
            refuse(format!(
                "{path}: listed in {MANIFEST_FILE} but unreadable: {e}"
            ))
        })?;
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(want) {
            return Err(refuse(format!(
                "{path}: sha256 {got} does not match the manifest's {want}"
            )));
        }
        files.insert(path.clone(), bytes);
    }
    Ok(VerifiedFiles {
        files,
        manifest_digest: hex::encode(Sha256::digest(&manifest_bytes)),
    })
}

fn is_plain_name(path: &str) -> bool {
    !path.is_empty()
        && path != "."
        && path != ".."
        && path != MANIFEST_FILE
        && !path.contains(['/', '\\'])
}

/// Every entry of `dir` except the manifest; folders and links are refused.
fn list_files(dir: &Path) -> std::result::Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE {
            continue;
        }
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if !kind.is_file() {
            return Err(format!(
                "{name}: only plain files may sit beside the manifest"
            ));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// Writes a signed version folder; returns the trusted public key.
    pub(crate) fn write_signed(dir: &Path, model: &str, version: &str, seed: u8) -> PublicKey {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"not really onnx").unwrap();
        std::fs::write(dir.join("model.toml"), b"name = 'x'").unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let mut pk = [0u8; 32];
        pk.copy_from_slice(pair.public_key().as_ref());
        let key = PublicKey::from_bytes(pk);
        let mut files = BTreeMap::new();
        for f in ["model.onnx", "model.toml"] {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            files.insert(f.to_string(), hex::encode(Sha256::digest(bytes)));
        }
        let sig = pair.sign(signed_message(model, version, &files).as_bytes());
        let manifest = serde_json::json!({
            "format": 1, "model": model, "version": version, "files": files,
            "key_id": key.key_id(),
            "signature": base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        });
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_string()).unwrap();
        key
    }

    #[test]
    fn good_folder_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let key = write_signed(tmp.path(), "m", "1", 7);
        let files = verify_dir(tmp.path(), "m", "1", &key).unwrap();
        assert_eq!(files.get("model.onnx"), Some(&b"not really onnx"[..]));
    }

    #[test]
    fn tampered_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let key = write_signed(tmp.path(), "m", "1", 7);
        std::fs::write(tmp.path().join("model.onnx"), b"evil").unwrap();
        let err = verify_dir(tmp.path(), "m", "1", &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.onnx: sha256"), "{err}");
    }

    #[test]
    fn wrong_key_and_extra_file_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let _ = write_signed(tmp.path(), "m", "1", 7);
        let other = write_signed(&tmp.path().join("../other-key-dir"), "m", "1", 9);
        let err = verify_dir(tmp.path(), "m", "1", &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signed by key"), "{err}");

        let key = write_signed(tmp.path(), "m", "1", 7);
        std::fs::write(tmp.path().join("extra.bin"), b"x").unwrap();
        let err = verify_dir(tmp.path(), "m", "1", &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra.bin: file is not listed"), "{err}");
    }

    #[test]
    fn tampered_manifest_fails_signature() {
        let tmp = tempfile::tempdir().unwrap();
        let key = write_signed(tmp.path(), "m", "1", 7);
        let path = tmp.path().join(MANIFEST_FILE);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::write(tmp.path().join("model.onnx"), b"evil").unwrap();
        manifest["files"]["model.onnx"] =
            serde_json::Value::String(hex::encode(Sha256::digest(b"evil")));
        std::fs::write(&path, manifest.to_string()).unwrap();
        let err = verify_dir(tmp.path(), "m", "1", &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature does not verify"), "{err}");
    }
}
