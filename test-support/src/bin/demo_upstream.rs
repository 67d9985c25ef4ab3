//! `weir-demo-upstream --listen ADDR --name NAME`: a tiny HTTP server that
//! answers every request with JSON naming itself (the quickstart's stand-in
//! for model backends). With `--register-etcd URL --pool NAME` it joins a
//! gateway pool through etcd the way `weir-engine` does, and leaves it on
//! SIGINT/SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use register_args::RegisterArgs;
use weir_conf::etcd::Registration;

/// The registration flags, one definition shared with `weir-engine`.
#[path = "../../../backend-engine/src/register_args.rs"]
mod register_args;

/// A demo upstream that names itself in every answer.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in `x-upstream` and the JSON body.
    #[arg(long, default_value = "v1")]
    name: String,
    #[command(flatten)]
    register: RegisterArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = weir_test_support::Upstream::start(&args.name, args.listen).await?;
    let registration = match args.register.resolve(upstream.addr)? {
        Some((settings, options)) => Some(Registration::start(settings, options).await?),
        None => None,
    };
    println!(
        "weir-demo-upstream {} listening on {}",
        upstream.name, upstream.addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = upstream.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(registration) = registration {
        registration.deregister().await?;
    }
    Ok(())
}
