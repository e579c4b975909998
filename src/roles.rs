//! Server-side roles of the binary: `berth server` and `berth up` (the agent, proxy and DNS roles join as
//! they land).

use crate::datadir;
use anyhow::{Context, Result};
use orchestrator::api::{self, ApiState};
use orchestrator::client::Client;
use orchestrator::store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where the token, the recorded API address and the embedded store live
    /// (default: $XDG_DATA_HOME/berth, else ~/.local/share/berth).
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

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Manifests to apply once the control plane is up (file or directory; repeatable).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
}

/// A running control plane: the API over the store.
struct ControlPlane {
    url: String,
    token: String,
    store_url: String,
    token_file: PathBuf,
    dir: PathBuf,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_control_plane(args: &ServerArgs) -> Result<ControlPlane> {
    let dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    datadir::ensure(&dir)?;
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| dir.join(datadir::TOKEN_FILE));
    let token = datadir::load_or_create_token(&token_file)?;
    let store_url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("redb:{}", dir.join("store.redb").display()));
    let store: Arc<dyn store::Store> = store::open_store(&store_url)
        .await
        .with_context(|| format!("cannot open store {store_url}"))?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    datadir::record_address(&dir, &url)?;
    let state = ApiState::new(store, Some(token.clone()), None);
    let serving = tokio::spawn(api::serve(listener, state, shutdown_signal()));
    Ok(ControlPlane {
        url,
        token,
        store_url,
        token_file,
        dir,
        serving,
    })
}

pub async fn server(args: ServerArgs) -> Result<()> {
    let cp = start_control_plane(&args).await?;
    println!(
        "berth server: API on {} (token in {}), store {}",
        cp.url,
        cp.token_file.display(),
        cp.store_url
    );
    cp.serving
        .await
        .context("API server task failed")?
        .context("API server failed")?;
    println!("berth server: stopped");
    Ok(())
}

/// Everything in one process on the embedded store, then the manifests applied.
pub async fn up(args: UpArgs) -> Result<()> {
    let cp = start_control_plane(&args.server).await?;
    println!(
        "berth up: API on {} (token in {}), store {}",
        cp.url,
        cp.token_file.display(),
        cp.store_url
    );
    if !args.files.is_empty() {
        let client = Client::new(&cp.url, Some(cp.token.clone()))?;
        for doc in crate::cli::parse_all(&args.files)? {
            let applied = client
                .apply(&doc.object, false)
                .await
                .with_context(|| doc.display_name())?;
            println!("berth up: {} {}", doc.display_name(), applied.result);
        }
    }
    let dir_flag = if args.server.data_dir.is_some() {
        format!(" --data-dir {}", cp.dir.display())
    } else {
        String::new()
    };
    println!("berth up: ready. Try:");
    println!("  berth get deployments{dir_flag}");
    println!("  berth get pods -o wide{dir_flag}");
    cp.serving
        .await
        .context("API server task failed")?
        .context("API server failed")?;
    println!("berth up: stopped");
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
