//! `zt-policy replay`: reads an audit log (read-only), decides its recorded
//! policy decisions again under a candidate directory, prints what changes.

use std::process::ExitCode;

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::Row;
use zt_policies::PolicyBundle;
use zt_policies::replay::{Recorded, Report, Skip};
use zt_proto::audit::Entry;
use zt_proto::db::{Dialect, Location};
use zt_proto::with_db;

use crate::ReplayArgs;

/// Entries decided per batch (a batch is spread over every core).
const BATCH: usize = 8192;

pub(crate) fn run(a: ReplayArgs) -> ExitCode {
    match replay(&a) {
        Ok(report) => {
            if let Err(e) = print(&a, &report) {
                eprintln!("zt-policy replay: {e:#}");
                return ExitCode::from(2);
            }
            if report.changed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("zt-policy replay: could not check: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Where the audit log is, and the time bounds, from the command line.
struct Source<'a> {
    data_dir: &'a Option<std::path::PathBuf>,
    database: &'a Option<String>,
    since: &'a Option<String>,
    until: &'a Option<String>,
}

/// Reads every entry of the log in `src` (read-only, chain by chain in
/// order) and hands each recorded policy decision, or why an entry is not
/// one, to `each`; returns the entries read and how many did not parse.
fn read(
    src: &Source<'_>,
    mut each: impl FnMut(Result<Recorded, Skip>) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    let location = match (src.database, src.data_dir) {
        (Some(url), _) => Location::parse(url).context("--database")?,
        (None, Some(dir)) => {
            let db = zt_proto::stack::Layout::new(dir).audit_db();
            if !db.exists() {
                anyhow::bail!("no audit log at {}", db.display());
            }
            Location::File(db)
        }
        (None, None) => anyhow::bail!("give --data-dir DIR or --database URL"),
    };
    let now = zt_proto::now_ms();
    let bound = |t: &Option<String>| {
        t.as_deref()
            .map(|t| zt_proto::time::parse_time(t, now).map_err(anyhow::Error::msg))
            .transpose()
    };
    let (since, until) = (bound(src.since)?, bound(src.until)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = zt_proto::store::open_read_only(&location)
            .await
            .with_context(|| format!("opening {}", location.display()))?;
        let time = match pool.dialect() {
            Dialect::Sqlite => "json_extract(body, '$.time_ms')",
            Dialect::Postgres => "CAST(CAST(body AS jsonb) ->> 'time_ms' AS BIGINT)",
        };
        let sql = format!(
            "SELECT chain, seq, body FROM audit_entries \
             WHERE (CAST($1 AS BIGINT) IS NULL OR {time} >= $1) \
               AND (CAST($2 AS BIGINT) IS NULL OR {time} < $2) \
             ORDER BY chain, seq"
        );
        let (mut entries, mut unreadable) = (0u64, 0u64);
        with_db!(&pool, p => {
            // Only the dialect's fixed expression is formatted in.
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(since)
                .bind(until)
                .fetch(p);
            while let Some(row) = rows.try_next().await? {
                entries += 1;
                let chain: String = row.try_get(0)?;
                let seq = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
                let body: String = row.try_get(2)?;
                let Ok(entry) = serde_json::from_str::<Entry>(&body) else {
                    unreadable += 1;
                    continue;
                };
                each(Recorded::from_entry(&chain, seq, entry))?;
            }
        });
        pool.close().await;
        Ok((entries, unreadable))
    })
}

fn replay(a: &ReplayArgs) -> anyhow::Result<Report> {
    let bundle = PolicyBundle::load(&a.policies)
        .with_context(|| format!("the candidate policy {}", a.policies.display()))?;
    let src = Source {
        data_dir: &a.data_dir,
        database: &a.database,
        since: &a.since,
        until: &a.until,
    };
    let mut report = Report {
        candidate: bundle.hash().to_owned(),
        ..Report::default()
    };
    let mut pending: Vec<Recorded> = Vec::with_capacity(BATCH);
    let flush = |pending: &mut Vec<Recorded>, report: &mut Report| -> anyhow::Result<()> {
        let outcomes =
            zt_policies::replay::batch(&bundle, pending).context("a replay worker failed")?;
        report.add(pending, outcomes);
        pending.clear();
        Ok(())
    };
    let mut without_basis = 0;
    let (entries, unreadable) = read(&src, |r| {
        match r {
            Ok(r) if selected(a, &r) => pending.push(r),
            Ok(_) | Err(Skip::NotADecision) => {}
            Err(Skip::NoBasis) => without_basis += 1,
        }
        if pending.len() >= BATCH {
            flush(&mut pending, &mut report)?;
        }
        Ok(())
    })?;
    flush(&mut pending, &mut report)?;
    report.entries = entries;
    report.unreadable = unreadable;
    report.without_basis = without_basis;
    report
        .changes
        .sort_by_key(|c| (c.time_ms, c.chain.clone(), c.seq));
    Ok(report)
}

pub(crate) fn shadow(a: crate::ShadowArgs) -> ExitCode {
    let src = Source {
        data_dir: &a.data_dir,
        database: &a.database,
        since: &a.since,
        until: &a.until,
    };
    let mut counts = std::collections::BTreeMap::new();
    let read = read(&src, |r| {
        if let Ok(r) = r {
            zt_policies::replay::shadow_counts(&r, &mut counts);
        }
        Ok(())
    });
    if let Err(e) = read {
        eprintln!("zt-policy shadow: could not check: {e:#}");
        return ExitCode::from(2);
    }
    let diverged = counts.values().any(|c| c.diverged > 0);
    if a.json {
        match serde_json::to_string_pretty(&counts) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("zt-policy shadow: {e}");
                return ExitCode::from(2);
            }
        }
    } else if counts.is_empty() {
        println!("no decision was recorded with a shadow verdict");
    } else {
        println!(
            "{:<40} {:>10} {:>10}  divergences",
            "shadow rule", "evaluated", "diverged"
        );
        for (rule, c) in &counts {
            let t: Vec<String> = c
                .transitions
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!(
                "{rule:<40} {:>10} {:>10}  {}",
                c.evaluated,
                c.diverged,
                t.join(", ")
            );
        }
    }
    if diverged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn selected(a: &ReplayArgs, r: &Recorded) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    eq(&a.tool, &r.request.tool)
        && eq(&a.human, &r.request.human)
        && eq(&a.session, &r.session)
        && a.was.is_none_or(|w| w == r.effect)
}

