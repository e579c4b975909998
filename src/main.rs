//! `berth`: the CLI and the wiring of Berth's roles. Thin: the work happens in the library crates.

mod agent_cmd;
mod cli;
mod credentials;
mod datadir;
mod dataplane;
mod echo_cmd;
mod roles;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// The proxy allocates and frees small objects on every request; mimalloc does that measurably faster than
// glibc malloc on one thread (see `make bench-proxy`) and returns memory to the OS about as well.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "berth", version, about = "Front door and small orchestrator in one binary")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// How a client command finds and authenticates to the API server.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientOpts {
    /// API server URL (default: the address recorded in the data dir, else https://127.0.0.1:7070). Repeat
    /// it or give a comma-separated list for several replicas: requests fail over between them.
    #[arg(long, env = "BERTH_SERVER", global = true, value_delimiter = ',')]
    server: Vec<String>,
    /// Bearer token (default: the data dir's token file).
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Use this data dir's token, CA and recorded API address.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The cluster CA certificate to verify an https:// server with (default: DATA_DIR/ca.crt).
    #[arg(long, env = "BERTH_CA", global = true)]
    certificate_authority: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: API server and store (scheduler and controllers join as they land).
    Server(roles::ServerArgs),
    /// Everything in one process on the embedded store, then apply the manifests given with -f.
    Up(roles::UpArgs),
    /// Create or update objects from manifests (file, directory or `-`).
    Apply(cli::ApplyArgs),
    /// List objects or show one.
    Get(cli::GetArgs),
    /// Show one object in detail.
    Describe(cli::DescribeArgs),
    /// Delete objects by kind and name or by manifest.
    Delete(cli::DeleteArgs),
    /// Show what `apply` would change (exit 0: no difference, 1: differences, 2: error).
    Diff(cli::DiffArgs),
    /// Run the ingress proxy alone: mirror a server's registry (--server) or serve a static file (-c FILE).
    Proxy(dataplane::ProxyArgs),
    /// Run the DNS server alone, answering from a registry mirrored from a server (--server).
    Dns(dataplane::DnsArgs),
    /// Run a node agent: register a node, run the pods bound to it, report their status.
    Agent(agent_cmd::AgentArgs),
    /// Print a pod's logs (from the agent that runs it).
    Logs(agent_cmd::LogsArgs),
    /// Create, list and revoke join tokens and credentials.
    Token(cli::token::TokenArgs),
    /// Print a kubeconfig (https URL, the cluster CA, a new admin credential) for kubectl and other clients.
    Kubeconfig(cli::token::KubeconfigArgs),
    /// A tiny HTTP workload for demos and tests.
    Echo(echo_cmd::EchoArgs),
    /// Mark a node unschedulable (running pods stay).
    Cordon(cli::node::CordonArgs),
    /// Mark a node schedulable again.
    Uncordon(cli::node::UncordonArgs),
    /// Cordon a node, then evict its pods so their controllers recreate them elsewhere.
    Drain(cli::node::DrainArgs),
    /// Follow, list and undo Deployment rollouts: `rollout status|history|undo deployment NAME`.
    Rollout(cli::rollout::RolloutArgs),
    /// Set a Deployment's replicas: `scale deployment NAME --replicas N`.
    Scale(cli::rollout::ScaleArgs),
    /// Internal: writes a process-runtime container's output to rotated files (started by the agent).
    #[command(name = "log-keeper", hide = true)]
    LogKeeper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::LogKeeper { args } = &args.command {
        // A long-lived process per container: no async runtime, no threads.
        return log_keeper(args);
    }
    let cmd_is_diff = matches!(args.command, Command::Diff(_));
    let prints_for_a_pipe = matches!(
        args.command,
        Command::Get(_)
            | Command::Describe(_)
            | Command::Diff(_)
            | Command::Logs(_)
            | Command::Rollout(_)
            | Command::Token(_)
            | Command::Kubeconfig(_)
    );
    if prints_for_a_pipe {
        // `berth get pods | head`: end quietly when the reader goes away, as Unix tools do, instead of
        // panicking in println! on EPIPE (Rust ignores SIGPIPE by default). Long-running roles keep ignoring it.
        // SAFETY: no other thread exists yet; SIG_DFL is always a valid disposition.
        let _ = unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
        };
    }
    pki::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The long-running roles of the control plane log only when asked (`RUST_LOG`), so their stderr stays as
    // quiet as before by default; the proxy and DNS server always log (see `dataplane`).
    if matches!(args.command, Command::Server(_) | Command::Up(_) | Command::Agent(_))
        && std::env::var_os("RUST_LOG").is_some()
    {
        dataplane::init_logging();
    }
    let result = runtime.block_on(async move {
        match args.command {
            Command::Server(a) => roles::server(a).await.map(|_| ExitCode::SUCCESS),
            Command::Up(a) => roles::up(a).await.map(|_| ExitCode::SUCCESS),
            Command::Apply(a) => cli::apply(a).await.map(|_| ExitCode::SUCCESS),
            Command::Get(a) => cli::get(a).await.map(|_| ExitCode::SUCCESS),
            Command::Describe(a) => cli::describe(a).await.map(|_| ExitCode::SUCCESS),
            Command::Delete(a) => cli::delete(a).await.map(|_| ExitCode::SUCCESS),
            Command::Diff(a) => cli::diff(a).await,
            Command::Proxy(a) => dataplane::proxy(a).await.map(|_| ExitCode::SUCCESS),
            Command::Dns(a) => dataplane::dns(a).await.map(|_| ExitCode::SUCCESS),
            Command::Agent(a) => agent_cmd::agent(a).await.map(|_| ExitCode::SUCCESS),
            Command::Logs(a) => agent_cmd::logs(a).await.map(|_| ExitCode::SUCCESS),
            Command::Echo(a) => echo_cmd::echo(a).await,
            Command::Token(a) => cli::token::token(a).await.map(|_| ExitCode::SUCCESS),
            Command::Kubeconfig(a) => cli::token::kubeconfig(a).await.map(|_| ExitCode::SUCCESS),
            Command::Cordon(a) => cli::node::cordon(a).await.map(|_| ExitCode::SUCCESS),
            Command::Uncordon(a) => cli::node::uncordon(a).await.map(|_| ExitCode::SUCCESS),
            Command::Drain(a) => cli::node::drain(a).await.map(|_| ExitCode::SUCCESS),
            Command::Rollout(a) => cli::rollout::rollout(a).await.map(|_| ExitCode::SUCCESS),
            Command::Scale(a) => cli::rollout::scale(a).await.map(|_| ExitCode::SUCCESS),
            Command::LogKeeper { args } => Ok(log_keeper(&args)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(if cmd_is_diff { 2 } else { 1 })
        }
    }
}

fn log_keeper(args: &[String]) -> ExitCode {
    ExitCode::from(agent::runtime::log_keeper::main(args) as u8)
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
