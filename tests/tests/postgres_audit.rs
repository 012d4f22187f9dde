//! The audit store on PostgreSQL (a private server for the test run):
//! concurrent group-committed appends, checkpoints, append-only enforced by
//! triggers, and the same verifier finding the same tampering as on SQLite.

use std::collections::BTreeMap;
use std::sync::Arc;

use zt_proto::audit::{Kind, Problem, Record};
use zt_proto::db::{Db, Location};
use zt_proto::keys::{KeyPair, PublicKey};
use zt_proto::store::{self, AuditLog};
use zt_proto::with_db;
use zt_tests::pg::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chains_on_postgres_verify_and_catch_tampering() {
    let pg = Postgres::start().expect("a PostgreSQL server");
    let url = pg.database("audit").await.unwrap();
    let location = Location::Postgres(url);
    let pool = store::open_pool(&location).await.unwrap();
    // Two writers (two replicas) at once, each its own chain.
    let (k1, k2) = (KeyPair::from_seed(&[1; 32]), KeyPair::from_seed(&[2; 32]));
    let a = Arc::new(
        AuditLog::open(pool.clone(), "broker-a", k1.clone())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        AuditLog::open(pool.clone(), "broker-b", k2.clone())
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let log = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let rec = Record {
                    detail: format!("call {i}"),
                    ..Record::default()
                };
                log.append(Kind::Decision, rec).await.map(|s| s.seq)
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    a.close().await;
    b.close().await;

    let pinned: BTreeMap<String, PublicKey> = [
        ("broker-a".to_owned(), k1.public()),
        ("broker-b".to_owned(), k2.public()),
    ]
    .into();
    let reader = store::open_read_only(&location).await.unwrap();
    let report = store::verify(
        &reader,
        Some(&pinned),
        &BTreeMap::new(),
        store::Scope::Full,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.entries(), 402, "200 each plus two chain starts");
    assert!(
        report
            .verified
            .iter()
            .all(|v| v.unsigned_tail == 0 && v.checkpoints >= 1)
    );

    // The reader is read-only, and the database refuses rewrites.
    let Db::Postgres(raw) = &pool else {
        panic!("a PostgreSQL pool")
    };
    assert!(
        with_db!(&reader, p => sqlx::query("DELETE FROM audit_entries").execute(p).await.is_err()),
        "read-only reader"
    );
    let refused = sqlx::query("UPDATE audit_entries SET body = body || ' ' WHERE seq = 5")
        .execute(raw)
        .await
        .expect_err("append-only");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    assert!(
        sqlx::query("TRUNCATE audit_entries")
            .execute(raw)
            .await
            .is_err()
    );

    // Someone with the owner's rights disables the triggers and edits.
    sqlx::raw_sql(
        "ALTER TABLE audit_entries DISABLE TRIGGER USER; \
         UPDATE audit_entries SET body = replace(body, 'call 10', 'call 99') \
           WHERE chain = 'broker-a' AND body LIKE '%\"call 10\"%'",
    )
    .execute(raw)
    .await
    .unwrap();
    let report = store::verify(
        &reader,
        Some(&pinned),
        &BTreeMap::new(),
        store::Scope::Full,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    let f = report
        .findings
        .iter()
        .find(|f| f.chain == "broker-a")
        .expect("found");
    assert_eq!(f.problem, Problem::Hash, "{f:?}");
    assert_eq!(report.verified.len(), 1, "the other chain still verifies");
    reader.close().await;
    pool.close().await;
}
