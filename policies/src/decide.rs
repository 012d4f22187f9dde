//! The decision: pure, synchronous, fail closed.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityUid, PolicySet, Request, RestrictedExpression,
};
use serde_json::{Map, Value};

use crate::args::sanitize;
use crate::load::{HumanEntry, PolicyBundle, RuleKind, ToolEntry};
use crate::rewrite::as_int;
use crate::{Decision, DecisionRequest, Effect};

/// Default model message of a denial.
pub const DENY_MESSAGE: &str = "This action is not permitted by policy.";
/// Default model message of an escalation.
pub const ESCALATE_MESSAGE: &str = "This action needs approval from a human operator.";
/// Default model message of a constrained call.
pub const CONSTRAIN_MESSAGE: &str = "The request was adjusted to stay within policy.";

/// What one Cedar evaluation said.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Some policy evaluation errored (ids of the erroring rules).
    Error(Vec<String>),
    /// Forbid rules matched.
    Forbid(Vec<String>),
    /// Nothing matched.
    NoPermit,
    /// Permits matched; the most restrictive kind and its rules.
    Permit(RuleKind, Vec<String>),
}

fn gate(effect: Effect, args: &Value, rule: &str, reason: String, model: String) -> Decision {
    Decision {
        effect,
        args: args.clone(),
        rules: vec![format!("gate:{rule}")],
        reason,
        model_message: model,
        basis: Default::default(),
    }
}

fn deny(args: &Value, rule: &str, reason: impl Into<String>, model: impl Into<String>) -> Decision {
    gate(Effect::Deny, args, rule, reason.into(), model.into())
}

/// A JSON value as a Cedar restricted expression. `null` and non-integral
/// numbers have no Cedar equivalent. Objects become records (never entity
/// references: `__entity` escapes are not interpreted).
fn to_expr(v: &Value) -> Result<RestrictedExpression, String> {
    Ok(match v {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(_) => RestrictedExpression::new_long(
            as_int(v).ok_or_else(|| "a non-integer number".to_string())?,
        ),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(to_expr).collect::<Result<Vec<_>, _>>()?)
        }
        Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), to_expr(v)?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .map_err(|e| e.to_string())?,
        Value::Null => return Err("null".to_string()),
    })
}

impl PolicyBundle {
    /// Decides one tool call. Pure and synchronous; never panics: any internal
    /// error (even a panic inside the policy engine) yields [`Effect::Deny`].
    ///
    /// The decision carries its [`crate::Basis`]; when `@shadow` rules apply
    /// to the tool, the call is decided a second time with them and their
    /// verdict is recorded there, never enforced.
    pub fn decide(&self, req: &DecisionRequest) -> Decision {
        let mut d = self.decide_with(req, Set::Enforced);
        d.basis = crate::Basis {
            policy: self.sources.hash.clone(),
            agent: req.agent.clone(),
            human: self
                .humans
                .get(&req.human)
                .map(|h| h.human.attrs.clone())
                .unwrap_or_default(),
            resource: req.resource.clone(),
            context: req.context.clone(),
            shadow: None,
        };
        if self.has_shadow(&req.tool) {
            let s = self.decide_with(req, Set::Shadow);
            let shadow_rules = s
                .rules
                .iter()
                .filter(|id| self.rules.get(*id).is_some_and(|m| m.shadow))
                .cloned()
                .collect();
            d.basis.shadow = Some(crate::Verdict {
                effect: s.effect,
                rules: s.rules,
                shadow_rules,
            });
        }
        d
    }

    /// The enforced decision alone, without its basis or shadow verdict
    /// (what a replay compares).
    pub fn verdict(&self, req: &DecisionRequest) -> Decision {
        self.decide_with(req, Set::Enforced)
    }

    /// One decision over `set`; never panics.
    fn decide_with(&self, req: &DecisionRequest, set: Set) -> Decision {
        match catch_unwind(AssertUnwindSafe(|| self.decide_inner(req, set))) {
            Ok(d) => d,
            Err(_) => deny(
                &req.args,
                "internal-error",
                "internal error while deciding",
                DENY_MESSAGE,
            ),
        }
    }

