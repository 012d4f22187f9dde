//! The approval path of the call: escalate to the approval service, wait for
//! a human (telling the client with MCP progress notifications), redeem the
//! one-time grant exactly once, and answer `approval_status` for requests
//! that outlived the wait.
//!
//! A grant is claimed in the broker's state database before it runs (a
//! unique nonce: one claimant across replicas sharing the database) and
//! marked done with its result after. A claim left behind by a broker that
//! crashed mid-execution is taken over after [`TAKEOVER_AFTER`], so an
//! approval is never lost while its grant is valid; the billing ledger
//! refuses a second use of the same grant, so a takeover cannot run a
//! side effect twice.

use std::time::Duration;

use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use zt_policies::{Decision, DecisionRequest, Effect};
use zt_proto::audit::Kind;
use zt_proto::canonical;
use zt_proto::grant::Call;
use zt_proto::pb::{ApprovalRequest, EscalateRequest};
use zt_proto::token::SessionClaims;
use zt_proto::with_db;

use crate::approval_client::ApprovalError;
use crate::gate::{Broker, Refusal, error_result, ok_result};

pub use zt_proto::builtin::{APPROVAL_STATUS, approval_status_schema};

/// How long a claimed grant may stay unfinished before another broker may
/// take it over (longer than any backend call may take).
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(30);

/// How often the client hears that a call is still waiting for a human.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub use crate::backend::Progress;

/// What a finished redemption left for replays.
fn stored_result(result: &CallToolResult) -> String {
    json!({
        "is_error": result.is_error.unwrap_or(false),
        "structured": result.structured_content,
        "text": crate::gate::result_text(result),
    })
    .to_string()
}

fn replayed(stored: &str) -> CallToolResult {
    let v: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    let mut body = v.get("structured").cloned().unwrap_or(Value::Null);
    if v.get("is_error").and_then(Value::as_bool) == Some(true) {
        let text = v
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("the approved action failed");
        return error_result(text, "error", json!({ "replayed": true }));
    }
    if let Value::Object(m) = &mut body {
        m.insert("replayed".into(), json!(true));
    }
    ok_result(body)
}

enum Claim {
    /// This broker runs the grant.
    Mine { takeover: bool },
    /// It already ran; here is what it returned (to the same session only).
    Done(Option<String>),
    /// Another broker is running it right now.
    Busy,
}

impl Broker {
    /// Escalates the call, waits for a human, and redeems the grant if one
    /// comes in time.
    pub(crate) async fn escalate(
        &self,
        claims: &SessionClaims,
        tool: &str,
        decision: &Decision,
        request: &DecisionRequest,
        progress: Option<Progress>,
    ) -> CallToolResult {
        let args = &decision.args;
        let (Ok(args_json), Ok(args_hash)) = (
            canonical::to_canonical_string(args),
            canonical::args_hash(tool, args),
        ) else {
            let r = Refusal::new(
                "deny",
                "schema",
                "arguments cannot be encoded",
                "non-canonical arguments",
            );
            return self.refuse(claims, tool, args, r).await;
        };
        let bundle = self.policy.current();
        let Some(spec) = bundle.tool(tool) else {
            let r = Refusal::new("deny", "registry", "unknown tool", "tool left the registry");
            return self.refuse(claims, tool, args, r).await;
        };
        let risk = spec.risk.to_string();
        // The money the call moves, from the argument the registry names
        // (none for a tool that moves none); never a silent zero.
        let amount_cents = match spec.amount(args) {
            Ok(cents) => cents.unwrap_or(0),
            Err(why) => {
                let r = Refusal::new("deny", "schema", why.clone(), why);
                return self.refuse(claims, tool, args, r).await;
            }
        };
        let mut actors = claims.chain();
        actors.pop();
        let esc = EscalateRequest {
            tool: tool.to_owned(),
            args_json,
            args_hash: args_hash.clone(),
            session_id: claims.sid.clone(),
            human: claims.sub.clone(),
            actors,
            rules: decision.rules.clone(),
            reason: decision.reason.clone(),
            risk,
            amount_cents,
            justification: String::new(),
        };
        let req = match self.approvals.escalate(esc).await {
            Ok(r) => r,
            Err(e) => {
                let message = match &e {
                    ApprovalError::Unavailable => {
                        "this action needs a human's approval, but the approval \
                                                   service is unavailable; it was not run"
                            .to_owned()
                    }
                    ApprovalError::Refused(why) => format!(
                        "this action needs a human's approval, but the approval service would not queue it \
                         ({}); it was not run",
                        crate::gate::printable(why)
                    ),
                };
                let r = Refusal {
                    decision: "escalate",
                    rules: decision.rules.clone(),
                    message,
                    detail: format!("escalation failed: {e}"),
                    basis: crate::gate::basis_of(decision, args).map(Box::new),
                };
                return self.refuse(claims, tool, args, r).await;
            }
        };
        let mut rec = self.record(claims, tool, args);
        rec.decision = "escalate".into();
        rec.rules = decision.rules.clone();
        rec.request_id = req.id.clone();
        rec.status = req.status.clone();
        rec.detail = decision.reason.clone();
        rec.basis = crate::gate::basis_of(decision, args);
        if let Err(refused) = self.record_first(Kind::Escalation, rec).await {
            return refused;
        }
        self.publish(
            claims,
            tool,
            args,
            "escalate",
            decision.reason.clone(),
            &req.id,
        );
        let req = self.wait_for_human(req, progress).await;
        self.conclude(claims, tool, &args_hash, decision, request, &req)
            .await
    }

