//! # zt-policies: the policy gate
//!
//! Every tool call an agent makes passes through [`PolicyBundle::decide`] before the
//! broker executes it. The gate answers one of four [`Effect`]s: **allow**, **deny**,
//! **constrain** (the arguments are rewritten to least privilege, then checked again)
//! or **escalate** (a human operator must approve the exact request).
//!
//! ## Policy is data
//!
//! A policy directory (the shipped one is `policies/data/`) holds four files:
//!
//! - `tools.toml` — the tool registry: name, title, description, risk level,
//!   read-only / destructive flags, the Cedar entity type the tool acts on
//!   (`resource`), the argument carrying that resource's id (`resource_arg`) and a
//!   **strict** JSON Schema for the arguments (`additionalProperties = false` at
//!   every object level; unknown fields are an error, never silently dropped).
//! - `humans.toml` — the directory of humans agents may act for, with the cached
//!   attributes rules use: whatever `schema.cedarschema` declares for `Human`
//!   (checked at load; in the example `rep_limit` in cents, `allowed_regions`,
//!   `grantable_plans`, `roles`).
//! - `policy.cedar` — the rules, in [Cedar](https://www.cedarpolicy.com/).
//! - `schema.cedarschema` — the Cedar schema; every rule is validated against it
//!   in strict mode, so a typo in an attribute name fails the startup check
//!   instead of silently never matching.
//!
//! ## Why Cedar, and how the four effects fit in it
//!
//! Cedar is a small, analysable authorization language with a typed schema
//! validator, and evaluation is pure. It only knows `permit` and `forbid`, so the
//! extra effects are carried in policy annotations (the approach Cedar's
//! maintainers recommend):
//!
//! | annotation | meaning |
//! |---|---|
//! | `@id("…")` | required and unique; the rule id shown in decisions and the audit log |
//! | `@effect("allow" \| "constrain" \| "escalate")` | on permits; absent = `allow` |
//! | `@rewrite("…")` | on `constrain` permits: the rewrite, see [`Rewrite`] |
//! | `@reason("…")` | short human-readable explanation (operators, audit) |
//! | `@model_message("…")` | safe message for the model: no internals |
//! | `@shadow("…")` | evaluated beside the enforced rules and recorded, never enforced; delete the line to promote it |
//!
//! Combination: a matching `forbid` wins over everything; no matching permit means
//! deny (default deny); among matching permits the most restrictive wins —
//! escalate > constrain > allow. A constrained call is rewritten, re-validated
//! against the tool's schema and evaluated **again**; unless that second evaluation
//! is a plain allow the call is denied (no rewrite loops).
//!
//! ## Entity model
//!
//! - principal `Agent::"<agent id>"` with attribute `human: Human` — the human the
//!   agent acts for (the token's `sub`);
//! - `Human::"<id>"` with the attributes the schema declares, built once at
//!   load time from `humans.toml`;
//! - action `Action::"<tool name>"`;
//! - resource of the tool's `resource` type (`Account`, `Order`, `Document`) whose
//!   id is the tool's `resource_arg` argument and whose attributes come from
//!   [`DecisionRequest::resource`] (e.g. `Order`: `region`, `account`, `amount`,
//!   `refunded`, in cents). Attributes may be missing (the Claude Code hook has no
//!   backend access): rules guard them with `has`, and forbid rules deny calls
//!   whose decisive data is missing;
//! - context `{ args: <the tool arguments>, session: { tainted }, budgets: {
//!   NAME: <consumed in the window> } }`, e.g. `context.args.amount`,
//!   `context.session.tainted` (the session received outsiders' content
//!   earlier), `context.budgets.refunded_today` (see [`budgets`]). A rule
//!   reads only what the schema declares for the action.
//!
//! ## Provenance
//!
//! Every [`Decision`] carries its [`Basis`]: the bundle's hash, the human,
//! resource and context the rules saw, and the shadow verdict. The broker
//! records it in the decision's audit entry; `zt-policy replay` decides the
//! recorded requests again under a candidate policy directory.
//!
//! ## Fail closed
//!
//! Cedar skips a policy whose evaluation errors, which could silently drop a
//! `forbid`. The gate therefore denies any call for which any policy evaluation
//! errored. Unknown tool, unknown human, invalid arguments, a resource id that does
//! not match the arguments, a failed rewrite, an internal error or even a panic all
//! yield [`Effect::Deny`]. Synthetic denials carry rule ids prefixed with `gate:`
//! (e.g. `gate:default-deny`, `gate:invalid-args`).
//!
//! ## Speed
//!
//! The rule set is sliced per tool at load time (Cedar evaluates every policy of
//! the set it is given, so one `PolicySet` per action is ~2.5x faster), argument
//! validators are compiled once, and human entities are prebuilt; per call only
//! the agent, resource and context are built.
//!
//! ## Reloading
//!
//! A [`PolicyBundle`] is an immutable snapshot. [`PolicyStore`] holds the current
//! one behind an `Arc` and swaps it atomically on [`PolicyStore::reload`]; a broken
//! file keeps the old snapshot and returns the error.

