//! Audit entries and their hash chains.
//!
//! Each writer (a broker, an approval service) appends to its own chain with
//! its own Ed25519 key, so writers never contend. An entry's hash is SHA-256
//! over its canonical JSON in the `zt/audit-leaf/v1` domain, and the entry
//! carries the previous entry's hash: editing, deleting, inserting or
//! reordering entries breaks the recomputation.
//!
//! The writer signs [`Checkpoint`]s (`zt/checkpoint/v1` domain): `{chain,
//! seq, head, time}` every so many entries or so much time, a heartbeat when
//! idle, and one when it stops. A checkpoint pins everything before it (the
//! head hash commits to the whole chain), so re-hashing a rewritten chain
//! contradicts a signature only the writer's private key could make, and a
//! checkpoint the log no longer reaches proves a truncated tail. Verifying
//! costs one SHA-256 per entry and one signature check per checkpoint.
//!
//! This module is pure: [`ChainWriter`] seals entries, [`verify_chain`]
//! checks a stored chain. Storage lives with the services.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::canonical::{self, CanonError, Domain};
use crate::keys::{KeyPair, PublicKey};

/// `prev_hash` of the first entry of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A chain began (records the writer and its key).
    ChainStart,
    /// A gate decision on a tool call (allow, constrain, deny, escalate).
    Decision,
    /// An escalated call became an approval request.
    Escalation,
    /// An operator voted on a request, or it expired.
    Approval,
    /// A grant was presented for redemption (accepted or refused).
    GrantUse,
    /// A tool call's outcome after execution.
    Result,
    /// A detection rule fired.
    Alert,
    /// The policy in force changed (or a change was refused).
    PolicyReload,
}

impl Kind {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChainStart => "chain_start",
            Kind::Decision => "decision",
            Kind::Escalation => "escalation",
            Kind::Approval => "approval",
            Kind::GrantUse => "grant_use",
            Kind::Result => "result",
            Kind::Alert => "alert",
            Kind::PolicyReload => "policy_reload",
        }
    }
}

/// What a caller records; the writer adds chain, sequence, time and link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Agent session id.
    #[serde(default)]
    pub session: String,
    /// The human acted for, or the operator who acted.
    #[serde(default)]
    pub subject: String,
    /// Behalf-of chain, current actor first.
    #[serde(default)]
    pub actors: Vec<String>,
    /// Tool name.
    #[serde(default)]
    pub tool: String,
    /// Arguments as executed (after any rewrite).
    #[serde(default)]
    pub args: Value,
    /// [`canonical::args_hash`] of tool and arguments, when there are any.
    #[serde(default)]
    pub args_hash: String,
    /// allow | constrain | deny | escalate | approve | ... (by kind).
    #[serde(default)]
    pub decision: String,
    /// Ids of the policy rules behind the decision.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Approval request id, if any.
    #[serde(default)]
    pub request_id: String,
    /// Grant id, if any.
    #[serde(default)]
    pub grant_id: String,
    /// Outcome status: ok | error | refused | pending ...
    #[serde(default)]
    pub status: String,
    /// Short human-readable detail.
    #[serde(default)]
    pub detail: String,
    /// What a policy decision rested on: the policy bundle's hash, the
    /// human, resource and context the rules saw, the shadow rules'
    /// verdict, and the arguments as sent when the policy rewrote them.
    /// Absent on entries the policy did not decide (and on entries written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<Value>,
}

/// A whole entry as hashed and signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Format version, 1.
    pub v: u32,
    /// Writer (chain) id.
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Unix ms when written.
    pub time_ms: i64,
    /// What it records.
    pub kind: Kind,
    /// The recorded facts.
    #[serde(flatten)]
    pub record: Record,
    /// Hash of the previous entry, or [`GENESIS`].
    pub prev_hash: String,
}

/// An entry in the form it is stored: its canonical text, hash and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Chain id.
    pub chain: String,
    /// Sequence number.
    pub seq: u64,
    /// Canonical JSON of the [`Entry`].
    pub body: String,
    /// Hex leaf hash of `body`.
    pub hash: String,
    /// Hex Ed25519 signature of the hash by the chain's key (entries of
    /// older logs only; checkpoints sign chains now).
    pub sig: String,
    /// Hex HMAC-SHA256 of the hash under a key only the chain's writer can
    /// derive ([`WriterMac`]): how a writer recognises its own entries, so it
    /// never adopts rows someone else inserted. Verifiers cannot check it and
    /// do not need to.
    #[serde(default)]
    pub mac: String,
}

impl Sealed {
    /// Parses the body (without verifying anything).
    pub fn entry(&self) -> Result<Entry, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// A signed statement by a chain's writer: "my chain had `seq` entries,
/// the last with hash `head`, at `time_ms`". Checkpoints link to the
/// previous checkpoint, so deleting one breaks the links; a checkpoint the
/// log no longer reaches proves the tail was truncated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version, 1.
    pub v: u32,
    /// Writer (chain) id.
    pub chain: String,
    /// Entries in the chain when signed (the head's sequence number).
    pub seq: u64,
    /// Hash of entry `seq`.
    pub head: String,
    /// Unix ms when signed.
    pub time_ms: i64,
    /// Hash of the previous checkpoint of the chain, or [`GENESIS`].
    pub prev: String,
    /// Entries the writer found in its chain that it did not write (rows
    /// inserted by someone else at its next positions). It never adopts
    /// them: its next entry follows them in position but links to its own
    /// head, and this signed statement names them for every verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign: Option<Span>,
    /// The writer stopped after signing this: any entry after `seq` that a
    /// later checkpoint does not cover was not written by it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// Positions `from..=to` of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    /// First position.
    pub from: u64,
    /// Last position.
    pub to: u64,
}

