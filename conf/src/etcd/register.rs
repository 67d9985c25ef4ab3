//! Backends registering themselves as members of a pool.
//!
//! A backend (an engine replica) puts `{"address":"IP:PORT","weight":N}` at
//! `<prefix>pools/<pool>/members/<IP:PORT>`, attached to a lease with a TTL,
//! and keeps the lease alive. Gateways add the members of a pool to its
//! static backends. When the backend exits cleanly it calls
//! [`Registration::deregister`] (the key goes at once); when it dies, the lease
//! expires after the TTL and etcd deletes the key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weir_conf::etcd::EtcdError> {
//! use std::time::Duration;
//! use weir_conf::etcd::{EtcdSettings, Registration, RegistrationOptions};
//!
//! let settings = EtcdSettings::new(vec!["http://127.0.0.1:2379".into()], "/weir/");
//! let options = RegistrationOptions::new("engine-v1", "10.0.0.7:9001")
//!     .with_ttl(Duration::from_secs(10));
//! let registration = Registration::start(settings, options).await?;
//! // ... serve ...
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, PutOptions};

use super::backoff::Backoff;
use super::error::EtcdError;
use super::keys::member_key;
use super::settings::{EtcdSettings, TlsFiles};
use crate::error::Problems;
use crate::model::{BackendConfig, default_etcd_prefix};
use crate::names::is_name;
use crate::secrets::expand;

/// Default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// What to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationOptions {
    /// The pool to join.
    pub pool: String,
    /// The address gateways connect to (`IP:PORT`).
    pub address: String,
    /// The member's weight within the pool (1..=65535).
    pub weight: u32,
    /// Lease TTL: how long after the last keep-alive the member disappears.
    pub ttl: Duration,
}

impl RegistrationOptions {
    /// Joins `pool` as `address` with weight 1 and the default TTL.
    pub fn new(pool: &str, address: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            address: address.to_owned(),
            weight: 1,
            ttl: DEFAULT_TTL,
        }
    }

    /// Sets the lease TTL (whole seconds, at least one).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    fn check(&self) -> Result<(), EtcdError> {
        let bad = |m: String| Err(EtcdError::Lease(m));
        if self.address.parse::<SocketAddr>().is_err() {
            return bad(format!("{:?} is not an IP:PORT address", self.address));
        }
        if !is_name(&self.pool) {
            return bad(format!("{:?} is not a pool name", self.pool));
        }
        if !(1..=65_535).contains(&self.weight) {
            return bad(format!(
                "weight {} must be between 1 and 65535",
                self.weight
            ));
        }
        if self.ttl.as_secs() < 1 {
            return bad("the TTL must be at least one second".to_owned());
        }
        Ok(())
    }

    fn value(&self) -> Result<String, EtcdError> {
        serde_json::to_string(&BackendConfig {
            address: self.address.clone(),
            weight: i64::from(self.weight),
        })
        .map_err(|e| EtcdError::Lease(e.to_string()))
    }
}

/// The registration flags of a self-registering server (`weir-engine`, the
/// demo upstream): `--register-etcd URL[,URL] --pool NAME [--advertise ADDR]
/// [--register-weight N] [--register-ttl SECONDS] [--register-prefix PREFIX]`.
/// The binaries parse the flags and hand them over as this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterFlags {
    /// The gateways' etcd client URLs (`--register-etcd`); empty: no
    /// registration.
    pub register_etcd: Vec<String>,
    /// The gateway pool to join (`--pool`).
    pub pool: Option<String>,
    /// The address gateways connect to (`--advertise`; default: the bound
    /// listen address, which must then not be a wildcard such as 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Weight within the pool (`--register-weight`, default 1).
    pub register_weight: u32,
    /// Lease TTL in seconds (`--register-ttl`, default [`DEFAULT_TTL`]).
    pub register_ttl: u64,
    /// Key prefix of the gateways' config (`--register-prefix`, default
    /// `/weir/`).
    pub register_prefix: String,
    /// CA bundle that verifies etcd's certificate (`--register-cacert`;
    /// `https://` URLs).
    pub register_cacert: Option<PathBuf>,
    /// Client certificate and key (`--register-cert`, `--register-key`).
    pub register_cert: Option<PathBuf>,
    /// The client certificate's key.
    pub register_key: Option<PathBuf>,
    /// The server name etcd's certificate must carry, when not the URL's
    /// host (`--register-tls-domain`).
    pub register_tls_domain: Option<String>,
    /// `NAME:PASSWORD` for etcd authentication (`--register-user`); the
    /// password may be `${file:PATH}` or `${env:NAME}`.
    pub register_user: Option<String>,
}

