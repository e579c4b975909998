//! How a role finds the server's CA and its own credential.
//!
//! In order: the role's own stored credential (`STATE/credential`, 0600, with `STATE/ca.crt`); else a join
//! token given on the command line, exchanged once and stored; else the data dir's bootstrap admin token and
//! `ca.crt` (a role started on the server's own machine, as before tokens existed).

use crate::datadir;
use anyhow::{anyhow, bail, Context, Result};
use client::mirror::MirrorConfig;
use client::{is_https, Client};
use pki::CaCert;
use std::path::Path;

pub const CREDENTIAL_FILE: &str = "credential";
pub const CA_FILE: &str = "ca.crt";

/// A server's CA (none for plain `http://`) and a bearer credential. `Debug` omits the credential.
#[derive(Clone)]
pub struct Credentials {
    pub ca: Option<CaCert>,
    pub token: Option<String>,
    /// Where it came from, for the start-up line (never the secret).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("ca", &self.ca).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn client(&self, server: &str) -> Result<Client> {
        Ok(match &self.ca {
            Some(ca) => Client::with_ca(server, ca, self.token.clone())?,
            None => Client::new(server, self.token.clone())?,
        })
    }

    pub fn mirror(&self, server: &str) -> MirrorConfig {
        let mut config = MirrorConfig::new(server, self.token.clone());
        config.ca = self.ca.clone();
        config
    }
}

/// The CA in `path`, when the file exists.
pub fn read_ca(path: &Path) -> Result<Option<CaCert>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(Some(CaCert::from_pem(&pem).with_context(|| format!("{}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The CA a client of `server` trusts: `explicit` (a file), else the data dir's `ca.crt`; none for `http://`.
pub fn server_ca(server: &str, explicit: Option<&Path>, data_dir: &Path) -> Result<Option<CaCert>> {
    if !is_https(server) {
        return Ok(None);
    }
    if let Some(path) = explicit {
        return read_ca(path)?
            .ok_or_else(|| anyhow!("--certificate-authority {}: no such file", path.display()))
            .map(Some);
    }
    let path = data_dir.join(CA_FILE);
    match read_ca(&path)? {
        Some(ca) => Ok(Some(ca)),
        None => bail!(
            "no cluster CA to verify {server} with: pass --certificate-authority FILE (the server's \
             DATA_DIR/ca.crt) or --data-dir of a machine that has it, or join with a token"
        ),
    }
}

/// The credential of a role whose own state lives in `state_dir` (see the module doc). `node` names the node
/// a node join token is exchanged for.
pub async fn resolve(
    server: &str,
    data_dir: &Path,
    state_dir: &Path,
    join: Option<&str>,
    node: Option<&str>,
    token_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> Result<Credentials> {
    let stored = state_dir.join(CREDENTIAL_FILE);
    if let Some(token) = datadir::read_token(&stored) {
        let ca = if is_https(server) {
            Some(read_ca(&state_dir.join(CA_FILE))?.ok_or_else(|| {
                anyhow!("{} holds a credential but {} is missing", stored.display(), state_dir.join(CA_FILE).display())
            })?)
        } else {
            None
        };
        return Ok(Credentials { ca, token: Some(token), source: format!("credential in {}", stored.display()) });
    }
    if let Some(join) = join {
        let joined = client::join(server, join, node).await.context("cannot join (--join)")?;
        std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
        let ca_path = state_dir.join(CA_FILE);
        std::fs::write(&ca_path, joined.ca.pem()).with_context(|| format!("cannot write {}", ca_path.display()))?;
        control_plane::ca::write_private(&stored, format!("{}\n", joined.credential).as_bytes())
            .with_context(|| format!("cannot write {}", stored.display()))?;
        return Ok(Credentials {
            ca: Some(joined.ca),
            token: Some(joined.credential),
            source: format!("joined as {} (credential in {})", joined.identity, stored.display()),
        });
    }
    let token_file = token_file.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join(datadir::TOKEN_FILE));
    let token = datadir::read_token(&token_file).ok_or_else(|| {
        anyhow!(
            "no credential: pass --join TOKEN (from `berth token create`), or run where {} exists",
            token_file.display()
        )
    })?;
    let ca = server_ca(server, ca_file, data_dir)?;
    Ok(Credentials { ca, token: Some(token), source: format!("token in {}", token_file.display()) })
}
