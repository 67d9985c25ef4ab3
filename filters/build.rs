//! Builds the sensitive-word guest (`guest/sensitive-words`) for
//! `wasm32-unknown-unknown` with a nested cargo and exports the module's path
//! as `WEIR_SENSITIVE_WORDS_WASM`.
//!
//! The nested build gets its own target directory under `OUT_DIR` (sharing
//! the outer one would deadlock on its lock) and none of the outer cargo's
//! environment that would change how it builds (rustflags, target, wrappers,
//! jobserver, package metadata).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST: &str = "guest/sensitive-words";
const TARGET: &str = "wasm32-unknown-unknown";
const ARTIFACT: &str = "weir_sensitive_words.wasm";

/// Outer-build variables that must not reach the nested cargo.
const REMOVED: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "MAKEFLAGS",
    "MFLAGS",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_INCREMENTAL",
];

/// Prefixes of outer-build variables that must not reach the nested cargo.
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_PROFILE_",
    "CARGO_TARGET_",
    "DEP_",
];

fn main() {
    if let Err(message) = build() {
        for line in message.lines() {
            println!("cargo::error={line}");
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let guest = manifest_dir.join(GUEST);
    for input in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo::rerun-if-changed={}", guest.join(input).display());
    }
    check_target_installed()?;

    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if REMOVED.contains(&name) || REMOVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            command.env_remove(name);
        }
    }
    let output = command
        .output()
        .map_err(|e| format!("could not run cargo for the Wasm guest: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "building the Wasm guest {} failed:\n{stderr}",
            guest.display()
        ));
    }
    let wasm = target_dir.join(TARGET).join("release").join(ARTIFACT);
    if !wasm.is_file() {
        return Err(format!("the Wasm guest build left no {}", wasm.display()));
    }
    println!(
        "cargo::rustc-env=WEIR_SENSITIVE_WORDS_WASM={}",
        wasm.display()
    );
    Ok(())
}

/// Fails with the fix when the sysroot has no `wasm32-unknown-unknown` std.
fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("could not run rustc: {e}"))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let libdir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib");
    if libdir.is_dir() {
        return Ok(());
    }
    Err(format!(
        "the Rust target {TARGET} is not installed (no {}); the sensitive-word \
         filter is compiled to Wasm from source.\nInstall it with: rustup target add {TARGET}",
        libdir.display()
    ))
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("cargo did not set {name}"))
}