mod args;
pub mod budgets;
pub mod cases;
mod check;
mod decide;
pub mod hook;
pub mod limits;
mod load;
pub mod prove;
pub mod replay;
mod rewrite;
pub mod shipped;
mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use args::ArgError;
pub use load::{LoadError, PolicyBundle, bundle_hash};
pub use rewrite::Rewrite;
pub use store::PolicyStore;

/// The file names inside a policy directory.
pub mod files {
    /// The tool registry.
    pub const TOOLS: &str = "tools.toml";
    /// The directory of humans.
    pub const HUMANS: &str = "humans.toml";
    /// The Cedar rules.
    pub const POLICY: &str = "policy.cedar";
    /// The Cedar schema.
    pub const SCHEMA: &str = "schema.cedarschema";
    /// Rate limits (optional).
    pub const LIMITS: &str = "limits.toml";
    /// Detection rules over the live event stream (optional; read by the
    /// approval service, not by the policy engine).
    pub const DETECTIONS: &str = "detections.toml";
    /// Approval rules: request lifetime, quorum, reasons (optional; read by
    /// the approval service, not by the policy engine).
    pub const APPROVALS: &str = "approvals.toml";
    /// Patterns cut out of tool results (optional; read by the broker, not
    /// by the policy engine).
    pub const REDACTIONS: &str = "redactions.toml";
    /// Budgets over time (optional).
    pub const BUDGETS: &str = "budgets.toml";
    /// Properties the rules must have, proven by `zt-policy prove`
    /// (optional). Not part of the bundle or its hash: it decides nothing.
    pub const INVARIANTS: &str = crate::prove::FILE;

    /// Every file of a policy directory, in the order the bundle hash
    /// reads them.
    pub const ALL: [&str; 9] = [
        TOOLS, HUMANS, POLICY, SCHEMA, LIMITS, BUDGETS, DETECTIONS, APPROVALS, REDACTIONS,
    ];
}

/// Risk level of a tool, as declared in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Read-only or otherwise harmless.
    Low,
    /// Changes state in a recoverable way.
    Medium,
    /// Moves money or destroys data.
    High,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        })
    }
}