impl Default for RegisterFlags {
    /// No registration; every other flag at its default.
    fn default() -> Self {
        Self {
            register_etcd: Vec::new(),
            pool: None,
            advertise: None,
            register_weight: 1,
            register_ttl: DEFAULT_TTL.as_secs(),
            register_prefix: default_etcd_prefix(),
            register_cacert: None,
            register_cert: None,
            register_key: None,
            register_tls_domain: None,
            register_user: None,
        }
    }
}

impl RegisterFlags {
    /// The registration to make for a server listening on `bound`, or `None`
    /// when `--register-etcd` is not given; `Err` names a bad flag.
    pub fn resolve(
        &self,
        bound: SocketAddr,
    ) -> Result<Option<(EtcdSettings, RegistrationOptions)>, EtcdError> {
        if self.register_etcd.is_empty() {
            return Ok(None);
        }
        let Some(pool) = &self.pool else {
            return Err(EtcdError::Lease("--register-etcd needs --pool".to_owned()));
        };
        let address = match self.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                return Err(EtcdError::Lease(format!(
                    "listening on {bound}: give --advertise IP:PORT, the address gateways reach"
                )));
            }
            None => bound,
        };
        let mut settings = EtcdSettings::new(self.register_etcd.clone(), &self.register_prefix);
        let mut problems = Problems::default();
        if let Some(user) = &self.register_user {
            let (name, password) = user.split_once(':').unwrap_or((user.as_str(), ""));
            let password = if password.is_empty() {
                Some(String::new())
            } else {
                expand(password, "--register-user", &mut problems)
            };
            if let Some(password) = password {
                settings.user = Some((name.to_owned(), password));
            }
        }
        let identity = match (&self.register_cert, &self.register_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                problems.push(
                    "--register-cert",
                    "--register-cert and --register-key go together",
                );
                None
            }
        };
        if self.register_cacert.is_some()
            || identity.is_some()
            || self.register_tls_domain.is_some()
        {
            settings.tls = Some(TlsFiles {
                ca: self.register_cacert.clone(),
                identity,
                domain: self.register_tls_domain.clone(),
            });
        }
        settings.validate("--register-etcd", &mut problems);
        if !problems.is_empty() {
            return Err(EtcdError::Lease(problems.to_string()));
        }
        let options = RegistrationOptions::new(pool, &address.to_string())
            .with_weight(self.register_weight)
            .with_ttl(Duration::from_secs(self.register_ttl));
        options.check()?;
        Ok(Some((settings, options)))
    }
}

