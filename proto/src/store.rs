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
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub use crate::db::sqlite_options;
use crate::db::{Db, DbError, Dialect, Location};
use crate::with_db;

use crate::audit::{
    ChainVerifier, ChainWriter, Finding, GENESIS, Kind, Problem, Record, Resume, Sealed,
    SignedCheckpoint, Span, Stored, Trusted, Verified, WriterMac,
};
use crate::keys::{KeyPair, PublicKey};

/// Errors of the audit store. Callers on an authorization path must treat
/// any of them as "refuse the action".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("audit database: {0}")]
    Db(#[from] sqlx::Error),
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
        mac TEXT NOT NULL DEFAULT '',
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
    mac TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (chain, seq));
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS mac TEXT NOT NULL DEFAULT '';
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

/// The tables of [`AUDIT_SCHEMA`].
pub const AUDIT_TABLES: [&str; 3] = ["audit_chains", "audit_entries", "audit_checkpoints"];

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
            // Logs from before writers kept MACs gain the column.
            let has_mac: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pragma_table_info('audit_entries') WHERE name = 'mac'",
            )
            .fetch_one(pool)
            .await?;
            if has_mac == 0 {
                sqlx::query("ALTER TABLE audit_entries ADD COLUMN mac TEXT NOT NULL DEFAULT ''")
                    .execute(pool)
                    .await?;
            }
        }
        Db::Postgres(pool) => {
            let may_create: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'CREATE')")
                .bind(AUDIT_SCHEMA)
                .fetch_one(pool)
                .await?;
            if !may_create {
                // A writer's own role (see [`grant_chain`]): the tables are
                // the administrator's, and must be there already.
                let ready: bool = sqlx::query_scalar(
                    "SELECT to_regclass('audit_chains') IS NOT NULL \
                        AND to_regclass('audit_checkpoints') IS NOT NULL \
                        AND EXISTS (SELECT 1 FROM pg_attribute \
                            WHERE attrelid = to_regclass('audit_entries') \
                              AND attname = 'mac' AND NOT attisdropped)",
                )
                .fetch_one(pool)
                .await?;
                if !ready {
                    return Err(DbError::NotSetUp(format!(
                        "the audit tables in schema {AUDIT_SCHEMA} are missing or out of date and \
                         this role may not create them: run the service's \
                         `migrate --database ADMIN_URL --role ROLE` as the database's administrator"
                    ))
                    .into());
                }
                return Ok(db);
            }
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

