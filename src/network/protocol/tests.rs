use super::*;

#[test]
fn a_notice_round_trips_and_a_bad_one_says_why() {
    let peer = libp2p::PeerId::random();
    let n = Notice { suspect: peer.to_base58(), incarnation: 7, failed: true };
    assert_eq!(Notice::from_cbor(&n.to_cbor()), Ok((n.clone(), peer)));
    let bad = Notice { suspect: "not-a-peer".into(), ..n };
    assert!(matches!(Notice::from_cbor(&bad.to_cbor()), Err(NoticeError::PeerId(_))));
    assert!(matches!(Notice::from_cbor(b"\xff\x00"), Err(NoticeError::Decode(_))));
    assert!(Notice::from_cbor(&vec![0u8; MAX_RECORD_BYTES + 1]).is_err());
}

fn record() -> CellRecord {
    CellRecord {
        cell_id: "laptop".into(),
        level: 0.5,
        branch: "main".into(),
        seq: 7,
        at_ms: 1,
        addrs: vec!["/ip4/10.0.0.1/tcp/8001".into()],
        agent: "aios-cell/0.1.0".into(),
        leaving: false,
        tags: BTreeMap::from([("role".to_owned(), "desktop".to_owned())]),
        services: vec![
            service(METRICS_SERVICE, 9091, ServiceProtocol::Http),
            service("grafana", 3000, ServiceProtocol::Http),
        ],
        envelope: None,
    }
}

fn service(name: &str, port: u16, protocol: ServiceProtocol) -> Service {
    Service { name: name.into(), port, protocol, status: ServiceStatus::Up }
}

#[test]
fn tags_and_services_are_signed_too() {
    let author = libp2p::identity::Keypair::generate_ed25519();
    let id = author.public().to_peer_id();
    let signed = record().signed(&author).expect("signed");
    let relayed = CellRecord::from_cbor(&signed.to_cbor()).expect("decodes");
    assert_eq!(relayed.verified(&id), Ok(signed.clone()));
    // A relay that moves a service's port, marks it down, or adds a tag.
    let mut port = signed.clone();
    port.services[1].port = 3001;
    assert_eq!(port.verified(&id), Err(SignatureError::Altered));
    let mut down = signed.clone();
    down.services[1].status = ServiceStatus::Down;
    assert_eq!(down.verified(&id), Err(SignatureError::Altered));
    let mut tag = signed.clone();
    tag.tags.insert("gpu".into(), "true".into());
    assert_eq!(tag.verified(&id), Err(SignatureError::Altered));
    // A cell older than these fields relays the record without them:
    // the signed copy still has them, and that is what counts.
    let mut stripped = signed.clone();
    stripped.tags.clear();
    stripped.services.clear();
    assert_eq!(stripped.verified(&id), Ok(signed.clone()));
}

#[test]
fn a_record_without_tags_or_services_encodes_as_before() {
    #[derive(Serialize)]
    struct Old<'a> {
        cell_id: &'a str,
        level: f64,
        branch: &'a str,
        seq: u64,
        at_ms: u64,
        addrs: Vec<String>,
        agent: &'a str,
        leaving: bool,
    }
    let r = CellRecord { tags: BTreeMap::new(), services: Vec::new(), ..record() };
    let mut old = Vec::new();
    ciborium::into_writer(
        &Old {
            cell_id: &r.cell_id,
            level: r.level,
            branch: &r.branch,
            seq: r.seq,
            at_ms: r.at_ms,
            addrs: r.addrs.clone(),
            agent: &r.agent,
            leaving: r.leaving,
        },
        &mut old,
    )
    .unwrap();
    assert_eq!(r.to_cbor(), old);
}

/// The bytes docs/protocol.md shows for `tags` and `services`.
#[test]
fn tags_and_services_encode_as_documented() {
    let r = CellRecord {
        tags: BTreeMap::from([("role".to_owned(), "desktop".to_owned())]),
        services: vec![service(METRICS_SERVICE, 9091, ServiceProtocol::Http)],
        ..record()
    };
    let hex: String = r.to_cbor().iter().map(|b| format!("{b:02x}")).collect();
    assert!(hex.starts_with("aa"), "map(10): {hex}");
    let tail = concat!(
        "676c656176696e67f4",
        "6474616773a164726f6c65676465736b746f70",
        "687365727669636573",
        "81a4646e616d65676d657472696373",
        "64706f7274192383",
        "6870726f746f636f6c6468747470",
        "6673746174757362",
        "7570"
    );
    assert!(hex.ends_with(tail), "{hex}");
}

