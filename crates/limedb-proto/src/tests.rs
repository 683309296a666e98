//! Unit and property tests for the codec: round trips, incremental decoding, pinned byte images
//! and pinned rejections of malformed input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use crate::{
    decode, kind, ErrorCode, Frame, KeyEntry, Message, ProtoError, Request, Response,
    DEFAULT_MAX_FRAME_BYTES, HEADER_LEN, PROTOCOL_VERSION,
};

const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn entry(key: &'static [u8], value: &'static [u8], value_len: u64) -> KeyEntry {
    KeyEntry {
        key: b(key),
        value: b(value),
        value_len,
    }
}

/// One frame of every message variant, plus edge cases (empty fields, absent options).
fn samples() -> Vec<Frame> {
    let mut out = vec![
        Frame::request(0, Request::Hello),
        Frame::request(1, Request::Ping),
        Frame::request(2, Request::Get { key: b(b"user:1") }),
        Frame::request(3, Request::Get { key: Bytes::new() }),
        Frame::request(
            4,
            Request::Set {
                key: b(b"k"),
                value: b(b"value"),
                ttl_ms: None,
            },
        ),
        Frame::request(
            5,
            Request::Set {
                key: b(b"k"),
                value: Bytes::new(),
                ttl_ms: Some(u64::MAX),
            },
        ),
        Frame::request(6, Request::Delete { key: b(b"gone") }),
        Frame::request(
            7,
            Request::KeysPage {
                offset: 1 << 40,
                limit: 1000,
                value_prefix_bytes: 1024,
            },
        ),
        Frame::response(
            u64::MAX,
            Response::HelloOk {
                shard_id: 3,
                protocol_version: PROTOCOL_VERSION,
                server: "limedb 0.1.0 ✓".to_owned(),
            },
        ),
        Frame::response(1, Response::Pong),
        Frame::response(2, Response::Value(Some(b(b"v\0\xff")))),
        Frame::response(3, Response::Value(None)),
        Frame::response(4, Response::Done),
        Frame::response(5, Response::Deleted(true)),
        Frame::response(6, Response::Deleted(false)),
        Frame::response(
            7,
            Response::KeysPage {
                total: 0,
                entries: vec![],
            },
        ),
        Frame::response(
            8,
            Response::KeysPage {
                total: 3,
                entries: vec![
                    entry(b"a", b"1", 1),
                    entry(b"", b"", 0),
                    entry(b"c", b"33", 1 << 20),
                ],
            },
        ),
    ];
    out.extend([
        Frame::request(
            10,
            Request::Raft {
                shard_id: 3,
                target: 2,
                rpc: 1,
                payload: b(b"\x01\x02entries"),
            },
        ),
        Frame::request(
            11,
            Request::Raft {
                shard_id: u32::MAX,
                target: u64::MAX,
                rpc: 0,
                payload: Bytes::new(),
            },
        ),
        Frame::response(12, Response::RaftReply(b(b"vote"))),
        Frame::response(
            13,
            Response::NotLeader {
                leader_id: Some(2),
                leader_url: Some("http://10.0.0.2:7001".into()),
            },
        ),
        Frame::response(
            14,
            Response::NotLeader {
                leader_id: None,
                leader_url: None,
            },
        ),
        Frame::routed(15, 42, Request::Get { key: b(b"routed") }),
        Frame::routed(16, u64::MAX, Request::Ping),
        Frame::response(17, Response::WrongShard { ring_epoch: 43 }),
    ]);
    for code in (0..=10).chain([u16::MAX]).map(ErrorCode::from_u16) {
        out.push(Frame::response(
            9,
            Response::Error {
                code,
                message: format!("failed with {code}"),
            },
        ));
    }
    out
}

fn encode(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        f.encode(&mut buf);
    }
    buf
}

/// Raw frame with an arbitrary header and body, for rejection tests.
fn raw(version: u8, kind: u8, flags: u16, request_id: u64, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32_le(u32::try_from(HEADER_LEN - 4 + body.len()).expect("small test body"));
    buf.put_u8(version);
    buf.put_u8(kind);
    buf.put_u16_le(flags);
    buf.put_u64_le(request_id);
    buf.put_slice(body);
    buf
}

