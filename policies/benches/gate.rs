//! Benchmark of the policy gate, side by side with bare Cedar, Rego (regorus:
//! interpreter and compiled RVM) and CEL evaluating equivalent rules.
//!
//! Run (needs the optional comparison engines):
//!
//! ```text
//! cargo bench -p zt-policies --features bench-compare --bench gate -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Workload: a fixed, seeded mix of synthetic calls over the example domain (all
//! five tools, the four humans, every region, refunds under / at / over the rep
//! limit and over the hard cap, every plan, `list_orders` limits around 20), each
//! with the resource attributes the broker supplies. Before anything is timed,
//! every engine must agree with the gate's effect on every call of the mix (the
//! setup panics otherwise).
//!
//! Engines (criterion ids):
//! - `gate/full` — [`PolicyBundle::decide`]: argument validation, entity and
//!   context building, sliced Cedar evaluation, effect resolution, and the
//!   re-evaluation of constrained calls;
//! - `cedar/bare-sliced` — `Authorizer::is_authorized` on a prebuilt `Request` and
//!   `Entities` over the tool's slice of the rules (the gate's overhead baseline);
//! - `cedar/bare-whole` — the same over the whole, unsliced rule set;
//! - `regorus/interpreter`, `regorus/compiled` — equivalent Rego, evaluated by
//!   the regorus interpreter and by its RVM (compiled program), on prebuilt input;
//! - `cel/indexed` — equivalent CEL rules, compiled once, indexed by tool, on a
//!   prebuilt activation.
//!
//! The comparison engines evaluate once (no rewrite): on the shipped rules a
//! constrained call always re-evaluates to a plain allow, so their single-pass
//! effect equals the gate's. After criterion, a plain timed loop prints p50/p99
//! per-decision latency of every engine (criterion reports means and medians).

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, Response, RestrictedExpression,
};
use criterion::{Criterion, Throughput};
use serde_json::{Map, Value, json};
use zt_policies::{DecisionRequest, Effect, PolicyBundle, Resource};

/// The example's humans with their attributes typed, as the hand-written
/// baselines read them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Human {
    id: String,
    rep_limit: i64,
    allowed_regions: Vec<String>,
    grantable_plans: Vec<String>,
    roles: Vec<String>,
}

/// Number of calls in the mix.
const MIX_SIZE: usize = 400;
/// Seed of the mix.
const SEED: u64 = 0x5EED_2A7C_0FFE_E001;
/// Decisions per engine in the latency loop (after a warm-up of a tenth of it).
const LATENCY_SAMPLES: usize = 20_000;

const TOOLS: [&str; 5] = [
    "lookup_account",
    "list_orders",
    "change_plan",
    "issue_refund",
    "fetch_document",
];
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
const PLANS: [&str; 4] = ["basic", "standard", "premium", "enterprise"];
const HARD_CAP: i64 = 100_000;

// ------------------------------------------------------------------ workload

/// SplitMix64: a tiny seeded generator, so the mix is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).expect("lo <= hi");
        lo + i64::try_from(self.next() % span).expect("fits")
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.next() % items.len() as u64).expect("fits")]
    }
}

/// One synthetic call: the gate's request plus what the bare engines need.
struct Call {
    req: DecisionRequest,
    resource_type: &'static str,
}

fn resource_type_of(tool: &str) -> &'static str {
    match tool {
        "issue_refund" => "Order",
        "fetch_document" => "Document",
        _ => "Account",
    }
}

fn attrs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("attributes are an object"),
    }
}