#[test]
fn bad_tags_and_services_are_refused() {
    let refused = |r: CellRecord| CellRecord::from_cbor(&r.to_cbor()).unwrap_err();
    let with_tag = |k: &str, v: &str| CellRecord {
        tags: BTreeMap::from([(k.to_owned(), v.to_owned())]),
        ..record()
    };
    assert!(matches!(refused(with_tag("", "x")), RecordError::BadTagKey(_)));
    assert!(matches!(refused(with_tag(&"k".repeat(65), "x")), RecordError::BadTagKey(_)));
    assert!(matches!(refused(with_tag("k", &"v".repeat(257))), RecordError::BadTagValue(_)));
    assert!(matches!(
        refused(with_tag("k\u{1b}", "x")),
        RecordError::ForbiddenChar { field: "tag key", .. }
    ));
    assert!(matches!(
        refused(with_tag("k", "x\u{202e}")),
        RecordError::ForbiddenChar { field: "tag value", .. }
    ));
    assert!(CellRecord::from_cbor(&with_tag(&"k".repeat(64), &"v".repeat(256)).to_cbor()).is_ok());
    let many: BTreeMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), String::new())).collect();
    assert_eq!(refused(CellRecord { tags: many, ..record() }), RecordError::TooManyTags(33));

    let with = |services: Vec<Service>| CellRecord { services, ..record() };
    let tcp = ServiceProtocol::Tcp;
    assert!(matches!(refused(with(vec![service("x", 0, tcp)])), RecordError::BadServicePort(_)));
    assert!(matches!(refused(with(vec![service(" ", 1, tcp)])), RecordError::BadServiceName(_)));
    assert!(matches!(
        refused(with(vec![service("a\nb", 1, tcp)])),
        RecordError::ForbiddenChar { field: "service name", .. }
    ));
    assert!(matches!(
        refused(with(vec![service("a", 1, tcp), service("a", 2, tcp)])),
        RecordError::DuplicateService(_)
    ));
    let many = (0..17).map(|i| service(&format!("s{i}"), 1, tcp)).collect();
    assert_eq!(refused(with(many)), RecordError::TooManyServices(17));
    // An unknown protocol or status, or a port beyond 65535, does not decode.
    for (field, bad) in [("protocol", "ftp"), ("status", "sideways")] {
        let mut v = serde_json::to_value(record()).unwrap();
        v["services"][0][field] = bad.into();
        let mut buf = Vec::new();
        ciborium::into_writer(&v, &mut buf).unwrap();
        assert!(matches!(CellRecord::from_cbor(&buf), Err(RecordError::Decode(_))), "{field}");
    }
    let mut v = serde_json::to_value(record()).unwrap();
    v["services"][0]["port"] = 70000.into();
    let mut buf = Vec::new();
    ciborium::into_writer(&v, &mut buf).unwrap();
    assert!(matches!(CellRecord::from_cbor(&buf), Err(RecordError::Decode(_))));
}

#[test]
fn a_record_counts_only_as_its_author_signed_it() {
    let author = libp2p::identity::Keypair::generate_ed25519();
    let id = author.public().to_peer_id();
    let signed = record().signed(&author).expect("signed");
    // Through CBOR and back, as a relay passes it on: it holds.
    let relayed = CellRecord::from_cbor(&signed.to_cbor()).expect("decodes");
    assert_eq!(relayed.verified(&id), Ok(signed.clone()));
    // Unsigned (an older cell's, or a relay's invention).
    assert_eq!(record().verified(&id), Err(SignatureError::Unsigned));
    // A field changed beside the signature: the level, a leave.
    let mut level = signed.clone();
    level.level = 6.0;
    assert_eq!(level.verified(&id), Err(SignatureError::Altered));
    let mut leave = signed.clone();
    leave.leaving = true;
    assert_eq!(leave.verified(&id).map_err(|e| e.reason()), Err("altered"));
    // Signed by another key (a relay signing a cell's record itself).
    let forger = libp2p::identity::Keypair::generate_ed25519();
    let forged = CellRecord { level: 6.0, ..record() }.signed(&forger).expect("signed");
    assert!(matches!(forged.verified(&id), Err(SignatureError::WrongAuthor { .. })));
    // A signature that does not match its payload, and garbage.
    let mut bytes = signed.envelope.clone().expect("an envelope");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let broken = CellRecord { envelope: Some(bytes), ..signed.clone() };
    assert_eq!(broken.verified(&id).map_err(|e| e.reason()), Err("forged"));
    let garbage = CellRecord { envelope: Some(vec![1, 2, 3]), ..record() };
    assert_eq!(garbage.verified(&id), Err(SignatureError::Malformed));
    for e in [SignatureError::Unsigned, SignatureError::Altered, SignatureError::Forged] {
        assert!(SignatureError::REASONS.contains(&e.reason()));
    }
}

