//! Node maintenance verbs with kubectl habits: `cordon`, `uncordon`, `drain`.
//!
//! Cordoning sets `spec.unschedulable` through the API with a read-modify-write on `resourceVersion`, retried
//! on conflict (agents rewrite node status all the time). Draining cordons, then deletes every pod bound to
//! the node; their controllers recreate them and the scheduler places the new pods elsewhere. Pods without a
//! controller would be lost, so drain refuses them unless `--force`. This module decides nothing about
//! placement.

use super::connect;
use crate::ClientOpts;
use anyhow::{bail, Context, Result};
use client::Client;
use model::{self, Kind};
use serde_json::Value;

/// Read-modify-write attempts before giving up on a node that keeps changing.
const CONFLICT_RETRIES: u32 = 20;

#[derive(clap::Args, Debug)]
pub struct CordonArgs {
    /// The node to mark unschedulable.
    node: String,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct UncordonArgs {
    /// The node to mark schedulable again.
    node: String,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The node to empty.
    node: String,
    /// Also delete pods that no controller owns (they are not recreated anywhere).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn cordon(args: CordonArgs) -> Result<()> {
    let client = connect(&args.client)?;
    report(&args.node, true, set_unschedulable(&client, &args.node, true).await?);
    Ok(())
}

pub async fn uncordon(args: UncordonArgs) -> Result<()> {
    let client = connect(&args.client)?;
    report(&args.node, false, set_unschedulable(&client, &args.node, false).await?);
    Ok(())
}

pub async fn drain(args: DrainArgs) -> Result<()> {
    let client = connect(&args.client)?;
    report(&args.node, true, set_unschedulable(&client, &args.node, true).await?);
    let pods = client.list(Kind::Pod, None, None).await.context("listing pods")?;
    let mut on_node: Vec<model::Pod> = Vec::new();
    for p in pods {
        let pod: model::Pod = serde_json::from_value(p).context("reading a pod from the API")?;
        if pod.spec.node_name.as_deref() == Some(args.node.as_str()) {
            on_node.push(pod);
        }
    }
    let unmanaged: Vec<String> = on_node
        .iter()
        .filter(|p| !p.metadata.owner_references.iter().any(|o| o.controller == Some(true)))
        .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
        .collect();
    if !unmanaged.is_empty() && !args.force {
        bail!(
            "cannot drain node/{}: these pods have no controller and would not be recreated \
             (use --force to delete them anyway): {}",
            args.node,
            unmanaged.join(", ")
        );
    }
    for p in &on_node {
        let (ns, name) = (&p.metadata.namespace, &p.metadata.name);
        match client.delete(Kind::Pod, ns, name).await {
            Ok(_) => println!("evicting pod {ns}/{name}"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("evicting pod {ns}/{name}")),
        }
    }
    println!("node/{} drained", args.node);
    Ok(())
}

fn report(node: &str, cordon: bool, changed: bool) {
    let verb = if cordon { "cordoned" } else { "uncordoned" };
    if changed {
        println!("node/{node} {verb}");
    } else {
        println!("node/{node} already {verb}");
    }
}

/// Sets `spec.unschedulable`; returns whether it changed. Retries the read-modify-write on conflict.
async fn set_unschedulable(client: &Client, node: &str, value: bool) -> Result<bool> {
    for _ in 0..CONFLICT_RETRIES {
        let mut obj = client.get(Kind::Node, "", node).await.with_context(|| format!("reading node/{node}"))?;
        let current = obj.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
        if current == value {
            return Ok(false);
        }
        let Some(map) = obj.as_object_mut() else {
            bail!("node/{node}: the API answered with a non-object");
        };
        let spec = map.entry("spec").or_insert_with(|| Value::Object(Default::default()));
        let Some(spec) = spec.as_object_mut() else {
            bail!("node/{node}: spec is not an object");
        };
        if value {
            spec.insert("unschedulable".into(), Value::Bool(true));
        } else {
            // The normalized form omits false.
            spec.remove("unschedulable");
        }
        // `obj` still carries the resourceVersion it was read at, so this is a compare-and-swap.
        match client.update(Kind::Node, "", node, &obj).await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e).with_context(|| format!("updating node/{node}")),
        }
    }
    bail!("node/{node} kept changing; gave up after {CONFLICT_RETRIES} attempts")
}