    fn decide_inner(&self, req: &DecisionRequest, set: Set) -> Decision {
        let args = &req.args;
        let Some(entry) = self.entries.get(&req.tool) else {
            return deny(
                args,
                "unknown-tool",
                format!("unknown tool `{}`", sanitize(&req.tool)),
                "Unknown tool.",
            );
        };
        let Some(human) = self.humans.get(&req.human) else {
            return deny(
                args,
                "unknown-human",
                format!("unknown human `{}`", sanitize(&req.human)),
                "The user you act for is not known, so the action was not performed.",
            );
        };
        if let Err(e) = crate::args::validate(&entry.validator, args) {
            return deny(
                args,
                "invalid-args",
                format!("invalid arguments: {e}"),
                format!("Invalid arguments: {e}."),
            );
        }
        if let Some(b) = self
            .budgets_of(&req.tool)
            .find(|b| !req.context.budgets.contains_key(&b.name))
        {
            return deny(
                args,
                "budget-unknown",
                format!("budget `{}` was not measured for this call", b.name),
                DENY_MESSAGE,
            );
        }
        let Some(resource_id) = entry.resource_id(args) else {
            let arg = entry.resource_arg.as_deref().unwrap_or_default();
            return deny(
                args,
                "invalid-args",
                format!("missing resource argument `{arg}`"),
                format!("Invalid arguments: missing required field `{arg}`."),
            );
        };
        let empty = Map::new();
        let attrs = match &req.resource {
            Some(r) if r.id != resource_id => {
                return deny(
                    args,
                    "resource-mismatch",
                    format!(
                        "the resource looked up does not match the `{}` argument",
                        entry.resource_arg.as_deref().unwrap_or_default()
                    ),
                    DENY_MESSAGE,
                );
            }
            Some(r) => &r.attrs,
            None => &empty,
        };
        // Attributes from the arguments (the same for the broker and the
        // hook); one that cannot be derived refuses the call.
        let derived;
        let attrs = if entry.arg_attrs.is_empty() {
            attrs
        } else {
            let mut all = attrs.clone();
            for (name, spec) in &entry.arg_attrs {
                let Some(value) = args.get(&spec.arg) else {
                    all.remove(name);
                    continue;
                };
                match spec.derive.apply(value) {
                    Ok(v) => {
                        all.insert(name.clone(), v);
                    }
                    Err(m) => {
                        return deny(
                            args,
                            "invalid-args",
                            format!("argument `{}`: {m}", spec.arg),
                            format!("Invalid arguments: `{}`: {m}.", spec.arg),
                        );
                    }
                }
            }
            derived = all;
            &derived
        };
        let resource = match resource_entity(entry, resource_id, attrs) {
            Ok(r) => r,
            Err(m) => {
                return deny(args, "bad-resource", m, DENY_MESSAGE);
            }
        };

        match self.evaluate(entry.set(set), entry, human, req, &resource, args) {
            Outcome::Permit(RuleKind::Constrain, ids) => {
                self.constrain(entry.set(set), entry, human, req, &resource, ids)
            }
            other => self.conclude(other, args),
        }
    }

    /// Rewrites the arguments, then evaluates the rewritten call again: it must be
    /// a plain allow.
    fn constrain(
        &self,
        set: &PolicySet,
        entry: &ToolEntry,
        human: &HumanEntry,
        req: &DecisionRequest,
        resource: &Entity,
        ids: Vec<String>,
    ) -> Decision {
        let args = &req.args;
        let mut rewritten = args.as_object().cloned().unwrap_or_default();
        for id in &ids {
            for rw in self
                .rules
                .get(id)
                .map(|m| m.rewrites.as_slice())
                .unwrap_or(&[])
            {
                if let Err(m) = rw.apply(&mut rewritten) {
                    return deny(
                        args,
                        "rewrite-failed",
                        format!("rewrite `{rw}` of rule `{id}` failed: {m}"),
                        DENY_MESSAGE,
                    );
                }
            }
        }
        let rewritten = Value::Object(rewritten);
        if let Err(e) = crate::args::validate(&entry.validator, &rewritten) {
            return deny(
                args,
                "rewrite-invalid",
                format!("the arguments rewritten by {} are invalid: {e}", list(&ids)),
                DENY_MESSAGE,
            );
        }
        match self.evaluate(set, entry, human, req, resource, &rewritten) {
            Outcome::Permit(RuleKind::Allow, _) => Decision {
                effect: Effect::Constrain,
                args: rewritten,
                reason: self.reasons(&ids),
                model_message: self
                    .model_message(&ids)
                    .unwrap_or_else(|| CONSTRAIN_MESSAGE.to_string()),
                rules: ids,
                basis: Default::default(),
            },
            Outcome::Permit(kind, again) => {
                let mut rules: Vec<String> = vec!["gate:constrain-unsettled".to_string()];
                rules.extend(again.iter().cloned());
                Decision {
                    effect: Effect::Deny,
                    args: args.clone(),
                    rules,
                    reason: format!(
                        "after the rewrite by {} the call is still {} (by {}), not a plain allow",
                        list(&ids),
                        match kind {
                            RuleKind::Constrain => "constrained",
                            RuleKind::Escalate => "escalated",
                            _ => "not allowed",
                        },
                        list(&again)
                    ),
                    model_message: DENY_MESSAGE.to_string(),
                    basis: Default::default(),
                }
            }
            other => {
                let mut d = self.conclude(other, args);
                d.reason = format!("after the rewrite by {}: {}", list(&ids), d.reason);
                d
            }
        }
    }

