//! Argument rewrites declared as data on `constrain` rules.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One argument rewrite, declared by a `constrain` rule's `@rewrite` annotation.
///
/// Syntax (several rewrites may be joined with `;`, applied left to right):
///
/// | text | effect |
/// |---|---|
/// | `clamp FIELD MAX` | integer field: a value above `MAX` becomes `MAX`; absent stays absent |
/// | `pin FIELD VALUE` | the field is set to `VALUE` (a JSON literal such as `10`, `"basic"`, `true`; a bare word is a string) |
/// | `drop FIELD` | the field is removed |
/// | `intersect FIELD a,b,c` | array field: only the listed strings are kept (order preserved); a string field must be one of them, or the rewrite fails (deny) |
///
/// `FIELD` is a top-level argument name; the startup check requires it to be a
/// property of the tool's input schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Rewrite {
    /// `clamp FIELD MAX`.
    Clamp {
        /// Argument name.
        field: String,
        /// Largest value kept.
        max: i64,
    },
    /// `pin FIELD VALUE`.
    Pin {
        /// Argument name.
        field: String,
        /// Value the argument is set to.
        value: Value,
    },
    /// `drop FIELD`.
    Drop {
        /// Argument name.
        field: String,
    },
    /// `intersect FIELD a,b,c`.
    Intersect {
        /// Argument name.
        field: String,
        /// Values kept.
        allowed: Vec<String>,
    },
}

