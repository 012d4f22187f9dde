//! Every tamper class against a real audit database, each detected by
//! `zt-console audit verify` with the exact finding: a modified, deleted,
//! inserted or reordered entry; a truncated tail; a forged checkpoint
//! signature and a wrong pinned key; a log rolled back to an older copy.
//!
//! A stack runs a few calls and stops (its writers sign their heads); each
//! case copies the stopped data directory, tampers with the copy the way
//! someone with write access to the file would (dropping the append-only
//! triggers first), and runs the verifier on it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sqlx::Connection;
use zt_tests::{Stack, bin, call, connect, temp_dir};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A copy of the stopped stack's data directory.
fn copy_of(dir: &Path, tag: &str) -> PathBuf {
    let to = temp_dir(tag);
    copy_dir(dir, &to);
    to
}

async fn sql(dir: &Path, statements: &[&str]) {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for trigger in [
        "audit_entries_no_update",
        "audit_entries_no_delete",
        "audit_checkpoints_no_update",
        "audit_checkpoints_no_delete",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS {trigger}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let _ = conn.close().await;
}

/// Runs `audit verify --json`; returns the exit code and the report.
fn verify(dir: &Path, state: Option<&Path>) -> (i32, Value) {
    let mut cmd = bin("zt-console");
    cmd.args(["audit", "verify", "--json", "--data-dir"])
        .arg(dir);
    match state {
        Some(s) => cmd.arg("--state").arg(s),
        None => cmd.arg("--no-state"),
    };
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), report)
}

