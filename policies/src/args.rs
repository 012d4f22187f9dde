//! Argument validation with compiled JSON Schema validators, and safe messages.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a call's arguments were rejected.
///
/// `message` is safe to return to the model: it names the offending field and the
/// constraint, never echoes a value (arguments are attacker-controlled), e.g.
/// ``unknown field `fields` `` or `` `amount` must be >= 1 ``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ArgError {
    /// The offending field, when there is one.
    pub field: Option<String>,
    /// Safe, human-readable message.
    pub message: String,
}

impl ArgError {
    pub(crate) fn new(field: Option<String>, message: String) -> Self {
        ArgError { field, message }
    }
}

/// Makes an attacker-controlled name safe to print: ASCII letters, digits and
/// `_-.:` only (others become `?`), at most 64 characters.
pub(crate) fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Validates `args` and turns the first error into an [`ArgError`].
pub(crate) fn validate(validator: &jsonschema::Validator, args: &Value) -> Result<(), ArgError> {
    if !args.is_object() {
        return Err(ArgError::new(
            None,
            "arguments must be a JSON object".to_string(),
        ));
    }
    match validator.iter_errors(args).next() {
        None => Ok(()),
        Some(err) => Err(describe(err.instance_path().as_str(), err.kind())),
    }
}

fn describe(pointer: &str, kind: &ValidationErrorKind) -> ArgError {
    // JSON pointer "/a/b" -> "a.b"; root -> None.
    let field = if pointer.is_empty() {
        None
    } else {
        Some(
            pointer
                .trim_start_matches('/')
                .split('/')
                .map(|seg| sanitize(&seg.replace("~1", "/").replace("~0", "~")))
                .collect::<Vec<_>>()
                .join("."),
        )
    };
    let subject = match &field {
        Some(f) => format!("`{f}`"),
        None => "arguments".to_string(),
    };
    let prefix = |name: &str| match &field {
        Some(f) => format!("{f}.{name}"),
        None => name.to_string(),
    };
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let names: Vec<String> = unexpected.iter().map(|n| prefix(&sanitize(n))).collect();
            let first = names.first().cloned();
            let list = names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let msg = if names.len() == 1 {
                format!("unknown field {list}")
            } else {
                format!("unknown fields {list}")
            };
            ArgError::new(first, msg)
        }
        ValidationErrorKind::Required { property } => {
            let name = prefix(&sanitize(property.as_str().unwrap_or("?")));
            ArgError::new(
                Some(name.clone()),
                format!("missing required field `{name}`"),
            )
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            ArgError::new(field, format!("{subject} must be of type {expected}"))
        }
        ValidationErrorKind::Minimum { limit } => {
            ArgError::new(field, format!("{subject} must be >= {limit}"))
        }
        ValidationErrorKind::Maximum { limit } => {
            ArgError::new(field, format!("{subject} must be <= {limit}"))
        }
        ValidationErrorKind::ExclusiveMinimum { limit } => {
            ArgError::new(field, format!("{subject} must be > {limit}"))
        }
        ValidationErrorKind::ExclusiveMaximum { limit } => {
            ArgError::new(field, format!("{subject} must be < {limit}"))
        }
        ValidationErrorKind::MinLength { limit } => ArgError::new(
            field,
            format!("{subject} must be at least {limit} characters long"),
        ),
        ValidationErrorKind::MaxLength { limit } => ArgError::new(
            field,
            format!("{subject} must be at most {limit} characters long"),
        ),
        ValidationErrorKind::Pattern { .. } => ArgError::new(
            field,
            format!("{subject} does not have the expected format"),
        ),
        ValidationErrorKind::Enum { options } => {
            let list = match options.as_ref() {
                Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            ArgError::new(field, format!("{subject} must be one of {list}"))
        }
        ValidationErrorKind::Constant { expected_value } => {
            ArgError::new(field, format!("{subject} must be {expected_value}"))
        }
        ValidationErrorKind::MinItems { limit } => {
            ArgError::new(field, format!("{subject} must have at least {limit} items"))
        }
        ValidationErrorKind::MaxItems { limit } => {
            ArgError::new(field, format!("{subject} must have at most {limit} items"))
        }
        ValidationErrorKind::UniqueItems => {
            ArgError::new(field, format!("{subject} must not contain duplicates"))
        }
        _ => ArgError::new(field, format!("{subject} is invalid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize("fields"), "fields");
        assert_eq!(sanitize("a b\n`c`"), "a?b??c?");
        assert_eq!(sanitize(&"x".repeat(70)), format!("{}...", "x".repeat(64)));
    }
}
