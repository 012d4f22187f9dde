//! The approval service's own state: requests, votes, revoked sessions.

use zt_proto::db::{Db, Dialect, Location};
use zt_proto::grant::GrantError;
use zt_proto::pb::{ApprovalRequest, EscalateRequest, Vote};
use zt_proto::with_db;

use crate::rules::Requirements;

/// Request states. Terminal: denied, expired, executed, failed, cancelled.
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
    /// An admin cancelled it, or its session was revoked.
    pub const CANCELLED: &str = "cancelled";
}

/// Why recording a vote failed.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The grant could not be sealed; nothing was recorded.
    #[error("sealing the grant: {0}")]
    Seal(#[from] GrantError),
}

/// Opens (creating and migrating) the approval database: an SQLite file,
/// or the `zt_approval` schema of a PostgreSQL database shared by replicas.
pub async fn open(location: &Location) -> Result<Db, OpenError> {
    let db = Db::open(location, SCHEMA, false).await?;
    db.migrate(
        &sqlx::migrate!("./migrations/sqlite"),
        &sqlx::migrate!("./migrations/postgres"),
        "zt-approval migrate",
    )
    .await?;
    Ok(db)
}

/// The PostgreSQL schema of the approval service's state.
pub const SCHEMA: &str = "zt_approval";

/// `zt-approval migrate`: as the administrator of the PostgreSQL database
/// at `location`, creates and migrates the approval service's schema and
/// the audit tables; with `role`, gives that role (the one the service
/// connects as) its own schema's rows and its own audit chains
/// (`approval`, `approval-*`) and nothing else; `auditors` may read the
/// audit tables.
pub async fn migrate(
    location: &Location,
    role: Option<&str>,
    auditors: &[String],
) -> Result<(), OpenError> {
    let db = open(location).await?;
    let audit = zt_proto::store::open_pool(location).await?;
    if let Some(role) = role {
        db.grant_own_schema(SCHEMA, role).await?;
        zt_proto::store::grant_chain(&audit, crate::setup::AUDIT_CHAIN, role).await?;
    }
    for auditor in auditors {
        audit
            .grant_read(
                zt_proto::store::AUDIT_SCHEMA,
                &zt_proto::store::AUDIT_TABLES,
                auditor,
            )
            .await?;
    }
    audit.close().await;
    db.close().await;
    Ok(())
}

/// Why the approval database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Connecting or migrating failed.
    #[error("the approval database: {0}")]
    Db(#[from] zt_proto::db::DbError),
    /// The audit tables could not be set up.
    #[error(transparent)]
    Audit(#[from] zt_proto::store::StoreError),
}

const COLUMNS: &str = "id, status, tool, args_json, args_hash, session_id, human, actors_json, rules_json, \
     reason, risk, amount_cents, justification, created_at_ms, expires_at_ms, grant_token, outcome, \
     approvals_required, approve_reason_required";

/// A `requests` row as stored.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    status: String,
    tool: String,
    args_json: String,
    args_hash: String,
    session_id: String,
    human: String,
    actors_json: String,
    rules_json: String,
    reason: String,
    risk: String,
    amount_cents: i64,
    justification: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    grant_token: Option<String>,
    outcome: String,
    approvals_required: i64,
    approve_reason_required: i64,
}

impl From<Row> for ApprovalRequest {
    fn from(row: Row) -> ApprovalRequest {
        let list = |text: &str| -> Vec<String> { serde_json::from_str(text).unwrap_or_default() };
        ApprovalRequest {
            actors: list(&row.actors_json),
            rules: list(&row.rules_json),
            id: row.id,
            status: row.status,
            tool: row.tool,
            args_json: row.args_json,
            args_hash: row.args_hash,
            session_id: row.session_id,
            human: row.human,
            reason: row.reason,
            risk: row.risk,
            amount_cents: row.amount_cents,
            justification: row.justification,
            created_at_ms: row.created_at_ms,
            expires_at_ms: row.expires_at_ms,
            votes: Vec::new(),
            grant: row.grant_token.unwrap_or_default(),
            outcome: row.outcome,
            // The column is at least 1; anything unreadable reads as unreachable.
            approvals_required: u32::try_from(row.approvals_required).unwrap_or(u32::MAX),
            approvers: Vec::new(),
            approve_reason_required: row.approve_reason_required != 0,
        }
    }
}

