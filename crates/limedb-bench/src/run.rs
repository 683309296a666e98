//! Orchestration of a run: resolve and probe the server, then run up to
//! three phases — prefill (SET every key once), warm-up, and the measured
//! bench — each with `connections` worker tasks.
//!
//! Work is handed out by tickets: every worker claims the next request number
//! from one shared atomic counter until `requests` are claimed, so fast
//! connections do more and the run ends when the work ends rather than when the
//! slowest connection finishes a fixed share. The counter is the only shared
//! write on the hot path; latencies go to per-worker [`Recorder`]s merged at the
//! end. A worker that hits an error counts it, drops its connection and
//! reconnects on its next ticket; every request is bounded by the timeout, so a
//! run always ends. Past the error limit (1 % of the phase, at least
//! [`MIN_ERROR_LIMIT`]) every worker stops and the run returns
//! [`BenchError::TooManyErrors`].
//!
//! Timing starts when every worker has connected (a barrier) and stops when
//! the last one is done. The optional progress bar is redrawn by its own
//! ticker task (~10 Hz) from the ticket counter; workers never touch it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Barrier;

use crate::client::{connect_tcp, Client, Op, Outcome, RequestParts};
use crate::keys::{KeyChooser, SplitMix64};
use crate::options::{BenchOptions, Target, Workload};
use crate::report::{BenchReport, Recorder};
use crate::{BenchError, KeyPattern};

/// A phase never aborts before this many errors (so tiny runs survive a blip).
pub const MIN_ERROR_LIMIT: u64 = 10;

/// Pause after a failed reconnect, so a dead server is not hammered in a spin.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Seed of all per-connection PRNGs: runs are reproducible.
const RUN_SEED: u64 = 0x4C49_4D45_4442_0001;

/// Runs the benchmark described by `options` and reports the measured phase.
///
/// Must be called inside a tokio runtime; worker tasks are spawned on it.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let target = options.validate()?;
    let timeout = Duration::from_millis(options.timeout_ms);
    let addr = resolve_and_probe(&target, timeout).await?;
    let parts = RequestParts::new(
        options.api,
        &target,
        options.value_size,
        options.value_kind,
        timeout,
    );

    if options.prefill && options.workload.reads() {
        let spec = PhaseSpec {
            name: "prefill",
            requests: options.keyspace,
            workload: Workload::Set,
            keys: Keys::Ticket,
            keep_latency: false,
        };
        run_phase(&spec, options, addr, &parts).await?;
    }
    if options.warmup_requests > 0 {
        let spec = PhaseSpec {
            name: "warmup",
            requests: options.warmup_requests,
            workload: options.workload,
            keys: Keys::Pattern(options.key_pattern),
            keep_latency: false,
        };
        run_phase(&spec, options, addr, &parts).await?;
    }
    let spec = PhaseSpec {
        name: "bench",
        requests: options.requests,
        workload: options.workload,
        keys: Keys::Pattern(options.key_pattern),
        keep_latency: true,
    };
    // SIGINT or SIGTERM ends the measured phase early; the report covers what ran until then
    // (how a script measures a window it does not know in advance).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(stop_on_signal(Arc::clone(&stop)));
    let measured = run_phase_until(&spec, options, addr, &parts, Some(stop)).await;
    watcher.abort();
    let (recorder, elapsed) = measured?;
    let mut report = BenchReport::from_recorder(
        options.workload.to_string(),
        crate::options::redacted(&options.url),
        options.connections,
        &recorder,
        elapsed,
    );
    report.target = options.api.to_string();
    Ok(report)
}

/// Resolves the host and returns the first address that accepts a connection.
async fn resolve_and_probe(target: &Target, timeout: Duration) -> Result<SocketAddr, BenchError> {
    let host_port = format!("{}:{}", target.host(), target.port());
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host(), target.port()))
        .await
        .map_err(|source| BenchError::Resolve {
            host: host_port.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match connect_tcp(addr, timeout).await {
            Ok(_probe) => return Ok(addr),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) if e.kind() == std::io::ErrorKind::TimedOut => BenchError::ConnectTimeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        },
        Some((addr, source)) => BenchError::Connect { addr, source },
        None => BenchError::Resolve {
            host: host_port,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses found"),
        },
    })
}

