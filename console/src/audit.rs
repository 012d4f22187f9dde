//! `zt-console audit verify`: one command that proves every audit chain
//! intact or names the first bad entry.
//!
//! The verifier opens the log read-only, recomputes every chain, checks
//! every signed checkpoint against the writers' public keys pinned in the
//! stack's `public/` directory (not the keys recorded in the database, which
//! whoever edits the database could replace), and compares each chain with
//! the checkpoint it trusted on its previous run, kept in a small state file
//! outside the data directory, so a log rolled back to an older copy or cut
//! back below what was seen before is caught even when it is consistent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use zt_proto::audit::{Entry, Kind, Trusted};
use zt_proto::db::Location;
use zt_proto::keys::PublicKey;
use zt_proto::stack::Layout;
use zt_proto::store::{self, Report};

/// Where the log is.
#[derive(Debug, Clone)]
pub enum Source {
    /// A stack's data directory: its `audit.db` and its pinned keys.
    DataDir(PathBuf),
    /// A database URL (`sqlite://PATH` or `postgres://...`); keys come from
    /// the database itself.
    Database(String),
    /// A database URL, with the writers' keys pinned in a data directory
    /// (a stack whose chains live in PostgreSQL).
    Pinned(PathBuf, String),
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

/// The service whose audit key must sign `chain`: `approval` for the
/// approval service's chains (`approval`, `approval-<replica>`), `broker`
/// for the brokers' (`broker`, `broker-<replica>`, `broker-stdio-<id>`).
fn writer_of(chain: &str) -> Option<&'static str> {
    ["approval", "broker"]
        .into_iter()
        .find(|w| chain == *w || chain.strip_prefix(w).is_some_and(|r| r.starts_with('-')))
}

/// What a file in `public/` alone must not make trusted: a chain pinned
/// under a key that is not its service's (a service that can write
/// `public/` pinning a chain named for another), a chain of no known
/// writer, and a pinned key that changed since this verifier last checked.
fn key_findings(
    pinned: &BTreeMap<String, PublicKey>,
    remembered: &BTreeMap<String, String>,
) -> Vec<zt_proto::audit::Finding> {
    use zt_proto::audit::{Finding, Problem};
    let mut out = Vec::new();
    for (chain, key) in pinned {
        let finding = |problem, detail: String| Finding {
            chain: chain.clone(),
            seq: 0,
            problem,
            detail,
        };
        match writer_of(chain) {
            None => out.push(finding(
                Problem::Misplaced,
                format!(
                    "chain `{chain}` is pinned, but no known writer writes a chain of that name"
                ),
            )),
            Some(w) => {
                if let Some(service) = pinned.get(w)
                    && service != key
                {
                    out.push(finding(
                        Problem::Signature,
                        format!(
                            "chain `{chain}` is pinned under key {}, not the {w} service's audit key {}",
                            key.kid(),
                            service.kid()
                        ),
                    ));
                }
            }
        }
        if let Some(before) = remembered.get(chain)
            && *before != key.to_hex()
        {
            out.push(finding(
                Problem::Signature,
                format!(
                    "the pinned key of chain `{chain}` changed since this verifier last checked (now {})",
                    key.kid()
                ),
            ));
        }
    }
    out
}

/// Where the verifier keeps the checkpoints it trusted.
#[derive(Debug, Clone)]
pub enum StateFile {
    /// The default: `$XDG_STATE_HOME/zt-console/` (or `~/.local/state/...`),
    /// one file per log.
    Default,
    /// This file.
    At(PathBuf),
    /// Neither read nor written.
    Off,
}

/// What the verifier remembers of one log.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// The log it is about.
    pub log: String,
    /// Per chain, the latest checkpoint that verified.
    pub chains: BTreeMap<String, Trusted>,
    /// Per chain, the pinned key (hex) it verified with: a pinned key that
    /// changes later is a finding.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// When it was last updated (ms since the epoch).
    pub updated_ms: i64,
}

fn state_path(choice: &StateFile, log: &Path) -> Option<PathBuf> {
    match choice {
        StateFile::Off => None,
        StateFile::At(p) => Some(p.clone()),
        StateFile::Default => {
            let base = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
                })?;
            let id = zt_proto::canonical::digest_hex(
                zt_proto::canonical::Domain::Id,
                log.to_string_lossy().as_bytes(),
            );
            Some(
                base.join("zt-console")
                    .join(format!("audit-{}.json", &id[..16])),
            )
        }
    }
}

