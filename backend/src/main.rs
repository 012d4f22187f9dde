//! `zt-billing`: the example backend's billing API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use zt_proto::stack::Layout;

/// The example backend's billing API: issues refunds and changes plans for a
/// caller holding one of its API keys (the broker, and nothing else).
#[derive(Debug, Parser)]
#[command(name = "zt-billing", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the backend's database and config in DIR/backend (idempotent).
    Init {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Make sure FILE holds an API key this service accepts: issue one
        /// into it (mode 0600) if it does not exist.
        #[arg(long, value_name = "FILE")]
        key_out: Option<PathBuf>,
    },
    /// Set up a PostgreSQL database for the billing API, as its
    /// administrator: create, migrate and seed the records schema, give
    /// ROLE (the one the billing API connects as) its rows, and let each
    /// READER (the broker's role) read the records the broker serves and
    /// write nothing. Run before starting the service as ROLE.
    Migrate {
        /// The database, with a role that may create schemas
        /// (postgres://...).
        #[arg(long, env = "ZT_ADMIN_DATABASE_URL", value_name = "URL")]
        database: String,
        /// The role the billing API connects as (it must exist; not a
        /// superuser; not the administrator).
        #[arg(long)]
        role: Option<String>,
        /// A role that may read the records (the broker's); repeatable.
        #[arg(long, value_name = "ROLE")]
        reader: Vec<String>,
    },
    /// Serve the billing API over HTTP; prints `billing_url=...` when ready.
    Serve {
        /// The stack's data directory.
        #[arg(long, env = "ZT_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Keep the records in this PostgreSQL database (postgres://...)
        /// instead of the SQLite file in DIR/backend.
        #[arg(long, env = "ZT_DATABASE_URL", value_name = "URL")]
        database: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZT_LOG")
                .unwrap_or_else(|_| "zt_backend=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Init { data_dir, key_out } => {
            zt_backend::billing::init(&Layout::new(data_dir), key_out.as_deref()).await
        }
        Command::Migrate {
            database,
            role,
            reader,
        } => {
            async {
                let location = zt_proto::db::Location::for_migrate(&database)?;
                zt_backend::db::migrate(&location, role.as_deref(), &reader).await?;
                eprintln!("zt-billing: {} is set up", location.display());
                Ok(())
            }
            .await
        }
        Command::Serve {
            data_dir,
            listen,
            database,
        } => serve(Layout::new(data_dir), listen, database).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zt-billing: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(layout: Layout, listen: SocketAddr, database: Option<String>) -> anyhow::Result<()> {
    let running = zt_backend::billing::start(&layout, listen, database.as_deref(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    println!("billing_url={}", running.url);
    tracing::info!(url = %running.url, "billing API listening");
    running.done.await??;
    Ok(())
}
