//! The call path every `tools/call` takes through the broker:
//!
//! scope → size → strict schema → resource attributes from the backend →
//! policy decision (constrain re-evaluates) → durable audit of the decision →
//! execute, or refuse, or escalate to a human and redeem the one-time grant →
//! durable audit of the result → result.
//!
//! Every failure on this path refuses the call with a short, safe message
//! for the model; internals go to the audit trail and the log, never to the
//! agent. Nothing executes unless its decision entry is on disk first.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use zt_policies::{Decision, DecisionRequest, Effect, PolicyStore};
use zt_proto::audit::{Kind, Record};
use zt_proto::canonical;
use zt_proto::grant::Grant;
use zt_proto::pb::{ApprovalRequest, Event};
use zt_proto::pinned::PinnedKeys;
use zt_proto::store::{AuditLog, StoreError};
use zt_proto::token::SessionClaims;

use crate::approval::Progress;
use crate::approval_client::ApprovalService;
use crate::backend::{self, Backend, BackendError, Output};

/// Everything the call path needs; shared by every MCP session.
pub struct Broker {
    /// Current policy snapshot.
    pub policy: PolicyStore,
    /// The example backend (holds the credentials).
    pub backend: Backend,
    /// Broker state (grant redemptions).
    pub state: zt_proto::db::Db,
    /// Budgets over time and session taint (in the state database).
    pub ledger: crate::ledger::Ledger,
    /// This broker's audit chain (one writer per chain in the process).
    pub audit: Arc<AuditLog>,
    /// The approval service.
    pub approvals: ApprovalService,
    /// Pinned grant-signing keys.
    pub grant_keys: Arc<PinnedKeys>,
    /// How long an escalation may wait for a human before answering "pending".
    pub approval_wait: Duration,
    /// Largest accepted arguments.
    pub max_args_bytes: usize,
    /// Live events for operators (best effort, never blocks a call).
    pub events: mpsc::Sender<Event>,
    /// Sessions revoked at the approval service (refreshed every second).
    pub revoked: Revocations,
    /// Per-session and per-tool token buckets.
    pub limiter: crate::ratelimit::RateLimiter,
    /// Tools held because their upstream definition drifted.
    pub quarantine: Arc<crate::quarantine::Quarantine>,
    /// The screen every result passes before the model sees it.
    pub redactor: std::sync::RwLock<Arc<crate::redact::Redactor>>,
}

/// The set of revoked session ids, shared by the auth middleware and the call path.
///
/// Until the first sync with the approval service completes the broker does
/// not know which sessions are revoked, so every session counts as revoked
/// (fail closed) and the middleware answers 503.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    set: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Revocations {
    /// Whether `sid` is revoked. Before the first sync, or with a poisoned
    /// lock, every session counts as revoked (fail closed).
    pub fn contains(&self, sid: &str) -> bool {
        !self.is_synced() || self.set.read().map(|set| set.contains(sid)).unwrap_or(true)
    }

    /// Records revoked sessions.
    pub fn extend(&self, sids: impl IntoIterator<Item = String>) {
        if let Ok(mut set) = self.set.write() {
            set.extend(sids);
        }
    }

    /// Records that the set is complete as of a sync with the approval service.
    pub fn mark_synced(&self) {
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a sync has completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Why the call path refused, internally; the model sees only `message`.
pub(crate) struct Refusal {
    pub(crate) decision: &'static str,
    pub(crate) rules: Vec<String>,
    pub(crate) message: String,
    pub(crate) detail: String,
    /// What the policy's decision rested on, when the policy decided.
    pub(crate) basis: Option<Box<Value>>,
}

impl Refusal {
    pub(crate) fn new(
        decision: &'static str,
        rule: &str,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Refusal {
        Refusal {
            decision,
            rules: if rule.is_empty() {
                Vec::new()
            } else {
                vec![rule.to_owned()]
            },
            message: message.into(),
            detail: detail.into(),
            basis: None,
        }
    }
}

/// The audit form of what `decision` rested on (see
/// [`zt_policies::Basis`]), with the arguments as the agent sent them when
/// the policy rewrote them.
pub(crate) fn basis_of(decision: &Decision, original: &Value) -> Option<Value> {
    let mut v = serde_json::to_value(&decision.basis).ok()?;
    if decision.args != *original
        && let Value::Object(m) = &mut v
    {
        m.insert("args".into(), original.clone());
    }
    Some(v)
}

pub(crate) fn error_result(message: &str, status: &str, extra: Value) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(message.to_owned())]);
    let mut body = json!({ "status": status, "message": message });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    r.structured_content = Some(body);
    r
}