    /// Turns a (non-constrain) outcome into a decision.
    fn conclude(&self, outcome: Outcome, args: &Value) -> Decision {
        match outcome {
            Outcome::Error(ids) => {
                let mut rules = vec!["gate:evaluation-error".to_string()];
                rules.extend(ids.iter().cloned());
                Decision {
                    effect: Effect::Deny,
                    args: args.clone(),
                    rules,
                    reason: if ids.is_empty() {
                        "the policy engine could not evaluate the request".to_string()
                    } else {
                        format!(
                            "evaluation of {} failed (fail closed: an error never allows)",
                            list(&ids)
                        )
                    },
                    model_message: DENY_MESSAGE.to_string(),
                    basis: Default::default(),
                }
            }
            Outcome::NoPermit => deny(
                args,
                "default-deny",
                "no rule permits this call (default deny)",
                DENY_MESSAGE,
            ),
            Outcome::Forbid(ids) => self.decided_by(Effect::Deny, ids, args, DENY_MESSAGE),
            Outcome::Permit(RuleKind::Escalate, ids) => {
                self.decided_by(Effect::Escalate, ids, args, ESCALATE_MESSAGE)
            }
            Outcome::Permit(RuleKind::Allow, ids) => self.decided_by(Effect::Allow, ids, args, ""),
            // Constrain is handled by `constrain`; Forbid never comes as a permit.
            Outcome::Permit(_, ids) => {
                let mut rules = vec!["gate:internal-error".to_string()];
                rules.extend(ids);
                Decision {
                    effect: Effect::Deny,
                    args: args.clone(),
                    rules,
                    reason: "internal error: unexpected rule kind".to_string(),
                    model_message: DENY_MESSAGE.to_string(),
                    basis: Default::default(),
                }
            }
        }
    }

    fn decided_by(&self, effect: Effect, ids: Vec<String>, args: &Value, model: &str) -> Decision {
        Decision {
            effect,
            args: args.clone(),
            reason: self.reasons(&ids),
            model_message: self
                .model_message(&ids)
                .unwrap_or_else(|| model.to_string()),
            rules: ids,
            basis: Default::default(),
        }
    }

