//! Changing policy safely, end to end on a running stack:
//!
//! - every decision entry records what it rested on (the policy bundle's
//!   hash, the human, resource and context the rules saw);
//! - a refund split into pieces under the rep limit is stopped by the daily
//!   budget — consumed atomically, so concurrent pieces cannot all pass —
//!   and raises the split-refund alert;
//! - a session that read a fetched document has any refund held for an
//!   operator (taint);
//! - a `@shadow` rule tightening refunds is evaluated beside the enforced
//!   rules and recorded, never enforced, and shows as an event; promoted,
//!   it enforces;
//! - `zt-policy replay` decides the recorded traffic again: the policy in
//!   force reproduces every decision (exit 0), the tightened one names what
//!   would change (exit 1), a broken candidate cannot be checked (exit 2).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zt_tests::{Stack, audit_bodies, bin, call, connect, prepare_dir, status, text};

/// The broker chain's decision and escalation entries for `tool`.
async fn decisions(stack: &Stack, tool: &str) -> Vec<Value> {
    audit_bodies(&stack.data_dir, "broker")
        .await
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|e| (e["kind"] == "decision" || e["kind"] == "escalation") && e["tool"] == tool)
        .collect()
}

/// The approval chain's alerts of `rule`, polled for a few seconds.
async fn alerts(stack: &Stack, rule: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = audit_bodies(&stack.data_dir, "approval")
            .await
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .filter(|e| e["kind"] == "alert" && e["rules"] == json!([rule]))
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn policy(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("policies")
}

/// `zt-policy ARGS`: exit code and output.
fn zt_policy(args: &[&str]) -> (i32, String) {
    let out = bin("zt-policy")
        .args(args)
        .output()
        .expect("zt-policy runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits until the broker's chain records a policy reload naming `hash`.
async fn reloaded(stack: &Stack, hash: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let seen = audit_bodies(&stack.data_dir, "broker")
            .await
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .any(|e| {
                e["kind"] == "policy_reload"
                    && e["status"] == "ok"
                    && e["detail"].as_str().is_some_and(|d| d.contains(hash))
            });
        if seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the broker did not reload policy {hash}");
}

/// The policy version of `dir`, as `zt-policy check` prints it.
fn hash_of(dir: &std::path::Path) -> String {
    let (code, out) = zt_policy(&["check", &dir.to_string_lossy()]);
    assert_eq!(code, 0, "{out}");
    out.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no policy hash in: {out}"))
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
        .to_owned()
}

const SHADOW_RULE: &str = r#"
@id("refund-over-20-escalate")
@shadow("proposed: refunds above $20 need a lead")
@effect("escalate")
@reason("refunds above $20 need approval (proposed rule)")
permit (principal, action == Action::"issue_refund", resource is Order)
when {
  resource has region &&
  resource has amount &&
  resource has refunded &&
  principal.human.allowed_regions.contains(resource.region) &&
  context.args.amount <= resource.amount - resource.refunded &&
  context.args.amount <= 100000 &&
  context.args.amount > 2000
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_budgets_taint_shadow_and_replay() {
    let dir = prepare_dir("policy-change", 0, true);
    let stack = Stack::up_at(&dir).expect("stack starts");
    let in_force = hash_of(&policy(&dir));

    // ------------------------------------------------ provenance
    let bob = connect(&stack.broker_url, &stack.session_token("agent:a", "bob"))
        .await
        .unwrap();
    let r = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 300}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let entries = decisions(&stack, "issue_refund").await;
    let basis = &entries.last().expect("a decision entry")["basis"];
    assert_eq!(basis["policy"], json!(in_force), "{basis}");
    assert_eq!(basis["agent"], "agent:a");
    assert_eq!(basis["human"]["rep_limit"], 20000, "{basis}");
    assert_eq!(basis["resource"]["id"], "ord_1001");
    assert_eq!(basis["resource"]["attrs"]["region"], "eu", "{basis}");
    assert_eq!(basis["context"]["tainted"], false);
    assert_eq!(basis["context"]["budgets"]["refunded_today"], 0);
    // The auditor's export carries it too.
    let exported = stack.json_lines(&["audit", "query", "--json", "--tool", "issue_refund"]);
    assert!(
        exported
            .iter()
            .any(|l| l["basis"]["policy"] == json!(in_force)),
        "{exported:#?}"
    );

    // ------------------------------------------------ split refunds
    // alice: $50 a refund, $150 a day. $44.99 pieces, outside the
    // near-limit band, from six sessions at once: the ledger lets exactly
    // three run ($134.97) and holds the rest for a lead.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = stack.broker_url.clone();
        let token = stack.session_token(&format!("agent:split-{i}"), "alice");
        tasks.push(tokio::spawn(async move {
            let agent = connect(&url, &token).await.unwrap();
            let r = call(
                &agent,
                "issue_refund",
                json!({"order_id": "ord_1002", "amount": 4499}),
            )
            .await
            .unwrap();
            (status(&r), text(&r))
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let ran = outcomes.iter().filter(|(s, _)| s == "ok").count();
    let held = outcomes.iter().filter(|(s, _)| s != "ok").count();
    assert_eq!((ran, held), (3, 3), "{outcomes:#?}");
    for (s, t) in outcomes.iter().filter(|(s, _)| s != "ok") {
        assert_eq!(s, "awaiting_approval", "{t}");
    }
    let split = decisions(&stack, "issue_refund").await;
    let escalated: Vec<&Value> = split
        .iter()
        .filter(|e| e["decision"] == "escalate" && e["subject"] == "alice")
        .collect();
    assert_eq!(escalated.len(), 3);
    for e in &escalated {
        assert_eq!(
            e["rules"],
            json!(["refund-over-daily-total-escalate"]),
            "{e}"
        );
        assert_eq!(
            e["basis"]["context"]["budgets"]["refunded_today"], 13497,
            "{e}"
        );
    }
    let alert = alerts(&stack, "split-refunds").await;
    assert_eq!(alert.len(), 1, "{alert:#?}");
    assert!(
        alert[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("human alice")),
        "{}",
        alert[0]
    );

    // ------------------------------------------------ taint
    // bob reads the injected article, then asks for a $1 refund: held,
    // because of where the instruction came from. A clean session of his
    // refunds the same dollar at once.
    let read = connect(
        &stack.broker_url,
        &stack.session_token("agent:reader", "bob"),
    )
    .await
    .unwrap();
    let r = call(
        &read,
        "fetch_document",
        json!({"doc_id": "doc_shipping_faq"}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let r = call(
        &read,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 100}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    let r = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 100}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let tainted = decisions(&stack, "issue_refund").await;
    let held = tainted
        .iter()
        .rev()
        .find(|e| e["decision"] == "escalate" && e["subject"] == "bob")
        .expect("the tainted refund's escalation");
    assert_eq!(
        held["rules"],
        json!(["refund-after-untrusted-content-escalate"])
    );
    assert_eq!(held["basis"]["context"]["tainted"], true);

    // ------------------------------------------------ replay, unchanged
    let data = stack.dir();
    let current = policy(&dir).to_string_lossy().into_owned();
    let (code, out) = zt_policy(&["replay", "--policies", &current, "--data-dir", &data]);
    assert_eq!(
        code, 0,
        "the policy in force reproduces every decision: {out}"
    );
    assert!(out.contains("nothing would change"), "{out}");

    // ------------------------------------------------ shadow
    let file = policy(&dir).join("policy.cedar");
    let enforced = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{enforced}\n{SHADOW_RULE}")).unwrap();
    let shadowed = hash_of(&policy(&dir));
    reloaded(&stack, &shadowed).await;
    let r = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 3000}),
    )
    .await
    .unwrap();
    assert_eq!(
        status(&r),
        "ok",
        "a shadow rule is never enforced: {}",
        text(&r)
    );
    let last = decisions(&stack, "issue_refund").await;
    let e = last.last().unwrap();
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["basis"]["policy"], json!(shadowed));
    assert_eq!(
        e["basis"]["shadow"],
        json!({
            "effect": "escalate",
            "rules": ["refund-over-20-escalate"],
            "shadow_rules": ["refund-over-20-escalate"]
        }),
        "{e}"
    );
    let (code, out) = zt_policy(&["shadow", "--data-dir", &data]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refund-over-20-escalate") && out.contains("allow→escalate"),
        "{out}"
    );

    // A candidate that promotes it, replayed over the whole log: the
    // $30 refund and the $44.99 pieces that ran would have been held.
    let candidate = zt_tests::temp_dir("promoted");
    for f in std::fs::read_dir(policy(&dir)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, candidate.join(f.file_name().unwrap())).unwrap();
    }
    let promoted = std::fs::read_to_string(candidate.join("policy.cedar"))
        .unwrap()
        .replace("@shadow(\"proposed: refunds above $20 need a lead\")\n", "");
    std::fs::write(candidate.join("policy.cedar"), &promoted).unwrap();
    let cand = candidate.to_string_lossy().into_owned();
    let (code, out) = zt_policy(&["replay", "--policies", &cand, "--data-dir", &data, "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["transitions"]["allow→escalate"], 4, "{report:#}");
    assert_eq!(report["rules"]["refund-over-20-escalate"], 4, "{report:#}");
    assert!(
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tool"] == "issue_refund" && c["now"] == "escalate"),
        "{report:#}"
    );
    let (code, out) = zt_policy(&[
        "replay",
        "--policies",
        &cand,
        "--data-dir",
        &data,
        "--human",
        "bob",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("allow→escalate") && out.contains("1 would change"),
        "{out}"
    );

    // Promoted in the stack: now it holds the same refund.
    std::fs::write(&file, &promoted).unwrap();
    reloaded(&stack, &hash_of(&policy(&dir))).await;
    let r = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_2002", "amount": 3000}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));

    // A broken candidate cannot be checked.
    std::fs::write(candidate.join("policy.cedar"), "permit (").unwrap();
    let (code, out) = zt_policy(&["replay", "--policies", &cand, "--data-dir", &data]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = zt_policy(&[
        "replay",
        "--policies",
        &current,
        "--data-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, 2, "{out}");
    let _ = std::fs::remove_dir_all(&candidate);
}
