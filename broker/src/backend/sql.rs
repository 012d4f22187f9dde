//! SQL upstreams: read-only parameterised queries over a team's database
//! (`kind = "sql"` in `upstreams.toml`), for teams whose data sits in
//! SQLite or PostgreSQL rather than behind an API. The example's records
//! (accounts, orders, support articles) are one.
//!
//! Read-only by structure, three times over: the connection is opened
//! read-only (SQLite `mode=ro`; PostgreSQL `default_transaction_read_only`
//! on every connection), each declared statement must be a single `SELECT`
//! or `WITH` (checked at load), and arguments only ever travel as bound
//! parameters, never spliced into SQL text. A row becomes a JSON object
//! keyed by column name (`AS` renames); columns of types without an obvious
//! JSON form are refused with a hint to cast them to text.

use std::time::Duration;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tokio::sync::OnceCell;
use zt_proto::db::{Db, Location};
use zt_proto::with_db;

use super::upstreams::{QueryDecl, Rows, SqlDatabase, SqlSpec};
use super::{Actor, BackendError, Output, Upstream};

/// A SQL upstream. Its database is opened on first use (and again after a
/// failed open), so a database that is down at start makes only this
/// upstream's calls fail until it is back.
#[derive(Debug)]
pub struct Sql {
    spec: SqlSpec,
    /// Where: resolved at start (`database = "stack"` is the stack's own).
    location: Option<Location>,
    db: OnceCell<Db>,
}

impl Sql {
    /// The upstream of `spec`; `stack` is the stack's own records database
    /// for `database = "stack"`.
    pub fn start(spec: SqlSpec, stack: Option<&Location>) -> Sql {
        let location = match &spec.database {
            SqlDatabase::Stack => stack.cloned(),
            SqlDatabase::At(l) => l.clone(),
        };
        if let Some(why) = &spec.unusable {
            tracing::error!(upstream = %spec.name, why, "the upstream is unusable: its calls fail closed");
        }
        Sql {
            spec,
            location,
            db: OnceCell::new(),
        }
    }

    async fn db(&self) -> Result<&Db, BackendError> {
        let name = &self.spec.name;
        if let Some(why) = &self.spec.unusable {
            return Err(BackendError::Unavailable(format!("upstream {name}: {why}")));
        }
        let Some(location) = &self.location else {
            return Err(BackendError::Unavailable(format!(
                "upstream {name}: no database location"
            )));
        };
        self.db
            .get_or_try_init(|| async {
                Db::open(location, &self.spec.schema, true)
                    .await
                    .map_err(|e| {
                        BackendError::Unavailable(format!(
                            "upstream {name}: opening its database read-only: {e}"
                        ))
                    })
            })
            .await
    }

    async fn query(
        &self,
        q: &QueryDecl,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Value, BackendError> {
        let name = &self.spec.name;
        let params: Vec<Value> = q
            .params
            .iter()
            .map(|t| super::http::render(t, args, actor).unwrap_or(Value::Null))
            .collect();
        let limit = match q.rows {
            Rows::One => 1,
            Rows::Many => self.spec.max_rows + 1,
        };
        let db = self.db().await?;
        let sql = sqlx::AssertSqlSafe(q.sql.clone());
        let run = async {
            let rows: Vec<Map<String, Value>> = with_db!(db, p => {
                let mut query = sqlx::query(sql);
                for v in &params {
                    query = match v {
                        Value::Null => query.bind(None::<String>),
                        Value::Bool(b) => query.bind(*b),
                        Value::Number(n) => match n.as_i64() {
                            Some(i) => query.bind(i),
                            None => query.bind(n.as_f64()),
                        },
                        Value::String(s) => query.bind(s.clone()),
                        other => query.bind(other.to_string()),
                    };
                }
                let mut stream = query.fetch(p);
                let mut out = Vec::new();
                while out.len() < limit {
                    match stream.try_next().await? {
                        Some(row) => out.push(row_json(&row)?),
                        None => break,
                    }
                }
                out
            });
            Ok::<_, BackendError>(rows)
        };
        let rows = tokio::time::timeout(self.spec.timeout, run)
            .await
            .map_err(|_| {
                BackendError::Unavailable(format!(
                    "upstream {name}: query `{}` timed out after {:?}",
                    q.name, self.spec.timeout
                ))
            })??;
        let found = match q.rows {
            Rows::One => match rows.into_iter().next() {
                Some(row) => Value::Object(row),
                None => return Err(BackendError::NotFound(not_found(q, args))),
            },
            Rows::Many => {
                if rows.len() > self.spec.max_rows {
                    return Err(BackendError::TooLarge(format!(
                        "upstream {name}: query `{}` returned more than {} rows",
                        q.name, self.spec.max_rows
                    )));
                }
                Value::Array(rows.into_iter().map(Value::Object).collect())
            }
        };
        let result = match &q.result {
            None => found,
            Some(t) => shape(t, &found, args, actor),
        };
        let size = serde_json::to_vec(&result)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.spec.max_result_bytes {
            return Err(BackendError::TooLarge(format!(
                "upstream {name}: query `{}` returned {size} bytes",
                q.name
            )));
        }
        Ok(result)
    }
}

/// The `result` template filled in: `"$result"` is what the query found,
/// the rest as in HTTP templates.
fn shape(template: &Value, found: &Value, args: &Value, actor: &Actor<'_>) -> Value {
    match template {
        Value::String(s) if s == "$result" => found.clone(),
        Value::Object(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) if s == "$result" => Some((k.clone(), found.clone())),
                    Value::Object(_) => Some((k.clone(), shape(v, found, args, actor))),
                    _ => super::http::render(v, args, actor).map(|v| (k.clone(), v)),
                })
                .collect(),
        ),
        other => super::http::render(other, args, actor).unwrap_or(Value::Null),
    }
}