/// The text blocks of a result, joined.
pub(crate) fn result_text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn ok_result(value: Value) -> CallToolResult {
    CallToolResult::structured(value)
}

impl Broker {
    pub(crate) fn record(&self, claims: &SessionClaims, tool: &str, args: &Value) -> Record {
        let mut actors = claims.chain();
        actors.pop(); // the human is `subject`
        Record {
            session: claims.sid.clone(),
            subject: claims.sub.clone(),
            actors,
            tool: tool.to_owned(),
            args: args.clone(),
            args_hash: canonical::args_hash(tool, args).unwrap_or_default(),
            ..Record::default()
        }
    }

    pub(crate) fn publish(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: &Value,
        decision: &str,
        summary: String,
        request_id: &str,
    ) {
        let event = Event {
            kind: "tool_call".into(),
            session_id: claims.sid.clone(),
            human: claims.sub.clone(),
            agent: claims.agent().to_owned(),
            tool: tool.to_owned(),
            decision: decision.to_owned(),
            summary,
            request_id: request_id.to_owned(),
            args_json: canonical::to_canonical_string(args).unwrap_or_default(),
            ..Event::default()
        };
        // A full queue drops the event: operators' live view must never slow
        // or block an agent's call. The audit trail is the record.
        let _ = self.events.try_send(event);
    }

