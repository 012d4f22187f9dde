//! Loading a policy directory into an immutable [`PolicyBundle`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema,
};
use serde::Deserialize;
use serde_json::Value;

use crate::rewrite::Rewrite;
use crate::{Human, Problem, Risk, ToolSpec, files};

/// Why a policy directory could not be loaded. Every variant names its culprit.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be parsed.
    #[error("{file}: {message}")]
    Parse {
        /// The file name (e.g. `tools.toml`).
        file: String,
        /// What is wrong, with position when known.
        message: String,
    },
    /// The files parsed but the startup check found problems.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// The problems of an [`LoadError::Invalid`]; a single pseudo-problem otherwise.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            LoadError::Invalid(p) => p.clone(),
            LoadError::Io { path, source } => vec![Problem::new(
                path.display().to_string(),
                format!("cannot read: {source}"),
            )],
            LoadError::Parse { file, message } => vec![Problem::new(file.clone(), message.clone())],
        }
    }
}

/// A tool as written in `tools.toml` (the public [`ToolSpec`] plus `resource_arg`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTool {
    pub name: String,
    pub title: String,
    pub description: String,
    pub risk: Risk,
    pub read_only: bool,
    pub destructive: bool,
    pub resource: String,
    #[serde(default)]
    pub resource_arg: Option<String>,
    pub input_schema: Value,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub amount_arg: Option<String>,
    #[serde(default)]
    pub resource_attrs: std::collections::BTreeMap<String, crate::ArgAttr>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub hook_assumes: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    pub lookup: Option<crate::Lookup>,
    #[serde(default)]
    pub replay: Option<crate::Replay>,
    #[serde(default)]
    pub untrusted_output: bool,
    #[serde(default)]
    pub max_result_bytes: Option<usize>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl RawTool {
    pub(crate) fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            risk: self.risk,
            read_only: self.read_only,
            destructive: self.destructive,
            resource: self.resource.clone(),
            input_schema: self.input_schema.clone(),
            upstream: self.upstream.clone(),
            operation: self.operation.clone(),
            amount_arg: self.amount_arg.clone(),
            resource_attrs: self.resource_attrs.clone(),
            summary: self.summary.clone(),
            hook_assumes: self.hook_assumes.clone(),
            lookup: self.lookup.clone(),
            replay: self.replay.clone(),
            untrusted_output: self.untrusted_output,
            max_result_bytes: self.max_result_bytes,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    #[serde(default)]
    tool: Vec<RawTool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HumansFile {
    #[serde(default)]
    human: Vec<Human>,
}

/// One policy of `policy.cedar`, in file order.
#[derive(Debug, Clone)]
pub(crate) struct SourceRule {
    /// 1-based position in the file.
    pub number: usize,
    /// The `@id` annotation, if any.
    pub id: Option<String>,
    /// The policy, keyed by Cedar's automatic id.
    pub policy: Policy,
}

impl SourceRule {
    /// How problems name this rule.
    pub(crate) fn culprit(&self) -> String {
        match &self.id {
            Some(id) => format!("{}: rule `{id}`", files::POLICY),
            None => format!("{}: rule #{}", files::POLICY, self.number),
        }
    }
}

/// The parsed contents of a policy directory, before any cross-file check.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub tools: Vec<RawTool>,
    pub humans: Vec<Human>,
    pub rules: Vec<SourceRule>,
    pub template_count: usize,
    pub schema: Schema,
    pub limits: crate::limits::Limits,
    pub budgets: crate::budgets::Budgets,
    /// `sha256:HEX` over every file of the directory as read.
    pub hash: String,
}

/// What a rule does, from its kind and `@effect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RuleKind {
    Allow,
    Constrain,
    Escalate,
    Forbid,
}

/// Per-rule metadata from the annotations.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeta {
    pub order: usize,
    pub kind: RuleKind,
    pub rewrites: Vec<Rewrite>,
    pub reason: Option<String>,
    pub model_message: Option<String>,
    pub shadow: bool,
}

