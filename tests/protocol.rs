//! The shard's internal binary protocol spoken over a real socket: handshake, pipelined
//! requests answered by id, and what happens to rule-breaking or garbage input.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use limedb_proto::{decode, ErrorCode, Frame, Message, Request, Response, DEFAULT_MAX_FRAME_BYTES};
use limedb_testkit::{start_shard, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_limedb"))
}

/// Reads frames until `n` have arrived or the peer closes; returns them and whether it closed.
async fn read_frames(stream: &mut TcpStream, n: usize) -> (Vec<Frame>, bool) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        while let Some(frame) = decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).expect("valid frames") {
            frames.push(frame);
        }
        if frames.len() >= n {
            return (frames, false);
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
            .await
            .expect("the shard answers or closes")
            .expect("read");
        if read == 0 {
            return (frames, true);
        }
    }
}

fn send(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out);
    }
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_by_id_after_hello() {
    let dir = temp_dir();
    let shard = start_shard(bin(), dir.path(), 7, "0", &[]);
    let mut s = TcpStream::connect(&shard.ready["internal"])
        .await
        .expect("connect");
    let mut frames = vec![Frame::request(1, Request::Hello)];
    for i in 0..100u64 {
        frames.push(Frame::request(
            1000 + i,
            Request::Set {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(format!("v{i}")),
                ttl_ms: None,
            },
        ));
    }
    frames.push(Frame::request(5000, Request::Ping));
    s.write_all(&send(&frames)).await.expect("write");
    let (answers, closed) = read_frames(&mut s, frames.len()).await;
    assert!(!closed);
    assert_eq!(answers.len(), frames.len());
    for a in &answers {
        match (&a.request_id, &a.message) {
            (1, Message::Response(Response::HelloOk { shard_id, .. })) => assert_eq!(*shard_id, 7),
            (5000, Message::Response(Response::Pong)) => {}
            (id, Message::Response(Response::Done)) if (1000..1100).contains(id) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let gets: Vec<Frame> = (0..100u64)
        .map(|i| {
            Frame::request(
                2000 + i,
                Request::Get {
                    key: Bytes::from(format!("k{i}")),
                },
            )
        })
        .collect();
    s.write_all(&send(&gets)).await.expect("write");
    let (answers, _) = read_frames(&mut s, gets.len()).await;
    for a in answers {
        let i = a.request_id - 2000;
        assert_eq!(
            a.message,
            Message::Response(Response::Value(Some(Bytes::from(format!("v{i}")))))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_hello_and_garbage_are_refused_and_the_connection_closed() {
    let dir = temp_dir();
    let shard = start_shard(bin(), dir.path(), 1, "0", &[]);
    let addr = shard.ready["internal"].clone();

    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let get = Frame::request(
        9,
        Request::Get {
            key: Bytes::from("k"),
        },
    );
    s.write_all(&send(&[get])).await.expect("write");
    let (answers, closed) = read_frames(&mut s, 2).await;
    assert!(closed, "closed after refusing");
    match &answers[..] {
        [Frame {
            request_id: 9,
            message: Message::Response(Response::Error { code, message }),
            ..
        }] => {
            assert_eq!(*code, ErrorCode::BadRequest);
            assert!(message.contains("Hello"), "{message}");
        }
        other => panic!("unexpected answers {other:?}"),
    }

    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (answers, closed) = read_frames(&mut s, 2).await;
    assert!(closed, "closed after garbage");
    match &answers[..] {
        [Frame {
            request_id: 0,
            message: Message::Response(Response::Error { code, .. }),
            ..
        }] => {
            assert_eq!(*code, ErrorCode::BadRequest)
        }
        other => panic!("unexpected answers {other:?}"),
    }

    // The shard is unharmed: a well-behaved connection still works.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(&send(&[
        Frame::request(1, Request::Hello),
        Frame::request(2, Request::Ping),
    ]))
    .await
    .expect("write");
    let (answers, _) = read_frames(&mut s, 2).await;
    assert_eq!(answers.len(), 2);
}

/// Decodes a `Reply`'s RESP3 value.
fn reply_value(frame: &Frame) -> limedb_resp::Value {
    match &frame.message {
        Message::Response(Response::Reply(bytes)) => {
            let mut buf = BytesMut::from(&bytes[..]);
            limedb_resp::decode_value(&mut buf, &limedb_resp::ValueLimits::default())
                .expect("valid RESP3")
                .expect("a whole value")
        }
        other => panic!("expected a Reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_transactions_run_on_the_shard() {
    let dir = temp_dir();
    let shard = start_shard(bin(), dir.path(), 1, "0", &[]);
    let mut s = TcpStream::connect(&shard.ready["internal"])
        .await
        .expect("connect");
    let args = |a: &[&str]| {
        a.iter()
            .map(|s| Bytes::from(s.to_string()))
            .collect::<Vec<_>>()
    };
    let frames = vec![
        Frame::request(1, Request::Hello),
        Frame::request(
            2,
            Request::Command {
                args: args(&["INCRBY", "n", "5"]),
            },
        ),
        Frame::request(
            3,
            Request::Command {
                args: args(&["NOSUCH", "x"]),
            },
        ),
    ];
    s.write_all(&send(&frames)).await.expect("write");
    let (answers, _) = read_frames(&mut s, 3).await;
    let by_id = |id: u64| {
        answers
            .iter()
            .find(|f| f.request_id == id)
            .expect("answered")
    };
    assert_eq!(reply_value(by_id(2)), limedb_resp::Value::Integer(5));
    assert_eq!(
        reply_value(by_id(3)),
        limedb_resp::Value::Error(
            "ERR unknown command 'NOSUCH', with args beginning with: 'x' ".into()
        )
    );
    // A transaction with a stale watch runs nothing; commands that would wait on a lock the
    // transaction holds are refused instead of hanging it.
    let frames = vec![
        Frame::request(
            4,
            Request::Transaction {
                commands: vec![args(&["INCR", "n"])],
                watched: vec![(Bytes::from("n"), u64::MAX)],
            },
        ),
        Frame::request(
            5,
            Request::Transaction {
                commands: vec![
                    args(&["INCR", "n"]),
                    args(&["LIMEDB.DUMP", "n"]),
                    args(&["FLUSHDB"]),
                ],
                watched: Vec::new(),
            },
        ),
    ];
    s.write_all(&send(&frames)).await.expect("write");
    let (answers, _) = read_frames(&mut s, 2).await;
    let by_id = |id: u64| {
        answers
            .iter()
            .find(|f| f.request_id == id)
            .expect("answered")
    };
    assert_eq!(reply_value(by_id(4)), limedb_resp::Value::Null);
    match reply_value(by_id(5)) {
        limedb_resp::Value::Array(items) => {
            assert_eq!(items[0], limedb_resp::Value::Integer(6));
            assert!(items[1].is_error() && items[2].is_error(), "{items:?}");
        }
        other => panic!("expected an array, got {other:?}"),
    }
}
