//! `limedb admin`: asks a running cluster (a coordinator, or a replica) about the replicas of
//! its shards and changes them, and adds and removes shards, over the HTTP admin API
//! (`/api/v1/admin/shards/{id}/replicas`, `/api/v1/cluster/state`, `/api/v1/admin/shards`,
//! `/api/v1/admin/moves`).

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use limedb_server::http::client::{request_as, ADD_REPLICA_TIMEOUT, MAX_ANSWER_BYTES};

use crate::cli::{AdminArgs, AdminCommand};

/// The node asked, and the credentials sent to it.
struct Target {
    url: String,
    /// The `Authorization` header: basic auth for --user, the default user's bearer
    /// password without it.
    authorization: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// The `Authorization` header for `--user` and `--password` (none without a password).
fn authorization(user: Option<&str>, password: Option<&str>) -> Option<String> {
    use base64::Engine as _;
    let password = password?;
    Some(match user {
        Some(user) => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ),
        None => format!("Bearer {password}"),
    })
}

/// Runs one admin command and prints its answer.
pub async fn run(args: AdminArgs) -> Result<(), String> {
    let base = Target {
        url: args.coordinator.trim_end_matches('/').to_string(),
        authorization: authorization(args.user.as_deref(), args.password.as_deref()),
    };
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
            // A coordinator with a cluster map also reports moves.
            if let Ok(moves) = call(&base, Method::GET, "/api/v1/admin/moves", None).await {
                print_moves(&moves);
            }
            Ok(())
        }
        AdminCommand::AddShard { id, peers, no_wait } => {
            let replicas =
                limedb_server::config::parse_peers(&peers).map_err(|e| format!("--peers: {e}"))?;
            let body = serde_json::json!({ "shardId": id, "replicas": replicas }).to_string();
            let doc = call(
                &base,
                Method::POST,
                "/api/v1/admin/shards",
                Some(Bytes::from(body)),
            )
            .await?;
            follow_move(&base, &doc, no_wait, args.json, Ending::Finish).await
        }
        AdminCommand::RemoveShard { id, no_wait } => {
            let doc = call(
                &base,
                Method::DELETE,
                &format!("/api/v1/admin/shards/{id}"),
                None,
            )
            .await?;
            follow_move(&base, &doc, no_wait, args.json, Ending::Finish).await
        }
        AdminCommand::CancelMove { id, no_wait } => {
            let id = match id {
                Some(id) => id,
                None => {
                    let doc = call(&base, Method::GET, "/api/v1/admin/moves", None).await?;
                    doc["moving"]["id"]
                        .as_u64()
                        .ok_or("no move is in progress; nothing to cancel")?
                }
            };
            let doc = call(
                &base,
                Method::DELETE,
                &format!("/api/v1/admin/moves/{id}"),
                None,
            )
            .await?;
            follow_move(&base, &doc, no_wait, args.json, Ending::Cancel).await
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

/// How a followed move ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It runs to its end.
    Finish,
    /// Its cancellation was asked.
    Cancel,
}

