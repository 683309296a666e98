//! The coordinator's client of the map group (`--meta`): reads the cluster map and changes it by
//! compare-and-set, at whichever replica leads the group.
//!
//! The client starts from the URLs it was given (one is enough), follows `not_leader` answers to
//! the leader they name, learns the group's other members from a replica's health document, and
//! keeps trying the members until the deadline while the group has no leader.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use limedb_cluster::ClusterMap;

use crate::http::client::request_limited;

/// Pause between rounds over the members while none answers as leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Bound on one HTTP exchange with a map-group replica.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a compare-and-set came to.
#[derive(Debug)]
pub enum CasOutcome {
    /// The map is stored.
    Stored,
    /// The stored map was not at the expected version (read it again).
    Conflict,
}

/// A client of the map group. Cheap to share.
#[derive(Debug)]
pub struct MapClient {
    /// Known members' URLs, the one believed to lead first.
    members: Mutex<Vec<String>>,
    /// Whether to learn more members from a member's health document.
    learn: bool,
    /// When members were last learned (at most every [`LEARN_EVERY`]).
    learned_at: Mutex<Option<Instant>>,
    /// Largest answer accepted.
    max_answer: usize,
    /// Bound on one exchange with one member before the next is tried.
    attempt_timeout: Duration,
    /// What the group is, for errors.
    what: &'static str,
}

/// Largest answer from the map group (a map).
const MAX_MAP_ANSWER: usize = 4 << 20;

/// Largest answer from a shard group to the move driver: a page of keys, which may hold one
/// value of up to the largest value a shard accepts.
const MAX_GROUP_ANSWER: usize = crate::config::MAX_VALUE_BYTES_CAP + (64 << 20);

/// Bound on one exchange with a shard group's replica: the move driver's requests (a page of
/// keys stored through Raft, a round of clean-up) take longer than a map read, and one cut short
/// is sent again from the start.
const GROUP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the client asks a member for the group's members.
const LEARN_EVERY: Duration = Duration::from_secs(30);

impl MapClient {
    /// A client that starts from `urls` (any members of the map group).
    pub fn new(urls: Vec<String>) -> MapClient {
        MapClient {
            members: Mutex::new(urls),
            learn: true,
            learned_at: Mutex::new(None),
            max_answer: MAX_MAP_ANSWER,
            attempt_timeout: ATTEMPT_TIMEOUT,
            what: "the cluster-map group",
        }
    }

    /// A client of any replica group whose members are all listed in `urls` (the move driver
    /// talking to shard groups named by the map): the same leader-following, no learning.
    pub fn for_group(urls: Vec<String>) -> MapClient {
        MapClient {
            members: Mutex::new(urls),
            learn: false,
            learned_at: Mutex::new(None),
            max_answer: MAX_GROUP_ANSWER,
            attempt_timeout: GROUP_ATTEMPT_TIMEOUT,
            what: "the shard group",
        }
    }

    /// The members this client knows, the believed leader first.
    fn members(&self) -> Vec<String> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stored map (`None` before one was created), read at the leader, trying for up to
    /// `timeout`.
    pub async fn get(&self, timeout: Duration) -> Result<Option<ClusterMap>, String> {
        let (status, body) = self
            .call(Method::GET, "/api/v1/meta/map", None, timeout)
            .await?;
        match status {
            StatusCode::OK => parse_map(&body, "map").map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(answer_error("GET /api/v1/meta/map", other, &body)),
        }
    }

    /// Stores `map` if the stored map is at version `expected` (`None`: no map yet).
    pub async fn compare_and_set(
        &self,
        expected: Option<u64>,
        map: &ClusterMap,
        timeout: Duration,
    ) -> Result<CasOutcome, String> {
        let body = serde_json::json!({ "expectedVersion": expected, "map": map });
        let body = Bytes::from(body.to_string());
        let (status, answer) = self
            .call(Method::POST, "/api/v1/meta/map", Some(body), timeout)
            .await?;
        match status {
            StatusCode::OK => Ok(CasOutcome::Stored),
            StatusCode::CONFLICT => Ok(CasOutcome::Conflict),
            other => Err(answer_error("POST /api/v1/meta/map", other, &answer)),
        }
    }

    /// Sends one request to the group's leader: tries the members in turn, follows
    /// `not_leader` answers, and keeps going while nobody leads, until `timeout`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no member of the map group was tried");
        loop {
            for url in self.members() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let attempt = left.min(self.attempt_timeout);
                match request_limited(
                    method.clone(),
                    &url,
                    path,
                    body.clone(),
                    attempt,
                    self.max_answer,
                )
                .await
                {
                    Ok((StatusCode::SERVICE_UNAVAILABLE, answer)) => {
                        let doc: serde_json::Value =
                            serde_json::from_slice(&answer).unwrap_or_default();
                        if let Some(leader) = doc["leader"].as_str().filter(|l| *l != url) {
                            self.prefer(leader);
                        }
                        last = format!("{url}: {}", doc["message"].as_str().unwrap_or("503"));
                    }
                    Ok((status, answer)) => {
                        self.prefer(&url);
                        if self.learn {
                            self.learn_members(&url).await;
                        }
                        return Ok((status, answer));
                    }
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer within {} ms (members tried: {}); last problem: {last}",
                    self.what,
                    timeout.as_millis(),
                    self.members().join(", ")
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Puts `url` first (adding it if new).
    fn prefer(&self, url: &str) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m != url);
        members.insert(0, url.to_string());
    }

    /// Adds the members `url`'s health document lists (best effort: the group may have grown
    /// since the coordinator was started).
    async fn learn_members(&self, url: &str) {
        {
            let mut at = self.learned_at.lock().unwrap_or_else(|p| p.into_inner());
            if at.is_some_and(|t| t.elapsed() < LEARN_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let Ok(doc) = super::discover::health(url, ATTEMPT_TIMEOUT).await else {
            return;
        };
        let listed: Vec<String> = doc["raft"]["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["url"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for m in listed {
            if !members.contains(&m) {
                members.push(m);
            }
        }
    }
}

fn parse_map(body: &[u8], field: &str) -> Result<ClusterMap, String> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the map group's answer is not JSON: {e}"))?;
    serde_json::from_value(doc[field].clone())
        .map_err(|e| format!("the map group sent a map we cannot read: {e}"))
}

/// The error for an answer other than the one expected: its status and the JSON `message`
/// (or the body as text).
pub fn answer_error(what: &str, status: StatusCode, body: &[u8]) -> String {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    format!(
        "{what} answered {status}: {}",
        doc["message"].as_str().map_or_else(
            || String::from_utf8_lossy(body).into_owned(),
            str::to_string
        )
    )
}
