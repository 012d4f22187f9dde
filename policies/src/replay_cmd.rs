//! `zt-policy replay`: reads an audit log (read-only), decides its recorded
//! policy decisions again under a candidate directory, prints what changes.

use std::process::ExitCode;

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::Row;
use zt_policies::PolicyBundle;
use zt_policies::replay::{Recorded, Report, Skip};
use zt_proto::audit::Entry;
use zt_proto::db::Location;
use zt_proto::with_db;

use crate::ReplayArgs;

/// Entries decided per batch (a batch is spread over every core).
const BATCH: usize = 32_768;

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

/// One stored entry: chain, position, body.
type Stored = (String, u64, String);

/// What became of one stored entry.
enum Read {
    Decision(Box<Recorded>),
    Skipped(Skip),
    Unreadable,
}

fn parse(row: &Stored) -> Read {
    match serde_json::from_str::<Entry>(&row.2) {
        Ok(entry) => match Recorded::from_entry(&row.0, row.1, entry) {
            Ok(r) => Read::Decision(Box::new(r)),
            Err(skip) => Read::Skipped(skip),
        },
        Err(_) => Read::Unreadable,
    }
}

/// Reads every entry of the log in `src` (read-only, chain by chain in
/// order), parses them in batches on every core, and hands each batch to
/// `each`; returns the entries read.
fn read(
    src: &crate::LogArgs,
    mut each: impl FnMut(Vec<Read>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let location = match (&src.database, &src.data_dir) {
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
    let (since, until) = (bound(&src.since)?, bound(&src.until)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = zt_proto::store::open_read_only(&location)
            .await
            .with_context(|| format!("opening {}", location.display()))?;
        let time = zt_proto::store::entry_time_sql(pool.dialect());
        let sql = format!(
            "SELECT chain, seq, body FROM audit_entries \
             WHERE (CAST($1 AS BIGINT) IS NULL OR {time} >= $1) \
               AND (CAST($2 AS BIGINT) IS NULL OR {time} < $2) \
             ORDER BY chain, seq"
        );
        let mut entries = 0u64;
        let mut rows_in: Vec<Stored> = Vec::with_capacity(BATCH);
        let mut flush = |rows_in: &mut Vec<Stored>| -> anyhow::Result<()> {
            let parsed =
                zt_policies::replay::par_map(rows_in, parse).context("a replay worker failed")?;
            rows_in.clear();
            each(parsed)
        };
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
                rows_in.push((chain, seq, body));
                if rows_in.len() >= BATCH {
                    flush(&mut rows_in)?;
                }
            }
        });
        flush(&mut rows_in)?;
        pool.close().await;
        Ok(entries)
    })
}

fn replay(a: &ReplayArgs) -> anyhow::Result<Report> {
    let bundle = PolicyBundle::load(&a.policies)
        .with_context(|| format!("the candidate policy {}", a.policies.display()))?;
    let src = &a.log;
    let mut report = Report {
        candidate: bundle.hash().to_owned(),
        ..Report::default()
    };
    let (mut without_basis, mut unreadable) = (0, 0);
    let mut deciding = std::time::Duration::ZERO;
    let started = std::time::Instant::now();
    let entries = read(src, |batch| {
        let mut pending = Vec::with_capacity(batch.len());
        for r in batch {
            match r {
                Read::Decision(r) if selected(a, &r) => pending.push(*r),
                Read::Decision(_) | Read::Skipped(Skip::NotADecision) => {}
                Read::Skipped(Skip::NoBasis) => without_basis += 1,
                Read::Unreadable => unreadable += 1,
            }
        }
        let t = std::time::Instant::now();
        let outcomes =
            zt_policies::replay::batch(&bundle, &pending).context("a replay worker failed")?;
        deciding += t.elapsed();
        report.add(&pending, outcomes);
        Ok(())
    })?;
    report.deciding_secs = deciding.as_secs_f64();
    report.total_secs = started.elapsed().as_secs_f64();
    report.entries = entries;
    report.unreadable = unreadable;
    report.without_basis = without_basis;
    report
        .changes
        .sort_by_key(|c| (c.time_ms, c.chain.clone(), c.seq));
    Ok(report)
}

pub(crate) fn shadow(a: crate::ShadowArgs) -> ExitCode {
    let src = &a.log;
    let mut counts = std::collections::BTreeMap::new();
    let read = read(src, |batch| {
        for r in batch {
            if let Read::Decision(r) = r {
                zt_policies::replay::shadow_counts(&r, &mut counts);
            }
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
    println!(
        "  in {:.2} s, {:.2} s of it deciding (on every core)",
        report.total_secs, report.deciding_secs
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