#[test]
fn record_round_trips_through_cbor() {
    let r = record();
    assert_eq!(CellRecord::from_cbor(&r.to_cbor()).unwrap(), r);
}

#[test]
fn record_without_optional_fields_decodes() {
    #[derive(Serialize)]
    struct Minimal {
        cell_id: &'static str,
        level: f64,
        branch: &'static str,
        seq: u64,
        at_ms: u64,
    }
    let mut buf = Vec::new();
    ciborium::into_writer(
        &Minimal { cell_id: "x", level: 2.0, branch: "b", seq: 1, at_ms: 2 },
        &mut buf,
    )
    .unwrap();
    let r = CellRecord::from_cbor(&buf).unwrap();
    assert_eq!(r.cell_id, "x");
    assert!(!r.leaving);
    assert!(r.addrs.is_empty());
}

#[test]
fn the_fuzz_seeds_decode() {
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");
    let record = std::fs::read(format!("{seeds}/gossip_record/record")).unwrap();
    assert_eq!(CellRecord::from_cbor(&record).unwrap().cell_id, "laptop");
    let hello = std::fs::read(format!("{seeds}/register_exchange/hello")).unwrap();
    let req: RegisterRequest = cbor4ii::serde::from_slice(&hello).unwrap();
    assert_eq!(req.kind, RequestKind::Hello);
    assert_eq!(req.known.len(), 1);
}

#[test]
fn bad_records_are_refused() {
    let mut r = record();
    r.level = f64::NAN;
    assert!(matches!(CellRecord::from_cbor(&r.to_cbor()), Err(RecordError::BadLevel(_))));
    r.level = -1.0;
    assert!(matches!(CellRecord::from_cbor(&r.to_cbor()), Err(RecordError::BadLevel(_))));
    r.level = 1.0;
    r.cell_id.clear();
    assert_eq!(CellRecord::from_cbor(&r.to_cbor()), Err(RecordError::BadCellId));
    assert!(matches!(CellRecord::from_cbor(b"\xff\x00garbage"), Err(RecordError::Decode(_))));
    assert_eq!(CellRecord::from_cbor(&vec![0u8; MAX_RECORD_BYTES + 1]), Err(RecordError::TooLarge));
}

#[test]
fn names_with_control_or_bidi_characters_are_refused() {
    let hostile = [
        ('\0', "U+0000"),
        ('\u{1b}', "U+001B"),
        ('\r', "U+000D"),
        ('\n', "U+000A"),
        ('\t', "U+0009"),
        ('\u{7}', "U+0007"),
        ('\u{7f}', "U+007F"),
        ('\u{80}', "U+0080"),
        ('\u{9b}', "U+009B"),
        ('\u{9f}', "U+009F"),
        ('\u{202a}', "U+202A"),
        ('\u{202b}', "U+202B"),
        ('\u{202c}', "U+202C"),
        ('\u{202d}', "U+202D"),
        ('\u{202e}', "U+202E"),
        ('\u{2066}', "U+2066"),
        ('\u{2067}', "U+2067"),
        ('\u{2068}', "U+2068"),
        ('\u{2069}', "U+2069"),
        ('\u{200e}', "U+200E"),
        ('\u{200f}', "U+200F"),
        ('\u{61c}', "U+061C"),
    ];
    for (c, name) in hostile {
        let id = format!("ab{c}cd");
        let e = validate_cell_id(&id).unwrap_err();
        assert_eq!(e, RecordError::ForbiddenChar { field: "cell_id", ch: c, position: 3 });
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains("cell_id") && msg.contains(" 3"), "{msg}");
        assert!(!msg.contains(c), "the message itself holds the character: {msg:?}");
        let e = validate_branch(&id).unwrap_err();
        assert!(matches!(e, RecordError::ForbiddenChar { field: "branch", .. }), "{e}");
        // Records from the network get the same check.
        let mut r = record();
        r.cell_id = id.clone();
        assert!(matches!(
            CellRecord::from_cbor(&r.to_cbor()),
            Err(RecordError::ForbiddenChar { field: "cell_id", .. })
        ));
        let mut r = record();
        r.branch = id;
        assert!(matches!(
            CellRecord::from_cbor(&r.to_cbor()),
            Err(RecordError::ForbiddenChar { field: "branch", .. })
        ));
    }
    let e = validate_cell_id("evil\u{0}\u{1b}[2J\r\nid\u{7}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "cell_id must hold no control or bidi-override characters, but has U+0000 at \
         character 5"
    );
}

