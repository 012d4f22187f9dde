//! `zt-broker`: the MCP broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use zt_proto::stack::Layout;

/// The MCP broker: exposes the backend's narrow tools to agents over MCP,
/// holds the backend credentials, and gates, audits and executes every call.
#[derive(Debug, Parser)]
#[command(name = "zt-broker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the broker's keys, private config and example backend in DIR
    /// (the stack must have been initialized by `zt-approval init`).
    Init {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Set up a PostgreSQL database for the broker, as its administrator:
    /// create and migrate its schema and the audit tables, and give ROLE
    /// (the one every broker replica connects as) its own rows and its own
    /// audit chains only. Run before starting the broker as ROLE.
    Migrate {
        /// The database, with a role that may create schemas
        /// (postgres://...).
        #[arg(long, env = "ZT_ADMIN_DATABASE_URL", value_name = "URL")]
        database: String,
        /// The role the broker connects as (it must exist; not a superuser;
        /// not the administrator).
        #[arg(long)]
        role: Option<String>,
    },
    /// Review an MCP upstream's tools and admit one into the registry: its
    /// strict schema, a Cedar action, rules that deny it until the author narrows them,
    /// and the fingerprint of what was reviewed (the broker quarantines the
    /// tool if the upstream later serves anything else). Without --tool:
    /// list the upstream's tools and whether each is admitted, changed or
    /// new. Re-admitting shows what changed and moves the fingerprint.
    Admit {
        /// The stack's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The upstream, as DIR/broker/upstreams.toml names it.
        #[arg(long)]
        upstream: String,
        /// The upstream's tool to admit.
        #[arg(long)]
        tool: Option<String>,
        /// The registry's name for it (default: the upstream's).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
    },
    /// Serve MCP over stdin/stdout for one local agent, whose session token
    /// is read from BROKER_SESSION_TOKEN (re-verified on every request).
    Stdio {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The approval service (default: the one running for DIR).
        #[arg(long)]
        approval: Option<String>,
        /// The CA an `https://` approval service's certificate must chain to
        /// (default: the stack's DIR/tls-ca.pem).
        #[arg(long, value_name = "FILE")]
        approval_ca: Option<PathBuf>,
        /// The billing API (default: broker.toml's, else the one running for DIR).
        #[arg(long)]
        billing: Option<String>,
    },
    /// Serve MCP over Streamable HTTP at /mcp.
    Serve {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The approval service (default: the one running for DIR).
        #[arg(long)]
        approval: Option<String>,
        /// The CA an `https://` approval service's certificate must chain to
        /// (default: the stack's DIR/tls-ca.pem).
        #[arg(long, value_name = "FILE")]
        approval_ca: Option<PathBuf>,
        /// The billing API (default: broker.toml's, else the one running for DIR).
        #[arg(long)]
        billing: Option<String>,
        /// Run as replica NAME beside other brokers of the same data
        /// directory (its own audit chain `broker-NAME`; grants are still
        /// redeemed at most once across replicas).
        #[arg(long, value_name = "NAME")]
        replica: Option<String>,
        /// Keep the broker's state and audit chain in this PostgreSQL
        /// database (postgres://...), shared with other replicas, instead
        /// of SQLite files in DIR.
        #[arg(long, env = "ZT_DATABASE_URL", value_name = "URL")]
        database: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZT_LOG")
                .unwrap_or_else(|_| "zt_broker=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { data_dir } => zt_broker::setup::init(&Layout::new(data_dir)),
        Command::Admit {
            data_dir,
            upstream,
            tool,
            name,
        } => {
            let req = zt_broker::admit::Request {
                upstream,
                tool,
                name,
            };
            zt_broker::admit::run(&Layout::new(data_dir), &req).await
        }
        Command::Migrate { database, role } => {
            async {
                let location = zt_proto::db::Location::for_migrate(&database)?;
                zt_broker::state::migrate(&location, role.as_deref()).await?;
                eprintln!("zt-broker: {} is set up", location.display());
                Ok(())
            }
            .await
        }
        Command::Stdio {
            data_dir,
            approval,
            approval_ca,
            billing,
        } => match std::env::var("BROKER_SESSION_TOKEN") {
            Ok(token) => {
                let opts = zt_broker::Options {
                    data_dir,
                    listen: ([127, 0, 0, 1], 0).into(),
                    approval_url: approval,
                    approval_ca,
                    billing_url: billing,
                    replica: None,
                    database: None,
                };
                zt_broker::server::serve_stdio(opts, token.trim().to_owned()).await
            }
            Err(_) => Err(anyhow::anyhow!(
                "BROKER_SESSION_TOKEN is not set (issue one with `zt-approval token issue`)"
            )),
        },
        Command::Serve {
            data_dir,
            listen,
            approval,
            approval_ca,
            billing,
            replica,
            database,
        } => match zt_broker::setup::init(&Layout::new(&data_dir)) {
            Ok(()) => {
                let opts = zt_broker::Options {
                    data_dir,
                    listen,
                    approval_url: approval,
                    approval_ca,
                    billing_url: billing,
                    replica,
                    database: database.map(zt_proto::db::DbUrl::new),
                };
                zt_broker::serve(opts, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zt-broker: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