/// One tool of the registry (`[[tool]]` in `tools.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Tool name; also the Cedar action id (`Action::"<name>"`).
    pub name: String,
    /// Short title for humans.
    pub title: String,
    /// Description (shown to the model by the MCP broker).
    pub description: String,
    /// Risk level.
    pub risk: Risk,
    /// True when the tool never changes state.
    pub read_only: bool,
    /// True when the tool may destroy data or move money.
    pub destructive: bool,
    /// Cedar entity type the tool acts on (`Account`, `Order`, `Document`).
    pub resource: String,
    /// Strict JSON Schema of the arguments.
    pub input_schema: serde_json::Value,
    /// The upstream that executes the tool: a name declared in the broker's
    /// private `upstreams.toml` (connection details and credentials never
    /// live in the policy directory). `None`: the broker's built-in adapters
    /// of the example domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The upstream's own name for the operation (an MCP server's tool
    /// name); the tool's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The argument holding the money the call moves (integer cents), which
    /// approval limits, quorum and detection rules read; `None`: the tool
    /// moves no money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_arg: Option<String>,
    /// Resource attributes taken from the arguments (e.g. a file's path and
    /// directory), computed the same way by the broker and the hook.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub resource_attrs: std::collections::BTreeMap<String, ArgAttr>,
    /// The one-line summary of a result for operators (audit, live view):
    /// `{NAME}` is the result's field, else the argument; `{NAME|count}`
    /// the length of an array. `None`: "done".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// What the agent-side hook, which has no backend access, assumes about
    /// the resource: the most favourable values the rules allow (the broker
    /// decides again with the real ones). A value is a JSON literal, or
    /// `"$human.NAME"` (the human's attribute) or `"$human.NAME|first"`
    /// (the first member of a set attribute).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub hook_assumes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The read-only upstream call that fetches what the policy needs
    /// about the call's object, before deciding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<Lookup>,
    /// How a retry of an earlier call is recognised (idempotency keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    /// What the tool returns is written by outsiders (documents, web pages,
    /// tickets): marked so in its audit entries, for policy on sessions
    /// that have read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untrusted_output: bool,
    /// Largest result passed to the model, in bytes of JSON (below the
    /// upstream's own cap); larger ones are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<usize>,
    /// The fingerprint (`sha256:HEX`) of the upstream's definition of the
    /// tool as it was reviewed and admitted (`zt-broker admit`): its name,
    /// title, description, schemas and annotations. An upstream whose live
    /// definition differs has the tool quarantined until it is re-admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl ToolSpec {
    /// The resource attributes the hook assumes for `human` (see
    /// [`ToolSpec::hook_assumes`]); a `$human` reference the human does not
    /// have is left out.
    pub fn assumed_attrs(
        &self,
        human: Option<&Human>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (name, value) in &self.hook_assumes {
            let resolved = match value.as_str().and_then(|s| s.strip_prefix("$human.")) {
                None => Some(value.clone()),
                Some(reference) => {
                    let (attr, first) = match reference.strip_suffix("|first") {
                        Some(a) => (a, true),
                        None => (reference, false),
                    };
                    let v = human.and_then(|h| h.attrs.get(attr));
                    if first {
                        v.and_then(serde_json::Value::as_array)
                            .and_then(|a| a.first())
                            .cloned()
                    } else {
                        v.cloned()
                    }
                }
            };
            if let Some(v) = resolved {
                out.insert(name.clone(), v);
            }
        }
        out
    }

    /// The summary of a call's `result` (see [`ToolSpec::summary`]): one
    /// printable line of at most 200 characters.
    pub fn summarize(&self, result: &serde_json::Value, args: &serde_json::Value) -> String {
        let Some(template) = &self.summary else {
            return "done".to_owned();
        };
        let out = fill(template, |field| {
            let (name, count) = match field.strip_suffix("|count") {
                Some(n) => (n, true),
                None => (field, false),
            };
            let value = result.get(name).or_else(|| args.get(name));
            match (value, count) {
                (Some(serde_json::Value::Array(items)), true) => items.len().to_string(),
                (Some(serde_json::Value::String(s)), false) => s.clone(),
                (Some(v), false) if !v.is_null() => v.to_string(),
                _ => "?".to_owned(),
            }
        });
        out.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect()
    }

    /// The name the upstream knows the operation by.
    pub fn operation(&self) -> &str {
        self.operation.as_deref().unwrap_or(&self.name)
    }

    /// The amount of money `args` move, in cents: `Ok(None)` for a tool that
    /// moves none, an error when the declared argument is missing or not a
    /// non-negative integer (never a silent zero).
    pub fn amount(&self, args: &serde_json::Value) -> Result<Option<i64>, String> {
        let Some(arg) = &self.amount_arg else {
            return Ok(None);
        };
        match args.get(arg).and_then(serde_json::Value::as_i64) {
            Some(cents) if cents >= 0 => Ok(Some(cents)),
            _ => Err(format!(
                "`{arg}` (the amount of `{}`) is missing or not a non-negative integer",
                self.name
            )),
        }
    }
}

