//! Databases of a stack: SQLite (the embedded default, one file per store)
//! or PostgreSQL (shared by replicas; one schema per store), behind one type.
//!
//! Every store is written once against [`Db`]: the [`with_db!`] macro runs
//! the same sqlx code on whichever pool it holds, so queries are compiled
//! for both drivers with their native types. Statements use `$1`, `$2`, …
//! placeholders, which both SQLite and PostgreSQL accept (in SQLite they are
//! numbered in order of first appearance, so always number them in order).
//! Where the dialects differ (DDL, JSON aggregation, locking), the store
//! asks [`Db::dialect`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Which SQL dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (WAL, `synchronous=FULL`).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A pool on one of the supported databases.
#[derive(Debug, Clone)]
pub enum Db {
    /// An SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL schema.
    Postgres(PgPool),
}

/// A database URL that never shows its password: `Debug` and `Display`
/// print it redacted ([`redact`]); only [`DbUrl::expose`] gives the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> DbUrl {
        DbUrl(url.into())
    }

    /// The URL itself, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DbUrl").field(&redact(&self.0)).finish()
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// Where a store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    File(PathBuf),
    /// A PostgreSQL database URL; the store uses its own schema in it.
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => f.debug_tuple("File").field(p).finish(),
            Location::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
        }
    }
}

/// Errors opening a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `sqlite://` nor `postgres://` (shown without its
    /// password).
    #[error("unsupported database URL `{0}` (expected sqlite://PATH or postgres://...)")]
    Unsupported(String),
    /// The schema name is not a plain identifier.
    #[error("invalid schema name `{0}`")]
    Schema(String),
    /// The driver failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// Runs `$body` with `$p` bound to the pool inside `$db`, whichever it is.
#[macro_export]
macro_rules! with_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}

impl Location {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `postgres://...` or
    /// `postgresql://...`; a plain path is an SQLite file.
    pub fn parse(text: &str) -> Result<Location, DbError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Location::Postgres(text.to_owned()));
        }
        if let Some(rest) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(DbError::Unsupported(redact(text)));
            }
            return Ok(Location::File(PathBuf::from(path)));
        }
        if text.contains("://") {
            return Err(DbError::Unsupported(redact(text)));
        }
        Ok(Location::File(PathBuf::from(text)))
    }

    /// For messages: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

/// A PostgreSQL URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

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

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl Db {
    /// Opens `location`: the SQLite file (created if missing), or the
    /// PostgreSQL database with `schema` created if missing and made the
    /// connections' search path. `read_only` opens without write access.
    pub async fn open(location: &Location, schema: &str, read_only: bool) -> Result<Db, DbError> {
        match location {
            Location::File(path) => {
                let opts = if read_only {
                    SqliteConnectOptions::new()
                        .filename(path)
                        .read_only(true)
                        .busy_timeout(Duration::from_secs(10))
                } else {
                    sqlite_options(path)
                };
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await?;
                Ok(Db::Sqlite(pool))
            }
            Location::Postgres(url) => {
                if !valid_schema(schema) {
                    return Err(DbError::Schema(schema.to_owned()));
                }
                let opts: PgConnectOptions = url.parse()?;
                if !read_only {
                    // Several services may start at once: one creates the schema.
                    let admin = PgPoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts.clone())
                        .await?;
                    let mut tx = admin.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock(7413)")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema}"
                    )))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    admin.close().await;
                }
                let set = if read_only {
                    format!("SET search_path TO {schema}; SET default_transaction_read_only = on")
                } else {
                    format!("SET search_path TO {schema}")
                };
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .after_connect(move |conn, _meta| {
                        let set = set.clone();
                        Box::pin(async move {
                            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                                .execute(conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// The dialect this pool speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        with_db!(self, p => p.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_or_errors() {
        let url = "postgres://zt:hunter2@db.internal/zt";
        for shown in [
            format!("{:?}", DbUrl::new(url)),
            DbUrl::new(url).to_string(),
            format!("{:?}", Location::parse(url).unwrap()),
            Location::parse(url).unwrap().display(),
            Location::parse("mysql://zt:hunter2@db/zt")
                .unwrap_err()
                .to_string(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(DbUrl::new(url).expose(), url);
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("sqlite:///tmp/a.db").unwrap(),
            Location::File("/tmp/a.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:rel.db?mode=rwc").unwrap(),
            Location::File("rel.db".into())
        );
        assert_eq!(
            Location::parse("/var/x.db").unwrap(),
            Location::File("/var/x.db".into())
        );
        assert!(matches!(
            Location::parse("postgres://u:p@h/db").unwrap(),
            Location::Postgres(_)
        ));
        assert!(Location::parse("mysql://h/db").is_err());
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert!(valid_schema("zt_audit") && !valid_schema("a;drop") && !valid_schema("1a"));
    }
}
