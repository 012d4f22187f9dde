//! `zt-console audit query` and `audit export`: find entries by session,
//! human, agent, tool, decision, kind and time range, and export them as
//! JSON Lines for a SIEM.
//!
//! Both read the log read-only and never verify on their own: an auditor
//! runs `audit verify` for integrity; every exported line carries the
//! entry's `hash` and `prev_hash` so the export can be linked back to it.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;
use zt_proto::audit::Entry;
use zt_proto::db::Location;
use zt_proto::with_db;

/// What to select. Empty fields match everything.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Agent session id.
    #[arg(long)]
    pub session: Option<String>,
    /// The human acted for (or the operator who acted).
    #[arg(long)]
    pub human: Option<String>,
    /// An actor in the behalf-of chain, e.g. agent:support-bot.
    #[arg(long)]
    pub agent: Option<String>,
    /// Tool name.
    #[arg(long)]
    pub tool: Option<String>,
    /// Decision (allow, constrain, deny, escalate, executed, approve, ...).
    #[arg(long)]
    pub decision: Option<String>,
    /// Entry kind (decision, result, escalation, approval, grant_use, alert, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Writer chain (broker, approval, ...).
    #[arg(long)]
    pub chain: Option<String>,
    /// From this time: RFC 3339 (2026-11-26T10:00:00Z), ms since the
    /// epoch, or an age such as 15m, 2h, 7d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to (excluding) this time, in the same forms.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

/// A time bound in ms since the epoch (see [`zt_proto::time::parse_time`]).
pub fn parse_time(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    zt_proto::time::parse_time(text, now_ms).map_err(anyhow::Error::msg)
}

pub use zt_proto::time::format_time;

/// One entry as an auditor's tools expect it: flat, named fields, an
/// RFC 3339 time, and the chain position and hashes.
pub fn siem_line(chain: &str, seq: u64, hash: &str, entry: &Entry) -> Value {
    let r = &entry.record;
    // The acting agent is the first actor that is not the human.
    let agent = r
        .actors
        .iter()
        .find(|a| a.starts_with("agent:"))
        .cloned()
        .unwrap_or_default();
    json!({
        "time": format_time(entry.time_ms),
        "time_ms": entry.time_ms,
        "chain": chain,
        "seq": seq,
        "kind": entry.kind.as_str(),
        "session": r.session,
        "human": r.subject,
        "agent": agent,
        "actors": r.actors,
        "tool": r.tool,
        "args": r.args,
        "args_hash": r.args_hash,
        "decision": r.decision,
        "rules": r.rules,
        "request_id": r.request_id,
        "grant_id": r.grant_id,
        "status": r.status,
        "detail": r.detail,
        "basis": r.basis,
        "hash": hash,
        "prev_hash": entry.prev_hash,
    })
}

fn matches(f: &Filter, chain: &str, e: &Entry, since: Option<i64>, until: Option<i64>) -> bool {
    let r = &e.record;
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    eq(&f.chain, chain)
        && eq(&f.session, &r.session)
        && eq(&f.human, &r.subject)
        && eq(&f.tool, &r.tool)
        && eq(&f.decision, &r.decision)
        && eq(&f.kind, e.kind.as_str())
        && f.agent
            .as_deref()
            .is_none_or(|a| r.actors.iter().any(|x| x == a))
        && since.is_none_or(|s| e.time_ms >= s)
        && until.is_none_or(|u| e.time_ms < u)
}

/// Streams the matching entries of the SQLite log at `db` (in time order,
/// then chain and position) to `each`; returns how many matched. Entries
/// whose body does not parse are skipped and counted in the second number.
pub async fn select(
    db: &Path,
    filter: &Filter,
    each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    if !db.exists() {
        bail!("no audit log at {}", db.display());
    }
    select_at(&Location::File(db.to_owned()), filter, each).await
}

/// [`select`] on any audit store (SQLite file or PostgreSQL).
pub async fn select_at(
    location: &Location,
    filter: &Filter,
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    let now = zt_proto::now_ms();
    let since = filter
        .since
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let until = filter
        .until
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()?;
    let pool = zt_proto::store::open_read_only(location)
        .await
        .with_context(|| format!("opening {}", location.display()))?;
    // The coarse cut happens in SQL (time, chain); the exact match on the
    // parsed entry, so a filter never depends on how JSON is laid out.
    let time = zt_proto::store::entry_time_sql(pool.dialect());
    let sql = format!(
        "SELECT chain, seq, body, hash FROM audit_entries \
         WHERE (CAST($1 AS TEXT) IS NULL OR chain = $1) \
           AND (CAST($2 AS BIGINT) IS NULL OR {time} >= $2) \
           AND (CAST($3 AS BIGINT) IS NULL OR {time} < $3) \
         ORDER BY {time}, chain, seq"
    );
    let (mut matched, mut skipped) = (0u64, 0u64);
    with_db!(&pool, p => {
        // Only the dialect's fixed expression is formatted into the statement.
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.chain.as_deref())
            .bind(since)
            .bind(until)
            .fetch(p);
        while let Some(row) = rows.try_next().await? {
            let chain: String = row.try_get(0)?;
            let seq = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
            let body: String = row.try_get(2)?;
            let hash: String = row.try_get(3)?;
            let Ok(entry) = serde_json::from_str::<Entry>(&body) else {
                skipped += 1;
                continue;
            };
            if matches(filter, &chain, &entry, since, until) {
                matched += 1;
                each(siem_line(&chain, seq, &hash, &entry))?;
            }
        }
    });
    pool.close().await;
    Ok((matched, skipped))
}

/// Writes the matching entries as JSON Lines to `out`.
pub async fn export(db: &Path, filter: &Filter, out: &mut dyn Write) -> anyhow::Result<(u64, u64)> {
    select(db, filter, |line| {
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        Ok(())
    })
    .await
}

/// One line of the human-readable table.
pub fn table_line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut detail = s("detail");
    if detail.chars().count() > 60 {
        detail = detail.chars().take(59).collect::<String>() + "…";
    }
    format!(
        "{}  {:<10} {:<13} {:<8} {:<18} {:<15} {:<10} {:<8} {}",
        s("time"),
        format!("{}#{}", s("chain"), v["seq"]),
        s("kind"),
        s("human"),
        s("agent"),
        s("tool"),
        s("decision"),
        s("status"),
        detail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_three_forms() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_time("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_time("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(format_time(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        for bad in ["", "yesterday", "-5m", "5w", "2023-13-01T00:00:00Z"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