/// `template` with each `{FIELD}` replaced by `value(FIELD)` (an unclosed
/// `{` and what follows it stay as written). Summaries and not-found
/// messages are written this way.
pub fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&value(&rest[open + 1..open + close]));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// A read-only call to an upstream that fetches the attributes the policy
/// needs about a call's object (`[tool.lookup]`). It is sent the call's
/// validated arguments; a result with nothing found refuses the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The upstream (declared in the broker's `upstreams.toml`).
    pub upstream: String,
    /// Its operation, which the upstream must declare read-only.
    pub operation: String,
    /// Cedar attribute of the resource → JSON pointer into the result. A
    /// pointer the result does not have refuses the call (fail closed).
    #[serde(default)]
    pub attrs: std::collections::BTreeMap<String, String>,
}

/// How a retry of an earlier call is recognised (`[tool.replay]`): when the
/// call carries `key_arg`, a read-only upstream call looks up the call
/// recorded under that key for the same human; found with the same
/// arguments, its record is returned as the result and nothing runs again;
/// found with other arguments, the call is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// The argument holding the caller's idempotency key.
    pub key_arg: String,
    /// The upstream that records the calls.
    pub upstream: String,
    /// Its read-only operation that finds one by key (`$actor.human` and
    /// `$args.KEY_ARG` among its parameters).
    pub operation: String,
    /// Argument → JSON pointer into the found record: every one must be
    /// equal for the call to be the same call.
    #[serde(default)]
    pub same: std::collections::BTreeMap<String, String>,
}

/// A resource attribute taken from an argument (`[tool.resource_attrs]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgAttr {
    /// The argument (a string property of the tool's schema).
    pub arg: String,
    /// How the attribute is derived from it.
    #[serde(default, rename = "as")]
    pub derive: Derive,
}

/// How an [`ArgAttr`] is derived from its argument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Derive {
    /// The argument as it is.
    #[default]
    Value,
    /// An absolute path in normal form (no `.` or `..` segment, no empty
    /// segment, no trailing `/`); any other path is refused, so a rule on
    /// `resource.path like "/srv/docs/*"` means what it says.
    Path,
    /// The directory of such a path (`/srv/docs` for `/srv/docs/a.txt`).
    Dirname,
}

impl Derive {
    /// The attribute's value for the argument `value`.
    pub fn apply(self, value: &serde_json::Value) -> Result<serde_json::Value, String> {
        if self == Derive::Value {
            return Ok(value.clone());
        }
        let Some(text) = value.as_str() else {
            return Err("a path must be a string".into());
        };
        let path = normal_path(text)?;
        Ok(serde_json::Value::String(match self {
            Derive::Dirname => match path.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => path[..i].to_owned(),
            },
            _ => path.to_owned(),
        }))
    }
}

/// `text` if it is an absolute path in normal form.
fn normal_path(text: &str) -> Result<&str, String> {
    if !text.starts_with('/') {
        return Err("the path must be absolute".into());
    }
    if text.contains('\0') || text.chars().any(char::is_control) {
        return Err("the path holds control characters".into());
    }
    if text == "/" {
        return Ok(text);
    }
    for segment in text[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("the path must be in normal form (no empty, `.` or `..` segment)".into());
        }
    }
    Ok(text)
}

/// A human agents may act for (`[[human]]` in `humans.toml`): an id, a
/// display name, and whatever attributes `schema.cedarschema` declares for
/// the `Human` entity type (checked against it at load; in the example
/// `rep_limit`, `allowed_regions`, `grantable_plans`, `roles`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Human {
    /// Directory id (the token's `sub`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The attributes rules read as `principal.human.NAME`.
    #[serde(flatten)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
}

