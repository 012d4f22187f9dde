//! `zt-approval`: run the approval service, or issue tokens from its keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zt_approval::setup::{self, SessionRequest};
use zt_proto::stack::Layout;
use zt_proto::token::Role;

/// Approval service: identity issuance, human approval of escalated agent
/// actions, and signed one-time grants.
#[derive(Debug, Parser)]
#[command(name = "zt-approval", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the stack identity, this service's keys and the policy data in DIR.
    Init {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run the gRPC service (initializing DIR first if needed).
    Serve {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// How long an escalated request waits for a decision, e.g. 90s or
        /// 15m [default: `request_ttl_secs` of DIR/policies/approvals.toml,
        /// 15m when it has none].
        #[arg(long)]
        request_ttl: Option<String>,
        /// Keep the approval state and the audit chain in this PostgreSQL
        /// database (postgres://...), shared with other replicas, instead
        /// of SQLite files in DIR.
        #[arg(long, env = "ZT_DATABASE_URL", value_name = "URL")]
        database: Option<String>,
        /// Run as replica NAME beside other approval services of the same
        /// stack (its own audit chain `approval-NAME`; with --database, all
        /// replicas share requests, votes and grants).
        #[arg(long, value_name = "NAME")]
        replica: Option<String>,
        /// Serve gRPC over TLS with a certificate from the stack's own CA
        /// (DIR/tls-ca.pem, which the broker and the console trust). Needed
        /// to listen on anything but loopback.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
        tls: bool,
        /// Another name (DNS or IP) the stack-CA certificate is for, besides
        /// localhost and the loopback addresses; repeatable.
        #[arg(long, value_name = "NAME", requires = "tls")]
        tls_name: Vec<String>,
        /// Serve gRPC over TLS with this PEM certificate chain instead.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Set up a PostgreSQL database for the approval service, as its
    /// administrator: create and migrate its schema and the audit tables,
    /// and give ROLE (the one the service connects as) its own rows and its
    /// own audit chains only. Run before starting the service as ROLE.
    Migrate {
        /// The database, with a role that may create schemas
        /// (postgres://...).
        #[arg(long, env = "ZT_ADMIN_DATABASE_URL", value_name = "URL")]
        database: String,
        /// The role the approval service connects as (it must exist; not a
        /// superuser; not the administrator).
        #[arg(long)]
        role: Option<String>,
        /// A role that may read the audit tables (for `zt-console audit
        /// verify --database`); repeatable.
        #[arg(long, value_name = "ROLE")]
        auditor: Vec<String>,
    },
    /// Issue tokens signed by this stack's identity key.
    Token {
        #[command(subcommand)]
        kind: TokenCommand,
    },
    /// Manage agent sessions.
    Session {
        #[command(subcommand)]
        kind: SessionCommand,
    },
    /// Rotate and retire the service's signing keys.
    Keys {
        #[command(subcommand)]
        kind: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new key current; the old one stays trusted until retired.
    Rotate {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Which key.
        #[arg(long, value_enum, default_value = "token")]
        key: setup::KeyName,
    },
    /// Print the token-verifying keys (current and retired) as a JWKS
    /// document, for verifiers that fetch keys over HTTP.
    Jwks {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Stop trusting a retired key (once what it signed has expired).
    Retire {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Which key.
        #[arg(long, value_enum, default_value = "token")]
        key: setup::KeyName,
        /// The retired key's id (printed by `rotate`).
        #[arg(long)]
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Revoke a session: its tokens are refused by the broker and cannot be refreshed.
    Revoke {
        /// The stack's data directory (the service must be running).
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The session id (`sid` claim).
        #[arg(long)]
        session: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A session token for an agent run acting for a human (printed on stdout).
    Issue {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The agent's id (the token's current actor).
        #[arg(long)]
        agent: String,
        /// The human the agent acts for (must be in the stack's directory).
        #[arg(long = "for", value_name = "HUMAN")]
        human: String,
        /// Lifetime, e.g. 300, 90s, 5m (at most 15m).
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// Comma-separated tools the session may call (default: all the policy allows).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Refresh: keep this session id.
        #[arg(long)]
        session: Option<String>,
    },
    /// A launcher credential: lets a program that starts agent runs ask the
    /// service for session tokens over gRPC (printed on stdout).
    Launcher {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The launcher's name (becomes `launcher:NAME` in the actor chain).
        #[arg(long)]
        name: String,
        /// Comma-separated humans it may start runs for (each in the stack's
        /// directory).
        #[arg(
            long = "for",
            value_name = "HUMAN,...",
            value_delimiter = ',',
            required = true
        )]
        humans: Vec<String>,
        /// Comma-separated agent ids it may name: exact, or a prefix ending
        /// in `*` (e.g. `agent:support-*`).
        #[arg(long, value_name = "AGENT,...", value_delimiter = ',', required = true)]
        agents: Vec<String>,
        /// Comma-separated tools its sessions may be scoped to (default: all
        /// the policy allows).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Longest session it may issue, e.g. 5m (at most 15m).
        #[arg(long, default_value = "15m")]
        session_ttl: String,
        /// Lifetime of the credential, e.g. 8h, 2d (at most 7d). Revocable
        /// by its id (printed on stderr) with `zt-approval token revoke`.
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// Revoke a launcher or operator credential by its token id, before it
    /// expires (the service must be running).
    Revoke {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The credential's token id (`jti`, printed on stderr when issued).
        #[arg(long)]
        jti: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// An operator token for the console (printed on stdout).
    Operator {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// The operator's name.
        #[arg(long)]
        name: String,
        /// approver | watcher | auditor | admin
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Approval limit in cents (approvers).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Lifetime, e.g. 8h (at most 12h).
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
}

/// A client of the running approval service of `layout` with a one-minute
/// admin token of this stack: revocations go through the service, so they
/// are audited and reach the brokers.
async fn as_admin(
    layout: &Layout,
) -> anyhow::Result<(
    zt_proto::pb::approval_client::ApprovalClient<tonic::transport::Channel>,
    String,
)> {
    let (stack, keys) = setup::load(layout)?;
    let url = layout
        .endpoint("approval")
        .context("no running approval service recorded for this data directory")?;
    let admin = setup::issue_operator(&stack, &keys, "zt-approval-cli", Role::Admin, 0, 60)?;
    let client = zt_proto::pb::approval_client::ApprovalClient::connect(url)
        .await
        .context("connecting to the approval service")?;
    Ok((client, admin))
}

/// The `jti` claim of a JWT this program just signed.
fn token_id(jwt: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// `--request-ttl`: a positive duration.
fn parse_request_ttl(text: &str) -> anyhow::Result<Duration> {
    let secs = setup::parse_duration_secs(text)?;
    match u64::try_from(secs) {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => anyhow::bail!("--request-ttl must be positive"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZT_LOG")
                .unwrap_or_else(|_| "zt_approval=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zt-approval: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate {
            database,
            role,
            auditor,
        } => {
            let location = zt_proto::db::Location::for_migrate(&database)?;
            zt_approval::db::migrate(&location, role.as_deref(), &auditor).await?;
            eprintln!("zt-approval: {} is set up", location.display());
        }
        Command::Init { data_dir } => {
            let layout = Layout::new(&data_dir);
            let (stack, _) = setup::init(&layout)?;
            println!("stack={} data_dir={}", stack.stack_id, data_dir.display());
        }
        Command::Serve {
            data_dir,
            listen,
            request_ttl,
            database,
            replica,
            tls,
            tls_name,
            tls_cert,
            tls_key,
        } => {
            setup::init(&Layout::new(&data_dir))?;
            let tls = match (tls, tls_cert, tls_key) {
                (true, _, _) => zt_approval::service::Tls::Stack(tls_name),
                (false, Some(cert), Some(key)) => zt_approval::service::Tls::Given { cert, key },
                _ => zt_approval::service::Tls::Off,
            };
            let request_ttl = match request_ttl {
                Some(text) => Some(parse_request_ttl(&text)?),
                None => None,
            };
            let opts = zt_approval::Options {
                data_dir,
                listen,
                request_ttl,
                database: database.map(zt_proto::db::DbUrl::new),
                replica,
                tls,
            };
            zt_approval::serve(opts, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
        Command::Token { kind } => match kind {
            TokenCommand::Issue {
                data_dir,
                agent,
                human,
                ttl,
                scope,
                session,
            } => {
                let layout = Layout::new(&data_dir);
                let (stack, keys) = setup::load(&layout)?;
                let req = SessionRequest {
                    agent,
                    human,
                    ttl_secs: Some(setup::parse_duration_secs(&ttl)?),
                    scope: scope.into_iter().filter(|s| !s.is_empty()).collect(),
                    launcher: None,
                    continues: session.map(|sid| (sid, zt_proto::token::now_secs())),
                };
                println!("{}", setup::issue_session(&layout, &stack, &keys, &req)?.0);
            }
            TokenCommand::Operator {
                data_dir,
                name,
                role,
                limit,
                ttl,
            } => {
                let layout = Layout::new(&data_dir);
                let (stack, keys) = setup::load(&layout)?;
                let ttl = setup::parse_duration_secs(&ttl)?;
                let jwt = setup::issue_operator(&stack, &keys, &name, role, limit, ttl)?;
                if let Some(jti) = token_id(&jwt) {
                    eprintln!("jti={jti}");
                }
                println!("{jwt}");
            }
            TokenCommand::Launcher {
                data_dir,
                name,
                humans,
                agents,
                scope,
                session_ttl,
                ttl,
            } => {
                let layout = Layout::new(&data_dir);
                let (stack, keys) = setup::load(&layout)?;
                let ttl = setup::parse_duration_secs(&ttl)?;
                let bounds = setup::LauncherBounds {
                    humans,
                    agents,
                    scope: scope.into_iter().filter(|s| !s.is_empty()).collect(),
                    max_session_ttl: setup::parse_duration_secs(&session_ttl)?,
                };
                let (jwt, jti) = setup::issue_launcher(&layout, &stack, &keys, &name, bounds, ttl)?;
                eprintln!("jti={jti}");
                println!("{jwt}");
            }
            TokenCommand::Revoke {
                data_dir,
                jti,
                reason,
            } => {
                let (mut client, admin) = as_admin(&Layout::new(&data_dir)).await?;
                let mut req = tonic::Request::new(zt_proto::pb::RevokeTokenRequest { jti, reason });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {admin}").parse()?);
                let done = client
                    .revoke_token(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                if done.newly_revoked {
                    println!("{} revoked", done.jti);
                } else {
                    println!("{} was already revoked", done.jti);
                }
            }
        },
        Command::Keys {
            kind: KeysCommand::Rotate { data_dir, key },
        } => {
            let (old, new) = setup::rotate(&Layout::new(&data_dir), key)?;
            println!("retired={old} current={new}");
            eprintln!(
                "the old key stays trusted until `zt-approval keys retire --kid {old}`; \
                 restart zt-approval to sign with the new key"
            );
        }
        Command::Keys {
            kind: KeysCommand::Jwks { data_dir },
        } => {
            // The keys this service trusts, never a file that merely sits in
            // public/: whoever consumes this document trusts what it lists.
            let layout = Layout::new(&data_dir);
            let roots = zt_proto::pinned::TrustRoots::read(&setup::trust_path(&layout))?;
            let keys = zt_proto::pinned::read_trusted(
                &layout.public_dir(),
                "approval-token",
                &roots.get("approval-token"),
            )?;
            println!("{}", zt_proto::token::KeySet::new(keys).to_jwks());
        }
        Command::Keys {
            kind: KeysCommand::Retire { data_dir, key, kid },
        } => {
            setup::retire(&Layout::new(&data_dir), key, &kid)?;
            println!("retired {kid}");
        }
        Command::Session {
            kind:
                SessionCommand::Revoke {
                    data_dir,
                    session,
                    reason,
                },
        } => {
            let (mut client, admin) = as_admin(&Layout::new(&data_dir)).await?;
            let mut req = tonic::Request::new(zt_proto::pb::RevokeSessionRequest {
                session_id: session,
                reason,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {admin}").parse()?);
            let done = client
                .revoke_session(req)
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            for r in done.sessions {
                println!("{} revoked", r.session_id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_ttl_flag_takes_a_positive_duration() {
        assert_eq!(parse_request_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_request_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_request_ttl("3").unwrap(), Duration::from_secs(3));
        let err = parse_request_ttl("0s").unwrap_err().to_string();
        assert!(err.contains("must be positive"), "{err}");
        assert!(parse_request_ttl("soon").is_err());
    }
}