/// Votes in the order they were cast.
fn votes_sql(db: &Db) -> &'static str {
    match db.dialect() {
        Dialect::Sqlite => {
            "SELECT operator, decision, reason, at_ms FROM votes WHERE request_id = $1 ORDER BY at_ms, rowid"
        }
        Dialect::Postgres => {
            "SELECT operator, decision, reason, at_ms FROM votes WHERE request_id = $1 ORDER BY at_ms, position"
        }
    }
}

async fn with_votes(pool: &Db, row: Row) -> Result<ApprovalRequest, sqlx::Error> {
    let mut req = ApprovalRequest::from(row);
    let rows: Vec<(String, String, String, i64)> = with_db!(pool, p => {
        sqlx::query_as(votes_sql(pool)).bind(&req.id).fetch_all(p).await?
    });
    req.votes = rows
        .into_iter()
        .map(|(operator, decision, reason, at_ms)| Vote {
            operator,
            decision,
            reason,
            at_ms,
        })
        .collect();
    req.approvers = req
        .votes
        .iter()
        .filter(|v| v.decision == "approve")
        .map(|v| v.operator.clone())
        .collect();
    Ok(req)
}

async fn all_with_votes(pool: &Db, rows: Vec<Row>) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(with_votes(pool, r).await?);
    }
    Ok(out)
}

/// The request with `id`.
pub async fn get(pool: &Db, id: &str) -> Result<Option<ApprovalRequest>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM requests WHERE id = $1");
    let row: Option<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await?
    });
    match row {
        Some(r) => Ok(Some(with_votes(pool, r).await?)),
        None => Ok(None),
    }
}

/// An open request (pending, or approved and not yet used) for the same
/// exact call of the same session.
pub async fn find_open(
    pool: &Db,
    session_id: &str,
    tool: &str,
    args_hash: &str,
) -> Result<Option<ApprovalRequest>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM requests WHERE session_id = $1 AND tool = $2 AND args_hash = $3 \
         AND status IN ('pending', 'approved') ORDER BY created_at_ms DESC LIMIT 1"
    );
    let row: Option<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .bind(tool)
            .bind(args_hash)
            .fetch_optional(p)
            .await?
    });
    match row {
        Some(r) => Ok(Some(with_votes(pool, r).await?)),
        None => Ok(None),
    }
}

/// Inserts a new pending request with what the rules require of it.
pub async fn insert(
    pool: &Db,
    id: &str,
    req: &EscalateRequest,
    now_ms: i64,
    ttl_ms: i64,
    needs: Requirements,
) -> Result<(), sqlx::Error> {
    with_db!(pool, p => {
        sqlx::query(
            "INSERT INTO requests (id, status, tool, args_json, args_hash, session_id, human, actors_json, \
             rules_json, reason, risk, amount_cents, justification, created_at_ms, expires_at_ms, \
             approvals_required, approve_reason_required) \
             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(i64::from(needs.approvals.max(1)))
        .bind(i64::from(needs.approve_reason))
        .execute(p)
        .await?;
    });
    Ok(())
}

/// Pending requests, oldest first.
pub async fn pending(pool: &Db) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM requests WHERE status = 'pending' ORDER BY created_at_ms");
    let rows: Vec<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await?
    });
    all_with_votes(pool, rows).await
}

/// Outcome of recording a vote.
#[derive(Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// An approval was recorded and the request stays pending: fewer
    /// distinct approvals than it requires so far.
    Counted,
    /// The vote decided the request: approved (with the grant's id) or
    /// denied (no grant).
    Decided {
        /// The grant issued, when approved.
        grant_id: Option<String>,
    },
    /// The request was no longer pending (someone else decided, it was
    /// cancelled, or it expired). Nothing was recorded.
    NotPending,
    /// This operator already voted on the request. Nothing was recorded.
    AlreadyVoted,
}

