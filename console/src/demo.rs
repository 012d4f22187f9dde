//! `zt-console demo`: the whole stack on one machine with a scripted agent.
//!
//! Starts the approval service and the broker as their own processes,
//! mints an operator token for a support lead and a session token for the
//! agent, and runs the agent as a separate process whose environment holds
//! only that session token. With the TUI, the operator approves in the
//! console; `--headless`, a scripted operator decides every escalation and
//! the run ends with a summary drawn from the audit log itself.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::agent::{DEMO_SCENARIO, Outcome, Scenario};
use crate::audit::{self, Source};
use crate::client::OperatorClient;
use crate::stack::{self, Stack};

/// The support lead who approves in the demo.
pub const DEMO_OPERATOR: &str = "carol";
/// Her approval limit: $5,000.00.
pub const DEMO_OPERATOR_LIMIT: i64 = 500_000;

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// No TUI: decide escalations automatically and print a summary.
    pub headless: bool,
    /// Headless only: approve escalations (else deny them).
    pub approve: bool,
    /// Where to keep the stack (default: a fresh temporary directory, removed after).
    pub data_dir: Option<PathBuf>,
    /// Keep a temporary data directory after the run.
    pub keep: bool,
    /// A scenario file (default: the built-in demo).
    pub scenario: Option<PathBuf>,
}

/// Runs the demo. Returns whether every expectation held.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let scenario_text = match &opts.scenario {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEMO_SCENARIO.to_owned(),
    };
    let scenario = Scenario::parse(&scenario_text)?;
    let temporary = opts.data_dir.is_none();
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| stack::temp_data_dir("zt-demo-"));
    let stack = Stack::start(&dir).await?;
    let driven = drive(&stack, &scenario, &scenario_text, &opts).await;
    let data_dir = stack.data_dir.clone();
    // The writers sign their chains' heads as they stop, so the log is
    // verified after: a clean run reads clean, with no unsigned tail.
    stack.stop().await;
    let result = match driven {
        Ok(Some(outcomes)) => summarize(&data_dir, &scenario, &outcomes, opts.approve).await,
        Ok(None) => Ok(true),
        Err(e) => Err(e),
    };
    if temporary && !opts.keep {
        let _ = std::fs::remove_dir_all(&data_dir);
    } else {
        println!("data_dir={}", data_dir.display());
    }
    result
}

/// Runs the scenario on `stack`: headless, the agent's outcomes (summarized
/// once the stack has stopped); with the console, `None` once it closes.
async fn drive(
    stack: &Stack,
    scenario: &Scenario,
    scenario_text: &str,
    opts: &DemoOptions,
) -> anyhow::Result<Option<Vec<Outcome>>> {
    let dir = stack.data_dir.to_string_lossy().into_owned();
    let limit = DEMO_OPERATOR_LIMIT.to_string();
    let operator_token = stack::run_to_end(
        "zt-approval",
        &[
            "token",
            "operator",
            "--data-dir",
            &dir,
            "--name",
            DEMO_OPERATOR,
            "--role",
            "approver",
            "--limit",
            &limit,
        ],
    )
    .await?;
    let session_token = stack::run_to_end(
        "zt-approval",
        &[
            "token",
            "issue",
            "--data-dir",
            &dir,
            "--agent",
            &scenario.agent,
            "--for",
            &scenario.human,
            "--ttl",
            "15m",
        ],
    )
    .await?;
    let client = OperatorClient::new(
        &stack.approval_url,
        &operator_token,
        Some(&zt_proto::stack::Layout::new(&stack.data_dir).tls_ca_file()),
    )?;

    let scenario_path = stack.data_dir.join("run").join("scenario.toml");
    std::fs::write(&scenario_path, scenario_text)?;
    let agent_log = stack.data_dir.join("run").join("agent.log");
    let agent = agent_command(&stack.broker_url, &scenario_path, &session_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&agent_log)?))
        .kill_on_drop(true)
        .spawn()
        .context("starting the scripted agent")?;

    if opts.headless {
        println!(
            "demo: {} scripted calls by {} acting for {}; operator {} {} escalations",
            scenario.steps.len(),
            scenario.agent,
            scenario.human,
            DEMO_OPERATOR,
            if opts.approve { "approves" } else { "denies" }
        );
        let decider = tokio::spawn(auto_decide(client.clone(), opts.approve));
        let out = tokio::time::timeout(Duration::from_secs(300), agent.wait_with_output())
            .await
            .context("the scripted agent did not finish within 5 minutes")??;
        decider.abort();
        if !out.status.success() {
            bail!(
                "the scripted agent failed: {}",
                std::fs::read_to_string(&agent_log)
                    .unwrap_or_default()
                    .trim()
            );
        }
        let outcomes: Vec<Outcome> =
            serde_json::from_slice(&out.stdout).context("reading the scripted agent's results")?;
        Ok(Some(outcomes))
    } else {
        let banner = format!(
            "demo: {} acting for {} — approve its escalations here",
            scenario.agent, scenario.human
        );
        let tui = crate::tui::run(
            client,
            crate::tui::TuiOptions {
                readonly: false,
                banner: Some(banner),
            },
        )
        .await;
        drop(agent);
        tui?;
        Ok(None)
    }
}

