//! The broker's built-in tools: the ones every session has whatever the tool
//! registry holds, and which the agent-side hook must know as well as the
//! broker does. Defined once here so the two gates cannot disagree on a
//! name or on what a valid call looks like.

use serde_json::{Value, json};

/// Follows up on an approval request the session made.
pub const APPROVAL_STATUS: &str = "approval_status";

/// Every built-in tool's name.
pub const ALL: &[&str] = &[APPROVAL_STATUS];

/// Whether `name` is one of the broker's built-in tools.
pub fn is_builtin(name: &str) -> bool {
    ALL.contains(&name)
}

/// The strict input schema of [`APPROVAL_STATUS`].
pub fn approval_status_schema() -> serde_json::Map<String, Value> {
    match json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["request_id"],
        "properties": {
            "request_id": {
                "type": "string",
                "pattern": "^req_[0-9a-f]{32}$",
                "description": "The id from an \"awaiting approval\" result, e.g. req_3f2a…"
            }
        }
    }) {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The request id of valid [`APPROVAL_STATUS`] arguments, or why not (a
/// message safe for the model).
pub fn approval_status_request_id(args: &Value) -> Result<String, String> {
    let Value::Object(m) = args else {
        return Err("arguments must be an object".into());
    };
    if let Some(extra) = m.keys().find(|k| k.as_str() != "request_id") {
        return Err(format!("unknown field `{}`", crate::printable(extra)));
    }
    let id = m
        .get("request_id")
        .ok_or("missing field `request_id`")?
        .as_str()
        .ok_or("`request_id` must be a string")?;
    let ok = id.len() == 36
        && id.starts_with("req_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err("`request_id` must look like req_ followed by 32 hex digits".into());
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_strictly() {
        let good = format!("req_{}", "0a".repeat(16));
        assert_eq!(
            approval_status_request_id(&json!({ "request_id": good })),
            Ok(good.clone())
        );
        for bad in [
            json!([]),
            json!({}),
            json!({ "request_id": 7 }),
            json!({ "request_id": "req_XYZ" }),
            json!({ "request_id": format!("req_{}", "0A".repeat(16)) }),
            json!({ "request_id": good, "note": "x" }),
        ] {
            assert!(approval_status_request_id(&bad).is_err(), "{bad}");
        }
        assert!(is_builtin(APPROVAL_STATUS));
        assert!(!is_builtin("issue_refund"));
    }
}