/// The seeded mix: tools round-robin (so each gets the same share), everything
/// else drawn from the seeded generator.
fn mix(humans: &[Human]) -> Vec<Call> {
    let mut rng = Rng(SEED);
    (0..MIX_SIZE)
        .map(|i| {
            let tool = TOOLS[i % TOOLS.len()];
            let human = rng.pick(humans);
            let region = *rng.pick(&REGIONS);
            let n = rng.range(1000, 9999);
            let (args, resource) = match tool {
                "lookup_account" | "list_orders" | "change_plan" => {
                    let id = format!("acct_{n}");
                    let mut args = json!({ "account_id": id });
                    if tool == "list_orders" {
                        // none, below 20, exactly 20, above 20
                        match rng.range(0, 3) {
                            0 => {}
                            1 => args["limit"] = json!(rng.range(1, 19)),
                            2 => args["limit"] = json!(20),
                            _ => args["limit"] = json!(rng.range(21, 100)),
                        }
                    }
                    if tool == "change_plan" {
                        args["new_plan"] = json!(rng.pick(&PLANS));
                    }
                    let plan = *rng.pick(&PLANS);
                    let attrs = attrs(json!({ "region": region, "plan": plan }));
                    (args, Resource { id, attrs })
                }
                "issue_refund" => {
                    let id = format!("ord_{n}");
                    let limit = human.rep_limit;
                    let amount = match rng.range(0, 4) {
                        0 => rng.range(1, limit - 1), // under the rep limit
                        1 => limit,                   // at the rep limit
                        2 => limit + 1,               // one cent over
                        3 => rng.range(limit + 1, HARD_CAP.max(limit + 1)), // over
                        _ => rng.range(HARD_CAP + 1, 2_000_000), // over the hard cap
                    };
                    let total = amount + rng.range(0, 50_000);
                    // mostly within the refundable balance, sometimes over it
                    let refunded = if rng.range(0, 5) == 0 {
                        rng.range(total - amount + 1, total)
                    } else {
                        rng.range(0, total - amount)
                    };
                    let args = json!({ "order_id": id, "amount": amount });
                    let attrs = attrs(json!({
                        "region": region,
                        "account": format!("acct_{}", rng.range(1000, 9999)),
                        "amount": total,
                        "refunded": refunded,
                    }));
                    (args, Resource { id, attrs })
                }
                _ => {
                    let id = format!("doc_kb_{n}");
                    let attrs = attrs(json!({ "title": format!("Article {n}") }));
                    (json!({ "doc_id": id }), Resource { id, attrs })
                }
            };
            Call {
                req: DecisionRequest {
                    tool: tool.to_string(),
                    args,
                    agent: format!("agent-{}", rng.range(1, 8)),
                    human: human.id.clone(),
                    resource: Some(resource),
                    // Nothing consumed, untainted: the budget and taint
                    // rules never fire, as the other engines have none.
                    context: zt_policies::CallContext {
                        tainted: false,
                        budgets: [("refunded_today".to_string(), 0)].into_iter().collect(),
                    },
                },
                resource_type: resource_type_of(tool),
            }
        })
        .collect()
}

// ------------------------------------------------------------------ effects

/// What a matched rule does (mirrors the gate's annotations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Allow,
    Constrain,
    Escalate,
    Forbid,
}

/// Combines matched rules: any forbid denies, no permit denies, else the most
/// restrictive permit wins. An evaluation error denies (fail closed).
fn resolve(errored: bool, matched: impl IntoIterator<Item = Kind>) -> Effect {
    if errored {
        return Effect::Deny;
    }
    match matched.into_iter().max() {
        None | Some(Kind::Forbid) => Effect::Deny,
        Some(Kind::Escalate) => Effect::Escalate,
        Some(Kind::Constrain) => Effect::Constrain,
        Some(Kind::Allow) => Effect::Allow,
    }
}

fn kind_of_policy(p: &Policy) -> Kind {
    match (p.effect(), p.annotation("effect")) {
        (cedar_policy::Effect::Forbid, _) => Kind::Forbid,
        (_, Some("escalate")) => Kind::Escalate,
        (_, Some("constrain")) => Kind::Constrain,
        _ => Kind::Allow,
    }
}

// ------------------------------------------------------------------ bare Cedar

struct BareCedar {
    authorizer: Authorizer,
    whole: PolicySet,
    sliced: HashMap<&'static str, PolicySet>,
    kinds: HashMap<PolicyId, Kind>,
    /// Per call: the prebuilt request and entities.
    prebuilt: Vec<(Request, Entities)>,
}