/// PostgreSQL: lets `role` append to the chains named `chain` and
/// `chain-*` only, and read every chain. Row security on the three audit
/// tables holds each writer's role to its own chains (a broker's role cannot
/// insert an `approval` entry, checkpoint or chain row); the append-only
/// triggers hold everyone to INSERT; only the administrator who ran this
/// owns the tables, so no service can lift either. Run once per writer by
/// its `migrate --role` after [`open_pool`] created the tables.
pub async fn grant_chain(db: &Db, chain: &str, role: &str) -> Result<(), StoreError> {
    let Db::Postgres(pool) = db else {
        return Err(DbError::NotSetUp(
            "database roles are PostgreSQL's; on SQLite audit.db is shared by its writers \
             (zt-console up --users gives it to their group)"
                .to_owned(),
        )
        .into());
    };
    if chain.is_empty() || !chain.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(DbError::NotSetUp(format!("invalid chain name `{chain}`")).into());
    }
    db.check_service_role(role).await?;
    db.check_not_owner(AUDIT_SCHEMA, role).await?;
    let r = crate::db::quote_role(role)?;
    let mut sql = format!("GRANT USAGE ON SCHEMA {AUDIT_SCHEMA} TO {r};\n");
    for table in AUDIT_TABLES {
        sql.push_str(&format!(
            "GRANT SELECT, INSERT ON {table} TO {r};
             DROP POLICY IF EXISTS zt_read ON {table};
             CREATE POLICY zt_read ON {table} FOR SELECT USING (true);
             DROP POLICY IF EXISTS zt_append_{chain} ON {table};
             CREATE POLICY zt_append_{chain} ON {table} FOR INSERT TO {r}
                 WITH CHECK (chain = '{chain}' OR chain LIKE '{chain}-%');
             ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n"
        ));
    }
    // Serialised with writers creating the tables and with other grants.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7414)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
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
    ///
    /// The writer resumes after its own latest checkpoint (one its key
    /// signed; rows anyone else inserted into the checkpoint table are
    /// ignored) and its own entries after it (those carrying its MAC and
    /// linking to its head). Rows someone else stored at its next positions
    /// are never adopted: the writer signs a checkpoint naming them
    /// ([`Checkpoint::foreign`]), which every verifier then reports, and
    /// continues after them. Only a chain cut back or rewritten below the
    /// writer's own signature stops it.
    pub async fn open_with(
        pool: Db,
        chain: &str,
        key: KeyPair,
        policy: CheckpointPolicy,
    ) -> Result<AuditLog, StoreError> {
        let public = key.public();
        let public_hex = public.to_hex();
        let registered: Option<String> = with_db!(&pool, p => {
            sqlx::query_scalar("SELECT public_key FROM audit_chains WHERE chain = $1")
                .bind(chain)
                .fetch_optional(p)
                .await?
        });
        match registered {
            // Verifiers trust pinned keys, not this row; a row registered
            // first by someone else must not keep the writer from starting.
            Some(k) if k != public_hex => tracing::error!(
                chain,
                "the audit chain is registered with a key that is not this writer's; \
                 writing on (verifiers with pinned keys report the row)"
            ),
            Some(_) => {}
            None => {
                with_db!(&pool, p => {
                    sqlx::query(
                        "INSERT INTO audit_chains (chain, public_key, created_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (chain) DO NOTHING",
                    )
                    .bind(chain)
                    .bind(&public_hex)
                    .bind(crate::now_ms())
                    .execute(p)
                    .await?;
                });
            }
        }
        let own = own_latest_checkpoint(&pool, chain, &public).await?;
        let (mut head_seq, mut head) = own.as_ref().map_or((0, GENESIS.to_owned()), |c| {
            (c.checkpoint.seq, c.checkpoint.head.clone())
        });
        if head_seq > 0 {
            // Never continue a chain that was cut back or rewritten below
            // its own signature: new entries would reuse signed positions.
            let at: Option<String> = with_db!(&pool, p => {
                sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = $1 AND seq = $2")
                    .bind(chain)
                    .bind(i64::try_from(head_seq).unwrap_or(i64::MAX))
                    .fetch_optional(p)
                    .await?
            });
            if at.as_deref() != Some(head.as_str()) {
                return Err(StoreError::Tampered {
                    chain: chain.to_owned(),
                    why: format!(
                        "a checkpoint signed entry #{head_seq} but the stored entry is {}",
                        if at.is_some() { "different" } else { "gone" }
                    ),
                });
            }
        }
        let mut next = own
            .as_ref()
            .and_then(|c| c.checkpoint.foreign)
            .map_or(head_seq + 1, |span| span.to.max(head_seq) + 1);
        // The writer's own entries after its checkpoint (a crash can leave
        // up to a second of them unsigned).
        let mac = WriterMac::of(&key);
        let mut foreign_at = None;
        'walk: loop {
            let rows = rows_from(&pool, chain, next, WALK_CHUNK).await?;
            let n = rows.len();
            for row in rows {
                if row.seq != next {
                    break 'walk;
                }
                if !is_own_entry(&row, &mac, chain, &head) {
                    foreign_at = Some(next);
                    break 'walk;
                }
                head_seq = row.seq;
                head = row.hash;
                next += 1;
            }
            if n < WALK_CHUNK as usize {
                break;
            }
        }
        let fresh = head_seq == 0 && own.is_none();
        let mut writer = ChainWriter::resume(
            chain.to_owned(),
            key,
            Resume {
                head: Some((head_seq, head)),
                next_seq: next,
                checkpoint: own.as_ref().map(|c| (c.hash.clone(), c.checkpoint.seq)),
            },
        );
        let quarantined = match foreign_at {
            Some(_) => quarantine_foreign(&pool, &mut writer).await?,
            None => false,
        };
        // A closing checkpoint is superseded before anything new is written,
        // and an unsigned tail of the writer's own is signed at once.
        if !quarantined && own.is_some() {
            checkpoint_now(&pool, &mut writer).await?;
        }
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(pool.clone(), writer, policy, rx));
        let log = AuditLog { pool, jobs };
        if fresh {
            log.append(
                Kind::ChainStart,
                Record {
                    subject: chain.to_owned(),
                    detail: format!("chain started with key {public_hex}"),
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

/// Rows read at a time when a writer walks its tail or measures a run of
/// foreign rows.
const WALK_CHUNK: i64 = 1024;

/// A stored entry row as the writer reads it back.
struct TailRow {
    seq: u64,
    body: String,
    hash: String,
    mac: String,
}

/// Up to `limit` rows of `chain` from position `from`, in order.
async fn rows_from(
    pool: &Db,
    chain: &str,
    from: u64,
    limit: i64,
) -> Result<Vec<TailRow>, StoreError> {
    let Ok(from) = i64::try_from(from) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(i64, String, String, String)> = with_db!(pool, p => {
        sqlx::query_as(
            "SELECT seq, body, hash, mac FROM audit_entries WHERE chain = $1 AND seq >= $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(chain)
        .bind(from)
        .bind(limit)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(seq, body, hash, mac)| {
            Some(TailRow {
                seq: u64::try_from(seq).ok()?,
                body,
                hash,
                mac,
            })
        })
        .collect())
}

/// Whether `row` is an entry this writer stored right after `head`: its
/// MAC is the writer's, its body hashes to its hash, and it names its
/// chain, its position and `head`.
fn is_own_entry(row: &TailRow, mac: &WriterMac, chain: &str, head: &str) -> bool {
    let sealed = Sealed {
        chain: chain.to_owned(),
        seq: row.seq,
        body: String::new(),
        hash: row.hash.clone(),
        sig: String::new(),
        mac: row.mac.clone(),
    };
    if !mac.is_own(&sealed) {
        return false;
    }
    if crate::canonical::digest_hex(crate::canonical::Domain::AuditLeaf, row.body.as_bytes())
        != row.hash
    {
        return false;
    }
    serde_json::from_str::<crate::audit::Entry>(&row.body)
        .is_ok_and(|e| e.chain == chain && e.seq == row.seq && e.prev_hash == head)
}

/// The latest stored checkpoint of `chain` that `key` signed. Checkpoint
/// rows anyone else inserted (malformed, unsigned, signed by another key)
/// are passed over: they cannot stop the writer, and the verifier reports
/// them.
async fn own_latest_checkpoint(
    pool: &Db,
    chain: &str,
    key: &PublicKey,
) -> Result<Option<SignedCheckpoint>, StoreError> {
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT body, hash, sig FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq DESC, time_ms DESC, rowid DESC LIMIT $2 OFFSET $3"
        }
        Dialect::Postgres => {
            "SELECT body, hash, sig FROM audit_checkpoints WHERE chain = $1 \
             ORDER BY seq DESC, time_ms DESC LIMIT $2 OFFSET $3"
        }
    };
    let mut offset = 0i64;
    loop {
        let rows: Vec<(String, String, String)> = with_db!(pool, p => {
            sqlx::query_as(sql)
                .bind(chain)
                .bind(WALK_CHUNK)
                .bind(offset)
                .fetch_all(p)
                .await?
        });
        let n = rows.len();
        for (body, hash, sig) in rows {
            if let Ok(cp) = SignedCheckpoint::parse(&body, &hash, &sig)
                && cp.is_signed_by(chain, key)
            {
                return Ok(Some(cp));
            }
        }
        if n < WALK_CHUNK as usize {
            return Ok(None);
        }
        offset += WALK_CHUNK;
    }
}

/// The last position of the unbroken run of stored rows of `chain` that
/// starts at `from`, if there is a row at `from`.
async fn run_end(pool: &Db, chain: &str, from: u64) -> Result<Option<u64>, StoreError> {
    let mut at = from;
    let mut end = None;
    loop {
        let Ok(start) = i64::try_from(at) else {
            return Ok(end);
        };
        let seqs: Vec<i64> = with_db!(pool, p => {
            sqlx::query_scalar(
                "SELECT seq FROM audit_entries WHERE chain = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            )
            .bind(chain)
            .bind(start)
            .bind(WALK_CHUNK)
            .fetch_all(p)
            .await?
        });
        let n = seqs.len();
        for seq in seqs {
            if u64::try_from(seq).ok() != Some(at) {
                return Ok(end);
            }
            end = Some(at);
            at += 1;
        }
        if n < WALK_CHUNK as usize {
            return Ok(end);
        }
    }
}

/// If rows someone else stored occupy the writer's next positions, signs
/// and stores a checkpoint naming them and moves the writer past them.
/// Returns whether it did.
async fn quarantine_foreign(pool: &Db, writer: &mut ChainWriter) -> Result<bool, StoreError> {
    let from = writer.next_seq();
    let Some(to) = run_end(pool, writer.chain(), from).await? else {
        return Ok(false);
    };
    let cp = writer
        .quarantine(Span { from, to }, crate::now_ms())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    insert_checkpoint(pool, &cp).await?;
    writer.advance_checkpoint(&cp);
    tracing::error!(
        chain = writer.chain(),
        from,
        to,
        "audit entries this writer did not write were stored at its next positions; \
         not adopted, named in a signed checkpoint, writing on after them"
    );
    Ok(true)
}

/// Signs and stores a checkpoint over the writer's head, after naming any
/// rows someone else stored at its next positions (looked for each time, so
/// a row inserted while the writer is idle is named within a second).
async fn checkpoint_now(pool: &Db, writer: &mut ChainWriter) -> Result<(), StoreError> {
    if quarantine_foreign(pool, writer).await? {
        return Ok(());
    }
    let cp = writer
        .checkpoint(crate::now_ms())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    insert_checkpoint(pool, &cp).await?;
    writer.advance_checkpoint(&cp);
    Ok(())
}

/// Signs and stores the checkpoint a writer leaves when it stops.
async fn close_chain(pool: &Db, writer: &mut ChainWriter) -> Result<(), StoreError> {
    quarantine_foreign(pool, writer).await?;
    let cp = writer
        .closing_checkpoint(crate::now_ms())
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
            let mut cp = if due {
                writer.checkpoint(now).ok()
            } else {
                None
            };
            let entries: Vec<&Sealed> = batch.iter().collect();
            let mut outcome = write(&pool, &entries, cp.as_ref()).await;
            // Where the writer stands if the batch fails after all.
            let mut base = before;
            if outcome.is_err() {
                // Rows someone else stored at the batch's positions: name
                // them, move past them, and store the batch once more there.
                if let Ok(true) = quarantine_foreign(&pool, &mut base).await {
                    let mut moved = base.clone();
                    let mut again = Vec::with_capacity(batch.len());
                    for s in &batch {
                        match moved.reseal(s) {
                            Some(r) => {
                                moved.advance(&r);
                                again.push(r);
                            }
                            None => break,
                        }
                    }
                    if again.len() == batch.len() {
                        let entries: Vec<&Sealed> = again.iter().collect();
                        outcome = write(&pool, &entries, None).await;
                        if outcome.is_ok() {
                            writer = moved;
                            batch = again;
                            cp = None;
                        }
                    }
                }
            }
            match outcome {
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
                    writer = base;
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
    // Stopping: sign the head, and that the writer stopped, so what was
    // written is covered and nothing can be added after it unnoticed.
    if let Err(e) = close_chain(&pool, &mut writer).await {
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
    let mut sql =
        String::from("INSERT INTO audit_entries (chain, seq, body, hash, sig, mac) VALUES ");
    for i in 0..n {
        let k = i * 6;
        let _ = write!(
            sql,
            "{}(${}, ${}, ${}, ${}, ${}, ${})",
            if i == 0 { "" } else { ", " },
            k + 1,
            k + 2,
            k + 3,
            k + 4,
            k + 5,
            k + 6
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
                .bind(e.sig.clone())
                .bind(e.mac.clone());
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
    let rows: Vec<(String, i64, String, String, String, String)> = with_db!(pool, p => {
        sqlx::query_as(
            "SELECT chain, seq, body, hash, sig, mac FROM audit_entries WHERE chain = $1 ORDER BY seq",
        )
        .bind(chain)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(chain, seq, body, hash, sig, mac)| Sealed {
            chain,
            seq: u64::try_from(seq).unwrap_or(0),
            body,
            hash,
            sig,
            mac,
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
    checkpoints_from(pool, chain, i64::MIN).await
}

/// The stored checkpoints of `chain` at or after entry `from`, in stored
/// order.
pub async fn checkpoints_from(
    pool: &Db,
    chain: &str,
    from: i64,
) -> Result<Vec<Result<SignedCheckpoint, (u64, String)>>, StoreError> {
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT seq, body, hash, sig FROM audit_checkpoints WHERE chain = $1 AND seq >= $2 \
             ORDER BY seq, time_ms, rowid"
        }
        Dialect::Postgres => {
            "SELECT seq, body, hash, sig FROM audit_checkpoints WHERE chain = $1 AND seq >= $2 \
             ORDER BY seq, time_ms"
        }
    };
    let rows: Vec<(i64, String, String, String)> = with_db!(pool, p => {
        sqlx::query_as(sql).bind(chain).bind(from).fetch_all(p).await?
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
/// one text of length-prefixed fields built by the database (see
/// [`entry_fields`]), with their count and the last sequence
/// number (when it is an integer).
async fn read_chunk(
    pool: Db,
    chain: String,
    after: i64,
) -> Result<(String, i64, Option<i64>), StoreError> {
    // Each field as `LEN:TEXT` (LEN its length in bytes), concatenated:
    // nothing is escaped or unescaped, and no stored text, however
    // crafted, can run into the next field (`concat` and `group_concat`
    // copy by length, NULs included). A NULL field comes out empty, and
    // an empty sequence number or a missing length is a finding.
    let sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT group_concat(concat( \
                length(CAST(seq AS BLOB)), ':', seq, length(CAST(hash AS BLOB)), ':', hash, \
                length(CAST(sig AS BLOB)), ':', sig, length(CAST(body AS BLOB)), ':', body), ''), \
                count(*), max(seq) FROM \
             (SELECT seq, hash, sig, body FROM audit_entries \
              WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3)"
        }
        Dialect::Postgres => {
            "SELECT string_agg( \
                octet_length(seq::text) || ':' || seq::text || \
                octet_length(hash) || ':' || hash || \
                octet_length(sig) || ':' || sig || \
                octet_length(body) || ':' || body, '' ORDER BY seq), \
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
        // NULL on PostgreSQL when every row of the chunk had a NULL field.
        let text: Option<String> = row.try_get(0)?;
        Ok((text.unwrap_or_default(), n, row.try_get::<i64, _>(2).ok()))
    })
}

/// Progress of a verification: entries checked so far, and in all.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// How much of each chain a verification reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every entry, from the first.
    #[default]
    Full,
    /// For a chain this verifier trusted a checkpoint of before: only that
    /// checkpoint, the entry it covers and everything after
    /// ([`ChainVerifier::resume`]); other chains in full.
    AfterTrusted,
}

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
    scope: Scope,
    progress: Progress<'_>,
) -> Result<Report, StoreError> {
    let stored = chains(pool).await?;
    // The trusted checkpoint a chain's reading starts at (None: its first
    // entry).
    let start = |chain: &str| -> Option<&Trusted> {
        match scope {
            Scope::Full => None,
            Scope::AfterTrusted => trusted.get(chain).filter(|t| t.seq > 1),
        }
    };
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
    let mut total: i64 = 0;
    if scope == Scope::Full {
        total = with_db!(pool, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries")
                .fetch_one(p)
                .await?
        });
    } else {
        for chain in stored.keys() {
            total = total.saturating_add(stored_from(pool, chain, start(chain)).await?);
        }
    }
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
        let resume = start(chain);
        let from = resume.map_or(i64::MIN, |t| i64::try_from(t.seq).unwrap_or(i64::MAX));
        for cp in checkpoints_from(pool, chain, from).await? {
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
        let begun = match resume {
            Some(t) => ChainVerifier::resume(chain, &key, &cps, t.clone(), crate::now_ms()),
            None => ChainVerifier::new(
                chain,
                &key,
                &cps,
                trusted.get(chain).cloned(),
                crate::now_ms(),
            ),
        };
        let mut verifier = match begun {
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
        let mut after = if resume.is_some() {
            from.saturating_sub(1)
        } else {
            i64::MIN
        };
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
            let mut pos = 0;
            while pos < text.len() {
                let Some([seq, hash, sig, body]) = entry_fields(&text, &mut pos) else {
                    failed = Some(finding(
                        chain,
                        u64::try_from(after.saturating_add(1)).unwrap_or(0),
                        Problem::Malformed,
                        format!("entries after #{after} are not stored as text"),
                    ));
                    break 'chunks;
                };
                let Ok(seq) = seq.parse::<i64>() else {
                    failed = Some(finding(
                        chain,
                        0,
                        Problem::Malformed,
                        format!("an entry has a malformed sequence number {seq:?}"),
                    ));
                    break 'chunks;
                };
                after = seq;
                visited += 1;
                let stored = Stored {
                    chain,
                    seq: u64::try_from(seq).unwrap_or(0),
                    body,
                    hash,
                    sig,
                };
                if stored.seq == 0 {
                    failed = Some(finding(
                        chain,
                        0,
                        Problem::Order,
                        format!("an entry has sequence number {seq}"),
                    ));
                    break 'chunks;
                }
                if let Err(f) = verifier.push_stored(&stored) {
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
            let stored = stored_from(pool, chain, resume).await?;
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
        match failed.map_or_else(|| verifier.finish(), Err) {
            Ok(v) => report.verified.push(v),
            Err(f) => report.findings.push(f),
        }
    }
    progress(total, total);
    Ok(report)
}

/// The next entry's four fields (seq, hash, sig, body) of a chunk
/// [`read_chunk`] returned, each `LEN:TEXT`; `None` if the text does not
/// have that form.
fn entry_fields<'a>(text: &'a str, pos: &mut usize) -> Option<[&'a str; 4]> {
    let mut field = || -> Option<&'a str> {
        let rest = text.get(*pos..)?;
        let colon = rest.bytes().take(21).position(|b| b == b':')?;
        let digits = &rest[..colon];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: usize = digits.parse().ok()?;
        let start = *pos + colon + 1;
        let value = text.get(start..start.checked_add(len)?)?;
        *pos = start + len;
        Some(value)
    };
    Some([field()?, field()?, field()?, field()?])
}

/// The stored rows of `chain` a verification starting at `resume` must
/// visit: all of them, or those from the trusted checkpoint's entry on
/// (and any without a sequence number).
async fn stored_from(pool: &Db, chain: &str, resume: Option<&Trusted>) -> Result<i64, StoreError> {
    Ok(match resume {
        None => with_db!(pool, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE chain = $1")
                .bind(chain)
                .fetch_one(p)
                .await?
        }),
        // Two index ranges (one `OR` would scan the whole chain).
        Some(t) => with_db!(pool, p => {
            let after: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_entries WHERE chain = $1 AND seq >= $2",
            )
            .bind(chain)
            .bind(i64::try_from(t.seq).unwrap_or(i64::MAX))
            .fetch_one(p)
            .await?;
            let unnumbered: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_entries WHERE chain = $1 AND seq IS NULL",
            )
            .bind(chain)
            .fetch_one(p)
            .await?;
            after.saturating_add(unnumbered)
        }),
    })
}

/// The SQL expression of an entry's time (ms since the epoch, from its
/// body) in `dialect`, for selecting entries by time.
pub fn entry_time_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "json_extract(body, '$.time_ms')",
        Dialect::Postgres => "CAST(CAST(body AS jsonb) ->> 'time_ms' AS BIGINT)",
    }
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
        let report = verify(
            &pool,
            Some(&pinned),
            &BTreeMap::new(),
            Scope::Full,
            &mut |_, _| {},
        )
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

    /// What someone with INSERT on the table but without the writer's key
    /// can store: the next entry of `chain`, correctly linked and hashed.
    async fn forge_next(pool: &Db, chain: &str, time_ms: i64, detail: &str) -> u64 {
        let (seq, hash): (i64, String) = with_db!(pool, p => {
            sqlx::query_as("SELECT seq, hash FROM audit_entries WHERE chain = $1 ORDER BY seq DESC LIMIT 1")
                .bind(chain)
                .fetch_one(p)
                .await
                .unwrap()
        });
        let entry = crate::audit::Entry {
            v: 1,
            chain: chain.to_owned(),
            seq: u64::try_from(seq).unwrap() + 1,
            time_ms,
            kind: Kind::Approval,
            record: Record {
                subject: "carol".into(),
                decision: "approve".into(),
                status: "approved".into(),
                detail: detail.into(),
                ..Record::default()
            },
            prev_hash: hash,
        };
        let body = crate::canonical::canonical_of(&entry).unwrap();
        let hash =
            crate::canonical::digest_hex(crate::canonical::Domain::AuditLeaf, body.as_bytes());
        with_db!(pool, p => {
            sqlx::query("INSERT INTO audit_entries (chain, seq, body, hash, sig) VALUES ($1, $2, $3, $4, '')")
                .bind(chain)
                .bind(seq + 1)
                .bind(&body)
                .bind(&hash)
                .execute(p)
                .await
                .unwrap();
        });
        entry.seq
    }

    async fn findings(pool: &Db, chain: &str, key: &KeyPair) -> Vec<(String, u64, Problem)> {
        let pinned: BTreeMap<String, PublicKey> = [(chain.to_owned(), key.public())].into();
        verify(
            pool,
            Some(&pinned),
            &BTreeMap::new(),
            Scope::Full,
            &mut |_, _| {},
        )
        .await
        .unwrap()
        .findings
        .into_iter()
        .map(|f| (f.chain, f.seq, f.problem))
        .collect()
    }

    async fn fresh_pool() -> (std::path::PathBuf, Db) {
        let dir = std::env::temp_dir().join(crate::random_id("zt-store-"));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = open_file(&dir.join("audit.db")).await.unwrap();
        (dir, pool)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_never_adopts_or_signs_a_tail_it_did_not_write() {
        let (dir, pool) = fresh_pool().await;
        let key = KeyPair::from_seed(&[5; 32]);
        let log = AuditLog::open(pool.clone(), "approval", key.clone())
            .await
            .unwrap();
        for _ in 0..3 {
            log.append(Kind::Decision, Record::default()).await.unwrap();
        }
        log.close().await;
        drop(log);
        assert_eq!(findings(&pool, "approval", &key).await, vec![]);

        // Stopped writer, then a forged "approved by carol" at its next
        // position, dated now: the closing checkpoint already names it.
        let forged = forge_next(&pool, "approval", crate::now_ms(), "approved by carol").await;
        assert_eq!(
            findings(&pool, "approval", &key).await,
            vec![("approval".into(), forged, Problem::Foreign)]
        );

        // The writer restarts: it does not continue from the forgery, it
        // names it in a signed checkpoint and writes on after it.
        let log = AuditLog::open(pool.clone(), "approval", key.clone())
            .await
            .unwrap();
        let next = log.append(Kind::Decision, Record::default()).await.unwrap();
        assert_eq!(next.seq, forged + 1);
        let entry = next.entry().unwrap();
        let own_head: String = with_db!(&pool, p => {
            sqlx::query_scalar("SELECT hash FROM audit_entries WHERE chain = 'approval' AND seq = $1")
                .bind(i64::try_from(forged - 1).unwrap())
                .fetch_one(p)
                .await
                .unwrap()
        });
        assert_eq!(
            entry.prev_hash, own_head,
            "links to its own head, not the forgery"
        );
        log.close().await;
        drop(log);
        let cps = checkpoints(&pool, "approval").await.unwrap();
        assert!(
            cps.iter().flatten().any(|c| c.checkpoint.foreign
                == Some(Span {
                    from: forged,
                    to: forged
                })),
            "a signed checkpoint names the forgery"
        );
        assert_eq!(
            findings(&pool, "approval", &key).await,
            vec![("approval".into(), forged, Problem::Foreign)]
        );

        // A row inserted while the writer runs takes its next position: the
        // writer's next append still lands, after it, and it is named.
        let log = AuditLog::open(pool.clone(), "approval", key.clone())
            .await
            .unwrap();
        let before = log.append(Kind::Decision, Record::default()).await.unwrap();
        let raced = forge_next(&pool, "approval", crate::now_ms(), "raced").await;
        let after = log.append(Kind::Decision, Record::default()).await.unwrap();
        assert_eq!(after.seq, raced + 1);
        assert_eq!(after.entry().unwrap().prev_hash, before.hash);
        log.close().await;
        let cps = checkpoints(&pool, "approval").await.unwrap();
        assert!(cps.iter().flatten().any(|c| c.checkpoint.foreign
            == Some(Span {
                from: raced,
                to: raced
            })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_writer_keeps_its_own_unsigned_tail() {
        let (dir, pool) = fresh_pool().await;
        let key = KeyPair::from_seed(&[6; 32]);
        let log = AuditLog::open(pool.clone(), "broker", key.clone())
            .await
            .unwrap();
        let last = log.append(Kind::Decision, Record::default()).await.unwrap();
        log.close().await;
        drop(log);
        // Entries written by the writer itself after its last checkpoint, as
        // a crash leaves them (stored, never signed).
        let cps = checkpoints(&pool, "broker").await.unwrap();
        let cp = cps.last().unwrap().as_ref().unwrap();
        let mut w = ChainWriter::new(
            "broker".into(),
            key.clone(),
            Some((last.seq, last.hash.clone())),
            Some((cp.hash.clone(), cp.checkpoint.seq)),
        );
        let mut tail = Vec::new();
        for _ in 0..3 {
            let s = w
                .seal(Kind::Decision, Record::default(), crate::now_ms())
                .unwrap();
            w.advance(&s);
            tail.push(s);
        }
        // Not after a closing checkpoint: the writer reopened first.
        let reopen = w.checkpoint(crate::now_ms()).unwrap();
        insert_checkpoint(&pool, &reopen)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let refs: Vec<&Sealed> = tail.iter().collect();
        write(&pool, &refs, None).await.unwrap();
        let log = AuditLog::open(pool.clone(), "broker", key.clone())
            .await
            .unwrap();
        let next = log.append(Kind::Decision, Record::default()).await.unwrap();
        assert_eq!(next.seq, tail[2].seq + 1);
        assert_eq!(next.entry().unwrap().prev_hash, tail[2].hash);
        log.close().await;
        assert_eq!(findings(&pool, "broker", &key).await, vec![]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn junk_rows_do_not_stop_a_writer_from_starting() {
        let (dir, pool) = fresh_pool().await;
        let key = KeyPair::from_seed(&[7; 32]);
        // A chain registered first with someone else's key, and a junk
        // checkpoint far ahead: both once stopped the writer.
        with_db!(&pool, p => {
            sqlx::query("INSERT INTO audit_chains (chain, public_key, created_ms) VALUES ('broker-b', $1, 0)")
                .bind(KeyPair::from_seed(&[1; 32]).public().to_hex())
                .execute(p)
                .await
                .unwrap();
            sqlx::query("INSERT INTO audit_checkpoints (chain, seq, time_ms, body, hash, sig) VALUES ('broker-b', 99, 0, 'junk', 'junk', '')")
                .execute(p)
                .await
                .unwrap();
        });
        let log = AuditLog::open(pool.clone(), "broker-b", key.clone())
            .await
            .unwrap();
        let e = log.append(Kind::Decision, Record::default()).await.unwrap();
        assert_eq!(e.seq, 2);
        log.close().await;
        let f = findings(&pool, "broker-b", &key).await;
        assert_eq!(f.len(), 1, "the squatted row is reported: {f:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crafted_stored_text_cannot_pass_for_entries() {
        // The verifier reads entries as length-prefixed fields: text that
        // looks like framing, an embedded NUL, an empty field or a BLOB is
        // read as what it is, and found.
        let key = KeyPair::from_seed(&[9; 32]);
        for (case, update) in [
            (
                "framing inside a body",
                "UPDATE audit_entries SET body = body || '64:' || hash WHERE seq = 2",
            ),
            (
                "a NUL and hidden bytes after a genuine body",
                "UPDATE audit_entries SET body = CAST(body || char(0) || 'hidden' AS TEXT) WHERE seq = 2",
            ),
            (
                "an empty hash",
                "UPDATE audit_entries SET hash = '' WHERE seq = 2",
            ),
            (
                "a body stored as a BLOB with a NUL",
                "UPDATE audit_entries SET body = CAST(body || char(0) AS BLOB) WHERE seq = 2",
            ),
            (
                "a text sequence number",
                "UPDATE audit_entries SET seq = '2x' WHERE seq = 2",
            ),
        ] {
            let (dir, pool) = fresh_pool().await;
            let log = AuditLog::open(pool.clone(), "c", key.clone())
                .await
                .unwrap();
            for _ in 0..3 {
                log.append(Kind::Decision, Record::default()).await.unwrap();
            }
            log.close().await;
            assert!(
                findings(&pool, "c", &key).await.is_empty(),
                "{case}: intact first"
            );
            with_db!(&pool, p => {
                for trigger in ["audit_entries_no_update", "audit_entries_no_delete"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER IF EXISTS {trigger}")))
                        .execute(p)
                        .await
                        .unwrap();
                }
                sqlx::query(sqlx::AssertSqlSafe(update)).execute(p).await.unwrap();
            });
            let pinned: BTreeMap<String, PublicKey> = [("c".to_owned(), key.public())].into();
            // Not text at all is an error: could not check, never "intact".
            if let Ok(report) = verify(
                &pool,
                Some(&pinned),
                &BTreeMap::new(),
                Scope::Full,
                &mut |_, _| {},
            )
            .await
            {
                assert!(!report.intact(), "{case}: not intact: {report:?}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_from_the_future_are_a_finding() {
        let (dir, pool) = fresh_pool().await;
        let key = KeyPair::from_seed(&[2; 32]);
        let log = AuditLog::open(pool.clone(), "approval", key.clone())
            .await
            .unwrap();
        log.append(Kind::Decision, Record::default()).await.unwrap();
        // The writer is running (no closing checkpoint yet): a forged entry
        // dated an hour ahead, never "not yet signed".
        let forged = forge_next(&pool, "approval", crate::now_ms() + 3_600_000, "later").await;
        assert_eq!(
            findings(&pool, "approval", &key).await,
            vec![("approval".into(), forged, Problem::Time)]
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
