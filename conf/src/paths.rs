//! The files a config document names: what the gateway reads after it
//! starts (the sandbox keeps their folders readable, `weir --sandbox`).

use std::path::PathBuf;

use crate::filters::types::BUNDLED_MODULE;
use crate::model::Config;

/// Every file `config` names for reading: TLS certificates and keys
/// (listener, upstreams, etcd), the hosts file, Wasm modules and word
/// lists, JWT key files, and every `${file:PATH}` secret in any value.
/// Not the etcd last-good cache (written, not only read). In document
/// order, without duplicates.
pub fn named_files(config: &Config) -> Vec<PathBuf> {
    let mut out: Vec<String> = Vec::new();
    let server = &config.server;
    if let Some(tls) = &server.tls {
        out.extend([tls.cert.clone(), tls.key.clone()]);
    }
    out.extend(server.hosts_file.clone());
    for pool in &config.pools {
        if let Some(tls) = &pool.tls {
            out.extend(
                [&tls.ca_file, &tls.client_cert, &tls.client_key]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
    }
    for filter in &config.filters {
        if filter.module != BUNDLED_MODULE {
            out.push(filter.module.clone());
        }
        out.extend(filter.words_file.clone());
    }
    for jwt in &config.auth.jwt {
        out.extend(
            [&jwt.secret_file, &jwt.public_key_file, &jwt.jwks_file]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(tls) = config
        .source
        .as_ref()
        .and_then(|s| s.etcd.as_ref())
        .and_then(|e| e.tls.as_ref())
    {
        out.extend(
            [&tls.ca, &tls.cert, &tls.key]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    // Secrets may sit in any string value (headers, tokens, passwords).
    if let Ok(value) = serde_json::to_value(config) {
        secret_files(&value, &mut out);
    }
    let mut seen = std::collections::HashSet::new();
    out.into_iter()
        .filter(|p| !p.is_empty() && seen.insert(p.clone()))
        .map(PathBuf::from)
        .collect()
}

fn secret_files(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => {
            out.extend(crate::secrets::files(s).into_iter().map(str::to_owned));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| secret_files(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| secret_files(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_kind_of_named_file_is_listed_once() {
        let text = r#"
            [server]
            hosts_file = "/etc/weir/hosts"
            admin_token_sha256 = "${file:/run/secrets/admin}"
            [server.tls]
            listen = "127.0.0.1:0"
            cert = "/tls/cert.pem"
            key = "/tls/key.pem"

            [[pools]]
            name = "p"
            backends = [{ address = "127.0.0.1:1" }]
            tls = { ca_file = "/ca/pool.pem", client_cert = "/c/c.pem", client_key = "/c/k.pem" }
            headers = { set = { authorization = "Bearer ${file:/run/secrets/key}" } }

            [[filters]]
            name = "own"
            module = "/wasm/own.wasm"
            [[filters]]
            name = "bundled"
            module = "sensitive-words"
            words_file = "words.txt"

            [[auth.jwt]]
            name = "idp"
            algorithm = "RS256"
            jwks_file = "/jwks/keys.json"

            [[routes]]
            name = "r"
            prefix = "/"
            arms = [{ name = "a", pool = "p", weight = 100 }]

            [source.etcd]
            endpoints = ["https://127.0.0.1:1"]
            cache = "/var/cache/weir/config.json"
            username = "weir"
            password = "${file:/run/secrets/key}"
            tls = { ca = "/tls/cert.pem", cert = "/etcd/c.pem", key = "/etcd/k.pem" }
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let files: Vec<String> = named_files(&config)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut sorted = files.clone();
        sorted.sort();
        let mut expected = vec![
            "/tls/cert.pem",
            "/tls/key.pem",
            "/etc/weir/hosts",
            "/ca/pool.pem",
            "/c/c.pem",
            "/c/k.pem",
            "/wasm/own.wasm",
            "words.txt",
            "/jwks/keys.json",
            "/etcd/c.pem",
            "/etcd/k.pem",
            "/run/secrets/admin",
            "/run/secrets/key",
        ];
        expected.sort();
        assert_eq!(sorted, expected, "{files:?}");
    }
}
