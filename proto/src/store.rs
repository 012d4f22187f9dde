//! SQL storage of audit chains (feature `store`).
//!
//! One table of entries keyed by `(chain, seq)` and one of chains with the
//! public key each was started with. Append-only is enforced by the
//! database too: triggers abort any `UPDATE` or `DELETE` of an entry, so a
//! bug cannot rewrite history; only someone editing the file by hand can,
//! and [`verify`] catches that.
//!
//! An append returns only after the entry is committed (`synchronous=FULL`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, ChainWriter, Finding, Kind, Problem, Record, Sealed, Verified};
use crate::keys::{KeyPair, PublicKey};

/// Errors of the audit store. Callers on an authorization path must treat
/// any of them as "refuse the action".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("audit database: {0}")]
    Db(#[from] sqlx::Error),
    /// The chain exists with another key.
    #[error("audit chain `{0}` was started with a different key")]
    KeyMismatch(String),
    /// The entry could not be encoded.
    #[error("audit entry could not be encoded: {0}")]
    Encode(String),
    /// The batch holding the entry could not be written.
    #[error("audit database: {0}")]
    Batch(String),
    /// The writer task has stopped.
    #[error("audit writer stopped")]
    Closed,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_chains (
        chain TEXT PRIMARY KEY NOT NULL,
        public_key TEXT NOT NULL,
        created_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_entries (
        chain TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL,
        sig TEXT NOT NULL,
        PRIMARY KEY (chain, seq))",
    "CREATE TRIGGER IF NOT EXISTS audit_entries_no_update BEFORE UPDATE ON audit_entries
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_entries_no_delete BEFORE DELETE ON audit_entries
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_chains_no_update BEFORE UPDATE ON audit_chains
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
];

/// The options every SQLite database of a stack is opened with: created if
/// missing, WAL, `synchronous=FULL` (a commit is on disk when it returns),
/// foreign keys on, and a busy timeout for the processes sharing a file.
pub fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
}

/// Opens a pool on the SQLite database at `path` with [`sqlite_options`].
pub async fn open_sqlite(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(sqlite_options(path))
        .await
}

/// Opens (creating if needed) the audit database at `path`.
pub async fn open_pool(path: &Path) -> Result<SqlitePool, StoreError> {
    let pool = open_sqlite(path).await?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&pool).await?;
    }
    Ok(pool)
}

/// Most entries written in one group commit.
pub const MAX_BATCH: usize = 64;

/// One writer's chain in the store.
///
/// Appends are group-committed: a single writer task takes every append
/// queued while the previous batch was being written, seals them in order,
/// writes them as one multi-row `INSERT` (one transaction, one fsync), and
/// only then answers each caller. Every entry is durable before its
/// `append` returns; concurrent callers share the fsync.
#[derive(Debug)]
pub struct AuditLog {
    pool: SqlitePool,
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Job {
    kind: Kind,
    record: Record,
    reply: oneshot::Sender<Result<Sealed, StoreError>>,
}

impl AuditLog {
    /// Opens chain `chain` for appending with `key`. A new chain starts with a
    /// `chain_start` entry; an existing chain must have been started with the
    /// same key.
    pub async fn open(pool: SqlitePool, chain: &str, key: KeyPair) -> Result<AuditLog, StoreError> {
        let public = key.public().to_hex();
        let existing: Option<String> =
            sqlx::query_scalar("SELECT public_key FROM audit_chains WHERE chain = ?")
                .bind(chain)
                .fetch_optional(&pool)
                .await?;
        match existing {
            Some(k) if k != public => return Err(StoreError::KeyMismatch(chain.to_owned())),
            Some(_) => {}
            None => {
                sqlx::query(
                    "INSERT INTO audit_chains (chain, public_key, created_ms) VALUES (?, ?, ?)",
                )
                .bind(chain)
                .bind(&public)
                .bind(crate::now_ms())
                .execute(&pool)
                .await?;
            }
        }
        let last = sqlx::query(
            "SELECT seq, hash FROM audit_entries WHERE chain = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain)
        .fetch_optional(&pool)
        .await?
        .map(|row| {
            let seq: i64 = row.get(0);
            (u64::try_from(seq).unwrap_or(0), row.get::<String, _>(1))
        });
        let fresh = last.is_none();
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(
            pool.clone(),
            ChainWriter::new(chain.to_owned(), key, last),
            rx,
        ));
        let log = AuditLog { pool, jobs };
        if fresh {
            log.append(
                Kind::ChainStart,
                Record {
                    subject: chain.to_owned(),
                    detail: format!("chain started with key {public}"),
                    ..Record::default()
                },
            )
            .await?;
        }
        Ok(log)
    }