    /// Waits up to the configured time while the request is pending,
    /// telling the client every few seconds.
    async fn wait_for_human(
        &self,
        mut req: ApprovalRequest,
        progress: Option<Progress>,
    ) -> ApprovalRequest {
        let started = tokio::time::Instant::now();
        let deadline = started + self.approval_wait;
        let total = self.approval_wait.as_secs_f64();
        while req.status == "pending" {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(p) = &progress {
                let waited = started.elapsed().as_secs_f64();
                p(
                    format!(
                        "awaiting a human's approval of {} ({:.0} s of up to {:.0} s)",
                        req.id, waited, total
                    ),
                    waited,
                    Some(total),
                )
                .await;
            }
            match self.approvals.wait(&req.id, left.min(PROGRESS_EVERY)).await {
                Ok(r) => req = r,
                Err(ApprovalError::Unavailable) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for a decision failed");
                    break;
                }
            }
        }
        req
    }

    /// Turns a request's state into the model's answer, running it if approved.
    async fn conclude(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args_hash: &str,
        decision: &Decision,
        request: &DecisionRequest,
        req: &ApprovalRequest,
    ) -> CallToolResult {
        match req.status.as_str() {
            "approved" => {
                self.redeem(claims, tool, args_hash, decision, request, req)
                    .await
            }
            "executed" | "failed" => match self.finished(&req.id, &claims.sid).await {
                Some(stored) => replayed(&stored),
                None => error_result(
                    &format!("approval request {} was already carried out", req.id),
                    &req.status,
                    json!({ "request_id": req.id }),
                ),
            },
            "pending" => error_result(
                &format!(
                    "awaiting approval {}: a human must approve this action before it runs; it has NOT been run. \
                     Check later with the approval_status tool (request_id {}), or call the same tool with the \
                     same arguments again.",
                    req.id, req.id
                ),
                "awaiting_approval",
                json!({ "request_id": req.id, "approvals": req.votes.iter().filter(|v| v.decision == "approve").count() }),
            ),
            "denied" => {
                let why = req
                    .votes
                    .iter()
                    .rev()
                    .find(|v| v.decision == "deny")
                    .map(|v| v.reason.clone())
                    .unwrap_or_default();
                error_result(
                    &format!("an operator denied this action ({}): {why}", req.id),
                    "denied",
                    json!({ "request_id": req.id }),
                )
            }
            other => error_result(
                &format!(
                    "approval request {} is {other}; the action was not run",
                    req.id
                ),
                other,
                json!({ "request_id": req.id }),
            ),
        }
    }

    /// The stored result of a request this broker (or a replica) finished
    /// for `session`.
    async fn finished(&self, request_id: &str, session: &str) -> Option<String> {
        let found: Result<Option<Option<String>>, sqlx::Error> = with_db!(&self.state, p => {
            sqlx::query_scalar(
                "SELECT result_json FROM grant_redemptions \
                 WHERE request_id = $1 AND session_id = $2 AND state = 'done' LIMIT 1",
            )
            .bind(request_id)
            .bind(session)
            .fetch_optional(p)
            .await
        });
        found.ok().flatten().flatten()
    }

    /// Claims a grant's nonce for this broker (see the module docs).
    async fn claim(
        &self,
        nonce: &str,
        grant_id: &str,
        request_id: &str,
        session: &str,
    ) -> Result<Claim, sqlx::Error> {
        let now = zt_proto::now_ms();
        let inserted = with_db!(&self.state, p => {
            sqlx::query(
                "INSERT INTO grant_redemptions (nonce, grant_id, request_id, session_id, redeemed_at_ms, state, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'claimed', $5) ON CONFLICT (nonce) DO NOTHING",
            )
            .bind(nonce)
            .bind(grant_id)
            .bind(request_id)
            .bind(session)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected()
        });
        if inserted == 1 {
            return Ok(Claim::Mine { takeover: false });
        }
        let (state, owner, result, updated): (String, String, Option<String>, i64) = with_db!(&self.state, p => {
            sqlx::query_as(
                "SELECT state, session_id, result_json, updated_at_ms FROM grant_redemptions WHERE nonce = $1",
            )
            .bind(nonce)
            .fetch_one(p)
            .await?
        });
        if state == "done" {
            return Ok(Claim::Done(result.filter(|_| owner == session)));
        }
        let stale = now - updated > i64::try_from(TAKEOVER_AFTER.as_millis()).unwrap_or(i64::MAX);
        if stale {
            let taken = with_db!(&self.state, p => {
                sqlx::query(
                    "UPDATE grant_redemptions SET updated_at_ms = $1 \
                     WHERE nonce = $2 AND state = 'claimed' AND updated_at_ms = $3",
                )
                .bind(now)
                .bind(nonce)
                .bind(updated)
                .execute(p)
                .await?
                .rows_affected()
            });
            if taken == 1 {
                return Ok(Claim::Mine { takeover: true });
            }
        }
        Ok(Claim::Busy)
    }

    /// Verifies the grant, re-checks the session and explicit denies,
    /// claims the nonce, runs the call and records its result.
    pub(crate) async fn redeem(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args_hash: &str,
        decision: &Decision,
        request: &DecisionRequest,
        req: &ApprovalRequest,
    ) -> CallToolResult {
        let args = &decision.args;
        // The tool may have drifted at its upstream while humans decided.
        if let Some(spec) = self.policy.current().tool(tool)
            && let Err(r) = self.admitted(spec).await
        {
            return self.refuse(claims, tool, args, r).await;
        }
        let call = Call {
            request_id: &req.id,
            tool,
            args_hash,
            session_id: &claims.sid,
            human: &claims.sub,
        };
        let grant = match self.grant_keys.open_grant(&req.grant).and_then(|g| {
            g.check(&call, zt_proto::now_ms())?;
            Ok(g)
        }) {
            Ok(g) => g,
            Err(e) => {
                return self
                    .refuse_grant(claims, tool, args, req, &e.to_string())
                    .await;
            }
        };
        // The session may have been revoked while the request waited.
        if self.revoked.contains(&claims.sid) {
            return self
                .refuse_grant(claims, tool, args, req, "the session has been revoked")
                .await;
        }
        // Explicit deny rules still apply at execution time (policy may have
        // changed while the request waited).
        let again = self.policy.current().decide(request);
        if again.effect == Effect::Deny {
            return self
                .refuse_grant(
                    claims,
                    tool,
                    args,
                    req,
                    &format!("policy now denies: {}", again.reason),
                )
                .await;
        }
        let takeover = match self
            .claim(&grant.nonce, &grant.id, &req.id, &claims.sid)
            .await
        {
            Ok(Claim::Mine { takeover }) => takeover,
            Ok(Claim::Done(Some(stored))) => {
                let mut rec = self.record(claims, tool, args);
                rec.decision = "redeem".into();
                rec.grant_id = grant.id.clone();
                rec.request_id = req.id.clone();
                rec.status = "replayed".into();
                rec.detail = "grant already redeemed for this session: returned its result".into();
                if let Err(refused) = self.record_first(Kind::GrantUse, rec).await {
                    return refused;
                }
                return replayed(&stored);
            }
            Ok(Claim::Done(None)) => {
                return self
                    .refuse_grant(claims, tool, args, req, "grant was already redeemed")
                    .await;
            }
            Ok(Claim::Busy) => {
                return self
                    .refuse_grant(claims, tool, args, req, "grant is being redeemed right now")
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a grant redemption failed");
                return self
                    .refuse_grant(claims, tool, args, req, "grant could not be recorded")
                    .await;
            }
        };
        // An earlier redemption that did not finish may have had its side
        // effect: it runs again only where the upstream declares it refuses
        // a grant twice (the example's ledger does); otherwise never.
        let resumable = self
            .policy
            .current()
            .tool(tool)
            .is_some_and(|t| self.backend.resumable(t));
        if takeover && !resumable {
            return self
                .refuse_grant(
                    claims,
                    tool,
                    args,
                    req,
                    "an earlier run of this approved call did not finish and its outcome is unknown, so it was not sent again",
                )
                .await;
        }
        let mut rec = self.record(claims, tool, args);
        rec.decision = "redeem".into();
        rec.grant_id = grant.id.clone();
        rec.request_id = req.id.clone();
        rec.status = "accepted".into();
        rec.detail = format!(
            "approved by {}{}",
            grant.approvers.join(", "),
            if takeover {
                " (resumed: an earlier redemption did not finish)"
            } else {
                ""
            }
        );
        if let Err(refused) = self.record_first(Kind::GrantUse, rec).await {
            return refused;
        }
        let result = self
            .run(
                claims,
                tool,
                args,
                decision,
                crate::gate::Run::Approved(&grant, req),
                None,
            )
            .await;
        let stored = stored_result(&result);
        let done = with_db!(&self.state, p => {
            sqlx::query(
                "UPDATE grant_redemptions SET state = 'done', result_json = $1, updated_at_ms = $2 WHERE nonce = $3",
            )
            .bind(&stored)
            .bind(zt_proto::now_ms())
            .bind(&grant.nonce)
            .execute(p)
            .await
            .map(|_| ())
        });
        if let Err(e) = done {
            // The side effect happened and is audited; a later status check
            // may find the claim unfinished and take it over, which the
            // ledger's single use of a grant makes harmless.
            tracing::error!(error = %e, request = %req.id, "recording a finished redemption failed");
        }
        result
    }

    pub(crate) async fn refuse_grant(
        &self,
        claims: &SessionClaims,
        tool: &str,
        args: &Value,
        req: &ApprovalRequest,
        why: &str,
    ) -> CallToolResult {
        let mut rec = self.record(claims, tool, args);
        rec.decision = "redeem".into();
        rec.request_id = req.id.clone();
        rec.status = "refused".into();
        rec.detail = why.to_owned();
        if let Err(e) = self.audit.append(Kind::GrantUse, rec).await {
            tracing::error!(error = %e, "audit write failed");
        }
        self.publish(
            claims,
            tool,
            args,
            "deny",
            format!("grant refused: {why}"),
            &req.id,
        );
        error_result(
            &format!("the approval for this action could not be used ({why}); it was not run"),
            "denied",
            json!({ "request_id": req.id }),
        )
    }

    /// `approval_status(request_id)`: the state of one of this session's
    /// approval requests; an approved one runs now (once), a finished one
    /// returns its result again, a pending one is waited on like a fresh
    /// escalation.
    pub async fn approval_status(
        &self,
        claims: &SessionClaims,
        args: Value,
        progress: Option<Progress>,
    ) -> CallToolResult {
        let bundle = self.policy.current();
        if let Err(r) = self.rate_limit(&bundle, claims, APPROVAL_STATUS) {
            return self.refuse(claims, APPROVAL_STATUS, &args, r).await;
        }
        let id = match zt_proto::builtin::approval_status_request_id(&args) {
            Ok(id) => id,
            Err(why) => {
                let msg = format!("invalid arguments for `{APPROVAL_STATUS}`: {why}");
                let r = Refusal::new("deny", "schema", msg.clone(), msg);
                let shown = if serde_json::to_vec(&args).map_or(usize::MAX, |v| v.len())
                    > self.max_args_bytes
                {
                    json!({"_oversize": true})
                } else {
                    args
                };
                return self.refuse(claims, APPROVAL_STATUS, &shown, r).await;
            }
        };
        let unknown = |detail: String| {
            Refusal::new(
                "deny",
                "approval-status",
                format!("no approval request {id} belongs to this session"),
                detail,
            )
        };
        let req = match self.approvals.wait(&id, Duration::ZERO).await {
            Ok(r) => r,
            Err(ApprovalError::Unavailable) => {
                let r = Refusal::new(
                    "deny",
                    "approval-status",
                    "the approval service is unavailable; try again later",
                    "approval service unavailable",
                );
                return self.refuse(claims, APPROVAL_STATUS, &args, r).await;
            }
            Err(e) => {
                return self
                    .refuse(claims, APPROVAL_STATUS, &args, unknown(e.to_string()))
                    .await;
            }
        };
        // Only the session that asked may follow up (and learn it exists).
        if req.session_id != claims.sid || req.human != claims.sub {
            let r = unknown(format!("request belongs to session {}", req.session_id));
            return self.refuse(claims, APPROVAL_STATUS, &args, r).await;
        }
        let mut rec = self.record(claims, APPROVAL_STATUS, &args);
        rec.decision = "allow".into();
        rec.request_id = req.id.clone();
        rec.status = req.status.clone();
        rec.detail = format!("status of {} ({})", req.id, req.tool);
        if let Err(refused) = self.record_first(Kind::Decision, rec).await {
            return refused;
        }
        // Rebuild the exact call the humans saw, and check it still hashes
        // to what they approved.
        let call_args: Value = match serde_json::from_str(&req.args_json) {
            Ok(v) => v,
            Err(_) => {
                let r = unknown("stored arguments do not parse".into());
                return self.refuse(claims, APPROVAL_STATUS, &args, r).await;
            }
        };
        let args_hash = canonical::args_hash(&req.tool, &call_args).unwrap_or_default();
        if args_hash != req.args_hash || bundle.tool(&req.tool).is_none() {
            let r = unknown("stored call does not match its hash or tool".into());
            return self.refuse(claims, APPROVAL_STATUS, &args, r).await;
        }
        let req = if req.status == "pending" {
            self.wait_for_human(req, progress).await
        } else {
            req
        };
        if req.status != "approved" {
            // Not run: the decision only carries the arguments.
            let decision = Decision {
                effect: Effect::Escalate,
                args: call_args.clone(),
                rules: Vec::new(),
                reason: String::new(),
                model_message: String::new(),
                basis: Default::default(),
            };
            let request = DecisionRequest {
                tool: req.tool.clone(),
                args: call_args,
                agent: claims.agent().to_owned(),
                human: claims.sub.clone(),
                resource: None,
                context: Default::default(),
            };
            return self
                .conclude(claims, &req.tool, &args_hash, &decision, &request, &req)
                .await;
        }
        let fetched = match self.fetch(claims, &req.tool, &call_args).await {
            Ok(f) => f,
            Err(r) => return self.refuse(claims, &req.tool, &call_args, r).await,
        };
        let request = DecisionRequest {
            tool: req.tool.clone(),
            args: call_args.clone(),
            agent: claims.agent().to_owned(),
            human: claims.sub.clone(),
            resource: fetched.resource,
            // Only an explicit forbid stops an approved call (see
            // `redeem`); the operator decided on the budgets and taint.
            context: bundle.assumed_context(&req.tool),
        };
        let mut decision = bundle.decide(&request);
        // The grant binds the arguments the humans approved; run exactly those.
        decision.args = call_args;
        self.conclude(claims, &req.tool, &args_hash, &decision, &request, &req)
            .await
    }
}
