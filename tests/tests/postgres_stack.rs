//! A stack on PostgreSQL with replicas (a private server for the test run):
//!
//! - two approval-service replicas and three broker replicas share one
//!   database; a decision taken on one approval replica reaches a broker
//!   waiting on the other, and a console watching either sees every event;
//! - the replica race for one grant, 1,000 trials: exactly one execution each;
//! - a broker replica killed with SIGKILL under load loses no acknowledged
//!   audit entry and leaves the survivors serving;
//! - every chain of every replica verifies together;
//! - the example backend (records, billing ledger) lives there too.

use std::time::Duration;

use serde_json::{Value, json};
use zt_proto::db::{Db, Location};
use zt_proto::pb::{DecideRequest, WatchEventsRequest};
use zt_proto::with_db;
use zt_tests::pg::Postgres;
use zt_tests::{Grpc, Stack, bin, call, connect, prepare_dir, spawn_replica, status, text};

fn body(r: &rmcp::model::CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

async fn count(url: &str, schema: &str, sql: &str) -> i64 {
    let db = Db::open(&Location::Postgres(url.to_owned()), schema, true)
        .await
        .unwrap();
    let n: i64 = with_db!(&db, p => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(p).await.unwrap());
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_postgres_database() {
    let pg = Postgres::start().expect("a PostgreSQL server");
    let url = pg.database("stack").await.unwrap();
    let dir = prepare_dir("pg-stack", 0, true);
    let d = dir.to_string_lossy().into_owned();
    let stack = Stack::up_with(&dir, Some(&url)).expect("stack starts on PostgreSQL");
    // Nothing of the stack's state went to SQLite files.
    assert!(!dir.join("approval").join("approval.db").exists());
    assert!(!dir.join("broker").join("broker.db").exists());

    let (mut approval_b, approval_b_url) =
        spawn_replica("zt-approval", &dir, "b", Some(&url), None);
    let (mut broker_b, broker_b_url) = spawn_replica("zt-broker", &dir, "b", Some(&url), None);
    let carol_token = stack.operator_token("carol", "approver", 500_000);
    let carol_a = Grpc::connect(&stack.approval_url, &carol_token).await;
    let carol_b = Grpc::connect(&approval_b_url, &carol_token).await;

    // A console on approval replica b sees the broker's events, which the
    // broker publishes to replica a.
    let mut watch = carol_b
        .client()
        .watch_events(carol_b.req(WatchEventsRequest { from_seq: 0 }))
        .await
        .unwrap()
        .into_inner();
    let token = stack.session_token("agent:pg", "alice");
    let here = connect(&stack.broker_url, &token).await.unwrap();
    let there = connect(&broker_b_url, &token).await.unwrap();
    let r = call(&here, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(ev)) = watch.message().await {
            if ev.tool == "lookup_account" && ev.kind == "tool_call" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(seen, "the other replica's console saw the call");

    // A broker waiting on approval replica a (WaitDecision, as the broker
    // waits, with the broker's own service token) hears a decision taken on
    // replica b.
    let r = call(
        &here,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 6000}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    let id = body(&r)["request_id"].as_str().unwrap().to_owned();
    let layout = zt_proto::stack::Layout::new(&dir);
    let info = layout.stack().unwrap();
    let key = zt_proto::keys::KeyPair::read(&layout.private("broker").join("service.key")).unwrap();
    let now = zt_proto::token::now_secs();
    let service = zt_proto::token::sign(
        &key,
        zt_proto::token::TokenType::Service,
        &zt_proto::token::ServiceClaims {
            iss: info.broker_audience.clone(),
            aud: info.approval_audience.clone(),
            sub: "zt-broker".into(),
            jti: zt_proto::random_id("svc_"),
            iat: now,
            nbf: now,
            exp: now + 60,
        },
    )
    .unwrap();
    let broker_a = Grpc::connect(&stack.approval_url, &service).await;
    let waiting = {
        let id = id.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let req = broker_a
                .client()
                .wait_decision(broker_a.req(zt_proto::pb::WaitDecisionRequest {
                    id,
                    timeout_ms: 20_000,
                }))
                .await
                .unwrap()
                .into_inner();
            (req.status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    carol_b
        .client()
        .decide(carol_b.req(DecideRequest {
            id: id.clone(),
            approve: true,
            reason: "cross".into(),
        }))
        .await
        .unwrap();
    let (seen, after) = waiting.await.unwrap();
    assert_eq!(seen, "approved");
    assert!(
        after < Duration::from_secs(5),
        "the waiter heard it at once ({after:?})"
    );
    let done = call(&here, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    assert_eq!(status(&done), "ok", "{}", text(&done));

    // The replica race, each request decided on the other approval replica.
    const TRIALS: usize = 1000;
    for trial in 0..TRIALS {
        let r = call(
            &here,
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "enterprise"}),
        )
        .await
        .unwrap();
        assert_eq!(
            status(&r),
            "awaiting_approval",
            "trial {trial}: {}",
            text(&r)
        );
        let id = body(&r)["request_id"].as_str().unwrap().to_owned();
        let decider = if trial % 2 == 0 { &carol_b } else { &carol_a };
        decider
            .client()
            .decide(decider.req(DecideRequest {
                id: id.clone(),
                approve: true,
                reason: "race".into(),
            }))
            .await
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        let (a, b) = tokio::join!(
            call(&here, "approval_status", json!({"request_id": id})),
            call(&there, "approval_status", json!({"request_id": id}))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            status(&a) == "ok" || status(&b) == "ok",
            "trial {trial}: {} / {}",
            text(&a),
            text(&b)
        );
    }
    let accepted = count(
        &url,
        "zt_audit",
        "SELECT COUNT(*) FROM audit_entries WHERE body LIKE '%\"kind\":\"grant_use\"%' AND body LIKE '%\"status\":\"accepted\"%'",
    )
    .await;
    // The race's grants and the cross-replica refund's: one execution each.
    assert_eq!(
        accepted,
        TRIALS as i64 + 1,
        "exactly one execution per grant, across replicas"
    );
    let redeemed = count(
        &url,
        "zt_broker",
        "SELECT COUNT(*) FROM grant_redemptions WHERE state = 'done'",
    )
    .await;
    assert_eq!(redeemed, TRIALS as i64 + 1);
    // The billing API wrote each plan change once, into PostgreSQL too.
    let changes = count(
        &url,
        "zt_backend",
        "SELECT COUNT(*) FROM plan_changes WHERE grant_id IS NOT NULL",
    )
    .await;
    assert_eq!(changes, TRIALS as i64);

    // A broker replica killed with SIGKILL under load.
    let (mut doomed, doomed_url) = spawn_replica("zt-broker", &dir, "k", Some(&url), None);
    let load_token = stack.session_token("agent:load", "alice");
    let load = tokio::spawn(async move {
        let agent = connect(&doomed_url, &load_token).await.unwrap();
        let mut ok = 0;
        for _ in 0..5000 {
            match call(&agent, "lookup_account", json!({"account_id": "acct_1001"})).await {
                Ok(r) if status(&r) == "ok" => ok += 1,
                _ => break,
            }
        }
        ok
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    doomed.kill().unwrap();
    let _ = doomed.wait();
    let served = load.await.unwrap();
    assert!(served > 0, "the doomed replica served before it died");
    // Every call it acknowledged is in its chain: two entries each.
    let entries = count(
        &url,
        "zt_audit",
        "SELECT COUNT(*) FROM audit_entries WHERE chain = 'broker-k' AND body LIKE '%\"kind\":\"result\"%'",
    )
    .await;
    assert!(
        entries >= served as i64,
        "{entries} results for {served} answered calls"
    );
    // The survivors keep serving.
    let r = call(&here, "lookup_account", json!({"account_id": "acct_1002"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok");
    let r = call(&there, "lookup_account", json!({"account_id": "acct_1002"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok");

    // All chains of all replicas verify together, against the pinned keys.
    let _ = broker_b.kill();
    let _ = approval_b.kill();
    let _ = broker_b.wait();
    let _ = approval_b.wait();
    let out = bin("zt-console")
        .args([
            "audit",
            "verify",
            "--json",
            "--no-state",
            "--data-dir",
            &d,
            "--database",
            &url,
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let chains: Vec<&str> = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["chain"].as_str())
        .collect();
    for chain in ["approval", "approval-b", "broker", "broker-b", "broker-k"] {
        assert!(chains.contains(&chain), "{chain} in {chains:?}");
    }
    assert_eq!(report["keys"], "pinned");
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `sql` on a fresh connection at `url`; the error's text on failure.
async fn exec(url: &str, sql: &str) -> Result<u64, String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| e.to_string());
    let _ = conn.close().await;
    done
}

/// `sql` as `who` fails with an error containing `why` (never a connection
/// failure, never success).
async fn refused(url: &str, who: &str, sql: &str, why: &str) {
    match exec(url, sql).await {
        Ok(n) => panic!("{who} ran `{sql}` ({n} rows)"),
        Err(e) => assert!(e.contains(why), "{who}: `{sql}` failed otherwise: {e}"),
    }
}

/// `url` (postgres://[user[:password]@]host...) for another user.
fn as_role(url: &str, role: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{role}:{password}@{host}")
}

/// Each service connects as its own PostgreSQL role, set up by the
/// services' `migrate` commands: the stack serves reads and money moves,
/// while each role is held to its own rows and its own audit chains.
/// Before, every service shared one role: the broker's could append an
/// `approval` entry ("approved by carol"), flip a request to approved or
/// rewrite the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_connects_as_a_role_held_to_its_own_rows_and_chains() {
    let pg = Postgres::start().expect("a PostgreSQL server");
    let admin = pg.database("roles").await.unwrap();
    // Roles are the server's, not the database's: unique names per run.
    let tag: String = zt_proto::random_id("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let password = format!("pw-{tag}");
    let role = |service: &str| format!("zt_{tag}_{service}");
    let url = |service: &str| as_role(&admin, &role(service), &password);
    for service in ["approval", "broker", "billing", "auditor"] {
        exec(
            &admin,
            &format!("CREATE ROLE {} LOGIN PASSWORD '{password}'", role(service)),
        )
        .await
        .unwrap();
    }

    // A service's role cannot set up the database itself.
    let out = bin("zt-broker")
        .args(["migrate", "--database", &url("broker")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("may not create it"), "{stderr}");
    assert!(!stderr.contains(&password), "{stderr}");

    // The administrator sets it up; a superuser, or a role that does not
    // exist, is refused as a service's role.
    let migrate = |program: &str, args: &[&str]| {
        let out = bin(program)
            .args(["migrate", "--database", &admin])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let superuser = admin
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['@', ':']).next())
        .unwrap()
        .to_owned();
    if pg.dir().is_some() {
        // The private server's administrator is its superuser.
        let (code, stderr) = migrate("zt-broker", &["--role", &superuser]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("superuser"), "{stderr}");
    }
    let (code, stderr) = migrate("zt-broker", &["--role", "zt_nobody_here"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    for (program, args) in [
        (
            "zt-approval",
            vec!["--role", &role("approval"), "--auditor", &role("auditor")],
        ),
        ("zt-broker", vec!["--role", &role("broker")]),
        (
            "zt-billing",
            vec!["--role", &role("billing"), "--reader", &role("broker")],
        ),
    ] {
        let (code, stderr) = migrate(program, &args);
        assert_eq!(code, Some(0), "{program} migrate: {stderr}");
    }

    // The stack runs with each service as its role: reads, a refund the
    // policy allows, a session issued.
    let dir = prepare_dir("pg-roles", 5, false);
    let d = dir.to_string_lossy().into_owned();
    let stack = Stack::up_with_roles(&dir, &url("approval"), &url("broker"), &url("billing"))
        .expect("stack starts with a role per service");
    let token = stack.session_token("agent:roles", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    for (tool, args) in [
        ("lookup_account", json!({"account_id": "acct_1001"})),
        (
            "list_orders",
            json!({"account_id": "acct_1001", "limit": 5}),
        ),
        (
            "issue_refund",
            json!({"order_id": "ord_1002", "amount": 1500}),
        ),
        // Read last: a session that read a document is tainted, and its
        // refunds wait for an operator.
        ("fetch_document", json!({"doc_id": "doc_shipping_faq"})),
    ] {
        let r = call(&agent, tool, args).await.unwrap();
        assert_eq!(status(&r), "ok", "{tool}: {}", text(&r));
    }

    // The broker's role.
    let broker = url("broker");
    for sql in [
        "INSERT INTO zt_audit.audit_entries (chain, seq, body, hash, sig, mac) \
         VALUES ('approval', 999999, '{}', 'h', '', '')",
        "INSERT INTO zt_audit.audit_checkpoints (chain, seq, time_ms, body, hash, sig) \
         VALUES ('approval', 1, 0, '{}', 'h', '')",
        "INSERT INTO zt_audit.audit_chains (chain, public_key, created_ms) \
         VALUES ('approval-x', 'k', 0)",
    ] {
        refused(&broker, "broker", sql, "row-level security").await;
    }
    for sql in [
        "UPDATE zt_approval.requests SET status = 'approved'",
        "SELECT COUNT(*) FROM zt_approval.requests",
        "INSERT INTO zt_approval.revoked_sessions (session_id) VALUES ('x')",
    ] {
        refused(
            &broker,
            "broker",
            sql,
            "permission denied for schema zt_approval",
        )
        .await;
    }
    for sql in [
        "UPDATE zt_backend.orders SET refunded_cents = 0",
        "DELETE FROM zt_backend.refunds",
        "SELECT COUNT(*) FROM zt_backend.plan_changes",
        "UPDATE zt_audit.audit_entries SET body = '{}'",
    ] {
        refused(&broker, "broker", sql, "permission denied for table").await;
    }
    for sql in [
        "ALTER TABLE zt_audit.audit_entries DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE zt_audit.audit_entries DISABLE TRIGGER ALL",
        "DROP POLICY zt_append_approval ON zt_audit.audit_entries",
    ] {
        refused(&broker, "broker", sql, "must be owner").await;
    }
    refused(
        &broker,
        "broker",
        "CREATE TABLE zt_audit.shadow (chain TEXT)",
        "permission denied for schema zt_audit",
    )
    .await;
    // What it may do: read every chain and the records it serves.
    exec(
        &broker,
        "SELECT COUNT(*) FROM zt_audit.audit_entries WHERE chain = 'approval'",
    )
    .await
    .unwrap();
    exec(&broker, "SELECT COUNT(*) FROM zt_backend.accounts")
        .await
        .unwrap();

    // The approval service's role: not the broker's chain, not its grant
    // redemptions, not the ledger.
    let approval = url("approval");
    refused(
        &approval,
        "approval",
        "INSERT INTO zt_audit.audit_entries (chain, seq, body, hash, sig, mac) \
         VALUES ('broker', 999999, '{}', 'h', '', '')",
        "row-level security",
    )
    .await;
    refused(
        &approval,
        "approval",
        "DELETE FROM zt_broker.grant_redemptions",
        "permission denied for schema zt_broker",
    )
    .await;
    refused(
        &approval,
        "approval",
        "UPDATE zt_backend.orders SET refunded_cents = 0",
        "permission denied for schema zt_backend",
    )
    .await;
    // The billing API's role: no audit chain at all.
    refused(
        &url("billing"),
        "billing",
        "INSERT INTO zt_audit.audit_entries (chain, seq, body, hash, sig, mac) \
         VALUES ('billing', 0, '{}', 'h', '', '')",
        "permission denied for schema zt_audit",
    )
    .await;

    // Every service wrote its own chain; an auditor's role verifies them.
    drop(agent);
    drop(stack.stop_keep());
    let out = bin("zt-console")
        .args([
            "audit",
            "verify",
            "--json",
            "--no-state",
            "--data-dir",
            &d,
            "--database",
            &url("auditor"),
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let entries = |chain: &str| {
        report["chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["chain"] == chain)
            .and_then(|c| c["entries"].as_u64())
            .unwrap_or(0)
    };
    assert!(entries("approval") > 0 && entries("broker") > 0, "{report}");
}
