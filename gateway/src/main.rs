//! `weir`: serve (`weir [--config FILE] [--etcd URL[,URL]]`) or validate
//! (`weir check --config FILE`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_gateway::server::{ConfigSource, EtcdFlags, serve};

/// Pingora allocates and frees several buffers per request; mimalloc's
/// thread-local free lists make that markedly cheaper than glibc malloc
/// ([`weir_gateway::alloc::Allocator`]: mimalloc through its plain entry
/// points where the alignment allows).
#[global_allocator]
static GLOBAL: weir_gateway::alloc::Allocator = weir_gateway::alloc::Allocator;

/// Turns transparent huge pages off ([`weir_gateway::alloc::no_transparent_huge_pages`])
/// when the binary is loaded, before `main`: the allocator's first arena
/// pages are touched by the first allocation, and called first thing in
/// `main` it left two huge pages (4 MiB) made by the runtime's allocations
/// before it. `#[used]` keeps the `.init_array` entry, which the loader
/// runs with the other constructors.
#[cfg(target_os = "linux")]
#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the loader
// calls once, single-threaded, before `main`; this is such a function, and
// what it runs needs nothing `main` sets up (no allocation, no std state:
// `getenv` and `prctl` only).
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array")]
static THP_OFF_AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        weir_gateway::alloc::no_transparent_huge_pages();
    }
    at_load
};

/// Weir, the weighted-routing AI API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without it the embedded demo config is served.
    #[arg(long, short, global = true, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Take pools, routes and timeouts from etcd at these client URLs and
    /// watch them (overrides `[source.etcd] endpoints`).
    #[arg(
        long,
        global = true,
        env = "WEIR_ETCD",
        value_delimiter = ',',
        value_name = "URL[,URL]"
    )]
    etcd: Vec<String>,
    /// Key prefix of the config in etcd (default `/weir/`).
    #[arg(long, global = true, value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// Last-good cache file for the etcd config.
    #[arg(long, global = true, value_name = "FILE")]
    etcd_cache: Option<PathBuf>,
    /// Graceful upgrade: take over the proxy's listening socket from the
    /// running `weir` (through `[server] upgrade_sock`); start this, then
    /// send SIGQUIT to the old process, which finishes what it has and exits.
    #[arg(long)]
    upgrade: bool,
    /// Put the process in a sandbox (no_new_privs, Landlock, seccomp) once
    /// its listeners are bound: `auto` (default) wherever the kernel
    /// supports it, `on` (an error where it cannot), `off`. Extra paths:
    /// `[server.sandbox]`; docs/security.md lists the rules.
    #[arg(
        long,
        env = "WEIR_SANDBOX",
        default_value = "auto",
        value_name = "on|off|auto"
    )]
    sandbox: weir_conf::sandbox::Mode,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and list every problem.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = EtcdFlags {
        endpoints: cli.etcd,
        prefix: cli.etcd_prefix,
        cache: cli.etcd_cache,
    };
    let source = ConfigSource::resolve(cli.config, flags);
    // The log format is a `[server]` setting: read it before logging
    // starts (a config that does not load is reported below, in text).
    // Loaded once: `check` and `serve` use the same snapshot.
    let loaded = source.as_ref().ok().map(ConfigSource::load);
    let json =
        matches!(&loaded, Some(Ok(s)) if s.server.log_format == weir_conf::model::LogFormat::Json);
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if weir_gateway::alloc::thp_off() {
        tracing::debug!("transparent huge pages off for this process (MIMALLOC_ALLOW_THP unset)");
    }
    let source = match source {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = loaded.unwrap_or_else(|| source.load());
    match cli.command {
        Some(Command::Check) => match loaded {
            Ok(s) => {
                println!("ok: {} route(s), {} pool(s)", s.routes.len(), s.pools.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        None => match serve(source, loaded, cli.upgrade, cli.sandbox) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weir: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
