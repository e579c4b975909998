//! The cluster CA's one home: the store, so that every control-plane replica signs with the same CA and
//! exactly one is ever created (by `create`, which only one concurrent caller wins). The store seals the key
//! like Secret data (`store::encrypt`). The data dir keeps copies: `ca.crt` for local clients and `ca.key`
//! (0600) so an operator can back it up; a data dir that already holds a CA when the store has none gives
//! that CA to the cluster (bring your own CA).

use crate::api::{CertificateAuthority, SignError};
use crate::store::{Key, Store, StoreError};
use pki::ClusterCa;
use std::path::{Path, PathBuf};

/// The store kind of the CA record (not an API kind: no resource route serves it; the store seals its key).
pub use crate::store::encrypt::PKI_KIND;
/// The record's name.
pub const CA_NAME: &str = "cluster-ca";
/// The CA certificate in the data dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key in the data dir (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cluster CA in the store: {0}")]
    Store(#[from] StoreError),
    #[error("cluster CA in the store is malformed: {0}")]
    Malformed(String),
    #[error("cluster CA: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data dir's CA ({path}, sha256 {local}) is not the cluster's CA (sha256 {cluster}) held by the store: \
         remove {cert_file} and {key_file} from the data dir to adopt the cluster's"
    )]
    Mismatch { path: PathBuf, local: String, cluster: String, cert_file: &'static str, key_file: &'static str },
    #[error("{path} has mode {mode:o}: a CA key must not be readable by group or others (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
}

pub fn ca_key() -> Key {
    Key::new(PKI_KIND, "", CA_NAME)
}

/// The cluster's CA: the store's, else the data dir's (uploaded), else a new one; the data dir is then
/// brought in line with it.
pub async fn load_or_create(store: &dyn Store, data_dir: &Path) -> Result<ClusterCa, CaError> {
    let local = read_local(data_dir)?;
    loop {
        if let Some(stored) = store.get(&ca_key()).await? {
            let ca = decode(&stored.value)?;
            if let Some(local) = &local {
                if local.cert().hash() != ca.cert().hash() {
                    return Err(CaError::Mismatch {
                        path: data_dir.join(CA_CERT_FILE),
                        local: local.cert().hash(),
                        cluster: ca.cert().hash(),
                        cert_file: CA_CERT_FILE,
                        key_file: CA_KEY_FILE,
                    });
                }
            } else {
                write_local(data_dir, &ca)?;
            }
            return Ok(ca);
        }
        let candidate = match &local {
            Some(ca) => ClusterCa::from_pem(ca.cert().pem(), ca.key_pem())?,
            None => ClusterCa::generate("berth-cluster-ca")?,
        };
        let record = serde_json::json!({"cert": candidate.cert().pem(), "key": candidate.key_pem()});
        match store.create(&ca_key(), record.to_string().into_bytes()).await {
            Ok(_) => {
                if local.is_none() {
                    write_local(data_dir, &candidate)?;
                }
                tracing::info!(sha256 = %candidate.cert().hash(), "created the cluster CA");
                return Ok(candidate);
            }
            // Another replica created it first: read and adopt the winner.
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<ClusterCa, CaError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| CaError::Malformed(e.to_string()))?;
    let field = |name: &str| {
        value.get(name).and_then(|v| v.as_str()).ok_or_else(|| CaError::Malformed(format!("field {name:?} is missing")))
    };
    Ok(ClusterCa::from_pem(field("cert")?, field("key")?)?)
}

fn read_local(dir: &Path) -> Result<Option<ClusterCa>, CaError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    let cert = match std::fs::read_to_string(&cert_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&cert_path)(e)),
    };
    let key = match std::fs::read_to_string(&key_path) {
        Ok(k) => k,
        // A CA certificate alone (e.g. a client's copy) is not a CA to sign with.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&key_path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).map_err(io(&key_path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::Permissions { path: key_path, mode });
        }
    }
    Ok(Some(ClusterCa::from_pem(&cert, &key)?))
}

fn write_local(dir: &Path, ca: &ClusterCa) -> Result<(), CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    std::fs::write(&cert_path, ca.cert().pem()).map_err(|source| CaError::Io { path: cert_path, source })?;
    let key_path = dir.join(CA_KEY_FILE);
    write_private(&key_path, ca.key_pem().as_bytes()).map_err(|source| CaError::Io { path: key_path, source })
}

/// Write `bytes` to `path` readable by the owner only (created 0600, never widened on the way).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The cluster CA as the API server uses it: `/cacerts`, join tokens' CA hash, node certificates.
pub struct Authority {
    ca: ClusterCa,
    hash: String,
}

impl Authority {
    pub fn new(ca: ClusterCa) -> Self {
        let hash = ca.cert().hash();
        Self { ca, hash }
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }
}

impl CertificateAuthority for Authority {
    fn ca_pem(&self) -> &str {
        self.ca.cert().pem()
    }

    fn ca_hash(&self) -> &str {
        &self.hash
    }

    fn sign_node_csr(&self, node: &str, csr_pem: &str) -> Result<String, SignError> {
        self.ca.sign_server_csr(csr_pem, node).map_err(|e| match e {
            pki::PkiError::Certificate { .. } => SignError::InvalidCsr(e.to_string()),
            other => SignError::Failed(other.to_string()),
        })
    }
}
