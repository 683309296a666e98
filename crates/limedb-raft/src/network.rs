//! The network between replicas: [`RaftTransport`], the one thing the server must provide (send
//! bytes to a peer replica and get bytes back), and openraft's `RaftNetworkFactory` on top of
//! it, which encodes every message with [`crate::codec`] and streams snapshots as file chunks.
//!
//! # RPCs
//!
//! | [`RpcKind`] | request payload | reply payload |
//! |---|---|---|
//! | `Append` (1) | `AppendEntriesRequest` | `AppendEntriesResponse` |
//! | `Vote` (2) | `VoteRequest` | `VoteResponse` |
//! | `SnapshotBegin` (3) | [`SnapshotBegin`]: vote, meta, every file's path and size | empty |
//! | `SnapshotChunk` (4) | [`SnapshotChunk`]: snapshot id, file number, offset, bytes, crc32c | empty |
//! | `SnapshotFinish` (5) | [`SnapshotFinish`]: snapshot id, vote | the receiver's `Vote` |
//! | `PreVote` (6) | [`PreVote`]: the candidate's last log id | `granted u8` |
//!
//! A snapshot is the checkpoint directory of the leader's engine: `SnapshotBegin` announces its
//! files, `SnapshotChunk`s carry them in order in [`SNAPSHOT_CHUNK_BYTES`] pieces (each checked
//! against its checksum on arrival), and `SnapshotFinish` makes the receiver check every file is
//! complete and install it (`state_machine`). File names from a peer are checked: relative,
//! no `..`, so a lying peer cannot write outside the snapshot directory.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes, Snapshot};

use crate::codec::{from_bytes, to_bytes, CodecError, Decode, Encode, Reader};
use crate::lease::LeaseClock;
use crate::types::{LogId, ReplicaId, ReplicaNode, SnapshotMeta, TypeConfig, Vote};

/// Bytes of one snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// Longest a single snapshot chunk may take before the transfer is abandoned (the leader retries
/// the whole snapshot later).
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Most files a snapshot may announce.
const MAX_SNAPSHOT_FILES: usize = 1 << 20;
/// Longest file path in a snapshot.
const MAX_PATH_BYTES: usize = 1024;

/// A boxed future, as [`RaftTransport`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which Raft RPC a payload carries (a byte on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RpcKind {
    /// AppendEntries (also heartbeats).
    Append = 1,
    /// RequestVote.
    Vote = 2,
    /// Start of a snapshot transfer.
    SnapshotBegin = 3,
    /// A piece of a snapshot file.
    SnapshotChunk = 4,
    /// End of a snapshot transfer: install it.
    SnapshotFinish = 5,
    /// Would you vote for me? (see `election`)
    PreVote = 6,
}

impl RpcKind {
    /// The kind for a wire byte.
    pub fn from_u8(b: u8) -> Option<RpcKind> {
        Some(match b {
            1 => RpcKind::Append,
            2 => RpcKind::Vote,
            3 => RpcKind::SnapshotBegin,
            4 => RpcKind::SnapshotChunk,
            5 => RpcKind::SnapshotFinish,
            6 => RpcKind::PreVote,
            _ => return None,
        })
    }
}

/// Why an RPC got no reply.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (no connection); openraft backs off before retrying.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The peer answered with an error (it is not that replica, it refused the message...).
    #[error("{0}")]
    Remote(String),
}

/// Sends Raft RPCs to peer replicas; implemented by the server over its internal protocol.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `payload` as RPC `kind` to replica `target`, whose HTTP URL is `url`, and returns
    /// the reply payload, giving up after `timeout`.
    fn call<'a>(
        &'a self,
        target: ReplicaId,
        url: &'a str,
        kind: RpcKind,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Bytes, TransportError>>;
}

/// `SnapshotBegin`: a snapshot transfer starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBegin {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot holds.
    pub meta: SnapshotMeta,
    /// Every file: path relative to the snapshot's `engine/` directory, and size.
    pub files: Vec<(String, u64)>,
    /// The group record at the snapshot (see `types::Command`).
    pub record: Option<Bytes>,
}