/// Per-tool compiled state.
pub(crate) struct ToolEntry {
    pub name: String,
    pub resource_arg: Option<String>,
    /// Resource attributes taken from the arguments.
    pub arg_attrs: Vec<(String, crate::ArgAttr)>,
    pub resource_type: EntityTypeName,
    pub action: EntityUid,
    pub validator: jsonschema::Validator,
    /// Only the enforced rules that can apply to this tool.
    pub policies: PolicySet,
    /// Those and the `@shadow` rules that apply to it, when there are any.
    pub shadow: Option<PolicySet>,
}

impl ToolEntry {
    /// See [`PolicyBundle::resource_id`].
    pub(crate) fn resource_id<'a>(&'a self, args: &'a Value) -> Option<&'a str> {
        match &self.resource_arg {
            Some(arg) => args.get(arg).and_then(Value::as_str),
            None => Some(&self.name),
        }
    }
}

/// A human with its prebuilt Cedar entity.
pub(crate) struct HumanEntry {
    pub human: Human,
    pub uid: EntityUid,
    pub entity: Entity,
}

/// An immutable snapshot of a policy directory: the tool registry, the directory
/// of humans, the rules sliced per tool and the compiled argument validators.
///
/// Build it with [`PolicyBundle::load`]; decide with [`PolicyBundle::decide`].
pub struct PolicyBundle {
    pub(crate) dir: PathBuf,
    pub(crate) sources: Sources,
    pub(crate) tools: Vec<ToolSpec>,
    pub(crate) entries: HashMap<String, ToolEntry>,
    pub(crate) humans: HashMap<String, HumanEntry>,
    pub(crate) rules: HashMap<String, RuleMeta>,
    pub(crate) agent_type: EntityTypeName,
    pub(crate) authorizer: Authorizer,
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("dir", &self.dir)
            .field("tools", &self.tools.len())
            .field("humans", &self.humans.len())
            .field("rules", &self.rules.len())
            .finish()
    }
}

fn parse_err(file: &str, message: impl ToString) -> LoadError {
    LoadError::Parse {
        file: file.to_string(),
        message: message.to_string().trim_end().to_string(),
    }
}

