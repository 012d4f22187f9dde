//! # Proven invariants
//!
//! A policy directory may declare, in `invariants.toml`, properties its rules
//! must have for **every** possible request — every human's attributes, every
//! resource, every argument, taint and budget value the schema allows — not
//! only for the examples a case table lists:
//!
//! ```toml
//! [[invariant]]
//! name = "refund-unattended-within-rep-limit"
//! tools = ["issue_refund"]
//! runs = "unattended"
//! only_when = "context.args.amount <= principal.human.rep_limit"
//! why = "no agent refunds more than its human's per-refund limit without a lead"
//! ```
//!
//! `runs` says which calls the property is about:
//!
//! - `unattended` — calls that run without an operator: a plain allow, or a
//!   constrained call as it runs after its rewrite (the rewritten call must be
//!   a plain allow, so it is covered by the same check);
//! - `at_all` — calls the gate does not deny: those, and escalated calls an
//!   operator may approve.
//!
//! `only_when` is a Cedar condition over `principal`, `resource` and `context`
//! that every such call satisfies. The requests considered are those the gate
//! hands to the rules: the integer bounds of the tool's JSON Schema hold
//! (arguments outside them are refused before any rule runs) and the humans'
//! limits are not negative (`zt-policy check` refuses such a directory). `assuming`
//! (optional) restricts them further by another Cedar condition — facts the
//! gate establishes that no schema states, such as a budget's sum never being
//! negative. A violation's report prints every assumption. String formats
//! (JSON Schema patterns) are not assumed: a counterexample's strings are
//! placeholders, and only what the property reads of them matters.
//!
//! ## How it is checked
//!
//! Cedar's symbolic compiler (`cedar-policy-symcc`) turns the tool's enforced
//! rules and the property into SMT and asks a solver (cvc5) whether some
//! request runs and violates the property. The rules checked are the tool's
//! enforced slice with the gate's extra effects made explicit: for
//! `unattended`, `escalate` and `constrain` permits act as forbids (a call they
//! match does not run as asked without an operator). `@shadow` rules are not
//! enforced and take no part.
//!
//! A proof is sound for the gate: the gate allows less than Cedar would,
//! because it denies a call on which any rule errors, where Cedar skips the
//! rule. A counterexample is decided again, concretely, by Cedar and by the
//! gate's own combination of effects; one the gate would not let through
//! (because a rule errors on it, e.g. an overflow on absurd values) is
//! reported as such, so the author can bound the values with `assuming`.

use std::collections::HashSet;
use std::path::Path;

use cedar_policy::{
    Authorizer, Entities, Policy, PolicyId, PolicySet, Request, RequestEnv, ValidationMode,
    Validator,
};
use cedar_policy_symcc::solver::Solver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Problem;
use crate::decide::Outcome;
use crate::load::{PolicyBundle, RuleKind, ToolEntry};

/// The invariants file of a policy directory.
pub const FILE: &str = "invariants.toml";

/// Which calls an invariant is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runs {
    /// Calls that run without an operator (allow; constrain after its rewrite).
    Unattended,
    /// Calls the gate does not deny (also escalated calls, once approved).
    AtAll,
}

impl Runs {
    fn describe(self) -> &'static str {
        match self {
            Runs::Unattended => "runs without an operator",
            Runs::AtAll => "may run (with an operator's approval)",
        }
    }
}

/// One property the policy must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariant {
    /// Unique name, shown in the report.
    pub name: String,
    /// The tools (Cedar actions) it is about.
    pub tools: Vec<String>,
    /// Which of their calls.
    pub runs: Runs,
    /// The Cedar condition every such call satisfies.
    pub only_when: String,
    /// A Cedar condition restricting the requests considered.
    #[serde(default)]
    pub assuming: Option<String>,
    /// What it protects, for the report.
    #[serde(default)]
    pub why: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvariantsFile {
    #[serde(default)]
    invariant: Vec<Invariant>,
}

/// Why invariants could not be proven either way.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
    /// The symbolic compiler or the solver failed (or answered `unknown`).
    #[error("invariant `{invariant}` for `{tool}`: {message}")]
    Solver {
        /// The invariant.
        invariant: String,
        /// The tool.
        tool: String,
        /// What failed.
        message: String,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and parses an invariants file (not yet checked against a bundle:
/// see [`check`]).
pub fn read(path: &Path) -> Result<Vec<Invariant>, ProveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProveError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let file: InvariantsFile = toml::from_str(&text).map_err(|e| {
        ProveError::Invalid(vec![Problem::new(
            FILE,
            e.to_string().trim_end().to_string(),
        )])
    })?;
    Ok(file.invariant)
}

/// The Cedar policies one invariant is checked with, for one tool.
struct Query<'a> {
    entry: &'a ToolEntry,
    /// The tool's enforced rules as they decide whether a call runs, plus
    /// the assumption as a forbid.
    runs: PolicySet,
    /// The property as a permit.
    property: PolicySet,
    /// What the requests considered satisfy: the argument bounds and the
    /// invariant's own `assuming`.
    assumed: Vec<String>,
}

