//! `audit query` and `audit export`: entries found by human, agent, session,
//! tool, decision and time, and exported as JSON Lines with the fields a
//! SIEM expects.

use serde_json::json;
use zt_tests::{Stack, bin, call, connect, status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_found_and_exported() {
    let stack = Stack::up("audit-query").expect("stack starts");
    let alice = connect(&stack.broker_url, &stack.session_token("agent:a", "alice"))
        .await
        .unwrap();
    let bob = connect(&stack.broker_url, &stack.session_token("agent:b", "bob"))
        .await
        .unwrap();
    let ok = call(&alice, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&ok), "ok");
    let denied = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": -5}),
    )
    .await
    .unwrap();
    assert_eq!(denied.is_error, Some(true));
    call(&bob, "lookup_account", json!({"account_id": "acct_2001"}))
        .await
        .unwrap();

    let all = stack.json_lines(&["audit", "export"]);
    assert!(all.len() >= 6, "{}", all.len());
    for l in &all {
        for field in [
            "time",
            "time_ms",
            "chain",
            "seq",
            "kind",
            "session",
            "human",
            "agent",
            "tool",
            "args",
            "decision",
            "rules",
            "status",
            "detail",
            "hash",
            "prev_hash",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    let times: Vec<i64> = all.iter().map(|l| l["time_ms"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");

    let by_alice = stack.json_lines(&["audit", "query", "--json", "--human", "alice"]);
    assert!(!by_alice.is_empty());
    assert!(by_alice.iter().all(|l| l["human"] == "alice"));
    let by_agent = stack.json_lines(&["audit", "query", "--json", "--agent", "agent:b"]);
    assert!(!by_agent.is_empty());
    assert!(by_agent.iter().all(|l| l["agent"] == "agent:b"));
    let session = by_agent[0]["session"].as_str().unwrap().to_owned();
    let by_session = stack.json_lines(&["audit", "query", "--json", "--session", &session]);
    assert_eq!(by_session.len(), by_agent.len(), "one session for agent:b");

    let denials = stack.json_lines(&[
        "audit",
        "export",
        "--decision",
        "deny",
        "--tool",
        "issue_refund",
    ]);
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0]["human"], "bob");
    assert_eq!(denials[0]["status"], "refused");

    let recent = stack.json_lines(&["audit", "export", "--since", "1h"]);
    assert_eq!(recent.len(), all.len());
    let old = stack.json_lines(&["audit", "export", "--until", "1h"]);
    assert!(old.is_empty());

    // The table for people, and a clear error for a bad time.
    let out = bin("zt-console")
        .args([
            "audit",
            "query",
            "--kind",
            "decision",
            "--data-dir",
            &stack.dir(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TIME"), "{text}");
    assert!(text.contains("lookup_account"), "{text}");
    let out = bin("zt-console")
        .args([
            "audit",
            "query",
            "--since",
            "yesterday",
            "--data-dir",
            &stack.dir(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a time"));
}
