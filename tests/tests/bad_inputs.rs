//! Every class of bad input to the broker gets a safe error, an audit entry,
//! and no side effect on the backend.

use serde_json::{Value, json};
use sqlx::Connection;
use zt_proto::keys::KeyPair;
use zt_proto::stack::Layout;
use zt_proto::token::{self, Actor, SessionClaims, TokenType};
use zt_tests::{Stack, audit_bodies, call, connect, raw_list, raw_post, status, text};

/// (number of refunds, total refunded cents) in the backend.
async fn refunds(stack: &Stack) -> (i64, i64) {
    let mut conn = zt_tests::backend(&stack.data_dir).await;
    let row: (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(amount_cents), 0) FROM refunds")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    row
}

async fn audited(stack: &Stack, needle: &str) -> bool {
    audit_bodies(&stack.data_dir, "broker")
        .await
        .iter()
        .any(|b| b.contains(needle))
}

/// A session token signed with the stack's key but with chosen times.
fn forged_times(stack: &Stack, iat: i64, exp: i64) -> String {
    let layout = Layout::new(&stack.data_dir);
    let info = layout.stack().unwrap();
    let key = KeyPair::read(&layout.private("approval").join("token.key")).unwrap();
    let claims = SessionClaims {
        iss: info.issuer,
        aud: info.broker_audience,
        sub: "alice".into(),
        act: Actor {
            sub: "agent:old".into(),
            act: None,
        },
        sid: "sess_expired".into(),
        jti: "jti_expired".into(),
        iat,
        nbf: iat,
        exp,
        scope: String::new(),
        auth_time: iat,
    };
    token::sign(&key, TokenType::Session, &claims).unwrap()
}

fn no_internals(t: &str) {
    let lower = t.to_lowercase();
    for leak in [
        "select ",
        "sqlite",
        "panicked",
        "backtrace",
        "/tmp/",
        ".rs:",
    ] {
        assert!(
            !lower.contains(leak),
            "the model saw internals ({leak}): {t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_audited_and_have_no_effect() {
    let stack = Stack::up("bad-inputs").expect("stack starts");
    let token = stack.session_token("agent:fuzz", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    let before = refunds(&stack).await;

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"order_id": "ord_1001", "amount": 100, "note": "x"}),
            "unknown field `note`",
        ),
        (json!({"order_id": "ord_1001", "amount": "100"}), "`amount`"),
        (json!({"order_id": "ord_1001", "amount": 0}), "`amount`"),
        (json!({"order_id": "ord_1001", "amount": -5}), "`amount`"),
        (
            json!({"order_id": "ord_1001", "amount": 1_000_000_000_000i64}),
            "`amount`",
        ),
        (
            json!({"order_id": "ord_1001' OR 1=1 --", "amount": 100}),
            "`order_id`",
        ),
        (
            json!({"order_id": "ord_1001", "amount": 100, "meta": {"override": true}}),
            "unknown field `meta`",
        ),
        (
            json!({"order_id": "x".repeat(20_000), "amount": 100}),
            "too large",
        ),
    ];
    // Each case in its own session: invalid calls count toward the rate limit too.
    for (args, expect) in &cases {
        let session = connect(
            &stack.broker_url,
            &stack.session_token("agent:fuzz", "alice"),
        )
        .await
        .unwrap();
        let r = call(&session, "issue_refund", args.clone()).await.unwrap();
        assert_eq!(status(&r), "denied", "{args}");
        assert!(
            text(&r).contains(expect),
            "expected `{expect}` in: {}",
            text(&r)
        );
        no_internals(&text(&r));
    }
    assert!(audited(&stack, "unknown field `note`").await);
    assert!(audited(&stack, "oversize arguments").await);
    assert!(
        audited(&stack, "\"_oversize_bytes\"").await,
        "the oversize payload itself is not copied"
    );

    // Identity: no token, an expired token.
    let raw = raw_list(&stack.broker_url, None).await;
    assert_eq!(raw.status, 401);
    let now = token::now_secs();
    let expired = forged_times(&stack, now - 600, now - 300);
    let raw = raw_list(&stack.broker_url, Some(&expired)).await;
    assert_eq!(raw.status, 401);
    assert!(raw.body.contains("expired"), "{}", raw.body);
    assert!(audited(&stack, "\"detail\":\"token has expired\"").await);
    assert!(audited(&stack, "\"detail\":\"missing bearer token\"").await);

    // Scope: 403 before MCP, audited.
    let narrow = zt_tests::run_ok(
        "zt-approval",
        &[
            "token",
            "issue",
            "--data-dir",
            &stack.dir(),
            "--agent",
            "agent:narrow",
            "--for",
            "alice",
            "--scope",
            "lookup_account",
        ],
    );
    let raw = raw_post(
        &stack.broker_url,
        Some(&narrow),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"issue_refund","arguments":{"order_id":"ord_1001","amount":100}}}"#,
    )
    .await;
    assert_eq!(raw.status, 403);
    assert!(audited(&stack, "\"status\":\"insufficient_scope\"").await);

    assert_eq!(
        refunds(&stack).await,
        before,
        "no bad input reached the backend"
    );

    // Rate limit: issue_refund allows a burst of 5 per session; the sixth is refused.
    let tiny = json!({"order_id": "ord_1001", "amount": 1});
    for i in 0..5 {
        let r = call(&agent, "issue_refund", tiny.clone()).await.unwrap();
        assert_eq!(status(&r), "ok", "refund {i}: {}", text(&r));
    }
    let r = call(&agent, "issue_refund", tiny).await.unwrap();
    assert_eq!(status(&r), "denied");
    assert!(text(&r).contains("rate limit"), "{}", text(&r));
    assert!(audited(&stack, "rate limit exceeded").await);
    assert_eq!(
        refunds(&stack).await,
        (before.0 + 5, before.1 + 5),
        "exactly the five allowed refunds ran"
    );
    // Other tools of the same session still work.
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok");
}
