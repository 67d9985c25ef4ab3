//! A pool at run time: its Pingora load balancer and its health checks.
//!
//! A pool whose definition did not change is carried over from one runtime
//! to the next as it is. A pool whose *members* changed (an operator edit, an
//! engine registering or its lease expiring) gets a new balancer, but keeps
//! its [`PoolHealth`] as long as its health-check settings are the same: the
//! health state lives in a Pingora `HealthRegistry` shared by the old and the
//! new balancer, so surviving backends keep the state they had (a backend
//! found down stays down) and only new members start out healthy.
//!
//! [`PoolRt::build`] changes nothing live; [`PoolRt::commit`] (after the
//! swap) points the health gauges at the new balancer, starts the health
//! checks of a new pool and retires the series of departed backends.
//! [`PoolRt::pick`] chooses the backend for one attempt: by least request
//! ([`crate::balance`], the default) or weighted round robin, among healthy
//! backends whose breaker admits the request. Each backend's load estimate
//! survives reloads like its breaker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{CertKey, WrappedX509, parse_x509};
use pingora_load_balancing::health_check::{HealthCheck as Probe, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer, discovery};
use weir_conf::model::{Balance, HealthCheckKind};
use weir_conf::{HealthCheck, Pool};

use crate::balance::{self, InFlight, Load};
use crate::breaker::{Admit, Attempt, Breaker, BreakerSet};
use crate::metrics::Metrics;

/// A pool's backends with their health; its weighted round robin serves
/// pools with `balance = "round_robin"`.
pub type Balancer = LoadBalancer<RoundRobin>;

/// The addresses `pool`'s host names resolve to now, each with the name it
/// came from and its weight, sorted; addresses the pool also lists by IP
/// are left out.
pub fn resolved(
    pool: &Pool,
    resolver: &crate::resolve::Resolver,
) -> Vec<(std::net::SocketAddr, String, u32)> {
    let mut out: Vec<(std::net::SocketAddr, String, u32)> = Vec::new();
    for n in &pool.names {
        for addr in resolver.addrs(&n.host, n.port) {
            let listed = pool.backends.iter().any(|b| b.addr == addr)
                || out.iter().any(|(a, _, _)| *a == addr);
            if !listed {
                out.push((addr, n.host.clone(), n.weight));
            }
        }
    }
    out.sort();
    out
}

/// One backend of a pool with what choosing it needs.
pub struct Member {
    /// The backend.
    pub backend: Backend,
    /// Its weight.
    pub weight: u32,
    /// The host name it was resolved from, if any.
    pub host: Option<String>,
    /// Its load estimate.
    pub load: Arc<Load>,
    /// Its breaker (when breakers are on).
    breaker: Option<Arc<Breaker>>,
    /// Whether it passes health checks: the health registry's word, read
    /// when the pool is built and gone live and after each round of
    /// checks ([`PoolRt::refresh_ready`]), so that a pick reads a flag
    /// instead of looking the backend up by a hash of it.
    ready: AtomicBool,
}

/// The active health checks of one pool, shared by the balancers of
/// consecutive runtimes while the settings stay the same.
pub struct PoolHealth {
    settings: HealthCheck,
    registry: Arc<HealthRegistry>,
    /// The newest pool: the health gauges report its members and their
    /// readiness flags follow the checks.
    latest: Arc<Mutex<Weak<PoolRt>>>,
    /// The check loop, started when the first runtime using it goes live.
    task: OnceLock<tokio::task::AbortHandle>,
    pool: String,
}

impl Drop for PoolHealth {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl PoolHealth {
    /// The checks of `pool`, not yet running.
    fn new(pool: &Pool) -> Result<Self, String> {
        let hc = &pool.health;
        let probe: Box<dyn Probe + Send + Sync> = match hc.kind {
            HealthCheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.consecutive_failure = hc.unhealthy_threshold;
                check.consecutive_success = hc.healthy_threshold;
                check.peer_template.options.connection_timeout = Some(hc.timeout);
                check
            }
            HealthCheckKind::Http => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.consecutive_failure = hc.unhealthy_threshold;
                check.consecutive_success = hc.healthy_threshold;
                check.peer_template.options.connection_timeout = Some(hc.timeout);
                check.peer_template.options.read_timeout = Some(hc.timeout);
                check
                    .req
                    .set_uri(hc.path.parse().map_err(|e| format!("health path: {e}"))?);
                Box::new(check)
            }
            HealthCheckKind::None => return Err("no health check".to_owned()),
        };
        let registry = Arc::new(HealthRegistry::new());
        registry.set_health_check(probe);
        Ok(Self {
            settings: hc.clone(),
            registry,
            latest: Arc::new(Mutex::new(Weak::new())),
            task: OnceLock::new(),
            pool: pool.name.clone(),
        })
    }

    /// Reports the members of `pool` from now on (their flags brought up
    /// to date at once), starting the check loop on the current tokio
    /// runtime if it is not running yet.
    fn activate(&self, pool: &Arc<PoolRt>, metrics: &Metrics) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Arc::downgrade(pool);
        }
        pool.refresh_ready();
        self.task.get_or_init(|| {
            tokio::spawn(health_loop(
                Arc::clone(&self.registry),
                Arc::clone(&self.latest),
                self.pool.clone(),
                self.settings.interval,
                metrics.clone(),
            ))
            .abort_handle()
        });
    }
}

