//! The signed one-time grant.
//!
//! When operators approve an escalated call, the approval service signs a
//! grant bound to that exact call: the request id, the tool, the hash of the
//! canonical arguments, the session and the human, the approvers, a nonce
//! and an expiry of at most [`MAX_GRANT_TTL_MS`]. The broker verifies the
//! signature with the approval service's pinned key, checks the binding
//! against the call it is about to execute, and consumes the nonce once.
//!
//! Wire form: `base64url(canonical JSON) "." base64url(Ed25519 signature)`,
//! the signature made over the domain `zt/grant/v1`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::canonical::{self, Domain};
use crate::keys::KeyPair;
use crate::token::KeySet;

/// Longest lifetime of a grant, in milliseconds.
pub const MAX_GRANT_TTL_MS: i64 = 5 * 60 * 1000;
/// Grants longer than this are refused before decoding.
pub const MAX_GRANT_LEN: usize = 16 * 1024;

/// A one-time authorization to execute one exact tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Format version, 1.
    pub v: u32,
    /// The grant's own id.
    pub id: String,
    /// The approval request it answers.
    pub request_id: String,
    /// The tool it permits.
    pub tool: String,
    /// [`canonical::args_hash`] of the tool and its exact arguments.
    pub args_hash: String,
    /// The session that asked.
    pub session_id: String,
    /// The human that session acts for.
    pub human: String,
    /// The operators who approved.
    pub approvers: Vec<String>,
    /// Consumed on redemption; a second redemption is refused.
    pub nonce: String,
    /// Issued at (Unix ms).
    pub iat_ms: i64,
    /// Expires at (Unix ms).
    pub exp_ms: i64,
    /// Id of the signing key.
    pub kid: String,
}

/// The call a broker is about to execute, to be matched against a grant.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The approval request the broker is redeeming.
    pub request_id: &'a str,
    /// Tool name.
    pub tool: &'a str,
    /// Hash of the tool and the arguments about to execute.
    pub args_hash: &'a str,
    /// The calling session.
    pub session_id: &'a str,
    /// The human that session acts for.
    pub human: &'a str,
}

/// Why a grant was refused. The `Display` text is safe to show an agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// Not a grant.
    #[error("grant is malformed")]
    Malformed,
    /// Signed by a key that is not pinned.
    #[error("grant signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("grant signature is invalid")]
    Signature,
    /// Past its expiry, or issued in the future.
    #[error("grant has expired")]
    Expired,
    /// Lifetime longer than allowed.
    #[error("grant lifetime exceeds the allowed maximum")]
    Lifetime,
    /// Bound to a different request, tool, arguments, session or human.
    #[error("grant does not match this call ({0})")]
    Mismatch(&'static str),
    /// Signing failed locally.
    #[error("could not encode grant")]
    Encode,
}

