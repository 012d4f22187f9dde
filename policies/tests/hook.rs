//! The PreToolUse hook: allow, constrain, escalate and deny map to the
//! client's decisions, and every failure blocks (exit 2), never exit 1.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use zt_policies::PolicyBundle;
use zt_policies::hook::{self, HookError, HookInput, Verdict};

fn bundle() -> PolicyBundle {
    PolicyBundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
        .expect("shipped policies load")
}

fn input(tool: &str, args: Value) -> HookInput {
    serde_json::from_value(json!({
        "session_id": "abc123",
        "hook_event_name": "PreToolUse",
        "tool_name": tool,
        "tool_input": args,
        "tool_use_id": "toolu_01ABC"
    }))
    .unwrap()
}

fn decision(v: &Verdict) -> Value {
    hook::output(v)["hookSpecificOutput"].clone()
}

#[test]
fn effects_map_to_client_decisions() {
    let b = bundle();
    let allow = hook::evaluate(
        &b,
        &input(
            "mcp__broker__issue_refund",
            json!({"order_id": "ord_1", "amount": 5000}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    assert_eq!(decision(&allow)["permissionDecision"], "allow");
    assert!(decision(&allow).get("updatedInput").is_none());

    // Escalate goes through to the broker, which holds it for an operator:
    // "ask" would be an error headless and would prompt the agent's own human.
    let escalate = hook::evaluate(
        &b,
        &input(
            "mcp__broker__issue_refund",
            json!({"order_id": "ord_1", "amount": 5001}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    assert!(matches!(escalate, Verdict::Escalate { .. }));
    let d = decision(&escalate);
    assert_eq!(d["permissionDecision"], "allow");
    assert!(d.get("updatedInput").is_none());
    let reason = d["permissionDecisionReason"].as_str().unwrap();
    assert!(reason.contains("support lead"), "{reason}");
    assert!(reason.contains("operator"), "{reason}");

    let deny = hook::evaluate(
        &b,
        &input(
            "mcp__broker__issue_refund",
            json!({"order_id": "ord_1", "amount": 100001}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    assert_eq!(decision(&deny)["permissionDecision"], "deny");

    // Constrain: updatedInput replaces the whole input, so it carries every field.
    let clamp = hook::evaluate(
        &b,
        &input(
            "mcp__broker__list_orders",
            json!({"account_id": "acct_1001", "limit": 99}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    let d = decision(&clamp);
    assert_eq!(d["permissionDecision"], "allow");
    assert_eq!(
        d["updatedInput"],
        json!({"account_id": "acct_1001", "limit": 20})
    );

    let plan = hook::evaluate(
        &b,
        &input(
            "mcp__broker__change_plan",
            json!({"account_id": "acct_1001", "new_plan": "premium"}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    assert_eq!(decision(&plan)["permissionDecision"], "deny");
    let smuggled = hook::evaluate(
        &b,
        &input(
            "mcp__broker__issue_refund",
            json!({"order_id": "ord_1", "amount": 1, "admin": true}),
        ),
        "alice",
        "a",
    )
    .unwrap();
    assert_eq!(decision(&smuggled)["permissionDecision"], "deny");
}

#[test]
fn builtin_broker_tools_are_known_and_checked() {
    let b = bundle();
    let id = format!("req_{}", "ab".repeat(16));
    let ok = hook::evaluate(
        &b,
        &input("mcp__broker__approval_status", json!({ "request_id": id })),
        "alice",
        "a",
    )
    .unwrap();
    assert_eq!(decision(&ok)["permissionDecision"], "allow");
    assert!(decision(&ok).get("updatedInput").is_none());
    for bad in [
        json!({}),
        json!({ "request_id": "req_1; DROP" }),
        json!({ "request_id": id, "amount": 100 }),
    ] {
        let v = hook::evaluate(
            &b,
            &input("mcp__broker__approval_status", bad.clone()),
            "alice",
            "a",
        )
        .unwrap();
        assert_eq!(decision(&v)["permissionDecision"], "deny", "{bad}");
    }
}

#[test]
fn unknown_and_foreign_tools_are_errors() {
    let b = bundle();
    assert_eq!(hook::tool_of("Bash"), Err(HookError::NotMcp("Bash".into())));
    assert_eq!(
        hook::tool_of("mcp__broker__"),
        Err(HookError::NotMcp("mcp__broker__".into()))
    );
    assert_eq!(
        hook::tool_of("mcp__broker__issue_refund"),
        Ok("issue_refund")
    );
    assert_eq!(
        hook::evaluate(
            &b,
            &input("mcp__broker__drop_tables", json!({})),
            "alice",
            "a"
        ),
        Err(HookError::UnknownTool("drop_tables".into()))
    );
}

fn run_hook(stdin: &str, envs: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt-policy"))
        .arg("hook")
        .env_remove("ZT_DATA_DIR")
        .env_remove("BROKER_SESSION_TOKEN")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_binary_fails_closed() {
    let ok_input =
        r#"{"tool_name":"mcp__broker__issue_refund","tool_input":{"order_id":"ord_1","amount":1}}"#;
    // Garbage, no identity, a forged token, a missing stack: all exit 2, never 0 or 1.
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("not json", &[]),
        (ok_input, &[]),
        (
            ok_input,
            &[
                ("ZT_DATA_DIR", "/nonexistent"),
                ("BROKER_SESSION_TOKEN", "x.y.z"),
            ],
        ),
    ];
    for (stdin, envs) in cases {
        let out = run_hook(stdin, envs);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{stdin} {envs:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        assert!(!out.stderr.is_empty(), "a reason is shown to the model");
    }
}