/// A pool's upstream TLS, parsed once per pool build.
pub struct PoolTls {
    /// The server name to send and verify (`None`: the backend's address).
    pub sni: Option<String>,
    /// Verify the backends' certificates.
    pub verify: bool,
    /// The CAs that may sign them (`None`: the system's roots).
    pub ca: Option<Arc<CaType>>,
    /// The client certificate and key.
    pub client: Option<Arc<CertKey>>,
}

impl PoolTls {
    fn build(pool: &Pool) -> Result<Option<Self>, String> {
        let Some(t) = &pool.tls else {
            return Ok(None);
        };
        let at = |what: &str| format!("pool {}: tls.{what}", pool.name);
        let ca = match &t.ca_pem {
            Some(pem) => {
                let certs = certificates(pem).map_err(|e| format!("{}: {e}", at("ca_file")))?;
                Some(Arc::from(certs.into_boxed_slice()))
            }
            None => None,
        };
        let client = match &t.client {
            Some((cert, key)) => {
                let chain: Vec<Vec<u8>> = certificates(cert)
                    .map_err(|e| format!("{}: {e}", at("client_cert")))?
                    .iter()
                    .map(|c| c.borrow_raw_cert().clone())
                    .collect();
                let key = rustls_pemfile::private_key(&mut &key[..])
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("{}: no private key", at("client_key")))?;
                Some(Arc::new(CertKey::new(chain, key.secret_der().to_vec())))
            }
            None => None,
        };
        if !t.verify {
            tracing::warn!(
                pool = %pool.name,
                "tls.verify = false: the backends' certificates are NOT verified; anyone on the path can impersonate them"
            );
        }
        Ok(Some(Self {
            sni: t.sni.clone(),
            verify: t.verify,
            ca,
            client,
        }))
    }
}

/// The certificates of a PEM text, each checked to parse (Pingora's own
/// parse of them panics on a bad one).
fn certificates(pem: &[u8]) -> Result<Vec<WrappedX509>, String> {
    let mut out = Vec::new();
    for der in rustls_pemfile::certs(&mut &pem[..]) {
        let der = der.map_err(|e| format!("bad PEM: {e}"))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        out.push(WrappedX509::new(der.as_ref().to_vec(), parse_x509));
    }
    if out.is_empty() {
        return Err("no certificate".to_owned());
    }
    Ok(out)
}

/// A pool with its balancer and health checks.
pub struct PoolRt {
    /// The validated pool definition.
    pub config: Pool,
    /// The balancer (weights and health).
    pub lb: Arc<Balancer>,
    /// The backends' circuit breakers.
    pub breakers: BreakerSet,
    /// The backends in the config's order, with their load estimates.
    pub members: Vec<Member>,
    /// Running sums of the members' weights, for drawing by weight.
    cumulative: Vec<u64>,
    /// Upstream TLS, when the pool has it.
    pub tls: Option<PoolTls>,
    /// The addresses its host names resolved to when it was built (with
    /// the name and weight): a pool is rebuilt when they change.
    pub resolved: Vec<(std::net::SocketAddr, String, u32)>,
    health: Option<Arc<PoolHealth>>,
}

