use super::*;

fn base64(input: &[u8]) -> String {
    let mut out = BytesMut::new();
    write_base64(&mut out, input);
    String::from_utf8_lossy(&out).into_owned()
}

/// A range answer of etcd 3.4.23 for a present key, verbatim.
const FOUND: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#;

/// A range answer of etcd 3.4.23 for an absent key (also what a put answers), verbatim.
const ABSENT: &str = r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1","raft_term":"2"}}"#;

/// An error answer of etcd 3.4.23 (with status 400), verbatim.
const BAD_BASE64: &str = r#"{"error":"illegal base64 data at input byte 0","message":"illegal base64 data at input byte 0","code":3}"#;

#[test]
fn base64_matches_the_rfc_4648_vectors() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        assert_eq!(base64_len(input.len()), expected.len());
    }
}

#[test]
fn base64_uses_the_standard_alphabet_for_every_byte() {
    // 0xfb 0xff 0xbf → 111110 111111 111110 111111 = "+/+/" (standard, not URL-safe).
    assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    let all: Vec<u8> = (0..=255).collect();
    let encoded = base64(&all);
    assert_eq!(encoded.len(), base64_len(256));
    assert!(encoded.starts_with("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"));
    assert!(encoded.ends_with("+/w=="));
}

#[test]
fn put_body_is_the_gateway_json_with_base64() -> Result<(), serde_json::Error> {
    let mut out = BytesMut::new();
    write_put_body(&mut out, b"key:000000000042", b"hello");
    assert_eq!(
        &out[..],
        br#"{"key":"a2V5OjAwMDAwMDAwMDA0Mg==","value":"aGVsbG8="}"#
    );
    let json: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(json["key"], "a2V5OjAwMDAwMDAwMDA0Mg==");
    Ok(())
}

#[test]
fn range_body_names_one_key_and_no_options() {
    let mut out = BytesMut::new();
    write_range_body(&mut out, b"key:000000000007");
    assert_eq!(&out[..], br#"{"key":"a2V5OjAwMDAwMDAwMDAwNw=="}"#);
}

#[test]
fn a_range_with_kvs_is_found_and_one_without_is_not() {
    assert_eq!(
        outcome(Op::Get, StatusCode::OK, FOUND.as_bytes()),
        Outcome::Ok
    );
    assert_eq!(
        outcome(Op::Get, StatusCode::OK, ABSENT.as_bytes()),
        Outcome::NotFound
    );
    let empty = r#"{"header":{"revision":"1"},"kvs":[],"count":"0"}"#;
    assert_eq!(
        outcome(Op::Get, StatusCode::OK, empty.as_bytes()),
        Outcome::NotFound
    );
}

#[test]
fn a_put_answer_is_a_success() {
    assert_eq!(
        outcome(Op::Set, StatusCode::OK, ABSENT.as_bytes()),
        Outcome::Ok
    );
}

#[test]
fn errors_are_failures_with_etcds_message() {
    match outcome(Op::Set, StatusCode::BAD_REQUEST, BAD_BASE64.as_bytes()) {
        Outcome::Failed(message) => {
            assert!(message.contains("400"), "{message}");
            assert!(message.contains("illegal base64"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // An error body even with a 2xx status.
    assert!(matches!(
        outcome(Op::Get, StatusCode::OK, BAD_BASE64.as_bytes()),
        Outcome::Failed(ref m) if m.contains("illegal base64")
    ));
}

#[test]
fn a_404_is_a_wrong_route_not_an_absent_key() {
    assert!(matches!(
        outcome(Op::Get, StatusCode::NOT_FOUND, b"404 page not found\n"),
        Outcome::Failed(ref m) if m.contains("404") && m.contains("page not found")
    ));
}

#[test]
fn answers_that_are_not_etcds_are_failures() {
    for body in [&b"OK"[..], b"", b"{}", b"[1]", br#"{"kvs":[{}]}"#] {
        assert!(
            matches!(outcome(Op::Get, StatusCode::OK, body), Outcome::Failed(ref m) if m.contains("not an etcd answer")),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}
