//! Command mode (k9s' `:`): `:pending`, `:live`, `:denials`, `:alerts`,
//! `:audit [key=value ...]`, `:verify`, `:help`, `:q`. Parsing and Tab
//! completion are pure; [`super::app`] carries the commands out.

use std::fmt;

use super::app::View;
use crate::audit_query::{self, Filter};

/// A command typed after `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show a view.
    View(View),
    /// Show the audit log, filtered (an empty filter: every entry).
    Audit(AuditFilter),
    /// Verify the audit log.
    Verify,
    Help,
    Quit,
}

/// The names `:` understands, for completion and the help overlay.
pub const NAMES: [&str; 9] = [
    "pending", "live", "denials", "alerts", "audit", "verify", "help", "quit", "q",
];

/// The keys of an audit filter, in the order the filter bar shows them.
pub const FILTER_KEYS: [&str; 9] = [
    "session", "human", "agent", "tool", "decision", "kind", "chain", "since", "until",
];

/// What the Audit view selects: `key=value` pairs, each key at most once,
/// in [`FILTER_KEYS`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pairs: Vec<(&'static str, String)>,
}

impl AuditFilter {
    /// Parses `key=value` words (`tool=issue_refund since=2h`).
    pub fn parse(words: &[&str]) -> Result<AuditFilter, String> {
        let mut f = AuditFilter::default();
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "`{word}` is not key=value (keys: {})",
                    FILTER_KEYS.join(", ")
                ));
            };
            let Some(key) = FILTER_KEYS.iter().copied().find(|k| *k == key) else {
                return Err(format!(
                    "unknown filter key `{key}` (keys: {})",
                    FILTER_KEYS.join(", ")
                ));
            };
            if value.is_empty() {
                return Err(format!("`{key}=` needs a value"));
            }
            if matches!(key, "since" | "until") {
                audit_query::parse_time(value, 0).map_err(|e| format!("{key}: {e}"))?;
            }
            f.set(key, value);
        }
        Ok(f)
    }

    fn set(&mut self, key: &'static str, value: &str) {
        self.pairs.retain(|(k, _)| *k != key);
        self.pairs.push((key, value.to_owned()));
        self.pairs
            .sort_by_key(|(k, _)| FILTER_KEYS.iter().position(|x| x == k));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The query library's form of it.
    pub fn to_query(&self) -> Filter {
        let get = |k: &str| self.get(k).map(str::to_owned);
        Filter {
            session: get("session"),
            human: get("human"),
            agent: get("agent"),
            tool: get("tool"),
            decision: get("decision"),
            kind: get("kind"),
            chain: get("chain"),
            since: get("since"),
            until: get("until"),
        }
    }
}

impl fmt::Display for AuditFilter {
    /// `tool=issue_refund since=2h`, as typed after `:audit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Parses a command line (without the `:`).
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Err(
            "empty command (try :pending, :live, :denials, :alerts, :audit, :help, :q)".into(),
        );
    };
    let no_args = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(format!(":{name} takes no arguments"))
        }
    };
    match name {
        "pending" => no_args(Command::View(View::Pending)),
        "live" => no_args(Command::View(View::Live)),
        "denials" => no_args(Command::View(View::Denials)),
        "alerts" => no_args(Command::View(View::Alerts)),
        "audit" => AuditFilter::parse(args).map(Command::Audit),
        "verify" => no_args(Command::Verify),
        "help" => no_args(Command::Help),
        "q" | "quit" => no_args(Command::Quit),
        other => Err(format!(
            "unknown command :{other} (try :pending, :live, :denials, :alerts, :audit, :help, :q)"
        )),
    }
}

