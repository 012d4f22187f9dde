//! The approval service's rules, end to end over gRPC and the console CLI,
//! with refunds escalated through the real broker: refusals (self-approval,
//! an approver over their limit, a watcher, missing reasons, a double vote,
//! a vote on a decided request), the quorum of two distinct approvers above
//! $500.00 whose grant names both and runs once, a deny that vetoes, admin
//! cancellation, revocation cancelling a session's requests, and expiry of a
//! half-approved request — each checked in the approval audit chain.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::task::JoinHandle;
use zt_proto::keys::{KeyPair, PublicKey};
use zt_proto::pb::{
    ApprovalRequest, CancelRequest, DecideRequest, EscalateRequest, GetRequestRequest,
    ListPendingRequest, WatchEventsRequest,
};
use zt_proto::stack::Layout;
use zt_proto::token::{self, Expect, KeySet, ServiceClaims, SessionClaims, TokenType};
use zt_tests::{
    Grpc, Stack, audit_bodies, bin, call, connect, run, run_ok, status, temp_dir, text,
};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The session id of a session token.
fn session_id(stack: &Stack, jwt: &str) -> String {
    let layout = Layout::new(&stack.data_dir);
    let info = layout.stack().expect("stack.json");
    let key = PublicKey::read(&layout.public_key("approval-token")).expect("token key");
    let claims: SessionClaims = token::verify(
        jwt,
        &KeySet::new(vec![key]),
        TokenType::Session,
        &Expect {
            issuer: &info.issuer,
            audience: &info.broker_audience,
        },
    )
    .expect("a valid session token");
    claims.sid
}

/// A refund escalated through the broker: the agent's call, still waiting
/// for a decision, and the pending request it became.
struct Escalated {
    req: ApprovalRequest,
    call: JoinHandle<anyhow::Result<CallToolResult>>,
}

impl Escalated {
    fn id(&self) -> String {
        self.req.id.clone()
    }

    /// The agent's answer once the request left `pending`.
    async fn answer(self) -> CallToolResult {
        tokio::time::timeout(Duration::from_secs(60), self.call)
            .await
            .expect("the escalated call returns")
            .expect("the call task")
            .expect("the call")
    }
}

