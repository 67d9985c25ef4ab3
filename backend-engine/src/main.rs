//! `weir-engine`: see the crate documentation and backend-engine/README.md.

use std::io::Write as _;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = weir_engine::Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn")),
        );
    match args.log_format {
        weir_engine::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        weir_engine::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // Before the runtime starts a thread: Landlock binds the calling
    // thread and the threads it starts afterwards.
    let listeners = match weir_engine::sandbox::enter(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("weir-engine: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-engine: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(weir_engine::server::run_with(
        args,
        listeners,
        shutdown_signal(),
        |bound| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", bound.listening_line());
            let _ = out.flush();
        },
    ));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-engine: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
