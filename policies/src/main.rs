//! `zt-policy`: the policy gate's command line — check a policy directory, run a
//! table of synthetic requests against it, and explain a single decision.
//!
//! Subcommands live in the [`Command`] enum; adding one is a new variant plus a
//! match arm in [`run`].

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

fn policy_dir(cli_dir: Option<PathBuf>) -> PathBuf {
    cli_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { path } => Ok(check(&policy_dir(path.or(cli.dir)))),
        Command::Test { file } => test(&policy_dir(cli.dir), &file),
        Command::Explain(args) => explain(&policy_dir(cli.dir), args),
    }
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
            println!(
                "OK {}: {} tools, {} rules, {} humans",
                dir.display(),
                bundle.tools().count(),
                bundle.rule_ids().count(),
                bundle.humans().count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
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
    let req = DecisionRequest {
        tool: a.tool,
        args,
        agent: a.agent,
        human: a.human,
        resource,
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
        .resource_arg(tool)
        .and_then(|arg| args.get(arg))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Resource { id, attrs })
}
