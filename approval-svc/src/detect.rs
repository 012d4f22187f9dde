//! Detection rules as data over the live event stream.
//!
//! The broker publishes every tool call's outcome; the [`Detector`] counts
//! the events each rule matches per subject (an agent, a session or a
//! human) in a sliding window and returns an [`Alert`] when a subject
//! reaches the rule's threshold. The service audits and publishes alerts;
//! this module only decides them.
//!
//! Rules come from `detections.toml` in the policy directory (see
//! [`Rules::from_toml`]); three kinds exist:
//!
//! - `denial_spike`: calls the broker denied;
//! - `escalation_flood`: calls escalated to a human;
//! - `near_limit`: calls that ran (allowed, constrained or approved) and
//!   moved an amount (the argument the registry declares as the tool's
//!   `amount_arg`) within `band_percent` under the human's limit (the
//!   integer attribute of `humans.toml` the rule names as `limit_attr`),
//!   the pattern of an agent splitting a large payment into pieces that
//!   each just pass. (`near_cap_refunds` is its former name.)
//! - `split_amounts`: at least `threshold` calls that ran on the policy's
//!   leave or were held for a human, whose amounts summed within the window
//!   exceed the human's `limit_attr` — split payments by their total,
//!   whatever band each piece falls in.
//!
//! A subject that raised an alert stays quiet for the rule's cooldown, so a
//! burst raises one alert; one event raises at most one alert per rule, and
//! every subject of that event at the threshold starts cooling down with it.
//!
//! Detection is pure and synchronous: no IO, no clock (the caller passes
//! each event's time), no randomness. Memory is bounded: a subject keeps at
//! most `threshold` timestamps, subjects idle for longer than the window
//! and out of cooldown are dropped, and at most about [`MAX_SUBJECTS`] are
//! tracked at once (the least recently seen go first).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use zt_proto::pb::Event;

/// Largest threshold a rule may set (a subject keeps that many timestamps).
pub const MAX_THRESHOLD: u32 = 1000;
/// Longest window or cooldown a rule may set: 30 days.
pub const MAX_SECS: u64 = 30 * 24 * 3600;
/// Subjects tracked at once, over all rules; beyond it the least recently
/// seen are forgotten.
pub const MAX_SUBJECTS: usize = 10_000;
/// How often (in event time) subjects that went quiet are dropped.
const SWEEP_EVERY_MS: i64 = 10_000;
/// What rules know of the registry and the directory of humans, from the
/// policy directory (reloaded when it changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Each money-moving tool's amount argument (`amount_arg`).
    pub amount_args: HashMap<String, String>,
    /// For each attribute a rule names as `limit_attr`: each human's value.
    pub limits: HashMap<String, HashMap<String, i64>>,
}

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{0}")]
    Parse(String),
    /// A rule is inconsistent.
    #[error("rule `{rule}`: {message}")]
    Invalid {
        /// The rule's id (or its position when it has none).
        rule: String,
        /// What is wrong.
        message: String,
    },
}

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Calls the broker denied (`deny`).
    DenialSpike,
    /// Calls that moved an amount just under the human's limit.
    #[serde(alias = "near_cap_refunds")]
    NearLimit,
    /// Calls escalated to a human (`escalate`).
    EscalationFlood,
    /// Tools the broker quarantined because their upstream definition
    /// drifted from the admitted one (`drift` events).
    UpstreamDrift,
    /// Calls that ran whose amounts sum above the human's limit within
    /// the window.
    SplitAmounts,
}

impl RuleKind {
    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::DenialSpike => "denial_spike",
            RuleKind::NearLimit => "near_limit",
            RuleKind::EscalationFlood => "escalation_flood",
            RuleKind::UpstreamDrift => "upstream_drift",
            RuleKind::SplitAmounts => "split_amounts",
        }
    }
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Worth a look soon.
    Medium,
    /// Worth a look now.
    High,
}

impl Severity {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose events are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// The agent (the session token's current actor), over all its sessions.
    Agent,
    /// One agent session.
    Session,
    /// The human agents act for, over all their agents and sessions.
    Human,
    /// The tool called (or quarantined).
    Tool,
}

impl By {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            By::Agent => "agent",
            By::Session => "session",
            By::Human => "human",
            By::Tool => "tool",
        }
    }

    fn of(self, event: &Event) -> &str {
        match self {
            By::Agent => &event.agent,
            By::Session => &event.session_id,
            By::Human => &event.human,
            By::Tool => &event.tool,
        }
    }
}

/// One rule (`[[rule]]` in `detections.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id, recorded as the alert's rule.
    pub id: String,
    /// What is counted.
    pub kind: RuleKind,
    /// The alerts' severity.
    pub severity: Severity,
    /// Subjects counted separately; the first that reaches the threshold
    /// names the alert.
    pub by: Vec<By>,
    /// Matching events within the window that raise an alert.
    pub threshold: u32,
    /// The sliding window, in seconds.
    pub window_secs: u64,
    /// Quiet period of a subject after its alert, in seconds.
    pub cooldown_secs: u64,
    /// `near_limit` only: how far under the limit, in percent of it, an
    /// amount counts as near it.
    #[serde(default)]
    pub band_percent: Option<u32>,
    /// `near_limit` only: the humans' integer attribute holding the limit.
    #[serde(default)]
    pub limit_attr: Option<String>,
    /// `near_limit` only: the tools counted (default: every tool with an
    /// `amount_arg`).
    #[serde(default)]
    pub tools: Vec<String>,
}

