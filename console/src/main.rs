//! `zt-console`: the operator console, the local stack launcher and the demo.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use zt_console::agent::{DEMO_SCENARIO, Scenario};
use zt_console::audit::{self, Source};
use zt_console::client::{self, OperatorClient, dollars};
use zt_console::demo::{self, DemoOptions};
use zt_console::stack::{self, Stack};
use zt_proto::pb::ApprovalRequest;
use zt_proto::stack::Layout;

/// Operator console of the zero-trust agent control plane: approve or deny
/// escalated agent actions, watch live activity, verify the audit log; run a
/// local stack or the demo.
#[derive(Debug, Parser)]
#[command(name = "zt-console", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    conn: Conn,
    /// Hide approve/deny (watchers and auditors).
    #[arg(long)]
    readonly: bool,
    /// No desktop notifications for new requests (the terminal bell and the
    /// console's toasts remain).
    #[arg(long, global = true)]
    no_notify: bool,
}

/// How to reach the approval service as an operator.
#[derive(Debug, Clone, Args)]
struct Conn {
    /// The approval service's URL (default: the one running for --data-dir).
    #[arg(long, global = true)]
    approval: Option<String>,
    /// A stack's data directory.
    #[arg(long, global = true, env = "ZT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Operator token (issue one with `zt-approval token operator`).
    #[arg(long, global = true, env = "ZT_OPERATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA that an `https://` approval service's certificate must chain
    /// to (default: the stack's DIR/tls-ca.pem).
    #[arg(long, global = true, value_name = "FILE")]
    approval_ca: Option<PathBuf>,
}

