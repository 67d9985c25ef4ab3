//! `weirctl`: the operator CLI for Weir's config in etcd (see
//! [`weir_gateway::ctl`]).

use std::process::ExitCode;

use clap::Parser;
use weir_gateway::ctl::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    run(Cli::parse()).await
}
