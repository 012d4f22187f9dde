//! The records adapter: reads of the example backend's database (accounts,
//! orders, support articles), and the attributes the policy needs about the
//! object a call acts on. Its location is a credential in the broker's
//! private config; it never writes money or plans (the billing API does).

use futures::future::BoxFuture;
use serde_json::{Value, json};
use zt_policies::Resource;
use zt_proto::db::{Db, Location};
use zt_proto::with_db;

use super::{Actor, Adapter, BackendError, Fetched};

/// The records database.
#[derive(Debug, Clone)]
pub struct Records {
    pool: Db,
}

/// An `accounts` row: id, name, email, region, plan.
type Account = (String, String, String, String, String);

const ACCOUNT: &str = "SELECT id, name, email, region, plan FROM accounts WHERE id = $1";

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The PostgreSQL schema of the example backend's records.
const RECORDS_SCHEMA: &str = "zt_backend";

fn i(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or_default()
}

impl Records {
    /// Opens the records database **read-only** (the `zt_backend` schema on
    /// PostgreSQL): the system of record belongs to the backend, which
    /// creates, migrates and seeds it (`zt-billing init`); the broker only
    /// reads it, and money moves only through the billing API.
    pub async fn open(location: &Location) -> Result<Records, BackendError> {
        let pool = zt_proto::db::Db::open(location, RECORDS_SCHEMA, true)
            .await
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "opening the records database read-only (initialize it with `zt-billing init`): {e}"
                ))
            })?;
        Ok(Records { pool })
    }

    async fn account(&self, id: &str) -> Result<Value, BackendError> {
        let row: Option<Account> = with_db!(&self.pool, p => {
            sqlx::query_as(ACCOUNT).bind(id).fetch_optional(p).await?
        });
        row.map(account_json)
            .ok_or_else(|| BackendError::NotFound(format!("account {id}")))
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
                let account = self.account(&id).await?;
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
                let row: Option<(String, String, i64, i64)> = with_db!(&self.pool, p => {
                    sqlx::query_as(
                        "SELECT o.account_id, a.region, o.amount_cents, o.refunded_cents \
                         FROM orders o JOIN accounts a ON a.id = o.account_id WHERE o.id = $1",
                    )
                    .bind(&id)
                    .fetch_optional(p)
                    .await?
                });
                let (account, region, amount, refunded) =
                    row.ok_or_else(|| BackendError::NotFound(format!("order {id}")))?;
                Ok(Fetched {
                    resource: Some(Resource {
                        id,
                        attrs: attrs(json!({
                            "account": account,
                            "region": region,
                            "amount": amount,
                            "refunded": refunded,
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
        let row: Option<(String, String, i64, i64, i64)> = with_db!(&self.pool, p => {
            sqlx::query_as(
                "SELECT r.id, r.order_id, r.amount_cents, o.refunded_cents, o.amount_cents \
                 FROM refunds r JOIN orders o ON o.id = r.order_id \
                 WHERE r.human = $1 AND r.idempotency_key = $2",
            )
            .bind(human)
            .bind(key)
            .fetch_optional(p)
            .await?
        });
        let Some((id, order, amount, refunded_total, order_total)) = row else {
            return Ok(None);
        };
        if order != s(args, "order_id") || amount != i(args, "amount") {
            return Err(BackendError::Refused(
                "this idempotency key was already used for a different refund".into(),
            ));
        }
        Ok(Some(json!({
            "refund_id": id,
            "order_id": order,
            "amount": amount,
            "refunded_total": refunded_total,
            "order_total": order_total,
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
        self.account(id).await
    }

    async fn list_orders(&self, account: &str, limit: i64) -> Result<Value, BackendError> {
        let rows: Vec<(String, String, i64, i64, String)> = with_db!(&self.pool, p => {
            sqlx::query_as(
                "SELECT id, description, amount_cents, refunded_cents, created_at FROM orders \
                 WHERE account_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            )
            .bind(account)
            .bind(limit.clamp(1, 100))
            .fetch_all(p)
            .await?
        });
        let orders: Vec<Value> = rows
            .into_iter()
            .map(|(order_id, description, amount, refunded, created_at)| {
                json!({
                    "order_id": order_id,
                    "description": description,
                    "amount": amount,
                    "refunded": refunded,
                    "created_at": created_at,
                })
            })
            .collect();
        Ok(json!({ "account_id": account, "orders": orders }))
    }

    async fn fetch_document(&self, id: &str) -> Result<Value, BackendError> {
        let row: Option<(String, String, String)> = with_db!(&self.pool, p => {
            sqlx::query_as("SELECT id, title, body FROM documents WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await?
        });
        let (doc_id, title, body) =
            row.ok_or_else(|| BackendError::NotFound(format!("document {id}")))?;
        Ok(json!({ "doc_id": doc_id, "title": title, "body": body }))
    }
}

fn account_json((id, name, email, region, plan): Account) -> Value {
    json!({
        "account_id": id,
        "name": name,
        "email": email,
        "region": region,
        "plan": plan,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_broker_cannot_write_the_records() {
        let dir = std::env::temp_dir().join(zt_proto::random_id("zt-records-"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("backend.db");
        let rw = zt_proto::db::Db::open(&Location::File(path.clone()), RECORDS_SCHEMA, false)
            .await
            .unwrap();
        with_db!(&rw, p => {
            sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, refunded INTEGER)")
                .execute(p)
                .await
                .unwrap();
        });
        let records = Records::open(&Location::File(path)).await.unwrap();
        let write: Result<u64, sqlx::Error> = with_db!(&records.pool, p => {
            sqlx::query("INSERT INTO orders (id, refunded) VALUES ('ord_x', 0)")
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        });
        assert!(
            write.is_err(),
            "a write through the broker's records pool succeeded"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
