//! The billing API: an HTTP service that moves money and changes plans, and
//! only for a caller presenting one of its API keys.
//!
//! It stands for the payment provider a real deployment calls (a Stripe-like
//! API). Its keys are issued by `zt-billing init --key-out FILE`; the service
//! keeps only their SHA-256 (in `DIR/backend/billing.toml`), and the key
//! itself goes to the one component allowed to hold it, the broker. An agent
//! never sees it, so an agent cannot reach this API except through the
//! broker's gate.
//!
//! ```text
//! POST /v1/refunds        RefundRequest      -> 200 refund | 404 | 409 | 400
//! POST /v1/plan-changes   PlanChangeRequest  -> 200 change | 404 | 409 | 400
//! GET  /healthz                              -> 200 (no key needed)
//! ```
//! Missing or unknown key: 401 with `WWW-Authenticate: Bearer`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zt_proto::db::{Db, Location};
use zt_proto::stack::Layout;

use crate::ledger::{self, LedgerError, PlanChangeRequest, RefundRequest};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Prefix of every API key, so a leaked key is recognizable in a scan.
pub const KEY_PREFIX: &str = "ztb_";

/// The billing service's configuration (`DIR/backend/billing.toml`, `0600`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The records database it writes to.
    pub database: PathBuf,
    /// API keys it accepts, by SHA-256; the keys themselves are not stored.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

/// One accepted API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Its name (shown in logs instead of the key).
    pub id: String,
    /// Hex SHA-256 of the whole key string.
    pub sha256: String,
    /// When it was issued (ms since the epoch).
    pub created_ms: i64,
}

fn config_path(layout: &Layout) -> PathBuf {
    layout.private("backend").join("billing.toml")
}

/// The database file of a stack's example backend.
pub fn database_path(layout: &Layout) -> PathBuf {
    layout.private("backend").join("backend.db")
}

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_config(path: &Path, config: &Config) -> anyhow::Result<()> {
    let text = format!(
        "# The billing service's configuration: the database it writes and the\n\
         # SHA-256 of every API key it accepts (the keys are not stored here).\n{}",
        toml::to_string(config)?
    );
    // Replace atomically: write a sibling, then rename over.
    let tmp = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&tmp);
    zt_proto::keys::write_private(&tmp, &text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Creates the backend's directory, database and config if missing, and,
/// with `key_out`, makes sure that file holds an API key the service
/// accepts (issuing one, written `0600`, when the file does not exist).
/// Idempotent.
pub async fn init(layout: &Layout, key_out: Option<&Path>) -> anyhow::Result<()> {
    layout.create_private("backend")?;
    let path = config_path(layout);
    let mut config = if path.exists() {
        read_config(&path)?
    } else {
        Config {
            database: database_path(layout),
            api_keys: Vec::new(),
        }
    };
    crate::db::open(&Location::File(config.database.clone()))
        .await
        .with_context(|| format!("opening {}", config.database.display()))?
        .close()
        .await;
    let mut changed = !path.exists();
    if let Some(out) = key_out {
        if out.exists() {
            let key = std::fs::read_to_string(out)
                .with_context(|| format!("reading {}", out.display()))?;
            let digest = hash_key(key.trim());
            anyhow::ensure!(
                config.api_keys.iter().any(|k| k.sha256 == digest),
                "{} holds a key this billing service does not accept; remove it to issue a new one",
                out.display()
            );
        } else {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| anyhow::anyhow!("no entropy for an API key: {e}"))?;
            let key = format!(
                "{KEY_PREFIX}{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
            );
            zt_proto::keys::write_private(out, &format!("{key}\n"))?;
            config.api_keys.push(ApiKey {
                id: zt_proto::random_id("key_"),
                sha256: hash_key(&key),
                created_ms: zt_proto::now_ms(),
            });
            changed = true;
        }
    }
    if changed {
        write_config(&path, &config)?;
    }
    Ok(())
}

#[derive(Debug)]
struct AppState {
    pool: Db,
    keys: Vec<ApiKey>,
}

/// A running billing service.
#[derive(Debug)]
pub struct Running {
    /// Its base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    /// Resolves when the server has stopped.
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Loads the config, opens the database (the config's SQLite file, or the
/// PostgreSQL database `database` when given) and serves on `listen` until
/// `shutdown` resolves. Records the endpoint in `DIR/run/billing.url`.
pub async fn start(
    layout: &Layout,
    listen: std::net::SocketAddr,
    database: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let config = read_config(&config_path(layout))?;
    anyhow::ensure!(
        !config.api_keys.is_empty(),
        "no API keys configured; issue one with `zt-billing init --key-out FILE`"
    );
    let location = match database.filter(|u| !u.is_empty()) {
        Some(url) => Location::parse(url)?,
        None => Location::File(config.database.clone()),
    };
    let pool = crate::db::open(&location)
        .await
        .with_context(|| format!("opening {}", location.display()))?;
    let state = Arc::new(AppState {
        pool,
        keys: config.api_keys,
    });
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    layout.write_endpoint("billing", &url)?;
    // Hardened like the broker's port: TCP_NODELAY (the broker keeps
    // connections alive, and without it each answer waits for a delayed
    // ACK), a header-read timeout and a connection limit.
    let done = tokio::spawn(async move {
        zt_proto::serve::http1(listener, app, shutdown).await;
        Ok(())
    });
    Ok(Running { url, done })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/refunds", post(refund))
        .route("/v1/plan-changes", post(plan_change))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// The accepted key a request presents, by id; `None` refuses the request.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ")?.trim();
    // Comparing digests, not keys: timing reveals nothing about a key.
    let digest = hash_key(key);
    state
        .keys
        .iter()
        .find(|k| k.sha256 == digest)
        .map(|k| k.id.clone())
}

fn unauthorized() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid API key is required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"zt-billing\""),
    );
    r
}

fn ledger_response(
    key: &str,
    what: &str,
    result: Result<serde_json::Value, LedgerError>,
) -> Response {
    match result {
        Ok(v) => {
            tracing::info!(key, what, "ok");
            (StatusCode::OK, Json(v)).into_response()
        }
        Err(LedgerError::NotFound(x)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{x} not found"),
        ),
        Err(LedgerError::Refused(why)) => error(StatusCode::CONFLICT, "refused", &why),
        Err(LedgerError::Db(e)) => {
            tracing::error!(error = %e, key, what, "ledger write failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the ledger could not complete the request",
            )
        }
    }
}

fn bad_body(e: &JsonRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text())
}

async fn refund(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Response {
    let Some(key) = authenticate(&state, &headers) else {
        tracing::warn!("refund refused: no valid API key");
        return unauthorized();
    };
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return bad_body(&e),
    };
    ledger_response(&key, "refund", ledger::refund(&state.pool, &req).await)
}

async fn plan_change(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<PlanChangeRequest>, JsonRejection>,
) -> Response {
    let Some(key) = authenticate(&state, &headers) else {
        tracing::warn!("plan change refused: no valid API key");
        return unauthorized();
    };
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return bad_body(&e),
    };
    ledger_response(
        &key,
        "plan change",
        ledger::change_plan(&state.pool, &req).await,
    )
}