#[test]
fn ordinary_unicode_names_are_accepted() {
    for name in ["büro-Δ-노트", "laptop", "café ☕", "مكتب", "שולחן", "机器-1", "a b", "x.y_z"]
    {
        assert_eq!(validate_cell_id(name), Ok(()), "{name}");
        assert_eq!(validate_branch(name), Ok(()), "{name}");
    }
    assert_eq!(validate_branch(""), Ok(()));
    let mut r = record();
    r.cell_id = "büro-Δ-노트".into();
    assert_eq!(CellRecord::from_cbor(&r.to_cbor()).unwrap(), r);
}

#[test]
fn escape_text_makes_hostile_text_inert() {
    assert!(matches!(escape_text("büro-Δ-노트"), std::borrow::Cow::Borrowed(_)));
    assert_eq!(escape_text("a\u{1b}[2J\r\n\u{202e}b"), "a\\u{1b}[2J\\u{d}\\u{a}\\u{202e}b");
    assert!(!escape_text("\u{9b}31m\u{7f}").chars().any(is_forbidden_char));
}

#[test]
fn a_relayed_record_counts_only_as_its_author_signed_it() {
    let author = libp2p::identity::Keypair::generate_ed25519();
    let id = author.public().to_peer_id();
    let signed = record().signed(&author).expect("signed");
    let relay = |record: CellRecord| KnownCell { peer_id: id.to_base58(), record }.to_cbor();
    assert_eq!(KnownCell::from_relay(&relay(signed.clone())), Ok((id, signed.clone())));
    // The same record relayed by two cells is the same bytes: one message id.
    assert_eq!(relay(signed.clone()), relay(signed.clone()));
    let refused = |bytes: &[u8]| match KnownCell::from_relay(bytes) {
        Err(RelayError::Signature { error, .. }) => *error,
        other => panic!("not a signature error: {other:?}"),
    };
    let mut level = signed.clone();
    level.level = 6.0;
    assert_eq!(refused(&relay(level.clone())), SignatureError::Altered);
    // In two halves: decoded first (a receiver holding that version stops
    // there), then checked.
    let (who, unchecked) = KnownCell::relay_unverified(&relay(level)).expect("decodes");
    assert_eq!(who, id);
    assert!(matches!(
        KnownCell::relay_verified(who, unchecked),
        Err(RelayError::Signature { error, .. }) if *error == SignatureError::Altered
    ));
    assert_eq!(refused(&relay(record())), SignatureError::Unsigned);
    // Named as another cell's: signed by the wrong key.
    let other = KnownCell { peer_id: libp2p::PeerId::random().to_base58(), record: signed };
    assert!(matches!(refused(&other.to_cbor()), SignatureError::WrongAuthor { .. }));
    let bad_id = KnownCell { peer_id: "nobody".into(), record: record() };
    assert!(matches!(KnownCell::from_relay(&bad_id.to_cbor()), Err(RelayError::PeerId(_))));
    assert!(matches!(KnownCell::from_relay(b"\xff\x00"), Err(RelayError::Decode(_))));
    assert!(matches!(
        KnownCell::from_relay(&vec![0u8; MAX_RECORD_BYTES + 200]),
        Err(RelayError::Record(RecordError::TooLarge))
    ));
}
