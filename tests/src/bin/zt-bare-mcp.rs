//! The benchmark's baseline: a bare rmcp server exposing the broker's
//! `lookup_account(account_id)` over the same SQLite backend, with the same
//! transport settings (Streamable HTTP at `/mcp`, stateless JSON responses,
//! TCP_NODELAY) and none of the checks: no token, no schema, no policy, no
//! audit. `scripts/bench-broker` measures the broker against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use clap::Parser;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A bare MCP server with `lookup_account` over the stack's backend database.
#[derive(Debug, Parser)]
#[command(name = "zt-bare-mcp")]
struct Args {
    /// The stack's data directory (the backend is `DIR/backend/backend.db`).
    #[arg(long, conflicts_with = "database")]
    data_dir: Option<PathBuf>,
    /// The backend database file, instead of `--data-dir`.
    #[arg(long)]
    database: Option<PathBuf>,
    /// Address to listen on (port 0 picks one); loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Same as the broker's `MAX_BODY_BYTES`.
const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
struct Bare {
    pool: SqlitePool,
    tool: Arc<Tool>,
}

fn lookup_tool() -> Tool {
    let schema = json!({
        "type": "object",
        "properties": { "account_id": { "type": "string" } },
        "required": ["account_id"],
        "additionalProperties": false,
    });
    let Value::Object(schema) = schema else {
        unreachable!("a JSON object literal")
    };
    Tool::new(
        "lookup_account",
        "Look up a customer account (bare baseline).",
        schema,
    )
}

impl Bare {
    async fn lookup_account(&self, id: &str) -> CallToolResult {
        let row = sqlx::query("SELECT id, name, email, region, plan FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await;
        match row {
            Ok(Some(row)) => CallToolResult::structured(json!({
                "account_id": row.get::<String, _>(0),
                "name": row.get::<String, _>(1),
                "email": row.get::<String, _>(2),
                "region": row.get::<String, _>(3),
                "plan": row.get::<String, _>(4),
            })),
            Ok(None) => {
                CallToolResult::error(vec![ContentBlock::text(format!("account {id} not found"))])
            }
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("backend: {e}"))]),
        }
    }
}

impl ServerHandler for Bare {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("zt-bare-mcp", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![(*self.tool).clone()]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "lookup_account" {
            return Err(ErrorData::invalid_params("unknown tool", None));
        }
        let id = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("account_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(self.lookup_account(&id).await.into())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "zt-bare-mcp listens on loopback only"
    );
    let db = match (&args.database, &args.data_dir) {
        (Some(db), _) => db.clone(),
        (None, Some(dir)) => dir.join("backend").join("backend.db"),
        (None, None) => anyhow::bail!("give --data-dir or --database"),
    };
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    // The same connection options and pool size as the broker's backend
    // (`zt_proto::store::open_sqlite`).
    let opts = SqliteConnectOptions::new()
        .filename(&db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .with_context(|| format!("opening {}", db.display()))?;

    let bare = Bare {
        pool,
        tool: Arc::new(lookup_tool()),
    };
    // The broker's transport settings (`broker/src/server.rs`).
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = MAX_BODY_BYTES;
    let config = config.enforce_origin_validation();
    let mcp = StreamableHttpService::new(
        move || Ok(bare.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let app = Router::new().nest_service("/mcp", mcp);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("bare_url=http://{addr}/mcp");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}
