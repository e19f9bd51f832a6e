//! Wire types: the gossip record on `aios/consciousness/1` and the
//! request-response messages on `/aios/register/1.0.0` (both CBOR).
//!
//! `docs/protocol.md` documents these for other implementations; keep the two
//! in step.

use std::collections::BTreeMap;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Gossipsub topic every cell subscribes to.
pub const TOPIC: &str = "aios/consciousness/1";
/// Request-response protocol for registration, record exchange and leave.
pub const REGISTER_PROTOCOL: &str = "/aios/register/1.0.0";
/// Kademlia protocol name: cells keep their own DHT, apart from IPFS's.
pub const KAD_PROTOCOL: &str = "/aios/kad/1.0.0";
/// Kademlia key under which every cell provides itself: the mesh topic.
pub const MESH_KEY: &str = TOPIC;
/// Identify protocol version.
pub const IDENTIFY_PROTOCOL: &str = "/aios/1.0.0";
/// Largest CBOR record we publish or accept on gossip, in bytes.
pub const MAX_RECORD_BYTES: usize = 4 * 1024;
/// Most addresses a record may carry.
pub const MAX_ADDRS: usize = 32;
/// Largest number of third-party records in one exchange.
pub const MAX_KNOWN_RECORDS: usize = 256;
/// Most tags a record may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag key, in characters.
pub const MAX_TAG_KEY_CHARS: usize = 64;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// Most services a record may carry (the metrics service included).
pub const MAX_SERVICES: usize = 16;
/// Longest service name, in characters.
pub const MAX_SERVICE_NAME_CHARS: usize = 64;
/// The service every cell announces: its own metrics port.
pub const METRICS_SERVICE: &str = "metrics";

/// Domain separation and payload type of a record's signed envelope
/// (libp2p's signed envelopes, as its peer records use them).
pub const RECORD_DOMAIN: &str = "aios-cell-record";
pub const RECORD_PAYLOAD_TYPE: &[u8] = b"/aios/record/1";

/// One cell's state, as it publishes it. The author is the gossip message's
/// signed source (or the request-response peer), never a field; `envelope`
/// carries the author's signature, so that a record relayed by another
/// cell is believed only as its author made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    /// Human name of the cell.
    pub cell_id: String,
    /// Consciousness level: finite and non-negative.
    pub level: f64,
    /// Branch the cell runs.
    pub branch: String,
    /// Grows with every record the cell publishes, across restarts too.
    pub seq: u64,
    /// When the record was made, Unix milliseconds.
    pub at_ms: u64,
    /// The cell's listen addresses (multiaddrs), so others can dial it.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// `aios-cell/<version>` of the publisher.
    #[serde(default)]
    pub agent: String,
    /// True in the last record a cell sends when it shuts down cleanly.
    #[serde(default)]
    pub leaving: bool,
    /// Free `key = value` tags (`AIOS_TAGS`), at most [`MAX_TAGS`]. Left
    /// out of the CBOR when empty, so a cell without tags sends what older
    /// cells sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The services this cell runs and their status as it last checked them
    /// (`AIOS_SERVICES`, and always [`METRICS_SERVICE`]), at most
    /// [`MAX_SERVICES`]. Absent from older cells' records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// The author's signed envelope (domain [`RECORD_DOMAIN`], payload type
    /// [`RECORD_PAYLOAD_TYPE`]) whose payload is this record's CBOR without
    /// this field. Cells older than the field send none; a record relayed
    /// in an exchange must have one (see [`CellRecord::verified`]).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub envelope: Option<Vec<u8>>,
}

/// How a service is spoken to (and checked): `http` by a `GET /`, `https`
/// and `tcp` by a TCP connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    Http,
    Https,
    Tcp,
}

impl ServiceProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceProtocol::Http => "http",
            ServiceProtocol::Https => "https",
            ServiceProtocol::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for ServiceProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(ServiceProtocol::Http),
            "https" => Ok(ServiceProtocol::Https),
            "tcp" => Ok(ServiceProtocol::Tcp),
            _ => Err(format!("unknown protocol {s:?} (http, https or tcp)")),
        }
    }
}

/// A service's status as its own cell last checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Up,
    Down,
    /// Not checked yet.
    Unknown,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Up => "up",
            ServiceStatus::Down => "down",
            ServiceStatus::Unknown => "unknown",
        }
    }
}

