//! Unit and property tests of the codec: Redis's request rules and error texts, value
//! encodings in both protocol versions, and robustness against arbitrary and split input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::*;

fn parse_all(input: &[u8], limits: RequestLimits) -> Result<Vec<Vec<Bytes>>, RespError> {
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(req) = parser.next(&mut buf)? {
        out.push(req);
    }
    Ok(out)
}

fn first_error(input: &[u8]) -> String {
    match parse_all(input, RequestLimits::default()) {
        Err(e) => e.to_string(),
        Ok(reqs) => panic!("expected an error, parsed {reqs:?}"),
    }
}

fn strs(req: &[Bytes]) -> Vec<String> {
    req.iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn multibulk_and_inline_requests_parse() {
    let reqs = parse_all(
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n  get   k \n*0\r\n*-1\r\n\r\n",
        RequestLimits::default(),
    )
    .expect("valid");
    assert_eq!(reqs.len(), 3);
    assert_eq!(strs(&reqs[0]), ["SET", "k", ""]);
    assert_eq!(strs(&reqs[1]), ["PING"]);
    assert_eq!(strs(&reqs[2]), ["get", "k"]);
}

#[test]
fn binary_arguments_survive() {
    let reqs = parse_all(b"*1\r\n$4\r\n\r\n\0\xff\r\n", RequestLimits::default()).expect("ok");
    assert_eq!(&reqs[0][0][..], b"\r\n\0\xff");
}

#[test]
fn protocol_errors_have_redis_texts() {
    assert_eq!(
        first_error(b"*x\r\n"),
        "ERR Protocol error: invalid multibulk length"
    );
    assert_eq!(
        first_error(b"*1\r\n$-3\r\n"),
        "ERR Protocol error: invalid bulk length"
    );
    assert_eq!(
        first_error(b"*1\r\n$abc\r\n"),
        "ERR Protocol error: invalid bulk length"
    );
    assert_eq!(
        first_error(b"*1\r\n:1\r\n"),
        "ERR Protocol error: expected '$', got ':'"
    );
    assert_eq!(
        first_error(b"SET \"a b\r\n"),
        "ERR Protocol error: unbalanced quotes in request"
    );
    assert_eq!(
        first_error(b"SET \"a\"b\r\n"),
        "ERR Protocol error: unbalanced quotes in request"
    );
    assert_eq!(
        first_error(&vec![b'a'; 70 * 1024]),
        "ERR Protocol error: too big inline request"
    );
    let mut long = b"*".to_vec();
    long.extend(vec![b'1'; 70 * 1024]);
    assert_eq!(
        first_error(&long),
        "ERR Protocol error: too big mbulk count string"
    );
    let mut long = b"*1\r\n$".to_vec();
    long.extend(vec![b'1'; 70 * 1024]);
    assert_eq!(
        first_error(&long),
        "ERR Protocol error: too big bulk count string"
    );
    // Redis's number rules: no '+', no leading zeros.
    assert!(parse_all(b"*+1\r\n", RequestLimits::default()).is_err());
    assert!(parse_all(b"*01\r\n", RequestLimits::default()).is_err());
}

#[test]
fn limits_are_enforced_before_allocation() {
    let limits = RequestLimits {
        max_bulk_bytes: 10,
        max_args: 3,
        max_inline_bytes: 64,
        max_request_bytes: 15,
    };
    let err = |input: &[u8]| parse_all(input, limits).expect_err("over a limit");
    assert_eq!(
        err(b"*1\r\n$11\r\n").to_string(),
        "ERR Protocol error: invalid bulk length"
    );
    assert_eq!(
        err(b"*4\r\n").to_string(),
        "ERR Protocol error: invalid multibulk length"
    );
    assert_eq!(
        err(b"*9999999999999999999999\r\n").to_string(),
        "ERR Protocol error: invalid multibulk length"
    );
    assert!(matches!(
        err(b"*2\r\n$10\r\n0123456789\r\n$10\r\n"),
        RespError::RequestTooBig { max: 15 }
    ));
    // Exactly at the limits is fine.
    let ok = parse_all(b"*1\r\n$10\r\n0123456789\r\n", limits).expect("at the limit");
    assert_eq!(ok[0][0].len(), 10);
}

#[test]
fn partial_input_waits_and_remembers_its_place() {
    let mut parser = RequestParser::new(RequestLimits::default());
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nab"[..]);
    assert_eq!(parser.next(&mut buf).expect("ok"), None);
    assert!(parser.is_mid_request());
    assert_eq!(parser.bytes_wanted(&buf), 5);
    buf.extend_from_slice(b"cde\r\n");
    let req = parser.next(&mut buf).expect("ok").expect("complete");
    assert_eq!(strs(&req), ["GET", "abcde"]);
    assert!(!parser.is_mid_request());
}

#[test]
fn inline_quoting_follows_sdssplitargs() {
    let args = split_args(br#"set "a\tb" 'c\'d' "\x00\xfF" "" x"#).expect("ok");
    assert_eq!(args[1], Bytes::from_static(b"a\tb"));
    assert_eq!(args[2], Bytes::from_static(b"c'd"));
    assert_eq!(args[3], Bytes::from_static(b"\x00\xff"));
    assert_eq!(args[4], Bytes::new());
    assert_eq!(args[5], Bytes::from_static(b"x"));
    assert!(split_args(b"'abc").is_err());
    assert!(split_args(b"'a'b").is_err());
    assert_eq!(split_args(b"   ").expect("ok"), Vec::<Bytes>::new());
}

#[test]
fn values_encode_per_protocol() {
    let map = Value::Map(vec![(Value::bulk("a"), Value::Integer(1))]);
    assert_eq!(
        &map.to_bytes(Protocol::Resp2)[..],
        b"*2\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(
        &map.to_bytes(Protocol::Resp3)[..],
        b"%1\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(
        &Value::Double(1.5).to_bytes(Protocol::Resp3)[..],
        b",1.5\r\n"
    );
    assert_eq!(
        &Value::Double(1.5).to_bytes(Protocol::Resp2)[..],
        b"$3\r\n1.5\r\n"
    );
    assert_eq!(
        &Value::Double(f64::NEG_INFINITY).to_bytes(Protocol::Resp3)[..],
        b",-inf\r\n"
    );
    assert_eq!(&Value::NullArray.to_bytes(Protocol::Resp2)[..], b"*-1\r\n");
    assert_eq!(
        &Value::Boolean(true).to_bytes(Protocol::Resp2)[..],
        b":1\r\n"
    );
    assert_eq!(
        &Value::Integer(i64::MIN).to_bytes(Protocol::Resp2)[..],
        b":-9223372036854775808\r\n"
    );
    assert_eq!(
        &Value::error("ERR a\r\nb").to_bytes(Protocol::Resp2)[..],
        b"-ERR a  b\r\n"
    );
    assert_eq!(
        &Value::Verbatim("txt".into(), Bytes::from("hi")).to_bytes(Protocol::Resp3)[..],
        b"=6\r\ntxt:hi\r\n"
    );
}

#[test]
fn value_decoder_rejects_malformed_input() {
    let limits = ValueLimits::default();
    for bad in [
        &b"?x\r\n"[..],
        b"$3\r\nabcd\r\n",
        b":x\r\n",
        b"#x\r\n",
        b"*-2\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(decode_value(&mut buf, &limits).is_err(), "{bad:?}");
    }
    let mut deep = BytesMut::from(&b"*1\r\n".repeat(100)[..]);
    assert!(decode_value(&mut deep, &limits).is_err());
    let mut partial = BytesMut::from(&b"*2\r\n:1\r\n"[..]);
    assert_eq!(decode_value(&mut partial, &limits).expect("ok"), None);
    assert_eq!(
        partial.len(),
        8,
        "a partial value leaves the buffer untouched"
    );
}

fn arb_value() -> impl Strategy<Value = crate::Value> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Simple),
        "ERR [a-z ]{0,20}".prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Value::Bulk(v.into())),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>()
            .prop_filter("nan never equals itself", |d| !d.is_nan())
            .prop_map(Value::Double),
        ("[a-z]{3}", proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(f, d)| Value::Verbatim(f, d.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Set),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

fn arb_request() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8)
}

fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
    let value = Value::Array(args.iter().map(|a| Value::bulk(a.clone())).collect());
    value.to_bytes(Protocol::Resp2).to_vec()
}

proptest! {
    #[test]
    fn resp3_values_round_trip(v in arb_value()) {
        let mut buf = BytesMut::new();
        v.encode(Protocol::Resp3, &mut buf);
        let back = decode_value(&mut buf, &ValueLimits::default()).expect("valid").expect("whole");
        prop_assert_eq!(back, v);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn resp2_values_decode_whole(v in arb_value()) {
        let mut buf = BytesMut::new();
        v.encode(Protocol::Resp2, &mut buf);
        prop_assert!(decode_value(&mut buf, &ValueLimits::default()).expect("valid").is_some());
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_all(&bytes, RequestLimits { max_bulk_bytes: 100, max_args: 10, max_inline_bytes: 64, max_request_bytes: 300 });
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_value(&mut buf, &ValueLimits { max_bulk_bytes: 100, max_elements: 10, max_depth: 4 });
        let _ = split_args(&bytes);
    }

    #[test]
    fn requests_round_trip(reqs in proptest::collection::vec(arb_request(), 1..6)) {
        let wire: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r)).collect();
        let parsed = parse_all(&wire, RequestLimits::default()).expect("valid");
        let parsed: Vec<Vec<Vec<u8>>> = parsed.iter().map(|r| r.iter().map(|a| a.to_vec()).collect()).collect();
        prop_assert_eq!(parsed, reqs);
    }

    #[test]
    fn split_anywhere_parses_the_same(
        reqs in proptest::collection::vec(arb_request(), 1..6),
        inline in "[a-z]{1,5}( [a-z0-9]{1,5}){0,3}",
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r)).collect();
        wire.extend_from_slice(inline.as_bytes());
        wire.extend_from_slice(b"\r\n");
        let whole = parse_all(&wire, RequestLimits::default()).expect("valid");
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut parser = RequestParser::new(RequestLimits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut start = 0;
        for end in points {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            while let Some(req) = parser.next(&mut buf).expect("valid") {
                got.push(req);
            }
        }
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn split_values_decode_the_same(v in arb_value(), cut in any::<prop::sample::Index>()) {
        let wire = v.to_bytes(Protocol::Resp3);
        let at = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..at]);
        prop_assert_eq!(decode_value(&mut buf, &ValueLimits::default()).expect("valid"), None);
        buf.extend_from_slice(&wire[at..]);
        prop_assert_eq!(decode_value(&mut buf, &ValueLimits::default()).expect("valid"), Some(v));
    }
}

#[test]
fn nul_byte_ends_an_inline_line_instead_of_looping() {
    // Found by `arbitrary_bytes_never_panic`: a NUL once made the splitter loop forever.
    let reqs = parse_all(b"GET a\0b c\r\n\0\r\nPING\r\n", RequestLimits::default()).expect("ok");
    assert_eq!(reqs.len(), 2);
    assert_eq!(strs(&reqs[0]), ["GET", "a"]);
    assert_eq!(strs(&reqs[1]), ["PING"]);
}
