//! PostgreSQL for tests: the shared test server named by `LIMEDB_TEST_PG_URL`, databases that
//! tests create there and drop afterwards, and private servers that a test starts, stops and
//! restarts itself.
//!
//! `scripts/test.sh` installs and starts a server and exports `LIMEDB_TEST_PG_URL`; to use an
//! existing server instead, export it yourself (the role must be allowed to create databases).
//! Tests never skip without a server: [`test_url`] fails with instructions.
//!
//! [`PrivatePostgres`] runs `initdb` and `pg_ctl` from the installed PostgreSQL binaries
//! (`LIMEDB_PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`) on an ephemeral port in a temporary directory. PostgreSQL
//! refuses to run as root, so as root the server runs as the `postgres` OS user (created by
//! Debian's package), which owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that names the shared test server.
pub const TEST_URL_VAR: &str = "LIMEDB_TEST_PG_URL";

/// The shared test server's URL, or a panic that says how to provide one.
pub fn test_url() -> String {
    match std::env::var(TEST_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{TEST_URL_VAR} is not set, and the postgres tests need a PostgreSQL server: run the \
             tests with scripts/test.sh (it installs and starts one), or export \
             {TEST_URL_VAR}=postgres://USER:PASSWORD@HOST:PORT/ for a server where USER may \
             create databases"
        ),
    }
}

/// Runs an async block on a fresh current-thread runtime (usable from `Drop` and sync code).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(runtime.block_on(f))
}

/// Connects to the URL's database, or to `postgres` when it names none (as the engine does).
async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("{url} is not a PostgreSQL URL: {e}"))?;
    if config.get_dbname().is_none() {
        config.dbname("postgres");
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("cannot connect to {url}: {}", db.message()),
            None => format!("cannot connect to {url}: {e}"),
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A unique database-name template on the shared server for one test's shards, whose databases
/// are dropped when it is dropped.
#[derive(Debug)]
pub struct TestDatabases {
    url: String,
    prefix: String,
}

impl TestDatabases {
    /// A fresh prefix on the server at `url`.
    pub fn new(url: &str) -> TestDatabases {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TestDatabases {
            url: url.to_string(),
            prefix: format!(
                "limedb_test_{}_{}_{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// The value for `--pg-database`: `<prefix>_{id}`.
    pub fn template(&self) -> String {
        format!("{}_{{id}}", self.prefix)
    }

    /// The database shard `id` uses.
    pub fn name(&self, id: u32) -> String {
        format!("{}_{id}", self.prefix)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The shard flags that select backend `storage` ("lsm", "memory" or "postgres"): `--storage`
/// and, for postgres, a server URL, fresh test databases (dropped with the returned
/// [`TestDatabases`]) and a small pool, so that tests side by side stay under a stock
/// server's 100 connections.
pub fn backend_args(storage: &str) -> (Vec<String>, Option<TestDatabases>) {
    let mut args = vec!["--storage".to_string(), storage.to_string()];
    if storage != "postgres" {
        return (args, None);
    }
    let databases = TestDatabases::new(&test_url());
    args.extend([
        "--pg-url".to_string(),
        databases.url().to_string(),
        "--pg-database".to_string(),
        databases.template(),
        "--pg-pool-size".to_string(),
        "4".to_string(),
    ]);
    (args, Some(databases))
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // A thread of its own: this may run inside a test's runtime.
        let cleanup = std::thread::spawn(move || {
            block_on(async move {
                let client = connect(&url).await?;
                let rows = client
                    .query(
                        "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                        &[&prefix],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                for row in rows {
                    let name: String = row.try_get(0).map_err(|e| e.to_string())?;
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
                Ok::<(), String>(())
            })
        });
        if let Ok(Ok(Err(e))) = cleanup.join() {
            eprintln!("warning: cannot drop the test databases: {e}");
        }
    }
}

/// The directory of `initdb`, `pg_ctl` and `postgres`.
pub fn bindir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("LIMEDB_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = candidates.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err("cannot find PostgreSQL's initdb: install PostgreSQL (scripts/test.sh does, as root: apt-get install postgresql) or set LIMEDB_PG_BINDIR".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server of one test's own, on 127.0.0.1 and an ephemeral port, with password
/// authentication over TCP. Stopped and deleted when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

/// The superuser of a [`PrivatePostgres`].
pub const PRIVATE_USER: &str = "limedb";
/// Its password.
pub const PRIVATE_PASSWORD: &str = "lime-secret";

impl PrivatePostgres {
    /// Creates a cluster with `initdb` and starts it; waits until it accepts connections.
    pub fn start() -> Result<PrivatePostgres, String> {
        let bindir = bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("limedb-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let as_postgres_user = is_root();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PRIVATE_PASSWORD).map_err(|e| e.to_string())?;
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !status.success() {
                return Err("cannot give the temp dir to the postgres OS user (is PostgreSQL installed? it creates that user)".into());
            }
        }
        let mut server = PrivatePostgres {
            dir,
            bindir,
            port: 0,
            as_postgres_user,
            running: false,
        };
        let data = server.data_dir();
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", PRIVATE_USER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        server.run(initdb, "initdb")?;
        // PostgreSQL cannot pick its own port, so a free one is found first; another process
        // may take it in between, and then the next attempt takes another.
        let mut attempts = 0;
        loop {
            server.port =
                crate::free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
            // The log of a failed attempt would make the next one's errors look like it.
            let _ = std::fs::remove_file(server.dir.path().join("server.log"));
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 3 && e.contains("could not bind") => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, mut command: Command, what: &str) -> Result<(), String> {
        let out = command
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            ))
        }
    }

    /// Starts the (stopped) server on its port and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"]);
        self.run(pg_ctl, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// Stops the server: `"immediate"` is a crash (no checkpoint; recovery replays the WAL on
    /// the next start), `"fast"` a clean shutdown. Waits until it has stopped.
    pub fn stop(&mut self, mode: &str) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        self.run(pg_ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://limedb:<password>@127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{PRIVATE_USER}:{PRIVATE_PASSWORD}@127.0.0.1:{}/",
            self.port
        )
    }

    /// The same URL with a wrong password.
    pub fn url_with_wrong_password(&self) -> String {
        format!(
            "postgres://{PRIVATE_USER}:not-the-password@127.0.0.1:{}/",
            self.port
        )
    }

    /// The directory holding the cluster and its log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}
