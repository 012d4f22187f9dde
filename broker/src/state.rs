//! The broker's own database: grant redemptions (claimed, then done with
//! their result). On PostgreSQL (schema `zt_broker`) every broker replica
//! shares it, so a grant is redeemed once across replicas.

use anyhow::Context;
use zt_proto::db::{Db, Location};

/// Opens (creating and migrating) the broker's state database.
pub async fn open(location: &Location) -> anyhow::Result<Db> {
    let db = Db::open(location, SCHEMA, false).await?;
    db.migrate(
        &sqlx::migrate!("./migrations/state/sqlite"),
        &sqlx::migrate!("./migrations/state/postgres"),
        "zt-broker migrate",
    )
    .await
    .with_context(|| format!("the broker's state in {}", location.display()))?;
    Ok(db)
}

/// The PostgreSQL schema of the broker's state.
pub const SCHEMA: &str = "zt_broker";

/// `zt-broker migrate`: as the administrator of the PostgreSQL database at
/// `location`, creates and migrates the broker's schema and the audit
/// tables; with `role`, gives that role (the one every broker replica
/// connects as) its own schema's rows and its own audit chains (`broker`,
/// `broker-*`) and nothing else. Its read access to the records is the
/// billing service's to give (`zt-billing migrate --reader`).
pub async fn migrate(location: &Location, role: Option<&str>) -> anyhow::Result<()> {
    let db = open(location).await?;
    let audit = zt_proto::store::open_pool(location).await?;
    if let Some(role) = role {
        db.grant_own_schema(SCHEMA, role).await?;
        zt_proto::store::grant_chain(&audit, crate::setup::AUDIT_CHAIN, role).await?;
    }
    audit.close().await;
    db.close().await;
    Ok(())
}
