//! The engine's sandbox (`weir_conf::sandbox`): entered by the binary
//! after its listeners are bound and ONNX Runtime's library is found,
//! before ONNX Runtime's environment or the async runtime starts a thread
//! and before any model file is read.
//!
//! Readable: the model repository, the public key, the ONNX Runtime
//! library's folder (the CUDA provider libraries beside it are loaded
//! later), the etcd registration's TLS files and password file, and what
//! every process needs (`Rules::base`: system libraries,
//! name service files, `/proc`, `/sys`, `/dev/null`, `/dev/urandom`). With
//! `--device cuda` or `auto`, also the NVIDIA device files (read-write),
//! `/usr/local/cuda` and the folders of `LD_LIBRARY_PATH`. Nothing is
//! writable. Every other file, even one a model's folder links to, is
//! refused with `EACCES`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use weir_conf::sandbox::{Mode, Report, Rules};

use crate::config::Args;
use crate::error::{Error, Result};
use crate::runtime::{self, DeviceRequest};
use crate::server::Listeners;

/// What was applied, once entered (absent: not entered, e.g. in tests
/// that serve an engine in their own process).
pub static APPLIED: OnceLock<Report> = OnceLock::new();

/// The rules for `args`, with ONNX Runtime at `library`.
pub fn rules(args: &Args, library: &Path) -> Rules {
    let mut rules = Rules::base()
        .read(&args.models)
        .read(args.public_key_path());
    if let Some(dir) = library.parent() {
        rules = rules.read(dir);
    }
    // Registration in a secured etcd reads its TLS files and a password
    // file when it connects, after the sandbox is entered.
    let register = &args.register;
    for file in [
        &register.register_cacert,
        &register.register_cert,
        &register.register_key,
    ]
    .into_iter()
    .flatten()
    {
        rules = rules.read(file);
    }
    for path in weir_conf::secrets::files(register.register_user.as_deref().unwrap_or("")) {
        rules = rules.read(path);
    }
    if args.device != DeviceRequest::Cpu {
        for device in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"] {
            rules = rules.write(device);
        }
        for n in 0..16 {
            let device = PathBuf::from(format!("/dev/nvidia{n}"));
            if device.exists() {
                rules = rules.write(device);
            }
        }
        rules = rules.read("/usr/local/cuda");
        if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
            for dir in std::env::split_paths(&paths) {
                rules = rules.read(dir);
            }
        }
    }
    rules
}

/// Binds the listeners, enters the sandbox (as `--sandbox` says), then loads
/// ONNX Runtime; returns the listeners to serve on (`None` with
/// `--sandbox off`: they are bound later, as without a sandbox). Call it
/// before any thread is started.
pub fn enter(args: &Args) -> Result<Option<Listeners>> {
    if args.sandbox == Mode::Off {
        tracing::info!("sandbox off (--sandbox off)");
        return Ok(None);
    }
    let listeners = Listeners::bind(args)?;
    let library = runtime::resolve_library(args.ort_lib.as_deref())?;
    let rules = rules(args, &library);
    let report = weir_conf::sandbox::apply(args.sandbox, &rules, false)
        .map_err(|e| Error::Config(format!("--sandbox on: {e}")))?;
    // ONNX Runtime starts a thread of its own when its environment is
    // made: inside the sandbox, or that thread would stay outside
    // Landlock's rules (which bind only threads started after them).
    runtime::init_environment(&library)?;
    tracing::info!(
        no_new_privs = report.no_new_privs,
        landlock = report.landlock,
        seccomp = report.seccomp,
        readable = rules.read.len(),
        missing = %report.missing.join("; "),
        "sandbox applied"
    );
    let _ = APPLIED.set(report);
    Ok(Some(listeners))
}
