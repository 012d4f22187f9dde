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

use sqlx::migrate::Migrator;
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
    /// A role name is empty, too long or holds a NUL.
    #[error("invalid role name `{0}`")]
    Role(String),
    /// The database is not ready for this role, or a role may not be given
    /// the rights asked for; the message says what to run or change.
    #[error("{0}")]
    NotSetUp(String),
    /// A migration failed.
    #[error("migrating: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

    /// The PostgreSQL database a service's `migrate` command sets up (it
    /// has nothing to do on SQLite, whose files each service creates and
    /// migrates itself).
    pub fn for_migrate(text: &str) -> Result<Location, DbError> {
        match Location::parse(text)? {
            pg @ Location::Postgres(_) => Ok(pg),
            Location::File(_) => Err(DbError::NotSetUp(
                "migrate sets up a PostgreSQL database (postgres://...); \
                 SQLite files are created and migrated by the services themselves"
                    .to_owned(),
            )),
        }
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

/// Creates `schema` unless it exists. A role without the right to create
/// schemas (a role per service, the database set up by its administrator)
/// never tries: PostgreSQL checks that right before `IF NOT EXISTS`.
async fn create_schema(opts: &PgConnectOptions, schema: &str) -> Result<(), DbError> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await?;
    let result = async {
        let (exists, may_create): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                    has_database_privilege(current_database(), 'CREATE')",
        )
        .bind(schema)
        .fetch_one(&admin)
        .await?;
        if exists {
            return Ok(());
        }
        if !may_create {
            return Err(DbError::NotSetUp(format!(
                "schema {schema} does not exist and this role may not create it: \
                 run the service's `migrate --database ADMIN_URL --role ROLE` \
                 as the database's administrator first"
            )));
        }
        // Several services may start at once: one creates the schema.
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
        Ok(())
    }
    .await;
    admin.close().await;
    result
}

