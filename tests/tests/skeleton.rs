//! The walking skeleton, end to end, with every service as its own process:
//! identity → MCP broker → policy → backend → audit, and an over-limit refund
//! escalated to a human, approved from the operator CLI, redeemed once with a
//! signed grant, and verified in the audit log — which then detects tampering.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use zt_tests::{Stack, call, connect, raw_list, run, status, text};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skeleton_path_through_every_trust_domain() {
    let stack = Stack::up("skeleton").expect("stack starts");

    // No token: 401 with the RFC 9728 pointer, before MCP runs.
    let raw = raw_list(&stack.broker_url, None).await;
    assert_eq!(raw.status, 401);
    assert!(
        raw.challenge.contains("resource_metadata=\""),
        "{}",
        raw.challenge
    );

    let token = stack.session_token("agent:e2e", "alice");
    let agent = connect(&stack.broker_url, &token)
        .await
        .expect("MCP session");
    let tools = agent.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "approval_status",
            "change_plan",
            "fetch_document",
            "issue_refund",
            "list_orders",
            "lookup_account"
        ]
    );

    // Allowed: in alice's region, within her limit.
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    assert_eq!(
        r.structured_content.as_ref().and_then(|v| v.get("region")),
        Some(&json!("eu"))
    );
    let r = call(
        &agent,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 3000}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));

    // Denied by policy (wrong region) and by schema (smuggled field): safe errors only.
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_2001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "denied");
    assert!(!text(&r).to_lowercase().contains("select"), "{}", text(&r));
    let r = call(
        &agent,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 100, "override": true}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "denied");
    assert!(
        text(&r).contains("override"),
        "the error names the field: {}",
        text(&r)
    );

    // Over alice's $50 limit: escalated; the call waits for a human.
    let waiting = {
        let agent_url = stack.broker_url.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let agent = connect(&agent_url, &token)
                .await
                .expect("second MCP session");
            call(
                &agent,
                "issue_refund",
                json!({"order_id": "ord_1002", "amount": 20000}),
            )
            .await
        })
    };
    let carol = stack.operator_token("carol", "approver", 500_000);
    let mut pending: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let out = stack.console(&carol, &["pending", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        pending = serde_json::from_str(&stdout(&out)).expect("pending JSON");
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending.len(), 1, "one escalated request");
    let req = &pending[0];
    assert_eq!(req["tool"], "issue_refund");
    assert_eq!(req["human"], "alice");
    assert_eq!(req["amount_cents"], 20000);
    assert_eq!(
        req["arguments"],
        json!({"order_id": "ord_1002", "amount": 20000})
    );
    let id = req["id"].as_str().unwrap().to_owned();

    // Alice cannot approve a request made on her behalf; a watcher cannot approve at all.
    let alice_op = stack.operator_token("alice", "approver", 500_000);
    let out = stack.console(&alice_op, &["approve", &id, "--reason", "mine"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("own behalf"), "{}", stderr(&out));
    let watcher = stack.operator_token("wendy", "watcher", 0);
    let out = stack.console(&watcher, &["approve", &id, "--reason", "looks fine"]);
    assert_eq!(out.status.code(), Some(1));

    // The support lead approves; the broker redeems the grant and the refund runs once.
    let out = stack.console(&carol, &["approve", &id, "--reason", "customer is owed it"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("approved"));
    let r = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("escalated call returns")
        .unwrap()
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    assert_eq!(
        r.structured_content.as_ref().and_then(|v| v.get("amount")),
        Some(&json!(20000))
    );
    let out = stack.console(&carol, &["approve", &id, "--reason", "again"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a decided request cannot be decided again"
    );

    // The audit log verifies...
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
    assert!(
        stdout(&out).contains("audit chain: verified"),
        "{}",
        stdout(&out)
    );
    let out = run(
        "zt-console",
        &["audit", "verify", "--json", "--data-dir", &stack.dir()],
    );
    let report: Value = serde_json::from_str(&stdout(&out)).expect("verify JSON");
    assert_eq!(report["intact"], true);
    assert!(report["entries"].as_u64().unwrap() >= 10, "{report}");

    // ...and names the first edited entry once someone rewrites history.
    let db = stack.data_dir.join("audit.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let seq: i64 = sqlx::query_scalar(
        "SELECT MIN(seq) FROM audit_entries WHERE chain = 'broker' AND body LIKE '%\"amount\":3000%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("DROP TRIGGER audit_entries_no_update")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_entries SET body = replace(body, '\"amount\":3000', '\"amount\":300') WHERE chain = 'broker' AND seq = ?")
        .bind(seq)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = run(
        "zt-console",
        &["audit", "verify", "--data-dir", &stack.dir()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("chain broker, first bad entry #{seq}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn headless_demo_completes_and_verifies() {
    let out = run("zt-console", &["demo", "--headless"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    for line in [
        "calls allowed: 3",
        "calls constrained: 1",
        "calls escalated: 1",
        "approved: 1",
        "calls denied: 4",
        "executed: 5",
        "expectations: 9 of 9 held",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("audit chain: verified"), "{text}");
    // Verified once the writers have stopped and signed their heads: a
    // clean run has no unsigned tail to explain.
    assert!(
        !text.contains("not yet covered by a signed checkpoint"),
        "{text}"
    );
}

#[test]
fn every_binary_has_help() {
    for name in [
        "zt-console",
        "zt-approval",
        "zt-broker",
        "zt-billing",
        "zt-policy",
    ] {
        let out = run(name, &["--help"]);
        assert!(out.status.success(), "{name} --help");
        assert!(stdout(&out).contains("Usage"), "{name} --help prints usage");
    }
}
