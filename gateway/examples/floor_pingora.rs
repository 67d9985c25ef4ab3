//! A measuring stick for `loadtest/budget.py --floors`: Pingora's HTTP/1
//! proxy (the vendored, patched crates weir runs on) with no hooks at all,
//! one thread, every request to one upstream. What it costs per request is
//! what the proxy machinery costs before weir does anything.
//!
//! ```text
//! floor_pingora --upstream 127.0.0.1:8080
//! floor_pingora listening proxy=127.0.0.1:PORT
//! ```

use std::io::Write;

use anyhow::{Context, Result};
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// Every request to one upstream, nothing else.
struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No response compression module (weir has none either).
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

/// weir's allocator, so that only the proxy around it differs.
#[global_allocator]
static GLOBAL: weir_gateway::alloc::Allocator = weir_gateway::alloc::Allocator;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let upstream = args
        .iter()
        .position(|a| a == "--upstream")
        .and_then(|i| args.get(i + 1))
        .context("usage: floor_pingora --upstream HOST:PORT")?
        .clone();
    // An OS-chosen port, freed for Pingora to bind again.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Floor { upstream });
    // The same listener options as weir's (h2c detection on).
    if let Some(app) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    service.add_tcp(&addr.to_string());
    server.add_service(service);
    // Printed before Pingora binds: callers wait until the port answers.
    println!("floor_pingora listening proxy={addr}");
    std::io::stdout().flush()?;
    server.run_forever()
}
