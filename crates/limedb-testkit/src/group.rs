//! Replicated shards for process-level tests: [`Group`], the replicas of one shard's Raft group
//! as real `limedb shard --replica R --peers ...` processes, each on its own address (loopback
//! ports, or hosts of a [`crate::netns::Lab`]), with helpers to find the leader, kill, pause and
//! restart replicas, and a coordinator in front ([`Group::coordinator`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_port, http, wait_for, Node};

/// Where a replica runs: the address it binds and advertises, and a command prefix (for a
/// network namespace: `ip netns exec NS`).
#[derive(Clone, Debug)]
pub struct Placement {
    /// The IP the replica listens on and its peers reach it at.
    pub ip: String,
    /// The HTTP port.
    pub port: u16,
    /// Prefix of the command that runs it (empty: run directly).
    pub wrapper: Vec<String>,
}

impl Placement {
    /// A replica on 127.0.0.1 at a free port.
    pub fn loopback() -> Placement {
        Placement {
            ip: "127.0.0.1".into(),
            port: free_port().unwrap_or_else(|e| panic!("no free port: {e}")),
            wrapper: Vec::new(),
        }
    }

    /// The replica's HTTP URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }
}

/// The replicas of one shard's group.
#[derive(Debug)]
pub struct Group {
    /// The shard id.
    pub shard: u32,
    /// Running replicas by replica id (a killed one is absent until restarted).
    pub replicas: BTreeMap<u64, Node>,
    /// Where each member runs, by replica id.
    pub placements: BTreeMap<u64, Placement>,
    bin: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Group {
    /// Starts replicas `1..=n` of shard `shard` on loopback, data and logs under `dir`, each
    /// with `extra` arguments; returns once every process is ready (not once a leader exists:
    /// see [`Group::leader`]).
    pub fn start(bin: &Path, dir: &Path, shard: u32, n: u64, extra: &[&str]) -> Group {
        let placements = (1..=n).map(|r| (r, Placement::loopback())).collect();
        Self::start_at(bin, dir, shard, placements, extra)
    }

    /// Starts replicas `1..=n` of the cluster-map group (`limedb meta`, shard id 0) on loopback.
    pub fn start_meta(bin: &Path, dir: &Path, n: u64) -> Group {
        Self::start(bin, dir, 0, n, &[])
    }

    /// Every member's URL, comma-separated (a coordinator's `--meta`).
    pub fn urls_arg(&self) -> String {
        self.placements
            .values()
            .map(Placement::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`Group::start`] with given placements.
    pub fn start_at(
        bin: &Path,
        dir: &Path,
        shard: u32,
        placements: BTreeMap<u64, Placement>,
        extra: &[&str],
    ) -> Group {
        let mut group = Group {
            shard,
            replicas: BTreeMap::new(),
            placements,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let ids: Vec<u64> = group.placements.keys().copied().collect();
        // Started together (each one waits for a majority before it forms the group).
        let handles: Vec<_> = ids
            .iter()
            .map(|&r| {
                let args = group.args(r);
                let placement = group.placements[&r].clone();
                let bin = group.bin.clone();
                let log = group.log(r);
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Node::spawn_wrapped(&placement.wrapper, &bin, &args, &log, None, &[])
                })
            })
            .collect();
        for (r, handle) in ids.into_iter().zip(handles) {
            let node = handle
                .join()
                .unwrap_or_else(|_| panic!("spawning replica {r} panicked"))
                .unwrap_or_else(|e| panic!("{e}"));
            group.replicas.insert(r, node);
        }
        group
    }

    /// `--peers` of this group as it stands.
    pub fn peers_arg(&self) -> String {
        self.placements
            .iter()
            .map(|(id, p)| format!("{id}={}", p.url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The data directory of replica `r`.
    pub fn data_dir(&self, r: u64) -> PathBuf {
        self.dir.join(format!("shard-{}-replica-{r}", self.shard))
    }

    fn log(&self, r: u64) -> PathBuf {
        self.dir
            .join(format!("shard-{}-replica-{r}.log", self.shard))
    }

    fn args(&self, r: u64) -> Vec<String> {
        let p = &self.placements[&r];
        // Shard 0 is the cluster-map group, run by `limedb meta`.
        let mut args = if self.shard == 0 {
            vec!["meta".to_string()]
        } else {
            vec!["shard".to_string(), "--id".into(), self.shard.to_string()]
        };
        args.extend([
            "--replica".into(),
            r.to_string(),
            "--peers".into(),
            self.peers_arg(),
            "--host".into(),
            p.ip.clone(),
            "--port".into(),
            p.port.to_string(),
            "--internal-port".into(),
            "0".into(),
            "--data-dir".into(),
            self.data_dir(r).to_string_lossy().into_owned(),
        ]);
        // Replicas in network namespaces listen on addresses that are not loopback: they accept
        // the risk protected mode would refuse.
        if p.ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback())
        {
            args.push("--insecure".into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts replica `r` (again), on its placement and data directory, with the current
    /// `--peers`.
    pub fn spawn(&mut self, r: u64) {
        let args = self.args(r);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = &self.placements[&r];
        let node = Node::spawn_wrapped(&p.wrapper, &self.bin, &args, &self.log(r), None, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        self.replicas.insert(r, node);
    }

    /// Starts replica `r` again like [`Group::spawn`], on a thread of its own, so the caller
    /// goes on while it starts; hand the [`Node`] back with [`Group::adopt`].
    pub fn spawn_in_background(&self, r: u64) -> std::thread::JoinHandle<Node> {
        let args = self.args(r);
        let wrapper = self.placements[&r].wrapper.clone();
        let (bin, log) = (self.bin.clone(), self.log(r));
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::spawn_wrapped(&wrapper, &bin, &args, &log, None, &[])
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// Takes replica `r`'s process, started by [`Group::spawn_in_background`].
    pub fn adopt(&mut self, r: u64, node: Node) {
        self.replicas.insert(r, node);
    }

    /// Adds member `r` at `placement` to the group's placements (its process is started with
    /// [`Group::spawn`]).
    pub fn place(&mut self, r: u64, placement: Placement) {
        self.placements.insert(r, placement);
    }

    /// Forgets member `r` (after it was removed from the group).
    pub fn forget(&mut self, r: u64) {
        if let Some(mut node) = self.replicas.remove(&r) {
            node.kill9();
        }
        self.placements.remove(&r);
    }

    /// SIGKILLs replica `r`.
    pub fn kill(&mut self, r: u64) {
        if let Some(mut node) = self.replicas.remove(&r) {
            node.kill9();
        }
    }

    /// SIGSTOPs replica `r` and waits until it has stopped.
    pub fn freeze(&self, r: u64) {
        if let Some(node) = self.replicas.get(&r) {
            node.freeze();
        }
    }

    /// SIGCONTs replica `r`.
    pub fn thaw(&self, r: u64) {
        if let Some(node) = self.replicas.get(&r) {
            node.signal("CONT");
        }
    }

    /// The ids of the replicas running now.
    pub fn running(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    /// The URL of replica `r`.
    pub fn url(&self, r: u64) -> String {
        self.placements[&r].url()
    }

    /// Replica `r`'s health document, if it answers within a second.
    pub async fn health(&self, r: u64) -> Option<serde_json::Value> {
        let addr = self.url(r).trim_start_matches("http://").to_string();
        tokio::time::timeout(
            Duration::from_secs(1),
            http::request(&addr, "GET", "/api/v1/health", &[], None),
        )
        .await
        .ok()?
        .ok()?
        .json()
    }

    /// Waits (at most `timeout`) for a replica among the running ones that reports itself the
    /// leader, with another running replica agreeing it is; returns its id.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        wait_for(timeout, "a leader", || {
            let ids = ids.clone();
            async move {
                let mut claims = Vec::new();
                let mut named = Vec::new();
                for r in ids {
                    if let Some(doc) = self.health(r).await {
                        if doc["role"] == "leader" {
                            claims.push(r);
                        } else if let Some(l) = doc["leaderId"].as_u64() {
                            named.push(l);
                        }
                    }
                }
                claims
                    .into_iter()
                    .find(|c| named.contains(c) || self.replicas.len() == 1)
            }
        })
        .await
    }

    /// Waits until every running replica has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        wait_for(timeout, &format!("every replica to apply {index}"), || {
            let ids = ids.clone();
            async move {
                for r in ids {
                    let applied = self.health(r).await?["appliedIndex"].as_u64()?;
                    if applied < index {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await
    }

    /// Starts a coordinator routing to this group (shard `self.shard`, given by replica 1's or
    /// the first member's URL), with `extra` arguments.
    pub fn coordinator(&self, extra: &[&str]) -> Node {
        let first = self.placements.keys().next().copied().unwrap_or(1);
        let shards = format!("--shards={}={}", self.shard, self.url(first));
        let mut args = vec!["coordinator", "--port", "0", shards.as_str()];
        args.extend_from_slice(extra);
        let log = self.dir.join(format!("coordinator-{}.log", self.shard));
        Node::spawn(&self.bin, &args, &log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `coordinator` (started by [`Group::coordinator`]) knows every member of the
    /// group and its leader, so that it keeps routing when any one replica goes away.
    pub async fn wait_known_by(&self, coordinator: &Node) {
        let addr = coordinator.http_addr();
        let want = self.placements.len();
        let shard = self.shard;
        wait_for(
            Duration::from_secs(20),
            "the coordinator to know the group",
            || {
                let addr = addr.clone();
                async move {
                    let doc = http::request(&addr, "GET", "/api/v1/cluster/state", &[], None)
                        .await
                        .ok()?
                        .json()?;
                    let group = doc["shards"]
                        .as_array()?
                        .iter()
                        .find(|g| g["shardId"].as_u64() == Some(u64::from(shard)))?
                        .clone();
                    (group["replicas"].as_array()?.len() == want && !group["leader"].is_null())
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        self.placements
            .keys()
            .map(|r| {
                let text = std::fs::read_to_string(self.log(*r)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- replica {r} (last lines) ---\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}
