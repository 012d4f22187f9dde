//! SQL storage of audit chains (feature `store`).
//!
//! One table of entries keyed by `(chain, seq)` and one of chains with the
//! public key each was started with. Append-only is enforced by the
//! database too: triggers abort any `UPDATE` or `DELETE` of an entry, so a
//! bug cannot rewrite history; only someone editing the file by hand can,
//! and [`verify`] catches that.
//!
//! An append returns only after the entry is committed (`synchronous=FULL`
//! on SQLite; a committed transaction on PostgreSQL, where the tables live
//! in the `zt_audit` schema shared by every writer).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub use crate::db::sqlite_options;
use crate::db::{Db, DbError, Dialect, Location};
use crate::with_db;

use crate::audit::{
    ChainVerifier, ChainWriter, Checkpoint, Finding, Kind, Problem, Record, Sealed,
    SignedCheckpoint, Trusted, Verified,
};
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
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] DbError),
    /// The stored chain contradicts its own signed checkpoints; the writer
    /// refuses to continue it.
    #[error("audit chain `{chain}` contradicts its signed checkpoints: {why}")]
    Tampered {
        /// The chain.
        chain: String,
        /// What does not match.
        why: String,
    },
}

const SQLITE_SCHEMA: &[&str] = &[
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
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        chain TEXT NOT NULL,
        seq INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL,
        sig TEXT NOT NULL,
        PRIMARY KEY (chain, hash))",
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
];

/// The schema of a writer's chains in PostgreSQL (schema `zt_audit`).
const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_chains (
    chain TEXT PRIMARY KEY NOT NULL,
    public_key TEXT NOT NULL,
    created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_entries (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT NOT NULL,
    PRIMARY KEY (chain, seq));
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    sig TEXT NOT NULL,
    PRIMARY KEY (chain, hash));
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $f$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $f$;
DO $d$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_entries_append_only'
                   AND tgrelid = 'audit_entries'::regclass) THEN
        CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries
            FOR EACH ROW EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
            FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
            FOR EACH ROW EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
            FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_chains_append_only BEFORE UPDATE OR DELETE ON audit_chains
            FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    END IF;
END $d$;
";

/// The PostgreSQL schema holding every writer's chains.
pub const AUDIT_SCHEMA: &str = "zt_audit";

/// Opens a pool on the SQLite database at `path` with [`sqlite_options`].
pub async fn open_sqlite(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(sqlite_options(path))
        .await
}

/// Opens (creating the tables if needed) the audit store at `location`.
pub async fn open_pool(location: &Location) -> Result<Db, StoreError> {
    let db = Db::open(location, AUDIT_SCHEMA, false).await?;
    match &db {
        Db::Sqlite(pool) => {
            for stmt in SQLITE_SCHEMA {
                sqlx::query(*stmt).execute(pool).await?;
            }
        }
        Db::Postgres(pool) => {
            // Writers starting together: one creates the tables.
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7414)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut *tx).await?;
            tx.commit().await?;
        }
    }
    Ok(db)
}

/// Opens an audit file at `path` (SQLite), creating it if needed.
pub async fn open_file(path: &Path) -> Result<Db, StoreError> {
    open_pool(&Location::File(path.to_owned())).await
}

/// Most entries written in one group commit.
pub const MAX_BATCH: usize = 64;

/// When a writer signs checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many entries.
    pub every: u64,
    /// Or once this much time has passed with entries not yet covered.
    pub after: Duration,
    /// And this often when idle (a heartbeat: the log provably did not
    /// just stop).
    pub heartbeat: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy {
            every: 1_000,
            after: Duration::from_secs(1),
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// One writer's chain in the store.
///
/// Appends are group-committed: a single writer task takes every append
/// queued while the previous batch was being written, seals them in order,
/// writes them as one multi-row `INSERT` (one transaction, one fsync), and
/// only then answers each caller. Every entry is durable before its
/// `append` returns; concurrent callers share the fsync. The same task
/// signs checkpoints per its [`CheckpointPolicy`], in the transaction of
/// the batch that makes one due, on a timer when entries wait uncovered or
/// the chain is idle, and on [`AuditLog::close`].
#[derive(Debug)]
pub struct AuditLog {
    pool: Db,
    jobs: mpsc::Sender<Job>,
}

// Nearly every job is an append; boxing its record would cost an
// allocation per entry to shrink a variant sent once per writer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Job {
    Append {
        kind: Kind,
        record: Record,
        reply: oneshot::Sender<Result<Sealed, StoreError>>,
    },
    /// Entries that must land in one commit, in order.
    Together(
        Vec<(Kind, Record)>,
        oneshot::Sender<Result<Vec<Sealed>, StoreError>>,
    ),
    Close(oneshot::Sender<()>),
}