/// What was not found: the query's `not_found` with `{NAME}` replaced by
/// the argument (its name when it has none).
fn not_found(q: &QueryDecl, args: &Value) -> String {
    let Some(template) = &q.not_found else {
        return q.name.clone();
    };
    let out = zt_policies::fill(template, |name| match args.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => name.to_owned(),
    });
    super::safe_message(&out)
}

/// A row as a JSON object keyed by column name.
fn row_json<R>(row: &R) -> Result<Map<String, Value>, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database>,
    for<'r> i16: sqlx::Decode<'r, R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database>,
    for<'r> f32: sqlx::Decode<'r, R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database>,
    for<'r> sqlx::types::Json<Value>: sqlx::Decode<'r, R::Database>,
{
    let mut out = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            let ty = raw.type_info().name().to_ascii_uppercase();
            drop(raw);
            match ty.as_str() {
                "INTEGER" | "INT8" | "BIGINT" => Value::from(row.try_get_unchecked::<i64, _>(i)?),
                "INT4" | "INT" => Value::from(row.try_get_unchecked::<i32, _>(i)?),
                "INT2" | "SMALLINT" => Value::from(row.try_get_unchecked::<i16, _>(i)?),
                "REAL" | "FLOAT8" | "DOUBLE PRECISION" => {
                    Value::from(row.try_get_unchecked::<f64, _>(i)?)
                }
                "FLOAT4" => Value::from(row.try_get_unchecked::<f32, _>(i)?),
                "BOOL" | "BOOLEAN" => Value::Bool(row.try_get_unchecked::<bool, _>(i)?),
                "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "DATE" | "TIME" | "DATETIME" => {
                    Value::String(row.try_get_unchecked::<String, _>(i)?)
                }
                "JSON" | "JSONB" => row.try_get_unchecked::<sqlx::types::Json<Value>, _>(i)?.0,
                other => {
                    return Err(sqlx::Error::ColumnDecode {
                        index: column.name().to_owned(),
                        source: format!(
                            "type {other} has no JSON form here; cast it in the query (e.g. CAST(x AS TEXT))"
                        )
                        .into(),
                    });
                }
            }
        };
        out.insert(column.name().to_owned(), value);
    }
    Ok(out)
}

impl Upstream for Sql {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Output, BackendError>> {
        Box::pin(async move {
            let Some(q) = self.spec.queries.get(operation) else {
                return Err(BackendError::Unavailable(format!(
                    "upstream {} declares no query `{operation}`",
                    self.spec.name
                )));
            };
            self.query(q, args, actor).await.map(Output::Json)
        })
    }

    fn read_only(&self, operation: &str) -> bool {
        self.spec.queries.contains_key(operation)
    }
}

/// Checks a declared statement: one `SELECT` or `WITH` statement.
pub(crate) fn check_statement(sql: &str) -> Result<(), String> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    let first = text
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if first != "SELECT" && first != "WITH" {
        return Err("a query must be one SELECT (or WITH ... SELECT) statement".into());
    }
    if text.contains(';') {
        return Err("a query must be a single statement (no `;` inside)".into());
    }
    Ok(())
}

/// The default per-query bound.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_single_selects_are_declared() {
        for ok in [
            "SELECT 1",
            "select id from t where id = $1;",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(check_statement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "DELETE FROM t",
            "SELECT 1; DELETE FROM t",
            "UPDATE t SET a = 1",
            "  ",
            "PRAGMA writable_schema = 1",
        ] {
            assert!(check_statement(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_connection_cannot_write() {
        let dir = std::env::temp_dir().join(zt_proto::random_id("zt-sql-"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.db");
        let rw = Db::open(&Location::File(path.clone()), "public", false)
            .await
            .unwrap();
        with_db!(&rw, p => {
            sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, refunded INTEGER)")
                .execute(p)
                .await
                .unwrap();
        });
        let spec = SqlSpec {
            name: "records".into(),
            database: SqlDatabase::At(Some(Location::File(path))),
            schema: "public".into(),
            timeout: DEFAULT_TIMEOUT,
            max_result_bytes: 1024,
            max_rows: 10,
            queries: Default::default(),
            unusable: None,
            secrets: Vec::new(),
        };
        let sql = Sql::start(spec, None);
        let db = sql.db().await.unwrap();
        let write: Result<u64, sqlx::Error> = with_db!(db, p => {
            sqlx::query("INSERT INTO orders (id, refunded) VALUES ('ord_x', 0)")
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        });
        assert!(
            write.is_err(),
            "a write through a sql upstream's pool succeeded"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn not_found_names_the_object() {
        let q = QueryDecl {
            name: "account".into(),
            sql: "SELECT 1".into(),
            params: vec![],
            rows: Rows::One,
            result: None,
            not_found: Some("account {account_id}\n".into()),
        };
        assert_eq!(
            not_found(&q, &json!({"account_id": "acct_9"})),
            "account acct_9 "
        );
    }
}