/// What every call of `tool` satisfies before the rules see it: the integer
/// bounds of its JSON Schema (arguments outside them are refused first),
/// then the invariant's `assuming`.
fn assumptions(bundle: &PolicyBundle, tool: &str, assuming: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let schema = bundle
        .sources
        .tools
        .iter()
        .find(|t| t.name == tool)
        .map(|t| &t.input_schema);
    let required: Vec<&str> = schema
        .and_then(|s| s["required"].as_array())
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let properties = schema.and_then(|s| s["properties"].as_object());
    for (name, prop) in properties.into_iter().flatten() {
        let plain = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain || prop["type"] != "integer" {
            continue;
        }
        let bounds: Vec<String> = [("minimum", ">="), ("maximum", "<=")]
            .iter()
            .filter_map(|(key, op)| {
                prop[*key]
                    .as_i64()
                    .map(|v| format!("context.args.{name} {op} {v}"))
            })
            .collect();
        if bounds.is_empty() {
            continue;
        }
        let bounds = bounds.join(" && ");
        out.push(if required.contains(&name.as_str()) {
            bounds
        } else {
            format!("(if context.args has {name} then {bounds} else true)")
        });
    }
    // humans.toml's limits are never negative (`zt-policy check`).
    let mut limits: Vec<&str> = bundle
        .sources
        .humans
        .iter()
        .flat_map(|h| h.attrs.iter())
        .filter(|(name, value)| value.is_i64() && crate::check::is_limit(name))
        .map(|(name, _)| name.as_str())
        .collect();
    limits.sort_unstable();
    limits.dedup();
    for name in limits {
        out.push(format!("principal.human.{name} >= 0"));
    }
    if let Some(a) = assuming {
        out.push(format!("({})", a.trim()));
    }
    out
}

const ASSUMING_ID: &str = "invariant:assuming";
const PROPERTY_ID: &str = "invariant:only_when";

fn culprit(inv: &Invariant) -> String {
    format!("{FILE}: invariant `{}`", inv.name)
}

/// Parses one condition as a rule for `tool` and validates it (strict) like
/// the policy's own rules.
fn condition(
    bundle: &PolicyBundle,
    inv: &Invariant,
    tool: &str,
    effect: &str,
    field: &str,
    cond: &str,
    id: &str,
) -> Result<Policy, Problem> {
    let action = crate::load::action_uid(tool).map_err(|m| Problem::new(culprit(inv), m))?;
    let (keyword, clause) = match effect {
        "forbid" => ("forbid", "unless"),
        _ => ("permit", "when"),
    };
    let text =
        format!("{keyword} (principal, action == {action}, resource) {clause} {{ {cond} }};");
    let policy = Policy::parse(Some(PolicyId::new(id)), &text).map_err(|e| {
        Problem::new(
            culprit(inv),
            format!("`{field}` is not one Cedar condition: {e}"),
        )
    })?;
    let mut set = PolicySet::new();
    set.add(policy.clone())
        .map_err(|e| Problem::new(culprit(inv), e.to_string()))?;
    let result =
        Validator::new(bundle.sources.schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(err) = result.validation_errors().next() {
        return Err(Problem::new(
            culprit(inv),
            format!("`{field}` does not type-check for `{tool}`: {err}"),
        ));
    }
    Ok(policy)
}

/// The rule `policy` with its effect turned to forbid.
fn as_forbid(policy: &Policy) -> Result<Policy, String> {
    let mut json = policy.to_json().map_err(|e| e.to_string())?;
    let Some(obj) = json.as_object_mut() else {
        return Err("a rule's JSON form is not an object".into());
    };
    obj.insert("effect".into(), Value::from("forbid"));
    Policy::from_json(Some(policy.id().clone()), json).map_err(|e| e.to_string())
}

fn queries<'a>(
    bundle: &'a PolicyBundle,
    inv: &Invariant,
) -> Result<Vec<(String, Query<'a>)>, Problem> {
    if inv.tools.is_empty() {
        return Err(Problem::new(culprit(inv), "`tools` is empty"));
    }
    let mut out = Vec::new();
    for tool in &inv.tools {
        let Some(entry) = bundle.entries.get(tool) else {
            return Err(Problem::new(
                culprit(inv),
                format!("unknown tool `{tool}` (not in tools.toml)"),
            ));
        };
        let mut runs = PolicySet::new();
        for rule in entry.policies.policies() {
            let kind = bundle
                .rules
                .get(rule.id().to_string().as_str())
                .map(|m| m.kind);
            let rule = match (kind, inv.runs) {
                (None, _) => {
                    return Err(Problem::new(
                        culprit(inv),
                        format!("rule `{}` has no metadata", rule.id()),
                    ));
                }
                (Some(RuleKind::Escalate | RuleKind::Constrain), Runs::Unattended) => {
                    as_forbid(rule).map_err(|m| {
                        Problem::new(culprit(inv), format!("rule `{}`: {m}", rule.id()))
                    })?
                }
                _ => rule.clone(),
            };
            runs.add(rule)
                .map_err(|e| Problem::new(culprit(inv), e.to_string()))?;
        }
        let assumed = assumptions(bundle, tool, inv.assuming.as_deref());
        if !assumed.is_empty() {
            let text = assumed.join(" && ");
            let forbid = condition(bundle, inv, tool, "forbid", "assuming", &text, ASSUMING_ID)?;
            runs.add(forbid)
                .map_err(|e| Problem::new(culprit(inv), e.to_string()))?;
        }
        let permit = condition(
            bundle,
            inv,
            tool,
            "permit",
            "only_when",
            &inv.only_when,
            PROPERTY_ID,
        )?;
        let mut property = PolicySet::new();
        property
            .add(permit)
            .map_err(|e| Problem::new(culprit(inv), e.to_string()))?;
        out.push((
            tool.clone(),
            Query {
                entry,
                runs,
                property,
                assumed,
            },
        ));
    }
    Ok(out)
}

