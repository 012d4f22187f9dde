//! What an upstream returns is screened before it reaches the model: the
//! broker's own credentials are cut out by exact value (always), and text
//! matching the patterns of `DIR/policies/redactions.toml` (shipped:
//! common key and token formats, private-key blocks, card numbers) is
//! replaced by `[redacted: NAME]`. What was cut is reported by rule name
//! and count for the audit entry — never the secret itself.

use std::collections::BTreeMap;

use regex::Regex;
use rmcp::model::{ContentBlock, ResourceContents};
use serde::Deserialize;
use serde_json::Value;

use crate::backend::Output;

/// The rule name of the broker's own credentials.
pub const CREDENTIAL: &str = "broker-credential";

/// Shortest credential value cut out by exact value (shorter ones would
/// match ordinary text).
const MIN_SECRET: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pattern: Vec<PatternDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternDecl {
    name: String,
    regex: String,
    /// Only digit runs that pass the Luhn check (card numbers).
    #[serde(default)]
    luhn: bool,
}

#[derive(Debug)]
struct Pattern {
    name: String,
    regex: Regex,
    luhn: bool,
}

/// The screen: the broker's credentials and the patterns.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
    patterns: Vec<Pattern>,
}

/// What one screening cut, by rule.
pub type Cuts = BTreeMap<String, usize>;

impl Redactor {
    /// A screen for `secrets` (the broker's credential values) and the
    /// patterns of a `redactions.toml` text.
    pub fn new(secrets: Vec<String>, patterns_toml: &str) -> Result<Redactor, String> {
        let file: File = toml::from_str(patterns_toml).map_err(|e| e.to_string())?;
        let mut patterns = Vec::new();
        for p in file.pattern {
            if p.name.is_empty() || p.name.len() > 64 || p.name.chars().any(char::is_whitespace) {
                return Err(format!("pattern `{}`: a short name without spaces", p.name));
            }
            let regex = regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("pattern `{}`: {e}", p.name))?;
            patterns.push(Pattern {
                name: p.name,
                regex,
                luhn: p.luhn,
            });
        }
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        // Longest first, so a secret containing another is cut whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Ok(Redactor { secrets, patterns })
    }

    /// The same credentials with the patterns of another `redactions.toml`.
    pub fn with_patterns(&self, patterns_toml: &str) -> Result<Redactor, String> {
        Redactor::new(self.secrets.clone(), patterns_toml)
    }

    /// `text` screened; cuts are counted into `cuts`.
    pub fn text(&self, text: &str, cuts: &mut Cuts) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            let n = out.matches(secret.as_str()).count();
            if n > 0 {
                out = out.replace(secret.as_str(), &format!("[redacted: {CREDENTIAL}]"));
                *cuts.entry(CREDENTIAL.to_owned()).or_default() += n;
            }
        }
        for p in &self.patterns {
            let mut n = 0;
            let replaced = p.regex.replace_all(&out, |c: &regex::Captures<'_>| {
                let found = &c[0];
                if p.luhn && !luhn(found) {
                    return found.to_owned();
                }
                n += 1;
                format!("[redacted: {}]", p.name)
            });
            if n > 0 {
                out = replaced.into_owned();
                *cuts.entry(p.name.clone()).or_default() += n;
            }
        }
        out
    }

    fn value(&self, v: &mut Value, cuts: &mut Cuts) {
        match v {
            Value::String(s) => *s = self.text(s, cuts),
            Value::Array(items) => items.iter_mut().for_each(|i| self.value(i, cuts)),
            Value::Object(map) => map.values_mut().for_each(|i| self.value(i, cuts)),
            _ => {}
        }
    }

    /// Screens a result in place: every text block, embedded text
    /// resource and string of structured content.
    pub fn output(&self, out: &mut Output) -> Cuts {
        let mut cuts = Cuts::new();
        match out {
            Output::Json(v) => self.value(v, &mut cuts),
            Output::Tool(r) => {
                for block in &mut r.content {
                    match block {
                        ContentBlock::Text(t) => t.text = self.text(&t.text, &mut cuts),
                        ContentBlock::Resource(res) => {
                            if let ResourceContents::TextResourceContents { text, .. } =
                                &mut res.resource
                            {
                                *text = self.text(text, &mut cuts);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(v) = &mut r.structured_content {
                    self.value(v, &mut cuts);
                }
            }
        }
        cuts
    }
}

/// Whether the digits of `text` pass the Luhn check.
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `cuts` as one line for the audit entry (`2 github-token, 1
/// broker-credential`), empty when nothing was cut.
pub fn describe(cuts: &Cuts) -> String {
    cuts.iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Redactor {
        Redactor::new(
            vec!["s3cret-broker-key-123".into(), "short".into()],
            zt_policies::shipped::file(zt_policies::files::REDACTIONS).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn credentials_and_token_shapes_are_cut_and_counted() {
        let r = shipped();
        let mut cuts = Cuts::new();
        let text = "key s3cret-broker-key-123 and ghp_abcdefghijklmnopqrstuvwxyz0123456789 \
                    AKIAABCDEFGHIJKLMNOP card 4111 1111 1111 1111 not 4111 1111 1111 1112 \
                    -----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY----- short";
        let out = r.text(text, &mut cuts);
        assert!(!out.contains("s3cret-broker-key-123"), "{out}");
        assert!(!out.contains("ghp_"), "{out}");
        assert!(!out.contains("AKIA"), "{out}");
        assert!(!out.contains("4111 1111 1111 1111"), "{out}");
        assert!(out.contains("4111 1111 1111 1112"), "not a card: {out}");
        assert!(!out.contains("MIIB"), "{out}");
        assert!(out.contains("short"), "too short to cut: {out}");
        assert_eq!(cuts.get(CREDENTIAL), Some(&1));
        assert_eq!(describe(&cuts).matches(", ").count(), cuts.len() - 1);
        assert!(!describe(&cuts).contains("s3cret"));
    }

    #[test]
    fn a_bad_pattern_is_refused_by_name() {
        let e = Redactor::new(vec![], "[[pattern]]\nname = \"x\"\nregex = \"(\"\n").unwrap_err();
        assert!(e.contains("pattern `x`"), "{e}");
    }
}