/// A checkpoint as stored: its canonical text, hash and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Canonical JSON of the checkpoint.
    pub body: String,
    /// Hex hash of `body` in the `zt/checkpoint/v1` domain.
    pub hash: String,
    /// Hex Ed25519 signature of the hash by the chain's key.
    pub sig: String,
}

impl SignedCheckpoint {
    /// Parses a stored checkpoint (without verifying anything).
    pub fn parse(body: &str, hash: &str, sig: &str) -> Result<SignedCheckpoint, serde_json::Error> {
        Ok(SignedCheckpoint {
            checkpoint: serde_json::from_str(body)?,
            body: body.to_owned(),
            hash: hash.to_owned(),
            sig: sig.to_owned(),
        })
    }

    /// Whether this is a well-formed checkpoint of `chain` (canonical body,
    /// matching hash) signed by `key`.
    pub fn is_signed_by(&self, chain: &str, key: &PublicKey) -> bool {
        let c = &self.checkpoint;
        if c.v != 1 || c.chain != chain {
            return false;
        }
        if canonical::canonical_of(c).ok().as_deref() != Some(self.body.as_str()) {
            return false;
        }
        let hash = canonical::digest(Domain::Checkpoint, self.body.as_bytes());
        if hex::encode(hash) != self.hash {
            return false;
        }
        let sig = hex::decode(&self.sig).unwrap_or_default();
        key.verify(Domain::Checkpoint, &hash, &sig).is_ok()
    }
}

/// The key a writer recognises its own entries by: HMAC-SHA256 keyed with a
/// secret derived from its private signing key, so only the holder of that
/// key can make or check one.
#[derive(Clone)]
pub struct WriterMac(Hmac<Sha256>);

impl std::fmt::Debug for WriterMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterMac(..)")
    }
}

impl WriterMac {
    /// The MAC key of the writer holding `key`.
    pub fn of(key: &KeyPair) -> WriterMac {
        let secret = key.derive(Domain::AuditMacKey);
        // HMAC takes a key of any length.
        let mac = Hmac::<Sha256>::new_from_slice(&secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
        WriterMac(mac)
    }

    fn tag(&self, hash_hex: &str) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(Domain::AuditMac.label().as_bytes());
        m.update(&[0u8]);
        m.update(hash_hex.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The MAC of an entry with hash `hash_hex`, in hex.
    pub fn mac(&self, hash_hex: &str) -> String {
        hex::encode(self.tag(hash_hex))
    }

    /// Whether `sealed` carries this writer's MAC (constant time).
    pub fn is_own(&self, sealed: &Sealed) -> bool {
        let Ok(tag) = hex::decode(&sealed.mac) else {
            return false;
        };
        let mut m = self.0.clone();
        m.update(Domain::AuditMac.label().as_bytes());
        m.update(&[0u8]);
        m.update(sealed.hash.as_bytes());
        m.verify_slice(&tag).is_ok()
    }
}

/// Where a writer resumes its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Its own last entry (sequence number and hash), if it wrote any.
    pub head: Option<(u64, String)>,
    /// The position its next entry takes (after its head, and after any
    /// foreign entries it quarantined).
    pub next_seq: u64,
    /// Its own latest checkpoint (hash, covered sequence number), if any.
    pub checkpoint: Option<(String, u64)>,
}

/// Appends to one chain. Not thread-safe by itself: the store serializes appends.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    chain: String,
    key: KeyPair,
    mac: WriterMac,
    next_seq: u64,
    head_seq: u64,
    head: String,
    last_checkpoint: String,
    covered: u64,
}

impl ChainWriter {
    /// A writer continuing `chain` after `last` (seq and hash), or from the
    /// start, whose latest checkpoint is `checkpoint` (its hash and seq).
    pub fn new(
        chain: String,
        key: KeyPair,
        last: Option<(u64, String)>,
        checkpoint: Option<(String, u64)>,
    ) -> ChainWriter {
        let next_seq = last.as_ref().map_or(1, |(seq, _)| seq + 1);
        ChainWriter::resume(
            chain,
            key,
            Resume {
                head: last,
                next_seq,
                checkpoint,
            },
        )
    }

    /// A writer resuming `chain` where `at` says.
    pub fn resume(chain: String, key: KeyPair, at: Resume) -> ChainWriter {
        let (head_seq, head) = at.head.unwrap_or_else(|| (0, GENESIS.to_owned()));
        let (last_checkpoint, covered) = at.checkpoint.unwrap_or_else(|| (GENESIS.to_owned(), 0));
        ChainWriter {
            chain,
            mac: WriterMac::of(&key),
            key,
            next_seq: at.next_seq.max(head_seq + 1),
            head_seq,
            head,
            last_checkpoint,
            covered,
        }
    }

    /// The chain id.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The public key checkpoints are signed with.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// How this writer recognises its own entries.
    pub fn writer_mac(&self) -> &WriterMac {
        &self.mac
    }

    /// The position the next entry takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries written after the latest checkpoint.
    pub fn uncovered(&self) -> u64 {
        self.head_seq.saturating_sub(self.covered)
    }

