//! The approval service's own state: requests, votes, revoked sessions.

use std::path::Path;

use sqlx::{Row, SqlitePool};
use zt_proto::pb::{ApprovalRequest, EscalateRequest, Vote};

/// Request states. Terminal: denied, expired, executed, failed.
pub mod status {
    /// Awaiting operators.
    pub const PENDING: &str = "pending";
    /// Approved; a grant was issued and not yet reported used.
    pub const APPROVED: &str = "approved";
    /// Denied by an operator.
    pub const DENIED: &str = "denied";
    /// Nobody decided in time.
    pub const EXPIRED: &str = "expired";
    /// The broker executed it.
    pub const EXECUTED: &str = "executed";
    /// The broker tried and the backend failed.
    pub const FAILED: &str = "failed";
}

/// Opens (creating and migrating) the approval database.
pub async fn open(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let pool = zt_proto::store::open_sqlite(path).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

const COLUMNS: &str = "id, status, tool, args_json, args_hash, session_id, human, actors_json, rules_json, \
     reason, risk, amount_cents, justification, created_at_ms, expires_at_ms, grant_token, outcome";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> ApprovalRequest {
    let list = |col: &str| -> Vec<String> {
        serde_json::from_str(&row.get::<String, _>(col)).unwrap_or_default()
    };
    ApprovalRequest {
        id: row.get("id"),
        status: row.get("status"),
        tool: row.get("tool"),
        args_json: row.get("args_json"),
        args_hash: row.get("args_hash"),
        session_id: row.get("session_id"),
        human: row.get("human"),
        actors: list("actors_json"),
        rules: list("rules_json"),
        reason: row.get("reason"),
        risk: row.get("risk"),
        amount_cents: row.get("amount_cents"),
        justification: row.get("justification"),
        created_at_ms: row.get("created_at_ms"),
        expires_at_ms: row.get("expires_at_ms"),
        votes: Vec::new(),
        grant: row
            .get::<Option<String>, _>("grant_token")
            .unwrap_or_default(),
        outcome: row.get("outcome"),
    }
}

async fn with_votes(
    pool: &SqlitePool,
    mut req: ApprovalRequest,
) -> Result<ApprovalRequest, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT operator, decision, reason, at_ms FROM votes WHERE request_id = ? ORDER BY at_ms",
    )
    .bind(&req.id)
    .fetch_all(pool)
    .await?;
    req.votes = rows
        .iter()
        .map(|r| Vote {
            operator: r.get(0),
            decision: r.get(1),
            reason: r.get(2),
            at_ms: r.get(3),
        })
        .collect();
    Ok(req)
}

/// The request with `id`.
pub async fn get(pool: &SqlitePool, id: &str) -> Result<Option<ApprovalRequest>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM requests WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => Ok(Some(with_votes(pool, from_row(&r)).await?)),
        None => Ok(None),
    }
}

/// An open request (pending, or approved and not yet used) for the same
/// exact call of the same session.
pub async fn find_open(
    pool: &SqlitePool,
    session_id: &str,
    tool: &str,
    args_hash: &str,
) -> Result<Option<ApprovalRequest>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM requests WHERE session_id = ? AND tool = ? AND args_hash = ? \
         AND status IN ('pending', 'approved') ORDER BY created_at_ms DESC LIMIT 1"
    )))
    .bind(session_id)
    .bind(tool)
    .bind(args_hash)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => Ok(Some(with_votes(pool, from_row(&r)).await?)),
        None => Ok(None),
    }
}