/// Checks invariants against a bundle without a solver: unique names, known
/// tools, conditions that parse and type-check. Empty means [`prove`] can run.
pub fn check(bundle: &PolicyBundle, invariants: &[Invariant]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for inv in invariants {
        if inv.name.trim().is_empty() {
            problems.push(Problem::new(FILE, "an invariant has an empty name"));
        } else if !names.insert(inv.name.as_str()) {
            problems.push(Problem::new(culprit(inv), "is declared twice"));
        }
        if let Err(p) = queries(bundle, inv) {
            problems.push(p);
        }
    }
    problems
}

/// What the solver found for one invariant and one tool.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// No request violates it.
    Proven {
        /// No call of the tool runs at all in the sense of `runs`: the
        /// property holds trivially.
        vacuous: bool,
    },
    /// A request that runs and violates it.
    Violated {
        /// The request: principal, action, resource, context, entities.
        counterexample: Value,
        /// What the gate itself decides for it.
        gate: String,
        /// The gate lets it through as `runs` says (otherwise it only
        /// violates the property under Cedar's own semantics, where an
        /// erroring rule is skipped).
        gate_agrees: bool,
    },
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The invariant's name.
    pub invariant: String,
    /// The tool.
    pub tool: String,
    /// Which calls.
    pub runs: Runs,
    /// The property.
    pub only_when: String,
    /// What the requests considered satisfy: the tool's argument bounds and
    /// the invariant's `assuming`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assuming: Vec<String>,
    /// The result.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Solver time, in milliseconds.
    pub millis: u64,
}

impl Finding {
    /// Whether the property was proven.
    pub fn proven(&self) -> bool {
        matches!(self.verdict, Verdict::Proven { .. })
    }
}