    /// Seals the next entry. The writer advances only through [`ChainWriter::advance`],
    /// called once the entry is durably stored, so a failed write leaves no gap.
    pub fn seal(&self, kind: Kind, record: Record, time_ms: i64) -> Result<Sealed, CanonError> {
        let entry = Entry {
            v: 1,
            chain: self.chain.clone(),
            seq: self.next_seq,
            time_ms,
            kind,
            record,
            prev_hash: self.head.clone(),
        };
        self.seal_entry(&entry)
    }

    fn seal_entry(&self, entry: &Entry) -> Result<Sealed, CanonError> {
        let body = canonical::canonical_of(entry)?;
        let hash = hex::encode(canonical::digest(Domain::AuditLeaf, body.as_bytes()));
        Ok(Sealed {
            chain: self.chain.clone(),
            seq: entry.seq,
            mac: self.mac.mac(&hash),
            body,
            hash,
            sig: String::new(),
        })
    }

    /// Seals again, at the writer's current position, an entry this writer
    /// sealed before but could not store (its position was taken).
    pub fn reseal(&self, sealed: &Sealed) -> Option<Sealed> {
        let mut entry: Entry = serde_json::from_str(&sealed.body).ok()?;
        entry.seq = self.next_seq;
        entry.prev_hash = self.head.clone();
        self.seal_entry(&entry).ok()
    }

    /// Moves the head past `sealed`, which must be the entry just sealed.
    pub fn advance(&mut self, sealed: &Sealed) {
        self.next_seq = sealed.seq + 1;
        self.head_seq = sealed.seq;
        self.head = sealed.hash.clone();
    }

    fn sign(&self, checkpoint: Checkpoint) -> Result<SignedCheckpoint, CanonError> {
        let body = canonical::canonical_of(&checkpoint)?;
        let hash = canonical::digest(Domain::Checkpoint, body.as_bytes());
        let sig = self.key.sign(Domain::Checkpoint, &hash);
        Ok(SignedCheckpoint {
            checkpoint,
            body,
            hash: hex::encode(hash),
            sig: hex::encode(sig),
        })
    }

    fn unsigned(&self, time_ms: i64) -> Checkpoint {
        Checkpoint {
            v: 1,
            chain: self.chain.clone(),
            seq: self.head_seq,
            head: self.head.clone(),
            time_ms,
            prev: self.last_checkpoint.clone(),
            foreign: None,
            closed: false,
        }
    }

    /// Signs a checkpoint over the current head. Like entries, it counts
    /// only once stored: then call [`ChainWriter::advance_checkpoint`].
    pub fn checkpoint(&self, time_ms: i64) -> Result<SignedCheckpoint, CanonError> {
        self.sign(self.unsigned(time_ms))
    }

    /// The checkpoint a writer signs when it stops.
    pub fn closing_checkpoint(&self, time_ms: i64) -> Result<SignedCheckpoint, CanonError> {
        self.sign(Checkpoint {
            closed: true,
            ..self.unsigned(time_ms)
        })
    }

    /// Signs a checkpoint over the current head that names `foreign`, the
    /// rows someone else stored at the writer's next positions. Once it is
    /// stored, [`ChainWriter::advance_checkpoint`] moves the writer past them.
    pub fn quarantine(&self, foreign: Span, time_ms: i64) -> Result<SignedCheckpoint, CanonError> {
        self.sign(Checkpoint {
            foreign: Some(foreign),
            ..self.unsigned(time_ms)
        })
    }

    /// Records that `cp` is stored.
    pub fn advance_checkpoint(&mut self, cp: &SignedCheckpoint) {
        self.last_checkpoint = cp.hash.clone();
        self.covered = cp.checkpoint.seq;
        if let Some(span) = cp.checkpoint.foreign {
            self.next_seq = self.next_seq.max(span.to + 1);
        }
    }
}

/// Why a chain failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A sequence number is missing (deleted entry, or a reorder).
    Gap,
    /// Stored sequence numbers repeat or go backwards (inserted or reordered).
    Order,
    /// The body is not a well-formed entry or checkpoint.
    Malformed,
    /// The stored hash is not the hash of the body (edited).
    Hash,
    /// The entry does not link to the previous entry's hash.
    Link,
    /// A signature does not verify with the pinned key.
    Signature,
    /// The body names another chain or sequence than its row.
    Misplaced,
    /// The entries do not match what a signed checkpoint says they were
    /// (rewritten and re-hashed by someone without the key).
    Checkpoint,
    /// A checkpoint is missing between two others, or checkpoints go back.
    CheckpointGap,
    /// A signed checkpoint covers entries the log no longer has.
    Truncated,
    /// The log is behind, or contradicts, a checkpoint this verifier
    /// trusted earlier (rolled back or replaced).
    Rollback,
    /// A chain that should be there is not.
    Missing,
    /// Entries older than a running writer would leave them were never
    /// covered by a signed checkpoint (appended by someone else, or left by
    /// a writer that crashed and never came back).
    Unsigned,
    /// Entries the chain's writer did not write: rows someone else stored
    /// at its positions (its signed checkpoint names them), or after it had
    /// stopped.
    Foreign,
    /// An entry's time is in the future, or earlier than the entry before
    /// it, by more than [`MAX_SKEW_MS`].
    Time,
}

