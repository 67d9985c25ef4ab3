//! How the gateway talks to a pool's backends beyond the address: TLS
//! (server name, CAs, client certificate), headers it sets or removes, and
//! the secrets those headers may read from the environment or a file.
//!
//! Files and secrets are read when the snapshot is built, so a rotated key
//! file is picked up by the next reload; relative paths are relative to the
//! gateway's working directory. Secret values never appear in problems,
//! `Debug` output or anything else this crate prints.

use std::fmt;

use super::values::{check_header, check_len};
use crate::error::{Problems, quoted};
use crate::model::{PoolHeadersConfig, Protocol, UpstreamTlsConfig};
use crate::secrets::expand;

/// Largest PEM file (CA bundle, certificate, key), bytes.
pub const MAX_PEM_FILE: u64 = 1 << 20;
/// Longest TLS server name, bytes.
const MAX_SNI: usize = 253;

/// Headers that only the gateway decides: never set or removed by a pool.
const RESERVED: [&str; 8] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "x-request-id",
    "x-weir-tenant",
];

/// A header value that may carry a credential: compared and hashed like
/// any value, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// The value, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Validated upstream TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The server name to send and verify (`None`: the backend's host).
    pub sni: Option<String>,
    /// The configured CA file's path, if any.
    pub ca_file: Option<String>,
    /// Its PEM contents (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Verify the backends' certificates.
    pub verify: bool,
    /// Client certificate chain and key, PEM.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Validated pool headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PoolHeaders {
    /// Lower-case name → value, sorted by name.
    pub set: Vec<(String, Secret)>,
    /// Lower-case names removed.
    pub remove: Vec<String>,
}

/// Validates a pool's `tls` table against its protocol (`at` is the
/// pool's path).
pub(super) fn check_tls(
    tls: Option<&UpstreamTlsConfig>,
    protocol: Protocol,
    at: &str,
    problems: &mut Problems,
) -> Option<UpstreamTls> {
    match (protocol, tls) {
        (Protocol::H2, None) => {
            problems.push(
                format!("{at}.protocol"),
                "\"h2\" is HTTP/2 over TLS: add a tls table (or use \"h2c\" for cleartext)",
            );
            return None;
        }
        (Protocol::H2c, Some(_)) => {
            problems.push(
                format!("{at}.tls"),
                "\"h2c\" is cleartext HTTP/2: use protocol = \"h2\" for HTTP/2 over TLS",
            );
            return None;
        }
        (_, None) => return None,
        _ => {}
    }
    let t = tls?;
    let at = format!("{at}.tls");
    if let Some(sni) = &t.sni {
        let ok = check_len(sni, MAX_SNI, &format!("{at}.sni"), problems)
            && !sni.is_empty()
            && sni
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !ok {
            problems.push(
                format!("{at}.sni"),
                format!("{} is not a host name or IP address", quoted(sni)),
            );
        }
    }
    let ca_pem = t
        .ca_file
        .as_ref()
        .and_then(|f| read_pem(f, "CERTIFICATE", &format!("{at}.ca_file"), problems));
    let client = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => {
            let cert = read_pem(c, "CERTIFICATE", &format!("{at}.client_cert"), problems);
            let key = read_pem(k, "PRIVATE KEY", &format!("{at}.client_key"), problems);
            cert.zip(key)
        }
        (None, None) => None,
        _ => {
            problems.push(
                at.clone(),
                "client_cert and client_key go together: set both or neither",
            );
            None
        }
    };
    Some(UpstreamTls {
        sni: t.sni.clone(),
        ca_file: t.ca_file.clone(),
        ca_pem,
        verify: t.verify,
        client,
    })
}

/// Reads a PEM file that must hold at least one `-----BEGIN …{kind}-----`
/// block (the TLS layer parses it; this catches the wrong file early).
fn read_pem(path: &str, kind: &str, at: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_PEM_FILE);
    if too_big {
        problems.push(at, format!("{path:?} is over {MAX_PEM_FILE} bytes"));
        return None;
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let found = text.lines().any(|l| {
                l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----"))
            });
            if found {
                Some(bytes)
            } else {
                problems.push(at, format!("{path:?} holds no PEM {kind}"));
                None
            }
        }
        Err(e) => {
            problems.push(at, format!("cannot read {path:?}: {e}"));
            None
        }
    }
}