fn print(a: &ReplayArgs, report: &Report) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "replayed {} decisions of {} entries under {} ({})",
        report.replayed,
        report.entries,
        a.policies.display(),
        report.candidate
    );
    for (version, n) in &report.versions {
        println!("  {n} decided by policy {version}");
    }
    if report.without_basis > 0 {
        println!(
            "  {} refusals before the policy or entries without a recorded basis were left out",
            report.without_basis
        );
    }
    if !report.changed() {
        println!("nothing would change");
        return Ok(());
    }
    println!(
        "{} would change, {} would not",
        report.changes.len(),
        report.unchanged
    );
    println!();
    println!("{:<22} {:>8}", "change", "count");
    for (t, n) in &report.transitions {
        println!("{t:<22} {n:>8}");
    }
    println!();
    println!(
        "{:<44} {:>8}",
        "determining rule (-: no longer decides)", "count"
    );
    for (rule, n) in &report.rules {
        println!("{rule:<44} {n:>8}");
    }
    println!();
    println!(
        "{:<24} {:<14} {:<8} {:<14} {:<20} by",
        "time", "entry", "human", "tool", "change"
    );
    for c in report.changes.iter().take(a.show) {
        println!(
            "{:<24} {:<14} {:<8} {:<14} {:<20} {}",
            zt_proto::time::format_time(c.time_ms),
            format!("{}#{}", c.chain, c.seq),
            c.human,
            c.tool,
            format!("{}→{}", c.was, c.now),
            c.now_rules.join(", ")
        );
    }
    if report.changes.len() > a.show {
        println!(
            "… {} more (--show N, or --json)",
            report.changes.len() - a.show
        );
    }
    Ok(())
}