/// A rule file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The rules, in file order.
    #[serde(default)]
    pub rule: Vec<Rule>,
}

impl Rules {
    /// Parses and checks a rule file's text.
    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let rules: Rules =
            toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string().trim().into()))?;
        rules.check()?;
        Ok(rules)
    }

    /// The humans' attributes rules read as limits.
    pub fn limit_attrs(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .rule
            .iter()
            .filter_map(|r| r.limit_attr.as_deref())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn check(&self) -> Result<(), RulesError> {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rule.iter().enumerate() {
            let invalid = |message: String| RulesError::Invalid {
                rule: if r.id.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    r.id.clone()
                },
                message,
            };
            if r.id.is_empty() || r.id.len() > 64 || r.id.contains(char::is_whitespace) {
                return Err(invalid(
                    "id must be 1 to 64 characters without spaces".into(),
                ));
            }
            if !seen.insert(r.id.as_str()) {
                return Err(invalid("id is used by another rule".into()));
            }
            if r.by.is_empty() {
                return Err(invalid(
                    "by must name at least one of agent, session, human".into(),
                ));
            }
            if (1..r.by.len()).any(|j| r.by[..j].contains(&r.by[j])) {
                return Err(invalid("by names a subject twice".into()));
            }
            if !(1..=MAX_THRESHOLD).contains(&r.threshold) {
                return Err(invalid(format!(
                    "threshold must be between 1 and {MAX_THRESHOLD}"
                )));
            }
            if !(1..=MAX_SECS).contains(&r.window_secs) {
                return Err(invalid(format!(
                    "window_secs must be between 1 and {MAX_SECS}"
                )));
            }
            if r.cooldown_secs > MAX_SECS {
                return Err(invalid(format!("cooldown_secs must be at most {MAX_SECS}")));
            }
            match (r.kind, r.band_percent) {
                (RuleKind::NearLimit, Some(b)) if (1..=100).contains(&b) => {}
                (RuleKind::NearLimit, Some(_)) => {
                    return Err(invalid("band_percent must be between 1 and 100".into()));
                }
                (RuleKind::NearLimit, None) => {
                    return Err(invalid("near_limit needs band_percent".into()));
                }
                (kind, Some(_)) => {
                    return Err(invalid(format!(
                        "band_percent is for near_limit, not {}",
                        kind.as_str()
                    )));
                }
                (_, None) => {}
            }
            let amounts = matches!(r.kind, RuleKind::NearLimit | RuleKind::SplitAmounts);
            match (amounts, &r.limit_attr) {
                (true, Some(a))
                    if !a.is_empty()
                        && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {}
                (true, _) => {
                    return Err(invalid(format!(
                        "{} needs limit_attr: the humans' integer attribute holding the limit (in humans.toml)",
                        r.kind.as_str()
                    )));
                }
                (false, Some(_)) => {
                    return Err(invalid(format!(
                        "limit_attr is for near_limit and split_amounts, not {}",
                        r.kind.as_str()
                    )));
                }
                (false, None) => {}
            }
            if !amounts && !r.tools.is_empty() {
                return Err(invalid(format!(
                    "tools is for near_limit and split_amounts, not {}",
                    r.kind.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// An alert a rule raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The rule's id.
    pub rule: String,
    /// The rule's kind.
    pub kind: RuleKind,
    /// The rule's severity.
    pub severity: Severity,
    /// What kind of subject reached the threshold.
    pub by: By,
    /// The subject: an agent id, a session id or a human id.
    pub subject: String,
    /// Matching events of the subject within the window.
    pub count: u32,
    /// The rule's window, in seconds.
    pub window_secs: u64,
    /// When (the time of the event that raised it).
    pub at_ms: i64,
    /// The agent, when the subject determines it (an agent or a session).
    pub agent: String,
    /// The session, when the subject is one.
    pub session: String,
    /// The human, when the subject determines it (a session or a human).
    pub human: String,
    /// One line for operators.
    pub summary: String,
}

/// One subject's recent matching events.
#[derive(Debug)]
struct Track {
    /// Times of the last (at most `threshold`) matching events, oldest first.
    times: VecDeque<i64>,
    /// `split_amounts`: the amounts of those events (at most
    /// [`MAX_THRESHOLD`] of them within the window).
    amounts: VecDeque<i64>,
    /// The newest event time seen.
    last_ms: i64,
    /// No alert for this subject before this time.
    quiet_until_ms: i64,
}

impl Track {
    /// Records an event at `at_ms`; returns the events within the window.
    fn push(&mut self, at_ms: i64, window_ms: i64, threshold: usize) -> usize {
        while self
            .times
            .front()
            .is_some_and(|t| at_ms.saturating_sub(*t) > window_ms)
        {
            self.times.pop_front();
        }
        self.times.push_back(at_ms);
        while self.times.len() > threshold {
            self.times.pop_front();
        }
        self.last_ms = self.last_ms.max(at_ms);
        self.times.len()
    }

    /// Records an event moving `amount` at `at_ms`; returns the events
    /// within the window and the sum of their amounts.
    fn push_amount(&mut self, at_ms: i64, amount: i64, window_ms: i64) -> (usize, i128) {
        while self
            .times
            .front()
            .is_some_and(|t| at_ms.saturating_sub(*t) > window_ms)
            || self.times.len() >= MAX_THRESHOLD as usize
        {
            self.times.pop_front();
            self.amounts.pop_front();
        }
        self.times.push_back(at_ms);
        self.amounts.push_back(amount);
        self.last_ms = self.last_ms.max(at_ms);
        (
            self.times.len(),
            self.amounts.iter().map(|a| i128::from(*a)).sum(),
        )
    }

    fn idle(&self, now_ms: i64, window_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_ms) > window_ms && now_ms >= self.quiet_until_ms
    }
}

/// One rule and its subjects.
#[derive(Debug)]
struct Watch {
    rule: Rule,
    window_ms: i64,
    cooldown_ms: i64,
    /// Per subject kind of `rule.by`, in the same order.
    subjects: Vec<HashMap<String, Track>>,
}

/// The detector: rules plus what they have seen. Cheap per event: a few
/// hash lookups per rule; a refund's arguments are parsed only when a
/// `near_limit` rule looks at it.
#[derive(Debug)]
pub struct Detector {
    watches: Vec<Watch>,
    facts: Facts,
    tracked: usize,
    next_sweep_ms: i64,
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl Detector {
    /// A detector for `rules`, with what they need from the policy
    /// directory.
    pub fn new(rules: Rules, facts: Facts) -> Detector {
        let watches = rules
            .rule
            .into_iter()
            .map(|rule| Watch {
                window_ms: secs_to_ms(rule.window_secs),
                cooldown_ms: secs_to_ms(rule.cooldown_secs),
                subjects: rule.by.iter().map(|_| HashMap::new()).collect(),
                rule,
            })
            .collect();
        Detector {
            watches,
            facts,
            tracked: 0,
            next_sweep_ms: i64::MIN,
        }
    }

    /// What the rules know of the policy directory.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Replaces the facts (after the policy directory changed).
    pub fn set_facts(&mut self, facts: Facts) {
        self.facts = facts;
    }

    /// Subjects currently tracked, over all rules.
    pub fn tracked(&self) -> usize {
        self.tracked
    }

    /// Feeds one event the service received at `at_ms`; returns the alerts
    /// it raises (at most one per rule).
    pub fn observe(&mut self, at_ms: i64, event: &Event) -> Vec<Alert> {
        if event.kind != "tool_call" && event.kind != "drift" {
            return Vec::new();
        }
        if at_ms >= self.next_sweep_ms || self.tracked >= MAX_SUBJECTS {
            self.sweep(at_ms);
            self.next_sweep_ms = at_ms.saturating_add(SWEEP_EVERY_MS);
        }
        let mut alerts = Vec::new();
        for w in &mut self.watches {
            if !matches(&w.rule, event, &self.facts) {
                continue;
            }
            let split = match w.rule.kind {
                RuleKind::SplitAmounts => match amount_and_limit(&w.rule, event, &self.facts) {
                    Some(x) => Some(x),
                    None => continue,
                },
                _ => None,
            };
            let threshold = usize::try_from(w.rule.threshold).unwrap_or(usize::MAX);
            // Subjects of this event at the threshold: (index in `by`, count).
            let mut reached: Vec<(usize, usize)> = Vec::new();
            for (i, by) in w.rule.by.iter().enumerate() {
                let key = by.of(event);
                if key.is_empty() {
                    continue;
                }
                let subjects = &mut w.subjects[i];
                if !subjects.contains_key(key) {
                    self.tracked += 1;
                    subjects.insert(
                        key.to_owned(),
                        Track {
                            times: VecDeque::new(),
                            amounts: VecDeque::new(),
                            last_ms: at_ms,
                            quiet_until_ms: i64::MIN,
                        },
                    );
                }
                let Some(track) = subjects.get_mut(key) else {
                    continue;
                };
                let n = match split {
                    None => track.push(at_ms, w.window_ms, threshold),
                    Some((amount, limit)) => {
                        let (n, sum) = track.push_amount(at_ms, amount, w.window_ms);
                        if sum > i128::from(limit) { n } else { 0 }
                    }
                };
                if n >= threshold.max(1) {
                    reached.push((i, n));
                }
            }
            let mut raised = None;
            for &(i, n) in &reached {
                let by = w.rule.by[i];
                let Some(track) = w.subjects[i].get_mut(by.of(event)) else {
                    continue;
                };
                if at_ms < track.quiet_until_ms {
                    continue;
                }
                track.quiet_until_ms = at_ms.saturating_add(w.cooldown_ms);
                if raised.is_none() {
                    raised = Some((by, n));
                }
            }
            if let Some((by, n)) = raised {
                alerts.push(alert(&w.rule, by, n, at_ms, event));
            }
        }
        alerts
    }

    /// Drops subjects idle for longer than their window and out of cooldown;
    /// if too many remain, the least recently seen.
    fn sweep(&mut self, now_ms: i64) {
        for w in &mut self.watches {
            for subjects in &mut w.subjects {
                subjects.retain(|_, t| !t.idle(now_ms, w.window_ms));
            }
        }
        self.tracked = self.count();
        if self.tracked < MAX_SUBJECTS {
            return;
        }
        // Keep nine tenths, newest first, so this stays rare.
        let keep = MAX_SUBJECTS / 10 * 9;
        let mut seen: Vec<i64> = self
            .watches
            .iter()
            .flat_map(|w| w.subjects.iter())
            .flat_map(|s| s.values().map(|t| t.last_ms))
            .collect();
        seen.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = seen.get(keep).copied().unwrap_or(i64::MIN);
        for w in &mut self.watches {
            for subjects in &mut w.subjects {
                subjects.retain(|_, t| t.last_ms > cutoff);
            }
        }
        self.tracked = self.count();
    }

    fn count(&self) -> usize {
        self.watches
            .iter()
            .flat_map(|w| w.subjects.iter())
            .map(HashMap::len)
            .sum()
    }
}

/// Whether `rule` counts `event`.
fn matches(rule: &Rule, event: &Event, facts: &Facts) -> bool {
    match rule.kind {
        RuleKind::DenialSpike => event.decision == "deny",
        RuleKind::EscalationFlood => matches!(event.decision.as_str(), "escalate" | "escalated"),
        RuleKind::UpstreamDrift => event.kind == "drift",
        RuleKind::NearLimit => {
            (rule.tools.is_empty() || rule.tools.contains(&event.tool))
                && matches!(event.decision.as_str(), "allow" | "constrain" | "executed")
                && near_limit(rule, event, facts)
        }
        // What the agent moved or tried to move on its own: calls that
        // ran on the policy's leave and calls held for a human (an
        // approved one was a human's decision).
        RuleKind::SplitAmounts => {
            (rule.tools.is_empty() || rule.tools.contains(&event.tool))
                && matches!(event.decision.as_str(), "allow" | "constrain" | "escalate")
        }
    }
}

/// The call's amount and its human's limit (`limit_attr`), when both are
/// known and the limit is positive.
fn amount_and_limit(rule: &Rule, event: &Event, facts: &Facts) -> Option<(i64, i64)> {
    let arg = facts.amount_args.get(&event.tool)?;
    let &limit = rule
        .limit_attr
        .as_ref()
        .and_then(|a| facts.limits.get(a))
        .and_then(|l| l.get(&event.human))?;
    let amount = serde_json::from_str::<Value>(&event.args_json)
        .ok()?
        .get(arg)?
        .as_i64()?;
    (limit > 0 && amount >= 0).then_some((amount, limit))
}

/// Whether the call's amount is within `band_percent` under its human's
/// limit: `limit × (100 − band) / 100 ≤ amount ≤ limit`.
fn near_limit(rule: &Rule, event: &Event, facts: &Facts) -> bool {
    let band_percent = rule.band_percent.unwrap_or(0);
    let Some(arg) = facts.amount_args.get(&event.tool) else {
        return false;
    };
    let Some(&cap) = rule
        .limit_attr
        .as_ref()
        .and_then(|a| facts.limits.get(a))
        .and_then(|l| l.get(&event.human))
    else {
        return false;
    };
    if cap <= 0 {
        return false;
    }
    let Some(amount) = serde_json::from_str::<Value>(&event.args_json)
        .ok()
        .and_then(|args| args.get(arg).and_then(Value::as_i64))
    else {
        return false;
    };
    let band = i128::from(band_percent.min(100));
    amount <= cap && i128::from(amount) * 100 >= i128::from(cap) * (100 - band)
}

fn alert(rule: &Rule, by: By, count: usize, at_ms: i64, event: &Event) -> Alert {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    let subject = by.of(event).to_owned();
    let what = match rule.kind {
        RuleKind::DenialSpike => "denials".to_owned(),
        RuleKind::EscalationFlood => "escalations".to_owned(),
        RuleKind::UpstreamDrift => "quarantines".to_owned(),
        RuleKind::SplitAmounts => format!(
            "{} made or attempted, summing above their {}",
            match rule.tools.as_slice() {
                [one] => format!("{one} calls"),
                _ => "payments".to_owned(),
            },
            rule.limit_attr.as_deref().unwrap_or("limit"),
        ),
        RuleKind::NearLimit => format!(
            "{} within {}% under their {}",
            match rule.tools.as_slice() {
                [one] => format!("{one} calls"),
                _ => "payments".to_owned(),
            },
            rule.band_percent.unwrap_or(0),
            rule.limit_attr.as_deref().unwrap_or("limit"),
        ),
    };
    let summary = if rule.kind == RuleKind::UpstreamDrift {
        // The broker's own line names the upstream, the tool and what
        // changed (bounded, one line: it is shown as is).
        let line: String = event
            .summary
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect();
        format!("{} {}: {line}", rule.severity, rule.id)
    } else {
        format!(
            "{} {}: {} {} had {count} {what} within {}",
            rule.severity,
            rule.id,
            by.as_str(),
            subject,
            span(rule.window_secs)
        )
    };
    let (agent, session, human) = match by {
        By::Agent => (subject.clone(), String::new(), String::new()),
        By::Session => (event.agent.clone(), subject.clone(), event.human.clone()),
        By::Human => (String::new(), String::new(), subject.clone()),
        By::Tool => (
            event.agent.clone(),
            event.session_id.clone(),
            event.human.clone(),
        ),
    };
    Alert {
        rule: rule.id.clone(),
        kind: rule.kind,
        severity: rule.severity,
        by,
        subject,
        count,
        window_secs: rule.window_secs,
        at_ms,
        agent,
        session,
        human,
        summary,
    }
}

/// `90s`, `5m`, `1h`, `2d`.
fn span(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const SEC: i64 = 1000;

    fn shipped() -> Rules {
        let text = zt_policies::shipped::file(zt_policies::files::DETECTIONS)
            .expect("detections.toml is shipped");
        Rules::from_toml(text).expect("shipped rules are valid")
    }

    /// As in the shipped registry and humans.toml.
    fn caps() -> Facts {
        facts(HashMap::from([
            ("alice".into(), 5_000),
            ("bob".into(), 20_000),
        ]))
    }

    fn facts(limits: HashMap<String, i64>) -> Facts {
        Facts {
            amount_args: HashMap::from([(REFUND_TOOL.to_owned(), "amount".to_owned())]),
            limits: HashMap::from([("rep_limit".to_owned(), limits)]),
        }
    }

    const REFUND_TOOL: &str = "issue_refund";

    fn detector() -> Detector {
        Detector::new(shipped(), caps())
    }

    fn call(agent: &str, session: &str, human: &str, tool: &str, decision: &str) -> Event {
        Event {
            kind: "tool_call".into(),
            session_id: session.into(),
            human: human.into(),
            agent: agent.into(),
            tool: tool.into(),
            decision: decision.into(),
            args_json: r#"{"account_id":"acct_1001"}"#.into(),
            ..Event::default()
        }
    }

    fn refund(session: &str, human: &str, decision: &str, amount: i64) -> Event {
        let mut e = call("agent:r", session, human, REFUND_TOOL, decision);
        e.args_json = format!(r#"{{"amount":{amount},"order_id":"ord_1002"}}"#);
        e
    }

    /// Feeds `(seconds after T0, event)` pairs; returns every alert.
    fn feed(d: &mut Detector, events: &[(i64, Event)]) -> Vec<Alert> {
        events
            .iter()
            .flat_map(|(s, e)| d.observe(T0 + s * SEC, e))
            .collect()
    }

    #[test]
    fn the_shipped_rules_parse() {
        let rules = shipped();
        let ids: Vec<&str> = rules.rule.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "denial-spike",
                "near-cap-refunds",
                "split-refunds",
                "escalation-flood",
                "upstream-drift"
            ]
        );
        assert_eq!(rules.limit_attrs(), ["daily_refund_limit", "rep_limit"]);
    }

    #[test]
    fn a_quarantine_reported_by_the_broker_raises_one_alert_naming_it() {
        let mut d = detector();
        let drift = Event {
            kind: "drift".into(),
            tool: "lookup_ticket".into(),
            decision: "quarantine".into(),
            summary: "upstream tickets: tool lookup_ticket quarantined: description changed\n"
                .into(),
            ..Event::default()
        };
        let alerts = feed(&mut d, &[(0, drift.clone()), (5, drift)]);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].rule, "upstream-drift");
        assert_eq!(
            (alerts[0].by, alerts[0].subject.as_str()),
            (By::Tool, "lookup_ticket")
        );
        assert_eq!(
            alerts[0].summary,
            "high upstream-drift: upstream tickets: tool lookup_ticket quarantined: description changed "
        );
        // A refused call of a quarantined tool is not a new drift.
        let call = call("agent:x", "s", "alice", "lookup_ticket", "quarantine");
        assert!(feed(&mut d, &[(7200, call)]).is_empty());
    }

    #[test]
    fn a_denial_spike_raises_one_alert_naming_the_agent() {
        let mut d = detector();
        // 30 denials in 30 s by one agent in one session: one alert, at the 10th.
        let events: Vec<(i64, Event)> = (0..30)
            .map(|i| {
                (
                    i,
                    call("agent:x", "sess_1", "alice", "lookup_account", "deny"),
                )
            })
            .collect();
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.rule, "denial-spike");
        assert_eq!(a.kind, RuleKind::DenialSpike);
        assert_eq!(a.severity, Severity::High);
        assert_eq!((a.by, a.subject.as_str()), (By::Agent, "agent:x"));
        assert_eq!(a.count, 10);
        assert_eq!(a.window_secs, 60);
        assert_eq!(a.at_ms, T0 + 9 * SEC);
        assert_eq!(a.agent, "agent:x");
        assert_eq!(
            a.summary,
            "high denial-spike: agent agent:x had 10 denials within 1m"
        );
    }

    #[test]
    fn a_denial_spike_of_one_session_names_the_session() {
        // A rule that counts sessions first names the session.
        let text = r#"
            [[rule]]
            id = "session-denials"
            kind = "denial_spike"
            severity = "medium"
            by = ["session", "agent"]
            threshold = 3
            window_secs = 10
            cooldown_secs = 60
        "#;
        let mut d = Detector::new(Rules::from_toml(text).unwrap(), caps());
        let e = call("agent:y", "sess_9", "bob", "change_plan", "deny");
        let alerts = feed(&mut d, &[(0, e.clone()), (1, e.clone()), (2, e)]);
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            (a.by, a.subject.as_str(), a.count),
            (By::Session, "sess_9", 3)
        );
        assert_eq!(
            (a.agent.as_str(), a.session.as_str(), a.human.as_str()),
            ("agent:y", "sess_9", "bob")
        );
    }

    #[test]
    fn denials_spread_across_agents_count_per_session_too() {
        let text = r#"
            [[rule]]
            id = "d"
            kind = "denial_spike"
            severity = "low"
            by = ["agent", "session"]
            threshold = 4
            window_secs = 60
            cooldown_secs = 60
        "#;
        let mut d = Detector::new(Rules::from_toml(text).unwrap(), caps());
        // One agent in four sessions, one denial each: the agent reaches 4.
        let events: Vec<(i64, Event)> = (0..4)
            .map(|i| {
                let s = format!("sess_{i}");
                (i, call("agent:z", &s, "alice", "lookup_account", "deny"))
            })
            .collect();
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].by, alerts[0].subject.as_str()),
            (By::Agent, "agent:z")
        );
        assert_eq!(alerts[0].session, "", "an agent alert names no one session");
    }

    #[test]
    fn denials_older_than_the_window_do_not_count() {
        let deny = call("agent:x", "sess_1", "alice", "lookup_account", "deny");
        // Ten denials, the last exactly 60 s after the first: inside the window.
        let mut d = detector();
        for i in 0..9 {
            assert!(d.observe(T0 + i * SEC, &deny).is_empty());
        }
        assert_eq!(d.observe(T0 + 60 * SEC, &deny).len(), 1);
        // The same, but the last 1 ms later: the first no longer counts.
        let mut d = detector();
        for i in 0..9 {
            assert!(d.observe(T0 + i * SEC, &deny).is_empty());
        }
        assert!(d.observe(T0 + 60 * SEC + 1, &deny).is_empty());
        // Nine denials a minute, for ten minutes: never ten within 60 s.
        let mut d = detector();
        let steady: Vec<(i64, Event)> = (0..90).map(|i| (i * 61 / 9, deny.clone())).collect();
        assert!(feed(&mut d, &steady).is_empty());
    }

    #[test]
    fn the_window_slides() {
        let text = r#"
            [[rule]]
            id = "d"
            kind = "denial_spike"
            severity = "low"
            by = ["agent"]
            threshold = 3
            window_secs = 10
            cooldown_secs = 0
        "#;
        let mut d = Detector::new(Rules::from_toml(text).unwrap(), caps());
        let e = call("a", "s", "alice", "lookup_account", "deny");
        // 0, 6, 12, 18: never three within 10 s.
        let spread: Vec<(i64, Event)> = [0, 6, 12, 18].iter().map(|s| (*s, e.clone())).collect();
        assert!(feed(&mut d, &spread).is_empty());
        // At 19: 12, 18 and 19 are within 10 s.
        let alerts = feed(&mut d, &[(19, e.clone())]);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].count, 3);
        // 10 s exactly is inside the window, 10.001 s is not.
        let mut d = Detector::new(Rules::from_toml(text).unwrap(), caps());
        d.observe(T0, &e);
        d.observe(T0 + 5 * SEC, &e);
        assert_eq!(d.observe(T0 + 10 * SEC, &e).len(), 1);
        let mut d = Detector::new(Rules::from_toml(text).unwrap(), caps());
        d.observe(T0, &e);
        d.observe(T0 + 5 * SEC, &e);
        assert!(d.observe(T0 + 10 * SEC + 1, &e).is_empty());
    }

    #[test]
    fn the_cooldown_holds_then_a_new_burst_raises_again() {
        let mut d = detector();
        let deny = call("agent:x", "sess_1", "alice", "lookup_account", "deny");
        // A 200-denial burst over 200 s: one alert (cooldown 300 s).
        let burst: Vec<(i64, Event)> = (0..200).map(|i| (i, deny.clone())).collect();
        assert_eq!(feed(&mut d, &burst).len(), 1);
        // Still cooling down at 308 s (the alert was at 9 s).
        let late: Vec<(i64, Event)> = (300..308).map(|i| (i, deny.clone())).collect();
        assert!(feed(&mut d, &late).is_empty());
        // After the cooldown (from 309 s), a sustained burst raises once
        // more, when ten denials are within the window again: at 310 s.
        let again: Vec<(i64, Event)> = (309..400).map(|i| (i, deny.clone())).collect();
        let alerts = feed(&mut d, &again);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].at_ms, T0 + 310 * SEC);
    }

    #[test]
    fn an_escalation_flood_raises_once() {
        let mut d = detector();
        let events: Vec<(i64, Event)> = (0..12)
            .map(|i| {
                (
                    i * 10,
                    call("agent:e", "sess_e", "bob", "change_plan", "escalate"),
                )
            })
            .collect();
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.rule, "escalation-flood");
        assert_eq!(a.severity, Severity::Medium);
        assert_eq!(
            (a.by, a.subject.as_str(), a.count),
            (By::Agent, "agent:e", 5)
        );
        assert_eq!(a.at_ms, T0 + 40 * SEC);
        assert_eq!(
            a.summary,
            "medium escalation-flood: agent agent:e had 5 escalations within 5m"
        );
    }

    #[test]
    fn near_cap_refunds_of_one_session_raise_an_alert() {
        let mut d = detector();
        // alice's limit is $50.00: $45.00 to $50.00 is near it.
        let events = [
            (0, refund("sess_r", "alice", "allow", 4_900)),
            (60, refund("sess_r", "alice", "allow", 1_000)), // well under
            (120, refund("sess_r", "alice", "deny", 4_950)), // did not run
            (180, refund("sess_r", "alice", "escalate", 5_000)), // did not run
            (240, refund("sess_r", "alice", "constrain", 4_500)),
            (300, refund("sess_r", "alice", "allow", 5_000)),
        ];
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.rule, "near-cap-refunds");
        assert_eq!(
            (a.by, a.subject.as_str(), a.count),
            (By::Session, "sess_r", 3)
        );
        assert_eq!(a.human, "alice");
        assert_eq!(a.at_ms, T0 + 300 * SEC);
        assert_eq!(
            a.summary,
            "high near-cap-refunds: session sess_r had 3 issue_refund calls within 10% under their rep_limit within 1h"
        );
    }

    #[test]
    fn near_cap_refunds_of_one_human_across_sessions() {
        let mut d = detector();
        // bob's limit is $200.00: $180.00 and up is near it; approved ones count.
        let events = [
            (0, refund("sess_1", "bob", "allow", 19_000)),
            (10, refund("sess_2", "bob", "executed", 18_000)),
            (20, refund("sess_3", "bob", "allow", 17_999)), // just outside the band
            (30, refund("sess_4", "bob", "allow", 20_000)),
        ];
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(
            (alerts[0].by, alerts[0].subject.as_str()),
            (By::Human, "bob")
        );
        assert_eq!(alerts[0].count, 3);
        assert_eq!(alerts[0].session, "");
    }

    #[test]
    fn near_cap_needs_a_known_human_and_an_amount() {
        let mut d = detector();
        let mut no_amount = refund("s", "alice", "allow", 4_900);
        no_amount.args_json = "not json".into();
        // A tool the registry declares no amount for moves no money, whatever
        // its arguments are called.
        let mut other = refund("s", "alice", "allow", 4_900);
        other.tool = "list_orders".into();
        assert!(
            feed(
                &mut d,
                &[(0, other.clone()), (1, other.clone()), (2, other)]
            )
            .is_empty()
        );
        let events = [
            (0, refund("s", "mallory", "allow", 4_900)),
            (1, refund("s", "mallory", "allow", 4_900)),
            (2, refund("s", "mallory", "allow", 4_900)),
            (3, no_amount.clone()),
            (4, no_amount.clone()),
            (5, no_amount),
        ];
        assert!(feed(&mut d, &events).is_empty());
        // A changed limit applies from the next refund on.
        d.set_facts(facts(HashMap::from([("mallory".into(), 5_000)])));
        let more = [
            (10, refund("s2", "mallory", "allow", 4_900)),
            (11, refund("s2", "mallory", "allow", 4_900)),
        ];
        assert!(feed(&mut d, &more).is_empty());
        let alerts = feed(&mut d, &[(12, refund("s2", "mallory", "allow", 4_900))]);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].by, alerts[0].subject.as_str()),
            (By::Session, "s2")
        );
    }

    #[test]
    fn split_refunds_are_flagged_by_their_sum_whatever_each_piece() {
        let mut d = Detector::new(
            shipped(),
            Facts {
                amount_args: HashMap::from([(REFUND_TOOL.to_owned(), "amount".to_owned())]),
                limits: HashMap::from([
                    (
                        "rep_limit".to_owned(),
                        HashMap::from([("alice".into(), 5_000)]),
                    ),
                    (
                        "daily_refund_limit".to_owned(),
                        HashMap::from([("alice".into(), 15_000)]),
                    ),
                ]),
            },
        );
        // $44.99 each: outside the near-limit band of a $50 limit, but four
        // of them (the last held for a human) are $179.96 in two minutes.
        let events = [
            (0, refund("sess_a", "alice", "allow", 4_499)),
            (30, refund("sess_a", "alice", "deny", 4_499)), // did not run
            (40, refund("sess_b", "alice", "allow", 4_499)),
            (80, refund("sess_c", "alice", "allow", 4_499)),
            (120, refund("sess_c", "alice", "escalate", 4_499)),
            (150, refund("sess_c", "alice", "escalate", 4_499)), // cooling down
        ];
        let alerts = feed(&mut d, &events);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.rule, "split-refunds");
        assert_eq!((a.by, a.subject.as_str(), a.count), (By::Human, "alice", 4));
        assert_eq!(a.at_ms, T0 + 120 * SEC);
        assert_eq!(
            a.summary,
            "high split-refunds: human alice had 4 issue_refund calls made or attempted, summing above their daily_refund_limit within 1h"
        );
        // Refunds that stay under the total raise nothing.
        let mut d = Detector::new(shipped(), d.facts().clone());
        let calm: Vec<(i64, Event)> = (0..10)
            .map(|i| (i * 60, refund("s", "alice", "allow", 1_400)))
            .collect();
        assert!(feed(&mut d, &calm).is_empty());
    }

    #[test]
    fn a_normal_mixed_stream_raises_nothing() {
        let mut d = detector();
        let mut events = Vec::new();
        // An hour of work by three agents: lookups every few seconds, a denial
        // every few minutes, refunds well under the limits, an escalation now
        // and then, approvals executed.
        for i in 0..1200_i64 {
            let t = i * 3;
            let agent = ["agent:a", "agent:b", "agent:c"][(i % 3) as usize];
            let session = format!("sess_{}", i / 100);
            let human = if i % 2 == 0 { "alice" } else { "bob" };
            let e = match i % 40 {
                0 => call(agent, &session, human, "lookup_account", "deny"),
                10 => refund(&session, human, "allow", 1_500 + i),
                20 if i % 200 == 20 => call(agent, &session, human, "change_plan", "escalate"),
                25 => refund(&session, human, "executed", 30_000),
                30 => call(agent, &session, human, "list_orders", "constrain"),
                _ => call(agent, &session, human, "lookup_account", "allow"),
            };
            events.push((t, e));
        }
        // Two refunds near the limit in the hour: under the threshold of 3.
        events.push((100, refund("sess_1", "alice", "allow", 4_800)));
        events.push((2000, refund("sess_20", "alice", "allow", 4_900)));
        events.sort_by_key(|(t, _)| *t);
        let alerts = feed(&mut d, &events);
        assert!(alerts.is_empty(), "{alerts:#?}");
    }

    #[test]
    fn only_tool_calls_count() {
        let mut d = detector();
        let mut e = call("agent:x", "sess_1", "alice", "lookup_account", "deny");
        e.kind = "request_decided".into();
        let events: Vec<(i64, Event)> = (0..20).map(|i| (i, e.clone())).collect();
        assert!(feed(&mut d, &events).is_empty());
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut d = detector();
        // Many one-off sessions, each denied once: idle subjects are dropped
        // once their window passed, and never more than the cap are kept.
        for i in 0..(3 * MAX_SUBJECTS as i64) {
            let s = format!("sess_{i}");
            d.observe(
                T0 + i,
                &call("agent:x", &s, "alice", "lookup_account", "deny"),
            );
            assert!(d.tracked() <= MAX_SUBJECTS + 2, "{}", d.tracked());
        }
        // Long after, one event sweeps everything idle away.
        d.observe(
            T0 + 3_600 * SEC,
            &call("agent:y", "sess_new", "bob", "lookup_account", "allow"),
        );
        assert_eq!(d.tracked(), 0);
        // A subject keeps at most `threshold` timestamps.
        let e = call("agent:x", "sess_1", "alice", "lookup_account", "deny");
        for i in 0..1000 {
            d.observe(T0 + 4_000 * SEC + i, &e);
        }
        let longest = d
            .watches
            .iter()
            .flat_map(|w| w.subjects.iter())
            .flat_map(|s| s.values().map(|t| t.times.len()))
            .max();
        assert_eq!(longest, Some(10));
    }

    #[test]
    fn invalid_rule_files_are_refused_with_the_reason() {
        let rule = |extra: &str| {
            format!(
                "[[rule]]\nid = \"r\"\nkind = \"denial_spike\"\nseverity = \"high\"\n\
                 by = [\"agent\"]\nthreshold = 3\nwindow_secs = 60\ncooldown_secs = 60\n{extra}"
            )
        };
        assert!(Rules::from_toml(&rule("")).is_ok());
        for (text, want) in [
            (rule("band_percent = 10"), "band_percent is for near_limit"),
            (
                rule("limit_attr = \"rep_limit\""),
                "limit_attr is for near_limit",
            ),
            (
                rule("band_percent = 10").replace("denial_spike", "near_limit"),
                "near_limit needs limit_attr",
            ),
            (
                rule("band_percent = 10\nlimit_attr = \"a b\"")
                    .replace("denial_spike", "near_limit"),
                "near_limit needs limit_attr",
            ),
            (
                rule("").replace("threshold = 3", "threshold = 0"),
                "threshold must be between",
            ),
            (
                rule("").replace("window_secs = 60", "window_secs = 0"),
                "window_secs",
            ),
            (rule("").replace("[\"agent\"]", "[]"), "by must name"),
            (
                rule("").replace("[\"agent\"]", "[\"agent\", \"agent\"]"),
                "twice",
            ),
            (
                rule("").replace("\"agent\"", "\"robot\""),
                "unknown variant `robot`",
            ),
            (
                rule("").replace("denial_spike", "near_cap_refunds"),
                "needs band_percent",
            ),
            (
                rule("band_percent = 0").replace("denial_spike", "near_cap_refunds"),
                "between 1 and 100",
            ),
            (rule("colour = \"red\""), "unknown field `colour`"),
            (
                format!("{}\n{}", rule(""), rule("")),
                "used by another rule",
            ),
            (rule("").replace("id = \"r\"", "id = \"\""), "rule `#1`"),
            ("[[rule]\n".into(), "TOML"),
        ] {
            let err = Rules::from_toml(&text).expect_err(&text).to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        assert_eq!(Rules::from_toml("").unwrap().rule.len(), 0);
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(60), "1m");
        assert_eq!(span(90), "90s");
        assert_eq!(span(3_600), "1h");
        assert_eq!(span(172_800), "2d");
    }
}
