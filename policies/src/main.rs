//! `zt-policy`: the policy gate's command line — check a policy directory, run a
//! table of synthetic requests against it, and explain a single decision.
//!
//! Subcommands live in the [`Command`] enum; adding one is a new variant plus a
//! match arm in [`run`].

mod replay_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use zt_policies::{DecisionRequest, Effect, PolicyBundle, Resource, cases};

/// The policy directory shipped with this crate (used when no other is given).
const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

#[derive(Debug, Parser)]
#[command(
    name = "zt-policy",
    version,
    about = "Check, test and explain the zero-trust policy gate (tools.toml, humans.toml, policy.cedar, schema.cedarschema)"
)]
struct Cli {
    /// Policy directory [default: the crate's shipped data/ directory]
    #[arg(long, global = true, env = "ZT_POLICY_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the startup check; print a summary and exit 0, or print each problem and exit 1
    Check {
        /// Policy directory (overrides --dir)
        #[arg(value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Run a table of synthetic requests (TOML, or JSON for *.json); exit 1 on any failure
    Test {
        /// The case table, e.g. policies/tests/cases.toml
        file: PathBuf,
    },
    /// Show the decision for one request, with the matched rules and the reason
    Explain(ExplainArgs),
    /// Decide the recorded decisions of an audit log again under the policy
    /// in --policies (read-only) and print what would change; exit 0 nothing
    /// would, 1 something would, 2 could not check
    Replay(ReplayArgs),
    /// Count, per `@shadow` rule, the recorded decisions where it would have
    /// decided otherwise (read-only); exit 0 none, 1 some, 2 could not check
    Shadow(ShadowArgs),
    /// Prove the invariants of invariants.toml for every possible request
    /// with an SMT solver (cvc5); exit 0 all hold, 1 some does not (with a
    /// counterexample), 2 could not check
    Prove(ProveArgs),
    /// Claude Code / Agent SDK PreToolUse hook: hook JSON on stdin, decision on
    /// stdout. Verifies BROKER_SESSION_TOKEN against the stack in ZT_DATA_DIR.
    /// Fails closed: any error blocks the call (exit 2, reason on stderr).
    Hook {
        /// The stack's data directory (pinned token key, stack identity, policies)
        #[arg(long, env = "ZT_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Which audit log, and which part of it.
#[derive(Debug, Args)]
struct LogArgs {
    /// The stack's data directory (its audit log, unless --database)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The audit log on PostgreSQL (postgres://...)
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// From this time: RFC 3339, ms since the epoch, or an age (15m, 2h, 7d)
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Up to (excluding) this time, in the same forms
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Debug, Args)]
struct ShadowArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Print the counts as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The candidate policy directory
    #[arg(long, value_name = "DIR")]
    policies: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// Only this tool
    #[arg(long)]
    tool: Option<String>,
    /// Only calls for this human
    #[arg(long)]
    human: Option<String>,
    /// Only this agent session
    #[arg(long)]
    session: Option<String>,
    /// Only decisions that were this effect (allow, constrain, deny, escalate)
    #[arg(long)]
    was: Option<Effect>,
    /// How many changed decisions to list (the counts cover all)
    #[arg(long, default_value_t = 50)]
    show: usize,
    /// Print the report as JSON (every change)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProveArgs {
    /// Policy directory (overrides --dir)
    #[arg(value_name = "DIR")]
    path: Option<PathBuf>,
    /// The invariants to prove [default: DIR/invariants.toml]; give the
    /// enforced directory's file to prove a candidate against it
    #[arg(long, value_name = "FILE")]
    invariants: Option<PathBuf>,
    /// The cvc5 executable (or anything that speaks SMT-LIB 2 like it on
    /// stdin) [default: $CVC5, else cvc5 on PATH]
    #[arg(long, value_name = "PATH")]
    solver: Option<PathBuf>,
    /// Seconds the solver may spend on one query
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print the findings as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Tool name, e.g. issue_refund
    #[arg(long)]
    tool: String,
    /// Human the agent acts for, e.g. alice
    #[arg(long)]
    human: String,
    /// Agent id
    #[arg(long, default_value = "cli-agent")]
    agent: String,
    /// Tool arguments as a JSON object
    #[arg(long, default_value = "{}")]
    args: String,
    /// Resource as JSON: {"id": "...", "attrs": {...}}, or just the attributes
    /// (the id is then taken from the arguments)
    #[arg(long)]
    resource: Option<String>,
    /// The session's taint and budgets as JSON, e.g.
    /// {"tainted": true, "budgets": {"refunded_today": 12000}} (default:
    /// untainted, nothing consumed)
    #[arg(long)]
    context: Option<String>,
    /// Print the decision as JSON
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zt-policy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The policy directory: the one given, else the shipped data directory of
/// this source tree, else the shipped data written to a temporary directory
/// (an installed binary carries its data inside).
fn policy_dir(cli_dir: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = cli_dir {
        return dir;
    }
    let source = PathBuf::from(DEFAULT_DIR);
    if source.join(zt_policies::files::TOOLS).exists() {
        return source;
    }
    let dir = std::env::temp_dir().join(format!("zt-policy-shipped-{}", env!("CARGO_PKG_VERSION")));
    match zt_policies::shipped::install(&dir) {
        Ok(()) => dir,
        Err(_) => source,
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { path } => Ok(check(&policy_dir(path.or(cli.dir)))),
        Command::Test { file } => test(&policy_dir(cli.dir), &file),
        Command::Explain(args) => explain(&policy_dir(cli.dir), args),
        Command::Prove(args) => Ok(prove(policy_dir(args.path.clone().or(cli.dir)), &args)),
        Command::Hook { data_dir } => Ok(hook(cli.dir, data_dir)),
        Command::Replay(args) => Ok(replay_cmd::run(args)),
        Command::Shadow(args) => Ok(replay_cmd::shadow(args)),
    }
}

/// Largest hook input read from stdin.
const MAX_HOOK_INPUT: u64 = 1024 * 1024;

/// Runs the hook; every failure, including a panic, exits 2 so the client
/// blocks the call (Claude Code goes ahead on any other non-zero code).
fn hook(policy_override: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    std::panic::set_hook(Box::new(|_| {
        eprintln!("blocked: the policy hook failed internally");
        std::process::exit(2);
    }));
    match hook_decision(policy_override, data_dir) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blocked by the policy hook: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn hook_decision(
    policy_override: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Read;
    use zt_policies::hook::{self, HookInput, Verdict};
    use zt_proto::stack::Layout;
    use zt_proto::token::{self, Expect, KeySet, SessionClaims, TokenType};

    let mut raw = String::new();
    std::io::stdin()
        .take(MAX_HOOK_INPUT)
        .read_to_string(&mut raw)
        .context("reading the hook input")?;
    let input: HookInput =
        serde_json::from_str(&raw).context("the hook input is not valid JSON")?;

    let data_dir = data_dir.context("ZT_DATA_DIR is not set, so the session cannot be verified")?;
    let layout = Layout::new(&data_dir);
    let stack = layout.stack()?;
    // Only keys the stack's trust anchor names, or that one it names
    // introduced by rotation: a file dropped into public/ mints nothing.
    let roots = zt_proto::pinned::TrustRoots::read(&layout.trust_file())?.get("approval-token");
    anyhow::ensure!(
        !roots.is_empty(),
        "{} names no token key, so the session cannot be verified (run `zt-approval init`)",
        layout.trust_file().display()
    );
    let keys = zt_proto::pinned::read_trusted(&layout.public_dir(), "approval-token", &roots)?;
    let jwt = std::env::var("BROKER_SESSION_TOKEN")
        .context("BROKER_SESSION_TOKEN is not set, so the session cannot be verified")?;
    let claims: SessionClaims = token::verify(
        jwt.trim(),
        &KeySet::new(keys),
        TokenType::Session,
        &Expect {
            issuer: &stack.issuer,
            audience: &stack.broker_audience,
        },
    )
    .map_err(|e| anyhow::anyhow!("session token refused: {e}"))?;

    let tool = hook::tool_of(&input.tool_name)?;
    if !claims.may_call(tool) {
        let verdict = Verdict::Deny {
            reason: format!("This session is not allowed to call `{tool}`."),
        };
        return Ok(hook::output(&verdict));
    }
    let bundle = load(&policy_override.unwrap_or_else(|| layout.policies()))?;
    let verdict = hook::evaluate(&bundle, &input, &claims.sub, claims.agent())?;
    Ok(hook::output(&verdict))
}

fn load(dir: &Path) -> anyhow::Result<PolicyBundle> {
    PolicyBundle::load(dir)
        .with_context(|| format!("cannot load policy directory {}", dir.display()))
}

fn check(dir: &Path) -> ExitCode {
    let problems = PolicyBundle::check_dir(dir);
    if !problems.is_empty() {
        for p in &problems {
            println!("{p}");
        }
        println!(
            "{} problem{} in {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    match PolicyBundle::load(dir) {
        Ok(bundle) => {
            // The invariants parse and type-check (proving them needs a
            // solver: `zt-policy prove`).
            let file = dir.join(zt_policies::prove::FILE);
            let mut invariants = 0;
            if file.exists() {
                let problems = match zt_policies::prove::read(&file) {
                    Ok(list) => {
                        invariants = list.len();
                        zt_policies::prove::check(&bundle, &list)
                    }
                    Err(zt_policies::prove::ProveError::Invalid(p)) => p,
                    Err(e) => {
                        println!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                if !problems.is_empty() {
                    for p in &problems {
                        println!("{p}");
                    }
                    return ExitCode::FAILURE;
                }
            }
            println!(
                "OK {}: {} tools, {} rules, {} humans, {} invariants, policy {}",
                dir.display(),
                bundle.tools().count(),
                bundle.rule_ids().count(),
                bundle.humans().count(),
                invariants,
                bundle.hash()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn prove(dir: PathBuf, a: &ProveArgs) -> ExitCode {
    match prove_findings(&dir, a) {
        Ok(findings) => {
            if a.json {
                match serde_json::to_string_pretty(&findings) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("zt-policy prove: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", zt_policies::prove::render(&findings));
                let held = findings.iter().filter(|f| f.proven()).count();
                println!(
                    "{held} of {} invariant checks proven for {}",
                    findings.len(),
                    dir.display()
                );
            }
            if findings.iter().all(|f| f.proven()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("zt-policy prove: could not check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn prove_findings(dir: &Path, a: &ProveArgs) -> anyhow::Result<Vec<zt_policies::prove::Finding>> {
    use cedar_policy_symcc::{CedarSymCompiler, solver::LocalSolver};
    let bundle = load(dir)?;
    let file = a
        .invariants
        .clone()
        .unwrap_or_else(|| dir.join(zt_policies::prove::FILE));
    let invariants = zt_policies::prove::read(&file)?;
    anyhow::ensure!(
        !invariants.is_empty(),
        "{} declares no invariant",
        file.display()
    );
    let solver = a
        .solver
        .clone()
        .or_else(|| std::env::var_os("CVC5").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cvc5"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let local = LocalSolver::from_command(
            tokio::process::Command::new(&solver)
                .args(["--lang", "smt"])
                .arg(format!("--tlimit={}", a.timeout.saturating_mul(1000)))
                .kill_on_drop(true),
        )
        .with_context(|| {
            format!(
                "cannot start the SMT solver `{}` (install cvc5, or point --solver or CVC5 at it; see the README)",
                solver.display()
            )
        })?;
        let mut compiler = CedarSymCompiler::new(local).context("starting the symbolic compiler")?;
        let findings = zt_policies::prove::prove(&bundle, &invariants, &mut compiler).await?;
        Ok(findings)
    })
}

fn test(dir: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let bundle = load(dir)?;
    let table = cases::load(file).map_err(anyhow::Error::msg)?;
    let report = cases::run(&bundle, &table);
    for f in &report.failures {
        println!("FAIL {}: {}", f.name, f.message);
    }
    println!("{}", report.summary());
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn explain(dir: &Path, a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let bundle = load(dir)?;
    let args: serde_json::Value =
        serde_json::from_str(&a.args).context("--args is not valid JSON")?;
    let resource = match &a.resource {
        None => None,
        Some(text) => {
            let v: serde_json::Value =
                serde_json::from_str(text).context("--resource is not valid JSON")?;
            Some(parse_resource(&bundle, &a.tool, &args, v)?)
        }
    };
    let context = match &a.context {
        None => bundle.assumed_context(&a.tool),
        Some(text) => serde_json::from_str(text).context("--context is not valid JSON")?,
    };
    let req = DecisionRequest {
        tool: a.tool,
        args,
        agent: a.agent,
        human: a.human,
        resource,
        context,
    };
    let d = bundle.decide(&req);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("decision: {}", d.effect);
        println!(
            "rules: {}",
            if d.rules.is_empty() {
                "(none)".to_string()
            } else {
                d.rules.join(", ")
            }
        );
        println!("reason: {}", d.reason);
        if !d.model_message.is_empty() {
            println!("model message: {}", d.model_message);
        }
        if d.effect == Effect::Constrain {
            println!("rewritten args: {}", d.args);
        }
        if let Some(s) = &d.basis.shadow {
            println!("shadow: {} (by {})", s.effect, s.rules.join(", "));
        }
        println!("policy: {}", d.basis.policy);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_resource(
    bundle: &PolicyBundle,
    tool: &str,
    args: &serde_json::Value,
    v: serde_json::Value,
) -> anyhow::Result<Resource> {
    if v.get("attrs").is_some() {
        return serde_json::from_value(v)
            .context("--resource must be {\"id\": ..., \"attrs\": {...}}");
    }
    let serde_json::Value::Object(attrs) = v else {
        bail!("--resource must be a JSON object");
    };
    let id = bundle
        .resource_id(tool, args)
        .unwrap_or_default()
        .to_string();
    Ok(Resource { id, attrs })
}