    /// Durably records an entry that must exist before anything further
    /// happens; if it cannot be written, the call is refused (fail closed).
    pub(crate) async fn record_first(&self, kind: Kind, rec: Record) -> Result<(), CallToolResult> {
        self.audit.append(kind, rec).await.map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "audit write failed; refusing the call");
            error_result(
                "the action could not be recorded, so it was not run",
                "error",
                json!({}),
            )
        })
    }

    /// Audits a refusal and turns it into the model's error result.
    pub(crate) async fn refuse(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: &Value,
        r: Refusal,
    ) -> CallToolResult {
        let mut rec = self.record(claims, tool, args);
        rec.decision = r.decision.to_owned();
        rec.rules = r.rules.clone();
        rec.status = "refused".into();
        rec.detail = r.detail.clone();
        rec.basis = r.basis.as_deref().cloned();
        let mut audited = self.audit.append(Kind::Decision, rec.clone()).await;
        if let Err(StoreError::Encode(_)) = &audited {
            // Arguments the canonical form cannot hold (floats, huge
            // numbers): record them as bounded text, so the refusal is
            // still in the trail.
            let text: String = args.to_string().chars().take(2048).collect();
            rec.args = json!({ "_unencodable": text });
            rec.args_hash = String::new();
            audited = self.audit.append(Kind::Decision, rec).await;
        }
        if let Err(e) = audited {
            tracing::error!(error = %e, "audit write failed while refusing a call");
        }
        self.publish(claims, tool, args, r.decision, r.message.clone(), "");
        error_result(&r.message, "denied", json!({ "rules": r.rules }))
    }

    /// Whether `spec`, if it was admitted with a fingerprint, is still what
    /// its upstream serves: a tool held, or whose live definition differs
    /// (or is gone), is refused — and a new drift is held, audited and
    /// shown to operators. An upstream whose tool list cannot be read
    /// refuses too (fail closed).
    pub(crate) async fn admitted(&self, spec: &zt_policies::ToolSpec) -> Result<(), Refusal> {
        let Some(admitted) = &spec.fingerprint else {
            return Ok(());
        };
        let refusal = |h: &crate::quarantine::Hold| {
            Refusal::new(
                "quarantine",
                "upstream-drift",
                format!(
                    "`{}` changed at its source since it was reviewed, so it is unavailable until an operator re-admits it",
                    spec.name
                ),
                h.summary(),
            )
        };
        if let Some(h) = self.quarantine.held(&spec.name, admitted) {
            return Err(refusal(&h));
        }
        let live = match self.backend.definition(spec).await {
            Ok(backend::Definition::NotPublished) => return Ok(()),
            Ok(backend::Definition::Present(d)) => {
                if crate::admission::fingerprint(&d) == *admitted {
                    return Ok(());
                }
                Some(d)
            }
            Ok(backend::Definition::Absent) => None,
            Err(e) => {
                tracing::error!(error = ?e, tool = %spec.name, "reading the upstream's tool list failed");
                return Err(Refusal::new(
                    "deny",
                    "backend",
                    "the backend is unavailable; try again later",
                    "the upstream's tool list could not be read to check the admitted definition",
                ));
            }
        };
        let changed = match (&live, self.quarantine.admitted(&spec.name)) {
            (Some(l), Some(a)) => crate::admission::changes(&a, l)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let hold = crate::quarantine::Hold {
            tool: spec.name.clone(),
            upstream: spec.upstream.clone().unwrap_or_default(),
            admitted: admitted.clone(),
            live: live.as_ref().map(crate::admission::fingerprint),
            changed,
            since_ms: zt_proto::now_ms(),
        };
        match self.quarantine.hold(hold.clone()) {
            Ok(true) => {
                tracing::warn!(tool = %spec.name, "{}", hold.summary());
                let rec = Record {
                    subject: "zt-broker".into(),
                    tool: spec.name.clone(),
                    decision: "quarantine".into(),
                    rules: vec!["upstream-drift".into()],
                    status: "quarantined".into(),
                    detail: hold.summary(),
                    ..Record::default()
                };
                if let Err(e) = self.audit.append(Kind::Decision, rec).await {
                    tracing::error!(error = %e, "a quarantine could not be audited");
                }
                let _ = self.events.try_send(Event {
                    kind: "drift".into(),
                    tool: spec.name.clone(),
                    decision: "quarantine".into(),
                    summary: hold.summary(),
                    rules: vec!["upstream-drift".into()],
                    ..Event::default()
                });
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "a quarantine could not be recorded; the tool is refused now")
            }
        }
        Err(refusal(&hold))
    }

    /// Reads every pinned tool's upstream definition now and then, so a
    /// drift is held and shown to operators before an agent calls it.
    pub async fn watch_admitted(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let bundle = self.policy.current();
            for spec in bundle.tools().filter(|t| t.fingerprint.is_some()) {
                let _ = self.admitted(spec).await;
            }
        }
    }

    /// The session's and the tool's token buckets: a refusal when either
    /// is empty.
    pub(crate) fn rate_limit(
        &self,
        bundle: &zt_policies::PolicyBundle,
        claims: &SessionClaims,
        tool: &str,
    ) -> Result<(), Refusal> {
        self.limiter
            .check(bundle.limits(), &claims.sid, tool)
            .map_err(|which| {
                let scope = match which {
                    crate::ratelimit::Exceeded::Session => "this session",
                    crate::ratelimit::Exceeded::Tool => "this tool",
                };
                Refusal::new(
                    "deny",
                    "rate-limit",
                    format!("rate limit reached for {scope}; slow down and try again later"),
                    format!("rate limit exceeded ({scope})"),
                )
            })
    }

    /// The attributes the policy needs about the call's object, or the
    /// refusal a failed lookup becomes.
    pub(crate) async fn fetch(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: &Value,
    ) -> Result<backend::Fetched, Refusal> {
        let bundle = self.policy.current();
        let (Some(spec), Some(id)) = (bundle.tool(tool), bundle.resource_id(tool, args)) else {
            return Ok(backend::Fetched::default());
        };
        let actor = backend::Actor {
            session: &claims.sid,
            human: &claims.sub,
            grant_id: None,
            progress: None,
        };
        match self.backend.resource(spec, id, args, &actor).await {
            Ok(f) => Ok(f),
            Err(BackendError::NotFound(what)) => Err(Refusal::new(
                "deny",
                "backend",
                format!("{what} not found"),
                format!("{what} not found"),
            )),
            Err(e) => {
                tracing::error!(error = ?e, tool, "backend lookup failed");
                Err(Refusal::new(
                    "deny",
                    "backend",
                    "the backend is unavailable; try again later",
                    "resource lookup failed",
                ))
            }
        }
    }

    /// Runs one `tools/call` through the gate. `progress`, when the client
    /// asked for it, hears about a call waiting for a human.
    pub async fn call(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: Value,
        progress: Option<Progress>,
    ) -> CallToolResult {
        let bundle = self.policy.current();
        if bundle.tool(tool).is_none() {
            let shown = printable(tool);
            let r = Refusal::new(
                "deny",
                "registry",
                format!("unknown tool `{shown}`"),
                "unknown tool",
            );
            return self.refuse(claims, &shown, &Value::Null, r).await;
        }
        if !claims.allows_tool(tool) {
            let r = Refusal::new(
                "deny",
                "scope",
                format!("this session is not allowed to call `{tool}`"),
                "tool outside the session's scope",
            );
            return self.refuse(claims, tool, &args, r).await;
        }
        if let Err(r) = self.rate_limit(&bundle, claims, tool) {
            return self.refuse(claims, tool, &args, r).await;
        }
        let size = serde_json::to_vec(&args)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_args_bytes {
            let r = Refusal::new(
                "deny",
                "schema",
                format!(
                    "arguments are too large ({size} bytes; at most {})",
                    self.max_args_bytes
                ),
                "oversize arguments",
            );
            // Do not copy an oversize payload into the audit trail.
            return self
                .refuse(claims, tool, &json!({"_oversize_bytes": size}), r)
                .await;
        }
        if let Err(e) = bundle.validate_args(tool, &args) {
            let msg = format!("invalid arguments for `{tool}`: {e}");
            let r = Refusal::new("deny", "schema", msg.clone(), msg);
            return self.refuse(claims, tool, &args, r).await;
        }
        if let Some(spec) = bundle.tool(tool)
            && let Err(r) = self.admitted(spec).await
        {
            return self.refuse(claims, tool, &args, r).await;
        }
        // A retry with the same idempotency key returns the first result:
        // nothing new executes, so there is nothing new to decide.
        let actor = backend::Actor {
            session: &claims.sid,
            human: &claims.sub,
            grant_id: None,
            progress: None,
        };
        let replayed = match bundle.tool(tool) {
            Some(spec) => self.backend.replay(spec, &args, &actor).await,
            None => Ok(None),
        };
        match replayed {
            Ok(None) => {}
            Ok(Some(first)) => {
                let mut rec = self.record(claims, tool, &args);
                rec.decision = "replay".into();
                rec.status = "ok".into();
                rec.detail = "idempotent retry: returned the first result, nothing executed".into();
                if let Err(refused) = self.record_first(Kind::Decision, rec).await {
                    return refused;
                }
                self.publish(claims, tool, &args, "replay", "idempotent retry".into(), "");
                return ok_result(first);
            }
            Err(BackendError::Refused(why)) => {
                let r = Refusal::new("deny", "idempotency", why.clone(), why);
                return self.refuse(claims, tool, &args, r).await;
            }
            Err(e) => {
                tracing::error!(error = ?e, tool, "idempotency lookup failed");
                let r = Refusal::new(
                    "deny",
                    "backend",
                    "the backend is unavailable; try again later",
                    "idempotency lookup failed",
                );
                return self.refuse(claims, tool, &args, r).await;
            }
        }
        let fetched = match self.fetch(claims, tool, &args).await {
            Ok(f) => f,
            Err(r) => return self.refuse(claims, tool, &args, r).await,
        };
        let read_only = bundle.tool(tool).is_some_and(|t| t.read_only);
        // Taint only grows; a call that changes something also asks what
        // every replica recorded.
        let tainted = match self.ledger.tainted(&claims.sid, !read_only).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, tool, "reading the session's taint failed");
                let r = Refusal::new(
                    "deny",
                    "ledger",
                    "the action could not be checked, so it was not run; try again later",
                    format!("session taint unreadable: {e}"),
                );
                return self.refuse(claims, tool, &args, r).await;
            }
        };
        let mut request = DecisionRequest {
            tool: tool.to_owned(),
            args: args.clone(),
            agent: claims.agent().to_owned(),
            human: claims.sub.clone(),
            resource: fetched.resource,
            context: zt_policies::CallContext {
                tainted,
                budgets: Default::default(),
            },
        };
        let (decision, reservation) = match self
            .ledger
            .decide(&bundle, &mut request, who(claims))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, tool, "measuring the call's budgets failed");
                let r = Refusal::new(
                    "deny",
                    "ledger",
                    "the action could not be checked against its budgets, so it was not run; try again later",
                    e.to_string(),
                );
                return self.refuse(claims, tool, &args, r).await;
            }
        };
        self.shadowed(claims, tool, &args, &decision);
        match decision.effect {
            Effect::Deny => {
                let r = Refusal {
                    decision: "deny",
                    rules: decision.rules.clone(),
                    message: decision.model_message.clone(),
                    detail: decision.reason.clone(),
                    basis: basis_of(&decision, &args).map(Box::new),
                };
                self.refuse(claims, tool, &args, r).await
            }
            Effect::Allow | Effect::Constrain => {
                if read_only {
                    self.read(
                        claims,
                        tool,
                        &args,
                        &decision,
                        fetched.snapshot,
                        progress.as_ref(),
                    )
                    .await
                } else {
                    self.run(
                        claims,
                        tool,
                        &args,
                        &decision,
                        Run::Decided(reservation),
                        progress.as_ref(),
                    )
                    .await
                }
            }
            Effect::Escalate => {
                self.escalate(claims, tool, &decision, &request, progress)
                    .await
            }
        }
    }

    /// An allowed read-only call. A read has no side effect to precede, so
    /// the decision entry is not awaited before the read; instead the
    /// decision and the result are queued together (one group commit) and
    /// the result is released only once both are durable. If either fails,
    /// the model gets an error and no data (fail closed).
    async fn read(
        &self,
        claims: &SessionClaims,
        tool: &str,
        original: &Value,
        decision: &Decision,
        snapshot: Option<Output>,
        progress: Option<&Progress>,
    ) -> CallToolResult {
        let args = &decision.args;
        let effect = effect_name(decision.effect);
        let mut rec = self.record(claims, tool, args);
        rec.decision = effect.to_owned();
        rec.rules = decision.rules.clone();
        rec.status = "executing".into();
        rec.basis = basis_of(decision, original);
        rec.detail = if args != original {
            format!(
                "{} (arguments rewritten from {})",
                decision.reason, original
            )
        } else {
            decision.reason.clone()
        };
        let result = |rec: &Record, outcome: &Result<Output, backend::BackendError>, note: &str| {
            let mut rec = rec.clone();
            rec.status = status_of(outcome).into();
            rec.detail = match outcome {
                Ok(v) => summarize(&self.policy, tool, v.json(), args) + note,
                Err(e) => format!("{e:?}"),
            };
            rec.decision = "executed".into();
            rec.basis = None;
            rec
        };
        let (outcome, audited) = match snapshot {
            // The row read for the policy is the result, unless the policy
            // rewrote the arguments: both entries go in one commit.
            Some(value) if args == original => {
                let (outcome, note) = self.screened(tool, Ok(value));
                let done = result(&rec, &outcome, &note);
                let audited = self
                    .audit
                    .append_all(vec![(Kind::Decision, rec), (Kind::Result, done)])
                    .await
                    .map(|_| ());
                (outcome, audited)
            }
            _ => {
                let intent = self.audit.submit(Kind::Decision, rec.clone()).await;
                let actor = backend::Actor {
                    session: &claims.sid,
                    human: &claims.sub,
                    grant_id: None,
                    progress,
                };
                let (outcome, note) = self.screened(tool, self.execute(tool, args, &actor).await);
                let done = self
                    .audit
                    .submit(Kind::Result, result(&rec, &outcome, &note))
                    .await;
                let (intent, done) = (intent.durable().await, done.durable().await);
                (outcome, intent.and(done).map(|_| ()))
            }
        };
        if let Err(e) = audited {
            tracing::error!(error = %e, "audit write failed; withholding a read result");
            return error_result(
                "the action could not be recorded, so its result is withheld",
                "error",
                json!({}),
            );
        }
        if let Err(withheld) = self.taint(claims, tool, &outcome).await {
            return withheld;
        }
        self.finish(claims, tool, args, decision, effect, outcome)
    }

    /// Records, before outsiders' content reaches the agent, that its
    /// session has read it; if that cannot be recorded the content is
    /// withheld (fail closed).
    async fn taint(
        &self,
        claims: &SessionClaims,
        tool: &str,
        outcome: &Result<Output, BackendError>,
    ) -> Result<(), CallToolResult> {
        let untrusted = self
            .policy
            .current()
            .tool(tool)
            .is_some_and(|t| t.untrusted_output);
        if !untrusted || !matches!(outcome, Ok(o) if !o.failed()) {
            return Ok(());
        }
        self.ledger.taint(&claims.sid, tool).await.map_err(|e| {
            tracing::error!(error = %e, tool, "recording the session's taint failed; withholding the result");
            error_result(
                "the action could not be recorded, so its result is withheld",
                "error",
                json!({}),
            )
        })
    }

    /// Tells operators when the `@shadow` rules would have decided the
    /// call otherwise (the audit entry records the shadow verdict either way).
    fn shadowed(&self, claims: &SessionClaims, tool: &str, args: &Value, decision: &Decision) {
        let Some(shadow) = decision.shadow_divergence() else {
            return;
        };
        let summary = format!(
            "shadow rules would have decided {} (by {}) where the policy decided {}",
            shadow.effect,
            shadow.rules.join(", "),
            decision.effect
        );
        tracing::info!(tool, session = %claims.sid, "{summary}");
        let _ = self.events.try_send(Event {
            kind: "shadow".into(),
            session_id: claims.sid.clone(),
            human: claims.sub.clone(),
            agent: claims.agent().to_owned(),
            tool: tool.to_owned(),
            decision: decision.effect.as_str().to_owned(),
            summary,
            rules: shadow.rules.clone(),
            args_json: canonical::to_canonical_string(args).unwrap_or_default(),
            ..Event::default()
        });
    }

    /// Audits the decision (durably, before any side effect), executes, and
    /// audits the result.
    pub(crate) async fn run(
        &self,
        claims: &SessionClaims,
        tool: &str,
        original: &Value,
        decision: &Decision,
        how: Run<'_>,
        progress: Option<&Progress>,
    ) -> CallToolResult {
        let args = &decision.args;
        let (grant, reservation) = match how {
            Run::Decided(r) => (None, r),
            Run::Approved(g, req) => {
                // An operator's approval lets the call run past the policy,
                // not past the ledger: what it consumes counts.
                let bundle = self.policy.current();
                match self.ledger.consume(&bundle, tool, args, who(claims)).await {
                    Ok(r) => (Some((g, req)), r),
                    Err(e) => {
                        tracing::error!(error = %e, tool, "consuming an approved call's budgets failed");
                        return error_result(
                            "the action could not be recorded, so it was not run",
                            "error",
                            json!({}),
                        );
                    }
                }
            }
        };
        let effect = if grant.is_some() {
            "approved"
        } else {
            effect_name(decision.effect)
        };
        let mut rec = self.record(claims, tool, args);
        rec.decision = effect.to_owned();
        rec.rules = decision.rules.clone();
        rec.status = "executing".into();
        rec.detail = if args != original {
            format!(
                "{} (arguments rewritten from {})",
                decision.reason, original
            )
        } else {
            decision.reason.clone()
        };
        if let Some((g, req)) = grant {
            rec.grant_id = g.id.clone();
            rec.request_id = req.id.clone();
        } else {
            rec.basis = basis_of(decision, original);
        }
        if let Err(refused) = self.record_first(Kind::Decision, rec.clone()).await {
            self.ledger.release(reservation).await;
            return refused;
        }
        rec.basis = None;
        let actor = backend::Actor {
            session: &claims.sid,
            human: &claims.sub,
            grant_id: grant.map(|(g, _)| g.id.as_str()),
            progress,
        };
        let (outcome, note) = self.screened(tool, self.execute(tool, args, &actor).await);
        // Nothing moved when the upstream refused outright: give the
        // budgets back. An unknown outcome (a timeout) stays consumed.
        if matches!(
            &outcome,
            Err(BackendError::Refused(_) | BackendError::NotFound(_))
        ) || matches!(&outcome, Ok(o) if o.failed())
        {
            self.ledger.release(reservation).await;
        }
        rec.status = status_of(&outcome).into();
        rec.detail = match &outcome {
            Ok(v) => summarize(&self.policy, tool, v.json(), args) + &note,
            Err(e) => format!("{e:?}"),
        };
        rec.decision = "executed".into();
        let audited = self.audit.append(Kind::Result, rec).await;
        if let Err(e) = &audited {
            // The side effect happened; the intent entry records it was
            // authorized. Surface the failure loudly.
            tracing::error!(error = %e, "audit write of a result failed");
        }
        if let Some((g, req)) = grant {
            let (ok, summary) = match &outcome {
                Ok(v) => (!v.failed(), summarize(&self.policy, tool, v.json(), args)),
                Err(e) => (false, e.to_string()),
            };
            if let Err(e) = self.approvals.report(&req.id, ok, &summary, &g.id).await {
                tracing::warn!(error = %e, request = %req.id, "could not report execution");
            }
        }
        if let Err(withheld) = self.taint(claims, tool, &outcome).await {
            return withheld;
        }
        let label = if grant.is_some() { "executed" } else { effect };
        self.finish(claims, tool, args, decision, label, outcome)
    }

    /// A result screened for the model (the broker's credentials and the
    /// redaction patterns cut out), with the note its audit entry carries:
    /// the screened result's hash, what was cut (rule names and counts,
    /// never the text), and whether it is outsiders' content.
    fn screened(
        &self,
        tool: &str,
        outcome: Result<Output, BackendError>,
    ) -> (Result<Output, BackendError>, String) {
        let Ok(mut out) = outcome else {
            return (outcome, String::new());
        };
        let bundle = self.policy.current();
        let spec = bundle.tool(tool);
        if let Err(why) = self.matches_output_schema(tool, spec, &out) {
            tracing::error!(tool, why, "refusing an upstream result");
            return (Err(BackendError::Unavailable(why)), String::new());
        }
        let redactor = self
            .redactor
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let cuts = redactor.output(&mut out);
        let bytes = match &out {
            Output::Json(v) => serde_json::to_vec(v),
            Output::Tool(r) => serde_json::to_vec(r),
        }
        .unwrap_or_default();
        if let Some(cap) = spec.and_then(|t| t.max_result_bytes)
            && bytes.len() > cap
        {
            return (
                Err(BackendError::TooLarge(format!(
                    "`{tool}` returned {} bytes (its cap is {cap})",
                    bytes.len()
                ))),
                String::new(),
            );
        }
        let hash = canonical::digest_hex(canonical::Domain::Result, &bytes);
        let mut note = format!(" · result sha256:{}", &hash[..16]);
        if !cuts.is_empty() {
            tracing::warn!(tool, cut = %crate::redact::describe(&cuts), "redacted a result");
            note.push_str(&format!(" · redacted {}", crate::redact::describe(&cuts)));
        }
        if spec.is_some_and(|t| t.untrusted_output) {
            note.push_str(" · untrusted content");
        }
        (Ok(out), note)
    }

    /// Whether a pinned tool's result has the shape of the output schema it
    /// was admitted with (an MCP tool that declares one must return
    /// structured content matching it).
    fn matches_output_schema(
        &self,
        tool: &str,
        spec: Option<&zt_policies::ToolSpec>,
        out: &Output,
    ) -> Result<(), String> {
        let Some(fingerprint) = spec.and_then(|t| t.fingerprint.as_ref()) else {
            return Ok(());
        };
        let Some(validator) = self.quarantine.output_schema(tool, fingerprint)? else {
            return Ok(());
        };
        let Output::Tool(r) = out else {
            return Ok(());
        };
        if r.is_error == Some(true) {
            return Ok(());
        }
        match &r.structured_content {
            Some(v) if validator.is_valid(v) => Ok(()),
            Some(_) => Err(format!(
                "`{tool}`: the result does not match the output schema it was admitted with"
            )),
            None => Err(format!(
                "`{tool}`: no structured result, though it was admitted with an output schema"
            )),
        }
    }

    /// Executes an authorized call on the backend the registry names.
    async fn execute(
        &self,
        tool: &str,
        args: &Value,
        actor: &backend::Actor<'_>,
    ) -> Result<Output, BackendError> {
        let bundle = self.policy.current();
        match bundle.tool(tool) {
            Some(spec) => self.backend.execute(spec, args, actor).await,
            None => Err(BackendError::Unavailable(format!(
                "`{tool}` left the registry before it ran"
            ))),
        }
    }

    /// Publishes the outcome to the live view and shapes the model's result.
    fn finish(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: &Value,
        decision: &Decision,
        label: &str,
        outcome: Result<Output, backend::BackendError>,
    ) -> CallToolResult {
        match outcome {
            Ok(Output::Tool(mut result)) => {
                let (label, summary) = if result.is_error == Some(true) {
                    ("error", "the upstream reported an error".to_owned())
                } else {
                    (
                        label,
                        summarize(
                            &self.policy,
                            tool,
                            result.structured_content.as_ref().unwrap_or(&Value::Null),
                            args,
                        ),
                    )
                };
                self.publish(claims, tool, args, label, summary, "");
                if let (Effect::Constrain, Some(Value::Object(m))) =
                    (decision.effect, &mut result.structured_content)
                {
                    m.insert(
                        "constrained".into(),
                        json!({ "applied_arguments": args, "reason": decision.model_message }),
                    );
                }
                result
            }
            Ok(Output::Json(mut value)) => {
                self.publish(
                    claims,
                    tool,
                    args,
                    label,
                    summarize(&self.policy, tool, &value, args),
                    "",
                );
                if let (Effect::Constrain, Value::Object(m)) = (decision.effect, &mut value) {
                    m.insert(
                        "constrained".into(),
                        json!({ "applied_arguments": args, "reason": decision.model_message }),
                    );
                }
                ok_result(value)
            }
            Err(e) => {
                if let backend::BackendError::Unavailable(why) = &e {
                    tracing::error!(tool, why, "backend unavailable");
                }
                self.publish(claims, tool, args, "error", e.to_string(), "");
                error_result(&e.to_string(), "error", json!({}))
            }
        }
    }
}

