//! The startup check: cross-file consistency of a policy directory.
//!
//! Each problem names its culprit (file, and tool / human / rule) so that a
//! broken deployment fails loudly and precisely.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Context, EntityId, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression,
    ValidationMode, Validator,
};
use serde_json::Value;

use crate::load::{RawTool, RuleKind, Sources, action_uid, rule_actions, rule_kind, type_name};
use crate::rewrite::Rewrite;
use crate::{Problem, files};

/// Annotations the gate understands; any other is a typo.
const KNOWN_ANNOTATIONS: [&str; 6] = [
    "id",
    "effect",
    "rewrite",
    "reason",
    "model_message",
    "shadow",
];

/// Runs every check; an empty result means the directory is consistent.
pub(crate) fn run(src: &Sources) -> Vec<Problem> {
    let mut out = Vec::new();
    check_tools(src, &mut out);
    check_humans(src, &mut out);
    check_rules(src, &mut out);
    check_schema(src, &mut out);
    check_limits(src, &mut out);
    check_budgets(src, &mut out);
    out
}

fn check_budgets(src: &Sources, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for b in &src.budgets.budget {
        let culprit = format!("{}: budget `{}`", files::BUDGETS, b.name);
        if !attr_name_ok(&b.name) {
            out.push(Problem::new(
                &culprit,
                "a budget's name must be a Cedar identifier (letters, digits, `_`)",
            ));
        }
        if !seen.insert(b.name.as_str()) {
            out.push(Problem::new(&culprit, "declared twice"));
        }
        if let Err(m) = b.window() {
            out.push(Problem::new(&culprit, m));
        }
        if b.tools.is_empty() {
            out.push(Problem::new(&culprit, "names no tools"));
        }
        for name in &b.tools {
            match src.tools.iter().find(|t| &t.name == name) {
                None => out.push(Problem::new(
                    &culprit,
                    format!("names tool `{name}`, which is not in {}", files::TOOLS),
                )),
                Some(t) => {
                    if b.sum == crate::budgets::Sum::Amount && t.amount_arg.is_none() {
                        out.push(Problem::new(
                            &culprit,
                            format!("sums amounts, but tool `{name}` declares no amount_arg"),
                        ));
                    }
                    if b.per == crate::budgets::Per::Resource && t.resource_arg.is_none() {
                        out.push(Problem::new(
                            &culprit,
                            format!(
                                "counts per resource, but tool `{name}` declares no resource_arg"
                            ),
                        ));
                    }
                }
            }
        }
    }
}

fn check_limits(src: &Sources, out: &mut Vec<Problem>) {
    let buckets = src
        .limits
        .session
        .iter()
        .map(|b| ("session".to_string(), b))
        .chain(
            src.limits
                .tool
                .iter()
                .map(|(t, b)| (format!("tool `{t}`"), b)),
        );
    for (what, b) in buckets {
        if b.burst == 0 || b.per_minute == 0 {
            out.push(Problem::new(
                format!("{}: {what}", files::LIMITS),
                "burst and per_minute must be at least 1",
            ));
        }
    }
    for tool in src.limits.tool.keys() {
        if !src.tools.iter().any(|t| &t.name == tool) {
            out.push(Problem::new(
                format!("{}: tool `{tool}`", files::LIMITS),
                "limits a tool that is not in the registry",
            ));
        }
    }
}

fn tool_culprit(name: &str) -> String {
    format!("{}: tool `{name}`", files::TOOLS)
}