impl Human {
    /// An integer attribute (e.g. a limit in cents), if the human has it.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attrs.get(name).and_then(serde_json::Value::as_i64)
    }

    /// A set-of-strings attribute's members (empty when absent).
    pub fn strings(&self, name: &str) -> Vec<&str> {
        self.attrs
            .get(name)
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// The resource a call acts on, as known by the caller (the broker looks it up in
/// the backend; the Claude Code hook usually has none).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Resource {
    /// Entity id; must equal the tool's resource argument (e.g. `order_id`).
    pub id: String,
    /// Attributes (e.g. `region`, `amount`, `refunded`). Strings, integers,
    /// booleans, arrays and objects are accepted; missing ones are simply absent.
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
}

/// One tool call to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRequest {
    /// Tool name.
    pub tool: String,
    /// Tool arguments, as sent by the agent (attacker-controlled).
    pub args: serde_json::Value,
    /// Agent id (the token's `act.sub`).
    pub agent: String,
    /// Human the agent acts for (the token's `sub`).
    pub human: String,
    /// Resource the call acts on, when known. When `None`, a resource with the id
    /// taken from the arguments and no attributes is used.
    #[serde(default)]
    pub resource: Option<Resource>,
    /// What is known about the session and its budgets.
    #[serde(default)]
    pub context: CallContext,
}

/// What the broker knows about a call beyond its arguments and resource,
/// handed to the rules as context: `context.session.tainted` and
/// `context.budgets.NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallContext {
    /// The session has received outsiders' content (a result of a tool
    /// marked `untrusted_output`) earlier on.
    #[serde(default)]
    pub tainted: bool,
    /// Each budget of the tool: what was consumed within its window before
    /// this call. A budget of the tool that is missing here denies the call.
    #[serde(default)]
    pub budgets: std::collections::BTreeMap<String, i64>,
}

/// What a decision rested on, recorded with it in the audit trail so that
/// an auditor can say which policy decided and on which facts, and so that
/// `zt-policy replay` can decide it again under another policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Basis {
    /// The policy bundle's hash (`sha256:HEX` over every file of the policy
    /// directory).
    pub policy: String,
    /// The agent (the principal).
    #[serde(default)]
    pub agent: String,
    /// The human's attributes as the rules saw them (empty for an unknown
    /// human).
    #[serde(default)]
    pub human: serde_json::Map<String, serde_json::Value>,
    /// The resource as looked up (attributes derived from the arguments are
    /// computed again from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// The session's taint and budgets.
    #[serde(default)]
    pub context: CallContext,
    /// What the rules marked `@shadow`, evaluated with the enforced ones,
    /// would have decided; `None` when no shadow rule applies to the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Verdict>,
}

/// An effect and the rules that determined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// What would happen.
    pub effect: Effect,
    /// The determining rules.
    pub rules: Vec<String>,
    /// Those of them marked `@shadow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_rules: Vec<String>,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Run the call as is.
    Allow,
    /// Run the call with the rewritten arguments in [`Decision::args`].
    Constrain,
    /// Do not run the call.
    Deny,
    /// Pause the call until a human operator approves this exact request.
    Escalate,
}

impl Effect {
    /// Lowercase name (`allow`, `constrain`, `deny`, `escalate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Constrain => "constrain",
            Effect::Deny => "deny",
            Effect::Escalate => "escalate",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Effect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Effect::Allow),
            "constrain" => Ok(Effect::Constrain),
            "deny" => Ok(Effect::Deny),
            "escalate" => Ok(Effect::Escalate),
            other => Err(format!(
                "unknown effect `{other}` (expected allow, constrain, deny or escalate)"
            )),
        }
    }
}

/// A decision with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub effect: Effect,
    /// The arguments to run with: rewritten when `effect` is `Constrain`, else the
    /// arguments as received.
    pub args: serde_json::Value,
    /// Ids of the rules that determined the decision, in policy-file order
    /// (synthetic gate rules are prefixed with `gate:`).
    pub rules: Vec<String>,
    /// Explanation for operators and the audit log.
    pub reason: String,
    /// Safe message for the model: no internals, no rule text.
    pub model_message: String,
    /// What the decision rested on.
    #[serde(default)]
    pub basis: Basis,
}