/// How a phase picks keys.
#[derive(Debug, Clone, Copy)]
enum Keys {
    /// Key index = ticket number modulo keyspace (prefill: every key once, in order).
    Ticket,
    /// Per-connection [`KeyChooser`].
    Pattern(KeyPattern),
}

#[derive(Debug)]
struct PhaseSpec {
    name: &'static str,
    requests: u64,
    workload: Workload,
    keys: Keys,
    keep_latency: bool,
}

/// The only state workers share.
#[derive(Debug)]
struct Shared {
    tickets: AtomicU64,
    errors: AtomicU64,
    abort: AtomicBool,
    last_error: Mutex<String>,
    requests: u64,
    error_limit: u64,
    /// Set by a signal: claim nothing more (not an error).
    stop: Option<Arc<AtomicBool>>,
}

impl Shared {
    fn new(requests: u64) -> Shared {
        Shared {
            tickets: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            requests,
            error_limit: error_limit(requests),
            stop: None,
        }
    }

    /// Next request number, or `None` when the phase is done or aborted.
    fn claim(&self) -> Option<u64> {
        if self.abort.load(Ordering::Relaxed)
            || self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return None;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        (ticket < self.requests).then_some(ticket)
    }

    /// Records a failure (cold path) and trips the abort past the limit.
    fn note_error(&self, message: String) {
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.last_error.lock() {
            *last = message;
        }
        if errors > self.error_limit {
            self.abort.store(true, Ordering::Relaxed);
        }
    }

    fn claimed(&self) -> u64 {
        self.tickets.load(Ordering::Relaxed).min(self.requests)
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| "unknown".to_owned())
    }
}

/// Errors tolerated in a phase of `requests` requests: 1 %, at least [`MIN_ERROR_LIMIT`].
pub fn error_limit(requests: u64) -> u64 {
    (requests / 100).max(MIN_ERROR_LIMIT)
}

/// Sets `stop` on SIGINT or SIGTERM.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    stop.store(true, Ordering::Relaxed);
}

async fn run_phase(
    spec: &PhaseSpec,
    options: &BenchOptions,
    addr: SocketAddr,
    parts: &Arc<RequestParts>,
) -> Result<(Recorder, Duration), BenchError> {
    run_phase_until(spec, options, addr, parts, None).await
}