impl PoolRt {
    /// Builds the balancer. Its health state is `previous`'s when that is a
    /// pool of the same name with the same health-check settings; otherwise
    /// new health checks are prepared (they start at [`PoolRt::commit`]).
    /// Surviving backends keep their breakers likewise.
    pub async fn build(
        config: Pool,
        resolved: Vec<(std::net::SocketAddr, String, u32)>,
        previous: Option<&PoolRt>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        // The backends to use: those listed by IP and those the names
        // resolved to, in that order.
        let mut effective = config.clone();
        effective
            .backends
            .extend(resolved.iter().map(|(addr, _, weight)| weir_conf::Backend {
                addr: *addr,
                weight: *weight,
            }));
        let host_of = |addr: &std::net::SocketAddr| {
            resolved
                .iter()
                .find(|(a, _, _)| a == addr)
                .map(|(_, h, _)| h.clone())
        };
        let mut set = BTreeSet::new();
        for b in &effective.backends {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight as usize)
                .map_err(|e| format!("pool {}: backend {}: {e}", config.name, b.addr))?;
            set.insert(backend);
        }
        let previous = previous.filter(|p| p.config.name == config.name);
        let tls = PoolTls::build(&config)?;
        let breakers = BreakerSet::build(&effective, previous.map(|p| &p.breakers), metrics);
        let inherited = previous
            .and_then(|p| p.health.as_ref())
            .filter(|h| h.settings == config.health)
            .map(Arc::clone);
        let health = match (inherited, config.health.kind) {
            (_, HealthCheckKind::None) => None,
            (Some(h), _) => Some(h),
            (None, _) => Some(Arc::new(PoolHealth::new(&config)?)),
        };
        let discovery = discovery::Static::new(set);
        let backends = match &health {
            Some(h) => Backends::new_with_health_registry(discovery, Arc::clone(&h.registry)),
            None => Backends::new(discovery),
        };
        let lb = Balancer::from_backends(backends);
        lb.update()
            .await
            .map_err(|e| format!("pool {}: {e}", config.name))?;
        let mut members = Vec::with_capacity(effective.backends.len());
        let mut cumulative = Vec::with_capacity(effective.backends.len());
        let mut total = 0u64;
        for b in &effective.backends {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight as usize)
                .map_err(|e| format!("pool {}: backend {}: {e}", config.name, b.addr))?;
            let load = previous
                .and_then(|p| p.members.iter().find(|m| m.backend.addr == backend.addr))
                .map_or_else(|| Arc::new(Load::default()), |m| Arc::clone(&m.load));
            total += u64::from(b.weight);
            cumulative.push(total);
            let ready = AtomicBool::new(lb.backends().ready(&backend));
            members.push(Member {
                ready,
                breaker: breakers
                    .enabled()
                    .then(|| breakers.get(&b.addr))
                    .flatten()
                    .cloned(),
                weight: b.weight,
                host: host_of(&b.addr),
                backend,
                load,
            });
        }
        Ok(Self {
            config,
            lb: Arc::new(lb),
            breakers,
            members,
            cumulative,
            tls,
            resolved,
            health,
        })
    }

    /// Run once the runtime holding this pool is live; `previous` is the
    /// pool of the same name it replaced, if any.
    pub fn commit(self: &Arc<Self>, previous: Option<&PoolRt>, metrics: &Metrics) {
        if let Some(h) = &self.health {
            h.activate(self, metrics);
        }
        if let Some(p) = previous {
            self.breakers
                .retire_departed(&p.breakers, &self.config.name, metrics);
        }
    }

    /// Chooses a healthy backend, not one of `tried`, whose breaker admits a
    /// request at `now` ([`crate::window::now_ms`]). The [`Attempt`] (when the
    /// pool has breakers) is to be settled with the attempt's outcome; the
    /// [`InFlight`] counts the request in the backend's load until dropped.
    pub fn pick(
        &self,
        tried: &[pingora_core::protocols::l4::socket::SocketAddr],
        now: u64,
    ) -> Option<(Backend, Option<Attempt>, InFlight)> {
        match self.config.balance {
            Balance::LeastRequest => self.least_request(tried, now),
            Balance::RoundRobin => {
                let (backend, attempt) = self.round_robin(tried, now)?;
                let load = self
                    .members
                    .iter()
                    .find(|m| m.backend.addr == backend.addr)
                    .map_or_else(|| Arc::new(Load::default()), |m| Arc::clone(&m.load));
                let in_flight = load.start(balance::now_ns());
                Some((backend, attempt, in_flight))
            }
        }
    }

    /// Power of two choices on the members' load ([`balance::pick`]); the
    /// chosen member's load counts the request from here.
    fn least_request(
        &self,
        tried: &[pingora_core::protocols::l4::socket::SocketAddr],
        now: u64,
    ) -> Option<(Backend, Option<Attempt>, InFlight)> {
        let now_ns = balance::now_ns();
        // Members whose breaker said no after all (a race for the last
        // half-open probe); allocated only then.
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let i = balance::pick(
                &self.cumulative,
                |i| self.members[i].load.cost(now_ns) / f64::from(self.members[i].weight),
                |i| {
                    let m = &self.members[i];
                    !refused.contains(&i)
                        && !tried.contains(&m.backend.addr)
                        && m.breaker.as_ref().is_none_or(|b| b.may_admit(now))
                        && m.ready.load(Ordering::Relaxed)
                },
            )?;
            let m = &self.members[i];
            let attempt = match &m.breaker {
                None => None,
                Some(breaker) => match breaker.admit(now) {
                    Admit::No => {
                        refused.push(i);
                        continue;
                    }
                    Admit::Yes => Some(Attempt::new(Arc::clone(breaker), false)),
                    Admit::Probe => Some(Attempt::new(Arc::clone(breaker), true)),
                },
            };
            return Some((m.backend.clone(), attempt, m.load.start(now_ns)));
        }
    }

    /// Weighted round robin over the healthy backends.
    fn round_robin(
        &self,
        tried: &[pingora_core::protocols::l4::socket::SocketAddr],
        now: u64,
    ) -> Option<(Backend, Option<Attempt>)> {
        let breakers = &self.breakers;
        let probe = std::cell::Cell::new(false);
        let backend = self.lb.select_with(b"", 256, |b, healthy| {
            if !healthy || tried.contains(&b.addr) {
                return false;
            }
            if !breakers.enabled() {
                return true;
            }
            match b.addr.as_inet().and_then(|a| breakers.get(a)) {
                None => true,
                Some(breaker) => match breaker.admit(now) {
                    Admit::No => false,
                    Admit::Yes => true,
                    Admit::Probe => {
                        probe.set(true);
                        true
                    }
                },
            }
        })?;
        let attempt = breakers
            .enabled()
            .then(|| backend.addr.as_inet().and_then(|a| breakers.get(a)))
            .flatten()
            .map(|breaker| Attempt::new(Arc::clone(breaker), probe.get()));
        Some((backend, attempt))
    }

    /// The member whose address has `tag` ([`address_tag`]): where a task
    /// polled for ran. Health and breaker are not asked (the task lives
    /// there or nowhere); its load counts the poll.
    pub fn pick_tagged(&self, tag: u64) -> Option<(Backend, InFlight)> {
        let m = self
            .members
            .iter()
            .find(|m| address_tag(&m.backend.addr) == tag)?;
        Some((m.backend.clone(), m.load.start(balance::now_ns())))
    }

    /// Whether a member's address has `tag`.
    pub fn has_tag(&self, tag: u64) -> bool {
        self.members
            .iter()
            .any(|m| address_tag(&m.backend.addr) == tag)
    }

    /// The host name `backend` was resolved from, if it was.
    pub fn host_name(&self, backend: &Backend) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.backend.addr == backend.addr)
            .and_then(|m| m.host.as_deref())
    }

    /// Copies the health registry's word on each member into its flag.
    fn refresh_ready(&self) {
        for m in &self.members {
            let ready = self.lb.backends().ready(&m.backend);
            m.ready.store(ready, Ordering::Relaxed);
        }
    }

    /// Whether `backend` currently passes health checks (the registry's
    /// word, as the admin API reports it).
    pub fn healthy(&self, backend: &Backend) -> bool {
        self.lb.backends().ready(backend)
    }
}

