//! The Claude Code / Agent SDK `PreToolUse` hook, as a pure function.
//!
//! The hook runs inside the agent's process, without backend access, so it
//! cannot know an account's region or an order's balance. It decides under
//! the most favourable assumptions about the resource (one in the human's
//! regions, with ample refundable balance): whatever it denies or escalates
//! from the arguments and the identity alone — a refund over the hard cap or
//! over the rep's limit, a plan the human may not grant, a smuggled field —
//! is stopped before it leaves the agent; the broker decides the rest with
//! the real data. The broker re-checks everything either way.
//!
//! What each verdict becomes, and what Claude Code 2.1.x does with it
//! (measured with the real CLI; the README's behaviour table):
//!
//! - allow → `permissionDecision: "allow"`: the call goes to the broker
//!   (with `updatedInput`, the whole rewritten input, when the policy
//!   constrained it).
//! - escalate → also `"allow"`, with a reason saying a support lead must
//!   approve: the broker holds the call for an operator and tells the model
//!   it awaits approval. `"ask"` would be wrong twice over: headless
//!   (`claude -p`, the Agent SDK) turns it into an error before the broker
//!   sees the call, so no operator ever hears of it; interactive, it asks the
//!   person at the agent's terminal — often the human the agent acts for,
//!   who must never approve their own request.
//! - deny → `"deny"` with a reason safe for the model: blocked in every
//!   permission mode.
//! - The broker's built-in tools ([`zt_proto::builtin`]) are allowed once
//!   their arguments are valid: the broker decides what they may see.
//!
//! Claude Code treats any exit code other than 0 and 2 as "go ahead" (unless
//! the hook entry says `"onFailure": "block"`, as the shipped settings do),
//! so the binary edge turns every error here into exit 2.

use serde::Deserialize;
use serde_json::{Value, json};

use zt_proto::builtin;

use crate::{DecisionRequest, Effect, PolicyBundle, Resource};

/// The fields of the hook's stdin the gate needs (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct HookInput {
    /// `mcp__<server>__<tool>`.
    pub tool_name: String,
    /// The proposed arguments.
    #[serde(default)]
    pub tool_input: Value,
    /// Claude Code's session id (recorded, not trusted).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Should be `PreToolUse`.
    #[serde(default)]
    pub hook_event_name: Option<String>,
}

/// What the hook tells the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go ahead; `updated_input` replaces the whole input when the policy rewrote it.
    Allow {
        /// Why.
        reason: String,
        /// The rewritten input (every field), if any.
        updated_input: Option<Value>,
    },
    /// Go ahead to the broker, which holds the call for an operator (the
    /// policy escalates): the client must not ask anyone itself.
    Escalate {
        /// Why, and that a support lead must approve.
        reason: String,
    },
    /// Blocked; the reason goes to the model.
    Deny {
        /// Why (safe for the model).
        reason: String,
    },
}

/// Why the hook could not decide; the caller exits 2 with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// Not an MCP tool name.
    #[error("`{0}` is not an MCP tool name (mcp__<server>__<tool>)")]
    NotMcp(String),
    /// A tool the registry does not have.
    #[error("unknown tool `{0}`: blocked by default")]
    UnknownTool(String),
    /// Not a PreToolUse event.
    #[error("unexpected hook event `{0}`")]
    Event(String),
}

/// The tool part of `mcp__<server>__<tool>`.
pub fn tool_of(tool_name: &str) -> Result<&str, HookError> {
    let rest = tool_name
        .strip_prefix("mcp__")
        .ok_or_else(|| HookError::NotMcp(tool_name.to_owned()))?;
    let (_server, tool) = rest
        .split_once("__")
        .ok_or_else(|| HookError::NotMcp(tool_name.to_owned()))?;
    if tool.is_empty() {
        return Err(HookError::NotMcp(tool_name.to_owned()));
    }
    Ok(tool)
}

/// A resource as favourable as the rules allow, for deciding without backend data.
fn assumed_resource(
    bundle: &PolicyBundle,
    tool: &str,
    human: &str,
    args: &Value,
) -> Option<Resource> {
    let spec = bundle.tool(tool)?;
    let id = bundle
        .resource_id(tool, args)
        .unwrap_or_default()
        .to_owned();
    Some(Resource {
        id,
        attrs: spec.assumed_attrs(bundle.human(human)),
    })
}

/// Decides one hook call for `human`, with `agent` acting.
pub fn evaluate(
    bundle: &PolicyBundle,
    input: &HookInput,
    human: &str,
    agent: &str,
) -> Result<Verdict, HookError> {
    if let Some(ev) = input
        .hook_event_name
        .as_ref()
        .filter(|ev| *ev != "PreToolUse")
    {
        return Err(HookError::Event(ev.clone()));
    }
    let tool = tool_of(&input.tool_name)?;
    if builtin::is_builtin(tool) {
        return Ok(builtin_verdict(tool, &input.tool_input));
    }
    if bundle.tool(tool).is_none() {
        return Err(HookError::UnknownTool(tool.to_owned()));
    }
    let req = DecisionRequest {
        tool: tool.to_owned(),
        args: input.tool_input.clone(),
        agent: agent.to_owned(),
        human: human.to_owned(),
        resource: assumed_resource(bundle, tool, human, &input.tool_input),
        // The hook has no ledger: it assumes the most favourable context,
        // and the broker decides again with the real one.
        context: bundle.assumed_context(tool),
    };
    let d = bundle.decide(&req);
    Ok(match d.effect {
        Effect::Allow => Verdict::Allow {
            reason: d.reason,
            updated_input: None,
        },
        Effect::Constrain => Verdict::Allow {
            reason: format!("{} (arguments rewritten)", d.model_message),
            updated_input: Some(d.args),
        },
        Effect::Escalate => Verdict::Escalate {
            reason: format!(
                "{} The broker holds the call until an operator decides.",
                d.model_message
            ),
        },
        Effect::Deny => Verdict::Deny {
            reason: d.model_message,
        },
    })
}

/// The verdict on a call of one of the broker's built-in tools.
fn builtin_verdict(tool: &str, args: &Value) -> Verdict {
    let checked = match tool {
        builtin::APPROVAL_STATUS => builtin::approval_status_request_id(args).map(drop),
        _ => Err(format!("no rule for the built-in tool `{tool}`")),
    };
    match checked {
        Ok(()) => Verdict::Allow {
            reason: format!(
                "`{tool}` is a built-in broker tool; the broker checks the request is this session's"
            ),
            updated_input: None,
        },
        Err(why) => Verdict::Deny {
            reason: format!("Invalid arguments: {why}."),
        },
    }
}

/// The JSON Claude Code reads from stdout on exit 0.
pub fn output(verdict: &Verdict) -> Value {
    let (decision, reason, updated) = match verdict {
        Verdict::Allow {
            reason,
            updated_input,
        } => ("allow", reason, updated_input.clone()),
        // Never "ask": see the module's documentation.
        Verdict::Escalate { reason } => ("allow", reason, None),
        Verdict::Deny { reason } => ("deny", reason, None),
    };
    let mut out = json!({
        "hookEventName": "PreToolUse",
        "permissionDecision": decision,
        "permissionDecisionReason": reason,
    });
    if let (Some(u), Value::Object(m)) = (updated, &mut out) {
        m.insert("updatedInput".into(), u);
    }
    json!({ "hookSpecificOutput": out })
}
