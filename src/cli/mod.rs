//! Client verbs with kubectl habits: apply, get, describe, delete, diff (and, in submodules, node
//! maintenance, rollouts and scale).

pub mod node;
mod output;
pub mod rollout;
pub mod token;

use crate::{datadir, ClientOpts};
use anyhow::{anyhow, bail, Context, Result};
use client::Client;
use control_plane::api::object::desired_view;
use model::{self, Kind};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Connect as the options (or their defaults) say.
pub fn connect(opts: &ClientOpts) -> Result<Client> {
    let dir = opts.data_dir.clone().unwrap_or_else(datadir::default_dir);
    let servers = crate::credentials::servers_or_recorded(&opts.server, &dir)
        .unwrap_or_else(|| vec!["https://127.0.0.1:7070".to_string()]);
    let token = opts.token.clone().or_else(|| datadir::read_token(&dir.join(datadir::TOKEN_FILE)));
    let credentials = crate::credentials::Credentials {
        ca: crate::credentials::server_ca(&servers[0], opts.certificate_authority.as_deref(), &dir)?,
        token,
        source: String::new(),
    };
    credentials.client_of(&servers)
}

// ---------------------------------------------------------------------------------------------------------
// Reading manifests

/// Every manifest file named by `-f` (files, directories (their *.yaml, *.yml, *.json, sorted), `-`).
fn read_sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("cannot read manifests from stdin")?;
            out.push(("<stdin>".to_string(), text));
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_manifest(p))
                .collect();
            files.sort();
            for f in files {
                out.push((f.display().to_string(), read_file(&f)?));
            }
        } else {
            out.push((path.display().to_string(), read_file(path)?));
        }
    }
    if out.is_empty() {
        bail!("no manifests found in {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(out)
}

fn is_manifest(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn read_file(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Parse every document of every source; any error rejects the whole set (nothing is sent).
pub fn parse_all(paths: &[PathBuf]) -> Result<Vec<model::Document>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (source, text) in read_sources(paths)? {
        match model::manifest::parse(&source, &text) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        for e in &errors[..errors.len() - 1] {
            eprintln!("error: {e}");
        }
        bail!("{}", errors[errors.len() - 1]);
    }
    for d in &docs {
        for w in &d.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(docs)
}

fn resource_name(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.kind_name().to_lowercase())
}

// ---------------------------------------------------------------------------------------------------------
// apply

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file, directory, or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Validate on the server and report what would happen, without writing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn apply(args: ApplyArgs) -> Result<()> {
    let docs = parse_all(&args.files)?;
    let client = connect(&args.client)?;
    for d in &docs {
        let applied = client
            .apply(&d.object, args.dry_run)
            .await
            .with_context(|| format!("{}: document {}: {}", d.source, d.index, resource_name(d.kind, &d.name)))?;
        let suffix = if args.dry_run { " (dry run)" } else { "" };
        println!("{} {}{suffix}", resource_name(d.kind, &d.name), applied.result);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// get

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Kind: pods|po, deployments|deploy, services|svc, nodes|no, routes, autoscalers, configmaps|cm,
    /// secrets, endpoints|ep; controlplane|cp (the API server replicas and which one leads).
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output: wide, json, yaml, name.
    #[arg(short = 'o', long)]
    output: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn get(args: GetArgs) -> Result<()> {
    let format = output::Format::parse(args.output.as_deref())?;
    if matches!(args.kind.as_str(), "controlplane" | "controlplanes" | "cp") {
        return output::control_plane(&connect(&args.client)?.control_plane().await?, format);
    }
    let client = connect(&args.client)?;
    let kind = match model::Resource::from_cli_name(&args.kind) {
        Some(model::Resource::Kind(kind)) => kind,
        Some(model::Resource::Endpoints) => {
            let ns = (!args.all_namespaces).then_some(args.namespace.as_str());
            return output::endpoints(&client, ns, args.name.as_deref(), format).await;
        }
        None => return Err(unknown_kind(&args.kind)),
    };
    if let Some(sel) = &args.selector {
        discovery::Selector::parse(sel).map_err(|e| anyhow!("-l {sel:?}: {e}"))?;
    }
    let items = match &args.name {
        Some(name) => {
            let obj = client.get(kind, &args.namespace, name).await?;
            return output::print_one(kind, &obj, format);
        }
        None => {
            let ns = (!args.all_namespaces).then_some(args.namespace.as_str());
            client.list(kind, ns, args.selector.as_deref()).await?
        }
    };
    if items.is_empty() && matches!(format, output::Format::Table { .. }) {
        if kind.namespaced() && !args.all_namespaces {
            eprintln!("No resources found in {} namespace.", args.namespace);
        } else {
            eprintln!("No resources found.");
        }
        return Ok(());
    }
    output::print_list(kind, &items, format, args.all_namespaces && kind.namespaced())
}

fn parse_kind(s: &str) -> Result<Kind> {
    Kind::from_cli_name(s).ok_or_else(|| unknown_kind(s))
}

fn unknown_kind(s: &str) -> anyhow::Error {
    anyhow!("unknown kind {s:?} (one of: {})", model::Resource::all_cli_names())
}

// ---------------------------------------------------------------------------------------------------------
// describe

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    kind: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn describe(args: DescribeArgs) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let client = connect(&args.client)?;
    let obj = client.get(kind, &args.namespace, &args.name).await?;
    print!("{}", output::describe(kind, &obj));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// delete

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    kind: Option<String>,
    name: Option<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Succeed when the object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn delete(args: DeleteArgs) -> Result<()> {
    let client = connect(&args.client)?;
    let targets: Vec<(Kind, String, String)> = if !args.files.is_empty() {
        parse_all(&args.files)?.into_iter().map(|d| (d.kind, d.namespace, d.name)).collect()
    } else {
        match (&args.kind, &args.name) {
            (Some(k), Some(n)) => vec![(parse_kind(k)?, args.namespace.clone(), n.clone())],
            _ => bail!("say what to delete: `berth delete KIND NAME` or `berth delete -f FILE`"),
        }
    };
    for (kind, ns, name) in targets {
        match client.delete(kind, &ns, &name).await {
            Ok(_) => println!("{} deleted", resource_name(kind, &name)),
            Err(e) if e.is_not_found() && (args.ignore_not_found || !args.files.is_empty()) => {
                println!("{} not found", resource_name(kind, &name))
            }
            Err(e) => return Err(e).with_context(|| resource_name(kind, &name)),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// diff

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    client: ClientOpts,
}

/// Exit 0 when the live objects equal the manifests, 1 when they differ (as `kubectl diff`).
pub async fn diff(args: DiffArgs) -> Result<ExitCode> {
    let docs = parse_all(&args.files)?;
    let client = connect(&args.client)?;
    let mut differs = false;
    for d in &docs {
        let name = resource_name(d.kind, &d.name);
        let live = match client.get(d.kind, &d.namespace, &d.name).await {
            Ok(v) => Some(v),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e).with_context(|| name.clone()),
        };
        let mut live_view = live.as_ref().map(desired_view);
        let mut manifest = d.object.clone();
        if let (model::Kind::Service, Some(live)) = (d.kind, &live) {
            // An allocated clusterIP the manifest leaves out is not a difference (apply keeps it); a changed
            // one shows, and apply will refuse it.
            let _ = control_plane::api::cluster_ip::carry(live, &mut manifest);
        }
        let mut desired = desired_view(&manifest);
        if d.kind == model::Kind::Secret {
            output::mask_secret_diff(live_view.as_mut(), &mut desired);
        }
        let before = live_view.as_ref().map(to_yaml).transpose()?.unwrap_or_default();
        let after = to_yaml(&desired)?;
        if before != after {
            differs = true;
            let label = if d.kind.namespaced() { format!("{}/{}", d.namespace, name) } else { name.clone() };
            let text = similar::TextDiff::from_lines(&before, &after);
            print!(
                "{}",
                text.unified_diff().context_radius(3).header(&format!("live {label}"), &format!("manifest {label}"))
            );
        }
    }
    Ok(if differs { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub fn to_yaml(v: &Value) -> Result<String> {
    serde_yaml_ng::to_string(v).context("cannot render YAML")
}
