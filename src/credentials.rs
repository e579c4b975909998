//! How a role finds the server's CA and its own credential.
//!
//! In order: the role's own stored credential (`STATE/credential`, 0600, with `STATE/ca.crt`); else a join
//! token given on the command line, exchanged once and stored; else the data dir's bootstrap admin token and
//! `ca.crt` (a role started on the server's own machine, as before tokens existed).
//!
//! Several servers (replicas of one control plane) share one CA and one credential store, so a role's
//! credential works with all of them; a join is tried on each in turn until one answers.

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
        self.client_of(&[server.to_string()])
    }

    /// A client that fails over between `servers`.
    pub fn client_of(&self, servers: &[String]) -> Result<Client> {
        Ok(Client::with_servers(servers, self.ca.as_ref(), self.token.clone())?)
    }

    /// A registry mirror that fails over between `servers`.
    pub fn mirror(&self, servers: &[String]) -> MirrorConfig {
        let mut config = MirrorConfig::with_servers(servers, self.token.clone());
        config.ca = self.ca.clone();
        config
    }
}

/// The servers of `--server` (each value may list several, comma-separated), else the data dir's recorded
/// API address; `None` when there is neither.
pub fn servers_or_recorded(flags: &[String], data_dir: &Path) -> Option<Vec<String>> {
    let servers = client::split_servers(flags);
    if !servers.is_empty() {
        return Some(servers);
    }
    datadir::recorded_address(data_dir).map(|a| vec![a])
}

/// Join through the first of `servers` that answers. A refusal (a bad token, a CA that does not match the
/// token's hash) is final: every replica would say the same, and a pinned-CA mismatch must not be retried
/// elsewhere in the hope of a different answer.
async fn join_any(servers: &[String], token: &str, node: Option<&str>) -> Result<client::Joined> {
    let mut last = None;
    for server in servers {
        match client::join(server, token, node).await {
            Ok(joined) => return Ok(joined),
            Err(e @ client::JoinError::Connect { .. }) => {
                eprintln!("berth: cannot join through {server}: {e}; trying the next server");
                last = Some(e);
            }
            Err(client::JoinError::Api { code, url, reason, message }) if code >= 500 => {
                eprintln!("berth: cannot join through {server}: {url} answered {code}; trying the next server");
                last = Some(client::JoinError::Api { code, url, reason, message });
            }
            Err(e) => return Err(anyhow!(e).context("cannot join (--join)")),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context("cannot join (--join) through any server"),
        None => anyhow!("cannot join (--join): no server given"),
    })
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

/// The credential of a role whose own state lives in `state_dir` (see the module doc), for any of `servers`
/// (one CA, one credential store). `node` names the node a node join token is exchanged for.
pub async fn resolve_any(
    servers: &[String],
    data_dir: &Path,
    state_dir: &Path,
    join: Option<&str>,
    node: Option<&str>,
    token_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> Result<Credentials> {
    let server = servers.first().map(String::as_str).ok_or_else(|| anyhow!("no API server given (--server)"))?;
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
        let joined = join_any(servers, join, node).await?;
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