pub use zt_proto::printable;

/// How a call comes to run.
pub(crate) enum Run<'a> {
    /// The policy let it run; what it consumed of its budgets.
    Decided(crate::ledger::Reservation),
    /// An operator approved it with this grant.
    Approved(&'a Grant, &'a ApprovalRequest),
}

/// The caller as budgets count it.
pub(crate) fn who(claims: &SessionClaims) -> crate::ledger::Who<'_> {
    crate::ledger::Who {
        human: &claims.sub,
        agent: claims.agent(),
        session: &claims.sid,
    }
}

/// The audit status of an executed call.
fn status_of(outcome: &Result<Output, BackendError>) -> &'static str {
    match outcome {
        Ok(o) if !o.failed() => "ok",
        _ => "error",
    }
}

pub(crate) fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Allow => "allow",
        Effect::Constrain => "constrain",
        Effect::Deny => "deny",
        Effect::Escalate => "escalate",
    }
}

/// A one-line summary of a result for the audit trail and live view, from
/// the registry's `summary` template of the tool.
pub(crate) fn summarize(policy: &PolicyStore, tool: &str, result: &Value, args: &Value) -> String {
    policy
        .current()
        .tool(tool)
        .map_or_else(|| "done".to_owned(), |spec| spec.summarize(result, args))
}

/// Shared handle.
pub type SharedBroker = Arc<Broker>;
