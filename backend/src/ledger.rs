//! The billing ledger's writes: refunds and plan changes, each one
//! transaction that re-checks the business invariant it protects, so a race
//! between two approved calls cannot overdraw an order.

use serde::{Deserialize, Serialize};
use zt_proto::db::{Db, Dialect};
use zt_proto::with_db;

/// Ledger failures. `Display` of `NotFound` and `Refused` is safe to show a
/// caller; `Db` is not shown.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A business rule refused the write.
    #[error("{0}")]
    Refused(String),
    /// The database failed.
    #[error("the ledger could not complete the request")]
    Db(#[from] sqlx::Error),
}

/// Who asked for a write, recorded with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    /// Session id of the agent's session.
    pub session: String,
    /// The human the agent acts for.
    pub human: String,
    /// The grant redeemed, when operators approved the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The order refunded.
    pub order_id: String,
    /// Amount in cents, > 0.
    pub amount_cents: i64,
    /// A retry with the same key (and the same human) returns the first refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Who asked.
    pub actor: Actor,
}

/// `POST /v1/plan-changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeRequest {
    /// The account changed.
    pub account_id: String,
    /// `basic`, `standard`, `premium` or `enterprise`.
    pub new_plan: String,
    /// Who asked.
    pub actor: Actor,
}

/// The statement that opens a write transaction, and the suffix that locks
/// the row a write reads first: SQLite takes the database's write lock at
/// `BEGIN IMMEDIATE`; PostgreSQL locks the row (`FOR UPDATE`). Either way
/// two concurrent writes to one order or account cannot both see its old
/// state.
fn locking(db: &Db) -> (&'static str, &'static str) {
    match db.dialect() {
        Dialect::Sqlite => ("BEGIN IMMEDIATE", ""),
        Dialect::Postgres => ("BEGIN", " FOR UPDATE"),
    }
}

/// Issues a refund (or returns the first one for a repeated idempotency key).
pub async fn refund(db: &Db, req: &RefundRequest) -> Result<serde_json::Value, LedgerError> {
    let (order, amount, actor) = (&req.order_id, req.amount_cents, &req.actor);
    if amount <= 0 {
        return Err(LedgerError::Refused(
            "a refund amount must be positive".into(),
        ));
    }
    let (begin, lock) = locking(db);
    let read_order = format!("SELECT amount_cents, refunded_cents FROM orders WHERE id = $1{lock}");
    with_db!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let (total, refunded): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(read_order))
            .bind(order)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("order {order}")))?;
        if let Some(key) = &req.idempotency_key {
            let first: Option<(String, String, i64)> = sqlx::query_as(
                "SELECT id, order_id, amount_cents FROM refunds WHERE human = $1 AND idempotency_key = $2",
            )
            .bind(&actor.human)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, first_order, first_amount)) = first {
                if &first_order != order || first_amount != amount {
                    return Err(LedgerError::Refused(
                        "this idempotency key was already used for a different refund".into(),
                    ));
                }
                return Ok(serde_json::json!({
                    "refund_id": id,
                    "order_id": order,
                    "amount": amount,
                    "refunded_total": refunded,
                    "order_total": total,
                    "replayed": true,
                }));
            }
        }
        if refunded.saturating_add(amount) > total {
            return Err(LedgerError::Refused(format!(
                "refund of {amount} cents exceeds the refundable balance of order {order}"
            )));
        }
        if let Some(grant) = &actor.grant_id {
            let used: Option<String> = sqlx::query_scalar("SELECT id FROM refunds WHERE grant_id = $1")
                .bind(grant)
                .fetch_optional(&mut *tx)
                .await?;
            if used.is_some() {
                return Err(LedgerError::Refused("this grant was already used".into()));
            }
        }
        sqlx::query("UPDATE orders SET refunded_cents = refunded_cents + $1 WHERE id = $2")
            .bind(amount)
            .bind(order)
            .execute(&mut *tx)
            .await?;
        let id = zt_proto::random_id("rf_");
        sqlx::query(
            "INSERT INTO refunds (id, order_id, amount_cents, session_id, human, grant_id, idempotency_key, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(order)
        .bind(amount)
        .bind(&actor.session)
        .bind(&actor.human)
        .bind(&actor.grant_id)
        .bind(&req.idempotency_key)
        .bind(zt_proto::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(serde_json::json!({
            "refund_id": id,
            "order_id": order,
            "amount": amount,
            "refunded_total": refunded + amount,
            "order_total": total,
        }))
    })
}

/// The plans an account can be on (also a CHECK constraint in the schema).
pub const PLANS: &[&str] = &["basic", "standard", "premium", "enterprise"];

/// Changes an account's plan.
pub async fn change_plan(
    db: &Db,
    req: &PlanChangeRequest,
) -> Result<serde_json::Value, LedgerError> {
    let (account, plan, actor) = (&req.account_id, &req.new_plan, &req.actor);
    if !PLANS.contains(&plan.as_str()) {
        return Err(LedgerError::Refused(format!("unknown plan `{plan}`")));
    }
    let (begin, lock) = locking(db);
    let read_plan = format!("SELECT plan FROM accounts WHERE id = $1{lock}");
    with_db!(db, p => {
        let mut tx = p.begin_with(begin).await?;
        let old: String = sqlx::query_scalar(sqlx::AssertSqlSafe(read_plan))
            .bind(account)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("account {account}")))?;
        if let Some(grant) = &actor.grant_id {
            let used: Option<String> =
                sqlx::query_scalar("SELECT id FROM plan_changes WHERE grant_id = $1")
                    .bind(grant)
                    .fetch_optional(&mut *tx)
                    .await?;
            if used.is_some() {
                return Err(LedgerError::Refused("this grant was already used".into()));
            }
        }
        sqlx::query("UPDATE accounts SET plan = $1 WHERE id = $2")
            .bind(plan)
            .bind(account)
            .execute(&mut *tx)
            .await?;
        let id = zt_proto::random_id("chg_");
        sqlx::query(
            "INSERT INTO plan_changes (id, account_id, old_plan, new_plan, session_id, human, grant_id, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(account)
        .bind(&old)
        .bind(plan)
        .bind(&actor.session)
        .bind(&actor.human)
        .bind(&actor.grant_id)
        .bind(zt_proto::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(serde_json::json!({ "change_id": id, "account_id": account, "old_plan": old, "new_plan": plan }))
    })
}