/// Prints the started (or cancelled) move, then (unless `no_wait`) its progress until it
/// leaves the map.
async fn follow_move(
    base: &Target,
    started: &serde_json::Value,
    no_wait: bool,
    json: bool,
    ending: Ending,
) -> Result<(), String> {
    let (asked, ended) = match ending {
        Ending::Finish => ("started", "finished"),
        Ending::Cancel => ("is being cancelled", "cancelled"),
    };
    if json {
        println!("{started}");
    } else {
        println!("move {} {asked}", started["moveId"]);
    }
    if no_wait {
        return Ok(());
    }
    let mut last = String::new();
    let terminal = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let doc = call(base, Method::GET, "/api/v1/admin/moves", None).await?;
        if doc["moving"].is_null() {
            if terminal && !last.is_empty() {
                println!();
            }
            if json {
                println!("{doc}");
            } else {
                println!(
                    "move {} {ended} (ring epoch {})",
                    started["moveId"], doc["epoch"]
                );
            }
            return Ok(());
        }
        if !json {
            let line = move_line(&doc);
            if line != last {
                if terminal {
                    // One line, redrawn in place.
                    print!("\r\x1b[2K{line}");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                } else {
                    println!("{line}");
                }
                last = line;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line per transfer of the move in progress.
fn move_line(doc: &serde_json::Value) -> String {
    let transfers = doc["moving"]["transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut parts: Vec<String> = transfers
        .iter()
        .map(|t| {
            let mut line = format!(
                "{}→{} {}",
                t["from"],
                t["to"],
                t["phase"].as_str().unwrap_or("?")
            );
            if let Some(keys) = t["keysCopied"].as_u64().filter(|&k| k > 0) {
                line.push_str(&format!(" ({keys} keys)"));
            }
            line
        })
        .collect();
    if doc["moving"]["cancelling"] == true {
        parts.insert(0, "cancelling:".into());
    } else if let Some(copies) = doc["driver"]["copying"].as_array() {
        parts.extend(copies.iter().map(copy_progress));
    }
    if let Some(e) = doc["driver"]["lastError"].as_str() {
        parts.push(format!("last error: {e}"));
    }
    parts.join("  ")
}

/// A copy in progress: keys and bytes copied, a bar against the source's estimate, the rate
/// and the time left.
fn copy_progress(copying: &serde_json::Value) -> String {
    let keys = copying["keys"].as_u64().unwrap_or(0);
    let estimated = copying["estimatedKeys"].as_u64().unwrap_or(0);
    let mut line = format!(
        "copying {}→{}: {keys} keys, {:.1} MiB",
        copying["from"],
        copying["to"],
        copying["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
    );
    if estimated > 0 {
        let fraction = (keys as f64 / estimated as f64).min(1.0);
        line.push_str(&format!(
            " of ~{estimated} keys {} {:.0}%",
            progress_bar(fraction, 20),
            fraction * 100.0
        ));
    }
    line.push_str(&format!(
        ", {:.0} keys/s",
        copying["keysPerSec"].as_f64().unwrap_or(0.0)
    ));
    if let Some(eta) = copying["etaSecs"].as_f64() {
        line.push_str(&format!(", ~{eta:.0} s left"));
    }
    line
}

/// `[#####.....]`: `fraction` of `width` cells filled.
fn progress_bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn print_moves(doc: &serde_json::Value) {
    println!(
        "cluster map: version {}, ring epoch {}",
        doc["version"], doc["epoch"]
    );
    if doc["moving"].is_null() {
        println!("no move in progress");
    } else {
        println!(
            "move {} ({}): {}",
            doc["moving"]["id"],
            doc["moving"]["kind"],
            move_line(doc)
        );
    }
}

fn replicas_path(shard: u32) -> String {
    format!("/api/v1/admin/shards/{shard}/replicas")
}

async fn add(base: &Target, shard: u32, replica: u64, url: &str, json: bool) -> Result<(), String> {
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

async fn remove(base: &Target, shard: u32, replica: u64, json: bool) -> Result<(), String> {
    let path = format!("{}/{replica}", replicas_path(shard));
    let doc = call(base, Method::DELETE, &path, None).await?;
    show(&doc, json);
    Ok(())
}

async fn call(
    base: &Target,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<serde_json::Value, String> {
    let timeout = ADD_REPLICA_TIMEOUT + Duration::from_secs(60);
    let (status, answer) = request_as(
        method,
        &base.url,
        path,
        body,
        timeout,
        MAX_ANSWER_BYTES,
        base.authorization.as_deref(),
    )
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shows_a_bar_its_rate_and_the_time_left() {
        assert_eq!(progress_bar(0.0, 4), "[....]");
        assert_eq!(progress_bar(0.5, 4), "[##..]");
        assert_eq!(progress_bar(7.0, 4), "[####]", "clamped");
        let copying = serde_json::json!({
            "from": 1, "to": 4, "keys": 250, "bytes": 1_048_576, "estimatedKeys": 1000,
            "keysPerSec": 50.0, "etaSecs": 15.0,
        });
        assert_eq!(
            copy_progress(&copying),
            "copying 1→4: 250 keys, 1.0 MiB of ~1000 keys [#####...............] 25%, 50 keys/s, ~15 s left"
        );
        let doc = serde_json::json!({
            "moving": {"transfers": [
                {"from": 1, "to": 4, "phase": "done", "keysCopied": 9},
                {"from": 2, "to": 4, "phase": "copy", "keysCopied": 0},
            ]},
            "driver": {"copying": [], "lastError": null},
        });
        assert_eq!(move_line(&doc), "1→4 done (9 keys)  2→4 copy");
    }
}
