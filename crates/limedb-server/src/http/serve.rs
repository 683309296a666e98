//! The HTTP accept loop: a bound listener, a connection cap, graceful shutdown.
//!
//! Each accepted connection is served by hyper's HTTP/1.1 implementation with keep-alive, a
//! [`HEADER_READ_TIMEOUT`] for slow clients, and half-closes allowed (a request followed by
//! the end of the client's input is answered). At
//! shutdown the loop stops accepting, lets every open connection finish the request it is
//! answering, and gives up on stragglers after [`DRAIN_TIMEOUT`].

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;

use crate::accept::Acceptor;
use crate::shutdown::Shutdown;

/// How long shutdown waits for open connections to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A client gets this long to send a request's headers; a stalled one is disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    max_connections: usize,
    open_connections: Gauge,
    mut shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = Acceptor::new(listener, max_connections, "http");
    while let Some((stream, _peer, permit)) = acceptor.next(&mut shutdown).await {
        let service = TowerToHyperService::new(router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // A client may send its request and shut down its side before reading the answer
            // (`printf ... | nc -N`, some HTTP/1.0 clients and proxies): answer it in full
            // rather than drop the request at the end of its input.
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let gauge = open_connections.clone();
        gauge.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            gauge.dec();
            drop(permit);
        });
    }
    drop(acceptor);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http connections still open after the drain timeout; closing them");
    }
}
