//! `weir-demo-upstream --listen ADDR --name NAME`: a tiny HTTP server that
//! answers every request with JSON naming itself (the quickstart's stand-in
//! for model backends).

use std::net::SocketAddr;

use clap::Parser;

/// A demo upstream that names itself in every answer.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in `x-upstream` and the JSON body.
    #[arg(long, default_value = "v1")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = weir_test_support::Upstream::start(&args.name, args.listen).await?;
    println!(
        "weir-demo-upstream {} listening on {}",
        upstream.name, upstream.addr
    );
    tokio::select! {
        _ = upstream.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