fn read_state(path: &Path) -> anyhow::Result<State> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("verifier state {} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading verifier state {}", path.display())),
    }
}

fn write_state(path: &Path, state: &State) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.new");
    let _ = std::fs::remove_file(&tmp);
    zt_proto::keys::write_private(&tmp, &serde_json::to_string_pretty(state)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// A verification's outcome with where its trust came from.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The findings and verified chains.
    pub report: Report,
    /// The state file used, if any.
    pub state: Option<PathBuf>,
}

/// Verifies the log. `Err` means it could not be checked at all. When the
/// log is intact, the state file is advanced to its latest checkpoints.
pub async fn verify(
    source: &Source,
    state: &StateFile,
    scope: store::Scope,
    progress: store::Progress<'_>,
) -> anyhow::Result<Outcome> {
    let (location, pinned) = match source {
        Source::DataDir(dir) => {
            let layout = Layout::new(dir);
            (
                Location::File(layout.audit_db()),
                Some(pinned_keys(&layout)?),
            )
        }
        Source::Database(url) => (Location::parse(url)?, None),
        Source::Pinned(dir, url) => (Location::parse(url)?, Some(pinned_keys(&Layout::new(dir))?)),
    };
    // The state file is keyed by the log's identity: its canonical path, or
    // its URL without a password.
    let log = match &location {
        Location::File(path) => {
            if !path.exists() {
                bail!("no audit log at {}", path.display());
            }
            path.canonicalize().unwrap_or_else(|_| path.clone())
        }
        Location::Postgres(_) => PathBuf::from(location.display()),
    };
    let state_file = state_path(state, &log);
    let mut remembered = match &state_file {
        Some(p) => read_state(p)?,
        None => State::default(),
    };
    let pool = store::open_read_only(&location)
        .await
        .with_context(|| format!("opening {}", location.display()))?;
    let mut report = store::verify(&pool, pinned.as_ref(), &remembered.chains, scope, progress)
        .await
        .with_context(|| format!("reading {}", location.display()))?;
    pool.close().await;
    if let Some(pinned) = &pinned {
        report
            .findings
            .extend(key_findings(pinned, &remembered.keys));
    }
    if let Some(p) = &state_file
        && report.intact()
    {
        remembered.log = log.to_string_lossy().into_owned();
        for v in &report.verified {
            if let Some(latest) = &v.latest {
                remembered.chains.insert(v.chain.clone(), latest.clone());
            }
        }
        if let Some(pinned) = &pinned {
            for (chain, key) in pinned {
                remembered.keys.insert(chain.clone(), key.to_hex());
            }
        }
        remembered.updated_ms = zt_proto::now_ms();
        write_state(p, &remembered)?;
    }
    Ok(Outcome {
        report,
        state: state_file,
    })
}

/// What a verification proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every chain verified against pinned keys (exit 0).
    Intact,
    /// A finding (exit 1).
    Tampered,
    /// The chains are consistent, but no key was pinned: whoever can write
    /// the database could have rewritten them and the keys recorded beside
    /// them, so nothing is proved (exit 2, "could not check").
    Unpinned,
}

impl Verdict {
    /// The verdict of `report`.
    pub fn of(report: &Report) -> Verdict {
        if !report.intact() {
            Verdict::Tampered
        } else if report.keys == store::KeySource::Database {
            Verdict::Unpinned
        } else {
            Verdict::Intact
        }
    }

    /// The exit code `audit verify` gives it.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Intact => 0,
            Verdict::Tampered => 1,
            Verdict::Unpinned => 2,
        }
    }
}

