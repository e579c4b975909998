//! Server-side roles of the binary: `berth server` (and, as they land, `up`, `agent`, `proxy`, `dns`).

use crate::datadir;
use anyhow::{Context, Result};
use orchestrator::api::{self, ApiState};
use orchestrator::store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where the token, the recorded API address and the embedded store live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API listen address (port 0 picks a free port; the chosen address is printed and recorded).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// Bearer token file (created with mode 0600 when missing). Default: DATA_DIR/token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Store: `redb:PATH` (default DATA_DIR/store.redb), `memory:`, or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long)]
    pub store: Option<String>,
}

pub async fn server(args: ServerArgs) -> Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    datadir::ensure(&dir)?;
    let token_file = args.token_file.clone().unwrap_or_else(|| dir.join(datadir::TOKEN_FILE));
    let token = datadir::load_or_create_token(&token_file)?;
    let store_url = args.store.clone().unwrap_or_else(|| format!("redb:{}", dir.join("store.redb").display()));
    let store: Arc<dyn store::Store> =
        store::open_store(&store_url).await.with_context(|| format!("cannot open store {store_url}"))?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    datadir::record_address(&dir, &url)?;
    println!("berth server: API on {url} (token in {}), store {store_url}", token_file.display());
    let state = ApiState::new(store, Some(token), None);
    api::serve(listener, state, shutdown_signal()).await.context("API server failed")?;
    println!("berth server: stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