/// The scripted agent as its own process. Its environment is cleared and
/// holds the session token and nothing else of the stack's: no backend
/// location, no key, no credential.
pub fn agent_command(
    broker_url: &str,
    scenario: &std::path::Path,
    session_token: &str,
) -> tokio::process::Command {
    let mut cmd = stack::command("zt-console");
    cmd.args(["agent", "--broker", broker_url, "--scenario"])
        .arg(scenario)
        .arg("--json")
        .env("BROKER_SESSION_TOKEN", session_token);
    cmd
}

/// Decides every pending escalation as the demo's operator.
async fn auto_decide(client: OperatorClient, approve: bool) {
    loop {
        match client.pending().await {
            Ok(list) => {
                for req in list {
                    let reason = if approve {
                        "approved by the headless demo's operator"
                    } else {
                        "denied by the headless demo's operator"
                    };
                    match client.decide(&req.id, approve, reason).await {
                        Ok(r) => tracing::info!(id = %r.id, status = %r.status, "decided"),
                        Err(e) => tracing::warn!(id = %req.id, error = %e, "could not decide"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing pending requests failed"),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn summarize(
    data_dir: &std::path::Path,
    scenario: &Scenario,
    outcomes: &[Outcome],
    approve: bool,
) -> anyhow::Result<bool> {
    let mut held = 0;
    for (o, step) in outcomes.iter().zip(&scenario.steps) {
        let ok = o.held(approve);
        held += usize::from(ok);
        println!(
            "  {} step {:>2} {:<15} {:<18} {}",
            if ok { "✓" } else { "✗" },
            o.step,
            o.tool,
            o.status,
            step.say
        );
        if !ok {
            println!(
                "      expected {}, the model was told: {}",
                o.expect, o.text
            );
        }
    }
    let t = audit::tally(data_dir).await?;
    println!("calls allowed: {}", t.allowed);
    println!("calls constrained: {}", t.constrained);
    println!("calls denied: {}", t.denied);
    println!("calls escalated: {}", t.escalated);
    println!("approved: {}", t.approved);
    println!("denied by operators: {}", t.operator_denied);
    println!("executed: {}", t.executed);
    let report = audit::verify(
        &Source::DataDir(data_dir.to_path_buf()),
        &audit::StateFile::Off,
        zt_proto::store::Scope::Full,
        &mut |_, _| {},
    )
    .await?
    .report;
    println!("{}", audit::report_text(&report));
    let all = held == scenario.steps.len() && outcomes.len() == scenario.steps.len();
    println!("expectations: {held} of {} held", scenario.steps.len());
    Ok(all && report.intact())
}