fn decode_err(mut buf: BytesMut) -> ProtoError {
    match decode(&mut buf, MAX) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

/// Decodes every frame in `buf`, which must hold only whole frames.
fn decode_all(buf: &mut BytesMut) -> Result<Vec<Frame>, ProtoError> {
    let mut out = Vec::new();
    while let Some(frame) = decode(buf, MAX)? {
        out.push(frame);
    }
    Ok(out)
}

/// Feeds `wire` one byte at a time, decoding after each byte; checks `Ok(None)` never consumes.
fn feed_byte_by_byte(wire: &[u8]) -> Result<Vec<Frame>, ProtoError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &byte in wire {
        buf.put_u8(byte);
        loop {
            let before = buf.len();
            match decode(&mut buf, MAX)? {
                Some(frame) => out.push(frame),
                None => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(out)
}

// ---- round trips -------------------------------------------------------------------------

#[test]
fn every_variant_round_trips() -> Result<(), ProtoError> {
    for frame in samples() {
        let mut buf = encode(std::slice::from_ref(&frame));
        assert_eq!(buf.len(), frame.encoded_len(), "encoded_len of {frame:?}");
        let decoded = decode(&mut buf, MAX)?;
        assert_eq!(decoded.as_ref(), Some(&frame));
        assert!(buf.is_empty(), "decode left bytes for {frame:?}");
    }
    Ok(())
}

#[test]
fn concatenated_frames_decode_in_order() -> Result<(), ProtoError> {
    let frames = samples();
    let mut buf = encode(&frames);
    assert_eq!(decode_all(&mut buf)?, frames);
    assert!(buf.is_empty());
    Ok(())
}

#[test]
fn concatenated_frames_fed_byte_by_byte() -> Result<(), ProtoError> {
    let frames = samples();
    let wire = encode(&frames);
    assert_eq!(feed_byte_by_byte(&wire)?, frames);
    Ok(())
}

#[test]
fn encode_appends_after_existing_bytes() -> Result<(), ProtoError> {
    let mut buf = BytesMut::from(&b"junk"[..]);
    Frame::request(1, Request::Ping).encode(&mut buf);
    assert_eq!(&buf[..4], b"junk");
    let mut rest = buf.split_off(4);
    assert_eq!(
        decode(&mut rest, MAX)?,
        Some(Frame::request(1, Request::Ping))
    );
    Ok(())
}

#[test]
fn keys_and_values_are_zero_copy() -> Result<(), ProtoError> {
    let frame = Frame::request(
        1,
        Request::Set {
            key: b(b"some key"),
            value: b(b"some value"),
            ttl_ms: None,
        },
    );
    let mut buf = encode(&[frame]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Frame {
        message: Message::Request(Request::Set { key, value, .. }),
        ..
    }) = decode(&mut buf, MAX)?
    else {
        panic!("expected a Set");
    };
    assert!(range.contains(&(key.as_ptr() as usize)), "key was copied");
    assert!(
        range.contains(&(value.as_ptr() as usize)),
        "value was copied"
    );
    Ok(())
}

#[test]
fn unknown_error_code_is_kept_not_rejected() -> Result<(), ProtoError> {
    let mut body = vec![0x39, 0x05]; // code 0x0539 = 1337
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"hi");
    let mut buf = raw(1, kind::ERROR, 0, 9, &body);
    let decoded = decode(&mut buf, MAX)?;
    assert_eq!(
        decoded,
        Some(Frame::response(
            9,
            Response::Error {
                code: ErrorCode::Unknown(1337),
                message: "hi".to_owned(),
            }
        ))
    );
    Ok(())
}

#[test]
fn error_codes_map_both_ways() {
    for n in 0..=20u16 {
        assert_eq!(ErrorCode::from_u16(n).as_u16(), n);
    }
    assert_eq!(ErrorCode::from_u16(1), ErrorCode::Internal);
    assert_eq!(ErrorCode::from_u16(8), ErrorCode::Unsupported);
    assert_eq!(ErrorCode::from_u16(9), ErrorCode::OutcomeUnknown);
    assert_eq!(ErrorCode::from_u16(10), ErrorCode::Unknown(10));
    assert_eq!(ErrorCode::ShuttingDown.to_string(), "shutting_down");
    assert_eq!(ErrorCode::Unknown(42).to_string(), "unknown(42)");
}

#[test]
fn kind_names() {
    let names: Vec<_> = samples()
        .iter()
        .take(8)
        .map(|f| f.message.kind_name())
        .collect();
    assert_eq!(
        names,
        [
            "hello",
            "ping",
            "get",
            "get",
            "set",
            "set",
            "delete",
            "keys_page"
        ]
    );
    assert_eq!(Response::Value(None).kind_name(), "value");
}

#[test]
fn request_and_response_kinds_are_in_their_ranges() {
    for frame in samples() {
        let k = frame.message.kind();
        assert!(kind::is_known(k));
        assert_eq!(
            kind::is_request(k),
            matches!(frame.message, Message::Request(_)),
            "kind {k:#04x}"
        );
    }
}

// ---- pinned byte images (must match docs/protocol.md) ------------------------------------

#[test]
fn worked_example_get_a_request_id_7() -> Result<(), ProtoError> {
    let frame = Frame::request(7, Request::Get { key: b(b"a") });
    let expected: &[u8] = &[
        0x11, 0x00, 0x00, 0x00, // frame_len = 17
        0x01, // version
        0x03, // kind: Get
        0x00, 0x00, // flags
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request_id = 7
        0x01, 0x00, 0x00, 0x00, // key length = 1
        0x61, // "a"
    ];
    let mut buf = encode(std::slice::from_ref(&frame));
    assert_eq!(&buf[..], expected);
    assert_eq!(decode(&mut buf, MAX)?, Some(frame));
    Ok(())
}

#[test]
fn worked_example_value_reply() -> Result<(), ProtoError> {
    let frame = Frame::response(7, Response::Value(Some(b(b"xy"))));
    let expected: &[u8] = &[
        0x13, 0x00, 0x00, 0x00, // frame_len = 19
        0x01, 0x83, 0x00, 0x00, // version, kind Value, flags
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // request_id = 7
        0x01, // present
        0x02, 0x00, 0x00, 0x00, 0x78, 0x79, // "xy"
    ];
    let mut buf = encode(std::slice::from_ref(&frame));
    assert_eq!(&buf[..], expected);
    assert_eq!(decode(&mut buf, MAX)?, Some(frame));
    Ok(())
}

// ---- incomplete input --------------------------------------------------------------------

#[test]
fn every_prefix_is_incomplete_and_consumes_nothing() -> Result<(), ProtoError> {
    let mut buf = BytesMut::new();
    for frame in samples() {
        let one = encode(std::slice::from_ref(&frame));
        for len in 0..one.len() {
            buf.clear();
            buf.extend_from_slice(&one[..len]);
            assert_eq!(decode(&mut buf, MAX)?, None, "prefix {len} of {frame:?}");
            assert_eq!(buf.len(), len, "prefix {len} of {frame:?} consumed bytes");
        }
    }
    Ok(())
}

// ---- pinned rejections -------------------------------------------------------------------

#[test]
fn rejects_bad_version() {
    assert_eq!(
        decode_err(raw(0, kind::PING, 0, 1, &[])),
        ProtoError::UnsupportedVersion(0)
    );
    assert_eq!(
        decode_err(raw(2, kind::PING, 0, 1, &[])),
        ProtoError::UnsupportedVersion(2)
    );
}

#[test]
fn rejects_unknown_and_reserved_kinds() {
    for k in [
        0x00, 0x0A, 0x10, 0x11, 0x12, 0x21, 0x7F, 0x80, 0x88, 0x90, 0xA1, 0xFC,
    ] {
        assert_eq!(decode_err(raw(1, k, 0, 1, &[])), ProtoError::UnknownKind(k));
    }
}

#[test]
fn rejects_unknown_flags_and_an_epoch_where_none_belongs() {
    for flags in [2, 3, 0x8000] {
        assert_eq!(
            decode_err(raw(1, kind::PING, flags, 1, &[0; 8])),
            ProtoError::NonZeroFlags(flags)
        );
    }
    // A ring epoch travels on requests only.
    assert_eq!(
        decode_err(raw(1, kind::PONG, 1, 1, &[0; 8])),
        ProtoError::NonZeroFlags(1)
    );
    // The flag promises 8 bytes the frame does not have.
    assert_eq!(
        decode_err(raw(1, kind::PING, 1, 1, &[0; 7])),
        ProtoError::FrameTooShort {
            len: HEADER_LEN - 4 + 7,
            min: HEADER_LEN - 4 + 8
        }
    );
    let mut ok = raw(1, kind::PING, 1, 9, &7u64.to_le_bytes());
    assert_eq!(
        decode(&mut ok, MAX),
        Ok(Some(Frame::routed(9, 7, Request::Ping)))
    );
}

#[test]
fn header_is_checked_before_the_body_arrives() {
    // A Get announcing a 100-byte body, with only the 16 header bytes received.
    let mut buf = raw(2, kind::GET, 0, 1, &[0; 100]);
    buf.truncate(HEADER_LEN);
    assert_eq!(decode_err(buf), ProtoError::UnsupportedVersion(2));
}

#[test]
fn rejects_oversized_frame_from_the_length_alone() {
    let mut buf = BytesMut::new();
    buf.put_u32_le(u32::MAX);
    assert!(matches!(
        decode(&mut buf, MAX),
        Err(ProtoError::FrameTooLarge { len, max }) if len == u32::MAX as usize && max == MAX
    ));

    // With a small limit: exactly the limit is fine, one more is not.
    let frame = Frame::request(1, Request::Get { key: b(b"abc") });
    let frame_len = frame.encoded_len() - 4;
    let mut ok = encode(std::slice::from_ref(&frame));
    assert_eq!(decode(&mut ok, frame_len), Ok(Some(frame.clone())));
    let mut too_big = encode(std::slice::from_ref(&frame));
    too_big.truncate(4);
    assert_eq!(
        decode(&mut too_big, frame_len - 1),
        Err(ProtoError::FrameTooLarge {
            len: frame_len,
            max: frame_len - 1
        })
    );
}

#[test]
fn rejects_frame_len_shorter_than_header() {
    for len in [0u32, 1, 11] {
        let mut buf = BytesMut::new();
        buf.put_u32_le(len);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(ProtoError::FrameTooShort {
                len: len as usize,
                min: 12
            })
        );
    }
}

#[test]
fn rejects_trailing_bytes() {
    assert_eq!(
        decode_err(raw(1, kind::PING, 0, 1, &[0])),
        ProtoError::TrailingBytes {
            kind: kind::PING,
            extra: 1
        }
    );
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"a..");
    assert_eq!(
        decode_err(raw(1, kind::GET, 0, 1, &body)),
        ProtoError::TrailingBytes {
            kind: kind::GET,
            extra: 2
        }
    );
}

