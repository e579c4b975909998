//! `berth token create|list|revoke` (kubeadm's shape) and `berth kubeconfig`.

use super::connect;
use crate::ClientOpts;
use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a join token (printed once; it carries the cluster CA's hash).
    Create {
        /// What a machine that joins with it becomes: `node`, `proxy` (standalone proxy or DNS) or `admin`.
        #[arg(long, value_parser = ["node", "proxy", "admin"])]
        role: String,
        /// How long it may be used to join, e.g. `24h`, `30m` (default: until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// A note shown by `token list`.
        #[arg(long)]
        description: Option<String>,
    },
    /// List join tokens and the credentials issued (never their secrets).
    List,
    /// Revoke a join token or a credential by id: every server refuses it at once.
    Revoke { id: String },
}

pub async fn token(args: TokenArgs) -> Result<()> {
    let client = connect(&args.client)?;
    match args.command {
        TokenCommand::Create { role, ttl, description } => {
            let mut request = json!({"role": role, "usage": "join"});
            if let Some(ttl) = ttl {
                anyhow::ensure!(ttl.as_secs() > 0, "--ttl: at least one second");
                request["ttlSeconds"] = json!(ttl.as_secs());
            }
            if let Some(d) = description {
                request["description"] = json!(d);
            }
            println!("{}", client.create_token(&request).await?);
        }
        TokenCommand::List => {
            let items = client.list_tokens().await?;
            println!(
                "{:<14} {:<6} {:<11} {:<16} {:<22} {:<22} DESCRIPTION",
                "ID", "ROLE", "USAGE", "NODE", "EXPIRES", "CREATED"
            );
            for t in items {
                let field = |name: &str| t.get(name).and_then(Value::as_str).unwrap_or("<none>").to_string();
                println!(
                    "{:<14} {:<6} {:<11} {:<16} {:<22} {:<22} {}",
                    field("id"),
                    field("role"),
                    field("usage"),
                    field("node"),
                    field("expires"),
                    field("created"),
                    t.get("description").and_then(Value::as_str).unwrap_or("")
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(&id).await.with_context(|| format!("cannot revoke {id}"))?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct KubeconfigArgs {
    /// Name of the cluster, user and context in the file.
    #[arg(long, default_value = "berth")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Print a kubeconfig for this cluster: its https URL, the CA, and a new admin credential (revocable with
/// `berth token revoke`).
pub async fn kubeconfig(args: KubeconfigArgs) -> Result<()> {
    let client = connect(&args.client)?;
    anyhow::ensure!(
        client::is_https(client.server()),
        "{} is plain HTTP: Kubernetes clients send no credentials there; restart the server without --plain-http",
        client.server()
    );
    let dir = args.client.data_dir.clone().unwrap_or_else(crate::datadir::default_dir);
    let ca = crate::credentials::server_ca(client.server(), args.client.certificate_authority.as_deref(), &dir)?
        .context("no cluster CA")?;
    let request = json!({"role": "admin", "usage": "credential", "description": format!("kubeconfig {}", args.name)});
    let token = client.create_token(&request).await?;
    let name = &args.name;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": client.server(),
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca.pem()),
        }}],
        "users": [{"name": format!("{name}-admin"), "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": format!("{name}-admin")}}],
        "current-context": name,
    });
    print!("{}", serde_yaml_ng::to_string(&config)?);
    Ok(())
}