fn json_expr(v: &Value) -> RestrictedExpression {
    match v {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64().expect("integer")),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => RestrictedExpression::new_set(items.iter().map(json_expr)),
        Value::Object(m) => {
            RestrictedExpression::new_record(m.iter().map(|(k, v)| (k.clone(), json_expr(v))))
                .expect("record")
        }
        Value::Null => unreachable!("no null in the mix"),
    }
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).expect("type"),
        EntityId::new(id),
    )
}

fn strings(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().cloned().map(RestrictedExpression::new_string))
}

impl BareCedar {
    fn new(policy_text: &str, humans: &HashMap<String, Human>, calls: &[Call]) -> Self {
        // `PolicySet::from_str` ignores `@id`: re-key every policy by it.
        let parsed = PolicySet::from_str(policy_text).expect("policy.cedar parses");
        let keyed: Vec<Policy> = parsed
            .policies()
            .map(|p| {
                p.new_id(PolicyId::new(
                    p.annotation("id").expect("every rule has an @id"),
                ))
            })
            .collect();
        let kinds = keyed
            .iter()
            .map(|p| (p.id().clone(), kind_of_policy(p)))
            .collect();
        let whole = PolicySet::from_policies(keyed.iter().cloned()).expect("whole set");
        let sliced = TOOLS
            .iter()
            .map(|&tool| {
                let action = uid("Action", tool);
                let slice = keyed.iter().filter(|p| match p.action_constraint() {
                    cedar_policy::ActionConstraint::Any => true,
                    cedar_policy::ActionConstraint::Eq(a) => a == action,
                    cedar_policy::ActionConstraint::In(set) => set.contains(&action),
                });
                (
                    tool,
                    PolicySet::from_policies(slice.cloned()).expect("slice"),
                )
            })
            .collect();
        let human_entities: HashMap<&str, Entity> = humans
            .values()
            .map(|h| {
                let attrs = HashMap::from([
                    (
                        "rep_limit".to_string(),
                        RestrictedExpression::new_long(h.rep_limit),
                    ),
                    ("allowed_regions".to_string(), strings(&h.allowed_regions)),
                    ("grantable_plans".to_string(), strings(&h.grantable_plans)),
                    ("roles".to_string(), strings(&h.roles)),
                ]);
                let e = Entity::new(uid("Human", &h.id), attrs, HashSet::new()).expect("human");
                (h.id.as_str(), e)
            })
            .collect();
        let prebuilt = calls
            .iter()
            .map(|c| {
                let r = &c.req;
                let principal = uid("Agent", &r.agent);
                let agent = Entity::new(
                    principal.clone(),
                    HashMap::from([(
                        "human".to_string(),
                        RestrictedExpression::new_entity_uid(uid("Human", &r.human)),
                    )]),
                    HashSet::new(),
                )
                .expect("agent");
                let res = r.resource.as_ref().expect("resource");
                let resource = Entity::new(
                    uid(c.resource_type, &res.id),
                    res.attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), json_expr(v)))
                        .collect(),
                    HashSet::new(),
                )
                .expect("resource");
                let context = Context::from_pairs([("args".to_string(), json_expr(&r.args))])
                    .expect("context");
                let request = Request::new(
                    principal,
                    uid("Action", &r.tool),
                    resource.uid(),
                    context,
                    None,
                )
                .expect("request");
                let entities = Entities::from_entities(
                    [agent, human_entities[r.human.as_str()].clone(), resource],
                    None,
                )
                .expect("entities");
                (request, entities)
            })
            .collect();
        BareCedar {
            authorizer: Authorizer::new(),
            whole,
            sliced,
            kinds,
            prebuilt,
        }
    }

    fn sliced(&self, i: usize, tool: &str) -> Response {
        let (request, entities) = &self.prebuilt[i];
        self.authorizer
            .is_authorized(request, &self.sliced[tool], entities)
    }

    fn whole(&self, i: usize) -> Response {
        let (request, entities) = &self.prebuilt[i];
        self.authorizer
            .is_authorized(request, &self.whole, entities)
    }

    fn effect(&self, response: &Response) -> Effect {
        let d = response.diagnostics();
        let errored = d.errors().next().is_some();
        let matched = d.reason().map(|id| self.kinds[id]);
        match response.decision() {
            cedar_policy::Decision::Deny => Effect::Deny,
            cedar_policy::Decision::Allow => resolve(errored, matched),
        }
    }
}