    /// The pool (for readers in the same process).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Appends one entry and returns it once it is durably stored.
    pub async fn append(&self, kind: Kind, record: Record) -> Result<Sealed, StoreError> {
        self.submit(kind, record).await.durable().await
    }

    /// Queues one entry in chain order and returns at once; the entry is
    /// stored only when [`Pending::durable`] says so. Entries submitted one
    /// after another are sealed in that order and usually share one commit,
    /// so a caller that needs two entries durable waits for one commit.
    pub async fn submit(&self, kind: Kind, record: Record) -> Pending {
        let (reply, answer) = oneshot::channel();
        let queued = self
            .jobs
            .send(Job {
                kind,
                record,
                reply,
            })
            .await
            .is_ok();
        Pending { answer, queued }
    }
}

/// An entry handed to the writer, not yet known to be stored.
#[derive(Debug)]
#[must_use = "an audit entry is not stored until `durable` says so"]
pub struct Pending {
    answer: oneshot::Receiver<Result<Sealed, StoreError>>,
    queued: bool,
}

impl Pending {
    /// Waits until the entry is durably stored (or failed to be).
    pub async fn durable(self) -> Result<Sealed, StoreError> {
        if !self.queued {
            return Err(StoreError::Closed);
        }
        self.answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer task: group commit, in chain order.
async fn write_batches(pool: SqlitePool, mut writer: ChainWriter, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Seal in order; an entry that cannot be encoded is answered at once
        // and takes no place in the chain.
        let before = writer.clone();
        let now = crate::now_ms();
        let mut batch: Vec<(Sealed, oneshot::Sender<Result<Sealed, StoreError>>)> = Vec::new();
        for job in jobs {
            match writer.seal(job.kind, job.record, now) {
                Ok(sealed) => {
                    writer.advance(&sealed);
                    batch.push((sealed, job.reply));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(StoreError::Encode(e.to_string())));
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        match insert(&pool, batch.iter().map(|(s, _)| s)).await {
            Ok(()) => {
                for (sealed, reply) in batch {
                    let _ = reply.send(Ok(sealed));
                }
            }
            Err(e) => {
                // Nothing of the batch is stored: the chain continues from
                // where it was, and every caller learns its entry failed.
                writer = before;
                let why = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Batch(why.clone())));
                }
            }
        }
    }
}

/// Writes sealed entries as one multi-row statement (one transaction).
async fn insert<'a>(
    pool: &SqlitePool,
    entries: impl Iterator<Item = &'a Sealed>,
) -> Result<(), sqlx::Error> {
    let entries: Vec<&Sealed> = entries.collect();
    let mut sql = String::from("INSERT INTO audit_entries (chain, seq, body, hash, sig) VALUES ");
    for i in 0..entries.len() {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?, ?)"
        });
    }
    // Only placeholders are formatted into the statement.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for e in entries {
        query = query
            .bind(e.chain.clone())
            .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
            .bind(e.body.clone())
            .bind(e.hash.clone())
            .bind(e.sig.clone());
    }
    query.execute(pool).await?;
    Ok(())
}

/// The chains recorded in the store, with the key each was started with.
pub async fn chains(pool: &SqlitePool) -> Result<BTreeMap<String, String>, StoreError> {
    let rows = sqlx::query("SELECT chain, public_key FROM audit_chains ORDER BY chain")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect())
}

/// All entries of `chain` in stored order (by sequence number).
pub async fn entries(pool: &SqlitePool, chain: &str) -> Result<Vec<Sealed>, StoreError> {
    let rows = sqlx::query(
        "SELECT chain, seq, body, hash, sig FROM audit_entries WHERE chain = ? ORDER BY seq, rowid",
    )
    .bind(chain)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Sealed {
            chain: r.get(0),
            seq: u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            body: r.get(2),
            hash: r.get(3),
            sig: r.get(4),
        })
        .collect())
}