#[test]
fn rejects_bad_presence_tags() {
    // Set with ttl tag 2.
    let mut set = Vec::new();
    set.extend_from_slice(&1u32.to_le_bytes());
    set.push(b'k');
    set.extend_from_slice(&0u32.to_le_bytes());
    set.push(2);
    assert_eq!(
        decode_err(raw(1, kind::SET, 0, 1, &set)),
        ProtoError::InvalidTag {
            what: "ttl_ms presence tag",
            tag: 2
        }
    );
    assert_eq!(
        decode_err(raw(1, kind::VALUE, 0, 1, &[0xFF])),
        ProtoError::InvalidTag {
            what: "value presence tag",
            tag: 0xFF
        }
    );
    assert_eq!(
        decode_err(raw(1, kind::DELETED, 0, 1, &[7])),
        ProtoError::InvalidTag {
            what: "deleted",
            tag: 7
        }
    );
}

#[test]
fn rejects_invalid_utf8() {
    let mut hello_ok = 3u32.to_le_bytes().to_vec();
    hello_ok.push(1);
    hello_ok.extend_from_slice(&2u32.to_le_bytes());
    hello_ok.extend_from_slice(&[0xC3, 0x28]);
    assert_eq!(
        decode_err(raw(1, kind::HELLO_OK, 0, 1, &hello_ok)),
        ProtoError::InvalidUtf8 { what: "server" }
    );

    let mut error = 1u16.to_le_bytes().to_vec();
    error.extend_from_slice(&1u32.to_le_bytes());
    error.push(0xFF);
    assert_eq!(
        decode_err(raw(1, kind::ERROR, 0, 1, &error)),
        ProtoError::InvalidUtf8 { what: "message" }
    );
}

