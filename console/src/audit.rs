//! `zt-console audit verify`: one command that proves every audit chain
//! intact or names the first bad entry.
//!
//! The verifier opens the log read-only, recomputes every chain, and checks
//! each entry's signature against the writers' public keys pinned in the
//! stack's `public/` directory (not the keys recorded in the database, which
//! whoever edits the database could replace).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use zt_proto::audit::{Entry, Kind};
use zt_proto::keys::PublicKey;
use zt_proto::stack::Layout;
use zt_proto::store::{self, Report};

/// Where the log is.
#[derive(Debug, Clone)]
pub enum Source {
    /// A stack's data directory: its `audit.db` and its pinned keys.
    DataDir(PathBuf),
    /// A database URL (`sqlite://PATH`); keys come from the database itself.
    Database(String),
}

/// Pinned audit keys (`public/audit-<chain>.pem`) of a data directory.
pub fn pinned_keys(layout: &Layout) -> anyhow::Result<BTreeMap<String, PublicKey>> {
    let mut keys = BTreeMap::new();
    let dir = layout.public_dir();
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("reading pinned keys in {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(chain) = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".pem"))
        {
            keys.insert(chain.to_owned(), PublicKey::read(&path)?);
        }
    }
    Ok(keys)
}

fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        return Ok(PathBuf::from(path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!("this build verifies SQLite audit logs; PostgreSQL stores are not supported yet");
    }
    bail!("unsupported database URL (expected sqlite://PATH)")
}

/// Verifies the log. `Err` means it could not be checked at all.
pub async fn verify(source: &Source) -> anyhow::Result<Report> {
    let (path, pinned) = match source {
        Source::DataDir(dir) => {
            let layout = Layout::new(dir);
            (layout.audit_db(), Some(pinned_keys(&layout)?))
        }
        Source::Database(url) => (sqlite_path(url)?, None),
    };
    if !path.exists() {
        bail!("no audit log at {}", path.display());
    }
    let pool = store::open_read_only(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let report = store::verify(&pool, pinned.as_ref())
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    pool.close().await;
    Ok(report)
}

/// The report as JSON.
pub fn report_json(report: &Report) -> Value {
    json!({
        "intact": report.intact(),
        "entries": report.entries(),
        "keys": report.keys,
        "chains": report.verified,
        "findings": report.findings,
    })
}

/// The report as lines for a person.
pub fn report_text(report: &Report) -> String {
    let chains: Vec<String> = report
        .verified
        .iter()
        .map(|v| format!("{} {}", v.chain, v.entries))
        .collect();
    let keys = match report.keys {
        store::KeySource::Pinned => "keys pinned",
        store::KeySource::Database => "keys from the database only (not pinned)",
    };
    if report.intact() {
        format!(
            "audit chain: verified {} entries ({} chains: {}; {keys})",
            report.entries(),
            report.verified.len(),
            chains.join(", ")
        )
    } else {
        let mut out = String::from("audit chain: TAMPERED");
        for f in &report.findings {
            if f.seq == 0 {
                out.push_str(&format!("\n  chain {}: {}", f.chain, f.detail));
            } else {
                out.push_str(&format!(
                    "\n  chain {}, first bad entry #{}: {}",
                    f.chain, f.seq, f.detail
                ));
            }
        }
        if !chains.is_empty() {
            out.push_str(&format!("\n  intact: {}", chains.join(", ")));
        }
        out
    }
}

/// Counts of what the log records, for summaries.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Calls allowed as asked.
    pub allowed: u64,
    /// Calls allowed after rewriting to least privilege.
    pub constrained: u64,
    /// Calls refused (policy, schema, scope, identity, grant).
    pub denied: u64,
    /// Calls escalated to a human.
    pub escalated: u64,
    /// Approvals granted by operators.
    pub approved: u64,
    /// Approvals refused by operators.
    pub operator_denied: u64,
    /// Calls that ran against the backend successfully.
    pub executed: u64,
}

/// Tallies the decisions recorded in the log of a data directory.
pub async fn tally(dir: &Path) -> anyhow::Result<Tally> {
    let pool = store::open_read_only(&Layout::new(dir).audit_db()).await?;
    let mut t = Tally::default();
    for chain in store::chains(&pool).await?.keys() {
        for sealed in store::entries(&pool, chain).await? {
            let Ok(e) = serde_json::from_str::<Entry>(&sealed.body) else {
                continue;
            };
            let r = &e.record;
            match (e.kind, r.decision.as_str(), r.status.as_str()) {
                (Kind::Decision, "allow", "executing") => t.allowed += 1,
                (Kind::Decision, "constrain", "executing") => t.constrained += 1,
                (Kind::Decision, "deny", _) => t.denied += 1,
                (Kind::GrantUse, _, "refused") => t.denied += 1,
                (Kind::Escalation, _, _) if chain.starts_with("broker") => t.escalated += 1,
                (Kind::Approval, "approve", "approved") => t.approved += 1,
                (Kind::Approval, "deny", "denied") => t.operator_denied += 1,
                (Kind::Result, _, "ok") if chain.starts_with("broker") => t.executed += 1,
                _ => {}
            }
        }
    }
    pool.close().await;
    Ok(t)
}
