//! The billing adapter: refunds go through the billing API, which moves
//! money only for a caller presenting its API key. Only the broker holds
//! that key; the billing service stores only its digest. Without the key
//! (or with a wrong one) the API refuses and writes nothing; with the
//! billing API down, a refund fails closed with a safe error, is audited,
//! and nothing is written.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zt_proto::stack::Layout;
use zt_tests::{Stack, audit_bodies, call, connect, status, text};

async fn refund_rows(stack: &Stack) -> i64 {
    let mut conn = zt_tests::backend(&stack.data_dir).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refunds")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    n
}

async fn post(url: &str, key: Option<&str>, body: &str) -> (u16, String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/refunds"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req.send().await.expect("billing answers");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, challenge, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_brokers_key_moves_money() {
    let stack = Stack::up("billing").expect("stack starts");
    let layout = Layout::new(&stack.data_dir);
    let url = layout.endpoint("billing").expect("billing is running");
    let key_file = layout.private("broker").join("billing.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();

    // The key is the broker's alone: 0600 in its directory; the billing
    // service keeps a digest.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let billing_config =
        std::fs::read_to_string(layout.private("backend").join("billing.toml")).unwrap();
    assert!(
        !billing_config.contains(key),
        "the billing service stores no key"
    );
    assert!(billing_config.contains("sha256"));

    let body = json!({
        "order_id": "ord_1001", "amount_cents": 100,
        "actor": {"session": "sid_x", "human": "mallory"}
    })
    .to_string();
    // No key, a wrong key, a key with one character changed: refused, nothing written.
    let mut tampered = key.to_owned();
    tampered.pop();
    tampered.push('x');
    for bad in [None, Some("ztb_guess"), Some(tampered.as_str())] {
        let (code, challenge, _) = post(&url, bad, &body).await;
        assert_eq!(code, 401, "{bad:?}");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    // The right key with a smuggled field or a bad amount: refused.
    let smuggled = json!({
        "order_id": "ord_1001", "amount_cents": 100, "approved": true,
        "actor": {"session": "sid_x", "human": "mallory"}
    })
    .to_string();
    let (code, _, answer) = post(&url, Some(key), &smuggled).await;
    assert_eq!(code, 400, "{answer}");
    let negative = json!({
        "order_id": "ord_1001", "amount_cents": -100,
        "actor": {"session": "sid_x", "human": "mallory"}
    })
    .to_string();
    let (code, _, answer) = post(&url, Some(key), &negative).await;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(refund_rows(&stack).await, 0, "nothing was written");

    // Through the broker, an allowed refund runs on the billing API.
    let agent = connect(&stack.broker_url, &stack.session_token("agent:b", "alice"))
        .await
        .unwrap();
    let done = call(
        &agent,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 1500}),
    )
    .await
    .unwrap();
    assert_eq!(status(&done), "ok", "{}", text(&done));
    assert_eq!(refund_rows(&stack).await, 1);

    // With the billing API unreachable (a stdio broker pointed at a closed
    // port), a refund fails closed: a safe error, an audited failure,
    // nothing written.
    let token = stack.session_token("agent:b", "alice");
    let mut child = tokio::process::Command::new(zt_tests::bin_dir().join("zt-broker"))
        .args([
            "stdio",
            "--data-dir",
            &stack.dir(),
            "--billing",
            "http://127.0.0.1:9",
        ])
        .env("BROKER_SESSION_TOKEN", &token)
        .env("ZT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let messages = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "issue_refund", "arguments": {"order_id": "ord_1001", "amount": 1200}}}),
    ];
    let mut reply = Value::Null;
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
        reply = serde_json::from_str(&line).unwrap();
    }
    let result = &reply["result"];
    assert_eq!(result["isError"], true, "{reply}");
    let shown = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        shown.contains("the backend could not complete the request"),
        "{shown}"
    );
    for secret in [key, "127.0.0.1", "billing", "connect"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    assert_eq!(refund_rows(&stack).await, 1, "nothing more was written");
    let mut audited = false;
    let pool = zt_proto::store::open_read_only(&zt_proto::db::Location::File(
        stack.data_dir.join("audit.db"),
    ))
    .await
    .unwrap();
    for chain in zt_proto::store::chains(&pool).await.unwrap().keys() {
        let bodies = audit_bodies(&stack.data_dir, chain).await;
        assert!(
            !bodies.iter().any(|b| b.contains(key)),
            "the key is never audited"
        );
        if chain.starts_with("broker-stdio-") {
            audited = bodies
                .iter()
                .any(|b| b.contains("issue_refund") && b.contains("\"status\":\"error\""));
        }
    }
    assert!(audited, "the failed refund is audited");
}
