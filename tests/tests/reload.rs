//! Policy is data: editing the stack's policy files changes decisions without
//! a redeploy, and a broken edit keeps the policy in force. Both are audited.

use std::time::Duration;

use serde_json::json;
use zt_tests::{Stack, call, connect, status};

async fn wait_for_status(agent: &zt_tests::Agent, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let r = call(agent, "lookup_account", json!({"account_id": "acct_2001"}))
            .await
            .unwrap();
        last = status(&r);
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_apply_without_redeploy_and_broken_edits_are_refused() {
    let stack = Stack::up("reload").expect("stack starts");
    let token = stack.session_token("agent:reload", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    assert_eq!(
        wait_for_status(&agent, "denied").await,
        "denied",
        "alice serves the EU only"
    );

    let humans = stack.data_dir.join("policies").join("humans.toml");
    let original = std::fs::read_to_string(&humans).unwrap();
    let widened = original.replacen(
        "allowed_regions = [\"eu\"]",
        "allowed_regions = [\"eu\", \"us\"]",
        1,
    );
    assert_ne!(widened, original);
    std::fs::write(&humans, &widened).unwrap();
    assert_eq!(
        wait_for_status(&agent, "ok").await,
        "ok",
        "the new region applies"
    );

    // A broken file: the previous policy stays in force.
    let policy = stack.data_dir.join("policies").join("policy.cedar");
    let mut rules = std::fs::read_to_string(&policy).unwrap();
    rules.push_str("\npermit (principal, action, resource) when { this is not cedar };\n");
    std::fs::write(&policy, rules).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_2001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "the last good policy is still in force");

    let out = zt_tests::run(
        "zt-console",
        &["audit", "verify", "--json", "--data-dir", &stack.dir()],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = zt_tests::audit_bodies(&stack.data_dir, "broker")
        .await
        .join("\n");
    assert!(
        text.contains("\"kind\":\"policy_reload\""),
        "reloads are audited"
    );
    assert!(
        text.contains("reload refused, previous policy kept"),
        "refused reloads are audited"
    );
}