/// A backend's tag in the task ids it answers: a hash of its address, the
/// same in every replica, that does not show the address.
pub fn address_tag(addr: &pingora_core::protocols::l4::socket::SocketAddr) -> u64 {
    xxhash_rust::xxh3::xxh3_64(addr.to_string().as_bytes())
}

async fn health_loop(
    registry: Arc<HealthRegistry>,
    latest: Arc<Mutex<Weak<PoolRt>>>,
    pool: String,
    interval: Duration,
    metrics: Metrics,
) {
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        registry.run_health_check(true).await;
        let newest = latest.lock().ok().and_then(|l| l.upgrade());
        if let Some(newest) = newest {
            newest.refresh_ready();
            let mut now = BTreeSet::new();
            for m in &newest.members {
                let addr = m.backend.addr.to_string();
                metrics
                    .backend_healthy
                    .with_label_values(&[pool.as_str(), addr.as_str()])
                    .set(i64::from(m.ready.load(Ordering::Relaxed)));
                now.insert(addr);
            }
            // Members that left the pool leave the gauge too.
            for gone in reported.difference(&now) {
                let _ = metrics
                    .backend_healthy
                    .remove_label_values(&[pool.as_str(), gone.as_str()]);
            }
            reported = now;
        }
        tokio::time::sleep(interval).await;
    }
}