#[test]
fn rejects_entry_count_larger_than_the_body() {
    let mut body = 5u64.to_le_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&[0; 31]); // room for one entry (at least 16 bytes), not two
    assert_eq!(
        decode_err(raw(1, kind::KEYS_PAGE_OK, 0, 1, &body)),
        ProtoError::CountTooLarge {
            what: "entries",
            count: u32::MAX,
            remaining: 31
        }
    );
    let mut body = 5u64.to_le_bytes().to_vec();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0; 31]);
    assert_eq!(
        decode_err(raw(1, kind::KEYS_PAGE_OK, 0, 1, &body)),
        ProtoError::CountTooLarge {
            what: "entries",
            count: 2,
            remaining: 31
        }
    );
}

#[test]
fn rejects_field_running_past_the_frame() {
    // A Get whose key claims 10 bytes but the frame ends after 3.
    let mut body = 10u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"abc");
    assert_eq!(
        decode_err(raw(1, kind::GET, 0, 1, &body)),
        ProtoError::Truncated { what: "key" }
    );
    // KeysPage request missing its limit, then its value prefix length.
    assert_eq!(
        decode_err(raw(1, kind::KEYS_PAGE, 0, 1, &[0; 8])),
        ProtoError::Truncated { what: "limit" }
    );
    assert_eq!(
        decode_err(raw(1, kind::KEYS_PAGE, 0, 1, &[0; 12])),
        ProtoError::Truncated {
            what: "value_prefix_bytes"
        }
    );
}

