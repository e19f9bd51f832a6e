use super::*;

#[test]
fn peers_parse_as_multiaddr_or_host_port() {
    assert_eq!(
        "aios-laptop.local:8000".parse::<PeerAddr>().unwrap(),
        PeerAddr::Host { host: "aios-laptop.local".into(), port: 8000 }
    );
    assert_eq!(
        "10.0.0.2".parse::<PeerAddr>().unwrap(),
        PeerAddr::Host { host: "10.0.0.2".into(), port: 8001 }
    );
    assert_eq!(
        "[fe80::1]:9".parse::<PeerAddr>().unwrap(),
        PeerAddr::Host { host: "fe80::1".into(), port: 9 }
    );
    assert_eq!(
        "fe80::1".parse::<PeerAddr>().unwrap(),
        PeerAddr::Host { host: "fe80::1".into(), port: 8001 }
    );
    assert!(matches!(
        "/ip4/10.0.0.2/tcp/8001".parse::<PeerAddr>().unwrap(),
        PeerAddr::Multiaddr(_)
    ));
    for bad in ["", "host:", "host:70000", "/not/a/multiaddr", "a b", "host:0", "[::1"] {
        assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn flags_beat_file_beats_defaults() {
    let file = FileConfig::parse(
        "cell_id = \"from-file\"\nbranch = \"dev\"\np2p_port = 9001\n[tuning]\nheartbeat_secs = 5\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let args = RunArgs {
        cell_id: Some("from-flag".into()),
        data_dir: Some("/tmp/x".into()),
        ..RunArgs::default()
    };
    let c = Config::layer(args, file).unwrap();
    assert_eq!(c.cell_id, "from-flag");
    assert_eq!(c.branch, "dev");
    assert_eq!(c.p2p_port, 9001);
    assert_eq!(c.tuning.heartbeat_secs, 5);
    assert_eq!(c.tuning.ping_interval_ms, Tuning::default().ping_interval_ms);
    assert_eq!(c.http_addr, Config::default().http_addr);
    assert!(c.mdns);
}

#[test]
fn the_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cret\n").unwrap();
    let args = RunArgs {
        api_token_file: Some(path.clone()),
        data_dir: Some("/tmp/x".into()),
        ..RunArgs::default()
    };
    let c = Config::layer(args.clone(), FileConfig::default()).unwrap();
    assert_eq!(c.api_token.as_deref(), Some("s3cret"));
    std::fs::write(&path, "  \n").unwrap();
    assert!(Config::layer(args.clone(), FileConfig::default()).is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Config::layer(args, FileConfig::default()),
        Err(ConfigError::TokenFile { .. })
    ));
}

#[test]
fn bad_values_are_clear_errors() {
    let args = RunArgs {
        consciousness_level: Some(f64::NAN),
        data_dir: Some("/tmp/x".into()),
        ..RunArgs::default()
    };
    assert!(matches!(Config::layer(args, FileConfig::default()), Err(ConfigError::BadLevel(_))));
    let args = RunArgs {
        peers: Some(vec!["bad peer".into()]),
        data_dir: Some("/tmp/x".into()),
        ..RunArgs::default()
    };
    assert!(matches!(Config::layer(args, FileConfig::default()), Err(ConfigError::BadPeer(_))));
    assert!(FileConfig::parse("p2p_port = \"x\"", Path::new("x.toml")).is_err());
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion_at_any_level() {
    let unknown = |text: &str| match FileConfig::parse(text, Path::new("x.toml")) {
        Err(ConfigError::UnknownKey(u)) => (u.key, u.section, u.suggestion),
        other => panic!("{text:?}: {other:?}"),
    };
    assert_eq!(unknown("cel_id = \"a\""), ("cel_id".into(), None, Some("cell_id".into())));
    assert_eq!(
        unknown("[tuning]\nheartbeat_sec = 5"),
        ("heartbeat_sec".into(), Some("tuning".into()), Some("heartbeat_secs".into()))
    );
    let (_, _, suggestion) = unknown("zzzz = 1");
    assert_eq!(suggestion, None);
    let msg = FileConfig::parse("http_adr = \"x\"", Path::new("x.toml")).unwrap_err().to_string();
    assert!(msg.contains("did you mean `http_addr`?"), "{msg}");
}

#[test]
fn addresses_may_name_a_host_and_levels_must_be_finite() {
    assert_eq!(parse_socket_addr("localhost:8000").unwrap().port(), 8000);
    assert!(parse_socket_addr("localhost:8000").unwrap().ip().is_loopback());
    assert!(parse_socket_addr("localhost").is_err());
    assert!(parse_socket_addr("127.0.0.1:99999").is_err());
    let file = FileConfig::parse("http_addr = \"localhost:18000\"", Path::new("x.toml")).unwrap();
    assert_eq!(file.http_addr.map(|a| a.port()), Some(18000));
    for bad in ["NaN", "inf", "-inf", "1e400", "-0.1", "x"] {
        assert!(parse_level(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_level("0.2"), Ok(0.2));
}