impl Grant {
    /// Signs the grant with `key` (which must be the key named by `kid`).
    pub fn seal(&self, key: &KeyPair) -> Result<String, GrantError> {
        let payload = canonical::canonical_of(self).map_err(|_| GrantError::Encode)?;
        let sig = key.sign(Domain::Grant, payload.as_bytes());
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(sig)
        ))
    }

    /// Verifies the signature of a sealed grant and returns it. The caller
    /// must still [`Grant::check`] the binding and consume the nonce.
    pub fn open(sealed: &str, keys: &KeySet) -> Result<Grant, GrantError> {
        if sealed.len() > MAX_GRANT_LEN {
            return Err(GrantError::Malformed);
        }
        let (payload_b64, sig_b64) = sealed.split_once('.').ok_or(GrantError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| GrantError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| GrantError::Malformed)?;
        let grant: Grant = serde_json::from_slice(&payload).map_err(|_| GrantError::Malformed)?;
        // The signed bytes must be exactly the canonical form, so one grant
        // has one encoding.
        let canonical = canonical::canonical_of(&grant).map_err(|_| GrantError::Malformed)?;
        if canonical.as_bytes() != payload.as_slice() || grant.v != 1 {
            return Err(GrantError::Malformed);
        }
        let key = keys.get(&grant.kid).ok_or(GrantError::UnknownKey)?;
        key.verify(Domain::Grant, &payload, &sig)
            .map_err(|_| GrantError::Signature)?;
        Ok(grant)
    }

    /// Checks that this grant is live at `now_ms` and bound to `call`.
    pub fn check(&self, call: &Call<'_>, now_ms: i64) -> Result<(), GrantError> {
        if self.exp_ms - self.iat_ms > MAX_GRANT_TTL_MS || self.exp_ms <= self.iat_ms {
            return Err(GrantError::Lifetime);
        }
        // Allow the same clock skew as tokens on the issue time only.
        if now_ms >= self.exp_ms || self.iat_ms > now_ms + 30_000 {
            return Err(GrantError::Expired);
        }
        let checks = [
            (self.request_id == call.request_id, "request"),
            (self.tool == call.tool, "tool"),
            (self.args_hash == call.args_hash, "arguments"),
            (self.session_id == call.session_id, "session"),
            (self.human == call.human, "human"),
        ];
        for (ok, what) in checks {
            if !ok {
                return Err(GrantError::Mismatch(what));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;

    fn grant(key: &KeyPair) -> Grant {
        let now = now_ms();
        Grant {
            v: 1,
            id: "grant_1".into(),
            request_id: "req_1".into(),
            tool: "issue_refund".into(),
            args_hash: "ab".repeat(32),
            session_id: "sess_1".into(),
            human: "alice".into(),
            approvers: vec!["carol".into()],
            nonce: "n1".into(),
            iat_ms: now,
            exp_ms: now + 60_000,
            kid: key.kid().into(),
        }
    }

    fn call(g: &Grant) -> Call<'_> {
        Call {
            request_id: &g.request_id,
            tool: &g.tool,
            args_hash: &g.args_hash,
            session_id: &g.session_id,
            human: &g.human,
        }
    }

    #[test]
    fn seal_open_check() {
        let k = KeyPair::from_seed(&[5; 32]);
        let g = grant(&k);
        let sealed = g.seal(&k).unwrap();
        let keys = KeySet::new(vec![k.public()]);
        let opened = Grant::open(&sealed, &keys).unwrap();
        assert_eq!(opened, g);
        assert!(opened.check(&call(&g), now_ms()).is_ok());
    }

    #[test]
    fn forged_tampered_and_mismatched_grants_fail() {
        let k = KeyPair::from_seed(&[5; 32]);
        let evil = KeyPair::from_seed(&[6; 32]);
        let keys = KeySet::new(vec![k.public()]);
        let g = grant(&k);

        // Another key, even claiming the right kid.
        let forged = g.seal(&evil).unwrap();
        assert_eq!(Grant::open(&forged, &keys), Err(GrantError::Signature));
        let mut other = g.clone();
        other.kid = evil.kid().into();
        assert_eq!(
            Grant::open(&other.seal(&evil).unwrap(), &keys),
            Err(GrantError::UnknownKey)
        );

        // Payload edited after signing.
        let sealed = g.seal(&k).unwrap();
        let (_, sig) = sealed.split_once('.').unwrap();
        let mut edited = g.clone();
        edited.args_hash = "cd".repeat(32);
        let payload = canonical::canonical_of(&edited).unwrap();
        let tampered = format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), sig);
        assert_eq!(Grant::open(&tampered, &keys), Err(GrantError::Signature));

        // Other arguments, other session.
        let mut c = call(&g);
        let other_hash = "ef".repeat(32);
        c.args_hash = &other_hash;
        assert_eq!(
            g.check(&c, now_ms()),
            Err(GrantError::Mismatch("arguments"))
        );
        let mut c = call(&g);
        c.session_id = "sess_2";
        assert_eq!(g.check(&c, now_ms()), Err(GrantError::Mismatch("session")));

        // Expired; over-long.
        assert_eq!(g.check(&call(&g), g.exp_ms), Err(GrantError::Expired));
        let mut long = g.clone();
        long.exp_ms = long.iat_ms + MAX_GRANT_TTL_MS + 1;
        assert_eq!(
            long.check(&call(&long), now_ms()),
            Err(GrantError::Lifetime)
        );

        assert_eq!(Grant::open("garbage", &keys), Err(GrantError::Malformed));
    }
}
