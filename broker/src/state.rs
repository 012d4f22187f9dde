//! The broker's own database: redeemed grant nonces.

use std::path::Path;

use sqlx::SqlitePool;

/// Opens (creating and migrating) the broker's state database.
pub async fn open(path: &Path) -> anyhow::Result<SqlitePool> {
    let pool = zt_proto::store::open_sqlite(path).await?;
    sqlx::migrate!("./migrations/state").run(&pool).await?;
    Ok(pool)
}
