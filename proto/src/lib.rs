//! # zt-proto: the formats that cross a trust boundary
//!
//! Every byte that one trust domain hands to another is defined here and
//! nowhere else: the gRPC contract of the approval service ([`pb`]), the
//! session, operator and service tokens ([`token`]), the signed one-time
//! grant ([`grant`]), the broker's built-in tools ([`builtin`]), the audit
//! entry and its chain ([`audit`]), and the canonical encoding and
//! domain-separated hashing they all share ([`canonical`]).
//!
//! Why one crate: a format defined twice drifts, and a drifted format in a
//! security boundary is a bypass. The broker and the approval service both
//! link this crate, so a grant the approval service signs is checked by the
//! broker with the very code that defined it.
//!
//! This crate decides nothing and holds no secret of its own. Its only IO is
//! reading and writing key files and the stack layout ([`keys`], [`stack`]),
//! so every service stores them the same way (private keys `0600`), and, with
//! the `store` feature, the SQL storage of audit chains ([`store`]) — the
//! on-disk format writers and the auditor's verifier share.

pub mod audit;
pub mod builtin;
pub mod canonical;
#[cfg(feature = "store")]
pub mod db;
pub mod flood;
pub mod grant;
pub mod grpc;
pub mod keys;
pub mod money;
pub mod pinned;
#[cfg(feature = "http")]
pub mod serve;
pub mod stack;
#[cfg(feature = "store")]
pub mod store;
pub mod time;
pub mod token;

/// Generated gRPC types and tonic client/server for `zt.v1.Approval`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("zt.v1");
}

/// An attacker-chosen name, bounded and printable, for messages and the audit trail.
pub fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A random identifier: `prefix` followed by 16 random bytes in hex.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    // getrandom only fails when the OS has no entropy source; an id must not
    // silently become predictable, so fall back to hashing time and address.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = format!("{}{:p}", now_ms(), &bytes);
        let d = canonical::digest(canonical::Domain::Id, seed.as_bytes());
        bytes.copy_from_slice(&d[..16]);
    }
    format!("{prefix}{}", hex::encode(bytes))
}