#[test]
fn error_messages_are_readable() {
    assert_eq!(
        ProtoError::UnknownKind(0xFD).to_string(),
        "unknown message kind 0xfd"
    );
    assert_eq!(
        ProtoError::FrameTooLarge { len: 10, max: 5 }.to_string(),
        "frame length 10 bytes exceeds the limit of 5 bytes"
    );
    assert_eq!(
        ProtoError::UnsupportedVersion(9).to_string(),
        "unsupported protocol version 9 (this peer speaks version 1)"
    );
}

// ---- property tests ----------------------------------------------------------------------

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Hello),
        Just(Request::Ping),
        arb_bytes().prop_map(|key| Request::Get { key }),
        (arb_bytes(), arb_bytes(), any::<Option<u64>>())
            .prop_map(|(key, value, ttl_ms)| Request::Set { key, value, ttl_ms }),
        arb_bytes().prop_map(|key| Request::Delete { key }),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(offset, limit, value_prefix_bytes)| Request::KeysPage {
                offset,
                limit,
                value_prefix_bytes
            }
        ),
        proptest::collection::vec(arb_bytes(), 0..5).prop_map(|args| Request::Command { args }),
        (
            proptest::collection::vec(proptest::collection::vec(arb_bytes(), 0..4), 0..4),
            proptest::collection::vec((arb_bytes(), any::<u64>()), 0..3)
        )
            .prop_map(|(commands, watched)| Request::Transaction { commands, watched }),
        proptest::collection::vec(proptest::collection::vec(arb_bytes(), 0..4), 0..4)
            .prop_map(|commands| Request::Pipeline { commands }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u32>(), any::<u8>(), any::<String>()).prop_map(
            |(shard_id, protocol_version, server)| Response::HelloOk {
                shard_id,
                protocol_version,
                server
            }
        ),
        Just(Response::Pong),
        proptest::option::of(arb_bytes()).prop_map(Response::Value),
        Just(Response::Done),
        any::<bool>().prop_map(Response::Deleted),
        (
            any::<u64>(),
            proptest::collection::vec((arb_bytes(), arb_bytes(), any::<u64>()), 0..6)
        )
            .prop_map(|(total, entries)| Response::KeysPage {
                total,
                entries: entries
                    .into_iter()
                    .map(|(key, value, value_len)| KeyEntry {
                        key,
                        value,
                        value_len
                    })
                    .collect()
            }),
        arb_bytes().prop_map(Response::Reply),
        any::<u64>().prop_map(|ring_epoch| Response::WrongShard { ring_epoch }),
        (any::<u16>(), any::<String>()).prop_map(|(code, message)| Response::Error {
            code: ErrorCode::from_u16(code),
            message
        }),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        prop_oneof![
            arb_request().prop_map(Message::Request),
            arb_response().prop_map(Message::Response)
        ],
    )
        .prop_map(|(request_id, epoch, message)| Frame {
            request_id,
            // A ring epoch travels on requests only.
            ring_epoch: epoch.filter(|_| matches!(message, Message::Request(_))),
            message,
        })
}