/// Records an operator's vote on a pending request, in one transaction
/// that holds the request's write lock (SQLite `BEGIN IMMEDIATE`;
/// PostgreSQL `SELECT ... FOR UPDATE`), so votes on a request are
/// serialized across connections and replicas:
///
/// - a deny denies the request (a veto);
/// - an approval counts toward the request's `approvals_required`; the one
///   that reaches it approves the request with the grant `seal` returns for
///   the approvers so far, in voting order.
///
/// A status changes only from `pending`, together with the vote, so two
/// concurrent deciding votes cannot both yield a grant. When `seal` fails,
/// nothing is recorded.
pub async fn vote<F>(
    pool: &Db,
    id: &str,
    operator: &str,
    approve: bool,
    reason: &str,
    now_ms: i64,
    seal: F,
) -> Result<VoteOutcome, VoteError>
where
    F: FnOnce(&[String]) -> Result<(String, String), GrantError>,
{
    let (begin, lock) = match pool.dialect() {
        Dialect::Sqlite => ("BEGIN IMMEDIATE", "SELECT $1"),
        Dialect::Postgres => ("BEGIN", "SELECT id FROM requests WHERE id = $1 FOR UPDATE"),
    };
    let approvers_sql = match pool.dialect() {
        Dialect::Sqlite => {
            "SELECT operator FROM votes WHERE request_id = $1 AND decision = 'approve' ORDER BY at_ms, rowid"
        }
        Dialect::Postgres => {
            "SELECT operator FROM votes WHERE request_id = $1 AND decision = 'approve' ORDER BY at_ms, position"
        }
    };
    with_db!(pool, p => {
        let mut tx = p.begin_with(begin).await?;
        sqlx::query(lock).bind(id).execute(&mut *tx).await?;
        let voted: Option<String> =
            sqlx::query_scalar("SELECT operator FROM votes WHERE request_id = $1 AND operator = $2")
                .bind(id)
                .bind(operator)
                .fetch_optional(&mut *tx)
                .await?;
        if voted.is_some() {
            return Ok(VoteOutcome::AlreadyVoted);
        }
        let required: Option<i64> = sqlx::query_scalar(
            "SELECT approvals_required FROM requests \
             WHERE id = $1 AND status = 'pending' AND expires_at_ms > $2",
        )
        .bind(id)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(required) = required else {
            return Ok(VoteOutcome::NotPending);
        };
        sqlx::query(
            "INSERT INTO votes (request_id, operator, decision, reason, at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(operator)
        .bind(if approve { "approve" } else { "deny" })
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;

        let (new_status, grant) = if approve {
            let approvers: Vec<String> = sqlx::query_scalar(approvers_sql)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            if i64::try_from(approvers.len()).unwrap_or(i64::MAX) < required.max(1) {
                tx.commit().await?;
                return Ok(VoteOutcome::Counted);
            }
            (status::APPROVED, Some(seal(&approvers)?))
        } else {
            (status::DENIED, None)
        };
        let (grant_id, grant_token) = match &grant {
            Some((gid, tok)) => (Some(gid.as_str()), Some(tok.as_str())),
            None => (None, None),
        };
        let changed = sqlx::query(
            "UPDATE requests SET status = $1, decided_at_ms = $2, grant_id = $3, grant_token = $4 \
             WHERE id = $5 AND status = 'pending'",
        )
        .bind(new_status)
        .bind(now_ms)
        .bind(grant_id)
        .bind(grant_token)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            // Unreachable under the write lock; roll back rather than trust it.
            return Ok(VoteOutcome::NotPending);
        }
        tx.commit().await?;
        Ok(VoteOutcome::Decided {
            grant_id: grant.map(|(gid, _)| gid),
        })
    })
}

/// Cancels a pending request; `outcome` says by whom and why. Returns
/// whether it moved (it was pending and not past its expiry).
pub async fn cancel(pool: &Db, id: &str, outcome: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let changed = with_db!(pool, p => {
        sqlx::query(
            "UPDATE requests SET status = 'cancelled', decided_at_ms = $1, outcome = $2 \
             WHERE id = $3 AND status = 'pending' AND expires_at_ms > $1",
        )
        .bind(now_ms)
        .bind(outcome)
        .bind(id)
        .execute(p)
        .await?
        .rows_affected()
    });
    Ok(changed == 1)
}

