//! Canonical JSON and domain-separated hashing.
//!
//! Signatures and hashes are computed over bytes, so two parties must turn
//! the same value into the same bytes. The canonical form here is JSON with
//! object keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! strings escaped as `serde_json` escapes them, and integers only: a
//! floating-point number is refused, since its text form is not stable
//! across implementations (and money here is integer cents).
//!
//! Every hash is SHA-256 over `domain || 0x00 || bytes`, where `domain` names
//! what is hashed. A hash computed for one purpose (an audit leaf) can never
//! be presented as another (a grant, a checkpoint).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a hash is for. The label is part of the hashed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A tool name with its arguments, as bound by a grant.
    Args,
    /// One audit entry (a leaf of its chain).
    AuditLeaf,
    /// An interior node, reserved for Merkle proofs over audit chains.
    AuditNode,
    /// A signed audit checkpoint.
    Checkpoint,
    /// A one-time grant's signed payload.
    Grant,
    /// A key's identifier (its thumbprint).
    KeyId,
    /// The secret an audit writer derives from its signing key for MACs.
    AuditMacKey,
    /// An audit writer's MAC over one of its entries.
    AuditMac,
    /// A key introducing its successor (a rotation record).
    KeyIntro,
    /// Fallback randomness for identifiers.
    Id,
    /// An upstream tool's definition as admitted (its fingerprint).
    ToolDefinition,
    /// A tool result as released to the model.
    Result,
    /// The files of a policy directory (the policy version).
    PolicyBundle,
}

impl Domain {
    /// The label hashed in front of the bytes.
    pub fn label(self) -> &'static str {
        match self {
            Domain::Args => "zt/args/v1",
            Domain::AuditLeaf => "zt/audit-leaf/v1",
            Domain::AuditNode => "zt/audit-node/v1",
            Domain::Checkpoint => "zt/checkpoint/v1",
            Domain::Grant => "zt/grant/v1",
            Domain::KeyId => "zt/key-id/v1",
            Domain::AuditMacKey => "zt/audit-mac-key/v1",
            Domain::AuditMac => "zt/audit-mac/v1",
            Domain::KeyIntro => "zt/key-intro/v1",
            Domain::Id => "zt/id/v1",
            Domain::ToolDefinition => "zt/tool-definition/v1",
            Domain::Result => "zt/result/v1",
            Domain::PolicyBundle => "zt/policy-bundle/v1",
        }
    }
}

/// SHA-256 over `label || 0x00 || bytes`.
pub fn digest(domain: Domain, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.label().as_bytes());
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// [`digest`] in lowercase hex.
pub fn digest_hex(domain: Domain, bytes: &[u8]) -> String {
    hex::encode(digest(domain, bytes))
}

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonError {
    /// Floating-point numbers have no stable text form.
    #[error("non-integer number {0} has no canonical form")]
    Float(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("value nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The deepest nesting accepted; attacker-supplied JSON must not exhaust the stack.
pub const MAX_DEPTH: usize = 32;

/// The canonical JSON text of `value`.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonError> {
    let mut out = String::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

/// The canonical JSON text of any serializable value.
pub fn canonical_of<T: serde::Serialize>(value: &T) -> Result<String, CanonError> {
    // Serializing our own types to a Value cannot fail except for maps with
    // non-string keys, which none of them have.
    let v = serde_json::to_value(value).map_err(|e| CanonError::Float(e.to_string()))?;
    to_canonical_string(&v)
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), CanonError> {
    if depth > MAX_DEPTH {
        return Err(CanonError::TooDeep);
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                return Err(CanonError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map may preserve insertion order
            // when another crate in the build enables `preserve_order`.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_value(v, out, depth + 1)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping is deterministic (RFC 8259 minimal escapes).
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// The hash a grant binds: a tool name together with its canonical arguments.
pub fn args_hash(tool: &str, args: &Value) -> Result<String, CanonError> {
    let bound = serde_json::json!({ "tool": tool, "args": args });
    Ok(digest_hex(
        Domain::Args,
        to_canonical_string(&bound)?.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = json!({"b": 1, "a": {"z": [1, 2, {"y": null, "x": true}], "é": "q\"uote"}});
        assert_eq!(
            to_canonical_string(&v).unwrap(),
            r#"{"a":{"z":[1,2,{"x":true,"y":null}],"é":"q\"uote"},"b":1}"#
        );
    }

    #[test]
    fn floats_are_refused() {
        assert!(matches!(
            to_canonical_string(&json!({"amount": 1.5})),
            Err(CanonError::Float(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!([v]);
        }
        assert_eq!(to_canonical_string(&v), Err(CanonError::TooDeep));
    }

    #[test]
    fn domains_separate_equal_bytes() {
        assert_ne!(
            digest(Domain::AuditLeaf, b"x"),
            digest(Domain::Checkpoint, b"x")
        );
    }

    #[test]
    fn args_hash_binds_tool_and_every_argument() {
        let a = args_hash(
            "issue_refund",
            &json!({"order_id": "ord_1", "amount": 1500}),
        )
        .unwrap();
        let same = args_hash(
            "issue_refund",
            &json!({"amount": 1500, "order_id": "ord_1"}),
        )
        .unwrap();
        let other_amount = args_hash(
            "issue_refund",
            &json!({"order_id": "ord_1", "amount": 1501}),
        )
        .unwrap();
        let other_tool =
            args_hash("change_plan", &json!({"order_id": "ord_1", "amount": 1500})).unwrap();
        assert_eq!(a, same);
        assert_ne!(a, other_amount);
        assert_ne!(a, other_tool);
    }
}