/// `role` quoted as a PostgreSQL identifier, or an error for a name
/// PostgreSQL would refuse or cut (empty, NUL, over 63 bytes).
pub fn quote_role(role: &str) -> Result<String, DbError> {
    if role.is_empty() || role.len() > 63 || role.contains('\0') {
        return Err(DbError::Role(role.to_owned()));
    }
    Ok(format!("\"{}\"", role.replace('"', "\"\"")))
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
                    create_schema(&opts, schema).await?;
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

    /// Applies the migrations for this pool's dialect. `command` names the
    /// service's own migrate command for messages (`zt-broker migrate`).
    ///
    /// On PostgreSQL, a role that may not create objects in the schema (a
    /// role per service; the schema owned by the administrator who ran the
    /// migrate command) does not try: it checks that every migration was
    /// applied unchanged, and refuses to start otherwise, naming the command.
    pub async fn migrate(
        &self,
        sqlite: &Migrator,
        postgres: &Migrator,
        command: &str,
    ) -> Result<(), DbError> {
        let pool = match self {
            Db::Sqlite(p) => return Ok(sqlite.run(p).await?),
            Db::Postgres(p) => p,
        };
        let (schema, may_create): (Option<String>, bool) = sqlx::query_as(
            "SELECT current_schema(), \
                    COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false)",
        )
        .fetch_one(pool)
        .await?;
        let not_set_up = |why: String| {
            DbError::NotSetUp(format!(
                "{why}: run `{command} --database ADMIN_URL --role ROLE` \
                 as the database's administrator"
            ))
        };
        let Some(schema) = schema else {
            return Err(not_set_up(
                "this role may not use the service's schema".to_owned(),
            ));
        };
        if may_create {
            return Ok(postgres.run(pool).await?);
        }
        use sqlx::migrate::Migrate;
        let mut conn = pool.acquire().await?;
        let table = &postgres.table_name;
        let read = |e: sqlx::migrate::MigrateError| {
            not_set_up(format!(
                "schema {schema} has no migration record this role can read ({e})"
            ))
        };
        if let Some(version) = conn.dirty_version(table).await.map_err(read)? {
            return Err(sqlx::migrate::MigrateError::Dirty(version).into());
        }
        let applied = conn.list_applied_migrations(table).await.map_err(read)?;
        for done in &applied {
            if !postgres.ignore_missing && !postgres.version_exists(done.version) {
                return Err(sqlx::migrate::MigrateError::VersionMissing(done.version).into());
            }
        }
        for migration in postgres.iter() {
            if migration.migration_type.is_down_migration() {
                continue;
            }
            match applied.iter().find(|a| a.version == migration.version) {
                Some(a) if a.checksum == migration.checksum => {}
                Some(_) => {
                    return Err(
                        sqlx::migrate::MigrateError::VersionMismatch(migration.version).into(),
                    );
                }
                None => {
                    return Err(not_set_up(format!(
                        "schema {schema} lacks migration {} ({}) and this role may not apply it",
                        migration.version, migration.description
                    )));
                }
            }
        }
        Ok(())
    }

    /// PostgreSQL: checks that `role` may be given a service's rights: it
    /// exists, is not a superuser, does not bypass row security, and is not
    /// the role running this (whose objects it would own).
    pub async fn check_service_role(&self, role: &str) -> Result<(), DbError> {
        let Db::Postgres(pool) = self else {
            return Err(DbError::NotSetUp(
                "database roles are PostgreSQL's; on SQLite the files' owners and modes \
                 keep the services apart (zt-console up --users)"
                    .to_owned(),
            ));
        };
        quote_role(role)?;
        let found: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls, pg_has_role($1, current_user, 'USAGE') \
             FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_optional(pool)
        .await?;
        match found {
            None => Err(DbError::NotSetUp(format!(
                "role {role} does not exist: create it first (CREATE ROLE {role} LOGIN PASSWORD ...)"
            ))),
            Some((true, _, _)) | Some((_, true, _)) => Err(DbError::NotSetUp(format!(
                "role {role} is a superuser or bypasses row security: a service's role must be neither"
            ))),
            Some((_, _, true)) => Err(DbError::NotSetUp(format!(
                "role {role} has the rights of the role running this migration, which owns the \
                 schemas: give each service a role of its own"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// PostgreSQL: refuses when `role` owns (or has the rights of the owner
    /// of) any table in `schema`: an owner bypasses row security, drops
    /// triggers and grants itself anything.
    pub async fn check_not_owner(&self, schema: &str, role: &str) -> Result<(), DbError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        let owned: Option<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S') \
               AND pg_has_role($2, c.relowner, 'USAGE') LIMIT 1",
        )
        .bind(schema)
        .bind(role)
        .fetch_optional(pool)
        .await?;
        match owned {
            Some(table) => Err(DbError::NotSetUp(format!(
                "role {role} owns {schema}.{table} (or has its owner's rights): an owner is not \
                 held by row security or the append-only triggers; \
                 ALTER TABLE {schema}.{table} OWNER TO another role first"
            ))),
            None => Ok(()),
        }
    }

    /// PostgreSQL: gives `role` a service's rights in its own `schema`: use
    /// it, read and write its rows and sequences, read (never write) its
    /// migration record. No DDL: the schema stays the administrator's.
    pub async fn grant_own_schema(&self, schema: &str, role: &str) -> Result<(), DbError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        self.check_service_role(role).await?;
        let r = quote_role(role)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA {schema} TO {r};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {r};
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {r};
             REVOKE INSERT, UPDATE, DELETE ON {schema}._sqlx_migrations FROM {r};"
        )))
        .execute(pool)
        .await?;
        Ok(())
    }

    /// PostgreSQL: gives `role` read access to `tables` of `schema` only.
    pub async fn grant_read(
        &self,
        schema: &str,
        tables: &[&str],
        role: &str,
    ) -> Result<(), DbError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        self.check_service_role(role).await?;
        self.check_not_owner(schema, role).await?;
        let r = quote_role(role)?;
        let list = tables
            .iter()
            .map(|t| format!("{schema}.{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA {schema} TO {r}; GRANT SELECT ON {list} TO {r};"
        )))
        .execute(pool)
        .await?;
        Ok(())
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
