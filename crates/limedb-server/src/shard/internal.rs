//! The shard's side of the internal binary protocol (see `docs/protocol.md`).
//!
//! One task per connection reads frames; each request runs in its own task, so a slow request
//! never holds up the ones behind it and answers go back in completion order, matched by request
//! id. A writer task coalesces finished answers into as few socket writes as it can. At most
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] requests run per connection; past that the reader stops
//! reading, which pushes back on the coordinator through TCP.

use std::sync::Arc;

use limedb_proto::{ErrorCode, Frame, Message, Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::ShardNode;
use crate::accept::{self, Acceptor};
use crate::http::serve::DRAIN_TIMEOUT;
use crate::shutdown::Shutdown;
use crate::wire::{write_coalesced, FrameReader, ReadError};

/// Requests one connection may have running at once.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// Accepts internal-protocol connections until `shutdown`, then drains them.
pub async fn serve(
    listener: TcpListener,
    node: ShardNode,
    max_connections: usize,
    open_connections: Gauge,
    mut shutdown: Shutdown,
) {
    let acceptor = Acceptor::new(listener, max_connections, "internal");
    let mut connections = JoinSet::new();
    while let Some((stream, peer, permit)) = acceptor.next(&mut shutdown).await {
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let node = node.clone();
        let gauge = open_connections.clone();
        let shutdown = shutdown.clone();
        gauge.inc();
        connections.spawn(async move {
            if let Err(e) = serve_connection(stream, node, shutdown).await {
                tracing::debug!(%peer, error = %e, "internal connection closed with an error");
            }
            gauge.dec();
            drop(permit);
        });
    }
    drop(acceptor);
    accept::drain(connections, DRAIN_TIMEOUT, "internal").await;
}

/// Serves one connection until the peer closes it, a malformed frame arrives, or shutdown.
async fn serve_connection(
    stream: TcpStream,
    node: ShardNode,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let (reader, writer) = stream.into_split();
    let mut frames = FrameReader::new(reader, crate::config::MAX_INTERNAL_FRAME_BYTES);
    let (answers, answers_rx) = mpsc::channel::<Frame>(MAX_IN_FLIGHT_PER_CONNECTION);
    let writer_task = tokio::spawn(write_answers(writer, answers_rx));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let refuse = |request_id, message: String| {
        let answers = answers.clone();
        async move {
            let error = Response::Error {
                code: ErrorCode::BadRequest,
                message,
            };
            let _ = answers.send(Frame::response(request_id, error)).await;
        }
    };
    let mut result = Ok(());
    let mut greeted = false;
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = shutdown.wait() => break,
        };
        let (request_id, request, ring_epoch) = match frame {
            Ok(Some(Frame {
                request_id,
                message: Message::Request(request),
                ring_epoch,
            })) => (request_id, request, ring_epoch),
            Ok(Some(Frame { request_id, .. })) => {
                let why = "a shard accepts only requests on this connection";
                refuse(request_id, why.into()).await;
                break;
            }
            Ok(None) => break,
            Err(ReadError::Malformed(e)) => {
                tracing::warn!(error = %e, "malformed internal frame; closing the connection");
                // Request id 0: the stream is out of step, so no request can be named.
                refuse(0, format!("malformed frame: {e}")).await;
                break;
            }
            Err(ReadError::Io(e)) => {
                result = Err(e);
                break;
            }
        };
        if matches!(request, Request::Hello) {
            greeted = true;
        } else if !greeted {
            let why = "the first request on a connection must be Hello";
            refuse(request_id, why.into()).await;
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let node = node.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let response = node.handle(request, ring_epoch).await;
            // The writer is gone only if the connection broke; nothing to answer.
            let _ = answers.send(Frame::response(request_id, response)).await;
            drop(permit);
        });
    }
    // Requests already running finish and are answered; then the writer flushes and closes.
    drop(answers);
    match writer_task.await {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Writes answers as they complete, batching whatever is ready into one write.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut answers: mpsc::Receiver<Frame>,
) -> std::io::Result<()> {
    write_coalesced(&mut writer, &mut answers, |frame, out| frame.encode(out)).await?;
    writer.shutdown().await
}