fn check_tools(src: &Sources, out: &mut Vec<Problem>) {
    if src.tools.is_empty() {
        out.push(Problem::new(files::TOOLS, "no [[tool]] declared"));
    }
    let mut seen = HashSet::new();
    for tool in &src.tools {
        let culprit = tool_culprit(&tool.name);
        if tool.name.is_empty()
            || !tool
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(Problem::new(
                &culprit,
                "tool names must be non-empty and use only a-z, 0-9 and _",
            ));
        }
        if !seen.insert(tool.name.as_str()) {
            out.push(Problem::new(&culprit, "declared twice"));
        }
        if zt_proto::builtin::is_builtin(&tool.name) {
            out.push(Problem::new(
                &culprit,
                "is the name of a built-in broker tool, which every session has",
            ));
        }
        let mut strict = Vec::new();
        strictness(&tool.input_schema, "input_schema", true, &mut strict);
        for m in strict {
            out.push(Problem::new(&culprit, format!("schema is not strict: {m}")));
        }
        if let Err(e) = jsonschema::validator_for(&tool.input_schema) {
            out.push(Problem::new(&culprit, format!("invalid input_schema: {e}")));
        }
        check_resource_arg(tool, &culprit, out);
        check_routing(tool, &culprit, out);
    }
}

/// A summary template: at most 200 characters, every `{` closed by a `}`
/// around a field name (letters, digits, `_`), optionally `|count`.
fn summary_ok(t: &str) -> bool {
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return false;
        }
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        let field = &rest[open + 1..open + close];
        let name = field.strip_suffix("|count").unwrap_or(field);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        rest = &rest[open + close + 1..];
    }
    t.len() <= 200
}

/// `upstream`, `operation`, `amount_arg`, `resource_attrs` and `summary`.
fn check_routing(tool: &RawTool, culprit: &str, out: &mut Vec<Problem>) {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if let Some(u) = &tool.upstream
        && !name_ok(u)
    {
        out.push(Problem::new(
            culprit,
            format!("upstream `{u}`: names use only A-Z, a-z, 0-9, _ and - (at most 64)"),
        ));
    }
    match (&tool.upstream, &tool.operation) {
        (None, Some(_)) => out.push(Problem::new(
            culprit,
            "`operation` names an upstream's operation, so it needs `upstream`",
        )),
        (_, Some(op)) if op.is_empty() || op.len() > 128 || op.chars().any(char::is_control) => out
            .push(Problem::new(
                culprit,
                "`operation` must be a short printable name",
            )),
        _ => {}
    }
    let prop = |arg: &str| tool.input_schema.get("properties").and_then(|p| p.get(arg));
    let ty = |arg: &str| {
        prop(arg)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
    };
    if let Some(arg) = &tool.amount_arg {
        let required = tool
            .input_schema
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(arg)));
        let min_ok = prop(arg)
            .and_then(|p| p.get("minimum"))
            .and_then(Value::as_i64)
            .is_some_and(|m| m >= 0);
        if ty(arg) != Some("integer") || !required || !min_ok {
            out.push(Problem::new(
                culprit,
                format!(
                    "amount_arg `{arg}` must be a required integer property of input_schema with a minimum of 0 or more"
                ),
            ));
        }
    }
    if let Some(t) = &tool.summary
        && !summary_ok(t)
    {
        out.push(Problem::new(
            culprit,
            "summary: `{NAME}` or `{NAME|count}` placeholders, at most 200 characters",
        ));
    }
    let pointer_ok = |p: &str| p.is_empty() || p.starts_with('/');
    if let Some(l) = &tool.lookup {
        if !name_ok(&l.upstream)
            || l.operation.is_empty()
            || l.operation.chars().any(char::is_control)
        {
            out.push(Problem::new(
                culprit,
                "lookup: `upstream` and `operation` must be short printable names",
            ));
        }
        for (name, pointer) in &l.attrs {
            if !attr_name_ok(name) || !pointer_ok(pointer) {
                out.push(Problem::new(
                    culprit,
                    format!(
                        "lookup.attrs.{name}: an attribute name mapped to a JSON pointer (`/field`)"
                    ),
                ));
            }
            if tool.resource_attrs.contains_key(name) {
                out.push(Problem::new(
                    culprit,
                    format!("`{name}` is both a lookup attribute and a resource_attrs entry"),
                ));
            }
        }
    }
    if let Some(r) = &tool.replay {
        if !name_ok(&r.upstream)
            || r.operation.is_empty()
            || r.operation.chars().any(char::is_control)
        {
            out.push(Problem::new(
                culprit,
                "replay: `upstream` and `operation` must be short printable names",
            ));
        }
        if ty(&r.key_arg) != Some("string") {
            out.push(Problem::new(
                culprit,
                format!(
                    "replay.key_arg `{}` must be a string property of input_schema",
                    r.key_arg
                ),
            ));
        }
        for (arg, pointer) in &r.same {
            if prop(arg).is_none() || !pointer_ok(pointer) {
                out.push(Problem::new(
                    culprit,
                    format!(
                        "replay.same.{arg}: a property of input_schema mapped to a JSON pointer"
                    ),
                ));
            }
        }
    }
    if let Some(f) = &tool.fingerprint {
        let hex = f.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(Problem::new(
                culprit,
                "fingerprint must be sha256: and 64 hex digits (as `zt-broker admit` writes it)",
            ));
        }
        if tool.upstream.is_none() {
            out.push(Problem::new(
                culprit,
                "fingerprint pins an upstream's definition, so it needs `upstream`",
            ));
        }
    }
    if tool.max_result_bytes == Some(0) {
        out.push(Problem::new(culprit, "max_result_bytes must be at least 1"));
    }
    if tool.replay.is_some() && tool.read_only {
        out.push(Problem::new(
            culprit,
            "replay is for tools with side effects; a read-only tool is simply read again",
        ));
    }
    for (name, attr) in &tool.resource_attrs {
        let wanted = match attr.derive {
            crate::Derive::Value => ty(&attr.arg).is_some(),
            crate::Derive::Path | crate::Derive::Dirname => ty(&attr.arg) == Some("string"),
        };
        if !wanted {
            out.push(Problem::new(
                culprit,
                format!(
                    "resource_attrs.{name}: `{}` is not a property of input_schema (of type string, for a path)",
                    attr.arg
                ),
            ));
        }
    }
}