/// Runs a phase; once `stop` is set, no new request starts.
async fn run_phase_until(
    spec: &PhaseSpec,
    options: &BenchOptions,
    addr: SocketAddr,
    parts: &Arc<RequestParts>,
    stop: Option<Arc<AtomicBool>>,
) -> Result<(Recorder, Duration), BenchError> {
    let mut shared = Shared::new(spec.requests);
    shared.stop = stop;
    let shared = Arc::new(shared);
    // Never more workers than requests (a tiny run needs no 64 sockets).
    let workers = options
        .connections
        .min(usize::try_from(spec.requests).unwrap_or(usize::MAX))
        .max(1);
    let barrier = Arc::new(Barrier::new(workers + 1));
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let worker = Worker {
            id,
            addr,
            parts: Arc::clone(parts),
            shared: Arc::clone(&shared),
            read_percent: spec.workload.read_percent(),
            keyspace: options.keyspace,
            keys: match spec.keys {
                Keys::Ticket => None,
                Keys::Pattern(pattern) => Some(KeyChooser::new(
                    pattern,
                    options.keyspace,
                    id,
                    workers,
                    RUN_SEED,
                )),
            },
            recorder: Recorder::new(spec.keep_latency),
        };
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(worker.run(barrier)));
    }

    barrier.wait().await;
    let started = Instant::now();
    let progress = options
        .progress
        .then(|| Progress::start(spec.name, Arc::clone(&shared)));

    let mut merged = Recorder::new(spec.keep_latency);
    let mut join_error = None;
    for handle in handles {
        match handle.await {
            Ok(recorder) => merged.merge(recorder),
            Err(e) => join_error = Some(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.finish();
    }
    if let Some(message) = join_error {
        return Err(BenchError::Worker(message));
    }

    let errors = merged.errors();
    if shared.abort.load(Ordering::Relaxed) {
        return Err(BenchError::TooManyErrors {
            phase: spec.name,
            errors,
            attempted: merged.requests(),
            last_error: shared.last_error(),
        });
    }
    if errors > 0 && errors == merged.requests() {
        return Err(BenchError::AllRequestsFailed {
            phase: spec.name,
            errors,
            last_error: shared.last_error(),
        });
    }
    Ok((merged, elapsed))
}

/// One connection's task.
struct Worker {
    id: usize,
    addr: SocketAddr,
    parts: Arc<RequestParts>,
    shared: Arc<Shared>,
    read_percent: u8,
    keyspace: u64,
    keys: Option<KeyChooser>,
    recorder: Recorder,
}

impl Worker {
    async fn run(mut self, barrier: Arc<Barrier>) -> Recorder {
        // Connect before the clock starts; a failure here is retried (and
        // counted) on the first ticket.
        let mut client = Client::connect(self.addr, Arc::clone(&self.parts))
            .await
            .ok();
        barrier.wait().await;

        let mut op_rng = SplitMix64::new(RUN_SEED ^ (self.id as u64).rotate_left(32));
        while let Some(ticket) = self.shared.claim() {
            let op = match self.read_percent {
                0 => Op::Set,
                100.. => Op::Get,
                p if op_rng.below(100) < u64::from(p) => Op::Get,
                _ => Op::Set,
            };
            let index = match &mut self.keys {
                Some(chooser) => chooser.next_index(),
                None => ticket % self.keyspace.max(1),
            };

            let connection = match client.take() {
                Some(c) if !c.is_closed() => c,
                _ => match Client::connect(self.addr, Arc::clone(&self.parts)).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.recorder.failure(op);
                        self.shared
                            .note_error(format!("cannot connect to {}: {e}", self.addr));
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let mut connection = connection;
            let (outcome, latency) = connection.request(op, index).await;
            match outcome {
                Outcome::Ok => self.recorder.success(op, latency, false),
                Outcome::NotFound => self.recorder.success(op, latency, true),
                Outcome::Failed(message) => {
                    self.recorder.failure(op);
                    self.shared.note_error(message);
                }
            }
            client = Some(connection);
        }
        self.recorder
    }
}

/// The progress bar and its ticker task.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(phase: &'static str, shared: Arc<Shared>) -> Progress {
        let bar = ProgressBar::with_draw_target(
            Some(shared.requests),
            ProgressDrawTarget::stderr_with_hz(10),
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(phase);
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                ticker_bar.set_position(shared.claimed());
            }
        });
        Progress { bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_limit_is_one_percent_with_a_floor() {
        assert_eq!(error_limit(0), MIN_ERROR_LIMIT);
        assert_eq!(error_limit(100), MIN_ERROR_LIMIT);
        assert_eq!(error_limit(100_000), 1_000);
    }

    #[test]
    fn tickets_stop_at_the_request_count_and_on_abort() {
        let shared = Shared::new(3);
        assert_eq!(
            (0..5).filter_map(|_| shared.claim()).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(shared.claimed(), 3);

        let shared = Shared::new(1_000);
        for i in 0..=MIN_ERROR_LIMIT {
            assert!(shared.claim().is_some());
            shared.note_error(format!("boom {i}"));
        }
        assert!(shared.claim().is_none());
        assert_eq!(shared.last_error(), format!("boom {MIN_ERROR_LIMIT}"));
    }
}