/// Tab completion: the command name, or an audit filter key. Returns the
/// completed line, or `None` when nothing (more) can be completed.
pub fn complete(line: &str) -> Option<String> {
    let (head, last) = match line.rfind(' ') {
        Some(i) => (&line[..=i], &line[i + 1..]),
        None => ("", line),
    };
    let candidates: Vec<String> = if head.trim().is_empty() {
        NAMES
            .iter()
            .filter(|n| n.len() > 1 && n.starts_with(last))
            .map(|n| (*n).to_owned())
            .collect()
    } else if head.split_whitespace().next() == Some("audit") && !last.contains('=') {
        FILTER_KEYS
            .iter()
            .filter(|k| k.starts_with(last))
            .map(|k| format!("{k}="))
            .collect()
    } else {
        Vec::new()
    };
    let done = common_prefix(&candidates)?;
    let mut out = format!("{head}{done}");
    if candidates.len() == 1 && head.trim().is_empty() && done == "audit" {
        out.push(' ');
    }
    (out != line).then_some(out)
}

fn common_prefix(words: &[String]) -> Option<String> {
    let first = words.first()?;
    let mut len = first.len();
    for w in &words[1..] {
        len = first
            .char_indices()
            .zip(w.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(len);
    }
    Some(first[..len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_quit() {
        assert_eq!(parse("pending"), Ok(Command::View(View::Pending)));
        assert_eq!(parse(" live "), Ok(Command::View(View::Live)));
        assert_eq!(parse("denials"), Ok(Command::View(View::Denials)));
        assert_eq!(parse("alerts"), Ok(Command::View(View::Alerts)));
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse("verify"), Ok(Command::Verify));
        assert_eq!(parse("q"), Ok(Command::Quit));
        assert_eq!(parse("quit"), Ok(Command::Quit));
        assert_eq!(parse("audit"), Ok(Command::Audit(AuditFilter::default())));
    }

    #[test]
    fn audit_filters() {
        let Ok(Command::Audit(f)) = parse("audit session=x tool=y") else {
            panic!("not an audit command");
        };
        assert_eq!(f.get("session"), Some("x"));
        assert_eq!(f.get("tool"), Some("y"));
        assert_eq!(f.get("human"), None);
        let q = f.to_query();
        assert_eq!(q.session.as_deref(), Some("x"));
        assert_eq!(q.tool.as_deref(), Some("y"));
        assert!(q.human.is_none() && q.since.is_none());
        assert_eq!(f.to_string(), "session=x tool=y");

        // Shown in a fixed order whatever the typed order; the last wins.
        let Ok(Command::Audit(f)) =
            parse("audit since=2h tool=a kind=alert human=bob agent=agent:x decision=deny tool=b")
        else {
            panic!("not an audit command");
        };
        assert_eq!(
            f.to_string(),
            "human=bob agent=agent:x tool=b decision=deny kind=alert since=2h"
        );
        assert_eq!(f.to_query().since.as_deref(), Some("2h"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (line, want) in [
            ("", "empty command"),
            ("pods", "unknown command :pods"),
            ("live now", ":live takes no arguments"),
            ("audit tool", "`tool` is not key=value"),
            ("audit colour=red", "unknown filter key `colour`"),
            ("audit tool=", "`tool=` needs a value"),
            ("audit since=yesterday", "since: `yesterday` is not a time"),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(want), "{line:?}: {err}");
        }
    }

    #[test]
    fn tab_completes_commands_and_filter_keys() {
        assert_eq!(complete("pe").as_deref(), Some("pending"));
        assert_eq!(complete("au").as_deref(), Some("audit "));
        assert_eq!(complete("a"), None, "alerts or audit: nothing more to add");
        assert_eq!(complete("audit to").as_deref(), Some("audit tool="));
        assert_eq!(complete("audit tool=x s"), None, "session= or since=");
        assert_eq!(
            complete("audit tool=x se").as_deref(),
            Some("audit tool=x session=")
        );
        assert_eq!(
            complete("audit tool=x si").as_deref(),
            Some("audit tool=x since=")
        );
        assert_eq!(complete("audit d").as_deref(), Some("audit decision="));
        assert_eq!(complete("zzz"), None);
        assert_eq!(complete("live"), None);
    }
}
