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
/// Gossipsub topic of membership notices ([`Notice`]): suspicions and
/// failures, spread to every cell whatever links it holds.
pub const NOTICE_TOPIC: &str = "aios/membership/1";
/// Gossipsub topic of relayed records ([`KnownCell`], one per message): a
/// cell that learns a record in an exchange (not by gossip) passes it on
/// here, so that what one link brings reaches every cell it can reach at
/// once, not an exchange hop at a time. Its message id is the content's
/// hash: many cells relaying the same record send it once.
pub const RELAY_TOPIC: &str = "aios/relay/1";
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

/// Why a relayed record ([`RELAY_TOPIC`]) was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RelayError {
    #[error("relayed record is not valid CBOR: {0}")]
    Decode(String),
    #[error("relayed record names no valid peer id: {0}")]
    PeerId(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("relayed record of {author}: {error}")]
    Signature { author: PeerId, error: Box<SignatureError> },
}

impl KnownCell {
    /// A message on [`RELAY_TOPIC`].
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        // Writing a plain struct to a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Decodes a message on [`RELAY_TOPIC`]: the author and its record as
    /// the author signed it (unsigned, forged or altered ones are refused).
    pub fn from_relay(bytes: &[u8]) -> Result<(PeerId, CellRecord), RelayError> {
        let (author, record) = Self::relay_unverified(bytes)?;
        Ok((author, Self::relay_verified(author, record)?))
    }

    /// The first half of [`KnownCell::from_relay`]: the author and the
    /// record, decoded and validated, its signature not yet checked (a
    /// receiver that holds that version already need not check it).
    pub fn relay_unverified(bytes: &[u8]) -> Result<(PeerId, CellRecord), RelayError> {
        // The record plus its author's peer id and the map around them.
        if bytes.len() > MAX_RECORD_BYTES + 128 {
            return Err(RecordError::TooLarge.into());
        }
        let k: KnownCell =
            ciborium::from_reader(bytes).map_err(|e| RelayError::Decode(e.to_string()))?;
        let author: PeerId = k.peer_id.parse().map_err(|_| RelayError::PeerId(k.peer_id))?;
        k.record.validate()?;
        Ok((author, k.record))
    }

    /// The second half: the record as `author` signed it.
    pub fn relay_verified(author: PeerId, record: CellRecord) -> Result<CellRecord, RelayError> {
        record.verified(&author).map_err(|e| RelayError::Signature { author, error: Box::new(e) })
    }
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

/// A message on [`NOTICE_TOPIC`] (CBOR), signed by gossipsub as its
/// author: "`suspect` at `incarnation` is suspected here" or, with
/// `failed`, "is gone: its port refused my dial after its link closed".
/// A record of the suspect with a `seq` above `incarnation` refutes either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The suspect's peer id, base58.
    pub suspect: String,
    /// The `seq` of the suspect's newest record the author holds.
    pub incarnation: u64,
    #[serde(default)]
    pub failed: bool,
}

/// Why a notice was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum NoticeError {
    #[error("notice is not valid CBOR: {0}")]
    Decode(String),
    #[error("notice names no valid peer id: {0}")]
    PeerId(String),
}

impl Notice {
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        // Writing a plain struct to a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Decodes a notice and the suspect it names.
    pub fn from_cbor(bytes: &[u8]) -> Result<(Self, libp2p::PeerId), NoticeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(NoticeError::Decode(format!("{} bytes", bytes.len())));
        }
        let n: Notice =
            ciborium::from_reader(bytes).map_err(|e| NoticeError::Decode(e.to_string()))?;
        let peer = n.suspect.parse().map_err(|_| NoticeError::PeerId(n.suspect.clone()))?;
        Ok((n, peer))
    }
}

#[cfg(test)]
mod tests;