/// `SnapshotChunk`: bytes of one file at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot being sent.
    pub snapshot_id: String,
    /// Index into [`SnapshotBegin::files`].
    pub file: u32,
    /// Where these bytes go in the file.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// crc32c of `data`.
    pub crc: u32,
}

/// `SnapshotFinish`: every chunk was sent; install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFinish {
    /// The snapshot sent.
    pub snapshot_id: String,
    /// The leader's vote.
    pub vote: Vote,
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

impl Encode for SnapshotBegin {
    fn encode(&self, out: &mut BytesMut) {
        self.vote.encode(out);
        self.meta.encode(out);
        out.put_u32_le(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        for (path, size) in &self.files {
            put_str(out, path);
            out.put_u64_le(*size);
        }
        crate::codec::put_record(out, self.record.as_ref());
    }
}

impl Decode for SnapshotBegin {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        let vote = Vote::decode(r)?;
        let meta = SnapshotMeta::decode(r)?;
        let n = r.count("snapshot files", 12)?;
        if n > MAX_SNAPSHOT_FILES {
            return Err(CodecError::Invalid {
                what: "snapshot files",
                detail: format!("{n} files is more than {MAX_SNAPSHOT_FILES}"),
            });
        }
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.string("snapshot file path", MAX_PATH_BYTES)?;
            let size = r.u64("snapshot file size")?;
            files.push((path, size));
        }
        // A peer from before group records ends here.
        let record = if r.remaining() > 0 {
            crate::codec::read_record(r)?
        } else {
            None
        };
        Ok(SnapshotBegin {
            vote,
            meta,
            files,
            record,
        })
    }
}

impl Encode for SnapshotChunk {
    fn encode(&self, out: &mut BytesMut) {
        put_str(out, &self.snapshot_id);
        out.put_u32_le(self.file);
        out.put_u64_le(self.offset);
        out.put_u32_le(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
        out.put_slice(&self.data);
        out.put_u32_le(self.crc);
    }
}

impl Decode for SnapshotChunk {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(SnapshotChunk {
            snapshot_id: r.string("snapshot id", 256)?,
            file: r.u32("file number")?,
            offset: r.u64("offset")?,
            data: r.bytes("chunk", SNAPSHOT_CHUNK_BYTES)?,
            crc: r.u32("chunk crc")?,
        })
    }
}

impl Encode for SnapshotFinish {
    fn encode(&self, out: &mut BytesMut) {
        put_str(out, &self.snapshot_id);
        self.vote.encode(out);
    }
}

impl Decode for SnapshotFinish {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(SnapshotFinish {
            snapshot_id: r.string("snapshot id", 256)?,
            vote: Vote::decode(r)?,
        })
    }
}

/// `PreVote`: a replica about to stand for election asks whether the receiver would vote for
/// it, without changing anyone's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreVote {
    /// The candidate's last log id.
    pub last_log_id: Option<crate::types::LogId>,
}

impl Encode for PreVote {
    fn encode(&self, out: &mut BytesMut) {
        self.last_log_id.encode(out);
    }
}

impl Decode for PreVote {
    fn decode(r: &mut Reader) -> Result<Self, CodecError> {
        Ok(PreVote {
            last_log_id: Option::<crate::types::LogId>::decode(r)?,
        })
    }
}

/// Checks a file path received from a peer: relative, plain components only.
pub fn safe_relative_path(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return None;
    }
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
}

/// Every file under `dir`, as paths relative to it, with sizes (sorted for a stable order).
pub fn list_files(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .map_err(std::io::Error::other)?
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, entry.metadata()?.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Counters the network keeps (the server exports them in /metrics).
#[derive(Debug, Default)]
pub struct NetworkCounters {
    /// Snapshots sent to followers completely.
    pub snapshots_sent: std::sync::atomic::AtomicU64,
    /// Bytes of snapshot files sent.
    pub snapshot_bytes_sent: std::sync::atomic::AtomicU64,
    /// Commit-index-only AppendEntries answered without a round trip (see [`PeerClient`]).
    pub commit_updates_deferred: std::sync::atomic::AtomicU64,
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Clone)]
pub struct Network {
    me: ReplicaId,
    transport: Arc<dyn RaftTransport>,
    counters: Arc<NetworkCounters>,
    lease: Arc<LeaseClock>,
}