// ------------------------------------------------------------------ Rego

/// The example policy in Rego. Input: `tool`, `human` (the human's attributes),
/// `resource_type`, `resource` (its attributes), `args`.
const REGO: &str = r#"
package zt
import rego.v1

h := input.human
r := input.resource
a := input.args
t := input.tool

account_tools := {"lookup_account", "list_orders", "change_plan"}

support_role if { some x in h.roles; x in {"support_rep", "support_lead"} }
region_ok if { r.region in h.allowed_regions }
refund_data_ok if {
	input.resource_type == "Order"
	r.region
	r.amount
	r.refunded
}
balance := r.amount - r.refunded

# ---- forbids
forbid contains "require-support-role" if { not support_role }
forbid contains "account-region-missing" if { t in account_tools; not r.region }
forbid contains "account-wrong-region" if { t in account_tools; r.region; not region_ok }
forbid contains "change-plan-not-grantable" if {
	t == "change_plan"
	a.new_plan != "enterprise"
	not a.new_plan in h.grantable_plans
}
forbid contains "refund-order-data-missing" if { t == "issue_refund"; not refund_data_ok }
forbid contains "refund-wrong-region" if {
	t == "issue_refund"
	input.resource_type == "Order"
	r.region
	not region_ok
}
forbid contains "refund-over-balance" if {
	t == "issue_refund"
	input.resource_type == "Order"
	a.amount > balance
}
forbid contains "refund-over-hard-cap" if { t == "issue_refund"; a.amount > 100000 }

# ---- permits, by effect
allow contains "lookup-account" if {
	t == "lookup_account"
	input.resource_type == "Account"
	region_ok
}
allow contains "list-orders" if {
	t == "list_orders"
	input.resource_type == "Account"
	region_ok
}
constrain contains "list-orders-clamp-limit" if {
	t == "list_orders"
	input.resource_type == "Account"
	region_ok
	a.limit > 20
}
allow contains "change-plan" if {
	t == "change_plan"
	input.resource_type == "Account"
	region_ok
	a.new_plan in h.grantable_plans
}
escalate contains "change-plan-enterprise-escalate" if {
	t == "change_plan"
	input.resource_type == "Account"
	region_ok
	a.new_plan == "enterprise"
	not "enterprise" in h.grantable_plans
}
allow contains "refund-within-rep-limit" if {
	t == "issue_refund"
	refund_data_ok
	region_ok
	a.amount <= balance
	a.amount <= h.rep_limit
	a.amount <= 100000
}
escalate contains "refund-over-rep-limit-escalate" if {
	t == "issue_refund"
	refund_data_ok
	region_ok
	a.amount <= balance
	a.amount > h.rep_limit
	a.amount <= 100000
}
allow contains "fetch-document" if {
	t == "fetch_document"
	input.resource_type == "Document"
}

# ---- combination: forbid wins, then escalate > constrain > allow, default deny
effect := "deny" if {
	count(forbid) > 0
} else := "escalate" if {
	count(escalate) > 0
} else := "constrain" if {
	count(constrain) > 0
} else := "allow" if {
	count(allow) > 0
} else := "deny"
"#;

const REGO_ENTRY: &str = "data.zt.effect";

fn human_json(h: &Human) -> Value {
    json!({
        "rep_limit": h.rep_limit,
        "allowed_regions": h.allowed_regions,
        "grantable_plans": h.grantable_plans,
        "roles": h.roles,
    })
}

fn rego_input(c: &Call, h: &Human) -> regorus::Value {
    let r = &c.req;
    let input = json!({
        "tool": r.tool,
        "human": human_json(h),
        "resource_type": c.resource_type,
        "resource": r.resource.as_ref().expect("resource").attrs,
        "args": r.args,
    });
    regorus::Value::from_json_str(&input.to_string()).expect("input")
}

struct Rego {
    engine: regorus::Engine,
    vm: regorus::rvm::RegoVM,
    inputs: Vec<regorus::Value>,
}

