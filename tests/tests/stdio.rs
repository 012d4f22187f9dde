//! The broker's stdio mode for local use: MCP as newline-delimited JSON-RPC
//! over stdin/stdout, the session token from the environment, the same gate.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zt_tests::{Stack, bin_dir};

fn broker_stdio(stack: &Stack, token: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin_dir().join("zt-broker"));
    cmd.args(["stdio", "--data-dir", &stack.dir()])
        .env("BROKER_SESSION_TOKEN", token)
        .env("ZT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_mode_gates_calls_like_http() {
    let stack = Stack::up("stdio").expect("stack starts");

    // A bad token: the broker refuses to start.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        broker_stdio(&stack, "not.a.token").output(),
    )
    .await
    .expect("exits")
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session token refused"));

    let token = stack.session_token("agent:stdio", "alice");
    let mut child = broker_stdio(&stack, &token).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let messages = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "lookup_account", "arguments": {"account_id": "acct_1001"}}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "lookup_account", "arguments": {"account_id": "acct_2001"}}}),
    ];
    let mut replies = std::collections::BTreeMap::new();
    for m in messages {
        stdin.write_all(format!("{m}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        if m.get("id").is_none() {
            continue;
        }
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a reply")
            .unwrap()
            .expect("a line");
        let v: Value = serde_json::from_str(&line).unwrap();
        replies.insert(v["id"].as_i64().unwrap_or_default(), v);
    }
    assert_eq!(replies[&1]["result"]["serverInfo"]["name"], "zt-broker");
    assert_eq!(
        replies[&2]["result"]["tools"].as_array().map(Vec::len),
        Some(6),
        "five tools and approval_status"
    );
    assert_eq!(replies[&3]["result"]["isError"], false);
    assert_eq!(replies[&3]["result"]["structuredContent"]["region"], "eu");
    assert_eq!(replies[&4]["result"]["isError"], true);
    assert_eq!(
        replies[&4]["result"]["structuredContent"]["status"],
        "denied"
    );
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    // Its own chain, beside the HTTP broker's; everything verifies, and the
    // HTTP broker still works (no contention on one chain).
    let out = zt_tests::run(
        "zt-console",
        &["audit", "verify", "--json", "--data-dir", &stack.dir()],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], true, "{report}");
    let mut bodies = Vec::new();
    for chain in report["chains"].as_array().unwrap() {
        let name = chain["chain"].as_str().unwrap_or_default();
        if name.starts_with("broker-stdio-") {
            bodies.extend(zt_tests::audit_bodies(&stack.data_dir, name).await);
        }
    }
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("agent:stdio") && b.contains("account-wrong-region"))
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("\"status\":\"unauthenticated\"")),
        "the refused start is audited"
    );
    let agent = zt_tests::connect(&stack.broker_url, &token).await.unwrap();
    let r = zt_tests::call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(zt_tests::status(&r), "ok");
}