impl Problem {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Gap => "gap",
            Problem::Order => "order",
            Problem::Malformed => "malformed",
            Problem::Hash => "hash",
            Problem::Link => "link",
            Problem::Signature => "signature",
            Problem::Misplaced => "misplaced",
            Problem::Checkpoint => "checkpoint",
            Problem::CheckpointGap => "checkpoint_gap",
            Problem::Truncated => "truncated",
            Problem::Rollback => "rollback",
            Problem::Missing => "missing",
            Problem::Unsigned => "unsigned",
            Problem::Foreign => "foreign",
            Problem::Time => "time",
        }
    }
}

/// The first bad entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Chain id.
    pub chain: String,
    /// The sequence number at which verification failed.
    pub seq: u64,
    /// What is wrong.
    pub problem: Problem,
    /// A sentence for the auditor.
    pub detail: String,
}

/// A checkpoint a verifier accepted, kept to compare the next run against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// Entries covered.
    pub seq: u64,
    /// Hash of entry `seq`.
    pub head: String,
    /// When the writer signed it.
    pub time_ms: i64,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Chain id.
    pub chain: String,
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// The latest verified checkpoint (what a verifier trusts next time).
    pub latest: Option<Trusted>,
    /// Entries after the latest checkpoint: protected by the hash chain
    /// only until the writer's next checkpoint signs them (normally within
    /// a second while the writer runs).
    pub unsigned_tail: u64,
    /// The first entry read: 1, or the entry of the checkpoint trusted
    /// earlier when only what came after it was checked
    /// ([`ChainVerifier::resume`]).
    #[serde(default = "first_seq")]
    pub checked_from: u64,
}

fn first_seq() -> u64 {
    1
}

/// One stored entry, borrowed from what the store returned.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// Chain id.
    pub chain: &'a str,
    /// Sequence number.
    pub seq: u64,
    /// Canonical body.
    pub body: &'a str,
    /// Stored hash (hex).
    pub hash: &'a str,
    /// Stored signature (hex; empty for entries covered by checkpoints).
    pub sig: &'a str,
}

/// A 32-byte hash from its lowercase hex form (the only form a writer stores).
fn hash_bytes(hex_text: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = hex_text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[derive(Deserialize)]
struct Link<'a> {
    #[serde(borrow)]
    chain: std::borrow::Cow<'a, str>,
    seq: u64,
    time_ms: i64,
    #[serde(borrow)]
    prev_hash: std::borrow::Cow<'a, str>,
}

/// Verifies one chain entry by entry, so a log of any length streams
/// through in constant memory.
///
/// The checkpoints are verified first ([`ChainVerifier::new`]): signatures
/// against the pinned key, links between checkpoints, and order. Then each
/// entry is recomputed and linked, and compared with every checkpoint at
/// its sequence number; [`ChainVerifier::finish`] checks that the log
/// reaches every checkpoint and the verifier's trusted one.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    chain: String,
    key: &'k PublicKey,
    expected: u64,
    prev: [u8; 32],
    heads: std::collections::VecDeque<(u64, [u8; 32])>,
    latest: Option<Trusted>,
    checkpoints: u64,
    trusted: Option<Trusted>,
    signed_through: u64,
    first_unsigned_time: i64,
    now_ms: i64,
    prev_time: i64,
    /// The first span of foreign entries a signed checkpoint names.
    foreign: Option<(Span, i64)>,
    /// The latest checkpoint's position, when its writer had stopped.
    closed_at: Option<u64>,
    /// Where reading starts; the first entry read is not linked to its
    /// predecessor (unread) but must be the trusted head.
    from: u64,
}

/// How far an entry's time may lie in the verifier's future, or before the
/// entry preceding it (a clock stepped back), before it is a finding.
pub const MAX_SKEW_MS: i64 = 60_000;

/// How long entries may wait for a checkpoint before the verifier calls
/// them unsigned: a running writer signs within a second and heartbeats
/// every 30 s, so two minutes leaves room for clock skew and slow disks.
pub const UNSIGNED_GRACE_MS: i64 = 120_000;

