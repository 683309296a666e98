//! The HTTP ceiling: the fastest server this machine's HTTP stack (tokio +
//! hyper 1, HTTP/1.1 keep-alive, `TCP_NODELAY`) can be, against which
//! LimeDB's coordinator and shards are compared by `bench/http.sh`.
//!
//! Every request — any method, any path — has its body drained (LimeDB must
//! read its bodies too) and is answered `200 text/plain` with the fixed
//! 10-byte body `0123456789`.
//!
//! ```text
//! cargo run --release -p limedb-bench --example http_ceiling -- --listen 127.0.0.1:0
//! LIMEDB_READY role=ceiling http=127.0.0.1:41234
//! ```
//!
//! Runs until SIGTERM or SIGINT, then exits with status 0.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const BODY: &[u8] = b"0123456789";

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn parse_listen() -> Result<SocketAddr, String> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_owned();
        } else if arg == "-h" || arg == "--help" {
            println!("usage: http_ceiling [--listen ADDR]   (default 127.0.0.1:0)");
            std::process::exit(0);
        } else {
            return Err(format!(
                "unknown argument {arg:?} (usage: http_ceiling [--listen ADDR])"
            ));
        }
    }
    listen
        .parse()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = parse_listen()?;
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "LIMEDB_READY role=ceiling http={bound}")?;
    stdout.flush()?;
    drop(stdout);

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: keep serving the others.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    Ok(())
}
