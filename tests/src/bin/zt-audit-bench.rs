//! The audit benchmark: durable appends per second through the real writer
//! (group commit), and verification of a generated log of a million entries
//! through the real verifier, each beside the raw limit measured in the
//! same run on the same machine:
//!
//! - single-row durable commits/s (what appending costs without group commit);
//! - SHA-256 chain recomputation over the same bodies, in memory;
//! - Ed25519 verification of one checkpoint signature.
//!
//! Run it with `scripts/bench-audit` (release build).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use zt_proto::audit::{ChainWriter, Kind, Record};
use zt_proto::canonical::{self, Domain};
use zt_proto::keys::KeyPair;
use zt_proto::store::{self, AuditLog, CheckpointPolicy};

/// Audit benchmark: group-commit appends and 1M-entry verification.
#[derive(Debug, Parser)]
#[command(name = "zt-audit-bench")]
struct Args {
    /// Entries in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Concurrent appenders for the durable-append test.
    #[arg(long, default_value_t = 256)]
    writers: usize,
    /// Durable appends to time.
    #[arg(long, default_value_t = 200_000)]
    appends: u64,
    /// Single-row durable commits to time (the baseline).
    #[arg(long, default_value_t = 2_000)]
    single: u64,
    /// Entries appended after the full verification, then verified
    /// incrementally from the checkpoint it trusted.
    #[arg(long, default_value_t = 1_000)]
    tail: u64,
    /// Keep the generated databases in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

fn record(i: u64) -> Record {
    // Within alice's limits, as the shipped policy allowed it.
    let amount = 100 + (i % 4_900);
    let args =
        serde_json::json!({"order_id": format!("ord_{}", 1000 + i % 5000), "amount": amount});
    Record {
        session: format!("sid_{:016x}", i / 50),
        subject: "alice".into(),
        actors: vec!["agent:support-bot".into(), "launcher:desk".into()],
        tool: "issue_refund".into(),
        args_hash: canonical::args_hash("issue_refund", &args).unwrap_or_default(),
        args,
        decision: "allow".into(),
        rules: vec!["refund-within-rep-limit".into()],
        status: "executing".into(),
        detail: "refund within the representative's limit".into(),
        // What a live decision entry records with it (`zt-policy replay`
        // decides it again from this).
        basis: Some(serde_json::json!({
            "policy": "sha256:bench",
            "agent": "agent:support-bot",
            "human": {
                "rep_limit": 5000,
                "daily_refund_limit": 15000,
                "allowed_regions": ["eu"],
                "grantable_plans": ["basic", "standard"],
                "roles": ["support_rep"],
            },
            "resource": {
                "id": format!("ord_{}", 1000 + i % 5000),
                "attrs": {"region": "eu", "account": "acct_1001", "amount": 500_000, "refunded": 0},
            },
            "context": {"tainted": false, "budgets": {"refunded_today": (i % 100) * 100}},
        })),
        ..Record::default()
    }
}

/// Seals the entries `range` with `writer` and stores them as a live writer
/// would (checkpointed by `policy`), in large transactions; `seen` is shown
/// every batch of bodies before it is stored.
async fn append(
    pool: &sqlx::SqlitePool,
    writer: &mut ChainWriter,
    policy: &CheckpointPolicy,
    range: std::ops::Range<u64>,
    now: i64,
    seen: &mut dyn FnMut(&[zt_proto::audit::Sealed]),
) -> anyhow::Result<()> {
    let end = range.end;
    let mut tx = pool.begin().await?;
    let mut pending: Vec<zt_proto::audit::Sealed> = Vec::new();
    for i in range {
        let sealed = writer.seal(Kind::Decision, record(i), now)?;
        writer.advance(&sealed);
        pending.push(sealed);
        if pending.len() == 64 || i + 1 == end {
            seen(&pending);
            let mut sql =
                String::from("INSERT INTO audit_entries (chain, seq, body, hash, sig) VALUES ");
            for j in 0..pending.len() {
                sql.push_str(if j == 0 {
                    "(?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?)"
                });
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in pending.drain(..) {
                q = q
                    .bind(e.chain)
                    .bind(i64::try_from(e.seq)?)
                    .bind(e.body)
                    .bind(e.hash)
                    .bind(e.sig);
            }
            q.execute(&mut *tx).await?;
        }
        if writer.uncovered() >= policy.every || i + 1 == end {
            let cp = writer.checkpoint(now)?;
            sqlx::query("INSERT INTO audit_checkpoints (chain, seq, time_ms, body, hash, sig) VALUES (?, ?, ?, ?, ?, ?)")
                .bind("bench")
                .bind(i64::try_from(cp.checkpoint.seq)?)
                .bind(cp.checkpoint.time_ms)
                .bind(&cp.body)
                .bind(&cp.hash)
                .bind(&cp.sig)
                .execute(&mut *tx)
                .await?;
            writer.advance_checkpoint(&cp);
        }
        if (i + 1) % 100_000 == 0 {
            tx.commit().await?;
            tx = pool.begin().await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match &args.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(zt_proto::random_id("zt-audit-bench-")),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::from_seed(&[42; 32]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "audit benchmark: {} cores, data in {}",
        cores,
        dir.display()
    );

    // 1. Baseline: one durable (synchronous=FULL) commit per entry.
    let pool = store::open_sqlite(&dir.join("single.db")).await?;
    sqlx::query("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, hash TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let body = serde_json::to_string(&record(1))?;
    let t = Instant::now();
    for i in 0..args.single {
        sqlx::query("INSERT INTO t (seq, body, hash) VALUES (?, ?, ?)")
            .bind(i64::try_from(i)?)
            .bind(&body)
            .bind("00")
            .execute(&pool)
            .await?;
    }
    let single = rate(args.single, t.elapsed());
    pool.close().await;

    // 2. Durable appends through the writer, many concurrent callers.
    let pool = store::open_file(&dir.join("appends.db")).await?;
    let log = Arc::new(AuditLog::open(pool.clone(), "bench", key.clone()).await?);
    let per = args.appends / args.writers as u64;
    let t = Instant::now();
    let tasks: Vec<_> = (0..args.writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    log.append(Kind::Decision, record(w as u64 * per + i))
                        .await?;
                }
                Ok::<_, store::StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let appended = per * args.writers as u64;
    let appends = rate(appended, t.elapsed());
    log.close().await;
    pool.close().await;

    // 3. A generated log of `entries`, checkpointed like a live writer
    //    (every 1,000 entries), written in large transactions.
    // The tables as the store creates them, then the raw file for bulk loading.
    store::open_file(&dir.join("log.db")).await?.close().await;
    let pool = store::open_sqlite(&dir.join("log.db")).await?;
    sqlx::query("INSERT INTO audit_chains (chain, public_key, created_ms) VALUES ('bench', ?, 0)")
        .bind(key.public().to_hex())
        .execute(&pool)
        .await?;
    let policy = CheckpointPolicy::default();
    let mut writer = ChainWriter::new("bench".into(), key.clone(), None, None);
    let t = Instant::now();
    let now = zt_proto::now_ms();
    // The raw limit, measured on the same bodies as they are generated
    // (64 at a time, so a log of any size needs no memory for it).
    let mut sha_time = Duration::ZERO;
    let mut sha_last = [0u8; 32];
    append(
        &pool,
        &mut writer,
        &policy,
        0..args.entries,
        now,
        &mut |bodies: &[zt_proto::audit::Sealed]| {
            let t = Instant::now();
            for b in bodies {
                sha_last = canonical::digest(Domain::AuditLeaf, b.body.as_bytes());
            }
            sha_time += t.elapsed();
        },
    )
    .await?;
    std::hint::black_box(sha_last);
    let generated = t.elapsed();
    let sha = rate(args.entries, sha_time);
    pool.close().await;

    // 4. One Ed25519 verify (a checkpoint's signature).
    let msg = canonical::digest(Domain::Checkpoint, b"checkpoint");
    let sig = key.sign(Domain::Checkpoint, &msg);
    let public = key.public();
    let n = 2_000u64;
    let t = Instant::now();
    for _ in 0..n {
        public
            .verify(Domain::Checkpoint, &msg, &sig)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let ed_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;

    // 5. The real verifier over the generated log (read-only, streaming).
    let location = zt_proto::db::Location::File(dir.join("log.db"));
    let pool = store::open_read_only(&location).await?;
    let pinned: BTreeMap<String, zt_proto::keys::PublicKey> = [("bench".to_owned(), public)].into();
    let t = Instant::now();
    let report = store::verify(
        &pool,
        Some(&pinned),
        &BTreeMap::new(),
        store::Scope::Full,
        &mut |_, _| {},
    )
    .await?;
    let verify_time = t.elapsed();
    pool.close().await;
    anyhow::ensure!(
        report.intact(),
        "generated log did not verify: {:?}",
        report.findings
    );
    let checkpoints: u64 = report.verified.iter().map(|v| v.checkpoints).sum();
    let verified = report.entries();
    let trusted: BTreeMap<String, zt_proto::audit::Trusted> = report
        .verified
        .iter()
        .filter_map(|v| v.latest.clone().map(|l| (v.chain.clone(), l)))
        .collect();

    // 6. The log grows by `tail` entries; verify again from the
    //    checkpoint the full run trusted.
    let pool = store::open_sqlite(&dir.join("log.db")).await?;
    append(
        &pool,
        &mut writer,
        &policy,
        args.entries..args.entries + args.tail,
        zt_proto::now_ms(),
        &mut |_| {},
    )
    .await?;
    pool.close().await;
    let pool = store::open_read_only(&location).await?;
    let t = Instant::now();
    let again = store::verify(
        &pool,
        Some(&pinned),
        &trusted,
        store::Scope::AfterTrusted,
        &mut |_, _| {},
    )
    .await?;
    let incremental_time = t.elapsed();
    pool.close().await;
    anyhow::ensure!(
        again.intact() && again.entries() == verified + args.tail,
        "the grown log did not verify incrementally: {:?}",
        again.findings
    );
    let read_from: u64 = again
        .verified
        .iter()
        .map(|v| v.checked_from)
        .min()
        .unwrap_or(1);

    println!();
    println!("durable appends (synchronous=FULL, WAL)");
    println!("  single-row commits, one caller      {single:>12.0} /s   (baseline)");
    println!(
        "  group commit, {:>3} concurrent callers {appends:>11.0} /s   {:.1}x the baseline",
        args.writers,
        appends / single.max(1.0)
    );
    println!();
    println!("verification of a {verified}-entry log with {checkpoints} checkpoints");
    println!(
        "  audit verify (read, hash, link, check) {:>10.0} entries/s   {:.2} s total",
        rate(verified, verify_time),
        verify_time.as_secs_f64()
    );
    println!("  raw SHA-256 chain recomputation       {sha:>10.0} entries/s   (limit)");
    println!(
        "  Ed25519 verify per checkpoint         {ed_us:>10.1} us         ({:.3} s for all checkpoints)",
        ed_us * checkpoints as f64 / 1e6
    );
    println!(
        "  verify / raw SHA-256 = {:.2}x the time",
        sha / rate(verified, verify_time).max(1.0)
    );
    println!(
        "  after {} more entries, from the trusted checkpoint (#{read_from}): {:.3} s   ({:.0}x faster than full)",
        args.tail,
        incremental_time.as_secs_f64(),
        verify_time.as_secs_f64() / incremental_time.as_secs_f64().max(1e-9)
    );
    println!("  (log generated in {:.1} s)", generated.as_secs_f64());
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
