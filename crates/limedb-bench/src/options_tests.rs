use super::*;

#[test]
fn workload_parses_and_round_trips() -> Result<(), BenchError> {
    assert_eq!("set".parse::<Workload>()?, Workload::Set);
    assert_eq!("GET".parse::<Workload>()?, Workload::Get);
    assert_eq!(
        "mixed".parse::<Workload>()?,
        Workload::Mixed { read_percent: 90 }
    );
    assert_eq!(
        "mixed:25".parse::<Workload>()?,
        Workload::Mixed { read_percent: 25 }
    );
    for text in ["set", "get", "mixed", "mixed:0", "mixed:100", "mixed:50"] {
        assert_eq!(text.parse::<Workload>()?.to_string(), text);
    }
    Ok(())
}

#[test]
fn workload_rejects_garbage() {
    for text in ["", "put", "mixed:101", "mixed:-1", "mixed:x", "mixed:"] {
        assert!(
            matches!(
                text.parse::<Workload>(),
                Err(BenchError::UnknownWorkload(_))
            ),
            "{text:?} should be rejected"
        );
    }
}

#[test]
fn key_pattern_parses() -> Result<(), BenchError> {
    assert_eq!("sequential".parse::<KeyPattern>()?, KeyPattern::Sequential);
    assert_eq!("Random".parse::<KeyPattern>()?, KeyPattern::Random);
    assert_eq!(KeyPattern::default(), KeyPattern::Random);
    assert!("zigzag".parse::<KeyPattern>().is_err());
    Ok(())
}

#[test]
fn value_kind_parses_and_round_trips() -> Result<(), BenchError> {
    assert_eq!("repeating".parse::<ValueKind>()?, ValueKind::Repeating);
    assert_eq!(" RANDOM ".parse::<ValueKind>()?, ValueKind::Random);
    assert_eq!(ValueKind::default(), ValueKind::Repeating);
    for kind in [ValueKind::Repeating, ValueKind::Random] {
        assert_eq!(kind.to_string().parse::<ValueKind>()?, kind);
    }
    for text in ["", "zeros", "rand", "repeat"] {
        match text.parse::<ValueKind>() {
            Err(e @ BenchError::UnknownValueKind(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains("repeating") && message.contains("random"),
                    "{message}"
                );
            }
            other => panic!("{text:?} should be rejected, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn api_parses_and_round_trips() -> Result<(), BenchError> {
    assert_eq!("limedb".parse::<Api>()?, Api::LimeDb);
    assert_eq!(" ETCD ".parse::<Api>()?, Api::Etcd);
    for api in [Api::LimeDb, Api::Etcd] {
        assert_eq!(api.to_string().parse::<Api>()?, api);
    }
    assert!(matches!(
        "redis".parse::<Api>(),
        Err(BenchError::UnknownTarget(_))
    ));
    Ok(())
}

#[test]
fn defaults_match_the_documented_values() {
    let options = BenchOptions::default();
    assert_eq!(options.api, Api::LimeDb);
    assert_eq!(options.connections, 64);
    assert_eq!(options.requests, 100_000);
    assert_eq!(options.keyspace, 100_000);
    assert_eq!(options.value_size, 100);
    assert_eq!(options.value_kind, ValueKind::Repeating);
    assert_eq!(options.key_pattern, KeyPattern::Random);
    assert!(options.prefill);
    assert_eq!(options.warmup_requests, 0);
    assert_eq!(options.timeout_ms, 5_000);
    assert!(!options.progress);
}

#[test]
fn target_parses_http_urls() -> Result<(), BenchError> {
    let target = Target::parse("http://127.0.0.1:8080")?;
    assert_eq!(target.host(), "127.0.0.1");
    assert_eq!(target.port(), 8080);
    assert_eq!(target.authority(), "127.0.0.1:8080");
    assert_eq!(target.path_prefix(), "");

    let target = Target::parse("http://example.com/")?;
    assert_eq!(target.port(), 80);
    assert_eq!(target.path_prefix(), "");

    let target = Target::parse("http://[::1]:9000/prefix/")?;
    assert_eq!(target.host(), "::1");
    assert_eq!(target.authority(), "[::1]:9000");
    assert_eq!(target.path_prefix(), "/prefix");
    Ok(())
}

#[test]
fn target_rejects_what_it_cannot_serve() {
    assert!(matches!(
        Target::parse("https://127.0.0.1:8080"),
        Err(BenchError::UnsupportedScheme { .. })
    ));
    for url in [
        "127.0.0.1:8080",
        "not a url",
        "http://",
        "http://h:1/?q=1",
        "http://u@h:1",
    ] {
        assert!(
            matches!(Target::parse(url), Err(BenchError::InvalidUrl { .. })),
            "{url:?} should be rejected"
        );
    }
}

#[test]
fn user_info_becomes_an_authorization_header_and_leaves_the_host() {
    let t = Target::parse("http://app:p%40ss:w@127.0.0.1:8080").expect("basic");
    assert_eq!(t.authority(), "127.0.0.1:8080");
    // base64("app:p@ss:w")
    assert_eq!(
        t.credentials().map(Credentials::header_value),
        Some("Basic YXBwOnBAc3M6dw==")
    );
    assert!(
        !format!("{t:?}").contains("YXBw"),
        "credentials are not printed"
    );
    let t = Target::parse("http://:s3cret@h:1").expect("bearer");
    assert_eq!(
        t.credentials().map(Credentials::header_value),
        Some("Bearer s3cret")
    );
    assert_eq!(
        Target::parse("http://h:1").expect("plain").credentials(),
        None
    );
    assert_eq!(redacted("http://app:s3cret@h:1/p"), "http://app:***@h:1/p");
    assert_eq!(redacted("http://:s3cret@h:1"), "http://:***@h:1");
    assert_eq!(redacted("http://h:1/a@b"), "http://h:1/a@b");
    let err = Target::parse("http://u:s3cret@h:1/?q=1").expect_err("query");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn validate_checks_ranges() {
    let ok = BenchOptions::default();
    assert!(ok.validate().is_ok());
    for bad in [
        BenchOptions {
            connections: 0,
            ..ok.clone()
        },
        BenchOptions {
            keyspace: 0,
            ..ok.clone()
        },
        BenchOptions {
            timeout_ms: 0,
            ..ok.clone()
        },
        BenchOptions {
            workload: Workload::Mixed { read_percent: 150 },
            ..ok.clone()
        },
    ] {
        assert!(matches!(bad.validate(), Err(BenchError::InvalidOption(_))));
    }
}