/// Decodes `buf` until it needs more input or fails; must never panic, and `Ok(None)` must not
/// consume.
fn decode_until_stuck(buf: &mut BytesMut, max: usize) {
    loop {
        let before = buf.len();
        match decode(buf, max) {
            Ok(Some(frame)) => assert!(buf.len() < before && frame.encoded_len() <= before),
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return;
            }
            Err(_) => return,
        }
    }
}

proptest! {
    #[test]
    fn prop_round_trip(frame in arb_frame()) {
        let mut buf = encode(std::slice::from_ref(&frame));
        prop_assert_eq!(buf.len(), frame.encoded_len());
        prop_assert_eq!(decode(&mut buf, MAX), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn prop_concatenated_frames_byte_by_byte(frames in proptest::collection::vec(arb_frame(), 0..6)) {
        let wire = encode(&frames);
        prop_assert_eq!(feed_byte_by_byte(&wire), Ok(frames.clone()));
        let mut whole = wire.clone();
        prop_assert_eq!(decode_all(&mut whole), Ok(frames));
    }

    #[test]
    fn prop_prefix_is_incomplete(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
        let wire = encode(std::slice::from_ref(&frame));
        let len = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..len]);
        prop_assert_eq!(decode(&mut buf, MAX), Ok(None));
        prop_assert_eq!(buf.len(), len);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_until_stuck(&mut BytesMut::from(&bytes[..]), MAX);
        decode_until_stuck(&mut BytesMut::from(&bytes[..]), 64);
    }

    #[test]
    fn prop_garbage_body_under_valid_header_never_panics(
        k in prop::sample::select(vec![
            kind::HELLO, kind::PING, kind::GET, kind::SET, kind::DELETE, kind::KEYS_PAGE,
            kind::HELLO_OK, kind::PONG, kind::VALUE, kind::DONE, kind::DELETED,
            kind::KEYS_PAGE_OK, kind::ERROR,
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut buf = raw(PROTOCOL_VERSION, k, 0, 1, &body);
        let total = buf.len();
        match decode(&mut buf, MAX) {
            // A whole frame was present, so the answer is a frame or an error, never "more".
            Ok(Some(frame)) => {
                prop_assert_eq!(frame.message.kind(), k);
                // Whatever decoded must re-encode to the same bytes (the encoding is canonical).
                let again = encode(std::slice::from_ref(&frame));
                prop_assert_eq!(again.len(), total);
                prop_assert_eq!(&again[HEADER_LEN..], &body[..]);
            }
            Ok(None) => prop_assert!(false, "whole frame reported incomplete"),
            Err(_) => {}
        }
    }

    #[test]
    fn prop_mutated_frames_never_panic(
        frames in proptest::collection::vec(arb_frame(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = encode(&frames);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        decode_until_stuck(&mut wire, MAX);
    }
}

#[test]
fn command_and_reply_have_documented_bodies() {
    let mut out = BytesMut::new();
    Frame::request(
        9,
        Request::Command {
            args: vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")],
        },
    )
    .encode(&mut out);
    // header (16 bytes) then argc = 2, "GET", "k"
    assert_eq!(out[5], kind::COMMAND);
    assert_eq!(
        &out[16..],
        &[2, 0, 0, 0, 3, 0, 0, 0, b'G', b'E', b'T', 1, 0, 0, 0, b'k'][..]
    );
    // A Command claiming more arguments than its body can hold is rejected before allocating.
    let body = [0xff, 0xff, 0xff, 0x7f];
    assert!(matches!(
        decode_err(raw(1, kind::COMMAND, 0, 1, &body)),
        ProtoError::CountTooLarge { what: "args", .. }
    ));
}
