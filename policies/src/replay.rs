//! What-if replay: the decisions an audit log recorded, decided again under
//! a candidate policy directory.
//!
//! A decision entry carries its [`Basis`] — the human's attributes, the
//! resource as looked up, the session's taint and budgets, and the
//! arguments as sent — so deciding it again needs no backend and no
//! ledger: the candidate's rules and humans see exactly what the recorded
//! decision saw. Entries written before the basis was recorded, and
//! refusals that never reached the policy (scope, schema, rate limits),
//! are counted and left out.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use zt_proto::audit::{Entry, Kind};

use crate::{Basis, DecisionRequest, Effect, PolicyBundle};

/// One recorded policy decision.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Writer chain and position.
    pub chain: String,
    /// Position in the chain.
    pub seq: u64,
    /// When it was decided (ms since the epoch).
    pub time_ms: i64,
    /// The session.
    pub session: String,
    /// The effect recorded.
    pub effect: Effect,
    /// The rules recorded.
    pub rules: Vec<String>,
    /// The arguments the recorded decision ran with (rewritten, for a
    /// constrained call).
    pub ran_with: Value,
    /// The request, rebuilt.
    pub request: DecisionRequest,
    /// The policy version that decided.
    pub policy: String,
    /// What the `@shadow` rules would have decided.
    pub shadow: Option<crate::Verdict>,
}

/// Why an entry is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a policy decision (a result, an approval, a gate refusal).
    NotADecision,
    /// A decision recorded without its basis.
    NoBasis,
}

impl Recorded {
    /// The recorded policy decision in `entry` of `chain`.
    pub fn from_entry(chain: &str, seq: u64, entry: Entry) -> Result<Recorded, Skip> {
        if !matches!(entry.kind, Kind::Decision | Kind::Escalation) {
            return Err(Skip::NotADecision);
        }
        let r = entry.record;
        let effect: Effect = r.decision.parse().map_err(|_| Skip::NotADecision)?;
        // Refusals before the policy (scope, schema, rate limit) and entries
        // written before the basis was recorded have none.
        let Some(mut basis) = r.basis else {
            return Err(Skip::NoBasis);
        };
        let sent = match &mut basis {
            Value::Object(m) => m.remove("args"),
            _ => None,
        };
        let basis: Basis = serde_json::from_value(basis).map_err(|_| Skip::NoBasis)?;
        Ok(Recorded {
            chain: chain.to_owned(),
            seq,
            time_ms: entry.time_ms,
            session: r.session,
            effect,
            rules: r.rules,
            request: DecisionRequest {
                tool: r.tool,
                args: sent.unwrap_or_else(|| r.args.clone()),
                agent: basis.agent,
                human: r.subject,
                resource: basis.resource,
                context: basis.context,
            },
            ran_with: r.args,
            policy: basis.policy,
            shadow: basis.shadow,
        })
    }
}

/// A decision that would change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Where it is in the log.
    pub chain: String,
    /// Position in the chain.
    pub seq: u64,
    /// When it was decided.
    pub time_ms: i64,
    /// The session, human, agent and tool.
    pub session: String,
    /// The human acted for.
    pub human: String,
    /// The agent.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// The arguments as sent.
    pub args: Value,
    /// What was decided, and by which rules.
    pub was: Effect,
    /// The rules then.
    pub was_rules: Vec<String>,
    /// What the candidate decides, by which rules, and why.
    pub now: Effect,
    /// The rules now.
    pub now_rules: Vec<String>,
    /// The candidate's reason.
    pub reason: String,
    /// The policy version that decided it.
    pub policy: String,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The candidate's hash.
    pub candidate: String,
    /// Entries read.
    pub entries: u64,
    /// Policy decisions decided again.
    pub replayed: u64,
    /// Of those, the same.
    pub unchanged: u64,
    /// Decisions recorded without a basis: refusals before the policy
    /// decided (scope, schema, rate limit), or entries written before
    /// bases were recorded.
    pub without_basis: u64,
    /// Entries that do not parse.
    pub unreadable: u64,
    /// Changes by transition, e.g. `allow→escalate`.
    pub transitions: BTreeMap<String, u64>,
    /// Changes by the candidate rule that determined them (or, for a
    /// change to allow, `-RULE` for a recorded rule that no longer decides).
    pub rules: BTreeMap<String, u64>,
    /// Replayed decisions by the policy version that made them.
    pub versions: BTreeMap<String, u64>,
    /// The changes, in log order.
    pub changes: Vec<Change>,
    /// Wall time spent deciding (on every core), and in all, in seconds.
    pub deciding_secs: f64,
    /// See `deciding_secs`.
    pub total_secs: f64,
}

