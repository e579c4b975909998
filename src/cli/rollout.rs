//! Deployment verbs with kubectl habits: `rollout status|history|undo` and `scale`.
//!
//! `rollout status` watches the Deployment (one NDJSON watch, reopened if it ends) and reads each version
//! through [`rollout_progress`], the same reading of the controller's status that kubectl does. History and
//! undo use the revision records the Deployment controller keeps (`GET .../deployments/NAME/revisions`);
//! undo writes the chosen template back into the Deployment with a compare-and-swap, and the controller
//! then rolls it out as a new revision, as Kubernetes does.

use super::{connect, resource_name};
use crate::ClientOpts;
use anyhow::{anyhow, bail, Context, Result};
use client::Client;
use control_plane::controllers::deployment::{rollback_template, template_hash, RevisionRecord};
use futures::StreamExt;
use model::rollout::{rollout_progress, RolloutProgress};
use model::{Deployment, Kind, PodTemplateSpec};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio::time::Instant;

/// Read-modify-write attempts before giving up on a Deployment that keeps changing (the controller writes
/// its status and revision annotation all the time).
const CONFLICT_RETRIES: u32 = 20;

#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RolloutCommand {
    /// Wait until the newest revision runs on every replica and no old pod is left.
    Status(StatusArgs),
    /// List the revisions of a Deployment.
    History(HistoryArgs),
    /// Roll a Deployment back to an earlier revision (default: the previous one).
    Undo(UndoArgs),
}

/// `deployment NAME` or `deployment/NAME` (also `deploy`, `deployments`).
#[derive(clap::Args, Debug)]
struct Target {
    /// `deployment`, `deploy`, `deployments`, or `deployment/NAME`.
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Give up after this long (e.g. `90s`, `5m`); `0` waits forever.
    #[arg(long, default_value = "0", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(clap::Args, Debug)]
struct HistoryArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(clap::Args, Debug)]
struct UndoArgs {
    #[command(flatten)]
    target: Target,
    /// The revision to go back to (default: the one before the current).
    #[arg(long)]
    to_revision: Option<u64>,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    target: Target,
    /// The new number of replicas.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(0..))]
    replicas: i32,
    #[command(flatten)]
    client: ClientOpts,
}

/// A duration like `90s` or `5m`; `0` (no timeout) is `Duration::ZERO`.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
}

/// The Deployment a `Target` names.
fn deployment_name(t: &Target) -> Result<String> {
    let (kind, name) = match t.kind.split_once('/') {
        Some((k, n)) => {
            if t.name.is_some() {
                bail!("give the deployment as `deployment NAME` or `deployment/NAME`, not both");
            }
            (k, Some(n.to_string()))
        }
        None => (t.kind.as_str(), t.name.clone()),
    };
    if Kind::from_cli_name(kind) != Some(Kind::Deployment) {
        bail!("{kind:?}: only deployments have rollouts and scale here (deployment, deploy, deployments)");
    }
    match name {
        Some(n) if !n.is_empty() => Ok(n),
        _ => bail!("name the deployment: `deployment NAME` or `deployment/NAME`"),
    }
}

pub async fn rollout(args: RolloutArgs) -> Result<()> {
    match args.command {
        RolloutCommand::Status(a) => status(a).await,
        RolloutCommand::History(a) => history(a).await,
        RolloutCommand::Undo(a) => undo(a).await,
    }
}

// ---------------------------------------------------------------------------------------------------------
// status

/// Prints progress: one line rewritten in place on a terminal, one line per change otherwise.
struct ProgressLine {
    tty: bool,
    last: Option<String>,
}

impl ProgressLine {
    fn show(&mut self, message: &str) {
        if self.last.as_deref() == Some(message) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K{message}");
        } else {
            let _ = writeln!(out, "{message}");
        }
        let _ = out.flush();
        self.last = Some(message.to_string());
    }

    /// Ends the live line so what follows starts on a fresh one.
    fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            println!();
        }
    }
}