impl Network {
    /// A network for replica `me`; acknowledged AppendEntries are recorded in `lease`.
    pub fn new(
        me: ReplicaId,
        transport: Arc<dyn RaftTransport>,
        counters: Arc<NetworkCounters>,
        lease: Arc<LeaseClock>,
    ) -> Network {
        Network {
            me,
            transport,
            counters,
            lease,
        }
    }
}

/// The connection to one peer, as openraft sees it.
///
/// # Commit updates ride on the next message
///
/// openraft 0.9 follows every commit with an AppendEntries that carries no entries, only the
/// new commit index, to each follower, and its replication stream to that follower waits for
/// the answer before it sends the next entries. That round trip costs each follower a wakeup
/// and delays the next entry. So when such a request would tell a follower nothing but the
/// commit index, and the same follower acknowledged, under the same vote and less than
/// [`DEFER_COMMIT_UPDATE`] ago, a request that left its log exactly where this one expects it,
/// the request is answered here with the answer the follower would give (`Success`) and not
/// sent. The commit index reaches the follower with the next entries or the next heartbeat
/// (heartbeats come every `--raft-heartbeat-ms`, longer than the window, so they are sent).
/// A follower only applies later; nothing it acknowledges changes. The leader's lease
/// ([`LeaseClock`]) counts only acknowledgements that crossed the network; openraft's own
/// clock, which its read-index rounds use, counts this answer as fresh, which is safe because
/// a real acknowledgement less than the window old keeps every other replica from being
/// elected for a whole lease (see [`crate::lease`]).
pub struct PeerClient {
    me: ReplicaId,
    target: ReplicaId,
    url: String,
    transport: Arc<dyn RaftTransport>,
    counters: Arc<NetworkCounters>,
    lease: Arc<LeaseClock>,
    /// The last request the peer acknowledged with `Success`.
    last_ack: Option<Ack>,
}

/// A request a peer acknowledged with `Success`.
#[derive(Clone, Copy, Debug)]
struct Ack {
    vote: Vote,
    /// Where it left the peer's log: its last entry, or where it expected the log to end.
    log_at: Option<LogId>,
    sent_at: Instant,
}

impl Ack {
    /// Whether a request without entries, under `vote`, expecting the peer's log to end at
    /// `prev_log_id`, sent `now`, would tell the peer nothing but the commit index and may be
    /// answered from this acknowledgement (see [`PeerClient`]).
    fn covers(&self, vote: &Vote, prev_log_id: Option<LogId>, now: Instant) -> bool {
        self.vote == *vote
            && self.log_at == prev_log_id
            && now.saturating_duration_since(self.sent_at) < DEFER_COMMIT_UPDATE
    }
}

/// How recent an acknowledgement must be for a commit-only request to be answered without
/// sending it (see [`PeerClient`]).
pub const DEFER_COMMIT_UPDATE: Duration = Duration::from_millis(10);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: ReplicaId, node: &ReplicaNode) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            url: node.url.clone(),
            transport: Arc::clone(&self.transport),
            counters: Arc::clone(&self.counters),
            lease: Arc::clone(&self.lease),
            last_ack: None,
        }
    }
}

type RpcResult<T> = Result<T, RPCError<ReplicaId, ReplicaNode, RaftError<ReplicaId>>>;

impl PeerClient {
    async fn call(
        &self,
        kind: RpcKind,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        self.transport
            .call(self.target, &self.url, kind, payload, timeout)
            .await
    }