impl Rego {
    fn new(humans: &HashMap<String, Human>, calls: &[Call]) -> Self {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("zt.rego".to_string(), REGO.to_string())
            .expect("the Rego policy parses");
        let compiled = engine
            .compile_with_entrypoint(&REGO_ENTRY.into())
            .expect("the Rego policy compiles");
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &[REGO_ENTRY],
        )
        .expect("the Rego policy compiles to an RVM program");
        let mut vm = regorus::rvm::RegoVM::new();
        vm.load_program(program);
        vm.set_data(regorus::Value::new_object()).expect("data");
        let inputs = calls
            .iter()
            .map(|c| rego_input(c, &humans[&c.req.human]))
            .collect();
        Rego { engine, vm, inputs }
    }

    fn interpreter(&mut self, i: usize) -> regorus::Value {
        self.engine.set_input(self.inputs[i].clone());
        self.engine
            .eval_rule(REGO_ENTRY.to_string())
            .expect("the interpreter evaluates")
    }

    fn compiled(&mut self, i: usize) -> regorus::Value {
        self.vm.set_input(self.inputs[i].clone());
        self.vm
            .execute_entry_point_by_index(0)
            .expect("the RVM evaluates")
    }
}

fn rego_effect(v: &regorus::Value) -> Effect {
    match v {
        regorus::Value::String(s) => Effect::from_str(s).expect("an effect"),
        other => panic!("Rego returned {other:?}, not an effect"),
    }
}

// ------------------------------------------------------------------ CEL

/// `(rule id, kind, tools it applies to (empty = every tool), CEL condition)`.
/// Variables: `human`, `resource_type`, `resource`, `args`.
const CEL_RULES: &[(&str, Kind, &[&str], &str)] = &[
    (
        "require-support-role",
        Kind::Forbid,
        &[],
        r#"!("support_rep" in human.roles || "support_lead" in human.roles)"#,
    ),
    (
        "account-region-missing",
        Kind::Forbid,
        &["lookup_account", "list_orders", "change_plan"],
        "!has(resource.region)",
    ),
    (
        "account-wrong-region",
        Kind::Forbid,
        &["lookup_account", "list_orders", "change_plan"],
        "has(resource.region) && !(resource.region in human.allowed_regions)",
    ),
    (
        "lookup-account",
        Kind::Allow,
        &["lookup_account"],
        r#"resource_type == "Account" && has(resource.region) && resource.region in human.allowed_regions"#,
    ),
    (
        "list-orders",
        Kind::Allow,
        &["list_orders"],
        r#"resource_type == "Account" && has(resource.region) && resource.region in human.allowed_regions"#,
    ),
    (
        "list-orders-clamp-limit",
        Kind::Constrain,
        &["list_orders"],
        r#"resource_type == "Account" && has(resource.region) && resource.region in human.allowed_regions && has(args.limit) && args.limit > 20"#,
    ),
    (
        "change-plan",
        Kind::Allow,
        &["change_plan"],
        r#"resource_type == "Account" && has(resource.region) && resource.region in human.allowed_regions && args.new_plan in human.grantable_plans"#,
    ),
    (
        "change-plan-enterprise-escalate",
        Kind::Escalate,
        &["change_plan"],
        r#"resource_type == "Account" && has(resource.region) && resource.region in human.allowed_regions && args.new_plan == "enterprise" && !("enterprise" in human.grantable_plans)"#,
    ),
    (
        "change-plan-not-grantable",
        Kind::Forbid,
        &["change_plan"],
        r#"args.new_plan != "enterprise" && !(args.new_plan in human.grantable_plans)"#,
    ),
    (
        "refund-order-data-missing",
        Kind::Forbid,
        &["issue_refund"],
        r#"!(resource_type == "Order" && has(resource.region) && has(resource.amount) && has(resource.refunded))"#,
    ),
    (
        "refund-wrong-region",
        Kind::Forbid,
        &["issue_refund"],
        r#"resource_type == "Order" && has(resource.region) && !(resource.region in human.allowed_regions)"#,
    ),
    (
        "refund-over-balance",
        Kind::Forbid,
        &["issue_refund"],
        r#"resource_type == "Order" && has(resource.amount) && has(resource.refunded) && args.amount > resource.amount - resource.refunded"#,
    ),
    (
        "refund-over-hard-cap",
        Kind::Forbid,
        &["issue_refund"],
        "args.amount > 100000",
    ),
    (
        "refund-within-rep-limit",
        Kind::Allow,
        &["issue_refund"],
        r#"resource_type == "Order" && has(resource.region) && has(resource.amount) && has(resource.refunded) && resource.region in human.allowed_regions && args.amount <= resource.amount - resource.refunded && args.amount <= human.rep_limit && args.amount <= 100000"#,
    ),
    (
        "refund-over-rep-limit-escalate",
        Kind::Escalate,
        &["issue_refund"],
        r#"resource_type == "Order" && has(resource.region) && has(resource.amount) && has(resource.refunded) && resource.region in human.allowed_regions && args.amount <= resource.amount - resource.refunded && args.amount > human.rep_limit && args.amount <= 100000"#,
    ),
    (
        "fetch-document",
        Kind::Allow,
        &["fetch_document"],
        r#"resource_type == "Document""#,
    ),
];