/// Cancels every pending request of a session; returns them.
pub async fn cancel_session(
    pool: &Db,
    session_id: &str,
    outcome: &str,
    now_ms: i64,
) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let sql = format!(
        "UPDATE requests SET status = 'cancelled', decided_at_ms = $1, outcome = $2 \
         WHERE session_id = $3 AND status = 'pending' RETURNING {COLUMNS}"
    );
    let rows: Vec<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(outcome)
            .bind(session_id)
            .fetch_all(p)
            .await?
    });
    all_with_votes(pool, rows).await
}

/// The outcome recorded on an approved request whose grant was never used.
pub const GRANT_UNUSED: &str = "approved, but the grant expired unused";

/// How long after its approval an unused grant's request expires: the
/// grant's lifetime, and a minute for a broker that redeemed it at the last
/// moment to report the execution.
pub const UNUSED_GRANT_AFTER_MS: i64 = zt_proto::grant::MAX_GRANT_TTL_MS + 60_000;

/// Marks every pending request past its expiry as expired, and every
/// approved request whose grant can no longer be redeemed (it stays
/// approved no longer, so the same call can be escalated again); returns
/// them. An unused grant's request keeps its approval time and says so in
/// its outcome ([`GRANT_UNUSED`]).
pub async fn expire_due(pool: &Db, now_ms: i64) -> Result<Vec<ApprovalRequest>, sqlx::Error> {
    let pending = format!(
        "UPDATE requests SET status = 'expired', decided_at_ms = $1 \
         WHERE status = 'pending' AND expires_at_ms <= $1 RETURNING {COLUMNS}"
    );
    let unused = format!(
        "UPDATE requests SET status = 'expired', outcome = $1 \
         WHERE status = 'approved' AND decided_at_ms <= $2 RETURNING {COLUMNS}"
    );
    let cutoff = now_ms.saturating_sub(UNUSED_GRANT_AFTER_MS);
    let mut rows: Vec<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(pending)).bind(now_ms).fetch_all(p).await?
    });
    let more: Vec<Row> = with_db!(pool, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(unused))
            .bind(GRANT_UNUSED)
            .bind(cutoff)
            .fetch_all(p)
            .await?
    });
    rows.extend(more);
    all_with_votes(pool, rows).await
}

/// Records the broker's report that an approved request ran (or failed).
/// Only an approved request moves; returns whether it did.
pub async fn report_execution(
    pool: &Db,
    id: &str,
    ok: bool,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let changed = with_db!(pool, p => {
        sqlx::query("UPDATE requests SET status = $1, outcome = $2 WHERE id = $3 AND status = 'approved'")
            .bind(if ok { status::EXECUTED } else { status::FAILED })
            .bind(outcome)
            .bind(id)
            .execute(p)
            .await?
            .rows_affected()
    });
    Ok(changed == 1)
}

