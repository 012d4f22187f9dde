//! The broker's own database: grant redemptions (claimed, then done with
//! their result). On PostgreSQL (schema `zt_broker`) every broker replica
//! shares it, so a grant is redeemed once across replicas.

use anyhow::Context;
use zt_proto::db::{Db, Location};

/// Opens (creating and migrating) the broker's state database.
pub async fn open(location: &Location) -> anyhow::Result<Db> {
    let db = Db::open(location, "zt_broker", false).await?;
    match &db {
        Db::Sqlite(p) => sqlx::migrate!("./migrations/state/sqlite").run(p).await,
        Db::Postgres(p) => sqlx::migrate!("./migrations/state/postgres").run(p).await,
    }
    .with_context(|| format!("migrating {}", location.display()))?;
    Ok(db)
}