/// One service a cell announces in its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// 1-65535.
    pub port: u16,
    pub protocol: ServiceProtocol,
    pub status: ServiceStatus,
}

/// Why a record's signature does not hold.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SignatureError {
    #[error("the record is not signed by its author")]
    Unsigned,
    #[error("the record's envelope does not decode")]
    Malformed,
    #[error("the record's signature is not valid (forged or altered)")]
    Forged,
    #[error("the record is signed by {signer}, not by the cell it is about")]
    WrongAuthor { signer: PeerId },
    #[error("the record's fields differ from what its author signed")]
    Altered,
    #[error("the signed record is not valid: {0}")]
    Invalid(RecordError),
}

impl SignatureError {
    /// The `reason` label of `aios_records_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Unsigned => "unsigned",
            SignatureError::Altered => "altered",
            SignatureError::Invalid(_) => "invalid",
            SignatureError::Malformed
            | SignatureError::Forged
            | SignatureError::WrongAuthor { .. } => "forged",
        }
    }

    pub const REASONS: [&'static str; 4] = ["unsigned", "altered", "invalid", "forged"];
}

/// Why a record was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("level must be a finite, non-negative number, got {0}")]
    BadLevel(f64),
    #[error("cell_id must be 1-128 characters")]
    BadCellId,
    #[error("branch must be at most 128 characters")]
    BadBranch,
    #[error("too many addresses ({0}, at most 32)")]
    TooManyAddrs(usize),
    #[error("record is larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge,
    #[error("too many tags ({0}, at most {MAX_TAGS})")]
    TooManyTags(usize),
    #[error("tag key {0:?} must be 1-{MAX_TAG_KEY_CHARS} characters")]
    BadTagKey(String),
    #[error("the value of tag {0:?} must be at most {MAX_TAG_VALUE_CHARS} characters")]
    BadTagValue(String),
    #[error("too many services ({0}, at most {MAX_SERVICES})")]
    TooManyServices(usize),
    #[error(
        "service name {0:?} must be 1-{MAX_SERVICE_NAME_CHARS} characters, not only white space"
    )]
    BadServiceName(String),
    #[error("service {0:?} must have a port 1-65535")]
    BadServicePort(String),
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    #[error("not a valid CBOR record: {0}")]
    Decode(String),
    /// A name holds a control or bidi-override character.
    #[error(
        "{field} must hold no control or bidi-override characters, but has {} at character {position}",
        escape_char(*.ch)
    )]
    ForbiddenChar { field: &'static str, ch: char, position: usize },
}

/// Bidi overrides, isolates and marks: text that reorders what a terminal
/// shows (names that spoof others visually).
const BIDI_CONTROLS: [char; 12] = [
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}',
    '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
];

/// True for characters no name may hold and the CLI prints escaped: control
/// characters (Unicode category Cc: C0, DEL, C1) and bidi overrides,
/// isolates and marks.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() || BIDI_CONTROLS.contains(&c)
}

/// `U+001B`-style name of a character, for messages.
pub fn escape_char(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// `text` with every [`is_forbidden_char`] character written as a Rust-style
/// escape (`\u{1b}`): safe to print to a terminal or a log line.
pub fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_forbidden_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_forbidden_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The first forbidden character of a name, as an error for `field`
/// (`position` counts characters from 1).
fn check_chars(field: &'static str, name: &str) -> Result<(), RecordError> {
    match name.chars().enumerate().find(|(_, c)| is_forbidden_char(*c)) {
        Some((i, ch)) => Err(RecordError::ForbiddenChar { field, ch, position: i + 1 }),
        None => Ok(()),
    }
}

/// The most characters a `cell_id` or `branch` may hold.
pub const MAX_NAME_CHARS: usize = 128;

/// Checks a `cell_id` as the configuration, the API and the wire take it:
/// 1-128 characters, not only white space, no control or bidi-override
/// characters ([`is_forbidden_char`]).
pub fn validate_cell_id(id: &str) -> Result<(), RecordError> {
    if id.trim().is_empty() || id.chars().count() > MAX_NAME_CHARS {
        return Err(RecordError::BadCellId);
    }
    check_chars("cell_id", id)
}

/// Checks a `branch`: at most 128 characters, no control or bidi-override
/// characters.
pub fn validate_branch(branch: &str) -> Result<(), RecordError> {
    if branch.chars().count() > MAX_NAME_CHARS {
        return Err(RecordError::BadBranch);
    }
    check_chars("branch", branch)
}

/// Checks one tag: a key of 1-64 characters and a value of at most 256,
/// neither with control or bidi-override characters.
pub fn validate_tag(key: &str, value: &str) -> Result<(), RecordError> {
    if key.trim().is_empty() || key.chars().count() > MAX_TAG_KEY_CHARS {
        return Err(RecordError::BadTagKey(escape_text(key).into_owned()));
    }
    check_chars("tag key", key)?;
    if value.chars().count() > MAX_TAG_VALUE_CHARS {
        return Err(RecordError::BadTagValue(escape_text(key).into_owned()));
    }
    check_chars("tag value", value)
}

/// Checks a set of tags: at most [`MAX_TAGS`], each as [`validate_tag`].
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), RecordError> {
    if tags.len() > MAX_TAGS {
        return Err(RecordError::TooManyTags(tags.len()));
    }
    tags.iter().try_for_each(|(k, v)| validate_tag(k, v))
}

