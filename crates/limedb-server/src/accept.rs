//! The accept side shared by every listener: a cap on open connections, a stop on shutdown,
//! and the drain of the connections still open after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// Hands out accepted connections, at most `max_connections` open at once.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    name: &'static str,
}

impl Acceptor {
    /// Wraps a bound listener; `name` labels its log lines.
    pub fn new(listener: TcpListener, max_connections: usize, name: &'static str) -> Self {
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            name,
        }
    }

    /// The next connection (with `TCP_NODELAY` set) and the permit it holds while open, or
    /// `None` once `shutdown` fires. While the cap is reached it waits for a connection to
    /// close before accepting more; accept errors (such as running out of file descriptors)
    /// are logged and retried after a short pause instead of spinning.
    pub async fn next(
        &self,
        shutdown: &mut Shutdown,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => permit.ok()?,
                () = shutdown.wait() => return None,
            };
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((stream, peer, permit));
                    }
                    Err(e) => {
                        tracing::warn!(listener = self.name, error = %e, "accept failed");
                        drop(permit);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = shutdown.wait() => return None,
            }
        }
    }
}

/// After a listener stopped accepting: waits up to `timeout` for its open connections to finish
/// (they answer what they have read and close), then aborts the stragglers. `name` labels the
/// log line.
pub async fn drain(mut connections: JoinSet<()>, timeout: Duration, name: &'static str) {
    let drained = tokio::time::timeout(timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            "connections still busy after the drain timeout; closing them"
        );
        connections.abort_all();
    }
}