async fn status(args: StatusArgs) -> Result<()> {
    let name = deployment_name(&args.target)?;
    let ns = &args.target.namespace;
    let client = connect(&args.client)?;
    let timeout = (!args.timeout.is_zero()).then_some(args.timeout);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut line = ProgressLine { tty: std::io::stdout().is_terminal(), last: None };
    let watched = async {
        loop {
            // Fail fast on a Deployment that does not exist (a watch would just wait).
            client.get(Kind::Deployment, ns, &name).await.with_context(|| format!("deployment/{name}"))?;
            if let Some(done) = watch_once(&client, ns, &name, &mut line).await? {
                return Ok::<String, anyhow::Error>(done);
            }
            // The watch ended (server restart, compaction): open a new one shortly.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let result = match deadline {
        Some(at) => match tokio::time::timeout_at(at, watched).await {
            Ok(r) => r,
            Err(_) => {
                line.finish();
                let last = line.last.as_deref().unwrap_or("no status read yet");
                bail!(
                    "deployment {name:?} rollout did not finish within {}: {last}",
                    humantime::format_duration(args.timeout)
                );
            }
        },
        None => watched.await,
    };
    match result {
        Ok(done) => {
            if line.tty {
                line.show(&done);
                line.finish();
            } else {
                println!("{done}");
            }
            Ok(())
        }
        Err(e) => {
            line.finish();
            Err(e)
        }
    }
}

/// Follow one watch until the rollout completes (`Some(message)`), fails (error) or the stream ends
/// (`None`).
async fn watch_once(client: &Client, ns: &str, name: &str, line: &mut ProgressLine) -> Result<Option<String>> {
    let stream = match client.watch(Kind::Deployment, Some(ns), None, None).await {
        Ok(s) => s,
        Err(e) => {
            // Retried by the caller; say why so a stuck wait is explainable.
            eprintln!("warning: cannot watch deployments ({e}); retrying");
            return Ok(None);
        }
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else { return Ok(None) };
        if event.kind == "ERROR" {
            return Ok(None);
        }
        if event.object.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        if event.kind == "DELETED" {
            bail!("deployment/{name} was deleted while waiting for its rollout");
        }
        let d: Deployment = serde_json::from_value(event.object).context("reading a Deployment from the API")?;
        match rollout_progress(&d) {
            RolloutProgress::Waiting(m) => line.show(&m),
            RolloutProgress::Complete(m) => return Ok(Some(m)),
            RolloutProgress::Failed(m) => bail!("{m}"),
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------------------
// history

async fn history(args: HistoryArgs) -> Result<()> {
    let name = deployment_name(&args.target)?;
    let client = connect(&args.client)?;
    let records = client
        .deployment_revisions(&args.target.namespace, &name)
        .await
        .with_context(|| format!("deployment/{name}"))?;
    println!("deployment/{name}");
    if records.is_empty() {
        println!("No rollout history yet (the controller records revision 1 when it first sees the deployment).");
        return Ok(());
    }
    let rows: Vec<[String; 3]> = records
        .iter()
        .map(|r| {
            [r.revision.to_string(), r.change_cause.clone().unwrap_or_else(|| "<none>".into()), summary(&r.template)]
        })
        .collect();
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max("REVISION".len());
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max("CHANGE-CAUSE".len());
    println!("{:<w0$}  {:<w1$}  TEMPLATE", "REVISION", "CHANGE-CAUSE");
    for r in rows {
        println!("{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    Ok(())
}

/// One line per template: each container's image or command, and its literal env.
fn summary(t: &PodTemplateSpec) -> String {
    t.spec
        .containers
        .iter()
        .map(|c| {
            let mut s = format!("{}=", c.name);
            match &c.image {
                Some(image) => s.push_str(image),
                None => s.push_str(&c.command.iter().chain(&c.args).cloned().collect::<Vec<_>>().join(" ")),
            }
            let env: Vec<String> = c
                .env
                .iter()
                .map(|e| match &e.value {
                    Some(v) => format!("{}={v}", e.name),
                    None => format!("{}=<ref>", e.name),
                })
                .collect();
            if !env.is_empty() {
                s.push_str(&format!(" [{}]", env.join(",")));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------------------
// undo

async fn undo(args: UndoArgs) -> Result<()> {
    let name = deployment_name(&args.target)?;
    let ns = &args.target.namespace;
    let client = connect(&args.client)?;
    let records = client.deployment_revisions(ns, &name).await.with_context(|| format!("deployment/{name}"))?;
    for _ in 0..CONFLICT_RETRIES {
        let mut obj = client.get(Kind::Deployment, ns, &name).await.with_context(|| format!("deployment/{name}"))?;
        let d: Deployment = serde_json::from_value(obj.clone()).context("reading the Deployment from the API")?;
        let template = target_template(&records, &d, &name, args.to_revision)?;
        let target_revision = records.iter().find(|r| &r.template == template).map(|r| r.revision).unwrap_or(0);
        if template_hash(template) == template_hash(&d.spec.template) {
            println!(
                "deployment/{name} skipped rollback (current template already matches revision {target_revision})"
            );
            return Ok(());
        }
        let template = serde_json::to_value(template).context("encoding the template")?;
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| anyhow!("deployment/{name}: the API answered without a spec"))?;
        spec.insert("template".into(), template);
        // `obj` carries the resourceVersion it was read at: a compare-and-swap.
        match client.update(Kind::Deployment, ns, &name, &obj).await {
            Ok(_) => {
                println!("deployment/{name} rolled back to revision {target_revision}");
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e).with_context(|| format!("updating deployment/{name}")),
        }
    }
    bail!("deployment/{name} kept changing; gave up after {CONFLICT_RETRIES} attempts")
}

/// The template `undo` restores, or an error naming the revision that is missing.
fn target_template<'a>(
    records: &'a [RevisionRecord],
    d: &Deployment,
    name: &str,
    to: Option<u64>,
) -> Result<&'a PodTemplateSpec> {
    let hash = template_hash(&d.spec.template);
    let max = records.iter().map(|r| r.revision).max().unwrap_or(0);
    // The current template's revision; a template the controller has not recorded yet is the next one.
    let current = records.iter().find(|r| r.hash == hash).map(|r| r.revision).unwrap_or(max + 1);
    let known = || records.iter().map(|r| r.revision.to_string()).collect::<Vec<_>>().join(", ");
    rollback_template(records, current, to).ok_or_else(|| match to {
        Some(n) => anyhow!("deployment/{name}: revision {n} not found in its history (revisions: {})", known()),
        None => anyhow!("deployment/{name}: no revision before the current one ({current}) to roll back to"),
    })
}

// ---------------------------------------------------------------------------------------------------------
// scale

pub async fn scale(args: ScaleArgs) -> Result<()> {
    let name = deployment_name(&args.target)?;
    let ns = &args.target.namespace;
    let client = connect(&args.client)?;
    for _ in 0..CONFLICT_RETRIES {
        let mut obj = client.get(Kind::Deployment, ns, &name).await.with_context(|| format!("deployment/{name}"))?;
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| anyhow!("deployment/{name}: the API answered without a spec"))?;
        if spec.get("replicas").and_then(Value::as_i64) == Some(i64::from(args.replicas)) {
            println!("{} already has {} replicas", resource_name(Kind::Deployment, &name), args.replicas);
            return Ok(());
        }
        spec.insert("replicas".into(), Value::from(args.replicas));
        match client.update(Kind::Deployment, ns, &name, &obj).await {
            Ok(_) => {
                println!("{} scaled", resource_name(Kind::Deployment, &name));
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e).with_context(|| format!("updating deployment/{name}")),
        }
    }
    bail!("deployment/{name} kept changing; gave up after {CONFLICT_RETRIES} attempts")
}