/// Revokes a session; returns whether it was not revoked before.
pub async fn revoke(
    pool: &Db,
    session_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    // The next sequence number; two replicas racing for it collide on the
    // unique index, and the loser tries again after the winner committed.
    let mut attempt = 0;
    loop {
        let done = with_db!(pool, p => {
            sqlx::query(
                "INSERT INTO revoked_sessions (session_id, at_ms, reason, seq) \
                 SELECT $1, $2, $3, COALESCE(MAX(seq), 0) + 1 FROM revoked_sessions WHERE true \
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session_id)
            .bind(now_ms)
            .bind(reason)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        });
        match done {
            Ok(n) => return Ok(n == 1),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 8 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Most revocations in one page of [`revoked_after`].
pub const REVOCATION_PAGE: i64 = 1_000;

/// Up to `limit` (at most [`REVOCATION_PAGE`]) revocations after sequence
/// number `after`, in order: (seq, session, at, reason).
pub async fn revoked_after(
    pool: &Db,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String, i64, String)>, sqlx::Error> {
    Ok(with_db!(pool, p => {
        sqlx::query_as(
            "SELECT seq, session_id, at_ms, reason FROM revoked_sessions \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit.clamp(1, REVOCATION_PAGE))
        .fetch_all(p)
        .await?
    }))
}

/// Whether a session is revoked.
pub async fn is_revoked(pool: &Db, session_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = with_db!(pool, p => {
        sqlx::query_scalar("SELECT session_id FROM revoked_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(p)
            .await?
    });
    Ok(found.is_some())
}

/// Records that `launcher` started session `session_id` (a refresh keeps
/// the first record).
pub async fn record_launch(
    pool: &Db,
    session_id: &str,
    launcher: &str,
    human: &str,
    agent: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    with_db!(pool, p => {
        sqlx::query(
            "INSERT INTO launched_sessions (session_id, launcher, human, agent, issued_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(session_id)
        .bind(launcher)
        .bind(human)
        .bind(agent)
        .bind(now_ms)
        .execute(p)
        .await?;
    });
    Ok(())
}

/// The launcher that started `session_id`, if a launcher did.
pub async fn launcher_of(pool: &Db, session_id: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(with_db!(pool, p => {
        sqlx::query_scalar("SELECT launcher FROM launched_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(p)
            .await?
    }))
}

/// Revokes a launcher or operator credential by its token id; returns
/// whether it was not revoked before.
pub async fn revoke_token(
    pool: &Db,
    jti: &str,
    reason: &str,
    by: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = with_db!(pool, p => {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, reason, by_operator, at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(reason)
        .bind(by)
        .bind(now_ms)
        .execute(p)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Whether a credential's token id is revoked.
pub async fn is_token_revoked(pool: &Db, jti: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = with_db!(pool, p => {
        sqlx::query_scalar("SELECT jti FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(p)
            .await?
    });
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_db(tag: &str) -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "zt-approval-db-{tag}-{}-{}",
            std::process::id(),
            zt_proto::random_id("")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pool = open(&Location::File(dir.join("approval.db")))
            .await
            .expect("database");
        (pool, dir)
    }

    fn escalation(session: &str, amount_cents: i64) -> EscalateRequest {
        EscalateRequest {
            tool: "issue_refund".into(),
            args_json: format!(r#"{{"amount":{amount_cents},"order_id":"ord_1003"}}"#),
            args_hash: zt_proto::random_id(""),
            session_id: session.into(),
            human: "alice".into(),
            actors: vec!["agent:x".into()],
            amount_cents,
            ..EscalateRequest::default()
        }
    }

    const QUORUM: Requirements = Requirements {
        approvals: 2,
        approve_reason: true,
    };

    fn seal(approvers: &[String]) -> Result<(String, String), GrantError> {
        Ok((
            zt_proto::random_id("grant_"),
            format!("grant-for:{}", approvers.join(",")),
        ))
    }

    #[tokio::test]
    async fn a_quorum_needs_distinct_approvers_and_one_grant_lists_them() {
        let (pool, dir) = temp_db("quorum").await;
        let now = zt_proto::now_ms();
        insert(
            &pool,
            "req_q",
            &escalation("s1", 80_000),
            now,
            60_000,
            QUORUM,
        )
        .await
        .unwrap();
        let v = |op: &'static str, approve: bool| {
            let pool = pool.clone();
            async move { vote(&pool, "req_q", op, approve, "ok", now + 1, seal).await }
        };
        assert_eq!(v("carol", true).await.unwrap(), VoteOutcome::Counted);
        let req = get(&pool, "req_q").await.unwrap().unwrap();
        assert_eq!(
            (req.status.as_str(), req.approvals_required),
            ("pending", 2)
        );
        assert_eq!(req.approvers, ["carol"]);
        assert!(req.approve_reason_required);
        assert!(req.grant.is_empty());
        assert_eq!(v("carol", true).await.unwrap(), VoteOutcome::AlreadyVoted);
        assert_eq!(
            get(&pool, "req_q").await.unwrap().unwrap().votes.len(),
            1,
            "a repeated vote does not count twice"
        );
        assert!(matches!(
            v("erin", true).await.unwrap(),
            VoteOutcome::Decided { grant_id: Some(_) }
        ));
        let req = get(&pool, "req_q").await.unwrap().unwrap();
        assert_eq!(req.status, "approved");
        assert_eq!(req.approvers, ["carol", "erin"]);
        assert_eq!(req.grant, "grant-for:carol,erin");
        assert_eq!(v("frank", false).await.unwrap(), VoteOutcome::NotPending);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_deny_vetoes_a_half_approved_request() {
        let (pool, dir) = temp_db("veto").await;
        let now = zt_proto::now_ms();
        insert(
            &pool,
            "req_v",
            &escalation("s1", 80_000),
            now,
            60_000,
            QUORUM,
        )
        .await
        .unwrap();
        let out = vote(&pool, "req_v", "carol", true, "ok", now, seal).await;
        assert_eq!(out.unwrap(), VoteOutcome::Counted);
        let out = vote(&pool, "req_v", "erin", false, "no", now, seal).await;
        assert_eq!(out.unwrap(), VoteOutcome::Decided { grant_id: None });
        let req = get(&pool, "req_v").await.unwrap().unwrap();
        assert_eq!(req.status, "denied");
        assert!(req.grant.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn concurrent_deciding_votes_yield_one_grant() {
        let (pool, dir) = temp_db("race").await;
        let now = zt_proto::now_ms();
        for round in 0..10 {
            let id = format!("req_r{round}");
            insert(
                &pool,
                &id,
                &escalation(&format!("s{round}"), 80_000),
                now,
                60_000,
                QUORUM,
            )
            .await
            .unwrap();
            vote(&pool, &id, "carol", true, "ok", now, seal)
                .await
                .unwrap();
            // Two second approvals at once: exactly one decides.
            let votes = ["erin", "frank"].map(|op| {
                let (pool, id) = (pool.clone(), id.clone());
                tokio::spawn(async move { vote(&pool, &id, op, true, "ok", now, seal).await })
            });
            let mut decided = 0;
            for v in votes {
                match v.await.unwrap().unwrap() {
                    VoteOutcome::Decided { grant_id: Some(_) } => decided += 1,
                    VoteOutcome::NotPending => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(decided, 1, "round {round}");
            let req = get(&pool, &id).await.unwrap().unwrap();
            assert_eq!(req.approvers.len(), 2, "{:?}", req.approvers);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn expired_and_cancelled_requests_take_no_votes() {
        let (pool, dir) = temp_db("ends").await;
        let now = zt_proto::now_ms();
        for (id, session) in [("req_e", "s1"), ("req_c", "s2"), ("req_s", "s3")] {
            insert(&pool, id, &escalation(session, 80_000), now, 1_000, QUORUM)
                .await
                .unwrap();
            vote(&pool, id, "carol", true, "ok", now, seal)
                .await
                .unwrap();
        }
        assert!(
            cancel(&pool, "req_c", "cancelled by root: test", now)
                .await
                .unwrap()
        );
        assert!(!cancel(&pool, "req_c", "again", now).await.unwrap());
        let by_session = cancel_session(&pool, "s3", "session revoked", now)
            .await
            .unwrap();
        assert_eq!(by_session.len(), 1);
        assert_eq!(by_session[0].approvers, ["carol"]);
        for id in ["req_c", "req_s"] {
            let out = vote(&pool, id, "erin", true, "ok", now, seal).await;
            assert_eq!(out.unwrap(), VoteOutcome::NotPending, "{id}");
        }
        // Past its expiry a half-approved request takes no second approval...
        let out = vote(&pool, "req_e", "erin", true, "ok", now + 1_000, seal).await;
        assert_eq!(out.unwrap(), VoteOutcome::NotPending);
        // ...and expires.
        let expired = expire_due(&pool, now + 1_000).await.unwrap();
        let ids: Vec<&str> = expired.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["req_e"]);
        assert_eq!(expired[0].approvers, ["carol"]);
        let req = get(&pool, "req_c").await.unwrap().unwrap();
        assert_eq!(
            (req.status.as_str(), req.outcome.as_str()),
            ("cancelled", "cancelled by root: test")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn revocations_page_in_sequence() {
        let (pool, dir) = temp_db("revoked").await;
        for (i, sid) in ["s_a", "s_b", "s_c"].into_iter().enumerate() {
            // Clocks may go back: the order is the sequence, not the time.
            assert!(revoke(&pool, sid, "x", 1_000 - i as i64).await.unwrap());
        }
        assert!(!revoke(&pool, "s_b", "again", 5).await.unwrap());
        let first = revoked_after(&pool, 0, 2).await.unwrap();
        let ids: Vec<&str> = first.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(ids, ["s_a", "s_b"]);
        let rest = revoked_after(&pool, first[1].0, 2).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, "s_c");
        assert!(rest[0].0 > first[1].0);
        assert!(revoked_after(&pool, rest[0].0, 2).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_approval_whose_grant_went_unused_expires() {
        let (pool, dir) = temp_db("unused").await;
        let now = zt_proto::now_ms();
        let one = Requirements {
            approvals: 1,
            approve_reason: false,
        };
        insert(&pool, "req_u", &escalation("s1", 100), now, 60_000, one)
            .await
            .unwrap();
        let out = vote(&pool, "req_u", "carol", true, "ok", now, seal).await;
        assert!(matches!(
            out.unwrap(),
            VoteOutcome::Decided { grant_id: Some(_) }
        ));
        // While the grant can still be redeemed (and reported), it stays approved.
        let early = expire_due(&pool, now + UNUSED_GRANT_AFTER_MS - 1)
            .await
            .unwrap();
        assert!(early.is_empty(), "{early:?}");
        assert_eq!(
            get(&pool, "req_u").await.unwrap().unwrap().status,
            "approved"
        );
        // Once it cannot, it expires, and the same call may be escalated anew.
        let expired = expire_due(&pool, now + UNUSED_GRANT_AFTER_MS)
            .await
            .unwrap();
        assert_eq!(expired.len(), 1);
        let req = get(&pool, "req_u").await.unwrap().unwrap();
        assert_eq!(
            (req.status.as_str(), req.outcome.as_str()),
            ("expired", GRANT_UNUSED)
        );
        assert!(
            !report_execution(&pool, "req_u", true, "late")
                .await
                .unwrap()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_seal_records_nothing() {
        let (pool, dir) = temp_db("seal").await;
        let now = zt_proto::now_ms();
        let one = Requirements {
            approvals: 1,
            approve_reason: false,
        };
        insert(&pool, "req_f", &escalation("s1", 100), now, 60_000, one)
            .await
            .unwrap();
        let out = vote(&pool, "req_f", "carol", true, "ok", now, |_| {
            Err(GrantError::Encode)
        })
        .await;
        assert!(matches!(out, Err(VoteError::Seal(_))), "{out:?}");
        let req = get(&pool, "req_f").await.unwrap().unwrap();
        assert_eq!(req.status, "pending");
        assert!(req.votes.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn requests_from_before_quorums_survive_the_migration() {
        let dir = std::env::temp_dir().join(format!(
            "zt-approval-db-migrate-{}-{}",
            std::process::id(),
            zt_proto::random_id("")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pool = zt_proto::store::open_sqlite(&dir.join("approval.db"))
            .await
            .unwrap();
        sqlx::migrate!("./migrations/sqlite")
            .run_to(1, &pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO requests (id, status, tool, args_json, args_hash, session_id, human, \
             actors_json, rules_json, reason, risk, amount_cents, justification, created_at_ms, \
             expires_at_ms) VALUES ('req_old', 'pending', 'issue_refund', '{}', 'h', 's1', 'alice', \
             '[]', '[]', 'r', 'high', 90000, '', 1, 9999999999999)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO votes (request_id, operator, decision, reason, at_ms) \
             VALUES ('req_old', 'carol', 'deny', 'no', 2)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let pool = open(&Location::File(dir.join("approval.db")))
            .await
            .unwrap();
        let req = get(&pool, "req_old").await.unwrap().unwrap();
        assert_eq!(req.status, "pending");
        assert_eq!(req.approvals_required, 1);
        assert_eq!(req.votes.len(), 1);
        assert!(
            cancel(&pool, "req_old", "cancelled", 3).await.unwrap(),
            "the new state is allowed"
        );
        let Db::Sqlite(raw) = &pool else {
            panic!("an SQLite pool")
        };
        let fk: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(raw)
            .await
            .unwrap();
        assert!(fk.is_empty(), "{fk:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