/// A Cedar attribute name.
fn attr_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_resource_arg(tool: &RawTool, culprit: &str, out: &mut Vec<Problem>) {
    let Some(arg) = &tool.resource_arg else {
        return;
    };
    let prop = tool.input_schema.get("properties").and_then(|p| p.get(arg));
    let required = tool
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(arg)));
    let is_string = prop.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("string");
    if prop.is_none() || !required || !is_string {
        out.push(Problem::new(
            culprit,
            format!("resource_arg `{arg}` must be a required string property of input_schema"),
        ));
    }
}

/// Collects every place where `schema` is not strict: every object schema must
/// set `additionalProperties = false`.
fn strictness(schema: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    let Value::Object(map) = schema else {
        if root {
            out.push(format!("`{path}` must be a JSON Schema object"));
        }
        return;
    };
    let ty = map.get("type");
    let is_object = match ty {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t.as_str() == Some("object")),
        _ => map.contains_key("properties") || map.contains_key("patternProperties"),
    };
    if root && ty.and_then(Value::as_str) != Some("object") {
        out.push(format!("`{path}` must have type \"object\""));
    }
    if is_object && map.get("additionalProperties") != Some(&Value::Bool(false)) {
        out.push(format!("`{path}` must set additionalProperties = false"));
    }
    for key in ["properties", "patternProperties", "$defs", "definitions"] {
        if let Some(Value::Object(children)) = map.get(key) {
            for (name, child) in children {
                strictness(child, &format!("{path}.{key}.{name}"), false, out);
            }
        }
    }
    for key in [
        "items",
        "additionalItems",
        "not",
        "if",
        "then",
        "else",
        "contains",
    ] {
        match map.get(key) {
            Some(child @ Value::Object(_)) => {
                strictness(child, &format!("{path}.{key}"), false, out)
            }
            Some(Value::Array(children)) => {
                for (i, child) in children.iter().enumerate() {
                    strictness(child, &format!("{path}.{key}[{i}]"), false, out);
                }
            }
            _ => {}
        }
    }
    for key in ["allOf", "anyOf", "oneOf", "prefixItems"] {
        if let Some(Value::Array(children)) = map.get(key) {
            for (i, child) in children.iter().enumerate() {
                strictness(child, &format!("{path}.{key}[{i}]"), false, out);
            }
        }
    }
}