/// Validates a pool's `headers` table, reading the secrets its values name
/// (`at` is the pool's path).
pub(super) fn check_headers(
    h: &PoolHeadersConfig,
    at: &str,
    problems: &mut Problems,
) -> PoolHeaders {
    let at = format!("{at}.headers");
    let mut set = Vec::with_capacity(h.set.len());
    for (name, value) in &h.set {
        let path = format!("{at}.set.{name}");
        let lower = check_header(name, &path, problems);
        if RESERVED.contains(&lower.as_str()) {
            problems.push(&path, format!("{lower} is the gateway's to set"));
            continue;
        }
        if let Some(v) = expand(value, &path, problems) {
            set.push((lower, Secret(v)));
        }
    }
    let mut remove = Vec::with_capacity(h.remove.len());
    for (i, name) in h.remove.iter().enumerate() {
        let path = format!("{at}.remove[{i}]");
        let lower = check_header(name, &path, problems);
        if RESERVED.contains(&lower.as_str()) {
            problems.push(&path, format!("{lower} is the gateway's to set"));
            continue;
        }
        remove.push(lower);
    }
    set.sort_by(|a, b| a.0.cmp(&b.0));
    remove.sort();
    remove.dedup();
    PoolHeaders { set, remove }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(set: &[(&str, &str)], remove: &[&str]) -> (PoolHeaders, Vec<String>) {
        let cfg = PoolHeadersConfig {
            set: set
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            remove: remove.iter().map(|s| (*s).into()).collect(),
        };
        let mut problems = Problems::default();
        let h = check_headers(&cfg, "pools[p]", &mut problems);
        (h, problems.0.into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn secrets_come_from_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-file-secret\n").unwrap();
        let (h, problems) = headers(
            &[(
                "Authorization",
                &format!("Bearer ${{file:{}}}", key.display()),
            )],
            &["X-Internal"],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(h.set[0].0, "authorization");
        assert_eq!(h.set[0].1.expose(), "Bearer sk-file-secret");
        assert_eq!(h.remove, ["x-internal"]);
        assert!(!format!("{h:?}").contains("sk-file-secret"));
    }

    #[test]
    fn bad_references_values_and_reserved_names_are_problems_without_values() {
        let (_, problems) = headers(
            &[
                ("a", "${env:WEIR_TEST_SURELY_UNSET_VARIABLE}"),
                ("b", "${file:/nonexistent/secret}"),
                ("c", "${vault:x}"),
                ("d", "x${env:"),
                ("host", "evil"),
                ("e", "line\r\nbreak"),
            ],
            &["content-length"],
        );
        let text = problems.join("\n");
        for want in [
            "headers.set.a: environment variable \"WEIR_TEST_SURELY_UNSET_VARIABLE\" is not set",
            "headers.set.b: cannot read secret file \"/nonexistent/secret\"",
            "headers.set.c: ${vault:x} is neither",
            "headers.set.d: an unclosed ${",
            "headers.set.host: host is the gateway's to set",
            "headers.set.e: the value (after reading its secrets) is empty or not a valid header value",
            "headers.remove[0]: content-length is the gateway's to set",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("evil") && !text.contains("line"));
    }

    #[test]
    fn h2_needs_tls_and_h2c_refuses_it() {
        let tls = UpstreamTlsConfig {
            sni: Some("api.example.com".into()),
            ca_file: None,
            verify: true,
            client_cert: None,
            client_key: None,
        };
        let mut problems = Problems::default();
        assert!(check_tls(None, Protocol::H2, "pools[p]", &mut problems).is_none());
        assert!(check_tls(Some(&tls), Protocol::H2c, "pools[p]", &mut problems).is_none());
        let ok = check_tls(Some(&tls), Protocol::H2, "pools[p]", &mut problems).unwrap();
        assert_eq!(ok.sni.as_deref(), Some("api.example.com"));
        let text: Vec<String> = problems.0.into_iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("pools[p].protocol: \"h2\" is HTTP/2 over TLS"));
        assert!(text[1].starts_with("pools[p].tls: \"h2c\" is cleartext"));
    }
}