impl<'k> ChainVerifier<'k> {
    /// Starts verifying `chain` with its stored checkpoints (in stored
    /// order) and the checkpoint this verifier trusted last time, if any;
    /// `now_ms` is the verifier's clock.
    pub fn new(
        chain: &str,
        key: &'k PublicKey,
        checkpoints: &[SignedCheckpoint],
        trusted: Option<Trusted>,
        now_ms: i64,
    ) -> Result<ChainVerifier<'k>, Finding> {
        Self::build(chain, key, checkpoints, GENESIS, trusted, now_ms, 1)
    }

    /// Starts verifying `chain` from the checkpoint this verifier trusted
    /// earlier (verified then, in full or from an earlier trusted one):
    /// `checkpoints` are the stored ones from `trusted.seq` on. The trusted
    /// checkpoint must still be stored as it was, the entry it covers must
    /// still have its hash, and everything after is checked as in a full
    /// run. Entries before it are not read: a full run re-checks them.
    pub fn resume(
        chain: &str,
        key: &'k PublicKey,
        checkpoints: &[SignedCheckpoint],
        trusted: Trusted,
        now_ms: i64,
    ) -> Result<ChainVerifier<'k>, Finding> {
        let at = checkpoints.iter().position(|cp| {
            let c = &cp.checkpoint;
            c.seq == trusted.seq && c.head == trusted.head && c.time_ms == trusted.time_ms
        });
        let Some(at) = at else {
            return Err(Finding {
                chain: chain.to_owned(),
                seq: trusted.seq,
                problem: Problem::Rollback,
                detail: format!(
                    "the checkpoint this verifier trusted at #{} is no longer stored (the log was replaced or rolled back)",
                    trusted.seq
                ),
            });
        };
        let prev = checkpoints[at].checkpoint.prev.clone();
        let from = trusted.seq.max(1);
        Self::build(
            chain,
            key,
            &checkpoints[at..],
            &prev,
            Some(trusted),
            now_ms,
            from,
        )
    }

    fn build(
        chain: &str,
        key: &'k PublicKey,
        checkpoints: &[SignedCheckpoint],
        prev_checkpoint: &str,
        trusted: Option<Trusted>,
        now_ms: i64,
        from: u64,
    ) -> Result<ChainVerifier<'k>, Finding> {
        let fail = |seq: u64, problem: Problem, detail: String| Finding {
            chain: chain.to_owned(),
            seq,
            problem,
            detail,
        };
        let mut prev = prev_checkpoint.to_owned();
        let mut last: Option<&Checkpoint> = None;
        let mut heads: Vec<(u64, String)> = Vec::new();
        let mut foreign: Option<(Span, i64)> = None;
        for cp in checkpoints {
            let c = &cp.checkpoint;
            let canonical = canonical::canonical_of(c).ok();
            if canonical.as_deref() != Some(cp.body.as_str()) || c.v != 1 {
                return Err(fail(
                    c.seq,
                    Problem::Malformed,
                    "checkpoint body is not canonical (edited)".into(),
                ));
            }
            if c.chain != chain {
                return Err(fail(
                    c.seq,
                    Problem::Misplaced,
                    format!("checkpoint names chain {}", c.chain),
                ));
            }
            let hash = canonical::digest(Domain::Checkpoint, cp.body.as_bytes());
            if hex::encode(hash) != cp.hash {
                return Err(fail(
                    c.seq,
                    Problem::Hash,
                    "stored checkpoint hash does not match its contents (edited)".into(),
                ));
            }
            let sig = hex::decode(&cp.sig).unwrap_or_default();
            if key.verify(Domain::Checkpoint, &hash, &sig).is_err() {
                return Err(fail(
                    c.seq,
                    Problem::Signature,
                    format!(
                        "checkpoint at #{} is not signed by pinned key {} (forged or wrong key)",
                        c.seq,
                        key.kid()
                    ),
                ));
            }
            if c.prev != prev {
                return Err(fail(
                    c.seq,
                    Problem::CheckpointGap,
                    format!(
                        "checkpoint at #{} does not follow the previous stored checkpoint (one was removed or reordered)",
                        c.seq
                    ),
                ));
            }
            if let Some(l) = last
                && (c.seq < l.seq || c.time_ms.saturating_add(MAX_SKEW_MS) < l.time_ms)
            {
                return Err(fail(
                    c.seq,
                    Problem::CheckpointGap,
                    format!("checkpoint at #{} goes back from #{}", c.seq, l.seq),
                ));
            }
            if c.seq > 0 {
                match heads.last() {
                    Some((s, h)) if *s == c.seq && *h != c.head => {
                        return Err(fail(
                            c.seq,
                            Problem::Checkpoint,
                            format!("two signed checkpoints disagree about entry #{}", c.seq),
                        ));
                    }
                    Some((s, _)) if *s == c.seq => {}
                    _ => heads.push((c.seq, c.head.clone())),
                }
            }
            if let Some(span) = c.foreign
                && foreign.is_none_or(|(f, _): (Span, i64)| span.from < f.from)
            {
                foreign = Some((span, c.time_ms));
            }
            prev = cp.hash.clone();
            last = Some(c);
        }
        Ok(ChainVerifier {
            chain: chain.to_owned(),
            key,
            expected: from,
            prev: [0; 32],
            heads: heads
                .into_iter()
                .map(|(seq, head)| (seq, hash_bytes(&head).unwrap_or([0xff; 32])))
                .collect(),
            latest: last.map(|c| Trusted {
                seq: c.seq,
                head: c.head.clone(),
                time_ms: c.time_ms,
            }),
            checkpoints: checkpoints.len() as u64,
            trusted,
            signed_through: last.map_or(0, |c| c.seq),
            first_unsigned_time: 0,
            now_ms,
            prev_time: i64::MIN,
            foreign,
            closed_at: last.filter(|c| c.closed).map(|c| c.seq),
            from,
        })
    }

    fn fail(&self, seq: u64, problem: Problem, detail: String) -> Finding {
        Finding {
            chain: self.chain.clone(),
            seq,
            problem,
            detail,
        }
    }

    /// Checks the next stored entry.
    pub fn push(&mut self, s: &Sealed) -> Result<(), Finding> {
        self.push_stored(&Stored {
            chain: &s.chain,
            seq: s.seq,
            body: &s.body,
            hash: &s.hash,
            sig: &s.sig,
        })
    }

    /// [`ChainVerifier::push`] for an entry as read from the store,
    /// borrowed (nothing is copied per entry).
    pub fn push_stored(&mut self, s: &Stored<'_>) -> Result<(), Finding> {
        let expected = self.expected;
        if s.seq != expected {
            return Err(if s.seq > expected {
                self.fail(
                    expected,
                    Problem::Gap,
                    format!("entry #{expected} is missing (next stored is #{})", s.seq),
                )
            } else {
                self.fail(
                    s.seq,
                    Problem::Order,
                    format!("entry #{} appears again after #{}", s.seq, expected - 1),
                )
            });
        }
        if let Some((span, when)) = self.foreign
            && s.seq >= span.from
        {
            return Err(self.fail(
                span.from,
                Problem::Foreign,
                format!(
                    "entries #{}..#{} were stored by someone without the writer's key: the writer found them at its next positions, never adopted them, and named them in its checkpoint signed at {when} ms",
                    span.from, span.to
                ),
            ));
        }
        if let Some(closed) = self.closed_at
            && s.seq > closed
        {
            return Err(self.fail(
                s.seq,
                Problem::Foreign,
                format!(
                    "entry #{} was stored after the writer's closing checkpoint at #{closed} (it had stopped, so someone else wrote it)",
                    s.seq
                ),
            ));
        }
        let link: Link<'_> = serde_json::from_str(s.body).map_err(|_| {
            self.fail(
                s.seq,
                Problem::Malformed,
                "body is not a well-formed entry".into(),
            )
        })?;
        if link.chain != self.chain || link.seq != s.seq || s.chain != self.chain {
            return Err(self.fail(
                s.seq,
                Problem::Misplaced,
                format!("body says chain {} #{}", link.chain, link.seq),
            ));
        }
        let hash = canonical::digest(Domain::AuditLeaf, s.body.as_bytes());
        if hash_bytes(s.hash) != Some(hash) {
            return Err(self.fail(
                s.seq,
                Problem::Hash,
                "stored hash does not match the entry's contents (edited)".into(),
            ));
        }
        // The first entry of a resumed run links to one not read; the
        // trusted head's check below pins it instead.
        let linked = s.seq == 1 || s.seq > self.from;
        if linked && hash_bytes(&link.prev_hash) != Some(self.prev) {
            return Err(self.fail(
                s.seq,
                Problem::Link,
                "entry does not link to the previous entry's hash (edited, inserted or re-hashed)"
                    .into(),
            ));
        }
        if link.time_ms > self.now_ms.saturating_add(MAX_SKEW_MS) {
            return Err(self.fail(
                s.seq,
                Problem::Time,
                format!(
                    "entry #{} is dated {} ms, after this verifier's clock ({} ms): no writer stores entries from the future",
                    s.seq, link.time_ms, self.now_ms
                ),
            ));
        }
        if link.time_ms.saturating_add(MAX_SKEW_MS) < self.prev_time {
            return Err(self.fail(
                s.seq,
                Problem::Time,
                format!(
                    "entry #{} is dated {} ms, earlier than the entry before it ({} ms)",
                    s.seq, link.time_ms, self.prev_time
                ),
            ));
        }
        self.prev_time = self.prev_time.max(link.time_ms);
        // Entries of older logs carry their own signature.
        if !s.sig.is_empty() {
            let sig = hex::decode(s.sig).unwrap_or_default();
            if self.key.verify(Domain::AuditLeaf, &hash, &sig).is_err() {
                return Err(self.fail(
                    s.seq,
                    Problem::Signature,
                    format!(
                        "signature does not verify with pinned key {}",
                        self.key.kid()
                    ),
                ));
            }
            self.signed_through = self.signed_through.max(s.seq);
        }
        while let Some((seq, head)) = self.heads.front() {
            if *seq > s.seq {
                break;
            }
            if *head != hash {
                return Err(self.fail(
                    s.seq,
                    Problem::Checkpoint,
                    format!(
                        "entries up to #{} differ from what the writer signed in a checkpoint (rewritten)",
                        s.seq
                    ),
                ));
            }
            self.heads.pop_front();
        }
        if let Some(t) = &self.trusted
            && t.seq == s.seq
            && hash_bytes(&t.head) != Some(hash)
        {
            return Err(self.fail(
                s.seq,
                Problem::Rollback,
                format!(
                    "entry #{} differs from the checkpoint this verifier trusted earlier (the log was replaced)",
                    s.seq
                ),
            ));
        }
        if s.seq == self.signed_through + 1 {
            self.first_unsigned_time = link.time_ms;
        }
        self.prev = hash;
        self.expected += 1;
        Ok(())
    }

    /// Ends the chain: every checkpoint and the trusted one must be
    /// reached, and entries not covered by a checkpoint must be recent
    /// (younger than [`UNSIGNED_GRACE_MS`] at the verifier's clock).
    pub fn finish(self) -> Result<Verified, Finding> {
        let now_ms = self.now_ms;
        let entries = self.expected - 1;
        if let Some((seq, _)) = self.heads.front() {
            return Err(self.fail(
                entries + 1,
                Problem::Truncated,
                format!(
                    "a signed checkpoint covers #{seq} but the log ends at #{entries}: its tail was truncated"
                ),
            ));
        }
        if let Some(t) = &self.trusted {
            if t.seq > entries {
                return Err(self.fail(
                    entries + 1,
                    Problem::Rollback,
                    format!(
                        "this verifier trusted #{} earlier but the log ends at #{entries}: rolled back or truncated",
                        t.seq
                    ),
                ));
            }
            if let Some(l) = &self.latest
                && l.time_ms < t.time_ms
            {
                return Err(self.fail(
                    l.seq,
                    Problem::Rollback,
                    "the latest checkpoint is older than one this verifier trusted earlier: rolled back".into(),
                ));
            }
        }
        let unsigned_tail = entries.saturating_sub(self.signed_through);
        if unsigned_tail > 0 && now_ms.saturating_sub(self.first_unsigned_time) > UNSIGNED_GRACE_MS
        {
            return Err(self.fail(
                self.signed_through + 1,
                Problem::Unsigned,
                format!(
                    "entries #{}..#{entries} were never covered by a signed checkpoint (appended by someone without the key, or left by a writer that stopped abnormally)",
                    self.signed_through + 1
                ),
            ));
        }
        Ok(Verified {
            chain: self.chain,
            entries,
            head: hex::encode(self.prev),
            checkpoints: self.checkpoints,
            latest: self.latest,
            unsigned_tail,
            checked_from: self.from,
        })
    }
}

