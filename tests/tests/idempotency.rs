//! A retried refund with the same idempotency key runs once: the retry gets
//! the first refund back, from any session of the same human; the key cannot
//! be reused for a different refund; other humans' keys are their own.

use serde_json::json;
use sqlx::Connection;
use zt_tests::{Stack, audit_bodies, call, connect, status, text};

async fn refunded(stack: &Stack, order: &str) -> (i64, i64) {
    let mut conn = zt_tests::backend(&stack.data_dir).await;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM refunds WHERE order_id = ?1), refunded_cents FROM orders WHERE id = ?1",
    )
    .bind(order)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_refund_runs_once() {
    let stack = Stack::up("idempotency").expect("stack starts");
    let first_session = connect(&stack.broker_url, &stack.session_token("agent:a", "alice"))
        .await
        .unwrap();
    let args =
        json!({"order_id": "ord_1001", "amount": 3000, "idempotency_key": "case-4711-refund"});

    let first = call(&first_session, "issue_refund", args.clone())
        .await
        .unwrap();
    assert_eq!(status(&first), "ok", "{}", text(&first));
    let id = first.structured_content.as_ref().unwrap()["refund_id"].clone();
    assert_eq!(refunded(&stack, "ord_1001").await, (1, 3000));

    // The same call again, and from a new session of the same human after a crash.
    let again = call(&first_session, "issue_refund", args.clone())
        .await
        .unwrap();
    let later_session = connect(&stack.broker_url, &stack.session_token("agent:a", "alice"))
        .await
        .unwrap();
    let later = call(&later_session, "issue_refund", args.clone())
        .await
        .unwrap();
    for r in [&again, &later] {
        assert_eq!(status(r), "ok", "{}", text(r));
        let body = r.structured_content.as_ref().unwrap();
        assert_eq!(body["refund_id"], id);
        assert_eq!(body["replayed"], true);
    }
    assert_eq!(
        refunded(&stack, "ord_1001").await,
        (1, 3000),
        "refunded once"
    );

    // The key cannot be reused for a different refund.
    let other = call(
        &first_session,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 1000, "idempotency_key": "case-4711-refund"}),
    )
    .await
    .unwrap();
    assert_eq!(status(&other), "denied");
    assert!(text(&other).contains("already used"), "{}", text(&other));

    // Keys belong to the human they were used for.
    let bob = connect(&stack.broker_url, &stack.session_token("agent:b", "bob"))
        .await
        .unwrap();
    let r = call(
        &bob,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 100, "idempotency_key": "case-4711-refund"}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    assert_eq!(refunded(&stack, "ord_1001").await, (2, 3100));

    let bodies = audit_bodies(&stack.data_dir, "broker").await;
    assert_eq!(
        bodies
            .iter()
            .filter(|b| b.contains("idempotent retry"))
            .count(),
        2
    );
}
