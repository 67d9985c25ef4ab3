//! The gateway's sandbox (`weir_conf::sandbox`, `weir --sandbox`): entered
//! once the listeners are bound and a graceful upgrade has taken over the
//! old process's sockets, before Pingora, the OTLP exporter or any other
//! thread starts and before a Wasm module is compiled.
//!
//! Readable: the config file's folder; the folder of every file the config
//! names (TLS certificates and keys, Wasm modules, word lists, JWT keys,
//! CA bundles, `${file:}` secrets, the hosts file: folders rather than
//! files, so a file replaced by a rename — an editor, a Kubernetes
//! ConfigMap or Secret update — stays readable); `[server.sandbox] read`;
//! the gateway's own executable (CPU profiles resolve symbols in it); the
//! system's CA roots and time zones; and what every process needs
//! (`Rules::base`). Writable: the etcd last-good cache's folder and
//! `[server.sandbox] write`. The upgrade socket is bound before the
//! sandbox is entered, and connecting to it (the old process hands its
//! sockets over) needs no file right. Every other file is refused with
//! `EACCES`; exec, ptrace, mounts, namespaces, BPF, `perf_event_open` (the
//! CPU profile samples with `SIGPROF` timers, not perf events) and sockets
//! other than Unix, IPv4 and IPv6 are refused with `EPERM`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use weir_conf::Snapshot;
use weir_conf::sandbox::{Mode, Report, Rules};

/// What was applied, once entered (absent: `--sandbox off`, or not entered).
pub static APPLIED: OnceLock<Report> = OnceLock::new();

/// Public, read-only system data a gateway may need after it starts: CA
/// roots for TLS to upstreams, etcd and Redis, and time zones.
const SYSTEM_DATA: &[&str] = &[
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/share/zoneinfo",
];

/// The folder that holds `file` (`.` for a bare name). A file directly
/// under `/` stands for itself: its folder would be everything.
fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
        Some(p) if p == Path::new("/") => file.to_path_buf(),
        Some(p) => p.to_path_buf(),
        None => file.to_path_buf(),
    }
}

/// The rules for a gateway that loaded `snapshot` from `config_file` (if
/// any), keeping its etcd last-good cache at `cache` (if any).
pub fn rules(snapshot: &Snapshot, config_file: Option<&Path>, cache: Option<&Path>) -> Rules {
    let mut rules = Rules::base();
    for path in SYSTEM_DATA.iter().filter(|p| Path::new(p).exists()) {
        rules = rules.read(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        rules = rules.read(exe);
    }
    if let Some(file) = config_file {
        rules = rules.read(folder_of(file));
    }
    for file in weir_conf::paths::named_files(&snapshot.source) {
        rules = rules.read(folder_of(&file));
    }
    for path in &snapshot.server.sandbox.read {
        rules = rules.read(path);
    }
    if let Some(cache) = cache {
        rules = rules.write(folder_of(cache));
    }
    for path in &snapshot.server.sandbox.write {
        rules = rules.write(path);
    }
    rules.read.sort();
    rules.read.dedup();
    rules.write.sort();
    rules.write.dedup();
    rules
}

/// Enters the sandbox as `mode` says, with `rules`; logs what was applied.
/// Call it before any thread is started. `Err` only for `--sandbox on`
/// where the kernel cannot.
pub fn enter(mode: Mode, rules: &Rules) -> anyhow::Result<()> {
    if mode == Mode::Off {
        tracing::info!("sandbox off (--sandbox off)");
        return Ok(());
    }
    let base = Rules::base();
    for path in rules.read.iter().chain(&rules.write) {
        if !path.exists() && !base.read.contains(path) {
            tracing::warn!(path = %path.display(), "sandbox: a path to allow does not exist (not allowed)");
        }
    }
    let report = weir_conf::sandbox::apply(mode, rules, false)
        .map_err(|e| anyhow::anyhow!("--sandbox on: {e}"))?;
    tracing::info!(
        no_new_privs = report.no_new_privs,
        landlock = report.landlock,
        seccomp = report.seccomp,
        readable = rules.read.len(),
        writable = rules.write.len(),
        missing = %report.missing.join("; "),
        "sandbox applied"
    );
    let _ = APPLIED.set(report);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_named_file_stands_for_its_folder() {
        assert_eq!(
            folder_of(Path::new("/etc/weir/words.txt")),
            Path::new("/etc/weir")
        );
        assert_eq!(folder_of(Path::new("words.txt")), Path::new("."));
        assert_eq!(folder_of(Path::new("/words.txt")), Path::new("/words.txt"));
    }

    #[test]
    fn rules_cover_the_config_folder_named_files_and_the_cache() {
        let mut config = weir_conf::parse_toml(weir_conf::DEMO_CONFIG, "demo").unwrap();
        config.server.hosts_file = Some("/srv/names/hosts".to_owned());
        config.server.sandbox.read = vec!["/srv/modules".to_owned()];
        config.server.sandbox.write = vec!["/srv/scratch".to_owned()];
        let snapshot = Snapshot::build(config).unwrap();
        let rules = rules(
            &snapshot,
            Some(Path::new("/etc/weir/weir.toml")),
            Some(Path::new("/var/cache/weir/last-good.json")),
        );
        for read in ["/etc/weir", "/srv/names", "/srv/modules", "/proc"] {
            assert!(
                rules.read.contains(&PathBuf::from(read)),
                "{read}: {rules:?}"
            );
        }
        assert_eq!(
            rules.write,
            vec![
                PathBuf::from("/srv/scratch"),
                PathBuf::from("/var/cache/weir")
            ]
        );
    }
}
