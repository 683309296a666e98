//! Test support for LimeDB's process-level tests: start real `limedb` processes on 127.0.0.1
//! with ephemeral ports, wait for them to be ready, talk HTTP to them, kill them.
//!
//! Every process prints one `LIMEDB_READY role=... http=...` line on stdout once it serves;
//! [`Node::spawn`] waits for that line (with a deadline) instead of sleeping. Each node's stderr
//! goes to a log file that is printed when a readiness wait fails, so failures explain
//! themselves. Dropping a [`Node`] kills its process.

pub mod group;
pub mod history;
pub mod http;
pub mod linearizability;
pub mod netns;
pub mod pg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use http::{HttpConn, HttpResponse};

/// How long a process gets to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `limedb` process.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    /// Fields of the readiness line (`role`, `id`, `http`, `internal`, ...).
    pub ready: HashMap<String, String>,
    args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
}

impl Node {
    /// Starts `bin args...` and waits for its readiness line. `log` receives its stderr.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> Result<Node, String> {
        Self::spawn_in(bin, args, log, None, &[])
    }

    /// Like [`Node::spawn`], in working directory `cwd` and with extra environment variables.
    pub fn spawn_in(
        bin: &Path,
        args: &[&str],
        log: &Path,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Node, String> {
        Self::spawn_wrapped::<&str>(&[], bin, args, log, cwd, env)
    }

    /// Like [`Node::spawn_in`], with `bin` started through the command prefix `wrapper` (empty:
    /// none), e.g. `ip netns exec <ns>` to run it inside a network namespace (see
    /// [`netns::Host::spawn_node`]). The wrapper must exec `bin` in place, so that [`Node::pid`],
    /// signals and kills reach `bin` itself.
    pub fn spawn_wrapped<S: AsRef<std::ffi::OsStr>>(
        wrapper: &[S],
        bin: &Path,
        args: &[&str],
        log: &Path,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Node, String> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| format!("cannot create log {}: {e}", log.display()))?;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info");
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("LIMEDB_READY ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut node = Node {
            child: Some(child),
            ready: HashMap::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            bin: bin.to_path_buf(),
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                node.ready = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Ok(node)
            }
            Err(_) => {
                let status = node
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                Err(format!(
                    "{} {:?} did not become ready within {:?} (exit status {status:?}); its log:\n{}",
                    bin.display(),
                    args,
                    READY_TIMEOUT,
                    node.log_text()
                ))
            }
        }
    }

    /// The HTTP address from the readiness line.
    pub fn http_addr(&self) -> String {
        self.ready.get("http").cloned().unwrap_or_default()
    }

    /// `http://` + the HTTP address.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`"STOP"`, `"CONT"`, ...) to the running process.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([format!("-{name}"), pid.to_string()])
                .status();
        }
    }

    /// SIGSTOP, then waits until every thread of the process has stopped (`kill` returns as
    /// soon as the signal is queued, while a thread may still be finishing a request).
    pub fn freeze(&self) {
        self.signal("STOP");
        let Some(pid) = self.pid() else {
            return;
        };
        wait_until(Duration::from_secs(10), "the process to stop", || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.filter_map(Result::ok).all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        // The state follows the parenthesised command name.
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.trim_start().chars().next())
                    })
                    .is_some_and(|state| state == 'T' || state == 't')
            })
        });
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (at most `timeout`); returns whether it exited with
    /// status 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.stop_with("TERM", timeout)
    }

    /// Sends signal `name` (`"TERM"`, `"INT"` for Ctrl-C) and waits for the process to exit (at
    /// most `timeout`, then SIGKILL); returns whether it exited with status 0.
    pub fn stop_with(&mut self, name: &str, timeout: Duration) -> bool {
        self.signal(name);
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` every 20 ms on this thread until it holds, or fails after `timeout` with
/// `what` (the blocking twin of [`wait_for`], for tests without a runtime).
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the listener that found it is closed),
/// for servers that cannot be told to pick one themselves. Another process may take it before
/// it is used: prefer port 0 wherever LimeDB accepts it.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// A fresh temporary directory, removed when dropped.
///
/// With `LIMEDB_KEEP_TEST_DIRS` set, the directory (data and every node's log) is kept, and its
/// path printed, for a look after a failure.
pub fn temp_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("limedb-test-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
    if std::env::var_os("LIMEDB_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    dir
}

/// A local cluster of real processes: `n` shards and a coordinator on ephemeral ports.
#[derive(Debug)]
pub struct Cluster {
    /// The shard processes, shard id `i + 1` at index `i`.
    pub shards: Vec<Node>,
    /// The coordinator process.
    pub coordinator: Node,
    /// Holds the data directories and logs.
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    shard_extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` shards and a coordinator routing to them, and waits until the coordinator
    /// reports every shard up. `shard_extra` and `coordinator_extra` are appended to their
    /// command lines.
    pub async fn start(
        bin: &Path,
        n: usize,
        shard_extra: &[&str],
        coordinator_extra: &[&str],
    ) -> Cluster {
        let dir = temp_dir();
        let mut shards = Vec::with_capacity(n);
        for i in 1..=n {
            shards.push(start_shard(bin, dir.path(), i, "0", shard_extra));
        }
        let urls: Vec<String> = shards.iter().map(Node::url).collect();
        let shards_arg = format!("--shards={}", urls.join(","));
        let mut args = vec!["coordinator", "--port", "0", shards_arg.as_str()];
        args.extend_from_slice(coordinator_extra);
        let coordinator = Node::spawn(bin, &args, &dir.path().join("coordinator.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let cluster = Cluster {
            shards,
            coordinator,
            dir,
            bin: bin.to_path_buf(),
            shard_extra: shard_extra.iter().map(|s| s.to_string()).collect(),
        };
        cluster.wait_all_up().await;
        cluster
    }

    /// Waits until the coordinator's health says every shard is up.
    pub async fn wait_all_up(&self) {
        let addr = self.coordinator.http_addr();
        let n = self.shards.len();
        wait_for(Duration::from_secs(20), "every shard up", || {
            let addr = addr.clone();
            async move {
                let r = http::request(&addr, "GET", "/api/v1/health", &[], None)
                    .await
                    .ok()?;
                let doc = r.json()?;
                (doc["healthyShards"].as_u64() == Some(n as u64)).then_some(())
            }
        })
        .await;
    }

    /// The coordinator's HTTP address.
    pub fn addr(&self) -> String {
        self.coordinator.http_addr()
    }

    /// Restarts shard `id` (1-based) on the same HTTP port and data directory.
    pub fn restart_shard(&mut self, id: usize) {
        let port = self.shards[id - 1]
            .http_addr()
            .rsplit(':')
            .next()
            .unwrap_or("0")
            .to_string();
        self.shards[id - 1].kill9();
        let extra: Vec<&str> = self.shard_extra.iter().map(String::as_str).collect();
        self.shards[id - 1] = start_shard(&self.bin, self.dir.path(), id, &port, &extra);
    }

    /// Restarts the coordinator on the same port with the same arguments.
    pub fn restart_coordinator(&mut self) {
        let port = self
            .coordinator
            .http_addr()
            .rsplit(':')
            .next()
            .unwrap_or("0")
            .to_string();
        let mut args: Vec<String> = self.coordinator.args().to_vec();
        if let Some(i) = args.iter().position(|a| a == "--port") {
            args[i + 1] = port;
        }
        self.coordinator.kill9();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.coordinator = Node::spawn(&self.bin, &args, &self.dir.path().join("coordinator.log"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Starts shard `id` with data under `dir/shard-<id>` on HTTP port `port` ("0" for any).
pub fn start_shard(bin: &Path, dir: &Path, id: usize, port: &str, extra: &[&str]) -> Node {
    let data = dir.join(format!("shard-{id}"));
    let data = data.to_string_lossy().to_string();
    let id_s = id.to_string();
    let mut args = vec![
        "shard",
        "--id",
        id_s.as_str(),
        "--port",
        port,
        "--internal-port",
        "0",
        "--data-dir",
        data.as_str(),
    ];
    args.extend_from_slice(extra);
    let log = dir.join(format!("shard-{id}.log"));
    Node::spawn(bin, &args, &log).unwrap_or_else(|e| panic!("{e}"))
}
