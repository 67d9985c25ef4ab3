//! The connection to etcd: a client opened with an [`EtcdSettings`], and
//! requests run with its timeouts.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::error::EtcdError;
use super::settings::{EtcdSettings, TlsFiles};

impl EtcdSettings {
    /// Opens a client (lazily connected: the first request shows whether
    /// etcd is reachable).
    pub async fn connect(&self) -> Result<Client, EtcdError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls_options(tls)?);
        }
        let connect = Client::connect(self.endpoints.clone(), Some(opts));
        match tokio::time::timeout(self.request_timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(EtcdError::request("connect", &self.endpoints, e)),
            Err(_) => Err(EtcdError::Timeout("connect")),
        }
    }

    /// Runs one etcd request with the request timeout.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EtcdError::request(op, &self.endpoints, e)),
            Err(_) => Err(EtcdError::Timeout(op)),
        }
    }

    /// Reads every key under the prefix, with the request timeout.
    pub async fn get_prefix(
        &self,
        client: &mut Client,
    ) -> Result<etcd_client::GetResponse, EtcdError> {
        let options = etcd_client::GetOptions::new().with_prefix();
        self.timed("get", client.get(self.prefix.clone(), Some(options)))
            .await
    }
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Tls(format!("cannot read {}: {e}", path.display())))
}

fn tls_options(t: &TlsFiles) -> Result<TlsOptions, EtcdError> {
    let mut opts = TlsOptions::new();
    if let Some(ca) = &t.ca {
        opts = opts.ca_certificate(Certificate::from_pem(read_pem(ca)?));
    }
    if let Some((cert, key)) = &t.identity {
        opts = opts.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
    }
    if let Some(domain) = &t.domain {
        opts = opts.domain_name(domain.clone());
    }
    Ok(opts)
}
