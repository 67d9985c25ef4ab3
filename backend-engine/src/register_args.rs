//! The registration flags of a self-registering server:
//! `--register-etcd URL[,URL] --pool NAME [--advertise ADDR]` (and TLS and
//! user flags for a secured etcd), parsed here
//! and resolved by `weir-conf` ([`RegisterFlags::resolve`]).
//!
//! `weir-engine` flattens [`RegisterArgs`] into its flags; the demo upstream
//! (`weir-demo-upstream` in test-support) compiles this same file, so both
//! servers take the same flags. It uses only `clap`, `weir_conf` and std.

use std::net::SocketAddr;

use weir_conf::etcd::register::DEFAULT_TTL;
use weir_conf::etcd::{EtcdError, EtcdSettings, RegisterFlags, RegistrationOptions};

/// Register this server as a backend of a gateway pool through etcd.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RegisterArgs {
    /// Register this server as a backend of `--pool` in the gateways' etcd
    /// at these client URLs; the key is kept alive with a lease and removed
    /// on a clean exit.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL[,URL]",
        requires = "pool"
    )]
    pub register_etcd: Vec<String>,
    /// The gateway pool to join.
    #[arg(long, value_name = "NAME", requires = "register_etcd")]
    pub pool: Option<String>,
    /// The address gateways connect to (default: the bound listen address,
    /// which must then not be a wildcard such as 0.0.0.0).
    #[arg(long, value_name = "IP:PORT", requires = "register_etcd")]
    pub advertise: Option<SocketAddr>,
    /// Weight within the pool.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub register_weight: u32,
    /// Lease TTL in seconds: how long after this server dies it disappears
    /// from the pool.
    #[arg(long, default_value_t = DEFAULT_TTL.as_secs(), value_name = "SECONDS")]
    pub register_ttl: u64,
    /// Key prefix of the gateways' config.
    #[arg(long, default_value = "/weir/", value_name = "PREFIX")]
    pub register_prefix: String,
    /// CA bundle that verifies etcd's certificate (https:// URLs).
    #[arg(long, value_name = "PATH", requires = "register_etcd")]
    pub register_cacert: Option<std::path::PathBuf>,
    /// Client certificate for etcd (with --register-key).
    #[arg(long, value_name = "PATH", requires = "register_etcd")]
    pub register_cert: Option<std::path::PathBuf>,
    /// The client certificate's key.
    #[arg(long, value_name = "PATH", requires = "register_etcd")]
    pub register_key: Option<std::path::PathBuf>,
    /// The server name etcd's certificate must carry, when not the URL's host.
    #[arg(long, value_name = "NAME", requires = "register_etcd")]
    pub register_tls_domain: Option<String>,
    /// NAME:PASSWORD for etcd authentication; the password may be
    /// ${file:PATH} or ${env:NAME}.
    #[arg(
        long,
        value_name = "NAME:PASSWORD",
        env = "WEIR_REGISTER_USER",
        hide_env_values = true,
        requires = "register_etcd"
    )]
    pub register_user: Option<String>,
}

impl From<RegisterArgs> for RegisterFlags {
    fn from(a: RegisterArgs) -> Self {
        Self {
            register_etcd: a.register_etcd,
            pool: a.pool,
            advertise: a.advertise,
            register_weight: a.register_weight,
            register_ttl: a.register_ttl,
            register_prefix: a.register_prefix,
            register_cacert: a.register_cacert,
            register_cert: a.register_cert,
            register_key: a.register_key,
            register_tls_domain: a.register_tls_domain,
            register_user: a.register_user,
        }
    }
}

impl RegisterArgs {
    /// The registration to make for a server listening on `bound`, or `None`
    /// when `--register-etcd` is not given; `Err` names a bad flag.
    pub fn resolve(
        &self,
        bound: SocketAddr,
    ) -> Result<Option<(EtcdSettings, RegistrationOptions)>, EtcdError> {
        RegisterFlags::from(self.clone()).resolve(bound)
    }
}