/// Where the verifier's trust in a chain's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A public key pinned outside the database.
    Pinned,
    /// Only the key recorded in the database (weaker: whoever can rewrite
    /// the database can rewrite the key).
    Database,
}

/// The result of verifying every chain in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Chains that verified.
    pub verified: Vec<Verified>,
    /// The first bad entry of each chain that did not.
    pub findings: Vec<Finding>,
    /// Where the keys came from.
    pub keys: KeySource,
}

impl Report {
    /// Whether every chain verified.
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }

    /// Total entries verified.
    pub fn entries(&self) -> u64 {
        self.verified.iter().map(|v| v.entries).sum()
    }
}

/// Verifies every chain in the store. With `pinned` keys, a chain without a
/// pinned key, a pinned chain missing from the store, or a stored key that
/// differs from the pinned one is a finding; without, the stored keys are used.
pub async fn verify(
    pool: &SqlitePool,
    pinned: Option<&BTreeMap<String, PublicKey>>,
) -> Result<Report, StoreError> {
    let stored = chains(pool).await?;
    let mut report = Report {
        verified: Vec::new(),
        findings: Vec::new(),
        keys: if pinned.is_some() {
            KeySource::Pinned
        } else {
            KeySource::Database
        },
    };
    let finding = |chain: &str, problem: Problem, detail: String| Finding {
        chain: chain.to_owned(),
        seq: 0,
        problem,
        detail,
    };
    if let Some(pinned) = pinned {
        for chain in pinned.keys() {
            if !stored.contains_key(chain) {
                report.findings.push(finding(
                    chain,
                    Problem::Gap,
                    format!("chain `{chain}` has a pinned key but is missing from the log"),
                ));
            }
        }
    }
    for (chain, stored_key) in &stored {
        let key = match pinned {
            Some(p) => match p.get(chain) {
                Some(k) if k.to_hex() == *stored_key => k.clone(),
                Some(_) => {
                    report.findings.push(finding(
                        chain,
                        Problem::Signature,
                        format!("chain `{chain}` records a key that differs from the pinned key"),
                    ));
                    continue;
                }
                None => {
                    report.findings.push(finding(
                        chain,
                        Problem::Misplaced,
                        format!(
                            "chain `{chain}` has no pinned key (not written by a known writer)"
                        ),
                    ));
                    continue;
                }
            },
            None => match PublicKey::from_hex(stored_key) {
                Some(k) => k,
                None => {
                    report.findings.push(finding(
                        chain,
                        Problem::Malformed,
                        format!("chain `{chain}` records a malformed key"),
                    ));
                    continue;
                }
            },
        };
        let rows = entries(pool, chain).await?;
        match audit::verify_chain(chain, &rows, &key) {
            Ok(v) => report.verified.push(v),
            Err(f) => report.findings.push(f),
        }
    }
    Ok(report)
}

/// Opens an existing audit database read-only, for verification: the
/// verifier must never create, migrate or write what it checks.
pub async fn open_read_only(path: &Path) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_verifiable_chain() {
        let dir = std::env::temp_dir().join(crate::random_id("zt-store-"));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = open_pool(&dir.join("audit.db")).await.unwrap();
        let key = KeyPair::from_seed(&[3; 32]);
        let log = Arc::new(
            AuditLog::open(pool.clone(), "w", key.clone())
                .await
                .unwrap(),
        );
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let rec = Record {
                        detail: i.to_string(),
                        ..Record::default()
                    };
                    log.append(Kind::Decision, rec).await.map(|s| s.seq)
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (2..=201).collect::<Vec<u64>>(),
            "entry 1 starts the chain"
        );

        // An entry that cannot be encoded fails alone and leaves no gap.
        let bad = Record {
            args: serde_json::json!({"amount": 1.5}),
            ..Record::default()
        };
        assert!(matches!(
            log.append(Kind::Decision, bad).await,
            Err(StoreError::Encode(_))
        ));

        let pinned: BTreeMap<String, PublicKey> = [("w".to_owned(), key.public())].into();
        let report = verify(&pool, Some(&pinned)).await.unwrap();
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.entries(), 201);

        // A reopened writer continues the same chain.
        drop(log);
        let again = AuditLog::open(pool.clone(), "w", key).await.unwrap();
        let next = again
            .append(Kind::Decision, Record::default())
            .await
            .unwrap();
        assert_eq!(next.seq, 202);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