fn check_humans(src: &Sources, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for h in &src.humans {
        let culprit = format!("{}: human `{}`", files::HUMANS, h.id);
        if h.id.is_empty() {
            out.push(Problem::new(&culprit, "empty id"));
        }
        if !seen.insert(h.id.as_str()) {
            out.push(Problem::new(&culprit, "declared twice"));
        }
        for (name, value) in &h.attrs {
            if value.as_i64().is_some_and(|n| n < 0) && is_limit(name) {
                out.push(Problem::new(
                    &culprit,
                    format!("{name} must not be negative"),
                ));
            }
        }
    }
}

fn check_rules(src: &Sources, out: &mut Vec<Problem>) {
    if src.template_count > 0 {
        out.push(Problem::new(
            files::POLICY,
            "policy templates are not supported",
        ));
    }
    let tools: HashMap<EntityUid, &RawTool> = src
        .tools
        .iter()
        .filter_map(|t| action_uid(&t.name).ok().map(|uid| (uid, t)))
        .collect();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut permitted: HashSet<EntityUid> = HashSet::new();

    for rule in &src.rules {
        let culprit = rule.culprit();
        let policy = &rule.policy;
        match &rule.id {
            None => out.push(Problem::new(&culprit, "has no @id annotation")),
            Some(id) => {
                if id.is_empty() {
                    out.push(Problem::new(&culprit, "empty @id"));
                } else if id.starts_with("gate:") {
                    out.push(Problem::new(
                        &culprit,
                        "ids starting with `gate:` are reserved for the gate's own decisions",
                    ));
                }
                if let Some(first) = ids.insert(id, rule.number) {
                    out.push(Problem::new(
                        &culprit,
                        format!(
                            "duplicate @id (rules #{first} and #{} share it)",
                            rule.number
                        ),
                    ));
                }
            }
        }
        for (key, _) in policy.annotations() {
            if !KNOWN_ANNOTATIONS.contains(&key) {
                out.push(Problem::new(
                    &culprit,
                    format!(
                        "unknown annotation @{key} (expected one of @{})",
                        KNOWN_ANNOTATIONS.join(", @")
                    ),
                ));
            }
        }
        let kind = match rule_kind(policy) {
            Ok(k) => Some(k),
            Err(m) => {
                out.push(Problem::new(&culprit, m));
                None
            }
        };

        // Action scope: which tools the rule names.
        let named: Vec<&RawTool> = match rule_actions(policy) {
            None => {
                if policy.effect() == cedar_policy::Effect::Permit {
                    out.push(Problem::new(
                        &culprit,
                        "a permit must name its tools (action == Action::\"tool\" or action in [...])",
                    ));
                }
                src.tools.iter().collect()
            }
            Some(uids) => {
                let mut named = Vec::new();
                for uid in uids {
                    match tools.get(&uid) {
                        Some(t) => named.push(*t),
                        None => out.push(Problem::new(
                            &culprit,
                            format!(
                                "names unknown tool `{}` (not in {})",
                                uid.id().unescaped(),
                                files::TOOLS
                            ),
                        )),
                    }
                    // A shadow permit is not enforced: it does not give
                    // its tools a rule.
                    if policy.effect() == cedar_policy::Effect::Permit
                        && policy.annotation("shadow").is_none()
                    {
                        permitted.insert(uid);
                    }
                }
                named
            }
        };

        // Rewrites.
        let rewrite = policy.annotation("rewrite");
        match (kind, rewrite) {
            (Some(RuleKind::Constrain), None) => out.push(Problem::new(
                &culprit,
                "a constrain rule needs a @rewrite annotation",
            )),
            (Some(RuleKind::Constrain), Some(text)) => match Rewrite::parse_list(text) {
                Err(m) => out.push(Problem::new(
                    &culprit,
                    format!("cannot parse @rewrite: {m}"),
                )),
                Ok(rewrites) => {
                    for tool in &named {
                        for rw in &rewrites {
                            if let Err(m) = check_rewrite(rw, tool) {
                                out.push(Problem::new(&culprit, m));
                            }
                        }
                    }
                }
            },
            (Some(_), Some(_)) => out.push(Problem::new(
                &culprit,
                "@rewrite is only allowed on @effect(\"constrain\") rules",
            )),
            _ => {}
        }
    }

    for tool in &src.tools {
        let Ok(uid) = action_uid(&tool.name) else {
            continue;
        };
        if !permitted.contains(&uid) {
            out.push(Problem::new(
                tool_culprit(&tool.name),
                format!("has no permit rule in {}", files::POLICY),
            ));
        }
    }

    // Validate against the Cedar schema, with rules keyed by their ids when they
    // are unique (so errors name the rule), else by position.
    let mut pset = PolicySet::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let unique = ids.len() == src.rules.len();
    for rule in &src.rules {
        let key = match (&rule.id, unique) {
            (Some(id), true) => id.clone(),
            _ => format!("#{}", rule.number),
        };
        names.insert(key.clone(), rule.culprit());
        if pset.add(rule.policy.new_id(PolicyId::new(&key))).is_err() {
            return;
        }
    }
    let validator = Validator::new(src.schema.clone());
    let result = validator.validate(&pset, ValidationMode::Strict);
    let culprit = |id: &PolicyId| {
        names
            .get(&id.to_string())
            .cloned()
            .unwrap_or_else(|| files::POLICY.to_string())
    };
    for err in result.validation_errors() {
        out.push(Problem::new(
            culprit(err.policy_id()),
            format!("does not validate against {}: {err}", files::SCHEMA),
        ));
    }
    // Warnings fail too: an "impossible policy" is usually a misspelt attribute
    // behind a `has` guard (`resource has regoin && ...` can never be true).
    for warning in result.validation_warnings() {
        out.push(Problem::new(
            culprit(warning.policy_id()),
            format!("does not validate against {}: {warning}", files::SCHEMA),
        ));
    }
}