/// The report as JSON. `intact` is `null` when nothing could be proved
/// (no pinned keys); `consistent` says whether the chains recompute.
pub fn report_json(report: &Report) -> Value {
    let intact = match Verdict::of(report) {
        Verdict::Intact => json!(true),
        Verdict::Tampered => json!(false),
        Verdict::Unpinned => Value::Null,
    };
    json!({
        "intact": intact,
        "consistent": report.intact(),
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
    let checkpoints: u64 = report.verified.iter().map(|v| v.checkpoints).sum();
    if Verdict::of(report) == Verdict::Unpinned {
        return format!(
            "audit chain: NOT VERIFIED: {} entries in {} chains ({}) are consistent, but no writer's \
             key is pinned, and whoever can write the database could have rewritten the chains and \
             the keys recorded beside them; give --data-dir DIR for the stack's pinned keys",
            report.entries(),
            report.verified.len(),
            chains.join(", ")
        );
    }
    if report.intact() {
        let mut out = format!(
            "audit chain: verified {} entries ({} chains: {}; {checkpoints} signed checkpoints; {keys})",
            report.entries(),
            report.verified.len(),
            chains.join(", ")
        );
        for v in report.verified.iter().filter(|v| v.checked_from > 1) {
            out.push_str(&format!(
                "\n  chain {}: read from #{}, the checkpoint this verifier trusted on an earlier run \
                 (entries before it not read again; verify without --incremental to re-check them)",
                v.chain, v.checked_from
            ));
        }
        for v in report.verified.iter().filter(|v| v.unsigned_tail > 0) {
            out.push_str(&format!(
                "\n  note: chain {}: the last {} entries are not yet covered by a signed checkpoint \
                 (normal while its writer runs; after it stops, suspect an appended tail)",
                v.chain, v.unsigned_tail
            ));
        }
        out
    } else {
        let mut out = String::from("audit chain: TAMPERED");
        for f in &report.findings {
            if f.seq == 0 {
                out.push_str(&format!(
                    "\n  chain {} ({}): {}",
                    f.chain,
                    f.problem.as_str(),
                    f.detail
                ));
            } else {
                out.push_str(&format!(
                    "\n  chain {}, first bad entry #{} ({}): {}",
                    f.chain,
                    f.seq,
                    f.problem.as_str(),
                    f.detail
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
    let pool = store::open_read_only(&Location::File(Layout::new(dir).audit_db())).await?;
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

/// A one-line progress bar on stderr for long verifications: shown only on
/// a terminal, only after the first half second, redrawn at most every
/// 100 ms.
#[derive(Debug)]
pub struct ProgressBar {
    enabled: bool,
    started: std::time::Instant,
    drawn: Option<std::time::Instant>,
}

impl ProgressBar {
    /// A bar that draws when `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> ProgressBar {
        use std::io::IsTerminal;
        ProgressBar {
            enabled: wanted && std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
            drawn: None,
        }
    }

    /// Shows `done` of `total` entries.
    pub fn show(&mut self, done: u64, total: u64) {
        use std::io::Write;
        if !self.enabled || total == 0 || self.started.elapsed().as_millis() < 500 {
            return;
        }
        if self
            .drawn
            .is_some_and(|t| t.elapsed().as_millis() < 100 && done < total)
        {
            return;
        }
        self.drawn = Some(std::time::Instant::now());
        let width = 30u64;
        let filled = (done.min(total) * width / total) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rverifying [{}{}] {done}/{total} entries ({:.0}/s)",
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            rate
        );
        let _ = err.flush();
    }

    /// Erases the bar.
    pub fn clear(&mut self) {
        use std::io::Write;
        if self.drawn.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}\r", " ".repeat(79));
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zt_proto::audit::Problem;
    use zt_proto::keys::KeyPair;

    #[test]
    fn a_pin_dropped_into_public_is_a_finding() {
        let approval = KeyPair::from_seed(&[1; 32]).public();
        let broker = KeyPair::from_seed(&[2; 32]).public();
        let mut pinned: BTreeMap<String, PublicKey> = [
            ("approval".to_owned(), approval.clone()),
            ("approval-b".to_owned(), approval.clone()),
            ("broker".to_owned(), broker.clone()),
            ("broker-stdio-1".to_owned(), broker.clone()),
        ]
        .into();
        assert!(key_findings(&pinned, &BTreeMap::new()).is_empty());

        // The broker's user pins a chain named for the approval service
        // under its own key, and one of no known writer.
        pinned.insert("approval-x".into(), broker.clone());
        pinned.insert("evil".into(), broker.clone());
        let found: Vec<(String, Problem)> = key_findings(&pinned, &BTreeMap::new())
            .into_iter()
            .map(|f| (f.chain, f.problem))
            .collect();
        assert_eq!(
            found,
            [
                ("approval-x".to_owned(), Problem::Signature),
                ("evil".to_owned(), Problem::Misplaced)
            ]
        );

        // A pinned key replaced since the verifier last checked.
        let before: BTreeMap<String, String> = [("broker".to_owned(), approval.to_hex())].into();
        let pinned: BTreeMap<String, PublicKey> = [("broker".to_owned(), broker)].into();
        let found = key_findings(&pinned, &before);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("changed"), "{}", found[0].detail);
    }
}
