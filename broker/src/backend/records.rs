//! The records adapter: reads of the example backend's database (accounts,
//! orders, support articles), and the attributes the policy needs about the
//! object a call acts on. Its location is a credential in the broker's
//! private config; it never writes money or plans (the billing API does).

use std::path::Path;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};
use zt_policies::Resource;

use super::{Actor, Adapter, BackendError, Fetched};

/// The records database.
#[derive(Debug, Clone)]
pub struct Records {
    pool: SqlitePool,
}

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn i(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or_default()
}

impl Records {
    /// Opens (creating, migrating and seeding on first use) the database file.
    pub async fn open(path: &Path) -> Result<Records, BackendError> {
        let pool = zt_backend::db::open(path).await?;
        Ok(Records { pool })
    }

    /// The attributes the policy needs about the object a call acts on, in
    /// one read. For a read-only tool whose result is that same row, the
    /// read also yields the result ([`Fetched::snapshot`]).
    pub async fn resource(&self, tool: &str, args: &Value) -> Result<Fetched, BackendError> {
        let attrs = |v: Value| match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        match tool {
            "lookup_account" | "list_orders" | "change_plan" => {
                let id = s(args, "account_id");
                let row =
                    sqlx::query("SELECT id, name, email, region, plan FROM accounts WHERE id = ?")
                        .bind(&id)
                        .fetch_optional(&self.pool)
                        .await?
                        .ok_or_else(|| BackendError::NotFound(format!("account {id}")))?;
                let account = account_json(&row);
                let resource = Resource {
                    id,
                    attrs: attrs(json!({"region": account["region"], "plan": account["plan"]})),
                };
                Ok(Fetched {
                    resource: Some(resource),
                    snapshot: (tool == "lookup_account").then_some(account),
                })
            }
            "issue_refund" => {
                let id = s(args, "order_id");
                let row = sqlx::query(
                    "SELECT o.account_id, a.region, o.amount_cents, o.refunded_cents \
                     FROM orders o JOIN accounts a ON a.id = o.account_id WHERE o.id = ?",
                )
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| BackendError::NotFound(format!("order {id}")))?;
                Ok(Fetched {
                    resource: Some(Resource {
                        id,
                        attrs: attrs(json!({
                            "account": row.get::<String, _>(0),
                            "region": row.get::<String, _>(1),
                            "amount": row.get::<i64, _>(2),
                            "refunded": row.get::<i64, _>(3),
                        })),
                    }),
                    snapshot: None,
                })
            }
            "fetch_document" => {
                let id = s(args, "doc_id");
                let doc = self.fetch_document(&id).await?;
                Ok(Fetched {
                    resource: Some(Resource {
                        id,
                        attrs: serde_json::Map::new(),
                    }),
                    snapshot: Some(doc),
                })
            }
            _ => Ok(Fetched::default()),
        }
    }

    /// The result of an earlier call this one repeats (same human, same
    /// idempotency key, same arguments), if any. A key reused with other
    /// arguments is refused.
    pub async fn replay(
        &self,
        tool: &str,
        args: &Value,
        human: &str,
    ) -> Result<Option<Value>, BackendError> {
        let Some(key) = args.get("idempotency_key").and_then(Value::as_str) else {
            return Ok(None);
        };
        if tool != "issue_refund" {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT r.id, r.order_id, r.amount_cents, o.refunded_cents, o.amount_cents \
             FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.human = ? AND r.idempotency_key = ?",
        )
        .bind(human)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, order, amount): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        if order != s(args, "order_id") || amount != i(args, "amount") {
            return Err(BackendError::Refused(
                "this idempotency key was already used for a different refund".into(),
            ));
        }
        Ok(Some(json!({
            "refund_id": id,
            "order_id": order,
            "amount": amount,
            "refunded_total": row.get::<i64, _>(3),
            "order_total": row.get::<i64, _>(4),
            "replayed": true,
        })))
    }

    async fn read(&self, tool: &str, args: &Value) -> Result<Value, BackendError> {
        match tool {
            "lookup_account" => self.lookup_account(&s(args, "account_id")).await,
            "list_orders" => {
                let limit = args.get("limit").and_then(Value::as_i64).unwrap_or(10);
                self.list_orders(&s(args, "account_id"), limit).await
            }
            "fetch_document" => self.fetch_document(&s(args, "doc_id")).await,
            other => Err(BackendError::NotFound(format!("tool {other}"))),
        }
    }

    async fn lookup_account(&self, id: &str) -> Result<Value, BackendError> {
        let row = sqlx::query("SELECT id, name, email, region, plan FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| BackendError::NotFound(format!("account {id}")))?;
        Ok(account_json(&row))
    }

    async fn list_orders(&self, account: &str, limit: i64) -> Result<Value, BackendError> {
        let rows = sqlx::query(
            "SELECT id, description, amount_cents, refunded_cents, created_at FROM orders \
             WHERE account_id = ? ORDER BY created_at DESC, id LIMIT ?",
        )
        .bind(account)
        .bind(limit.clamp(1, 100))
        .fetch_all(&self.pool)
        .await?;
        let orders: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "order_id": r.get::<String, _>(0),
                    "description": r.get::<String, _>(1),
                    "amount": r.get::<i64, _>(2),
                    "refunded": r.get::<i64, _>(3),
                    "created_at": r.get::<String, _>(4),
                })
            })
            .collect();
        Ok(json!({ "account_id": account, "orders": orders }))
    }

    async fn fetch_document(&self, id: &str) -> Result<Value, BackendError> {
        let row = sqlx::query("SELECT id, title, body FROM documents WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| BackendError::NotFound(format!("document {id}")))?;
        Ok(
            json!({ "doc_id": row.get::<String, _>(0), "title": row.get::<String, _>(1), "body": row.get::<String, _>(2) }),
        )
    }
}

fn account_json(row: &sqlx::sqlite::SqliteRow) -> Value {
    json!({
        "account_id": row.get::<String, _>(0),
        "name": row.get::<String, _>(1),
        "email": row.get::<String, _>(2),
        "region": row.get::<String, _>(3),
        "plan": row.get::<String, _>(4),
    })
}

/// The read-only tools.
const TOOLS: &[&str] = &["lookup_account", "list_orders", "fetch_document"];

impl Adapter for Records {
    fn name(&self) -> &'static str {
        "records"
    }

    fn tools(&self) -> &'static [&'static str] {
        TOOLS
    }

    fn execute<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Value,
        _actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(self.read(tool, args))
    }
}