fn cel_value(v: &Value) -> cel::Value {
    match v {
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => cel::Value::Int(n.as_i64().expect("integer")),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(cel_value).collect())),
        Value::Object(m) => cel::Value::from(
            m.iter()
                .map(|(k, v)| (k.clone(), cel_value(v)))
                .collect::<HashMap<String, cel::Value>>(),
        ),
        Value::Null => cel::Value::Null,
    }
}

struct Cel {
    /// Per tool: its rules, compiled once.
    programs: HashMap<&'static str, Vec<(Kind, cel::Program)>>,
    /// Per call: the prebuilt activation.
    contexts: Vec<cel::Context<'static, 'static>>,
}

impl Cel {
    fn new(humans: &HashMap<String, Human>, calls: &[Call]) -> Self {
        let env = Arc::new(cel::Env::stdlib());
        let programs = TOOLS
            .iter()
            .map(|&tool| {
                let rules = CEL_RULES
                    .iter()
                    .filter(|(_, _, tools, _)| tools.is_empty() || tools.contains(&tool))
                    .map(|(id, kind, _, src)| {
                        let p = env
                            .compile(src)
                            .unwrap_or_else(|e| panic!("CEL rule `{id}`: {e}"));
                        (*kind, p)
                    })
                    .collect();
                (tool, rules)
            })
            .collect();
        let contexts = calls
            .iter()
            .map(|c| {
                let r = &c.req;
                let mut ctx = cel::Context::with_env(Arc::clone(&env));
                ctx.add_variable_from_value("human", cel_value(&human_json(&humans[&r.human])));
                ctx.add_variable_from_value("resource_type", c.resource_type);
                ctx.add_variable_from_value(
                    "resource",
                    cel_value(&Value::Object(
                        r.resource.as_ref().expect("resource").attrs.clone(),
                    )),
                );
                ctx.add_variable_from_value("args", cel_value(&r.args));
                ctx
            })
            .collect();
        Cel { programs, contexts }
    }

    fn decide(&self, i: usize, tool: &str) -> Effect {
        let ctx = &self.contexts[i];
        let mut errored = false;
        let mut matched = Vec::with_capacity(4);
        for (kind, program) in &self.programs[tool] {
            match program.execute(ctx) {
                Ok(cel::Value::Bool(true)) => matched.push(*kind),
                Ok(cel::Value::Bool(false)) => {}
                _ => errored = true,
            }
        }
        resolve(errored, matched)
    }
}

// ------------------------------------------------------------------ setup

struct Setup {
    bundle: PolicyBundle,
    calls: Vec<Call>,
    expected: Vec<Effect>,
    cedar: BareCedar,
    rego: Rego,
    cel: Cel,
}