impl Decision {
    /// The shadow verdict when it differs from the enforced one (effect,
    /// or arguments of a constrained call — compared by effect and rules).
    pub fn shadow_divergence(&self) -> Option<&Verdict> {
        self.basis
            .shadow
            .as_ref()
            .filter(|s| s.effect != self.effect)
    }
}

/// A problem found by the startup check, naming its culprit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The culprit: a file, optionally followed by the tool, human or rule, e.g.
    /// ``policy.cedar: rule `refund-over-balance` ``.
    pub culprit: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(culprit: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            culprit: culprit.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.culprit, self.message)
    }
}

// The broker shares snapshots across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyBundle>();
    assert_send_sync::<PolicyStore>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn paths_are_taken_only_in_normal_form() {
        assert_eq!(
            Derive::Path.apply(&json!("/srv/docs/a.txt")).unwrap(),
            json!("/srv/docs/a.txt")
        );
        assert_eq!(
            Derive::Dirname.apply(&json!("/srv/docs/a.txt")).unwrap(),
            json!("/srv/docs")
        );
        assert_eq!(Derive::Dirname.apply(&json!("/a")).unwrap(), json!("/"));
        assert_eq!(Derive::Path.apply(&json!("/")).unwrap(), json!("/"));
        for bad in [
            "srv/docs",
            "/srv/docs/../etc/passwd",
            "/srv/./docs",
            "/srv//docs",
            "/srv/docs/",
            "/srv/do\ncs",
            "",
        ] {
            assert!(Derive::Path.apply(&json!(bad)).is_err(), "{bad:?}");
            assert!(Derive::Dirname.apply(&json!(bad)).is_err(), "{bad:?}");
        }
        assert!(Derive::Path.apply(&json!(3)).is_err());
        assert_eq!(Derive::Value.apply(&json!(3)).unwrap(), json!(3));
    }

    #[test]
    fn placeholders_are_filled_once_and_an_open_brace_stays() {
        let upper = |f: &str| f.to_uppercase();
        assert_eq!(fill("a {x} b {yz}", upper), "a X b YZ");
        assert_eq!(fill("ab{c", upper), "ab{c");
        assert_eq!(fill("{x}{", upper), "X{");
    }

    #[test]
    fn an_amount_is_read_never_defaulted() {
        let mut spec = ToolSpec {
            name: "pay".into(),
            title: String::new(),
            description: String::new(),
            risk: Risk::High,
            read_only: false,
            destructive: true,
            resource: "Order".into(),
            input_schema: json!({}),
            upstream: None,
            operation: None,
            amount_arg: None,
            resource_attrs: Default::default(),
            summary: Some("paid {amount} on {order} ({items|count} items, {missing})".into()),
            hook_assumes: [
                ("region".to_owned(), json!("$human.regions|first")),
                ("limit".to_owned(), json!("$human.limit")),
                ("plan".to_owned(), json!("basic")),
                ("gone".to_owned(), json!("$human.nothing")),
            ]
            .into_iter()
            .collect(),
            lookup: None,
            replay: None,
            untrusted_output: false,
            max_result_bytes: None,
            fingerprint: None,
        };
        let human: Human = serde_json::from_value(
            json!({"id": "a", "name": "A", "regions": ["eu", "us"], "limit": 5}),
        )
        .unwrap();
        assert_eq!(
            Value::Object(spec.assumed_attrs(Some(&human))),
            json!({"region": "eu", "limit": 5, "plan": "basic"})
        );
        assert_eq!(
            spec.summarize(
                &json!({"order": "o1", "items": [1, 2]}),
                &json!({"amount": 5})
            ),
            "paid 5 on o1 (2 items, ?)"
        );
        assert_eq!(spec.amount(&json!({"amount": 5})), Ok(None));
        spec.amount_arg = Some("amount".into());
        assert_eq!(spec.amount(&json!({"amount": 5})), Ok(Some(5)));
        for bad in [
            json!({}),
            json!({"amount": -1}),
            json!({"amount": "5"}),
            json!({"amount": 1.5}),
        ] {
            assert!(spec.amount(&bad).is_err(), "{bad}");
        }
        assert_eq!(spec.operation(), "pay");
    }
}