/// Inserts a new pending request.
pub async fn insert(
    pool: &SqlitePool,
    id: &str,
    req: &EscalateRequest,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO requests (id, status, tool, args_json, args_hash, session_id, human, actors_json, \
         rules_json, reason, risk, amount_cents, justification, created_at_ms, expires_at_ms) \
         VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(&req.tool)
    .bind(&req.args_json)
    .bind(&req.args_hash)
    .bind(&req.session_id)
    .bind(&req.human)
    .bind(serde_json::to_string(&req.actors).unwrap_or_default())
    .bind(serde_json::to_string(&req.rules).unwrap_or_default())
    .bind(&req.reason)
    .bind(&req.risk)
    .bind(req.amount_cents)
    .bind(&req.justification)
    .bind(now_ms)
    .bind(now_ms + ttl_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pending requests, oldest first.
pub async fn pending(pool: &SqlitePool) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM requests WHERE status = 'pending' ORDER BY created_at_ms"
    )))
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(with_votes(pool, from_row(r)).await?);
    }
    Ok(out)
}

/// Outcome of recording a vote.
#[derive(Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Recorded and the request moved to `status`.
    Recorded,
    /// The request was no longer pending (someone else decided, or it expired).
    NotPending,
    /// This operator already voted.
    AlreadyVoted,
}

/// Records a decisive vote and moves a pending request to approved (with its
/// grant) or denied, atomically: the status changes only if it was pending.
pub async fn decide(
    pool: &SqlitePool,
    id: &str,
    operator: &str,
    approve: bool,
    reason: &str,
    now_ms: i64,
    grant: Option<(&str, &str)>,
) -> Result<VoteOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let voted: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM votes WHERE request_id = ? AND operator = ?")
            .bind(id)
            .bind(operator)
            .fetch_optional(&mut *tx)
            .await?;
    if voted.is_some() {
        return Ok(VoteOutcome::AlreadyVoted);
    }
    let new_status = if approve {
        status::APPROVED
    } else {
        status::DENIED
    };
    let (grant_id, grant_token) = match grant {
        Some((gid, tok)) => (Some(gid), Some(tok)),
        None => (None, None),
    };
    let changed = sqlx::query(
        "UPDATE requests SET status = ?, decided_at_ms = ?, grant_id = ?, grant_token = ? \
         WHERE id = ? AND status = 'pending' AND expires_at_ms > ?",
    )
    .bind(new_status)
    .bind(now_ms)
    .bind(grant_id)
    .bind(grant_token)
    .bind(id)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed != 1 {
        return Ok(VoteOutcome::NotPending);
    }
    sqlx::query(
        "INSERT INTO votes (request_id, operator, decision, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(operator)
    .bind(if approve { "approve" } else { "deny" })
    .bind(reason)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(VoteOutcome::Recorded)
}

/// Marks every pending request past its expiry as expired; returns them.
pub async fn expire_due(
    pool: &SqlitePool,
    now_ms: i64,
) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE requests SET status = 'expired', decided_at_ms = ? \
         WHERE status = 'pending' AND expires_at_ms <= ? RETURNING {COLUMNS}"
    )))
    .bind(now_ms)
    .bind(now_ms)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Records the broker's report that an approved request ran (or failed).
/// Only an approved request moves; returns whether it did.
pub async fn report_execution(
    pool: &SqlitePool,
    id: &str,
    ok: bool,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE requests SET status = ?, outcome = ? WHERE id = ? AND status = 'approved'",
    )
    .bind(if ok { status::EXECUTED } else { status::FAILED })
    .bind(outcome)
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Revokes a session; returns whether it was not revoked before.
pub async fn revoke(
    pool: &SqlitePool,
    session_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO revoked_sessions (session_id, at_ms, reason) VALUES (?, ?, ?) ON CONFLICT (session_id) DO NOTHING")
        .bind(session_id)
        .bind(now_ms)
        .bind(reason)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(done == 1)
}

/// Whether a session is revoked.
pub async fn is_revoked(pool: &SqlitePool, session_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM revoked_sessions WHERE session_id = ?")
            .bind(session_id)
            .fetch_optional(pool)
            .await?;
    Ok(found.is_some())
}

/// Sessions revoked at or after `since_ms`: (session, at, reason).
pub async fn revoked_since(
    pool: &SqlitePool,
    since_ms: i64,
) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT session_id, at_ms, reason FROM revoked_sessions WHERE at_ms >= ? ORDER BY at_ms",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