impl Setup {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let bundle = PolicyBundle::load(&dir).expect("the shipped policies load");
        let humans: Vec<Human> = bundle
            .humans()
            .map(|h| {
                serde_json::from_value(serde_json::to_value(h).expect("a human"))
                    .expect("the example's human attributes")
            })
            .collect();
        let calls = mix(&humans);
        let by_id: HashMap<String, Human> =
            humans.iter().map(|h| (h.id.clone(), h.clone())).collect();
        let policy_text =
            std::fs::read_to_string(dir.join(zt_policies::files::POLICY)).expect("policy.cedar");
        let cedar = BareCedar::new(&policy_text, &by_id, &calls);
        let rego = Rego::new(&by_id, &calls);
        let cel = Cel::new(&by_id, &calls);
        let expected: Vec<Effect> = calls.iter().map(|c| bundle.decide(&c.req).effect).collect();
        let mut setup = Setup {
            bundle,
            calls,
            expected,
            cedar,
            rego,
            cel,
        };
        setup.check_agreement();
        setup
    }

    /// Panics unless every engine agrees with the gate on every call.
    fn check_agreement(&mut self) {
        let mut tally: HashMap<&str, usize> = HashMap::new();
        for (i, c) in self.calls.iter().enumerate() {
            let want = self.expected[i];
            *tally.entry(want.as_str()).or_default() += 1;
            let tool = c.req.tool.as_str();
            let got = [
                (
                    "cedar/bare-sliced",
                    self.cedar.effect(&self.cedar.sliced(i, tool)),
                ),
                ("cedar/bare-whole", self.cedar.effect(&self.cedar.whole(i))),
                (
                    "regorus/interpreter",
                    rego_effect(&self.rego.interpreter(i)),
                ),
                ("regorus/compiled", rego_effect(&self.rego.compiled(i))),
                ("cel/indexed", self.cel.decide(i, tool)),
            ];
            for (engine, effect) in got {
                assert_eq!(
                    effect,
                    want,
                    "{engine} disagrees with gate/full on call #{i}: {}",
                    serde_json::to_string(&c.req).expect("json")
                );
            }
        }
        for effect in ["allow", "constrain", "deny", "escalate"] {
            assert!(
                tally.contains_key(effect),
                "the mix never yields `{effect}`"
            );
        }
        let mut tally: Vec<_> = tally.into_iter().collect();
        tally.sort();
        eprintln!(
            "mix: {} calls (seed {SEED:#x}), gate effects {tally:?}; all engines agree on every call",
            self.calls.len()
        );
    }
}

// ------------------------------------------------------------------ benches

/// Engine names, in report order.
const ENGINES: [&str; 6] = [
    "gate/full",
    "cedar/bare-sliced",
    "cedar/bare-whole",
    "regorus/interpreter",
    "regorus/compiled",
    "cel/indexed",
];

/// One decision of `engine` on call `i`.
fn run(s: &mut Setup, engine: &str, i: usize) {
    let tool = s.calls[i].req.tool.as_str();
    match engine {
        "gate/full" => {
            black_box(s.bundle.decide(black_box(&s.calls[i].req)));
        }
        "cedar/bare-sliced" => {
            black_box(s.cedar.sliced(black_box(i), tool));
        }
        "cedar/bare-whole" => {
            black_box(s.cedar.whole(black_box(i)));
        }
        "regorus/interpreter" => {
            black_box(s.rego.interpreter(black_box(i)));
        }
        "regorus/compiled" => {
            black_box(s.rego.compiled(black_box(i)));
        }
        "cel/indexed" => {
            black_box(s.cel.decide(black_box(i), tool));
        }
        other => unreachable!("unknown engine {other}"),
    }
}

fn benches(c: &mut Criterion, s: &mut Setup) {
    let n = s.calls.len();
    for engine in ENGINES {
        let (group, function) = engine.split_once('/').expect("group/function");
        let mut g = c.benchmark_group(group);
        // One decision per iteration, cycling through the mix.
        g.throughput(Throughput::Elements(1));
        let mut i = 0;
        g.bench_function(function, |b| {
            b.iter(|| {
                run(s, engine, i);
                i = (i + 1) % n;
            });
        });
        g.finish();
    }
}

// ------------------------------------------------------------------ latency