impl AuditLog {
    /// Opens chain `chain` for appending with `key` and the default
    /// checkpoint policy. A new chain starts with a `chain_start` entry; an
    /// existing chain must have been started with the same key and must
    /// agree with its latest signed checkpoint.
    pub async fn open(pool: Db, chain: &str, key: KeyPair) -> Result<AuditLog, StoreError> {
        AuditLog::open_with(pool, chain, key, CheckpointPolicy::default()).await
    }

    /// [`AuditLog::open`] with a checkpoint policy.
    pub async fn open_with(
        pool: Db,
        chain: &str,
        key: KeyPair,
        policy: CheckpointPolicy,
    ) -> Result<AuditLog, StoreError> {
        let public = key.public().to_hex();
        let existing: Option<String> = with_db!(&pool, p => {
            sqlx::query_scalar("SELECT public_key FROM audit_chains WHERE chain = $1")
                .bind(chain)
                .fetch_optional(p)
                .await?
        });
        match existing {
            Some(k) if k != public => return Err(StoreError::KeyMismatch(chain.to_owned())),
            Some(_) => {}
            None => {
                with_db!(&pool, p => {
                    sqlx::query(
                        "INSERT INTO audit_chains (chain, public_key, created_ms) VALUES ($1, $2, $3)",
                    )
                    .bind(chain)
                    .bind(&public)
                    .bind(crate::now_ms())
                    .execute(p)
                    .await?;
                });
            }
        }
        let last: Option<(i64, String)> = with_db!(&pool, p => {
            sqlx::query_as(
                "SELECT seq, hash FROM audit_entries WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(chain)
            .fetch_optional(p)
            .await?
        });
        let last = last.map(|(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash));
        let checkpoint = latest_checkpoint(&pool, chain).await?;
        if let Some((_, cp)) = &checkpoint {
            // Never continue a chain that was cut back or rewritten below
            // its own signature: new entries would reuse signed positions.
            let at: Option<String> = with_db!(&pool, p => {
                sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = $1 AND seq = $2")
                    .bind(chain)
                    .bind(i64::try_from(cp.seq).unwrap_or(i64::MAX))
                    .fetch_optional(p)
                    .await?
            });
            if cp.seq > 0 && at.as_deref() != Some(cp.head.as_str()) {
                return Err(StoreError::Tampered {
                    chain: chain.to_owned(),
                    why: format!(
                        "a checkpoint signed entry #{} but the stored entry is {}",
                        cp.seq,
                        if at.is_some() { "different" } else { "gone" }
                    ),
                });
            }
        }
        let fresh = last.is_none();
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer = ChainWriter::new(
            chain.to_owned(),
            key,
            last,
            checkpoint.map(|(hash, cp)| (hash, cp.seq)),
        );
        tokio::spawn(write_batches(pool.clone(), writer, policy, rx));
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
    pub fn pool(&self) -> &Db {
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
            .send(Job::Append {
                kind,
                record,
                reply,
            })
            .await
            .is_ok();
        Pending { answer, queued }
    }

    /// Appends several entries in one commit (all or none), in order, and
    /// returns them once durable.
    pub async fn append_all(
        &self,
        entries: Vec<(Kind, Record)>,
    ) -> Result<Vec<Sealed>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Together(entries, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes what is queued, signs a final checkpoint over the head, and
    /// stops the writer; later appends fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
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

/// Where the writer answers once a batch is stored.
enum Reply {
    One(oneshot::Sender<Result<Sealed, StoreError>>),
    Many(usize, oneshot::Sender<Result<Vec<Sealed>, StoreError>>),
}

/// The latest stored checkpoint of `chain` with its hash.
async fn latest_checkpoint(
    pool: &Db,
    chain: &str,
) -> Result<Option<(String, Checkpoint)>, StoreError> {
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT body, hash FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq DESC, time_ms DESC, rowid DESC LIMIT 1"
        }
        Dialect::Postgres => {
            "SELECT body, hash FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq DESC, time_ms DESC LIMIT 1"
        }
    };
    let row: Option<(String, String)> = with_db!(pool, p => {
        sqlx::query_as(sql).bind(chain).fetch_optional(p).await?
    });
    match row {
        None => Ok(None),
        Some((body, hash)) => {
            let cp: Checkpoint = serde_json::from_str(&body).map_err(|e| StoreError::Tampered {
                chain: chain.to_owned(),
                why: format!("its latest checkpoint is malformed: {e}"),
            })?;
            Ok(Some((hash, cp)))
        }
    }
}

/// Signs and stores a checkpoint over the writer's head.
async fn checkpoint_now(pool: &Db, writer: &mut ChainWriter) -> Result<(), StoreError> {
    let cp = writer
        .checkpoint(crate::now_ms())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    insert_checkpoint(pool, &cp).await?;
    writer.advance_checkpoint(&cp);
    Ok(())
}

/// The writer task: group commit, in chain order, with checkpoints.
async fn write_batches(
    pool: Db,
    mut writer: ChainWriter,
    policy: CheckpointPolicy,
    mut rx: mpsc::Receiver<Job>,
) {
    // A chain reopened with entries not yet covered is checkpointed at once.
    let mut last_cp = tokio::time::Instant::now()
        .checked_sub(policy.after)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut closing: Option<oneshot::Sender<()>> = None;
    'run: loop {
        let wait = if writer.uncovered() > 0 {
            policy.after
        } else {
            policy.heartbeat
        };
        let first = tokio::select! {
            job = rx.recv() => job,
            () = tokio::time::sleep_until(last_cp + wait) => {
                if let Err(e) = checkpoint_now(&pool, &mut writer).await {
                    tracing_error(writer.chain(), &e);
                }
                last_cp = tokio::time::Instant::now();
                continue;
            }
        };
        let Some(first) = first else { break };
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
        let mut batch: Vec<Sealed> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        for job in jobs {
            match job {
                Job::Append {
                    kind,
                    record,
                    reply,
                } => match writer.seal(kind, record, now) {
                    Ok(sealed) => {
                        writer.advance(&sealed);
                        batch.push(sealed);
                        replies.push(Reply::One(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::Encode(e.to_string())));
                    }
                },
                Job::Together(entries, reply) => {
                    let mark = writer.clone();
                    let mut sealed_all = Vec::with_capacity(entries.len());
                    let mut failed = None;
                    for (kind, record) in entries {
                        match writer.seal(kind, record, now) {
                            Ok(sealed) => {
                                writer.advance(&sealed);
                                sealed_all.push(sealed);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        // All or none: the group takes no place in the chain.
                        writer = mark;
                        let _ = reply.send(Err(StoreError::Encode(e.to_string())));
                    } else {
                        let n = sealed_all.len();
                        batch.extend(sealed_all);
                        replies.push(Reply::Many(n, reply));
                    }
                }
                Job::Close(done) => closing = Some(done),
            }
        }
        if !batch.is_empty() {
            let due = writer.uncovered() >= policy.every || last_cp.elapsed() >= policy.after;
            let cp = if due {
                writer.checkpoint(now).ok()
            } else {
                None
            };
            let entries: Vec<&Sealed> = batch.iter().collect();
            match write(&pool, &entries, cp.as_ref()).await {
                Ok(()) => {
                    if let Some(cp) = &cp {
                        writer.advance_checkpoint(cp);
                        last_cp = tokio::time::Instant::now();
                    }
                    let mut sealed = batch.into_iter();
                    for reply in replies {
                        match reply {
                            Reply::One(r) => {
                                if let Some(s) = sealed.next() {
                                    let _ = r.send(Ok(s));
                                }
                            }
                            Reply::Many(n, r) => {
                                let _ = r.send(Ok(sealed.by_ref().take(n).collect()));
                            }
                        }
                    }
                }
                Err(e) => {
                    // Nothing of the batch is stored: the chain continues from
                    // where it was, and every caller learns its entry failed.
                    writer = before;
                    let why = e.to_string();
                    for reply in replies {
                        match reply {
                            Reply::One(r) => {
                                let _ = r.send(Err(StoreError::Batch(why.clone())));
                            }
                            Reply::Many(_, r) => {
                                let _ = r.send(Err(StoreError::Batch(why.clone())));
                            }
                        }
                    }
                }
            }
        }
        if closing.is_some() {
            break 'run;
        }
    }
    // Stopping: sign the head, so what was written is covered.
    if writer.uncovered() > 0
        && let Err(e) = checkpoint_now(&pool, &mut writer).await
    {
        tracing_error(writer.chain(), &e);
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn tracing_error(chain: &str, e: &StoreError) {
    tracing::error!(chain, error = %e, "audit checkpoint not written");
}

/// The multi-row insert of `n` entries (only numbered placeholders are
/// formatted into the statement).
fn insert_sql(n: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from("INSERT INTO audit_entries (chain, seq, body, hash, sig) VALUES ");
    for i in 0..n {
        let k = i * 5;
        let _ = write!(
            sql,
            "{}(${}, ${}, ${}, ${}, ${})",
            if i == 0 { "" } else { ", " },
            k + 1,
            k + 2,
            k + 3,
            k + 4,
            k + 5
        );
    }
    sql
}

const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints (chain, seq, time_ms, body, hash, sig) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Binds a checkpoint's columns to [`INSERT_CHECKPOINT`].
macro_rules! checkpoint_query {
    ($cp:expr) => {
        sqlx::query(INSERT_CHECKPOINT)
            .bind($cp.checkpoint.chain.clone())
            .bind(i64::try_from($cp.checkpoint.seq).unwrap_or(i64::MAX))
            .bind($cp.checkpoint.time_ms)
            .bind($cp.body.clone())
            .bind($cp.hash.clone())
            .bind($cp.sig.clone())
    };
}

/// Stores one checkpoint on its own.
async fn insert_checkpoint(pool: &Db, cp: &SignedCheckpoint) -> Result<(), sqlx::Error> {
    with_db!(pool, p => {
        checkpoint_query!(cp).execute(p).await?;
        Ok(())
    })
}

/// Writes a batch of entries, and a checkpoint over them if given, in one
/// transaction.
async fn write(
    pool: &Db,
    entries: &[&Sealed],
    cp: Option<&SignedCheckpoint>,
) -> Result<(), sqlx::Error> {
    let sql = insert_sql(entries.len());
    with_db!(pool, p => {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in entries {
            query = query
                .bind(e.chain.clone())
                .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
                .bind(e.body.clone())
                .bind(e.hash.clone())
                .bind(e.sig.clone());
        }
        match cp {
            None => {
                query.execute(p).await?;
            }
            Some(cp) => {
                let mut tx = p.begin().await?;
                query.execute(&mut *tx).await?;
                checkpoint_query!(cp).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    })
}

/// The chains recorded in the store, with the key each was started with.
pub async fn chains(pool: &Db) -> Result<BTreeMap<String, String>, StoreError> {
    let rows: Vec<(String, String)> = with_db!(pool, p => {
        sqlx::query_as("SELECT chain, public_key FROM audit_chains ORDER BY chain")
            .fetch_all(p)
            .await?
    });
    Ok(rows.into_iter().collect())
}

/// All entries of `chain` in stored order (by sequence number).
pub async fn entries(pool: &Db, chain: &str) -> Result<Vec<Sealed>, StoreError> {
    let rows: Vec<(String, i64, String, String, String)> = with_db!(pool, p => {
        sqlx::query_as(
            "SELECT chain, seq, body, hash, sig FROM audit_entries WHERE chain = $1 ORDER BY seq",
        )
        .bind(chain)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(chain, seq, body, hash, sig)| Sealed {
            chain,
            seq: u64::try_from(seq).unwrap_or(0),
            body,
            hash,
            sig,
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

/// The stored checkpoints of `chain`, in order.
pub async fn checkpoints(
    pool: &Db,
    chain: &str,
) -> Result<Vec<Result<SignedCheckpoint, (u64, String)>>, StoreError> {
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT seq, body, hash, sig FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq, time_ms, rowid"
        }
        Dialect::Postgres => {
            "SELECT seq, body, hash, sig FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq, time_ms"
        }
    };
    let rows: Vec<(i64, String, String, String)> = with_db!(pool, p => {
        sqlx::query_as(sql).bind(chain).fetch_all(p).await?
    });
    Ok(rows
        .into_iter()
        .map(|(seq, body, hash, sig)| {
            let seq = u64::try_from(seq).unwrap_or(0);
            SignedCheckpoint::parse(&body, &hash, &sig).map_err(|e| (seq, e.to_string()))
        })
        .collect())
}

/// Entries the verifier reads per query.
const VERIFY_CHUNK: i64 = 4096;

/// Reads the entries of `chain` after `after` (at most [`VERIFY_CHUNK`]) as
/// one JSON array built by SQLite, with their count and the last sequence
/// number (when it is an integer).
async fn read_chunk(
    pool: Db,
    chain: String,
    after: i64,
) -> Result<(String, i64, Option<i64>), StoreError> {
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT json_group_array(json_array(seq, hash, sig, body)), count(*), max(seq) FROM \
             (SELECT seq, hash, sig, body FROM audit_entries \
              WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3)"
        }
        Dialect::Postgres => {
            "SELECT json_agg(json_build_array(seq, hash, sig, body) ORDER BY seq)::text, \
                    count(*), max(seq) FROM \
             (SELECT seq, hash, sig, body FROM audit_entries \
              WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3) chunk"
        }
    };
    with_db!(&pool, p => {
        let row = sqlx::query(sql)
            .bind(&chain)
            .bind(after)
            .bind(VERIFY_CHUNK)
            .fetch_one(p)
            .await?;
        let n: i64 = row.try_get(1)?;
        if n == 0 {
            return Ok((String::new(), 0, None));
        }
        Ok((row.try_get(0)?, n, row.try_get::<i64, _>(2).ok()))
    })
}

/// Progress of a verification: entries checked so far, and in all.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Verifies every chain in the store. With `pinned` keys, a chain without a
/// pinned key, a pinned chain missing from the store, or a stored key that
/// differs from the pinned one is a finding; without, the stored keys are
/// used. `trusted` holds the checkpoint this verifier accepted last time for
/// each chain: a chain that no longer reaches it, or contradicts it, is a
/// rollback. Entries stream through; `progress` hears every 16,384.
pub async fn verify(
    pool: &Db,
    pinned: Option<&BTreeMap<String, PublicKey>>,
    trusted: &BTreeMap<String, Trusted>,
    progress: Progress<'_>,
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
    let finding = |chain: &str, seq: u64, problem: Problem, detail: String| Finding {
        chain: chain.to_owned(),
        seq,
        problem,
        detail,
    };
    if let Some(pinned) = pinned {
        for chain in pinned.keys() {
            if !stored.contains_key(chain) {
                report.findings.push(finding(
                    chain,
                    0,
                    Problem::Missing,
                    format!("chain `{chain}` has a pinned key but is missing from the log"),
                ));
            }
        }
    }
    for (chain, t) in trusted {
        if !stored.contains_key(chain) && !pinned.is_some_and(|p| p.contains_key(chain)) {
            report.findings.push(finding(
                chain,
                t.seq,
                Problem::Missing,
                format!(
                    "this verifier trusted chain `{chain}` through #{} earlier, but it is gone",
                    t.seq
                ),
            ));
        }
    }
    let total: i64 = with_db!(pool, p => {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries")
            .fetch_one(p)
            .await?
    });
    let total = u64::try_from(total).unwrap_or(0);
    let mut done = 0u64;
    progress(0, total);
    for (chain, stored_key) in &stored {
        let key = match pinned {
            Some(p) => match p.get(chain) {
                Some(k) if k.to_hex() == *stored_key => k.clone(),
                Some(_) => {
                    report.findings.push(finding(
                        chain,
                        0,
                        Problem::Signature,
                        format!("chain `{chain}` records a key that differs from the pinned key"),
                    ));
                    continue;
                }
                None => {
                    report.findings.push(finding(
                        chain,
                        0,
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
                        0,
                        Problem::Malformed,
                        format!("chain `{chain}` records a malformed key"),
                    ));
                    continue;
                }
            },
        };
        let mut cps = Vec::new();
        let mut bad = None;
        for cp in checkpoints(pool, chain).await? {
            match cp {
                Ok(cp) => cps.push(cp),
                Err((seq, why)) => {
                    bad = Some(finding(
                        chain,
                        seq,
                        Problem::Malformed,
                        format!("checkpoint at #{seq} is malformed: {why}"),
                    ));
                    break;
                }
            }
        }
        if let Some(f) = bad {
            report.findings.push(f);
            continue;
        }
        let mut verifier = match ChainVerifier::new(chain, &key, &cps, trusted.get(chain).cloned())
        {
            Ok(v) => v,
            Err(f) => {
                report.findings.push(f);
                continue;
            }
        };
        // Entries come in chunks, each one row holding a JSON array built by
        // SQLite: one hand-off per chunk instead of one per entry. JSON
        // escaping keeps any stored text, however crafted, one element.
        let mut failed = None;
        let mut after = i64::MIN;
        let mut visited = 0u64;
        // The next chunk is read while this one is checked.
        let mut next = Some(tokio::spawn(read_chunk(pool.clone(), chain.clone(), after)));
        'chunks: loop {
            let Some(reading) = next.take() else { break };
            let (text, n, last) = reading
                .await
                .map_err(|e| StoreError::Batch(e.to_string()))??;
            if n == 0 {
                break;
            }
            if let Some(last) = last {
                next = Some(tokio::spawn(read_chunk(pool.clone(), chain.clone(), last)));
            }
            let items: Vec<(Value, String, String, String)> = match serde_json::from_str(&text) {
                Ok(items) => items,
                Err(e) => {
                    failed = Some(finding(
                        chain,
                        u64::try_from(after.saturating_add(1)).unwrap_or(0),
                        Problem::Malformed,
                        format!("entries after #{after} are not stored as text: {e}"),
                    ));
                    break;
                }
            };
            for (seq, hash, sig, body) in items {
                let Some(seq) = seq.as_i64() else {
                    failed = Some(finding(
                        chain,
                        0,
                        Problem::Malformed,
                        format!("an entry has a malformed sequence number {seq}"),
                    ));
                    break 'chunks;
                };
                after = seq;
                visited += 1;
                let sealed = Sealed {
                    chain: chain.clone(),
                    seq: u64::try_from(seq).unwrap_or(0),
                    body,
                    hash,
                    sig,
                };
                if sealed.seq == 0 {
                    failed = Some(finding(
                        chain,
                        0,
                        Problem::Order,
                        format!("an entry has sequence number {seq}"),
                    ));
                    break 'chunks;
                }
                if let Err(f) = verifier.push(&sealed) {
                    failed = Some(f);
                    break 'chunks;
                }
                done += 1;
                if done.is_multiple_of(16_384) {
                    progress(done, total);
                }
            }
        }
        if failed.is_none() {
            let stored: i64 = with_db!(pool, p => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE chain = $1")
                    .bind(chain)
                    .fetch_one(p)
                    .await?
            });
            if u64::try_from(stored).unwrap_or(0) != visited {
                failed = Some(finding(
                    chain,
                    0,
                    Problem::Malformed,
                    format!(
                        "{} stored rows of chain `{chain}` have no usable sequence number",
                        u64::try_from(stored).unwrap_or(0).saturating_sub(visited)
                    ),
                ));
            }
        }
        match failed.map_or_else(|| verifier.finish(crate::now_ms()), Err) {
            Ok(v) => report.verified.push(v),
            Err(f) => report.findings.push(f),
        }
    }
    progress(total, total);
    Ok(report)
}

/// Opens an existing audit database read-only, for verification: the
/// verifier must never create, migrate or write what it checks.
pub async fn open_read_only(location: &Location) -> Result<Db, StoreError> {
    Ok(Db::open(location, AUDIT_SCHEMA, true).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_verifiable_chain() {
        let dir = std::env::temp_dir().join(crate::random_id("zt-store-"));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = open_file(&dir.join("audit.db")).await.unwrap();
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

        // Entries that must go together land in one commit, in order, or not at all.
        let pair = log
            .append_all(vec![
                (Kind::Decision, Record::default()),
                (Kind::Result, Record::default()),
            ])
            .await
            .unwrap();
        assert_eq!((pair[0].seq, pair[1].seq), (202, 203));
        let half_bad = log
            .append_all(vec![
                (Kind::Decision, Record::default()),
                (
                    Kind::Result,
                    Record {
                        args: serde_json::json!({"amount": 0.5}),
                        ..Record::default()
                    },
                ),
            ])
            .await;
        assert!(matches!(half_bad, Err(StoreError::Encode(_))));

        // Closing signs the head: nothing is left uncovered.
        log.close().await;
        assert!(matches!(
            log.append(Kind::Decision, Record::default()).await,
            Err(StoreError::Closed)
        ));
        let pinned: BTreeMap<String, PublicKey> = [("w".to_owned(), key.public())].into();
        let report = verify(&pool, Some(&pinned), &BTreeMap::new(), &mut |_, _| {})
            .await
            .unwrap();
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.entries(), 203);
        let v = &report.verified[0];
        assert_eq!(v.unsigned_tail, 0, "{v:?}");
        assert_eq!(v.latest.as_ref().map(|t| t.seq), Some(203));

        // A reopened writer continues the same chain.
        drop(log);
        let again = AuditLog::open(pool.clone(), "w", key.clone())
            .await
            .unwrap();
        let next = again
            .append(Kind::Decision, Record::default())
            .await
            .unwrap();
        assert_eq!(next.seq, 204);
        again.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_come_by_count_by_time_and_when_idle() {
        let dir = std::env::temp_dir().join(crate::random_id("zt-store-"));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = open_file(&dir.join("audit.db")).await.unwrap();
        let key = KeyPair::from_seed(&[4; 32]);
        let policy = CheckpointPolicy {
            every: 10,
            after: Duration::from_millis(200),
            heartbeat: Duration::from_millis(400),
        };
        let log = AuditLog::open_with(pool.clone(), "c", key.clone(), policy)
            .await
            .unwrap();
        for _ in 0..25 {
            log.append(Kind::Decision, Record::default()).await.unwrap();
        }
        let count = |pool: Db| async move { checkpoints(&pool, "c").await.unwrap().len() };
        let by_count = count(pool.clone()).await;
        assert!(by_count >= 2, "every 10 entries: {by_count}");
        // The 6 uncovered entries are signed within `after`; then heartbeats.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cps = checkpoints(&pool, "c").await.unwrap();
        let last = cps.last().unwrap().as_ref().unwrap();
        assert_eq!(last.checkpoint.seq, 26);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let idle = count(pool.clone()).await;
        assert!(
            idle >= cps.len() + 2,
            "heartbeats while idle: {} -> {idle}",
            cps.len()
        );

        // A chain whose tail was cut below a signed checkpoint is not continued.
        drop(log);
        let raw = open_sqlite(&dir.join("audit.db")).await.unwrap();
        sqlx::query("DROP TRIGGER audit_entries_no_delete")
            .execute(&raw)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_entries WHERE chain = 'c' AND seq > 20")
            .execute(&raw)
            .await
            .unwrap();
        assert!(matches!(
            AuditLog::open_with(Db::Sqlite(raw.clone()), "c", key, policy).await,
            Err(StoreError::Tampered { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
