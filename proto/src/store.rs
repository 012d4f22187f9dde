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
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

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
    pool: SqlitePool,
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
    pub async fn open(pool: SqlitePool, chain: &str, key: KeyPair) -> Result<AuditLog, StoreError> {
        AuditLog::open_with(pool, chain, key, CheckpointPolicy::default()).await
    }

    /// [`AuditLog::open`] with a checkpoint policy.
    pub async fn open_with(
        pool: SqlitePool,
        chain: &str,
        key: KeyPair,
        policy: CheckpointPolicy,
    ) -> Result<AuditLog, StoreError> {
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
        let checkpoint = latest_checkpoint(&pool, chain).await?;
        if let Some((_, cp)) = &checkpoint {
            // Never continue a chain that was cut back or rewritten below
            // its own signature: new entries would reuse signed positions.
            let at: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = ? AND seq = ?")
                    .bind(chain)
                    .bind(i64::try_from(cp.seq).unwrap_or(i64::MAX))
                    .fetch_optional(&pool)
                    .await?;
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
    pool: &SqlitePool,
    chain: &str,
) -> Result<Option<(String, Checkpoint)>, StoreError> {
    let row = sqlx::query(
        "SELECT body, hash FROM audit_checkpoints WHERE chain = ? \
         ORDER BY seq DESC, time_ms DESC, rowid DESC LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let body: String = r.get(0);
            let cp: Checkpoint = serde_json::from_str(&body).map_err(|e| StoreError::Tampered {
                chain: chain.to_owned(),
                why: format!("its latest checkpoint is malformed: {e}"),
            })?;
            Ok(Some((r.get(1), cp)))
        }
    }
}

/// Signs and stores a checkpoint over the writer's head.
async fn checkpoint_now(pool: &SqlitePool, writer: &mut ChainWriter) -> Result<(), StoreError> {
    let cp = writer
        .checkpoint(crate::now_ms())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    insert_checkpoint(pool, &cp).await?;
    writer.advance_checkpoint(&cp);
    Ok(())
}

/// The writer task: group commit, in chain order, with checkpoints.
async fn write_batches(
    pool: SqlitePool,
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

/// Writes a batch of entries, and a checkpoint over them if given, in one
/// transaction.
async fn write(
    pool: &SqlitePool,
    entries: &[&Sealed],
    cp: Option<&SignedCheckpoint>,
) -> Result<(), sqlx::Error> {
    match cp {
        None => insert(pool, entries).await,
        Some(cp) => {
            let mut tx = pool.begin().await?;
            insert(&mut *tx, entries).await?;
            insert_checkpoint(&mut *tx, cp).await?;
            tx.commit().await
        }
    }
}

async fn insert_checkpoint<'e, E: sqlx::SqliteExecutor<'e>>(
    exec: E,
    cp: &SignedCheckpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain, seq, time_ms, body, hash, sig) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&cp.checkpoint.chain)
    .bind(i64::try_from(cp.checkpoint.seq).unwrap_or(i64::MAX))
    .bind(cp.checkpoint.time_ms)
    .bind(&cp.body)
    .bind(&cp.hash)
    .bind(&cp.sig)
    .execute(exec)
    .await?;
    Ok(())
}

/// Writes sealed entries as one multi-row statement.
async fn insert<'e, E: sqlx::SqliteExecutor<'e>>(
    exec: E,
    entries: &[&Sealed],
) -> Result<(), sqlx::Error> {
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
    query.execute(exec).await?;
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

/// The stored checkpoints of `chain`, in order.
pub async fn checkpoints(
    pool: &SqlitePool,
    chain: &str,
) -> Result<Vec<Result<SignedCheckpoint, (u64, String)>>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, body, hash, sig FROM audit_checkpoints WHERE chain = ? \
         ORDER BY seq, time_ms, rowid",
    )
    .bind(chain)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let seq = u64::try_from(r.get::<i64, _>(0)).unwrap_or(0);
            SignedCheckpoint::parse(r.get(1), r.get(2), r.get(3)).map_err(|e| (seq, e.to_string()))
        })
        .collect())
}

/// Entries the verifier reads per query.
const VERIFY_CHUNK: i64 = 4096;

/// Reads the entries of `chain` after `after` (at most [`VERIFY_CHUNK`]) as
/// one JSON array built by SQLite, with their count and the last sequence
/// number (when it is an integer).
async fn read_chunk(
    pool: SqlitePool,
    chain: String,
    after: i64,
) -> Result<(String, i64, Option<i64>), StoreError> {
    let row = sqlx::query(
        "SELECT json_group_array(json_array(seq, hash, sig, body)), count(*), max(seq) FROM \
         (SELECT seq, hash, sig, body FROM audit_entries \
          WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?)",
    )
    .bind(&chain)
    .bind(after)
    .bind(VERIFY_CHUNK)
    .fetch_one(&pool)
    .await?;
    let n: i64 = row.try_get(1)?;
    if n == 0 {
        return Ok((String::new(), 0, None));
    }
    Ok((row.try_get(0)?, n, row.try_get::<i64, _>(2).ok()))
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
    pool: &SqlitePool,
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
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries")
        .fetch_one(pool)
        .await?;
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
            let stored: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE chain = ?")
                    .bind(chain)
                    .fetch_one(pool)
                    .await?;
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
        let pool = open_pool(&dir.join("audit.db")).await.unwrap();
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
        let count = |pool: SqlitePool| async move { checkpoints(&pool, "c").await.unwrap().len() };
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
            AuditLog::open_with(raw.clone(), "c", key, policy).await,
            Err(StoreError::Tampered { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
