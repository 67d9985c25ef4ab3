//! Shared set-up for the benches: an in-process engine over the shipped
//! models and the ONNX Runtime library from `ORT_DYLIB_PATH` (or `.ort/`).
#![allow(clippy::panic, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser as _;
use weir_engine::engine::Engine;

/// The crate's folder.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library.
pub fn ort_lib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.ort/libonnxruntime.so.1.31.1"))
}

/// An engine serving `models` from the shipped repository.
pub fn engine(models: &[&str], extra: &[&str]) -> Arc<Engine> {
    let repo = crate_dir().join("models/repo");
    let lib = ort_lib();
    let mut args = vec![
        "weir-engine".to_string(),
        "--models".into(),
        repo.display().to_string(),
        "--ort-lib".into(),
        lib.display().to_string(),
        "--queue-capacity".into(),
        "4096".into(),
    ];
    for m in models {
        args.push("--model".into());
        args.push((*m).to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let args = weir_engine::Args::parse_from(args);
    match Engine::start(&args) {
        Ok(e) => e,
        Err(e) => panic!("engine: {e}"),
    }
}

/// A multi-threaded runtime like the binary's.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}