struct Latency {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn latency(s: &mut Setup, engine: &str) -> Latency {
    let n = s.calls.len();
    for i in 0..LATENCY_SAMPLES / 10 {
        run(s, engine, i % n);
    }
    let mut samples: Vec<Duration> = (0..LATENCY_SAMPLES)
        .map(|i| {
            let start = Instant::now();
            run(s, engine, i % n);
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    Latency {
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        mean: total / u32::try_from(samples.len()).expect("fits"),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Criterion's `(median, mean)` per decision.
type MedianMean = (Duration, Duration);

/// Criterion's median and mean (per decision) of `engine` from this run's
/// `estimates.json`, when criterion measured it (not filtered out).
fn criterion_estimates(engine: &str, since: SystemTime) -> Option<MedianMean> {
    let home = match std::env::var_os("CRITERION_HOME") {
        Some(h) => PathBuf::from(h),
        None => match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => PathBuf::from(t).join("criterion"),
            // <target>/release/deps/gate-<hash>
            None => std::env::current_exe()
                .ok()?
                .parent()?
                .parent()?
                .parent()?
                .join("criterion"),
        },
    };
    let path = home.join(engine).join("new").join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let ns = |k: &str| {
        v[k]["point_estimate"]
            .as_f64()
            .map(|n| Duration::from_secs_f64(n / 1e9))
    };
    Some((ns("median")?, ns("mean")?))
}

fn latency_summary(s: &mut Setup, since: SystemTime) {
    let results: Vec<(&str, Latency, Option<MedianMean>)> = ENGINES
        .iter()
        .map(|e| (*e, latency(s, e), criterion_estimates(e, since)))
        .collect();
    // Ratios use criterion's median when there is one, else the loop's p50.
    let typical =
        |l: &Latency, c: &Option<MedianMean>| micros(c.map_or(l.p50, |(median, _)| median));
    let base = typical(&results[1].1, &results[1].2);
    println!();
    println!(
        "summary: median and decisions/s from criterion (1 / mean), p50/p99 from a timed loop of \
         {LATENCY_SAMPLES} decisions per engine over the {}-call mix",
        s.calls.len()
    );
    println!(
        "{:<22} {:>11} {:>9} {:>9} {:>12} {:>16}",
        "engine", "median µs", "p50 µs", "p99 µs", "decisions/s", "vs bare-sliced"
    );
    for (engine, l, c) in &results {
        let (median, mean) = match c {
            Some((median, mean)) => (format!("{:.2}", micros(*median)), *mean),
            None => ("-".to_string(), l.mean),
        };
        println!(
            "{:<22} {:>11} {:>9.2} {:>9.2} {:>12.0} {:>15.2}x",
            engine,
            median,
            micros(l.p50),
            micros(l.p99),
            1.0 / mean.as_secs_f64(),
            typical(l, c) / base,
        );
    }
    let gate = typical(&results[0].1, &results[0].2);
    let interp = typical(&results[3].1, &results[3].2);
    println!(
        "targets: gate/full <= 2x cedar/bare-sliced: {} ({:.2}x); \
         gate/full faster than regorus/interpreter: {} ({gate:.2} vs {interp:.2} µs)",
        if gate <= 2.0 * base { "met" } else { "MISSED" },
        gate / base,
        if gate < interp { "met" } else { "MISSED" },
    );
    // Where the gate's time goes beyond Cedar: its JSON Schema argument check.
    let n = s.calls.len();
    let mut samples: Vec<Duration> = (0..LATENCY_SAMPLES)
        .map(|i| {
            let req = &s.calls[i % n].req;
            let start = Instant::now();
            let _ = black_box(s.bundle.validate_args(&req.tool, black_box(&req.args)));
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    println!(
        "breakdown: gate/full p50 {:.2} µs = bare sliced Cedar {:.2} µs + argument validation {:.2} µs + the rest \
         (entity/context building, effect resolution, reasons, constrain re-evaluation)",
        micros(results[0].1.p50),
        micros(results[1].1.p50),
        micros(samples[samples.len() / 2]),
    );
}

fn main() {
    let since = SystemTime::now();
    let mut setup = Setup::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    benches(&mut c, &mut setup);
    c.final_summary();
    latency_summary(&mut setup, since);
}