    fn reasons(&self, ids: &[String]) -> String {
        ids.iter()
            .map(
                |id| match self.rules.get(id).and_then(|m| m.reason.as_deref()) {
                    Some(r) => format!("{r} [{id}]"),
                    None => format!("rule `{id}` matched"),
                },
            )
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn model_message(&self, ids: &[String]) -> Option<String> {
        ids.iter()
            .find_map(|id| self.rules.get(id).and_then(|m| m.model_message.clone()))
    }

    /// One Cedar evaluation over the tool's slice of the rules.
    fn evaluate(
        &self,
        set: &PolicySet,
        entry: &ToolEntry,
        human: &HumanEntry,
        req: &DecisionRequest,
        resource: &Entity,
        args: &Value,
    ) -> Outcome {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(&req.agent));
        let built = (|| -> Result<(Request, Entities), String> {
            let agent_entity = Entity::new(
                principal.clone(),
                HashMap::from([(
                    "human".to_string(),
                    RestrictedExpression::new_entity_uid(human.uid.clone()),
                )]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?;
            let entities = Entities::from_entities(
                [agent_entity, human.entity.clone(), resource.clone()],
                None,
            )
            .map_err(|e| e.to_string())?;
            let context = Context::from_pairs(call_context(to_expr(args)?, &req.context)?)
                .map_err(|e| e.to_string())?;
            let request = Request::new(
                principal,
                entry.action.clone(),
                resource.uid(),
                context,
                None,
            )
            .map_err(|e| e.to_string())?;
            Ok((request, entities))
        })();
        let Ok((request, entities)) = built else {
            return Outcome::Error(Vec::new());
        };
        self.judge(set, &request, &entities)
    }

    /// Evaluates `set` for one built request as the gate does: an evaluation
    /// error anywhere denies, the most restrictive matching permit wins.
    pub(crate) fn judge(&self, set: &PolicySet, request: &Request, entities: &Entities) -> Outcome {
        let response = self.authorizer.is_authorized(request, set, entities);
        let diagnostics = response.diagnostics();
        let errored: Vec<String> = diagnostics
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(p) => {
                    p.policy_id().to_string()
                }
            })
            .collect();
        if !errored.is_empty() {
            return Outcome::Error(self.in_order(errored));
        }
        let matched = self.in_order(diagnostics.reason().map(ToString::to_string).collect());
        match response.decision() {
            cedar_policy::Decision::Deny if matched.is_empty() => Outcome::NoPermit,
            cedar_policy::Decision::Deny => Outcome::Forbid(matched),
            cedar_policy::Decision::Allow => {
                let kind_of = |id: &String| self.rules.get(id).map(|m| m.kind);
                let Some(strictest) = matched.iter().filter_map(kind_of).max() else {
                    return Outcome::Error(matched);
                };
                if strictest == RuleKind::Forbid {
                    return Outcome::Error(matched);
                }
                let ids = matched
                    .into_iter()
                    .filter(|id| kind_of(id) == Some(strictest))
                    .collect();
                Outcome::Permit(strictest, ids)
            }
        }
    }

    /// Rule ids sorted in policy-file order.
    fn in_order(&self, mut ids: Vec<String>) -> Vec<String> {
        ids.sort_by_key(|id| {
            (
                self.rules.get(id).map(|m| m.order).unwrap_or(usize::MAX),
                id.clone(),
            )
        });
        ids
    }
}

/// Which rules a decision uses.
#[derive(Clone, Copy)]
enum Set {
    /// The enforced rules.
    Enforced,
    /// The enforced rules and the `@shadow` ones.
    Shadow,
}

impl ToolEntry {
    fn set(&self, set: Set) -> &PolicySet {
        match (set, &self.shadow) {
            (Set::Shadow, Some(s)) => s,
            _ => &self.policies,
        }
    }
}

/// The Cedar context of a call: `args`, `session` and `budgets` (the
/// startup check validates the same shape against the schema).
pub(crate) fn call_context(
    args: RestrictedExpression,
    ctx: &crate::CallContext,
) -> Result<Vec<(String, RestrictedExpression)>, String> {
    let session = RestrictedExpression::new_record([(
        "tainted".to_string(),
        RestrictedExpression::new_bool(ctx.tainted),
    )])
    .map_err(|e| e.to_string())?;
    let budgets = RestrictedExpression::new_record(
        ctx.budgets
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_long(*v))),
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        ("args".to_string(), args),
        ("session".to_string(), session),
        ("budgets".to_string(), budgets),
    ])
}

fn list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resource entity: the tool's resource type, the id from the arguments and
/// the known attributes (`null` counts as absent).
fn resource_entity(
    entry: &ToolEntry,
    id: &str,
    attrs: &Map<String, Value>,
) -> Result<Entity, String> {
    let uid = EntityUid::from_type_name_and_id(entry.resource_type.clone(), EntityId::new(id));
    let mut cedar_attrs = HashMap::new();
    for (name, value) in attrs {
        if value.is_null() {
            continue;
        }
        let expr = to_expr(value).map_err(|m| {
            format!(
                "resource attribute `{}` has an unsupported value ({m})",
                sanitize(name)
            )
        })?;
        cedar_attrs.insert(name.clone(), expr);
    }
    Entity::new(uid, cedar_attrs, HashSet::new()).map_err(|e| e.to_string())
}