/// The single finding of a tampered log: (chain, seq, problem).
fn finding(dir: &Path) -> (String, u64, String) {
    let (code, report) = verify(dir, None);
    assert_eq!(code, 1, "tampered log exits 1: {report}");
    assert_eq!(report["intact"], false);
    let f = &report["findings"][0];
    (
        f["chain"].as_str().unwrap_or_default().to_owned(),
        f["seq"].as_u64().unwrap_or_default(),
        f["problem"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn broker_entries(dir: &Path) -> u64 {
    let url = format!("sqlite://{}?mode=ro", dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_entries WHERE chain = 'broker'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    u64::try_from(n).unwrap()
}

async fn run_calls(stack: &Stack, n: usize) {
    let agent = connect(&stack.broker_url, &stack.session_token("agent:t", "alice"))
        .await
        .unwrap();
    for i in 0..n {
        let id = if i % 2 == 0 { "acct_1001" } else { "acct_1002" };
        call(&agent, "lookup_account", json!({ "account_id": id }))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tamper_class_is_detected_with_its_finding() {
    let stack = Stack::up("tamper").expect("stack starts");
    run_calls(&stack, 6).await;
    let base = stack.stop_keep();

    // Intact after a clean stop: every entry is covered by a checkpoint.
    let (code, report) = verify(&base, None);
    assert_eq!(code, 0, "{report}");
    let broker = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == "broker")
        .cloned()
        .unwrap();
    assert_eq!(broker["unsigned_tail"], 0, "{broker}");
    assert!(broker["checkpoints"].as_u64().unwrap() >= 1);
    let last = broker_entries(&base).await;
    assert!(last >= 12, "two entries per call: {last}");

    // Modified: the tool of entry #5 edited in place.
    let d = copy_of(&base, "t-edit");
    sql(
        &d,
        &[
            "UPDATE audit_entries SET body = replace(body, 'lookup_account', 'issue_refund') \
               WHERE chain = 'broker' AND seq = 5",
        ],
    )
    .await;
    assert_eq!(finding(&d), ("broker".into(), 5, "hash".into()));

    // Deleted.
    let d = copy_of(&base, "t-delete");
    sql(
        &d,
        &["DELETE FROM audit_entries WHERE chain = 'broker' AND seq = 5"],
    )
    .await;
    assert_eq!(finding(&d), ("broker".into(), 5, "gap".into()));

    // Inserted: a forged entry slipped in as #5, later entries renumbered.
    let d = copy_of(&base, "t-insert");
    sql(
        &d,
        &[
            "UPDATE audit_entries SET seq = -seq WHERE chain = 'broker' AND seq >= 5",
            "UPDATE audit_entries SET seq = 1 - seq WHERE chain = 'broker' AND seq < 0",
            "INSERT INTO audit_entries (chain, seq, body, hash, sig) \
         SELECT chain, 5, body, hash, sig FROM audit_entries WHERE chain = 'broker' AND seq = 4",
        ],
    )
    .await;
    assert_eq!(finding(&d), ("broker".into(), 5, "misplaced".into()));

    // Reordered: #5 and #6 swapped.
    let d = copy_of(&base, "t-reorder");
    sql(
        &d,
        &[
            "UPDATE audit_entries SET seq = 1000005 WHERE chain = 'broker' AND seq = 5",
            "UPDATE audit_entries SET seq = 5 WHERE chain = 'broker' AND seq = 6",
            "UPDATE audit_entries SET seq = 6 WHERE chain = 'broker' AND seq = 1000005",
        ],
    )
    .await;
    assert_eq!(finding(&d), ("broker".into(), 5, "misplaced".into()));

    // Truncated tail: the last three entries gone, the checkpoints kept.
    let d = copy_of(&base, "t-truncate");
    let cut = format!(
        "DELETE FROM audit_entries WHERE chain = 'broker' AND seq > {}",
        last - 3
    );
    sql(&d, &[cut.as_str()]).await;
    assert_eq!(finding(&d), ("broker".into(), last - 2, "truncated".into()));

    // Forged signature on the latest checkpoint.
    let d = copy_of(&base, "t-forge");
    sql(&d, &["UPDATE audit_checkpoints SET sig = substr('00000000000000000000000000000000', 1, 32) || substr(sig, 33) \
               WHERE chain = 'broker' AND rowid = (SELECT MAX(rowid) FROM audit_checkpoints WHERE chain = 'broker')"]).await;
    let forged = finding(&d);
    assert_eq!(
        (forged.0.as_str(), forged.2.as_str()),
        ("broker", "signature")
    );

    // A chain whose pinned key is not the one it was written with.
    let d = copy_of(&base, "t-wrongkey");
    std::fs::copy(
        d.join("public").join("audit-approval.pem"),
        d.join("public").join("audit-broker.pem"),
    )
    .unwrap();
    let wrong = finding(&d);
    assert_eq!(
        (wrong.0.as_str(), wrong.2.as_str()),
        ("broker", "signature")
    );

    // Truncated with its covering checkpoints, by someone careful: the log
    // is consistent on its own, but a verifier that saw more before says so.
    let d = copy_of(&base, "t-rollback");
    let state = d.join("verifier-state.json");
    let (code, _) = verify(&d, Some(&state));
    assert_eq!(code, 0);
    sql(
        &d,
        &[
            "DELETE FROM audit_entries WHERE chain = 'broker' AND seq > 3",
            "DELETE FROM audit_checkpoints WHERE chain = 'broker' AND seq > 3",
        ],
    )
    .await;
    let (code, report) = verify(&d, Some(&state));
    assert_eq!(code, 1, "{report}");
    let f = &report["findings"][0];
    assert_eq!(f["chain"], "broker");
    assert_eq!(f["problem"], "rollback", "{report}");
    assert_eq!(f["seq"], 4);

    // Rolled back to an older copy of the whole file.
    let old = copy_of(&base, "t-old");
    let stack = Stack::up_at(&base).expect("stack restarts");
    let state = base.join("verifier-state.json");
    run_calls(&stack, 2).await;
    let base = stack.stop_keep();
    let (code, report) = verify(&base, Some(&state));
    assert_eq!(code, 0, "{report}");
    for file in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(base.join(file));
        if old.join(file).exists() {
            std::fs::copy(old.join(file), base.join(file)).unwrap();
        }
    }
    let (code, report) = verify(&base, Some(&state));
    assert_eq!(code, 1, "{report}");
    let rolled_back = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["chain"] == "broker" && f["problem"] == "rollback");
    assert!(rolled_back, "{report}");
    for dir in [&base, &old] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What anyone who can INSERT into the audit database (another service's
/// user on PostgreSQL, any writer of the file) can do without a writer's
/// key: store the next entry of its chain, correctly linked and hashed.
async fn forge_approval(dir: &Path, time_ms: i64) -> u64 {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (seq, hash): (i64, String) = sqlx::query_as(
        "SELECT seq, hash FROM audit_entries WHERE chain = 'approval' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let entry = zt_proto::audit::Entry {
        v: 1,
        chain: "approval".into(),
        seq: u64::try_from(seq).unwrap() + 1,
        time_ms,
        kind: zt_proto::audit::Kind::Approval,
        record: zt_proto::audit::Record {
            subject: "carol".into(),
            request_id: "req_forged".into(),
            decision: "approve".into(),
            status: "approved".into(),
            detail: "approved by carol".into(),
            ..Default::default()
        },
        prev_hash: hash,
    };
    let body = zt_proto::canonical::canonical_of(&entry).unwrap();
    let hash =
        zt_proto::canonical::digest_hex(zt_proto::canonical::Domain::AuditLeaf, body.as_bytes());
    // The append-only triggers allow an INSERT: nothing is dropped here.
    sqlx::query("INSERT INTO audit_entries (chain, seq, body, hash, sig) VALUES ('approval', $1, $2, $3, '')")
        .bind(seq + 1)
        .bind(&body)
        .bind(&hash)
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    entry.seq
}

/// A consistent copy of a running stack's data directory (the audit log
/// through `VACUUM INTO`, so the copy is one transaction's view).
async fn snapshot(dir: &Path, tag: &str) -> PathBuf {
    let to = copy_of(dir, tag);
    for file in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(to.join(file));
    }
    let url = format!("sqlite://{}?mode=ro", dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        to.join("audit.db").display()
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tail_is_named_and_never_signed_by_the_writer() {
    let stack = Stack::up("forge").expect("stack starts");
    run_calls(&stack, 2).await;
    // A copy taken while the writers run (no closing checkpoint yet),
    // forged an hour ahead: never "not yet signed", a finding.
    let running = snapshot(Path::new(&stack.dir()), "forge-future").await;
    let ahead = forge_approval(&running, zt_proto::now_ms() + 3_600_000).await;
    assert_eq!(finding(&running), ("approval".into(), ahead, "time".into()));
    let dir = stack.stop_keep();

    // After a clean stop, a forged approval dated now: named at once.
    let forged = forge_approval(&dir, zt_proto::now_ms()).await;
    assert_eq!(finding(&dir), ("approval".into(), forged, "foreign".into()));

    // The approval service restarts: it does not continue from the forgery
    // nor sign it into a checkpoint of its own; the finding stays.
    let stack = Stack::up_at(&dir).expect("stack restarts");
    run_calls(&stack, 1).await;
    let dir = stack.stop_keep();
    assert_eq!(finding(&dir), ("approval".into(), forged, "foreign".into()));
    let url = format!("sqlite://{}?mode=ro", dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let named: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_checkpoints WHERE chain = 'approval' AND body LIKE '%\"foreign\":{%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        named >= 1,
        "the writer signed a checkpoint naming the forgery"
    );
    let after: Option<String> =
        sqlx::query_scalar("SELECT body FROM audit_entries WHERE chain = 'approval' AND seq = $1")
            .bind(i64::try_from(forged + 1).unwrap())
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    let forged_hash: String =
        sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = 'approval' AND seq = $1")
            .bind(i64::try_from(forged).unwrap())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(
        after.is_none_or(|a| !a.contains(&forged_hash)),
        "the writer's next entry does not link to the forgery"
    );
    let _ = conn.close().await;
    for d in [&dir, &running] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `audit verify --incremental --state FILE --json` on `dir`.
fn verify_incremental(dir: &Path, state: &Path) -> (i32, Value) {
    let out = bin("zt-console")
        .args(["audit", "verify", "--json", "--incremental", "--data-dir"])
        .arg(dir)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), report)
}

fn chain_of<'a>(report: &'a Value, chain: &str) -> &'a Value {
    report["chains"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["chain"] == chain))
        .unwrap_or_else(|| panic!("no chain {chain}: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_verification_reads_from_the_trusted_checkpoint() {
    let stack = Stack::up("incr").expect("stack starts");
    run_calls(&stack, 3).await;
    let dir = stack.stop_keep();
    let state = temp_dir("incr-state").join("state.json");
    let (code, report) = verify(&dir, Some(&state));
    assert_eq!(code, 0, "{report}");
    let trusted = chain_of(&report, "broker")["latest"]["seq"]
        .as_u64()
        .unwrap();
    assert!(trusted >= 6, "{report}");

    // The stack runs on; the log grows.
    let stack = Stack::up_at(&dir).expect("stack restarts");
    run_calls(&stack, 3).await;
    let dir = stack.stop_keep();
    let last = broker_entries(&dir).await;
    assert!(last > trusted + 4, "{last} after {trusted}");

    let incremental = |tag: &str| {
        let copy = copy_of(&dir, tag);
        let s = copy.join("verifier-state.json");
        std::fs::copy(&state, &s).unwrap();
        (copy, s)
    };

    // Intact: only the trusted checkpoint's entry and what follows is read.
    let (d, s) = incremental("incr-ok");
    let (code, report) = verify_incremental(&d, &s);
    assert_eq!(code, 0, "{report}");
    let broker = chain_of(&report, "broker");
    assert_eq!(broker["checked_from"], trusted, "{broker}");
    assert_eq!(broker["entries"], last, "{broker}");
    // A full run of the same log reads from #1.
    let (code, report) = verify(&d, None);
    assert_eq!(code, 0, "{report}");
    assert_eq!(chain_of(&report, "broker")["checked_from"], 1);

    // An entry after the trusted checkpoint edited: found.
    let (d, s) = incremental("incr-after");
    let target = format!(
        "UPDATE audit_entries SET body = body || ' ' \
         WHERE chain = 'broker' AND seq = {}",
        trusted + 2
    );
    sql(&d, &[target.as_str()]).await;
    let (code, report) = verify_incremental(&d, &s);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["findings"][0]["seq"], trusted + 2, "{report}");
    assert_eq!(report["findings"][0]["problem"], "hash", "{report}");

    // The trusted entry itself replaced: found, at it.
    let (d, s) = incremental("incr-at");
    let target = format!(
        "UPDATE audit_entries SET hash = '{}' WHERE chain = 'broker' AND seq = {trusted}",
        "ab".repeat(32)
    );
    sql(&d, &[target.as_str()]).await;
    let (code, report) = verify_incremental(&d, &s);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["findings"][0]["seq"], trusted, "{report}");

    // The trusted checkpoint deleted: a rollback.
    let (d, s) = incremental("incr-gone");
    let target =
        format!("DELETE FROM audit_checkpoints WHERE chain = 'broker' AND seq = {trusted}");
    sql(&d, &[target.as_str()]).await;
    let (code, report) = verify_incremental(&d, &s);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["findings"][0]["problem"], "rollback", "{report}");

    // An entry before it edited: not read again by an incremental run (as
    // documented), found by a full one.
    let (d, s) = incremental("incr-before");
    sql(
        &d,
        &["UPDATE audit_entries SET body = body || ' ' \
           WHERE chain = 'broker' AND seq = 2"],
    )
    .await;
    let (code, report) = verify_incremental(&d, &s);
    assert_eq!(code, 0, "{report}");
    let (code, report) = verify(&d, None);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["findings"][0]["seq"], 2, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