/// The policy directory's files as read once: what is parsed is what is
/// hashed.
struct Files {
    dir: PathBuf,
    texts: Vec<(&'static str, String)>,
}

impl Files {
    fn read(dir: &Path) -> Result<Files, LoadError> {
        let mut texts = Vec::new();
        for name in files::ALL {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => texts.push((name, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && optional(name) => {}
                Err(source) => return Err(LoadError::Io { path, source }),
            }
        }
        Ok(Files {
            dir: dir.to_path_buf(),
            texts,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, LoadError> {
        self.get(name).ok_or_else(|| LoadError::Io {
            path: self.dir.join(name),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    /// `sha256:HEX` over each present file's name, length and bytes.
    fn hash(&self) -> String {
        let mut bytes = Vec::new();
        for (name, text) in &self.texts {
            for part in [name.as_bytes(), text.as_bytes()] {
                bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
                bytes.extend_from_slice(part);
            }
        }
        format!(
            "sha256:{}",
            zt_proto::canonical::digest_hex(zt_proto::canonical::Domain::PolicyBundle, &bytes)
        )
    }
}

fn optional(name: &str) -> bool {
    ![files::TOOLS, files::HUMANS, files::POLICY, files::SCHEMA].contains(&name)
}

/// The hash of the policy directory `dir` as it is now (see
/// [`PolicyBundle::hash`]).
pub fn bundle_hash(dir: &Path) -> Result<String, LoadError> {
    Files::read(dir).map(|f| f.hash())
}

/// Reads and parses the files of a policy directory.
pub(crate) fn read_sources(dir: &Path) -> Result<Sources, LoadError> {
    let files = Files::read(dir)?;
    let tools: ToolsFile =
        toml::from_str(files.required(files::TOOLS)?).map_err(|e| parse_err(files::TOOLS, e))?;
    let humans: HumansFile =
        toml::from_str(files.required(files::HUMANS)?).map_err(|e| parse_err(files::HUMANS, e))?;
    let (schema, _warnings) = Schema::from_cedarschema_str(files.required(files::SCHEMA)?)
        .map_err(|e| parse_err(files::SCHEMA, e))?;
    let pset = PolicySet::from_str(files.required(files::POLICY)?)
        .map_err(|e| parse_err(files::POLICY, e))?;

    // Cedar numbers policies `policy0`, `policy1`, ... in file order.
    let mut rules: Vec<(usize, Policy)> = pset
        .policies()
        .map(|p| {
            let n = p
                .id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (n, p.clone())
        })
        .collect();
    rules.sort_by_key(|(n, _)| *n);
    let rules = rules
        .into_iter()
        .enumerate()
        .map(|(i, (_, policy))| SourceRule {
            number: i + 1,
            id: policy.annotation("id").map(str::to_string),
            policy,
        })
        .collect();
    let limits = match files.get(files::LIMITS) {
        Some(text) => toml::from_str(text).map_err(|e| parse_err(files::LIMITS, e))?,
        None => crate::limits::Limits::default(),
    };
    let budgets = match files.get(files::BUDGETS) {
        Some(text) => toml::from_str(text).map_err(|e| parse_err(files::BUDGETS, e))?,
        None => crate::budgets::Budgets::default(),
    };
    Ok(Sources {
        tools: tools.tool,
        humans: humans.human,
        rules,
        template_count: pset.templates().count(),
        schema,
        limits,
        budgets,
        hash: files.hash(),
    })
}

pub(crate) fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("invalid entity type `{name}`: {e}"))
}

pub(crate) fn action_uid(tool: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name("Action")?,
        EntityId::new(tool),
    ))
}

/// The human's entity, its attributes checked against the schema's `Human`
/// type (types, required attributes, no undeclared ones).
fn human_entity(h: &Human, schema: &Schema) -> Result<(EntityUid, Entity), String> {
    let uid = EntityUid::from_type_name_and_id(type_name("Human")?, EntityId::new(&h.id));
    let json = serde_json::json!({
        "uid": { "type": "Human", "id": h.id },
        "attrs": h.attrs,
        "parents": [],
    });
    let entity = Entity::from_json_value(json, Some(schema))
        .map_err(|e| format!("does not match the schema's Human: {e}"))?;
    Ok((uid, entity))
}

/// The rule kind from the Cedar effect and the `@effect` annotation.
pub(crate) fn rule_kind(policy: &Policy) -> Result<RuleKind, String> {
    let effect = policy.annotation("effect");
    match policy.effect() {
        cedar_policy::Effect::Forbid => match effect {
            None => Ok(RuleKind::Forbid),
            Some(e) => Err(format!(
                "@effect(\"{e}\") on a forbid rule (forbid always denies; @effect is for permits)"
            )),
        },
        cedar_policy::Effect::Permit => match effect {
            None | Some("allow") => Ok(RuleKind::Allow),
            Some("constrain") => Ok(RuleKind::Constrain),
            Some("escalate") => Ok(RuleKind::Escalate),
            Some(other) => Err(format!(
                "unknown @effect `{other}` (expected allow, constrain or escalate)"
            )),
        },
    }
}

/// The tools a rule's action scope names; `None` for an unconstrained action.
pub(crate) fn rule_actions(policy: &Policy) -> Option<Vec<EntityUid>> {
    match policy.action_constraint() {
        cedar_policy::ActionConstraint::Any => None,
        cedar_policy::ActionConstraint::Eq(uid) => Some(vec![uid]),
        cedar_policy::ActionConstraint::In(uids) => Some(uids),
    }
}

impl PolicyBundle {
    /// Loads a policy directory (`tools.toml`, `humans.toml`, `policy.cedar`,
    /// `schema.cedarschema`) and runs the startup check. The error names the
    /// culprit file, tool, human or rule; [`LoadError::Invalid`] lists every
    /// problem found.
    pub fn load(dir: &Path) -> Result<PolicyBundle, LoadError> {
        let sources = read_sources(dir)?;
        let problems = crate::check::run(&sources);
        if !problems.is_empty() {
            return Err(LoadError::Invalid(problems));
        }
        PolicyBundle::build(dir, sources).map_err(|p| LoadError::Invalid(vec![p]))
    }

    fn build(dir: &Path, sources: Sources) -> Result<PolicyBundle, Problem> {
        // Rule metadata, and every rule re-keyed by its @id.
        let mut rules = HashMap::new();
        let mut keyed = Vec::new();
        for rule in &sources.rules {
            let id = rule
                .id
                .clone()
                .ok_or_else(|| Problem::new(rule.culprit(), "has no @id annotation"))?;
            let kind = rule_kind(&rule.policy).map_err(|m| Problem::new(rule.culprit(), m))?;
            let rewrites = match rule.policy.annotation("rewrite") {
                Some(text) => {
                    Rewrite::parse_list(text).map_err(|m| Problem::new(rule.culprit(), m))?
                }
                None => Vec::new(),
            };
            rules.insert(
                id.clone(),
                RuleMeta {
                    order: rule.number,
                    kind,
                    rewrites,
                    reason: rule.policy.annotation("reason").map(str::to_string),
                    model_message: rule.policy.annotation("model_message").map(str::to_string),
                    shadow: rule.policy.annotation("shadow").is_some(),
                },
            );
            keyed.push((
                rule.policy.annotation("shadow").is_some(),
                rule.policy.new_id(PolicyId::new(&id)),
            ));
        }

        let mut entries = HashMap::new();
        let mut tools = Vec::new();
        for raw in &sources.tools {
            let culprit = format!("{}: tool `{}`", files::TOOLS, raw.name);
            let action = action_uid(&raw.name).map_err(|m| Problem::new(&culprit, m))?;
            let resource_type = type_name(&raw.resource).map_err(|m| Problem::new(&culprit, m))?;
            let validator = jsonschema::validator_for(&raw.input_schema)
                .map_err(|e| Problem::new(&culprit, format!("invalid input_schema: {e}")))?;
            let mut policies = PolicySet::new();
            let mut with_shadow = PolicySet::new();
            let mut shadowed = false;
            for (shadow, p) in &keyed {
                let applies = match rule_actions(p) {
                    None => true,
                    Some(uids) => uids.contains(&action),
                };
                if !applies {
                    continue;
                }
                let add = |set: &mut PolicySet| {
                    set.add(p.clone()).map_err(|e| {
                        Problem::new(
                            format!("{}: rule `{}`", files::POLICY, p.id()),
                            e.to_string(),
                        )
                    })
                };
                add(&mut with_shadow)?;
                if *shadow {
                    shadowed = true;
                } else {
                    add(&mut policies)?;
                }
            }
            entries.insert(
                raw.name.clone(),
                ToolEntry {
                    name: raw.name.clone(),
                    resource_arg: raw.resource_arg.clone(),
                    arg_attrs: raw
                        .resource_attrs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    resource_type,
                    action,
                    validator,
                    policies,
                    shadow: shadowed.then_some(with_shadow),
                },
            );
            tools.push(raw.spec());
        }

        let mut humans = HashMap::new();
        for h in &sources.humans {
            let (uid, entity) = human_entity(h, &sources.schema)
                .map_err(|m| Problem::new(format!("{}: human `{}`", files::HUMANS, h.id), m))?;
            humans.insert(
                h.id.clone(),
                HumanEntry {
                    human: h.clone(),
                    uid,
                    entity,
                },
            );
        }

        Ok(PolicyBundle {
            dir: dir.to_path_buf(),
            sources,
            tools,
            entries,
            humans,
            rules,
            agent_type: type_name("Agent").map_err(|m| Problem::new(files::SCHEMA, m))?,
            authorizer: Authorizer::new(),
        })
    }

    /// Runs the startup check again on this snapshot. A loaded bundle has already
    /// passed it, so this is empty unless the check itself changed.
    pub fn check(&self) -> Vec<Problem> {
        crate::check::run(&self.sources)
    }

    /// Runs the startup check on a directory without building a bundle: parse
    /// errors become a single problem. Empty means the directory would load.
    pub fn check_dir(dir: &Path) -> Vec<Problem> {
        match read_sources(dir) {
            Ok(sources) => {
                let problems = crate::check::run(&sources);
                if problems.is_empty() {
                    match PolicyBundle::build(dir, sources) {
                        Ok(_) => Vec::new(),
                        Err(p) => vec![p],
                    }
                } else {
                    problems
                }
            }
            Err(e) => e.problems(),
        }
    }

    /// The hash of the policy directory as this snapshot read it:
    /// `sha256:HEX` over every file (`tools.toml`, `humans.toml`,
    /// `policy.cedar`, `schema.cedarschema` and the optional ones), the
    /// policy version decisions name.
    pub fn hash(&self) -> &str {
        &self.sources.hash
    }

    /// The budgets (`budgets.toml`; none when the file is absent).
    pub fn budgets(&self) -> &[crate::budgets::Budget] {
        &self.sources.budgets.budget
    }

    /// The budgets calls of `tool` consume.
    pub fn budgets_of<'a>(
        &'a self,
        tool: &'a str,
    ) -> impl Iterator<Item = &'a crate::budgets::Budget> + 'a {
        self.budgets().iter().filter(move |b| b.applies_to(tool))
    }

    /// The most favourable context for `tool` (untainted, nothing consumed):
    /// what a caller with no ledger (the Claude Code hook, synthetic cases)
    /// assumes; the broker decides again with the real one.
    pub fn assumed_context(&self, tool: &str) -> crate::CallContext {
        crate::CallContext {
            tainted: false,
            budgets: self.budgets_of(tool).map(|b| (b.name.clone(), 0)).collect(),
        }
    }

    /// Whether any `@shadow` rule applies to `tool`.
    pub fn has_shadow(&self, tool: &str) -> bool {
        self.entries.get(tool).is_some_and(|e| e.shadow.is_some())
    }

    /// The ids of the `@shadow` rules.
    pub fn shadow_rules(&self) -> impl Iterator<Item = &str> {
        self.sources
            .rules
            .iter()
            .filter(|r| r.policy.annotation("shadow").is_some())
            .filter_map(|r| r.id.as_deref())
    }

    /// The rate limits (`limits.toml`; none when the file is absent).
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.sources.limits
    }

    /// The directory this snapshot was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tools, in registry order.
    pub fn tools(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.iter()
    }

    /// A tool by name.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// A human by id.
    pub fn human(&self, id: &str) -> Option<&Human> {
        self.humans.get(id).map(|h| &h.human)
    }

    /// The humans, in directory order.
    pub fn humans(&self) -> impl Iterator<Item = &Human> {
        self.sources.humans.iter()
    }

    /// The rule ids, in policy-file order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.sources.rules.iter().filter_map(|r| r.id.as_deref())
    }

    /// The name of the argument carrying the resource id of `tool` (e.g.
    /// `order_id` for `issue_refund`); `None` for a tool that names none.
    pub fn resource_arg(&self, tool: &str) -> Option<&str> {
        self.entries
            .get(tool)
            .and_then(|e| e.resource_arg.as_deref())
    }

    /// The id of the resource a call of `tool` acts on: its resource
    /// argument, or the tool's own name for a tool that names none.
    pub fn resource_id<'a>(&'a self, tool: &str, args: &'a Value) -> Option<&'a str> {
        self.entries.get(tool).and_then(|e| e.resource_id(args))
    }

    /// Validates a call's arguments against the tool's strict JSON Schema.
    pub fn validate_args(&self, tool: &str, args: &Value) -> Result<(), crate::ArgError> {
        let entry = self.entries.get(tool).ok_or_else(|| {
            crate::ArgError::new(
                None,
                format!("unknown tool `{}`", crate::args::sanitize(tool)),
            )
        })?;
        crate::args::validate(&entry.validator, args)
    }
}