impl Report {
    /// Whether anything would change.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// Decides `recorded` again under `bundle`: `Some` when the outcome
/// differs (effect, or the arguments a constrained call would run with).
pub fn again(bundle: &PolicyBundle, recorded: &Recorded) -> Option<Change> {
    let d = bundle.verdict(&recorded.request);
    let same = d.effect == recorded.effect
        && (d.effect != Effect::Constrain || d.args == recorded.ran_with);
    if same {
        return None;
    }
    let r = &recorded.request;
    Some(Change {
        chain: recorded.chain.clone(),
        seq: recorded.seq,
        time_ms: recorded.time_ms,
        session: recorded.session.clone(),
        human: r.human.clone(),
        agent: r.agent.clone(),
        tool: r.tool.clone(),
        args: r.args.clone(),
        was: recorded.effect,
        was_rules: recorded.rules.clone(),
        now: d.effect,
        now_rules: d.rules,
        reason: d.reason,
        policy: recorded.policy.clone(),
    })
}

/// Decides a batch again, on every core; `None` if a worker died.
pub fn batch(bundle: &PolicyBundle, batch: &[Recorded]) -> Option<Vec<Option<Change>>> {
    par_map(batch, |r| again(bundle, r))
}

/// `f` over `items`, in order, spread over every core; `None` if a worker
/// died (`decide` catches the engine's panics, so this is not expected).
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Option<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    if threads == 1 || items.len() < 256 {
        return Some(items.iter().map(f).collect());
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(h.join().ok()?);
        }
        Some(out)
    })
}

/// Per `@shadow` rule: how often it was evaluated beside the enforced
/// rules, and how often it would have decided otherwise, by transition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowCount {
    /// Recorded decisions whose shadow verdict it determined.
    pub evaluated: u64,
    /// Of those, the ones where the shadow verdict differs.
    pub diverged: u64,
    /// Divergences by transition, e.g. `allow→escalate`.
    pub transitions: BTreeMap<String, u64>,
}

/// Counts a recorded shadow verdict under each `@shadow` rule that
/// determined it (a verdict none of them determined counts under
/// `(enforced rules)`).
pub fn shadow_counts(recorded: &Recorded, out: &mut BTreeMap<String, ShadowCount>) {
    let Some(s) = &recorded.shadow else {
        return;
    };
    let mut rules: Vec<&str> = s.shadow_rules.iter().map(String::as_str).collect();
    if rules.is_empty() {
        rules.push("(enforced rules)");
    }
    let diverged = s.effect != recorded.effect;
    for r in rules {
        let c = out.entry(r.to_owned()).or_default();
        c.evaluated += 1;
        if diverged {
            c.diverged += 1;
            *c.transitions
                .entry(format!("{}→{}", recorded.effect, s.effect))
                .or_default() += 1;
        }
    }
}

impl Report {
    /// Adds one decided batch.
    pub fn add(&mut self, recorded: &[Recorded], outcomes: Vec<Option<Change>>) {
        for r in recorded {
            *self.versions.entry(r.policy.clone()).or_default() += 1;
        }
        self.replayed += recorded.len() as u64;
        for c in outcomes.into_iter().flatten() {
            *self
                .transitions
                .entry(format!("{}→{}", c.was, c.now))
                .or_default() += 1;
            if c.now == Effect::Allow {
                for id in &c.was_rules {
                    *self.rules.entry(format!("-{id}")).or_default() += 1;
                }
            } else {
                for id in &c.now_rules {
                    *self.rules.entry(id.clone()).or_default() += 1;
                }
            }
            self.changes.push(c);
        }
        self.unchanged = self.replayed - self.changes.len() as u64;
    }
}