/// `agent`, acting for alice in a session of its own, asks for a refund
/// above her $50.00 limit; returns once the request is pending.
async fn escalate(stack: &Stack, ops: &Grpc, agent: &str, args: Value) -> Escalated {
    let token = stack.session_token(agent, "alice");
    let sid = session_id(stack, &token);
    let url = stack.broker_url.clone();
    let call = tokio::spawn(async move {
        let session = connect(&url, &token).await?;
        call(&session, "issue_refund", args).await
    });
    for _ in 0..300 {
        let pending = ops
            .client()
            .list_pending(ops.req(ListPendingRequest {}))
            .await
            .expect("list pending")
            .into_inner()
            .requests;
        if let Some(req) = pending.into_iter().find(|r| r.session_id == sid) {
            return Escalated { req, call };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the refund of {agent} was not escalated");
}

async fn decide(
    ops: &Grpc,
    id: &str,
    approve: bool,
    reason: &str,
) -> Result<ApprovalRequest, tonic::Status> {
    ops.client()
        .decide(ops.req(DecideRequest {
            id: id.into(),
            approve,
            reason: reason.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn cancel(ops: &Grpc, id: &str, reason: &str) -> Result<ApprovalRequest, tonic::Status> {
    ops.client()
        .cancel(ops.req(CancelRequest {
            id: id.into(),
            reason: reason.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn get(ops: &Grpc, id: &str) -> ApprovalRequest {
    ops.client()
        .get_request(ops.req(GetRequestRequest { id: id.into() }))
        .await
        .expect("get request")
        .into_inner()
}

/// Asserts a refusal with `code` whose message contains `needle`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, needle: &str) {
    match r {
        Ok(v) => panic!("expected a refusal ({needle}), got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(needle),
                "{needle:?} in {}",
                s.message()
            );
        }
    }
}

/// The entries of `chain` about request `id`.
async fn entries(stack: &Stack, chain: &str, id: &str) -> Vec<Value> {
    audit_bodies(&stack.data_dir, chain)
        .await
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|e| e["request_id"] == id)
        .collect()
}

/// The approval-chain entry by `subject` with `decision` and `status` whose
/// detail contains `detail`, if any.
fn find<'a>(
    list: &'a [Value],
    subject: &str,
    decision: &str,
    status: &str,
    detail: &str,
) -> Option<&'a Value> {
    list.iter().find(|e| {
        e["kind"] == "approval"
            && e["subject"] == subject
            && e["decision"] == decision
            && e["status"] == status
            && e["detail"].as_str().is_some_and(|d| d.contains(detail))
    })
}

fn audited(list: &[Value], subject: &str, decision: &str, status: &str, detail: &str) {
    assert!(
        find(list, subject, decision, status, detail).is_some(),
        "no approval entry by {subject}: {decision} {status} `{detail}` in\n{list:#?}"
    );
}

/// Refunds of `order` in the backend: (count, total cents).
async fn refunds(stack: &Stack, order: &str) -> (i64, i64) {
    let mut conn = zt_tests::backend(&stack.data_dir).await;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM refunds WHERE order_id = ?",
    )
    .bind(order)
    .fetch_one(&mut conn)
    .await
    .expect("refunds");
    let _ = conn.close().await;
    row
}

fn verify_audit(stack: &Stack) {
    let out = run(
        "zt-console",
        &["audit", "verify", "--data-dir", &stack.dir()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reasons_and_refusals_are_enforced_and_audited() {
    let stack = Stack::up("approval-rules").expect("stack starts");
    let carol_token = stack.operator_token("carol", "approver", 500_000);
    let carol = Grpc::connect(&stack.approval_url, &carol_token).await;
    let erin = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("erin", "approver", 100_000),
    )
    .await;
    let bob = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("bob", "approver", 20_000),
    )
    .await;
    let alice = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("alice", "approver", 500_000),
    )
    .await;
    let wendy_token = stack.operator_token("wendy", "watcher", 0);
    let wendy = Grpc::connect(&stack.approval_url, &wendy_token).await;
    let mut events = wendy
        .client()
        .watch_events(wendy.req(WatchEventsRequest { from_seq: 0 }))
        .await
        .expect("watching")
        .into_inner();

    // $800.00 from ord_1003 (acct_1002, eu) for alice: above her limit and
    // above the $500.00 quorum threshold.
    let big = escalate(
        &stack,
        &wendy,
        "agent:quorum",
        json!({"order_id": "ord_1003", "amount": 80000}),
    )
    .await;
    let id = big.id();
    assert_eq!(big.req.approvals_required, 2, "{:?}", big.req);
    assert!(big.req.approve_reason_required);
    assert!(big.req.approvers.is_empty());

    // Refusals, each audited with the operator and why.
    refused(
        decide(&alice, &id, true, "mine").await,
        tonic::Code::PermissionDenied,
        "own behalf",
    );
    refused(
        decide(&bob, &id, true, "fine by me").await,
        tonic::Code::PermissionDenied,
        "amount $800.00 exceeds your approval limit $200.00",
    );
    refused(
        decide(&wendy, &id, true, "looks fine").await,
        tonic::Code::PermissionDenied,
        "role watcher may not approve or deny",
    );
    refused(
        decide(&carol, &id, true, "  ").await,
        tonic::Code::InvalidArgument,
        "a reason is required to approve an amount above $500.00",
    );
    refused(
        decide(&carol, &id, false, "").await,
        tonic::Code::InvalidArgument,
        "a reason is required to deny",
    );
    let log = entries(&stack, "approval", &id).await;
    audited(&log, "alice", "approve", "refused", "own behalf");
    audited(
        &log,
        "bob",
        "approve",
        "refused",
        "exceeds your approval limit",
    );
    audited(&log, "wendy", "approve", "refused", "role watcher");
    audited(
        &log,
        "carol",
        "approve",
        "refused",
        "a reason is required to approve",
    );
    audited(
        &log,
        "carol",
        "deny",
        "refused",
        "a reason is required to deny",
    );
    assert!(
        get(&carol, &id).await.votes.is_empty(),
        "refusals cast no vote"
    );

    // The first approval (from the CLI) counts and leaves it pending.
    let out = stack.console(
        &carol_token,
        &["approve", &id, "--reason", "customer is owed it"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{id} pending, approvals 1 of 2 (carol)")),
        "{}",
        stdout(&out)
    );
    // Another spelling is the same person: `Carol ` does not add a second
    // approval, and `ALICE` still may not decide on alice's behalf.
    let carol_again = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("Carol ", "approver", 500_000),
    )
    .await;
    let _ = decide(&carol_again, &id, true, "me again").await;
    let now = get(&carol, &id).await;
    assert_eq!(now.approvers, vec!["carol".to_owned()], "{now:?}");
    assert_eq!(now.status, "pending", "{now:?}");
    let alice_upper = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("ALICE", "approver", 500_000),
    )
    .await;
    refused(
        decide(&alice_upper, &id, true, "mine").await,
        tonic::Code::PermissionDenied,
        "own behalf",
    );
    let log = entries(&stack, "approval", &id).await;
    let vote = find(
        &log,
        "carol",
        "approve",
        "pending",
        "1 of 2 approvals (carol)",
    )
    .unwrap_or_else(|| panic!("the vote is audited: {log:#?}"));
    assert!(
        vote["detail"]
            .as_str()
            .unwrap_or("")
            .contains("customer is owed it")
    );
    assert_eq!(vote["grant_id"], "", "no grant yet: {vote}");

    // Operators see "1 of 2" in the queue, as text and JSON.
    let out = stack.console(&wendy_token, &["pending"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("APPROVALS"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 of 2 (carol)"), "{}", stdout(&out));
    let out = stack.console(&wendy_token, &["pending", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("pending JSON");
    let item = list
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed");
    assert_eq!(item["status"], "pending");
    assert_eq!(item["approvals_required"], 2);
    assert_eq!(item["approvers"], json!(["carol"]));
    assert_eq!(item["approvals"], "1 of 2 (carol)");
    assert_eq!(item["approve_reason_required"], true);

    // ...and watching consoles got the vote as an event.
    let voted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(e)) = events.message().await {
            if e.kind == "request_voted" && e.request_id == id {
                return Some(e);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("a request_voted event");
    assert_eq!(voted.decision, "voted");
    assert!(
        voted.summary.contains("1 of 2 approvals (carol)"),
        "{}",
        voted.summary
    );

    // The same approver again does not count twice.
    refused(
        decide(&carol, &id, true, "really").await,
        tonic::Code::AlreadyExists,
        "you already voted",
    );
    let now = get(&carol, &id).await;
    assert_eq!(now.status, "pending");
    assert_eq!(now.approvers, ["carol"]);
    assert_eq!(now.votes.len(), 1);
    audited(
        &entries(&stack, "approval", &id).await,
        "carol",
        "approve",
        "refused",
        "you already voted",
    );
    assert_eq!(refunds(&stack, "ord_1003").await, (0, 0), "nothing ran yet");

    // A second, distinct approver approves it; the grant names both.
    let done = decide(&erin, &id, true, "checked the shipment")
        .await
        .expect("second approval");
    assert_eq!(done.status, "approved");
    assert_eq!(done.approvers, ["carol", "erin"]);
    assert!(done.grant.is_empty(), "operators never see grants");
    let log = entries(&stack, "approval", &id).await;
    let approved = find(
        &log,
        "erin",
        "approve",
        "approved",
        "2 of 2 approvals (carol, erin)",
    )
    .unwrap_or_else(|| panic!("the approval is audited: {log:#?}"));
    let grant_id = approved["grant_id"].as_str().unwrap_or("").to_owned();
    assert!(grant_id.starts_with("grant_"), "{approved}");

    // Decided is final: a deny after the approval, and another vote, are refused.
    refused(
        decide(&carol, &id, false, "changed my mind").await,
        tonic::Code::FailedPrecondition,
        "request is already",
    );
    refused(
        decide(&bob, &id, true, "me too").await,
        tonic::Code::FailedPrecondition,
        "request is already",
    );

    // The broker redeems the grant and the refund runs exactly once.
    let r = big.answer().await;
    assert_eq!(status(&r), "ok", "{}", text(&r));
    assert_eq!(
        r.structured_content.as_ref().and_then(|v| v.get("amount")),
        Some(&json!(80000))
    );
    assert_eq!(refunds(&stack, "ord_1003").await, (1, 80000));
    let broker = entries(&stack, "broker", &id).await;
    let redeemed: Vec<&Value> = broker
        .iter()
        .filter(|e| e["kind"] == "grant_use" && e["status"] == "accepted")
        .collect();
    assert_eq!(redeemed.len(), 1, "{broker:#?}");
    assert_eq!(redeemed[0]["grant_id"], grant_id.as_str());
    assert_eq!(redeemed[0]["detail"], "approved by carol, erin");
    let log = entries(&stack, "approval", &id).await;
    audited(&log, "carol", "deny", "refused", "request is already");
    audited(&log, "bob", "approve", "refused", "request is already");
    assert!(
        log.iter()
            .any(|e| e["kind"] == "result" && e["status"] == "executed"),
        "{log:#?}"
    );

    // At or below the threshold one approval decides, without a reason.
    let small = escalate(
        &stack,
        &wendy,
        "agent:single",
        json!({"order_id": "ord_1002", "amount": 15000}),
    )
    .await;
    let small_id = small.id();
    assert_eq!(small.req.approvals_required, 1);
    assert!(!small.req.approve_reason_required);
    let done = decide(&bob, &small_id, true, "")
        .await
        .expect("one approval");
    assert_eq!(done.status, "approved");
    assert_eq!(done.approvers, ["bob"]);
    let r = small.answer().await;
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let broker = entries(&stack, "broker", &small_id).await;
    assert!(
        broker
            .iter()
            .any(|e| e["kind"] == "grant_use" && e["detail"] == "approved by bob"),
        "{broker:#?}"
    );
    audited(
        &entries(&stack, "approval", &small_id).await,
        "bob",
        "approve",
        "approved",
        "",
    );

    verify_audit(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_cancellation_and_revocation_end_pending_requests() {
    let stack = Stack::up("approval-cancel").expect("stack starts");
    let root_token = stack.operator_token("root", "admin", 0);
    let root = Grpc::connect(&stack.approval_url, &root_token).await;
    let carol = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("carol", "approver", 500_000),
    )
    .await;
    let watcher = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("wendy", "watcher", 0),
    )
    .await;

    // A deny by anyone who may decide vetoes a half-approved request.
    let vetoed = escalate(
        &stack,
        &watcher,
        "agent:veto",
        json!({"order_id": "ord_1003", "amount": 90000}),
    )
    .await;
    let veto_id = vetoed.id();
    let half = decide(&carol, &veto_id, true, "ok with me")
        .await
        .expect("first approval");
    assert_eq!((half.status.as_str(), half.approvers.len()), ("pending", 1));
    let done = decide(&root, &veto_id, false, "duplicate of a refund already paid")
        .await
        .expect("a deny");
    assert_eq!(done.status, "denied");
    let r = vetoed.answer().await;
    assert_eq!(status(&r), "denied", "{}", text(&r));
    assert!(
        text(&r).contains("duplicate of a refund already paid"),
        "{}",
        text(&r)
    );
    let log = entries(&stack, "approval", &veto_id).await;
    audited(
        &log,
        "root",
        "deny",
        "denied",
        "duplicate of a refund already paid",
    );
    assert!(log.iter().all(|e| e["grant_id"] == ""), "{log:#?}");

    // Cancel: admins only, with a reason; refusals audited.
    let doomed = escalate(
        &stack,
        &watcher,
        "agent:cancel",
        json!({"order_id": "ord_1003", "amount": 60000}),
    )
    .await;
    let id = doomed.id();
    decide(&carol, &id, true, "fine")
        .await
        .expect("first approval");
    refused(
        cancel(&carol, &id, "not needed").await,
        tonic::Code::PermissionDenied,
        "role approver may not cancel requests",
    );
    refused(
        cancel(&root, &id, " ").await,
        tonic::Code::InvalidArgument,
        "a reason is required to cancel",
    );
    let out = stack.console(
        &root_token,
        &["cancel", &id, "--reason", "customer withdrew"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("{id} cancelled"));
    let r = doomed.answer().await;
    assert_eq!(status(&r), "cancelled", "{}", text(&r));
    assert!(text(&r).contains("not run"), "{}", text(&r));
    let now = get(&carol, &id).await;
    assert_eq!(now.status, "cancelled");
    assert_eq!(now.outcome, "cancelled by root: customer withdrew");
    // Cancelled is final: no vote, no second cancel.
    refused(
        decide(&root, &id, true, "after all").await,
        tonic::Code::FailedPrecondition,
        "request is already cancelled",
    );
    refused(
        cancel(&root, &id, "again").await,
        tonic::Code::FailedPrecondition,
        "request is already cancelled",
    );
    let log = entries(&stack, "approval", &id).await;
    audited(
        &log,
        "carol",
        "cancel",
        "refused",
        "role approver may not cancel",
    );
    audited(
        &log,
        "root",
        "cancel",
        "refused",
        "a reason is required to cancel",
    );
    audited(&log, "root", "cancel", "cancelled", "customer withdrew");
    audited(
        &log,
        "root",
        "approve",
        "refused",
        "request is already cancelled",
    );
    assert!(log.iter().all(|e| e["grant_id"] == ""), "{log:#?}");

    // Revoking a session cancels its pending requests, and only its own.
    let first = escalate(
        &stack,
        &watcher,
        "agent:revoked",
        json!({"order_id": "ord_1003", "amount": 70000}),
    )
    .await;
    let other = escalate(
        &stack,
        &watcher,
        "agent:bystander",
        json!({"order_id": "ord_1002", "amount": 12000}),
    )
    .await;
    let (first_id, other_id) = (first.id(), other.id());
    decide(&carol, &first_id, true, "fine")
        .await
        .expect("first approval");
    let out = stack.revoke_session(&first.req.session_id, "token leaked");
    assert!(out.contains("revoked"), "{out}");
    let r = first.answer().await;
    assert_ne!(status(&r), "ok", "{}", text(&r));
    let now = get(&carol, &first_id).await;
    assert_eq!(now.status, "cancelled");
    assert!(now.outcome.contains("session revoked"), "{}", now.outcome);
    let log = entries(&stack, "approval", &first_id).await;
    audited(
        &log,
        "operator:zt-approval-cli",
        "cancel",
        "cancelled",
        "session revoked by operator:zt-approval-cli: token leaked",
    );
    assert!(log.iter().all(|e| e["grant_id"] == ""), "{log:#?}");
    refused(
        decide(&root, &first_id, true, "too late").await,
        tonic::Code::FailedPrecondition,
        "request is already cancelled",
    );
    assert_eq!(get(&carol, &other_id).await.status, "pending");
    cancel(&root, &other_id, "end of test")
        .await
        .expect("cancel the bystander's request");
    let r = other.answer().await;
    assert_eq!(status(&r), "cancelled", "{}", text(&r));

    assert_eq!(refunds(&stack, "ord_1003").await, (0, 0), "nothing ran");
    assert_eq!(refunds(&stack, "ord_1002").await, (0, 0), "nothing ran");
    verify_audit(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_approved_request_still_expires_without_a_grant() {
    // A short lifetime from the stack's rules file.
    let dir = temp_dir("approval-expiry");
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    let rules = dir.join("policies").join("approvals.toml");
    let shipped = std::fs::read_to_string(&rules).expect("init installs the approval rules");
    std::fs::write(
        &rules,
        shipped.replacen("request_ttl_secs = 900", "request_ttl_secs = 6", 1),
    )
    .expect("write rules");
    let stack = Stack::up_at(&dir).expect("stack starts");
    let carol = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("carol", "approver", 500_000),
    )
    .await;
    let erin = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("erin", "approver", 500_000),
    )
    .await;

    let req = escalate(
        &stack,
        &carol,
        "agent:slow",
        json!({"order_id": "ord_1003", "amount": 75000}),
    )
    .await;
    let id = req.id();
    assert_eq!(req.req.expires_at_ms - req.req.created_at_ms, 6_000);
    let half = decide(&carol, &id, true, "fine by me")
        .await
        .expect("first approval");
    assert_eq!(half.status, "pending");

    // The broker was waiting: it learns the request expired, and runs nothing.
    let started = Instant::now();
    let r = req.answer().await;
    assert_eq!(status(&r), "expired", "{}", text(&r));
    assert!(started.elapsed() < Duration::from_secs(30));
    let now = get(&carol, &id).await;
    assert_eq!(now.status, "expired");
    assert_eq!(now.approvers, ["carol"]);
    refused(
        decide(&erin, &id, true, "sorry, late").await,
        tonic::Code::FailedPrecondition,
        "request is already expired",
    );
    let log = entries(&stack, "approval", &id).await;
    audited(
        &log,
        "carol",
        "approve",
        "pending",
        "1 of 2 approvals (carol)",
    );
    audited(
        &log,
        "alice",
        "expired",
        "expired",
        "nobody decided in time (1 of 2 approvals (carol))",
    );
    audited(
        &log,
        "erin",
        "approve",
        "refused",
        "request is already expired",
    );
    assert!(
        log.iter().all(|e| e["grant_id"] == ""),
        "no grant: {log:#?}"
    );
    assert!(
        entries(&stack, "broker", &id)
            .await
            .iter()
            .all(|e| e["kind"] != "grant_use"),
        "no grant reached the broker"
    );
    assert_eq!(refunds(&stack, "ord_1003").await, (0, 0));
    verify_audit(&stack);
}

/// `zt-approval serve --request-ttl` overrides the rules file: a request
/// escalated (here straight over gRPC, as the broker would) gets the flag's
/// lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_escalation_gets_the_flags_ttl_and_cannot_understate_its_amount() {
    let dir = temp_dir("approval-ttl-flag");
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    run_ok("zt-broker", &["init", "--data-dir", &d]);
    let mut child = bin("zt-approval")
        .args([
            "serve",
            "--data-dir",
            &d,
            "--listen",
            "127.0.0.1:0",
            "--request-ttl",
            "2s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting zt-approval");
    let out = child.stdout.take().expect("stdout");
    let url = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("approval_url=").map(str::to_owned))
        .expect("approval_url");

    let layout = Layout::new(&dir);
    let info = layout.stack().expect("stack.json");
    let key = KeyPair::read(&layout.private("broker").join("service.key")).expect("service key");
    let now = token::now_secs();
    let jwt = token::sign(
        &key,
        TokenType::Service,
        &ServiceClaims {
            iss: info.broker_audience.clone(),
            aud: info.approval_audience.clone(),
            sub: "zt-broker".into(),
            jti: zt_proto::random_id("svc_"),
            iat: now,
            nbf: now,
            exp: now + 60,
        },
    )
    .expect("service token");
    let broker = Grpc::connect(&url, &jwt).await;
    let args = json!({"order_id": "ord_1003", "amount": 80000});
    let escalated = broker
        .client()
        .escalate(broker.req(EscalateRequest {
            tool: "issue_refund".into(),
            args_json: args.to_string(),
            args_hash: zt_proto::canonical::args_hash("issue_refund", &args).expect("hash"),
            session_id: "sess_flag".into(),
            human: "alice".into(),
            actors: vec!["agent:flag".into()],
            amount_cents: 80000,
            ..EscalateRequest::default()
        }))
        .await
        .map(tonic::Response::into_inner);
    // A caller holding the broker's key cannot understate the amount to
    // slip under an approver's limit or the quorum: the service derives it
    // from the arguments the grant binds, through the registry.
    let mut understated = Vec::new();
    for (tool, args, amount_cents) in [
        (
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 80001}),
            100,
        ),
        (
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 80002}),
            0,
        ),
        (
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "premium"}),
            5,
        ),
    ] {
        let refused = broker
            .client()
            .escalate(broker.req(EscalateRequest {
                tool: tool.into(),
                args_json: args.to_string(),
                args_hash: zt_proto::canonical::args_hash(tool, &args).expect("hash"),
                session_id: "sess_flag".into(),
                human: "alice".into(),
                actors: vec!["agent:flag".into()],
                amount_cents,
                ..EscalateRequest::default()
            }))
            .await;
        understated.push(
            refused
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_owned())),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let req = escalated.expect("escalated");
    assert_eq!(req.expires_at_ms - req.created_at_ms, 2_000, "{req:?}");
    for (i, outcome) in understated.into_iter().enumerate() {
        let (code, message) = outcome.expect_err("an amount other than the call's was accepted");
        assert_eq!(code, tonic::Code::InvalidArgument, "#{i}: {message}");
        let expected = if i < 2 {
            "`amount` argument"
        } else {
            "moves no money"
        };
        assert!(message.contains(expected), "#{i}: {message}");
    }
    assert_eq!(req.approvals_required, 2);
}

#[test]
fn a_broken_approval_rules_file_stops_the_approval_service() {
    let dir = temp_dir("approval-rules-broken");
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    let rules = dir.join("policies").join("approvals.toml");
    let shipped = std::fs::read_to_string(&rules).expect("init installs the approval rules");
    std::fs::write(&rules, shipped.replacen("quorum = 2", "quorum = 0", 1)).expect("write");

    let (code, err) = zt_tests::approval_refuses_to_start(&d);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&rules.display().to_string()), "{err}");
    assert!(err.contains("`quorum`: must be between 1 and 5"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