    fn rpc_error(
        &self,
        action: RPCTypes,
        e: TransportError,
    ) -> RPCError<ReplicaId, ReplicaNode, RaftError<ReplicaId>> {
        match e {
            TransportError::Unreachable(why) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(why)))
            }
            TransportError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            TransportError::Remote(why) => {
                RPCError::Network(NetworkError::new(&AnyError::error(why)))
            }
        }
    }

    fn decode_error(e: CodecError) -> RPCError<ReplicaId, ReplicaNode, RaftError<ReplicaId>> {
        RPCError::Network(NetworkError::new(&AnyError::error(format!(
            "malformed reply from a peer: {e}"
        ))))
    }

    async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: &Snapshot<TypeConfig>,
    ) -> Result<Vote, TransportError> {
        let engine_dir = snapshot.snapshot.engine_dir();
        let files = {
            let dir = engine_dir.clone();
            tokio::task::spawn_blocking(move || list_files(&dir))
                .await
                .map_err(|e| TransportError::Remote(format!("listing the snapshot failed: {e}")))?
                .map_err(|e| {
                    TransportError::Remote(format!("cannot list the snapshot's files: {e}"))
                })?
        };
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        let snapshot_id = snapshot.meta.snapshot_id.clone();
        tracing::info!(target = self.target, snapshot = %snapshot_id, files = files.len(), bytes = total, "sending a snapshot");
        let record = {
            let dir = snapshot.snapshot.path().to_path_buf();
            tokio::task::spawn_blocking(move || crate::state_machine::read_record_file(&dir))
                .await
                .map_err(|e| TransportError::Remote(format!("reading the snapshot failed: {e}")))?
                .map_err(|e| {
                    TransportError::Remote(format!("cannot read the snapshot's group record: {e}"))
                })?
        };
        let begin = SnapshotBegin {
            vote,
            meta: snapshot.meta.clone(),
            files: files.clone(),
            record,
        };
        self.call(
            RpcKind::SnapshotBegin,
            to_bytes(&begin),
            SNAPSHOT_CHUNK_TIMEOUT,
        )
        .await?;
        for (n, (path, size)) in files.iter().enumerate() {
            let mut offset = 0u64;
            while offset < *size {
                let len = (*size - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let file_path = engine_dir.join(path);
                let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let file = std::fs::File::open(&file_path)?;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await
                .map_err(|e| TransportError::Remote(format!("reading the snapshot failed: {e}")))?
                .map_err(|e| {
                    TransportError::Remote(format!("cannot read snapshot file {path}: {e}"))
                })?;
                let chunk = SnapshotChunk {
                    snapshot_id: snapshot_id.clone(),
                    file: n as u32,
                    offset,
                    crc: crc32c::crc32c(&data),
                    data: Bytes::from(data),
                };
                self.call(
                    RpcKind::SnapshotChunk,
                    to_bytes(&chunk),
                    SNAPSHOT_CHUNK_TIMEOUT,
                )
                .await?;
                offset += len as u64;
                self.counters
                    .snapshot_bytes_sent
                    .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let finish = SnapshotFinish { snapshot_id, vote };
        // Installing hard-links the files and reopens the engine: allow it time.
        let reply = self
            .call(
                RpcKind::SnapshotFinish,
                to_bytes(&finish),
                SNAPSHOT_CHUNK_TIMEOUT * 4,
            )
            .await?;
        let their_vote: Vote = from_bytes(reply)
            .map_err(|e| TransportError::Remote(format!("malformed reply to a snapshot: {e}")))?;
        self.counters
            .snapshots_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(their_vote)
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<ReplicaId>> {
        let vote = rpc.vote;
        let sent_at = Instant::now();
        if rpc.entries.is_empty()
            && self
                .last_ack
                .is_some_and(|ack| ack.covers(&vote, rpc.prev_log_id, sent_at))
        {
            self.counters
                .commit_updates_deferred
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(AppendEntriesResponse::Success);
        }
        let leaves_log_at = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let reply = self
            .call(RpcKind::Append, to_bytes(&rpc), option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, e))?;
        let response: AppendEntriesResponse<ReplicaId> =
            from_bytes(reply).map_err(Self::decode_error)?;
        self.last_ack = None;
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.lease.record_ack(self.target, vote, sent_at);
        }
        if matches!(response, AppendEntriesResponse::Success) {
            self.last_ack = Some(Ack {
                vote,
                log_at: leaves_log_at,
                sent_at,
            });
        }
        Ok(response)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<ReplicaId>> {
        let reply = self
            .call(RpcKind::Vote, to_bytes(&rpc), option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        from_bytes(reply).map_err(Self::decode_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<ReplicaId>, StreamingError<TypeConfig, Fatal<ReplicaId>>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.stream_snapshot(vote, &snapshot) => match sent {
                Ok(vote) => Ok(SnapshotResponse::new(vote)),
                Err(TransportError::Unreachable(why)) => {
                    Err(StreamingError::Unreachable(Unreachable::new(&AnyError::error(why))))
                }
                Err(TransportError::Timeout(timeout)) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.me,
                    target: self.target,
                    timeout,
                })),
                Err(TransportError::Remote(why)) => {
                    tracing::warn!(target = self.target, error = %why, "sending a snapshot failed");
                    Err(StreamingError::Network(NetworkError::new(&AnyError::error(why))))
                }
            },
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A peer that is down is tried again every 200 ms, so a restarted replica rejoins soon.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_paths_must_stay_inside_the_snapshot() {
        assert!(safe_relative_path("tables/000001.sst").is_some());
        assert!(safe_relative_path("CURRENT").is_some());
        assert!(safe_relative_path("").is_none());
        assert!(safe_relative_path("/etc/passwd").is_none());
        assert!(safe_relative_path("../x").is_none());
        assert!(safe_relative_path("tables/../../x").is_none());
        assert!(safe_relative_path("./x").is_none());
    }

    proptest::proptest! {
        #[test]
        fn snapshot_messages_never_panic_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let b = Bytes::from(bytes);
            let _ = from_bytes::<SnapshotBegin>(b.clone());
            let _ = from_bytes::<SnapshotChunk>(b.clone());
            let _ = from_bytes::<SnapshotFinish>(b);
        }
    }

    #[test]
    fn only_a_fresh_acknowledgement_of_the_same_log_under_the_same_vote_answers_a_commit_update() {
        let vote = Vote::new_committed(4, 1);
        let at = Some(LogId::new(openraft::CommittedLeaderId::new(4, 1), 17));
        let t0 = Instant::now();
        let ack = Ack {
            vote,
            log_at: at,
            sent_at: t0,
        };
        let soon = t0 + DEFER_COMMIT_UPDATE / 2;
        assert!(ack.covers(&vote, at, soon));
        // Stale: a heartbeat after the window is sent.
        assert!(!ack.covers(&vote, at, t0 + DEFER_COMMIT_UPDATE));
        // Another vote (a new term, or a new leader): sent.
        assert!(!ack.covers(&Vote::new_committed(5, 1), at, soon));
        assert!(!ack.covers(&Vote::new_committed(4, 2), at, soon));
        // The request expects the log elsewhere (entries in between, or a conflict): sent.
        let other = Some(LogId::new(openraft::CommittedLeaderId::new(4, 1), 18));
        assert!(!ack.covers(&vote, other, soon));
        assert!(!ack.covers(&vote, None, soon));
    }

    #[test]
    fn snapshot_messages_round_trip() {
        let chunk = SnapshotChunk {
            snapshot_id: "1-5-99".into(),
            file: 2,
            offset: 4096,
            data: Bytes::from_static(b"table bytes"),
            crc: crc32c::crc32c(b"table bytes"),
        };
        assert_eq!(from_bytes::<SnapshotChunk>(to_bytes(&chunk)), Ok(chunk));
        let finish = SnapshotFinish {
            snapshot_id: "1-5-99".into(),
            vote: Vote::new_committed(3, 1),
        };
        assert_eq!(from_bytes::<SnapshotFinish>(to_bytes(&finish)), Ok(finish));
    }
}