/// Checks one service's name and port (its protocol and status are typed).
pub fn validate_service(name: &str, port: u16) -> Result<(), RecordError> {
    if name.trim().is_empty() || name.chars().count() > MAX_SERVICE_NAME_CHARS {
        return Err(RecordError::BadServiceName(escape_text(name).into_owned()));
    }
    check_chars("service name", name)?;
    if port == 0 {
        return Err(RecordError::BadServicePort(name.to_owned()));
    }
    Ok(())
}

/// Checks a record's services: at most [`MAX_SERVICES`], each valid, no
/// name twice.
pub fn validate_services(services: &[Service]) -> Result<(), RecordError> {
    if services.len() > MAX_SERVICES {
        return Err(RecordError::TooManyServices(services.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in services {
        validate_service(&s.name, s.port)?;
        if !seen.insert(s.name.as_str()) {
            return Err(RecordError::DuplicateService(escape_text(&s.name).into_owned()));
        }
    }
    Ok(())
}

/// Checks that a level is one a cell accepts: finite and non-negative.
pub fn validate_level(level: f64) -> Result<f64, RecordError> {
    if level.is_finite() && level >= 0.0 {
        Ok(level)
    } else {
        Err(RecordError::BadLevel(level))
    }
}

impl CellRecord {
    /// Checks the fields a peer controls.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_level(self.level)?;
        validate_cell_id(&self.cell_id)?;
        validate_branch(&self.branch)?;
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs(self.addrs.len()));
        }
        validate_tags(&self.tags)?;
        validate_services(&self.services)
    }

    /// Encodes the record as one CBOR map.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        // Writing into a Vec cannot fail, and every field serializes.
        if let Err(e) = ciborium::into_writer(self, &mut buf) {
            tracing::error!(error = %e, "encoding a record failed");
        }
        buf
    }

    /// This record signed with `key` (its author's identity key).
    pub fn signed(
        mut self,
        key: &libp2p::identity::Keypair,
    ) -> Result<Self, libp2p::identity::SigningError> {
        self.envelope = None;
        let payload = self.to_cbor();
        let envelope = libp2p::core::SignedEnvelope::new(
            key,
            RECORD_DOMAIN.to_owned(),
            RECORD_PAYLOAD_TYPE.to_vec(),
            payload,
        )?;
        self.envelope = Some(envelope.into_protobuf_encoding());
        Ok(self)
    }

    /// The record as `author` signed it: its envelope must decode, its
    /// signature hold, its signer be `author`, and the fields sent beside it
    /// be the ones signed. Returns the signed record (with its envelope).
    pub fn verified(&self, author: &PeerId) -> Result<CellRecord, SignatureError> {
        let bytes = self.envelope.as_deref().ok_or(SignatureError::Unsigned)?;
        let envelope = libp2p::core::SignedEnvelope::from_protobuf_encoding(bytes)
            .map_err(|_| SignatureError::Malformed)?;
        let (payload, signer) = envelope
            .payload_and_signing_key(RECORD_DOMAIN.to_owned(), RECORD_PAYLOAD_TYPE)
            .map_err(|_| SignatureError::Forged)?;
        let signer = signer.to_peer_id();
        if signer != *author {
            return Err(SignatureError::WrongAuthor { signer });
        }
        let mut signed = CellRecord::from_cbor(payload).map_err(SignatureError::Invalid)?;
        if signed.envelope.is_some() {
            return Err(SignatureError::Malformed);
        }
        let mut outer = self.clone();
        outer.envelope = None;
        if outer.tags.is_empty() && outer.services.is_empty() {
            // Relayed by a cell older than tags and services: it dropped
            // the fields it does not know; the signed copy still has them.
            outer.tags.clone_from(&signed.tags);
            outer.services.clone_from(&signed.services);
        }
        if outer != signed {
            return Err(SignatureError::Altered);
        }
        signed.envelope = Some(bytes.to_vec());
        Ok(signed)
    }

    /// Decodes and validates a record from gossip.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge);
        }
        let record: CellRecord =
            ciborium::from_reader(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }
}