/// Proves every invariant for every tool it names (one query per request
/// environment of the tool in the schema). An error means nothing could be
/// concluded; a violated invariant is a [`Finding`], not an error.
pub async fn prove<S: Solver>(
    bundle: &PolicyBundle,
    invariants: &[Invariant],
    compiler: &mut CedarSymCompiler<S>,
) -> Result<Vec<Finding>, ProveError> {
    let problems = check(bundle, invariants);
    if !problems.is_empty() {
        return Err(ProveError::Invalid(problems));
    }
    let schema = &bundle.sources.schema;
    let mut findings = Vec::new();
    for inv in invariants {
        let queries = queries(bundle, inv).map_err(|p| ProveError::Invalid(vec![p]))?;
        for (tool, q) in queries {
            let fail = |message: String| ProveError::Solver {
                invariant: inv.name.clone(),
                tool: tool.clone(),
                message,
            };
            let envs: Vec<RequestEnv> = schema
                .request_envs()
                .filter(|e| e.action() == &q.entry.action)
                .collect();
            if envs.is_empty() {
                return Err(fail("the schema has no request for this action".into()));
            }
            let started = std::time::Instant::now();
            let mut verdict = Verdict::Proven { vacuous: true };
            for env in &envs {
                let runs = CompiledPolicySet::compile(&q.runs, env, schema)
                    .map_err(|e| fail(format!("compiling the rules: {e}")))?;
                let property = CompiledPolicySet::compile(&q.property, env, schema)
                    .map_err(|e| fail(format!("compiling the property: {e}")))?;
                let cex = compiler
                    .check_implies_with_counterexample_opt(&runs, &property)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if let Some(cex) = cex {
                    verdict =
                        violated(bundle, inv, &q, &cex.request, &cex.entities).map_err(fail)?;
                    break;
                }
                let never = compiler
                    .check_always_denies_opt(&runs)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if !never {
                    verdict = Verdict::Proven { vacuous: false };
                }
            }
            findings.push(Finding {
                invariant: inv.name.clone(),
                tool,
                runs: inv.runs,
                only_when: inv.only_when.clone(),
                assuming: q.assumed.clone(),
                verdict,
                millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
    }
    Ok(findings)
}

/// Checks a counterexample concretely and describes what the gate does with
/// it. A counterexample Cedar itself does not confirm is the solver's error.
fn violated(
    bundle: &PolicyBundle,
    inv: &Invariant,
    q: &Query<'_>,
    request: &Request,
    entities: &Entities,
) -> Result<Verdict, String> {
    let authorizer = Authorizer::new();
    let runs = authorizer
        .is_authorized(request, &q.runs, entities)
        .decision();
    let holds = authorizer
        .is_authorized(request, &q.property, entities)
        .decision();
    if runs != cedar_policy::Decision::Allow || holds != cedar_policy::Decision::Deny {
        return Err(format!(
            "the solver's counterexample does not replay (rules: {runs:?}, property: {holds:?})"
        ));
    }
    let (gate, gate_agrees) = match bundle.judge(&q.entry.policies, request, entities) {
        Outcome::Permit(kind, rules) => {
            let effect = match kind {
                RuleKind::Allow => "allows",
                RuleKind::Constrain => "constrains",
                RuleKind::Escalate => "escalates",
                RuleKind::Forbid => "denies",
            };
            let agrees = match inv.runs {
                Runs::Unattended => kind == RuleKind::Allow,
                Runs::AtAll => kind != RuleKind::Forbid,
            };
            (
                format!("the gate {effect} it ({})", rules.join(", ")),
                agrees,
            )
        }
        Outcome::Forbid(rules) => (format!("the gate denies it ({})", rules.join(", ")), false),
        Outcome::NoPermit => ("the gate denies it (no permit)".to_string(), false),
        Outcome::Error(rules) => (
            format!(
                "the gate denies it: rule {} errors on it (Cedar alone would skip the rule)",
                rules.join(", ")
            ),
            false,
        ),
    };
    // The request's own entities (the schema's actions left out), in a
    // stable order.
    let mut listed: Vec<Value> = match entities.to_json_value() {
        Ok(Value::Array(list)) => list
            .into_iter()
            .filter(|e| e["uid"]["type"] != "Action")
            .collect(),
        _ => Vec::new(),
    };
    listed.sort_by_key(|e| (e["uid"]["type"].to_string(), e["uid"]["id"].to_string()));
    let counterexample = json!({
        "principal": request.principal().map(ToString::to_string),
        "action": request.action().map(ToString::to_string),
        "resource": request.resource().map(ToString::to_string),
        "context": request
            .context()
            .and_then(|c| c.to_json_value().ok())
            .unwrap_or(Value::Null),
        "entities": listed,
    });
    Ok(Verdict::Violated {
        counterexample,
        gate,
        gate_agrees,
    })
}

/// One line per finding for people; violations with their counterexample.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        match &f.verdict {
            Verdict::Proven { vacuous } => {
                out.push_str(&format!(
                    "proven    {}  {}  ({} ms){}\n",
                    f.invariant,
                    f.tool,
                    f.millis,
                    if *vacuous {
                        format!("  vacuous: no call {}", f.runs.describe())
                    } else {
                        String::new()
                    }
                ));
            }
            Verdict::Violated {
                counterexample,
                gate,
                gate_agrees,
            } => {
                out.push_str(&format!("VIOLATED  {}  {}\n", f.invariant, f.tool));
                out.push_str(&format!(
                    "  a call that {} breaks: {}\n",
                    f.runs.describe(),
                    f.only_when.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
                if !f.assuming.is_empty() {
                    let a = f.assuming.join(" && ");
                    let a = a.split_whitespace().collect::<Vec<_>>().join(" ");
                    out.push_str(&format!("  assuming: {a}\n"));
                }
                out.push_str(&format!("  {gate}\n"));
                if !gate_agrees {
                    out.push_str(
                        "  (only under Cedar's semantics: bound the values with `assuming`, or guard the rule)\n",
                    );
                }
                for key in ["principal", "resource", "context"] {
                    let v = &counterexample[key];
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    out.push_str(&format!("  {key:<10} {text}\n"));
                }
                if let Some(list) = counterexample["entities"].as_array() {
                    for e in list {
                        out.push_str(&format!("  entity     {} {}\n", e["uid"], e["attrs"]));
                    }
                }
            }
        }
    }
    out
}
