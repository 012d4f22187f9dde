//! How an agent experiences an approval: progress notifications while the
//! broker waits; "awaiting approval" after the wait; `approval_status` to
//! follow up, which runs an approved call exactly once and returns its
//! result again on repeat; an approval that survives a broker restart; a
//! grant raced by two broker replicas runs once; and escalation fails
//! closed when the approval service is unreachable.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use zt_proto::pb::DecideRequest;
use zt_tests::{
    Agent, Grpc, Stack, audit_bodies, call, connect, prepare_dir, raw_post, spawn_replica, status,
    text,
};

fn body(r: &rmcp::model::CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

async fn refunds(dir: &Path, order: &str) -> Vec<(String, Option<String>)> {
    let mut conn = zt_tests::backend(dir).await;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, grant_id FROM refunds WHERE order_id = ? ORDER BY created_at_ms",
    )
    .bind(order)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    rows
}

async fn status_of(agent: &Agent, id: &str) -> rmcp::model::CallToolResult {
    call(agent, "approval_status", json!({ "request_id": id }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_status_runs_an_approved_call_once_even_across_a_restart() {
    let dir = prepare_dir("approval-status", 1, false);
    let stack = Stack::up_at(&dir).expect("stack starts");
    let token = stack.session_token("agent:a", "alice");
    let alice = connect(&stack.broker_url, &token).await.unwrap();
    let carol = stack.operator_token("carol", "approver", 500_000);

    // Over alice's limit: escalated; the wait (1 s) ends with a request id.
    let r = call(
        &alice,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 6000}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    assert!(text(&r).contains("approval_status"), "{}", text(&r));
    let id = body(&r)["request_id"].as_str().unwrap().to_owned();

    // Still pending: said so, nothing ran.
    let r = status_of(&alice, &id).await;
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    assert!(refunds(&dir, "ord_1002").await.is_empty());

    // Strict arguments, and only the asking session may follow up.
    for bad in [
        json!({"request_id": "req_nope"}),
        json!({"request_id": id, "approve": true}),
        json!({}),
    ] {
        let r = call(&alice, "approval_status", bad.clone()).await.unwrap();
        assert_eq!(r.is_error, Some(true), "{bad}");
        assert!(text(&r).contains("invalid arguments"), "{}", text(&r));
    }
    let other = connect(&stack.broker_url, &stack.session_token("agent:a", "alice"))
        .await
        .unwrap();
    let r = status_of(&other, &id).await;
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("no approval request"), "{}", text(&r));

    // Approved: the next status check runs it, once.
    let out = stack.console(&carol, &["approve", &id, "--reason", "customer is owed it"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = status_of(&alice, &id).await;
    assert_eq!(status(&done), "ok", "{}", text(&done));
    let refund_id = body(&done)["refund_id"].clone();
    let again = status_of(&alice, &id).await;
    assert_eq!(status(&again), "ok", "{}", text(&again));
    assert_eq!(body(&again)["refund_id"], refund_id);
    assert_eq!(body(&again)["replayed"], true);
    let rows = refunds(&dir, "ord_1002").await;
    assert_eq!(rows.len(), 1, "ran once: {rows:?}");
    assert!(rows[0].1.is_some(), "recorded with its grant");

    let bodies = audit_bodies(&dir, "broker").await;
    let uses = |s: &str| {
        bodies
            .iter()
            .filter(|b| b.contains("\"kind\":\"grant_use\"") && b.contains(&id) && b.contains(s))
            .count()
    };
    assert_eq!(
        uses("\"status\":\"accepted\""),
        1,
        "{:#?}",
        bodies
            .iter()
            .filter(|b| b.contains(&id))
            .collect::<Vec<_>>()
    );
    // The repeat found the request executed and returned the stored result.
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("\"tool\":\"approval_status\"")
                && b.contains(&id)
                && b.contains("\"status\":\"executed\"")),
        "the repeat is audited"
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("\"tool\":\"approval_status\"") && b.contains("invalid arguments")),
        "refusals are audited"
    );

    // Approved while no broker runs: the approval survives the restart.
    let r = call(
        &alice,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 7000}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    let second = body(&r)["request_id"].as_str().unwrap().to_owned();
    drop(alice);
    drop(other);
    let out = stack.console(&carol, &["approve", &second, "--reason", "agreed"]);
    assert!(out.status.success());
    let dir = stack.stop_keep();
    let stack = Stack::up_at(&dir).expect("stack restarts");
    let alice = connect(&stack.broker_url, &token).await.unwrap();
    let done = status_of(&alice, &second).await;
    assert_eq!(status(&done), "ok", "{}", text(&done));
    assert_eq!(refunds(&dir, "ord_1002").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_sends_progress_then_its_result() {
    let stack = Stack::up("approval-progress").expect("stack starts");
    let token = stack.session_token("agent:p", "alice");
    let carol = stack.operator_token("carol", "approver", 500_000);
    let url = stack.broker_url.clone();
    let request = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {
            "name": "issue_refund",
            "arguments": {"order_id": "ord_1002", "amount": 6000},
            "_meta": {"progressToken": "refund-1"}
        }
    })
    .to_string();
    let waiting = tokio::spawn(async move { raw_post(&url, Some(&token), &request).await });
    let mut id = String::new();
    for _ in 0..100 {
        let out = stack.console(&carol, &["pending", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(r) = list.first() {
            id = r["id"].as_str().unwrap_or_default().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!id.is_empty(), "escalated");
    let out = stack.console(&carol, &["approve", &id, "--reason", "fine"]);
    assert!(out.status.success());
    let raw = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(raw.status, 200);
    let progress = raw
        .body
        .find("notifications/progress")
        .expect("a progress notification");
    assert!(
        raw.body.contains("\"progressToken\":\"refund-1\""),
        "{}",
        raw.body
    );
    assert!(raw.body[progress..].contains(&id), "{}", raw.body);
    let result = raw.body.rfind("refund_id").expect("the result follows");
    assert!(result > progress, "progress comes before the result");
}

/// A TCP forwarder to the `http://` URL `to`, returning its own URL and a
/// switch that closes it and every connection through it.
async fn cuttable_link(to: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let target = to
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (cut, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut open = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut cut_rx => break,
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { break };
                    let target = target.clone();
                    open.spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        }
        open.abort_all();
    });
    (url, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_fails_closed_without_the_approval_service() {
    let stack = Stack::up("approval-down").expect("stack starts");
    // The broker reaches the approval service through a link the test cuts
    // once the broker has synced its revocations (before that it serves
    // nothing).
    let (link, cut) = cuttable_link(&stack.approval_url).await;
    let (mut child, url) =
        spawn_replica("zt-broker", &stack.data_dir, "cut-off", None, Some(&link));
    cut.send(()).expect("the link runs");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alice = connect(&url, &stack.session_token("agent:c", "alice"))
        .await
        .unwrap();
    // In-policy calls continue.
    let r = call(&alice, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    // An escalation is refused with a safe error, audited, and nothing runs.
    let r = call(
        &alice,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 6000}),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(true));
    let shown = text(&r);
    assert!(shown.contains("approval service is unavailable"), "{shown}");
    assert!(shown.contains("not run"), "{shown}");
    assert!(!shown.contains("127.0.0.1"), "{shown}");
    assert!(refunds(&stack.data_dir, "ord_1002").await.is_empty());
    let bodies = audit_bodies(&stack.data_dir, "broker-cut-off").await;
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("\"decision\":\"escalate\"")
                && b.contains("\"status\":\"refused\"")
                && b.contains("escalation failed")),
        "{bodies:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_one_grant_run_it_once() {
    const TRIALS: usize = 1000;
    let dir = prepare_dir("grant-race", 0, true);
    let stack = Stack::up_at(&dir).expect("stack starts");
    let (mut other, other_url) = spawn_replica("zt-broker", &dir, "b", None, None);
    let token = stack.session_token("agent:race", "alice");
    let here = connect(&stack.broker_url, &token).await.unwrap();
    let there = connect(&other_url, &token).await.unwrap();
    let carol = Grpc::connect(
        &stack.approval_url,
        &stack.operator_token("carol", "approver", 500_000),
    )
    .await;

    let mut ids = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        // Enterprise plans need a lead's approval.
        let r = call(
            &here,
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "enterprise"}),
        )
        .await
        .unwrap();
        assert_eq!(
            status(&r),
            "awaiting_approval",
            "trial {trial}: {}",
            text(&r)
        );
        let id = body(&r)["request_id"].as_str().unwrap().to_owned();
        carol
            .client()
            .decide(carol.req(DecideRequest {
                id: id.clone(),
                approve: true,
                reason: "race".into(),
            }))
            .await
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        let (a, b) = tokio::join!(status_of(&here, &id), status_of(&there, &id));
        let oks = [&a, &b].iter().filter(|r| status(r) == "ok").count();
        assert!(oks >= 1, "trial {trial}: {} / {}", text(&a), text(&b));
        ids.push(id);
    }

    // Exactly one execution per grant, across both replicas' chains.
    let mut accepted = std::collections::HashMap::<String, usize>::new();
    for chain in ["broker", "broker-b"] {
        for b in audit_bodies(&dir, chain).await {
            if b.contains("\"kind\":\"grant_use\"") && b.contains("\"status\":\"accepted\"") {
                let e: Value = serde_json::from_str(&b).unwrap();
                *accepted
                    .entry(e["request_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    for id in &ids {
        assert_eq!(
            accepted.get(id),
            Some(&1),
            "{id} ran {:?} times",
            accepted.get(id)
        );
    }
    let mut conn = zt_tests::backend(&dir).await;
    let changes: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM plan_changes WHERE grant_id IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    assert_eq!(changes, TRIALS as i64);
    let _ = other.kill();
    let _ = other.wait();
}