/// What a request on `/aios/register/1.0.0` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// "Here is me and what I know; tell me the same." Sent by the dialer of
    /// a new connection, and by `POST /register`.
    Hello,
    /// "I am shutting down cleanly." Sent to every connected cell before the
    /// cell closes its connections, so they mark it left, never failed.
    Leave,
    /// "The cell named in `suspect` (at `incarnation`) is suspected here:
    /// check it." Sent to every connected cell, the suspect included, when
    /// a cell starts suspecting another and when it confirms another's
    /// suspicion. Each receiver probes the suspect and answers with the
    /// result (`alive` in the response: an indirect probe); the suspect
    /// refutes by publishing a record with a higher `seq`. A cell is failed
    /// only when a suspicion times out unrefuted.
    Suspect,
    /// Anti-entropy: "here is me, and the `seq` of every record I hold (in
    /// `digest`): send me the records you hold that are newer or that I
    /// lack." Sent to the watched cell when its beats show a different view,
    /// back to a requester that holds something we lack, and every heartbeat
    /// to one connected cell in turn unless the views were seen to agree.
    Sync,
}

/// One entry of a `sync` digest: a record's author and the `seq` held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The record's author, base58.
    pub peer_id: String,
    pub seq: u64,
}

/// A third-party record passed along in an exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownCell {
    /// The cell's peer id, base58.
    pub peer_id: String,
    pub record: CellRecord,
}

/// Request on `/aios/register/1.0.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub kind: RequestKind,
    /// The sender's own record.
    pub record: CellRecord,
    /// Records of other cells the sender knows (empty for `leave`).
    #[serde(default)]
    pub known: Vec<KnownCell>,
    /// For `suspect`: the peer id (base58) of the cell that went silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// For `suspect`: the suspect's incarnation as the sender knows it (the
    /// `seq` of its latest record the sender holds). A record with a higher
    /// `seq` refutes the suspicion. Absent from older cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// For `sync`: every record the sender holds, as author and `seq`
    /// (its own included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digest: Vec<DigestEntry>,
}

impl RegisterRequest {
    /// A request of `kind` carrying the sender's `record` and nothing else.
    pub fn new(kind: RequestKind, record: CellRecord) -> Self {
        RegisterRequest {
            kind,
            record,
            known: Vec::new(),
            suspect: None,
            incarnation: None,
            digest: Vec::new(),
        }
    }
}

/// Response on `/aios/register/1.0.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The responder's own record.
    pub record: CellRecord,
    /// Records of other cells the responder knows (empty for `leave`).
    #[serde(default)]
    pub known: Vec<KnownCell>,
    /// For `suspect`: whether the responder's own probe of the suspect was
    /// answered (an indirect probe); absent when it could not check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            CellRecord::from_cbor(&with_tag(&"k".repeat(64), &"v".repeat(256)).to_cbor()).is_ok()
        );
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(refused(CellRecord { tags: many, ..record() }), RecordError::TooManyTags(33));

        let with = |services: Vec<Service>| CellRecord { services, ..record() };
        let tcp = ServiceProtocol::Tcp;
        assert!(matches!(
            refused(with(vec![service("x", 0, tcp)])),
            RecordError::BadServicePort(_)
        ));
        assert!(matches!(
            refused(with(vec![service(" ", 1, tcp)])),
            RecordError::BadServiceName(_)
        ));
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
        assert_eq!(
            CellRecord::from_cbor(&vec![0u8; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge)
        );
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
}