impl Conn {
    fn client(&self) -> anyhow::Result<OperatorClient> {
        let url = client::resolve_url(self.approval.as_deref(), self.data_dir.as_deref())?;
        let ca = self.approval_ca.clone().or_else(|| {
            self.data_dir
                .as_deref()
                .map(|d| zt_proto::stack::Layout::new(d).tls_ca_file())
        });
        OperatorClient::new(
            &url,
            self.token.as_deref().unwrap_or_default(),
            ca.as_deref(),
        )
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally with a scripted agent and open the console.
    Demo {
        /// No TUI: decide escalations automatically, print a summary, exit 0
        /// only if every expectation held and the audit log verifies.
        #[arg(long)]
        headless: bool,
        /// Headless: deny escalations instead of approving them.
        #[arg(long)]
        deny: bool,
        /// Keep the temporary data directory.
        #[arg(long)]
        keep: bool,
        /// A scenario file instead of the built-in one.
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Run the stack (approval service, broker, example backend) in the
    /// foreground; prints broker_url=, approval_url= and data_dir= when ready.
    Up {
        /// A PostgreSQL URL (postgres://...) for the approval service's and
        /// the broker's state and the audit chains, shared by replicas;
        /// SQLite files in the data directory when omitted.
        #[arg(long, env = "ZT_DATABASE_URL", value_name = "URL")]
        database: Option<String>,
        /// The approval service's own database URL (its role), instead of
        /// --database; see `zt-approval migrate`.
        #[arg(long, env = "ZT_APPROVAL_DATABASE_URL", value_name = "URL")]
        approval_database: Option<String>,
        /// The broker's own database URL (its role), instead of --database;
        /// see `zt-broker migrate`.
        #[arg(long, env = "ZT_BROKER_DATABASE_URL", value_name = "URL")]
        broker_database: Option<String>,
        /// The billing API's own database URL (its role), instead of
        /// --database; see `zt-billing migrate`.
        #[arg(long, env = "ZT_BILLING_DATABASE_URL", value_name = "URL")]
        billing_database: Option<String>,
        /// Run each service as its own operating-system user (`zt-approval`,
        /// `zt-broker`, `zt-billing`; create them with
        /// `scripts/system-users`), after giving the data directory the
        /// owners and modes that keep them apart. Needs root.
        #[arg(long)]
        users: bool,
        /// Serve the approval service's gRPC port over TLS with a
        /// certificate from the stack's own CA (DIR/tls-ca.pem); the broker
        /// and the console verify it. `approval_url` is then `https://`.
        #[arg(long)]
        tls: bool,
    },
    /// The scripted agent: replay a scenario against a broker (token from
    /// BROKER_SESSION_TOKEN).
    Agent {
        /// The broker's MCP endpoint.
        #[arg(long)]
        broker: String,
        /// Scenario file (default: the built-in demo).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Print outcomes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List pending approval requests.
    Pending {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request (above the quorum threshold, one of the
    /// approvals it needs).
    Approve {
        /// Request id.
        id: String,
        /// Why (recorded in the audit log; required above the threshold in
        /// the approval rules).
        #[arg(long)]
        reason: String,
    },
    /// Deny a pending request.
    Deny {
        /// Request id.
        id: String,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Cancel a pending request (admin operators).
    Cancel {
        /// Request id.
        id: String,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every chain: exit 0 intact, 1 tampered, 2 could not check.
    Verify {
        /// The log's database (sqlite://PATH or postgres://...). With
        /// --data-dir too, the writers' keys pinned there are used; without,
        /// the chains are only checked for consistency and the exit code is
        /// 2 (nothing proved: no key pinned) unless something is wrong (1).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Where this verifier keeps the checkpoints it trusted (default:
        /// $XDG_STATE_HOME/zt-console/, one file per log).
        #[arg(long, value_name = "FILE", conflicts_with = "no_state")]
        state: Option<PathBuf>,
        /// Neither read nor update the verifier's state (no rollback check).
        #[arg(long)]
        no_state: bool,
        /// Check only what was appended since the checkpoints this verifier
        /// trusted on its last run (each trusted checkpoint and the entry it
        /// covers must still be as they were); chains it trusted nothing of
        /// are checked in full. Entries before are not read again.
        #[arg(long, conflicts_with = "no_state")]
        incremental: bool,
    },
    /// List entries by session, human, agent, tool, decision, kind and time.
    Query {
        #[command(flatten)]
        filter: zt_console::audit_query::Filter,
        /// As JSON Lines (the export format).
        #[arg(long)]
        json: bool,
        /// At most this many entries (the oldest first).
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Export entries as JSON Lines (one entry a line) for a SIEM.
    Export {
        #[command(flatten)]
        filter: zt_console::audit_query::Filter,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The TUI owns the terminal; everything else logs to stderr.
    let tui = cli.command.is_none()
        || matches!(
            cli.command,
            Some(Command::Demo {
                headless: false,
                ..
            })
        );
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("ZT_LOG").unwrap_or_else(|_| "warn".into());
    if tui {
        // Not on the screen the TUI draws: to its log file, if one opens.
        match zt_console::tui::open_log() {
            Some(file) => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init(),
            None => tracing_subscriber::fmt()
                .with_env_filter("off")
                .with_writer(std::io::sink)
                .init(),
        }
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zt-console: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zt-console: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = cli.conn.clone();
    zt_console::tui::configure(zt_console::tui::Settings {
        data_dir: conn.data_dir.clone(),
        no_notify: cli.no_notify,
    });
    let Some(command) = cli.command else {
        let client = conn.client()?;
        zt_console::tui::run(
            client,
            zt_console::tui::TuiOptions {
                readonly: cli.readonly,
                banner: None,
            },
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    };
    match command {
        Command::Demo {
            headless,
            deny,
            keep,
            scenario,
        } => {
            let ok = demo::run(DemoOptions {
                headless,
                approve: !deny,
                data_dir: conn.data_dir,
                keep,
                scenario,
            })
            .await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Up {
            database,
            approval_database,
            broker_database,
            billing_database,
            users,
            tls,
        } => {
            let own = |url: Option<String>| url.or_else(|| database.clone());
            let urls = [
                own(approval_database),
                own(broker_database),
                own(billing_database),
            ];
            up(conn.data_dir, urls, users, tls).await
        }
        Command::Agent {
            broker,
            scenario,
            json,
        } => {
            let token = std::env::var("BROKER_SESSION_TOKEN").context(
                "BROKER_SESSION_TOKEN is not set (issue one with `zt-approval token issue`)",
            )?;
            let text = match &scenario {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => DEMO_SCENARIO.to_owned(),
            };
            let scenario = Scenario::parse(&text)?;
            let outcomes = zt_console::agent::run(&broker, &token, &scenario).await?;
            if json {
                println!("{}", serde_json::to_string(&outcomes)?);
            } else {
                for o in &outcomes {
                    println!("{:>2} {:<15} {:<18} {}", o.step, o.tool, o.status, o.text);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pending { json } => {
            let list = conn.client()?.pending().await?;
            if json {
                let items: Vec<Value> = list.iter().map(request_json).collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if list.is_empty() {
                println!("no pending requests");
            } else {
                println!(
                    "{:<36} {:<14} {:>12} {:<8} {:<28} {:<20} EXPIRES IN",
                    "ID", "TOOL", "AMOUNT", "HUMAN", "AGENT", "APPROVALS"
                );
                for r in &list {
                    let left = (r.expires_at_ms - zt_proto::now_ms()).max(0) / 1000;
                    println!(
                        "{:<36} {:<14} {:>12} {:<8} {:<28} {:<20} {}m{:02}s",
                        r.id,
                        r.tool,
                        dollars(r.amount_cents),
                        r.human,
                        r.actors.first().map(String::as_str).unwrap_or("-"),
                        client::approvals(r),
                        left / 60,
                        left % 60
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { id, reason } => decide(&conn, &id, true, &reason).await,
        Command::Deny { id, reason } => decide(&conn, &id, false, &reason).await,
        Command::Cancel { id, reason } => match conn.client()?.cancel(&id, &reason).await {
            Ok(r) => {
                println!("{} {}", r.id, r.status);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("zt-console: {e:#}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    database,
                    json,
                    state,
                    no_state,
                    incremental,
                },
        } => {
            let source = match (database, conn.data_dir) {
                (Some(url), Some(dir)) => Source::Pinned(dir, url),
                (Some(url), None) => Source::Database(url),
                (None, Some(dir)) => Source::DataDir(dir),
                (None, None) => {
                    eprintln!("zt-console: say which log: --data-dir DIR or --database URL");
                    return Ok(ExitCode::from(2));
                }
            };
            let state = match (state, no_state) {
                (_, true) => audit::StateFile::Off,
                (Some(p), false) => audit::StateFile::At(p),
                (None, false) => audit::StateFile::Default,
            };
            let mut bar = audit::ProgressBar::new(!json);
            let scope = if incremental {
                zt_proto::store::Scope::AfterTrusted
            } else {
                zt_proto::store::Scope::Full
            };
            let outcome = audit::verify(&source, &state, scope, &mut |done, total| {
                bar.show(done, total)
            })
            .await;
            bar.clear();
            match outcome {
                Ok(audit::Outcome { report, .. }) => {
                    if json {
                        println!("{}", audit::report_json(&report));
                    } else {
                        println!("{}", audit::report_text(&report));
                    }
                    Ok(ExitCode::from(audit::Verdict::of(&report).exit_code()))
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            json!({ "intact": Value::Null, "error": format!("{e:#}") })
                        );
                    }
                    eprintln!("zt-console: could not verify: {e:#}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Audit {
            command:
                AuditCommand::Query {
                    filter,
                    json,
                    limit,
                },
        } => {
            let Some(dir) = conn.data_dir else {
                eprintln!("zt-console: say which log: --data-dir DIR");
                return Ok(ExitCode::from(2));
            };
            let db = Layout::new(&dir).audit_db();
            let mut shown = 0u64;
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(
                    out,
                    "{:<24}  {:<10} {:<13} {:<8} {:<18} {:<15} {:<10} {:<8} DETAIL",
                    "TIME", "ENTRY", "KIND", "HUMAN", "AGENT", "TOOL", "DECISION", "STATUS"
                )?;
            }
            let (matched, skipped) = zt_console::audit_query::select(&db, &filter, |line| {
                if shown < limit {
                    shown += 1;
                    if json {
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{}", zt_console::audit_query::table_line(&line))?;
                    }
                }
                Ok(())
            })
            .await?;
            if !json {
                eprintln!(
                    "{matched} matching entries{}",
                    if matched > shown {
                        format!(" ({shown} shown; raise --limit)")
                    } else {
                        String::new()
                    }
                );
            }
            if skipped > 0 {
                eprintln!("zt-console: {skipped} entries could not be read; run `audit verify`");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Export { filter, out },
        } => {
            let Some(dir) = conn.data_dir else {
                eprintln!("zt-console: say which log: --data-dir DIR");
                return Ok(ExitCode::from(2));
            };
            let db = Layout::new(&dir).audit_db();
            let (matched, skipped) = match &out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = zt_console::audit_query::export(&db, &filter, &mut w).await?;
                    w.flush()?;
                    n
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    let n = zt_console::audit_query::export(&db, &filter, &mut w).await?;
                    w.flush()?;
                    n
                }
            };
            eprintln!("exported {matched} entries");
            if skipped > 0 {
                eprintln!("zt-console: {skipped} entries could not be read; run `audit verify`");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn decide(conn: &Conn, id: &str, approve: bool, reason: &str) -> anyhow::Result<ExitCode> {
    match conn.client()?.decide(id, approve, reason).await {
        Ok(r) if r.status == "pending" => {
            println!("{} pending, approvals {}", r.id, client::approvals(&r));
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            println!("{} {}", r.id, r.status);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("zt-console: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `zt-console up`, with the approval service's, the broker's and the
/// billing API's database URLs (all, or none for SQLite).
async fn up(
    data_dir: Option<PathBuf>,
    urls: [Option<String>; 3],
    users: bool,
    tls: bool,
) -> anyhow::Result<ExitCode> {
    for url in urls.iter().flatten() {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            anyhow::bail!(
                "--database: give a postgres:// URL (SQLite databases live in the data directory; pass --data-dir for them)"
            );
        }
    }
    let [approval, broker, billing] = urls.map(|u| u.map(zt_proto::db::DbUrl::new));
    if !(approval.is_some() == broker.is_some() && broker.is_some() == billing.is_some()) {
        anyhow::bail!(
            "give --database, or a database for each of the approval service, the broker and the billing API (the broker reads the billing API's records)"
        );
    }
    let databases = stack::Databases {
        approval,
        broker,
        billing,
    };
    let users = if users {
        Some(zt_console::users::SystemUsers::lookup()?)
    } else {
        None
    };
    let dir = data_dir.unwrap_or_else(|| stack::temp_data_dir("zt-stack-"));
    let mut stack = Stack::start_with(&dir, &databases, users.as_ref(), tls).await?;
    println!("broker_url={}", stack.broker_url);
    println!("approval_url={}", stack.approval_url);
    println!("data_dir={}", stack.data_dir.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let died = loop {
        tokio::select! {
            () = stack::shutdown_signal() => break None,
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if let Err(why) = stack.check_alive() {
                    break Some(why);
                }
            }
        }
    };
    stack.stop().await;
    match died {
        None => Ok(ExitCode::SUCCESS),
        Some(why) => {
            eprintln!("zt-console: {why}; stack stopped");
            Ok(ExitCode::from(1))
        }
    }
}

fn request_json(r: &ApprovalRequest) -> Value {
    json!({
        "id": r.id,
        "status": r.status,
        "tool": r.tool,
        "arguments": serde_json::from_str::<Value>(&r.args_json).unwrap_or(Value::Null),
        "args_hash": r.args_hash,
        "session_id": r.session_id,
        "human": r.human,
        "actors": r.actors,
        "rules": r.rules,
        "reason": r.reason,
        "risk": r.risk,
        "amount_cents": r.amount_cents,
        "justification": r.justification,
        "created_at_ms": r.created_at_ms,
        "expires_at_ms": r.expires_at_ms,
        "approvals_required": r.approvals_required.max(1),
        "approvers": r.approvers,
        "approvals": client::approvals(r),
        "approve_reason_required": r.approve_reason_required,
        "votes": r.votes.iter().map(|v| json!({"operator": v.operator, "decision": v.decision, "reason": v.reason, "at_ms": v.at_ms})).collect::<Vec<_>>(),
    })
}
