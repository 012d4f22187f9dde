//! Detection rules over the live event stream: a burst of denials by one
//! agent raises one alert, recorded in the approval service's audit chain and
//! shown to watching operators; a normal session raises none; a broken rule
//! file stops the approval service from starting.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zt_proto::pb::WatchEventsRequest;
use zt_tests::{Grpc, Stack, audit_bodies, call, connect, run_ok, status, temp_dir, text};

/// The approval chain's alert entries.
async fn alerts(stack: &Stack) -> Vec<Value> {
    audit_bodies(&stack.data_dir, "approval")
        .await
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|e| e["kind"] == "alert")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_spike_raises_one_alert_and_a_normal_session_none() {
    let stack = Stack::up("detections").expect("stack starts");

    // A normal short session: lookups in alice's region, one denial, a refund
    // well under her limit.
    let calm = connect(
        &stack.broker_url,
        &stack.session_token("agent:calm", "alice"),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let r = call(&calm, "lookup_account", json!({"account_id": "acct_1001"}))
            .await
            .unwrap();
        assert_eq!(status(&r), "ok", "{}", text(&r));
    }
    let r = call(&calm, "lookup_account", json!({"account_id": "acct_2001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "denied", "alice serves the EU only");
    let r = call(
        &calm,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 500}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));

    // A spike: fifteen denials in a few seconds (the shipped rule: ten within
    // a minute), well under the session's rate limit.
    let spiky = connect(
        &stack.broker_url,
        &stack.session_token("agent:spiky", "alice"),
    )
    .await
    .unwrap();
    for _ in 0..15 {
        let r = call(&spiky, "lookup_account", json!({"account_id": "acct_2001"}))
            .await
            .unwrap();
        assert_eq!(status(&r), "denied", "{}", text(&r));
    }

    // Events reach the approval service asynchronously: poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = alerts(&stack).await;
    while found.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        found = alerts(&stack).await;
    }
    // A little longer: the rest of the burst must not raise more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found = alerts(&stack).await;
    assert_eq!(found.len(), 1, "one burst, one alert: {found:#?}");
    let alert = &found[0];
    assert_eq!(alert["rules"], json!(["denial-spike"]), "{alert}");
    assert_eq!(alert["decision"], "alert", "{alert}");
    assert_eq!(alert["subject"], "agent:spiky", "{alert}");
    assert_eq!(alert["actors"], json!(["agent:spiky"]), "{alert}");
    let detail = alert["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("agent agent:spiky had 10 denials within 1m"),
        "{detail}"
    );
    assert!(
        !alert.to_string().contains("agent:calm"),
        "the normal session raised nothing: {alert}"
    );

    // Watching operators see it too.
    let token = stack.operator_token("olga", "watcher", 0);
    let grpc = Grpc::connect(&stack.approval_url, &token).await;
    let mut events = grpc
        .client()
        .watch_events(grpc.req(WatchEventsRequest { from_seq: 0 }))
        .await
        .expect("watching")
        .into_inner();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(e)) = events.message().await {
            if e.kind == "alert" {
                return Some(e);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("an alert event in the operators' stream");
    assert_eq!(seen.rules, ["denial-spike"]);
    assert_eq!(seen.agent, "agent:spiky");
    assert_eq!(seen.decision, "alert");
    assert!(seen.summary.contains("10 denials"), "{}", seen.summary);

    let out = stack.console(&token, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_broken_rule_file_stops_the_approval_service() {
    let dir = temp_dir("detections-broken");
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    let rules = dir.join("policies").join("detections.toml");
    let shipped = std::fs::read_to_string(&rules).expect("init installs the rules");
    std::fs::write(
        &rules,
        shipped.replacen("threshold = 10", "threshold = 0", 1),
    )
    .unwrap();

    let (code, stderr) = zt_tests::approval_refuses_to_start(&d);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("detections.toml"), "{stderr}");
    assert!(
        stderr.contains("rule `denial-spike`: threshold must be between 1 and 1000"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