impl Rewrite {
    /// Parses a `@rewrite` annotation: one or more rewrites joined by `;`.
    pub fn parse_list(text: &str) -> Result<Vec<Rewrite>, String> {
        let mut out = Vec::new();
        for part in text.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            out.push(Rewrite::parse(part)?);
        }
        if out.is_empty() {
            return Err("empty @rewrite".to_string());
        }
        Ok(out)
    }

    /// Parses one rewrite, e.g. `clamp limit 20`.
    pub fn parse(text: &str) -> Result<Rewrite, String> {
        let text = text.trim();
        let (op, rest) = split_word(text);
        let (field, rest) = split_word(rest);
        if field.is_empty() {
            return Err(format!("`{text}`: missing field name"));
        }
        if !field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("`{text}`: invalid field name `{field}`"));
        }
        let field = field.to_string();
        let rest = rest.trim();
        match op {
            "clamp" => {
                let max = rest.parse::<i64>().map_err(|_| {
                    format!("`{text}`: expected `clamp FIELD MAX` with an integer MAX")
                })?;
                Ok(Rewrite::Clamp { field, max })
            }
            "pin" => {
                if rest.is_empty() {
                    return Err(format!("`{text}`: expected `pin FIELD VALUE`"));
                }
                let value = serde_json::from_str::<Value>(rest)
                    .unwrap_or_else(|_| Value::String(rest.to_string()));
                Ok(Rewrite::Pin { field, value })
            }
            "drop" => {
                if !rest.is_empty() {
                    return Err(format!("`{text}`: expected `drop FIELD`"));
                }
                Ok(Rewrite::Drop { field })
            }
            "intersect" => {
                let allowed: Vec<String> = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if allowed.is_empty() {
                    return Err(format!("`{text}`: expected `intersect FIELD a,b,c`"));
                }
                Ok(Rewrite::Intersect { field, allowed })
            }
            "" => Err("empty rewrite".to_string()),
            other => Err(format!(
                "`{text}`: unknown rewrite `{other}` (expected clamp, pin, drop or intersect)"
            )),
        }
    }

    /// The argument this rewrite touches.
    pub fn field(&self) -> &str {
        match self {
            Rewrite::Clamp { field, .. }
            | Rewrite::Pin { field, .. }
            | Rewrite::Drop { field }
            | Rewrite::Intersect { field, .. } => field,
        }
    }

    /// Applies the rewrite to the arguments. Errors name the field, never a value.
    pub fn apply(&self, args: &mut Map<String, Value>) -> Result<(), String> {
        match self {
            Rewrite::Clamp { field, max } => {
                if let Some(v) = args.get_mut(field) {
                    let Some(n) = as_int(v) else {
                        return Err(format!("cannot clamp `{field}`: not an integer"));
                    };
                    if n > *max {
                        *v = Value::from(*max);
                    }
                }
                Ok(())
            }
            Rewrite::Pin { field, value } => {
                args.insert(field.clone(), value.clone());
                Ok(())
            }
            Rewrite::Drop { field } => {
                args.remove(field);
                Ok(())
            }
            Rewrite::Intersect { field, allowed } => {
                match args.get_mut(field) {
                    None => {}
                    Some(Value::Array(items)) => items.retain(|item| {
                        item.as_str()
                            .is_some_and(|s| allowed.iter().any(|a| a == s))
                    }),
                    Some(Value::String(s)) if !allowed.iter().any(|a| a == s) => {
                        return Err(format!("`{field}` is not one of the allowed values"));
                    }
                    Some(Value::String(_)) => {}
                    Some(_) => {
                        return Err(format!(
                            "cannot intersect `{field}`: not an array or a string"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rewrite::Clamp { field, max } => write!(f, "clamp {field} {max}"),
            Rewrite::Pin { field, value } => write!(f, "pin {field} {value}"),
            Rewrite::Drop { field } => write!(f, "drop {field}"),
            Rewrite::Intersect { field, allowed } => {
                write!(f, "intersect {field} {}", allowed.join(","))
            }
        }
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// An integer JSON value, accepting integral floats such as `5.0` (JSON Schema
/// treats them as integers).
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        Some(f as i64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Rewrite::parse_list(
                "clamp limit 20; pin plan \"basic\"; drop note; intersect tags a, b"
            )
            .unwrap(),
            vec![
                Rewrite::Clamp {
                    field: "limit".into(),
                    max: 20
                },
                Rewrite::Pin {
                    field: "plan".into(),
                    value: json!("basic")
                },
                Rewrite::Drop {
                    field: "note".into()
                },
                Rewrite::Intersect {
                    field: "tags".into(),
                    allowed: vec!["a".into(), "b".into()]
                },
            ]
        );
        assert_eq!(
            Rewrite::parse("pin plan basic").unwrap(),
            Rewrite::Pin {
                field: "plan".into(),
                value: json!("basic")
            }
        );
        assert_eq!(
            Rewrite::parse("pin limit 10").unwrap(),
            Rewrite::Pin {
                field: "limit".into(),
                value: json!(10)
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            ";",
            "clamp",
            "clamp limit",
            "clamp limit twenty",
            "pin plan",
            "drop a b",
            "intersect tags",
            "shrink limit 3",
            "clamp li$mit 3",
        ] {
            assert!(
                Rewrite::parse_list(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn applies() {
        let mut a = obj(json!({"limit": 50, "tags": ["a", "x", "b"], "note": "n", "plan": "p"}));
        for rw in
            Rewrite::parse_list("clamp limit 20; intersect tags a,b; drop note; pin plan \"basic\"")
                .unwrap()
        {
            rw.apply(&mut a).unwrap();
        }
        assert_eq!(
            Value::Object(a),
            json!({"limit": 20, "tags": ["a", "b"], "plan": "basic"})
        );

        let mut a = obj(json!({"limit": 5}));
        Rewrite::parse("clamp limit 20")
            .unwrap()
            .apply(&mut a)
            .unwrap();
        assert_eq!(a["limit"], json!(5));
        let mut a = obj(json!({}));
        Rewrite::parse("clamp limit 20")
            .unwrap()
            .apply(&mut a)
            .unwrap();
        assert!(a.is_empty());
        let mut a = obj(json!({"limit": 50.0}));
        Rewrite::parse("clamp limit 20")
            .unwrap()
            .apply(&mut a)
            .unwrap();
        assert_eq!(a["limit"], json!(20));
        let mut a = obj(json!({"limit": "50"}));
        assert!(
            Rewrite::parse("clamp limit 20")
                .unwrap()
                .apply(&mut a)
                .is_err()
        );
        let mut a = obj(json!({"plan": "gold"}));
        assert!(
            Rewrite::parse("intersect plan basic,standard")
                .unwrap()
                .apply(&mut a)
                .is_err()
        );
        let mut a = obj(json!({"plan": "basic"}));
        assert!(
            Rewrite::parse("intersect plan basic,standard")
                .unwrap()
                .apply(&mut a)
                .is_ok()
        );
    }
}