/// Verifies the stored entries of `chain`, in stored order, against its
/// pinned `key`, its stored checkpoints, and what this verifier trusted.
pub fn verify_chain<'a>(
    chain: &str,
    entries: impl IntoIterator<Item = &'a Sealed>,
    checkpoints: &[SignedCheckpoint],
    key: &PublicKey,
    trusted: Option<Trusted>,
    now_ms: i64,
) -> Result<Verified, Finding> {
    let mut v = ChainVerifier::new(chain, key, checkpoints, trusted, now_ms)?;
    for s in entries {
        v.push(s)?;
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Now" for the verifier: a little after the test entries were written.
    const NOW: i64 = 1_700_000_060_000;

    struct Log {
        key: KeyPair,
        entries: Vec<Sealed>,
        checkpoints: Vec<SignedCheckpoint>,
    }

    /// `n` entries with a checkpoint after every `every`.
    fn chain(n: u64, every: u64) -> Log {
        let key = KeyPair::from_seed(&[8; 32]);
        let mut w = ChainWriter::new("broker-1".into(), key.clone(), None, None);
        let mut entries = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..n {
            let rec = Record {
                session: "sess_1".into(),
                tool: "issue_refund".into(),
                args: serde_json::json!({"order_id": "ord_1", "amount": 100 + i}),
                decision: "allow".into(),
                ..Record::default()
            };
            let s = w
                .seal(Kind::Decision, rec, 1_700_000_000_000 + i as i64)
                .unwrap();
            w.advance(&s);
            entries.push(s);
            if (i + 1) % every == 0 {
                let cp = w.checkpoint(1_700_000_000_000 + i as i64).unwrap();
                w.advance_checkpoint(&cp);
                checkpoints.push(cp);
            }
        }
        Log {
            key,
            entries,
            checkpoints,
        }
    }

    fn problem(log: &Log, trusted: Option<Trusted>) -> Option<(u64, Problem)> {
        verify_chain(
            "broker-1",
            &log.entries,
            &log.checkpoints,
            &log.key.public(),
            trusted,
            NOW,
        )
        .err()
        .map(|f| (f.seq, f.problem))
    }

    fn rehash_from(entries: &mut [Sealed], from: usize) {
        let mut prev = entries[from - 1].hash.clone();
        for e in &mut entries[from..] {
            let mut entry = e.entry().unwrap();
            entry.prev_hash = prev;
            e.body = canonical::canonical_of(&entry).unwrap();
            e.hash = canonical::digest_hex(Domain::AuditLeaf, e.body.as_bytes());
            prev = e.hash.clone();
        }
    }

    /// Verifies `log` from the checkpoint `t` on, as a resumed run reads
    /// it: the checkpoints from `t.seq`, the entries from `t.seq`.
    fn resumed(log: &Log, t: &Trusted) -> Result<Verified, Finding> {
        let key = log.key.public();
        let cps: Vec<SignedCheckpoint> = log
            .checkpoints
            .iter()
            .filter(|c| c.checkpoint.seq >= t.seq)
            .cloned()
            .collect();
        let mut v = ChainVerifier::resume("broker-1", &key, &cps, t.clone(), NOW)?;
        for s in log.entries.iter().filter(|e| e.seq >= t.seq) {
            v.push(s)?;
        }
        v.finish()
    }

    #[test]
    fn a_resumed_run_checks_what_came_after_the_trusted_checkpoint() {
        let mut log = chain(30, 4);
        let first = verify_chain(
            "broker-1",
            &log.entries[..20],
            &log.checkpoints[..5],
            &log.key.public(),
            None,
            NOW,
        )
        .unwrap();
        let t = first.latest.clone().unwrap();
        assert_eq!(t.seq, 20);

        let v = resumed(&log, &t).unwrap();
        assert_eq!((v.entries, v.checked_from), (30, 20));
        assert_eq!(v.head, log.entries[29].hash);
        // The full run agrees.
        let full = verify_chain(
            "broker-1",
            &log.entries,
            &log.checkpoints,
            &log.key.public(),
            Some(t.clone()),
            NOW,
        )
        .unwrap();
        assert_eq!((full.entries, full.head.clone()), (v.entries, v.head));

        // Entry #25 edited after the trusted checkpoint and the chain
        // re-hashed to the end: the next signed checkpoint (#28) disagrees.
        let mut edited = chain(30, 4);
        edited.entries[24].body = edited.entries[24]
            .body
            .replace("issue_refund", "change_plan");
        rehash_from(&mut edited.entries, 24);
        let f = resumed(&edited, &t).unwrap_err();
        assert_eq!((f.seq, f.problem), (28, Problem::Checkpoint));
        // Edited without re-hashing: named at the entry.
        let mut edited = chain(30, 4);
        edited.entries[24].body = edited.entries[24]
            .body
            .replace("issue_refund", "change_plan");
        let f = resumed(&edited, &t).unwrap_err();
        assert_eq!((f.seq, f.problem), (25, Problem::Hash));

        // The trusted entry itself replaced and everything after it
        // re-hashed: the trusted checkpoint, still stored, disagrees.
        let mut other = chain(30, 4);
        other.entries[19].body = other.entries[19]
            .body
            .replace("\"amount\":119", "\"amount\":1");
        other.entries[19].hash =
            canonical::digest_hex(Domain::AuditLeaf, other.entries[19].body.as_bytes());
        rehash_from(&mut other.entries, 20);
        let f = resumed(&other, &t).unwrap_err();
        assert_eq!((f.seq, f.problem), (20, Problem::Checkpoint));

        // The trusted checkpoint gone: a rollback, named at its position.
        let mut gone = chain(30, 4);
        gone.checkpoints.remove(4);
        let f = resumed(&gone, &t).unwrap_err();
        assert_eq!((f.seq, f.problem), (20, Problem::Rollback));

        // A gap after the trusted head is still a gap.
        log.entries.remove(22);
        let f = resumed(&log, &t).unwrap_err();
        assert_eq!((f.seq, f.problem), (23, Problem::Gap));
    }

    #[test]
    fn intact_chain_verifies() {
        let log = chain(10, 4);
        let v = verify_chain(
            "broker-1",
            &log.entries,
            &log.checkpoints,
            &log.key.public(),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(v.entries, 10);
        assert_eq!(v.head, log.entries[9].hash);
        assert_eq!(v.checkpoints, 2);
        assert_eq!(v.unsigned_tail, 2);
        assert_eq!(v.latest.as_ref().map(|t| t.seq), Some(8));

        // The same uncovered tail long after: no running writer leaves that.
        let later = NOW + UNSIGNED_GRACE_MS;
        let f = verify_chain(
            "broker-1",
            &log.entries,
            &log.checkpoints,
            &log.key.public(),
            None,
            later,
        )
        .unwrap_err();
        assert_eq!((f.seq, f.problem), (9, Problem::Unsigned));
    }

    #[test]
    fn each_tamper_is_named() {
        let log = chain(10, 4);
        let with = |f: &dyn Fn(&mut Log)| {
            let mut l = Log {
                key: log.key.clone(),
                entries: log.entries.clone(),
                checkpoints: log.checkpoints.clone(),
            };
            f(&mut l);
            problem(&l, None)
        };

        let edited = with(&|l| {
            l.entries[2].body = l.entries[2]
                .body
                .replace("\"amount\":102", "\"amount\":999");
        });
        assert_eq!(edited, Some((3, Problem::Hash)));
        assert_eq!(
            with(&|l| {
                l.entries.remove(1);
            }),
            Some((2, Problem::Gap))
        );
        assert_eq!(with(&|l| l.entries.swap(1, 2)), Some((2, Problem::Gap)));
        let dup = log.entries[1].clone();
        assert_eq!(
            with(&|l| l.entries.insert(2, dup.clone())),
            Some((2, Problem::Order))
        );

        // Rewritten and re-hashed by someone without the key: the chain
        // recomputes, but the signed checkpoint at #4 says otherwise.
        let rewritten = with(&|l| {
            l.entries[2].body = l.entries[2]
                .body
                .replace("\"amount\":102", "\"amount\":999");
            l.entries[2].hash =
                canonical::digest_hex(Domain::AuditLeaf, l.entries[2].body.as_bytes());
            rehash_from(&mut l.entries, 3);
        });
        assert_eq!(rewritten, Some((4, Problem::Checkpoint)));

        // The tail cut back to #6: the checkpoint at #8 is not reached.
        assert_eq!(
            with(&|l| l.entries.truncate(6)),
            Some((7, Problem::Truncated))
        );

        // A checkpoint removed, or signed by another key.
        assert_eq!(
            with(&|l| {
                l.checkpoints.remove(0);
            }),
            Some((8, Problem::CheckpointGap))
        );
        let other = KeyPair::from_seed(&[9; 32]);
        let mut w = ChainWriter::new(
            "broker-1".into(),
            other,
            Some((10, log.entries[9].hash.clone())),
            None,
        );
        let forged = w.checkpoint(1_800_000_000_000).unwrap();
        w.advance_checkpoint(&forged);
        assert_eq!(
            with(&|l| l.checkpoints.push(forged.clone())),
            Some((10, Problem::Signature))
        );
    }

    #[test]
    fn a_verifier_remembers_what_it_trusted() {
        let log = chain(12, 4);
        let v = verify_chain(
            "broker-1",
            &log.entries,
            &log.checkpoints,
            &log.key.public(),
            None,
            NOW,
        )
        .unwrap();
        let trusted = v.latest.clone();
        assert_eq!(trusted.as_ref().map(|t| t.seq), Some(12));

        // Rolled back to an older copy of the log (8 entries, 2 checkpoints),
        // which is intact on its own.
        let mut old = chain(8, 4);
        assert_eq!(problem(&old, None), None);
        assert_eq!(problem(&old, trusted.clone()), Some((9, Problem::Rollback)));

        // Replaced by a different log of the same length: it contradicts.
        old = chain(12, 4);
        old.entries[11].body = old.entries[11]
            .body
            .replace("\"amount\":111", "\"amount\":1");
        old.entries[11].hash =
            canonical::digest_hex(Domain::AuditLeaf, old.entries[11].body.as_bytes());
        old.checkpoints.pop();
        assert_eq!(problem(&old, trusted), Some((12, Problem::Rollback)));
    }
}
