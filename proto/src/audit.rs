//! Audit entries and their hash chains.
//!
//! Each writer (a broker, an approval service) appends to its own chain with
//! its own Ed25519 key, so writers never contend. An entry's hash is SHA-256
//! over its canonical JSON in the `zt/audit-leaf/v1` domain; the entry
//! carries the previous entry's hash, and the writer signs every entry hash.
//! Editing, deleting, inserting or reordering entries therefore breaks the
//! recomputation, and re-signing needs the writer's private key, which only
//! the writer holds.
//!
//! This module is pure: [`ChainWriter`] seals entries, [`verify_chain`]
//! checks a stored chain. Storage lives with the services.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Hex Ed25519 signature of the hash by the chain's key.
    pub sig: String,
}

impl Sealed {
    /// Parses the body (without verifying anything).
    pub fn entry(&self) -> Result<Entry, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Appends to one chain. Not thread-safe by itself: the store serializes appends.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    chain: String,
    key: KeyPair,
    next_seq: u64,
    head: String,
}

impl ChainWriter {
    /// A writer continuing `chain` after `last` (seq and hash), or from the start.
    pub fn new(chain: String, key: KeyPair, last: Option<(u64, String)>) -> ChainWriter {
        let (next_seq, head) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        ChainWriter {
            chain,
            key,
            next_seq,
            head,
        }
    }

    /// The chain id.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The public key entries are signed with.
    pub fn public(&self) -> PublicKey {
        self.key.public()
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
        let body = canonical::canonical_of(&entry)?;
        let hash = canonical::digest(Domain::AuditLeaf, body.as_bytes());
        let sig = self.key.sign(Domain::AuditLeaf, &hash);
        Ok(Sealed {
            chain: self.chain.clone(),
            seq: entry.seq,
            body,
            hash: hex::encode(hash),
            sig: hex::encode(sig),
        })
    }

    /// Moves the head past `sealed`, which must be the entry just sealed.
    pub fn advance(&mut self, sealed: &Sealed) {
        self.next_seq = sealed.seq + 1;
        self.head = sealed.hash.clone();
    }
}

/// Why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A sequence number is missing (deleted entry, or a reorder).
    Gap,
    /// Stored sequence numbers repeat or go backwards (inserted or reordered).
    Order,
    /// The body is not the canonical text of a well-formed entry.
    Malformed,
    /// The stored hash is not the hash of the body (edited).
    Hash,
    /// The entry does not link to the previous entry's hash.
    Link,
    /// The signature does not verify with the pinned key.
    Signature,
    /// The body names another chain or sequence than its row.
    Misplaced,
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

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Chain id.
    pub chain: String,
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
}

/// Verifies the stored entries of `chain`, in stored order, against its pinned `key`.
pub fn verify_chain<'a>(
    chain: &str,
    entries: impl IntoIterator<Item = &'a Sealed>,
    key: &PublicKey,
) -> Result<Verified, Finding> {
    let mut expected = 1u64;
    let mut prev = GENESIS.to_owned();
    let fail = |seq: u64, problem: Problem, detail: String| Finding {
        chain: chain.to_owned(),
        seq,
        problem,
        detail,
    };
    for s in entries {
        if s.seq != expected {
            return Err(if s.seq > expected {
                fail(
                    expected,
                    Problem::Gap,
                    format!("entry #{expected} is missing (next stored is #{})", s.seq),
                )
            } else {
                fail(
                    s.seq,
                    Problem::Order,
                    format!("entry #{} appears again after #{}", s.seq, expected - 1),
                )
            });
        }
        let entry: Entry = serde_json::from_str(&s.body).map_err(|_| {
            fail(
                s.seq,
                Problem::Malformed,
                "body is not a well-formed entry".into(),
            )
        })?;
        match canonical::canonical_of(&entry) {
            Ok(c) if c == s.body => {}
            _ => {
                return Err(fail(
                    s.seq,
                    Problem::Malformed,
                    "body is not in canonical form (edited)".into(),
                ));
            }
        }
        if entry.chain != chain || entry.seq != s.seq || s.chain != chain {
            return Err(fail(
                s.seq,
                Problem::Misplaced,
                format!("body says chain {} #{}", entry.chain, entry.seq),
            ));
        }
        let hash = canonical::digest(Domain::AuditLeaf, s.body.as_bytes());
        if hex::encode(hash) != s.hash {
            return Err(fail(
                s.seq,
                Problem::Hash,
                "stored hash does not match the entry's contents (edited)".into(),
            ));
        }
        if entry.prev_hash != prev {
            return Err(fail(
                s.seq,
                Problem::Link,
                "entry does not link to the previous entry's hash".into(),
            ));
        }
        let sig = hex::decode(&s.sig).unwrap_or_default();
        if key.verify(Domain::AuditLeaf, &hash, &sig).is_err() {
            return Err(fail(
                s.seq,
                Problem::Signature,
                format!("signature does not verify with pinned key {}", key.kid()),
            ));
        }
        prev = s.hash.clone();
        expected += 1;
    }
    Ok(Verified {
        chain: chain.to_owned(),
        entries: expected - 1,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (KeyPair, Vec<Sealed>) {
        let key = KeyPair::from_seed(&[8; 32]);
        let mut w = ChainWriter::new("broker-1".into(), key.clone(), None);
        let mut out = Vec::new();
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
            out.push(s);
        }
        (key, out)
    }

    fn problem(entries: &[Sealed], key: &KeyPair) -> Option<(u64, Problem)> {
        verify_chain("broker-1", entries, &key.public())
            .err()
            .map(|f| (f.seq, f.problem))
    }

    #[test]
    fn intact_chain_verifies() {
        let (key, entries) = chain(5);
        let v = verify_chain("broker-1", &entries, &key.public()).unwrap();
        assert_eq!(v.entries, 5);
        assert_eq!(v.head, entries[4].hash);
    }

    #[test]
    fn each_tamper_is_named() {
        let (key, entries) = chain(5);

        let mut edited = entries.clone();
        edited[2].body = edited[2].body.replace("\"amount\":102", "\"amount\":999");
        assert_eq!(problem(&edited, &key), Some((3, Problem::Hash)));

        let mut deleted = entries.clone();
        deleted.remove(1);
        assert_eq!(problem(&deleted, &key), Some((2, Problem::Gap)));

        let mut reordered = entries.clone();
        reordered.swap(1, 2);
        assert_eq!(problem(&reordered, &key), Some((2, Problem::Gap)));

        let mut inserted = entries.clone();
        inserted.insert(2, entries[1].clone());
        assert_eq!(problem(&inserted, &key), Some((2, Problem::Order)));

        // Re-hashed by someone without the key: the link and signature catch it.
        let mut rehashed = entries.clone();
        rehashed[2].body = rehashed[2].body.replace("\"amount\":102", "\"amount\":999");
        rehashed[2].hash = canonical::digest_hex(Domain::AuditLeaf, rehashed[2].body.as_bytes());
        assert_eq!(problem(&rehashed, &key), Some((3, Problem::Signature)));

        let other = KeyPair::from_seed(&[9; 32]);
        assert_eq!(problem(&entries, &other), Some((1, Problem::Signature)));
    }
}