/// Checks that a rewrite fits the tool's input schema.
fn check_rewrite(rw: &Rewrite, tool: &RawTool) -> Result<(), String> {
    let field = rw.field();
    let Some(prop) = tool
        .input_schema
        .get("properties")
        .and_then(|p| p.get(field))
    else {
        return Err(format!(
            "@rewrite `{rw}` names field `{field}`, which is not in the input schema of tool `{}`",
            tool.name
        ));
    };
    let ty = prop.get("type").and_then(Value::as_str);
    let required = tool
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(field)));
    match rw {
        Rewrite::Clamp { .. } if ty != Some("integer") => Err(format!(
            "@rewrite `{rw}`: field `{field}` of tool `{}` is not an integer",
            tool.name
        )),
        Rewrite::Intersect { .. } if ty != Some("array") && ty != Some("string") => Err(format!(
            "@rewrite `{rw}`: field `{field}` of tool `{}` is not an array or a string",
            tool.name
        )),
        Rewrite::Drop { .. } if required => Err(format!(
            "@rewrite `{rw}`: field `{field}` is required by tool `{}`",
            tool.name
        )),
        Rewrite::Pin { value, .. } => match jsonschema::validator_for(prop) {
            Ok(v) if v.is_valid(value) => Ok(()),
            _ => Err(format!(
                "@rewrite `{rw}`: the value does not satisfy the schema of field `{field}` of tool `{}`",
                tool.name
            )),
        },
        _ => Ok(()),
    }
}

