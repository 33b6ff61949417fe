//! TLS for the cluster's connections, from PEM files: a process that serves (coordinator, worker)
//! presents `cert` + `key`; every process that connects (coordinator to workers, workers to the
//! coordinator and to their next stage, `compare` to the coordinator) trusts `ca`. With `ca` on a
//! serving process, clients must also present a certificate signed by it (mutual TLS). Without
//! any of them, connections are plain HTTP/2 (the shared token still authenticates).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The PEM files of a process (all optional; see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain.
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    pub key: Option<PathBuf>,
    /// The CA that signed the cluster's certificates.
    pub ca: Option<PathBuf>,
    /// The name to expect in the peers' certificates instead of the host of their URL.
    pub domain: Option<String>,
}

/// TLS settings built from [`TlsFiles`].
#[derive(Debug, Clone, Default)]
pub struct ClusterTls {
    /// How this process serves; `None`: plain HTTP/2.
    pub server: Option<ServerTlsConfig>,
    /// How this process connects; `None`: plain HTTP/2 (`http://` URLs only).
    pub client: Option<ClientTlsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsError::Config(format!(
            "the TLS {what} {} is not PEM (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none()
    }

    fn identity(&self) -> Result<Option<Identity>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some(Identity::from_pem(
                read("certificate", c)?,
                read("key", k)?,
            ))),
            (None, None) => Ok(None),
            _ => Err(TlsError::Config(
                "give --tls-cert and --tls-key together".into(),
            )),
        }
    }

    /// The settings of a process that serves and connects.
    pub fn load(&self) -> Result<ClusterTls, TlsError> {
        let identity = self.identity()?;
        let ca = match &self.ca {
            Some(p) => Some(Certificate::from_pem(read("CA certificate", p)?)),
            None => None,
        };
        if identity.is_some() && ca.is_none() {
            return Err(TlsError::Config(
                "--tls-cert without --tls-ca: the other processes of the cluster must be able to check certificates, give the CA that signed them".into(),
            ));
        }
        let server = identity.clone().map(|id| {
            let s = ServerTlsConfig::new().identity(id);
            match &ca {
                Some(ca) => s.client_ca_root(ca.clone()),
                None => s,
            }
        });
        let client = ca.map(|ca| {
            let mut c = ClientTlsConfig::new().ca_certificate(ca);
            if let Some(id) = identity {
                c = c.identity(id);
            }
            if let Some(d) = &self.domain {
                c = c.domain_name(d.clone());
            }
            c
        });
        Ok(ClusterTls { server, client })
    }
}
