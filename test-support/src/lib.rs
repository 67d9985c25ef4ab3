//! Test and demo helpers.
//!
//! - [`Upstream`]: a small HTTP/1.1 + h2c server on a real socket that answers
//!   every request with JSON naming itself; it can be stopped (its listener and
//!   every open connection are closed) to simulate a dead backend.
//! - [`Weir`]: starts the real `weir` binary with a config in a temp dir on
//!   OS-chosen ports, waits for its launch line and for `/readyz`, and kills it
//!   when dropped.
//! - [`Engine`]: the real `weir-engine` on OS-chosen ports, over the shipped
//!   models or any repository, waited for by its "listening" line and killed
//!   when dropped.
//! - [`Etcd`]: a real single-member etcd in a temp dir on OS-chosen ports,
//!   which can be stopped and resumed to simulate an outage.
//! - [`Redis`]: a real Redis on an OS-chosen port, which can be stopped and
//!   started again.
//! - [`wasm`]: hand-written filter modules that misbehave on demand.
//! - [`OtlpSink`]: an OTLP/gRPC trace collector that keeps what it gets.
//! - [`Load`]: a closed-loop load through a gateway that records failures
//!   and which upstream answered.
//! - [`Relay`]: a TCP relay that can be cut and restored, to take one
//!   client's network path away.

use std::net::SocketAddr;
use std::time::Duration;

pub mod engine;
pub mod etcd;
pub mod load;
pub mod otlp;
mod process;
pub mod redis;
pub mod relay;
pub mod upstream;
pub mod wasm;
pub mod weir;

pub use engine::Engine;
pub use etcd::Etcd;
pub use load::Load;
pub use otlp::OtlpSink;
pub use redis::Redis;
pub use relay::Relay;
pub use upstream::Upstream;
pub use weir::Weir;

/// An HTTP client for tests: keep-alive pool, no proxy, generous timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The text of a Prometheus `/metrics` page at `url`.
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    Ok(client().get(url).send().await?.text().await?)
}

/// The value of `series` (exact, labels included, e.g.
/// `weir_config_reloads_total{result="rejected"}`) in a Prometheus text
/// exposition; `None` when absent, an error when its value is not a number.
pub fn sample(text: &str, series: &str) -> anyhow::Result<Option<f64>> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(series)
            && let Some(v) = rest.strip_prefix(' ')
        {
            return Ok(Some(v.trim().parse()?));
        }
    }
    Ok(None)
}

/// The value of the first sample of metric `name` in a Prometheus text page
/// whose labels include every `label="value"` of `labels`, in any order.
pub fn sample_with(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let start = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&start))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `check` until it returns `Some`, at most `limit`, with a short backoff.
/// This is how tests wait for a condition instead of sleeping blindly.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut backoff = Backoff::new(limit);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        tokio::time::sleep(backoff.next()?).await;
    }
}

/// [`eventually`] for tests without a runtime (plain threads): polls `check`
/// until it returns `Some`, at most `limit`, with the same backoff.
pub fn eventually_sync<T>(
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let mut backoff = Backoff::new(limit);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        std::thread::sleep(backoff.next()?);
    }
}

/// The pauses between the checks of [`eventually`]: 5 ms, doubling up to
/// 100 ms, until the limit.
struct Backoff {
    limit: Duration,
    deadline: std::time::Instant,
    delay: Duration,
}

impl Backoff {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            deadline: std::time::Instant::now() + limit,
            delay: Duration::from_millis(5),
        }
    }

    /// The next pause, or an error once the limit has passed.
    fn next(&mut self) -> anyhow::Result<Duration> {
        if std::time::Instant::now() >= self.deadline {
            anyhow::bail!("condition not met within {:?}", self.limit);
        }
        let delay = self.delay;
        self.delay = (delay * 2).min(Duration::from_millis(100));
        Ok(delay)
    }
}

/// The address after `key` (e.g. `proxy=`) in a launch line such as
/// `weir listening proxy=127.0.0.1:1234 admin=127.0.0.1:5678`.
pub fn launch_addr(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .with_context(|| format!("no {key} in launch line {line:?}"))?
        .parse()
        .with_context(|| format!("bad address in {line:?}"))
}

/// `http://ADDR` for a socket address.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