/// Checks that the Cedar schema and the tool registry agree.
fn check_schema(src: &Sources, out: &mut Vec<Problem>) {
    let schema = &src.schema;
    let mut tool_actions = HashSet::new();
    for tool in &src.tools {
        let Ok(action) = action_uid(&tool.name) else {
            continue;
        };
        tool_actions.insert(action.clone());
        let culprit = format!("{}: action `{}`", files::SCHEMA, tool.name);
        let Some(resources) = schema.resources_for_action(&action) else {
            out.push(Problem::new(
                &culprit,
                format!("missing: tool `{}` has no action in the schema", tool.name),
            ));
            continue;
        };
        let resources: Vec<String> = resources.map(ToString::to_string).collect();
        if resources != [tool.resource.clone()] {
            out.push(Problem::new(
                &culprit,
                format!(
                    "applies to resource {:?}, but tool `{}` declares resource `{}`",
                    resources, tool.name, tool.resource
                ),
            ));
            continue;
        }
        let principals: Vec<String> = schema
            .principals_for_action(&action)
            .map(|ps| ps.map(ToString::to_string).collect())
            .unwrap_or_default();
        if principals != ["Agent"] {
            out.push(Problem::new(
                &culprit,
                format!("principal must be exactly Agent, found {principals:?}"),
            ));
            continue;
        }
        // The `context.args` record must match the tool's arguments: a context with
        // every property, and one with only the required ones, must both validate.
        let props = tool
            .input_schema
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required: HashSet<&str> = tool
            .input_schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // The context the gate builds (`args`, `session`, `budgets`): the
        // schema may leave out `session` and `budgets` (then no rule reads
        // them), but what it declares must be what the gate sends.
        let budgets: Vec<(String, RestrictedExpression)> = src
            .budgets
            .budget
            .iter()
            .filter(|b| b.applies_to(&tool.name))
            .map(|b| (b.name.clone(), RestrictedExpression::new_long(0)))
            .collect();
        for only_required in [false, true] {
            let mut fields = Vec::new();
            for (name, prop) in &props {
                if only_required && !required.contains(name.as_str()) {
                    continue;
                }
                fields.push((name.clone(), sample(prop)));
            }
            let attempt = |with_session: bool, with_budgets: bool| -> Result<(), String> {
                let args =
                    RestrictedExpression::new_record(fields.clone()).map_err(|e| e.to_string())?;
                let mut pairs = vec![("args".to_string(), args)];
                if with_session {
                    let session = RestrictedExpression::new_record([(
                        "tainted".to_string(),
                        RestrictedExpression::new_bool(false),
                    )])
                    .map_err(|e| e.to_string())?;
                    pairs.push(("session".to_string(), session));
                }
                if with_budgets {
                    let b = RestrictedExpression::new_record(budgets.clone())
                        .map_err(|e| e.to_string())?;
                    pairs.push(("budgets".to_string(), b));
                }
                let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
                let principal =
                    EntityUid::from_type_name_and_id(type_name("Agent")?, EntityId::new("check"));
                let resource = EntityUid::from_type_name_and_id(
                    type_name(&tool.resource)?,
                    EntityId::new("check"),
                );
                Request::new(principal, action.clone(), resource, context, Some(schema))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            let result = [(true, true), (true, false), (false, true), (false, false)]
                .into_iter()
                .map(|(s, b)| attempt(s, b))
                .reduce(|first, next| first.or_else(|e| next.map_err(|_| e)))
                .unwrap_or(Ok(()));
            if let Err(m) = result {
                out.push(Problem::new(
                    &culprit,
                    format!(
                        "context does not match what the gate sends for tool `{}` (args as its input_schema{}, session {{ tainted: Bool }}, budgets {{ {} }}): {m}",
                        tool.name,
                        if only_required {
                            ", only the required fields"
                        } else {
                            ""
                        },
                        budgets
                            .iter()
                            .map(|(n, _)| format!("{n}: Long"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                break;
            }
        }
    }
    for action in schema.actions() {
        if !tool_actions.contains(action) {
            out.push(Problem::new(
                format!("{}: action `{}`", files::SCHEMA, action.id().unescaped()),
                format!("names no tool of {}", files::TOOLS),
            ));
        }
    }
}

/// A sample Cedar value of a JSON Schema property's type.
fn sample(prop: &Value) -> RestrictedExpression {
    match prop.get("type").and_then(Value::as_str) {
        Some("integer") => RestrictedExpression::new_long(0),
        Some("boolean") => RestrictedExpression::new_bool(false),
        Some("array") => RestrictedExpression::new_set([]),
        _ => RestrictedExpression::new_string(String::new()),
    }
}

/// A human's integer attribute that must not be negative (checked here,
/// assumed by `zt-policy prove`).
pub(crate) fn is_limit(name: &str) -> bool {
    name.ends_with("limit")
}
