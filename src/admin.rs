//! `limedb admin`: asks a running cluster (a coordinator, or a replica) about the replicas of
//! its shards and changes them, over the HTTP admin API (`/api/v1/admin/shards/{id}/replicas`
//! and `/api/v1/cluster/state`).

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use limedb_server::http::client::{request, ADD_REPLICA_TIMEOUT};

use crate::cli::{AdminArgs, AdminCommand};

/// Runs one admin command and prints its answer.
pub async fn run(args: AdminArgs) -> Result<(), String> {
    let base = args.coordinator.trim_end_matches('/').to_string();
    match args.command {
        AdminCommand::Status => {
            let doc = call(&base, Method::GET, "/api/v1/cluster/state", None).await?;
            if args.json {
                println!("{doc}");
                return Ok(());
            }
            let shards = match doc["shards"].as_array() {
                Some(shards) => shards.clone(),
                // A replica answers with its own group.
                None => vec![call(&base, Method::GET, "/api/v1/admin/replicas", None).await?],
            };
            for shard in &shards {
                print_group(shard);
            }
            Ok(())
        }
        AdminCommand::Replicas { shard } => {
            let doc = call(&base, Method::GET, &replicas_path(shard), None).await?;
            show(&doc, args.json);
            Ok(())
        }
        AdminCommand::AddReplica {
            shard,
            replica,
            url,
        } => add(&base, shard, replica, &url, args.json).await,
        AdminCommand::RemoveReplica { shard, replica } => {
            remove(&base, shard, replica, args.json).await
        }
        AdminCommand::ReplaceReplica {
            shard,
            old,
            replica,
            url,
        } => {
            add(&base, shard, replica, &url, args.json).await?;
            remove(&base, shard, old, args.json).await
        }
    }
}

fn replicas_path(shard: u32) -> String {
    format!("/api/v1/admin/shards/{shard}/replicas")
}

async fn add(base: &str, shard: u32, replica: u64, url: &str, json: bool) -> Result<(), String> {
    if !json {
        eprintln!(
            "adding replica {replica} ({url}) to shard {shard}: waiting until it has caught up..."
        );
    }
    let body = serde_json::json!({ "replicaId": replica, "url": url }).to_string();
    let doc = call(
        base,
        Method::POST,
        &replicas_path(shard),
        Some(Bytes::from(body)),
    )
    .await?;
    show(&doc, json);
    Ok(())
}

async fn remove(base: &str, shard: u32, replica: u64, json: bool) -> Result<(), String> {
    let path = format!("{}/{replica}", replicas_path(shard));
    let doc = call(base, Method::DELETE, &path, None).await?;
    show(&doc, json);
    Ok(())
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<serde_json::Value, String> {
    let timeout = ADD_REPLICA_TIMEOUT + Duration::from_secs(60);
    let (status, answer) = request(method, base, path, body, timeout).await?;
    let doc: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("{base}{path} answered {status} without JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{base}{path}: {status}: {}",
            doc["message"].as_str().unwrap_or("no message")
        ));
    }
    Ok(doc)
}

fn show(doc: &serde_json::Value, json: bool) {
    if json {
        println!("{doc}");
    } else {
        print_group(doc);
    }
}

/// Prints a group as a table: from a coordinator's `shards` entry or a replica's health.
fn print_group(doc: &serde_json::Value) {
    let shard = doc["shardId"]
        .as_u64()
        .map_or("?".into(), |s| s.to_string());
    let leader = doc["leader"].as_str().unwrap_or("none");
    let term = doc["term"].as_u64().map_or("-".into(), |t| t.to_string());
    println!("shard {shard}: leader {leader}, term {term}");
    let rows: Vec<serde_json::Value> = doc["replicas"]
        .as_array()
        .or_else(|| doc["raft"]["members"].as_array())
        .cloned()
        .unwrap_or_default();
    println!(
        "  {:<8} {:<34} {:<12} {:<6} {:>8}",
        "replica", "url", "role", "status", "lag"
    );
    for r in rows {
        let role = r["role"].as_str().map(str::to_string).unwrap_or_else(|| {
            if r["voter"] == false {
                "learner".into()
            } else {
                "voter".into()
            }
        });
        println!(
            "  {:<8} {:<34} {:<12} {:<6} {:>8}",
            r["replicaId"]
                .as_u64()
                .map_or("?".into(), |id| id.to_string()),
            r["url"].as_str().unwrap_or("?"),
            role,
            r["status"].as_str().unwrap_or("-"),
            r["lag"].as_u64().map_or("-".into(), |l| l.to_string()),
        );
    }
}