/// A live registration; its lease is kept alive by a background task.
/// Dropping it stops the keep-alives (the member disappears after the TTL);
/// [`Registration::deregister`] removes it at once.
pub struct Registration {
    settings: EtcdSettings,
    key: String,
    lease: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registration {
    /// Registers (failing if etcd cannot be reached), then keeps the lease
    /// alive on the current tokio runtime, registering again with a new lease
    /// whenever the old one is lost (for example after a long etcd outage).
    pub async fn start(
        settings: EtcdSettings,
        options: RegistrationOptions,
    ) -> Result<Self, EtcdError> {
        options.check()?;
        let key = settings.key(&member_key(&options.pool, &options.address));
        let value = Arc::new(Leased {
            value: std::sync::Mutex::new(options.value()?),
            ttl: options.ttl,
        });
        let mut client = settings.connect().await?;
        let id = register(&settings, &mut client, &key, &value).await?;
        let lease = Arc::new(AtomicI64::new(id));
        let task = tokio::spawn(keep(
            settings.clone(),
            client,
            key.clone(),
            value,
            Arc::clone(&lease),
        ));
        tracing::info!(key, lease = id, "registered");
        Ok(Self {
            settings,
            key,
            lease,
            task,
        })
    }

    /// The member's full key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current lease id.
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// Stops the keep-alives and removes the member now.
    pub async fn deregister(self) -> Result<(), EtcdError> {
        self.task.abort();
        let mut client = self.settings.connect().await?;
        let id = self.lease();
        // Revoking deletes the key; a lease that already expired is fine.
        let _ = self
            .settings
            .timed("lease revoke", client.lease_revoke(id))
            .await;
        self.settings
            .timed("delete", client.delete(self.key.clone(), None))
            .await?;
        tracing::info!(key = self.key, "deregistered");
        Ok(())
    }
}

/// A key this process keeps under a lease and updates, such as a
/// gateway's status under `<prefix>-status/`: it disappears one TTL after
/// the process dies, at once after [`Presence::remove`].
pub struct Presence {
    settings: EtcdSettings,
    client: Client,
    key: String,
    value: Arc<Leased>,
    lease: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Presence {
    /// Puts `value` at the full `key` under a new lease (failing if etcd
    /// cannot be reached), then keeps the lease alive, putting the key again
    /// under a new lease whenever the old one is lost.
    pub async fn start(
        settings: EtcdSettings,
        key: String,
        value: String,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        let value = Arc::new(Leased {
            value: std::sync::Mutex::new(value),
            ttl,
        });
        let mut client = settings.connect().await?;
        let id = register(&settings, &mut client, &key, &value).await?;
        let lease = Arc::new(AtomicI64::new(id));
        let task = tokio::spawn(keep(
            settings.clone(),
            client.clone(),
            key.clone(),
            Arc::clone(&value),
            Arc::clone(&lease),
        ));
        Ok(Self {
            settings,
            client,
            key,
            value,
            lease,
            task,
        })
    }

    /// Replaces the value (kept for when the lease must be renewed).
    pub async fn set(&mut self, value: String) -> Result<(), EtcdError> {
        if let Ok(mut v) = self.value.value.lock() {
            v.clone_from(&value);
        }
        let put = PutOptions::new().with_lease(self.lease.load(Ordering::Acquire));
        self.settings
            .timed("put", self.client.put(self.key.clone(), value, Some(put)))
            .await?;
        Ok(())
    }

    /// Stops the keep-alives and deletes the key now.
    pub async fn remove(mut self) -> Result<(), EtcdError> {
        self.task.abort();
        let id = self.lease.load(Ordering::Acquire);
        let _ = self
            .settings
            .timed("lease revoke", self.client.lease_revoke(id))
            .await;
        self.settings
            .timed("delete", self.client.delete(self.key.clone(), None))
            .await?;
        Ok(())
    }
}

/// Grants a lease and puts the key under it.
async fn register(
    settings: &EtcdSettings,
    client: &mut Client,
    key: &str,
    value: &Leased,
) -> Result<i64, EtcdError> {
    let ttl = i64::try_from(value.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = settings
        .timed("lease grant", client.lease_grant(ttl, None))
        .await?;
    let put = PutOptions::new().with_lease(lease.id());
    settings
        .timed("put", client.put(key, value.current(), Some(put)))
        .await?;
    Ok(lease.id())
}

/// A leased key's value (updatable) and TTL.
struct Leased {
    value: std::sync::Mutex<String>,
    ttl: Duration,
}

impl Leased {
    fn current(&self) -> String {
        self.value.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Why keeping one lease alive stopped.
enum Stop {
    /// The lease is gone: register again.
    Lost,
    /// etcd failed: reconnect, then keep the same lease if it still lives.
    Failed(EtcdError),
}

async fn keep(
    settings: EtcdSettings,
    mut client: Client,
    key: String,
    value: Arc<Leased>,
    lease: Arc<AtomicI64>,
) {
    let mut backoff = Backoff::new();
    loop {
        let stop = keep_one(
            &settings,
            &mut client,
            lease.load(Ordering::Acquire),
            value.ttl,
        )
        .await;
        match stop {
            Stop::Lost => {
                tracing::warn!(key, "registration lease lost; registering again");
                match register(&settings, &mut client, &key, &value).await {
                    Ok(id) => {
                        lease.store(id, Ordering::Release);
                        backoff.reset();
                        continue;
                    }
                    Err(e) => tracing::warn!(key, error = %e, "cannot register again"),
                }
            }
            Stop::Failed(e) => tracing::warn!(key, error = %e, "lease keep-alive failed"),
        }
        backoff.wait().await;
        match settings.connect().await {
            Ok(c) => client = c,
            Err(e) => tracing::warn!(key, error = %e, "cannot reconnect to etcd"),
        }
    }
}

/// Keeps lease `id` alive (a keep-alive every third of the TTL) until it is
/// lost or etcd fails.
async fn keep_one(settings: &EtcdSettings, client: &mut Client, id: i64, ttl: Duration) -> Stop {
    let every = (ttl / 3).max(Duration::from_millis(200));
    let (mut keeper, mut stream) = match settings
        .timed("lease keep-alive", client.lease_keep_alive(id))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return Stop::Failed(e),
    };
    loop {
        if let Err(e) = settings
            .timed("lease keep-alive", keeper.keep_alive())
            .await
        {
            return Stop::Failed(e);
        }
        match settings.timed("lease keep-alive", stream.message()).await {
            Ok(Some(resp)) if resp.ttl() > 0 => {}
            Ok(Some(_)) => return Stop::Lost,
            Ok(None) => return Stop::Failed(EtcdError::Closed),
            Err(e) => return Stop::Failed(e),
        }
        tokio::time::sleep(every).await;
    }
}
