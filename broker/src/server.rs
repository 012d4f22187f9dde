//! The broker's HTTP face: MCP over Streamable HTTP at `/mcp`, guarded by a
//! bearer-token middleware that answers 401 before MCP runs, and the RFC 9728
//! protected-resource metadata.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use tokio::sync::mpsc;
use zt_policies::PolicyStore;
use zt_proto::audit::{Kind, Record};
use zt_proto::pinned::PinnedKeys;
use zt_proto::stack::Layout;
use zt_proto::store::AuditLog;
use zt_proto::token::{self, Expect, SessionClaims, TokenType};

use crate::approval::{APPROVAL_STATUS, Progress, approval_status_schema};
use crate::approval_client::ApprovalService;
use crate::backend::Backend;
use crate::gate::{Broker, Revocations, SharedBroker};
use crate::setup::{self, AUDIT_CHAIN};
use zt_proto::db::Location;
use zt_proto::flood::RefusalBudget;

/// How to run the broker.
#[derive(Debug, Clone)]
pub struct Options {
    /// The stack's data directory.
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks one). Loopback unless configured.
    pub listen: SocketAddr,
    /// The approval service's URL (default: the one recorded in the data dir).
    pub approval_url: Option<String>,
    /// The CA an `https://` approval URL is verified by (default: the
    /// stack's `DIR/tls-ca.pem`).
    pub approval_ca: Option<PathBuf>,
    /// The billing API's URL (default: the config's, else the one recorded
    /// in the data dir).
    pub billing_url: Option<String>,
    /// A PostgreSQL URL for the broker's state and audit chain, shared with
    /// other replicas; `None` keeps SQLite files in the data directory.
    pub database: Option<zt_proto::db::DbUrl>,
    /// This broker's replica name when several serve one data directory:
    /// its audit chain is `broker-NAME` and its endpoint `run/broker-NAME.url`.
    pub replica: Option<String>,
}

/// A replica name: short, lowercase letters, digits and dashes.
pub fn valid_replica(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The MCP server handler; one per MCP session, all sharing the broker.
#[derive(Clone)]
pub struct Mcp {
    broker: SharedBroker,
    /// Over stdio there are no HTTP headers: the session token given at
    /// start, re-verified on every request.
    stdio: Option<(Arc<str>, Auth)>,
}

impl Mcp {
    async fn claims(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<SessionClaims>, ErrorData> {
        match &self.stdio {
            None => {
                claims_of(ctx).ok_or_else(|| ErrorData::invalid_request("unauthenticated", None))
            }
            Some((token, auth)) => auth.check(token).await.map(Arc::new).map_err(|why| {
                ErrorData::invalid_request(format!("session token refused: {why}"), None)
            }),
        }
    }
}

fn claims_of(ctx: &RequestContext<RoleServer>) -> Option<Arc<SessionClaims>> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Arc<SessionClaims>>())
        .cloned()
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("zt-broker", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Every call of these tools is authorized by policy, may be rewritten to least \
                 privilege, may need a human's approval, and is audited; a refusal says why.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let claims = self.claims(&context).await?;
        let bundle = self.broker.policy.current();
        let tools = bundle
            .tools()
            .filter(|t| claims.allows_tool(&t.name))
            .map(|t| {
                let schema = match &t.input_schema {
                    serde_json::Value::Object(m) => m.clone(),
                    _ => serde_json::Map::new(),
                };
                Tool::new(t.name.clone(), t.description.clone(), schema)
                    .with_title(t.title.clone())
                    .with_annotations(
                        ToolAnnotations::new()
                            .read_only(t.read_only)
                            .destructive(t.destructive)
                            .idempotent(t.read_only)
                            .open_world(false),
                    )
            })
            .chain(std::iter::once(
                Tool::new(
                    APPROVAL_STATUS,
                    "Check an approval request this session made (the request_id from an \
                     \"awaiting approval\" result). If it was approved, the action runs now, once, \
                     and its result is returned; if it already ran, its result is returned again.",
                    approval_status_schema(),
                )
                .with_title("Check an approval request")
                .with_annotations(
                    ToolAnnotations::new()
                        .read_only(false)
                        .destructive(false)
                        .idempotent(true)
                        .open_world(false),
                ),
            ))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let claims = self.claims(&context).await?;
        let progress = progress_of(&context);
        if request.name == APPROVAL_STATUS {
            let args = serde_json::Value::Object(request.arguments.unwrap_or_default());
            return Ok(self
                .broker
                .approval_status(&claims, args, progress)
                .await
                .into());
        }
        if self.broker.policy.current().tool(&request.name).is_none() {
            // Unknown tools are a protocol error; still audited.
            let _ = self
                .broker
                .call(&claims, &request.name, serde_json::Value::Null, None)
                .await;
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{}`", crate::gate::printable(&request.name)),
                None,
            ));
        }
        let args = serde_json::Value::Object(request.arguments.unwrap_or_default());
        Ok(self
            .broker
            .call(&claims, &request.name, args, progress)
            .await
            .into())
    }
}

/// Progress notifications for a call whose client sent a progress token.
fn progress_of(context: &RequestContext<RoleServer>) -> Option<Progress> {
    let token = context.meta.get_progress_token()?;
    let peer = context.peer.clone();
    Some(Arc::new(
        move |message: String, done: f64, total: Option<f64>| {
            let peer = peer.clone();
            let token = token.clone();
            Box::pin(async move {
                let mut note = ProgressNotificationParam::new(token, done);
                if let Some(total) = total {
                    note = note.with_total(total);
                }
                if !message.is_empty() {
                    note = note.with_message(message);
                }
                if let Err(e) = peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "progress notification not delivered");
                }
            })
        },
    ))
}

/// Where session-token keys come from.
#[derive(Clone)]
enum SessionKeys {
    /// The stack's own issuer, pinned in `public/`.
    Pinned(Arc<PinnedKeys>),
    /// An external identity provider's JWKS.
    Jwks(Arc<crate::jwks::Jwks>),
}

impl SessionKeys {
    async fn verify(
        &self,
        jwt: &str,
        expect: &Expect<'_>,
    ) -> Result<SessionClaims, token::TokenError> {
        match self {
            SessionKeys::Pinned(k) => k.verify(jwt, TokenType::Session, expect),
            SessionKeys::Jwks(k) => k.verify(jwt, TokenType::Session, expect).await,
        }
    }
}

/// What the auth middleware needs.
#[derive(Clone)]
struct Auth {
    keys: SessionKeys,
    issuer: String,
    audience: String,
    metadata_url: Arc<std::sync::OnceLock<String>>,
    audit: Arc<AuditLog>,
    revoked: Revocations,
    verified: Arc<VerifiedTokens>,
    /// Refusals before a call is authorized, audited one by one only within
    /// this budget (then in aggregate).
    refusals: Arc<RefusalBudget>,
}

/// Most tokens kept in [`VerifiedTokens`].
const VERIFIED_MAX: usize = 10_000;

/// Session tokens already verified, kept until they expire: an EdDSA
/// verification costs tens of microseconds, a lookup well under one. Keyed
/// by the whole token, so only the identical bytes hit. Revocation is still
/// checked on every request; a key retired meanwhile stops a cached token at
/// its expiry at the latest (15 minutes).
#[derive(Debug, Default)]
struct VerifiedTokens(std::sync::Mutex<std::collections::HashMap<Arc<str>, SessionClaims>>);

impl VerifiedTokens {
    fn get(&self, jwt: &str, now: i64) -> Option<SessionClaims> {
        let map = self.0.lock().ok()?;
        map.get(jwt).filter(|c| now < c.exp).cloned()
    }

    fn put(&self, jwt: &str, claims: &SessionClaims, now: i64) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= VERIFIED_MAX {
                map.retain(|_, c| now < c.exp);
                if map.len() >= VERIFIED_MAX {
                    map.clear();
                }
            }
            map.insert(Arc::from(jwt), claims.clone());
        }
    }
}

/// The audit record of a refused session token.
fn refused_token(why: &str) -> Record {
    Record {
        subject: "unauthenticated".into(),
        decision: "deny".into(),
        status: "unauthenticated".into(),
        detail: why.to_owned(),
        ..Record::default()
    }
}

impl Auth {
    /// Verifies a session token and that its session is not revoked.
    async fn check(&self, jwt: &str) -> Result<SessionClaims, String> {
        let expect = Expect {
            issuer: &self.issuer,
            audience: &self.audience,
        };
        let now = token::now_secs();
        let claims = match self.verified.get(jwt, now) {
            Some(c) => c,
            None => {
                let c = self
                    .keys
                    .verify(jwt, &expect)
                    .await
                    .map_err(|e| e.to_string())?;
                self.verified.put(jwt, &c, now);
                c
            }
        };
        if !self.revoked.is_synced() {
            return Err("revocations are not yet synced with the approval service".into());
        }
        if self.revoked.contains(&claims.sid) {
            return Err(token::TokenError::Revoked.to_string());
        }
        Ok(claims)
    }
}

/// A refusal the client should retry in a second: `status`, a JSON error
/// body and `Retry-After: 1`.
fn retry_later(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

async fn authenticate(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    if !auth.revoked.is_synced() {
        // A token revoked before this broker started would otherwise pass
        // until the first sync: refuse everyone until then.
        return retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the broker has not yet learned which sessions are revoked; retry shortly",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let result = match token {
        None => Err("missing bearer token".to_owned()),
        Some(t) => auth.check(t).await,
    };
    match result {
        Ok(claims) => {
            if !claims.scope.trim().is_empty() {
                // Read the (bounded) body to refuse an out-of-scope tool call
                // with 403 before MCP runs; the call path checks scope again.
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
                    return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                        .into_response();
                };
                if let Some(tool) = out_of_scope(&claims, &bytes) {
                    return insufficient_scope(&auth, &claims, &tool).await;
                }
                req = Request::from_parts(parts, axum::body::Body::from(bytes));
            }
            req.extensions_mut().insert(Arc::new(claims));
            next.run(req).await
        }
        Err(why) => {
            if !auth.refusals.admit("invalid_token") {
                // Flooding: counted for the aggregate entry, and answered
                // without spending a durable write.
                return retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    "invalid_token",
                    "too many refused requests; retry later",
                );
            }
            if let Err(e) = auth.audit.append(Kind::Decision, refused_token(&why)).await {
                tracing::error!(error = %e, "audit write failed for a refused token");
            }
            let metadata = auth.metadata_url.get().cloned().unwrap_or_default();
            let challenge = format!(
                "Bearer resource_metadata=\"{metadata}\", error=\"invalid_token\", error_description=\"{}\"",
                why.replace('"', "'")
            );
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({ "error": "invalid_token", "error_description": why })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        }
    }
}

/// Largest MCP request body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The first `tools/call` in a JSON-RPC message (or batch) naming a tool
/// outside the session's scope.
fn out_of_scope(claims: &SessionClaims, body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = match &value {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    messages.into_iter().find_map(|m| {
        if m.get("method").and_then(|v| v.as_str()) != Some("tools/call") {
            return None;
        }
        let name = m
            .pointer("/params/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        // Built-in tools pass whatever the scope (`approval_status` follows
        // up only on this session's own requests, escalated from in-scope calls).
        (!claims.may_call(name)).then(|| crate::gate::printable(name))
    })
}

/// 403 with `error="insufficient_scope"` (audited).
async fn insufficient_scope(auth: &Auth, claims: &SessionClaims, tool: &str) -> Response {
    let mut actors = claims.chain();
    actors.pop();
    let rec = Record {
        session: claims.sid.clone(),
        subject: claims.sub.clone(),
        actors,
        tool: tool.to_owned(),
        decision: "deny".into(),
        rules: vec!["scope".into()],
        status: "insufficient_scope".into(),
        detail: format!("`{tool}` is outside the session's scope"),
        ..Record::default()
    };
    if auth.refusals.admit("out_of_scope")
        && let Err(e) = auth.audit.append(Kind::Decision, rec).await
    {
        tracing::error!(error = %e, "audit write failed for an out-of-scope call");
    }
    let metadata = auth.metadata_url.get().cloned().unwrap_or_default();
    let challenge = format!(
        "Bearer resource_metadata=\"{metadata}\", error=\"insufficient_scope\", scope=\"{tool}\", \
         error_description=\"this session may not call {tool}\""
    );
    let mut resp = (
        StatusCode::FORBIDDEN,
        axum::Json(json!({ "error": "insufficient_scope", "error_description": format!("this session may not call `{tool}`") })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The redaction patterns: `DIR/policies/redactions.toml`, or the shipped
/// ones when it is missing.
fn redaction_patterns(policies: &std::path::Path) -> anyhow::Result<String> {
    let path = policies.join(zt_policies::files::REDACTIONS);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(zt_policies::shipped::file(zt_policies::files::REDACTIONS)
                .unwrap_or_default()
                .to_owned())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the redaction patterns after the policy directory changed; a
/// `redactions.toml` that does not load keeps the previous ones.
fn reload_redactions(broker: &Broker) {
    let reloaded = redaction_patterns(broker.policy.dir())
        .map_err(|e| format!("{e:#}"))
        .and_then(|t| {
            let current = broker.redactor.read().map_err(|e| e.to_string())?.clone();
            current.with_patterns(&t)
        });
    match reloaded {
        Ok(r) => {
            if let Ok(mut slot) = broker.redactor.write() {
                *slot = Arc::new(r);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "redactions.toml refused; the previous patterns stay")
        }
    }
}

/// Logs every tool of the registry whose calls will fail closed for want of
/// an upstream (or a read-only lookup) the broker has.
pub(crate) fn warn_unrouted(backend: &Backend, bundle: &zt_policies::PolicyBundle) {
    for tool in bundle.tools() {
        let Some(name) = &tool.upstream else {
            tracing::warn!(tool = %tool.name, "the tool names no upstream: its calls fail closed");
            continue;
        };
        if !backend.has_upstream(name) {
            tracing::warn!(
                tool = %tool.name,
                upstream = %name,
                "the tool names an upstream that upstreams.toml does not declare: its calls fail closed"
            );
        }
        let reads = tool
            .lookup
            .iter()
            .map(|l| ("lookup", &l.upstream, &l.operation));
        let replays = tool
            .replay
            .iter()
            .map(|r| ("replay", &r.upstream, &r.operation));
        for (what, upstream, operation) in reads.chain(replays) {
            if !backend.read_only(upstream, operation) {
                tracing::warn!(
                    tool = %tool.name,
                    upstream = %upstream,
                    operation = %operation,
                    "the tool's {what} is not a read-only operation of a declared upstream: its calls fail closed"
                );
            }
        }
    }
}

/// A started broker: the call path and the authenticator, before any transport.
struct Started {
    layout: Layout,
    broker: SharedBroker,
    auth: Auth,
}

/// Loads keys, config, policy, backend and audit chain, connects to the approval service,
/// and starts the background tasks (live events, revocations, policy reload).
async fn start(opts: &Options, chain: &str) -> anyhow::Result<Started> {
    let layout = Layout::new(&opts.data_dir);
    let m = setup::load(&layout)?;
    // First: a URL the broker must not use (plaintext off loopback) stops it
    // before anything is opened.
    let approval_url = opts
        .approval_url
        .clone()
        .or_else(|| layout.endpoint("approval"));
    let approval_ca = opts
        .approval_ca
        .clone()
        .unwrap_or_else(|| layout.tls_ca_file());
    let approvals = ApprovalService::new(
        approval_url.as_deref(),
        Some(&approval_ca),
        m.service_key.clone(),
        m.stack.clone(),
    )?;
    let policy = PolicyStore::open(layout.policies())
        .with_context(|| format!("loading policies from {}", layout.policies().display()))?;
    let records_at = match opts
        .database
        .as_ref()
        .map(zt_proto::db::DbUrl::expose)
        .filter(|u| !u.is_empty())
    {
        Some(url) => Location::parse(url)?,
        None => Location::File(m.config.backend_database.clone()),
    };
    // A team's own servers, declared in the broker's private directory.
    let declared = crate::backend::upstreams::load(&layout.private("broker"))?;
    let secrets: Vec<String> = declared
        .iter()
        .flat_map(|s| s.secrets())
        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned())
        .collect();
    let redactor = crate::redact::Redactor::new(secrets, &redaction_patterns(&layout.policies())?)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                layout
                    .policies()
                    .join(zt_policies::files::REDACTIONS)
                    .display()
            )
        })?;
    let mut upstreams: Vec<Arc<dyn crate::backend::Upstream>> = Vec::new();
    for spec in declared {
        use crate::backend::upstreams::Spec;
        upstreams.push(match spec {
            Spec::Mcp(m) => Arc::new(crate::backend::mcp::Mcp::start(m)?),
            Spec::Sql(q) => Arc::new(crate::backend::sql::Sql::start(q, Some(&records_at))),
            Spec::Http(h) => {
                // The example's billing API: `--billing URL` (or the
                // config's `billing.url`) names where it runs.
                let url = (h.name == "billing")
                    .then(|| {
                        opts.billing_url
                            .clone()
                            .or_else(|| m.config.billing.as_ref().and_then(|b| b.url.clone()))
                    })
                    .flatten();
                Arc::new(crate::backend::http::Http::start(
                    h,
                    |name| layout.endpoint(name),
                    url.as_deref(),
                )?)
            }
        });
    }
    let backend = Backend::new(upstreams);
    warn_unrouted(&backend, &policy.current());
    // SQLite files in the data directory, or one PostgreSQL database shared
    // by every replica (a schema per store).
    let (state_at, audit_at) = match opts
        .database
        .as_ref()
        .map(zt_proto::db::DbUrl::expose)
        .filter(|u| !u.is_empty())
    {
        Some(url) => {
            let at = Location::parse(url)?;
            (at.clone(), at)
        }
        None => (
            Location::File(layout.private("broker").join("broker.db")),
            Location::File(layout.audit_db()),
        ),
    };
    let state = crate::state::open(&state_at).await?;
    let audit_pool = zt_proto::store::open_pool(&audit_at).await?;
    if chain != AUDIT_CHAIN {
        // Every writer has its own chain; pin this one's key beside the others.
        m.audit_key.public().write(&layout.audit_key(chain))?;
    }
    let audit = Arc::new(AuditLog::open(audit_pool, chain, m.audit_key.clone()).await?);

    let (events, mut events_rx) = mpsc::channel(1024);
    let publisher = approvals.clone();
    tokio::spawn(async move {
        // One RPC carries every event queued meanwhile, so a busy broker
        // does not make one call to the approval service per tool call.
        let mut batch = Vec::new();
        while events_rx.recv_many(&mut batch, 256).await > 0 {
            if let Err(e) = publisher.publish(std::mem::take(&mut batch)).await {
                tracing::debug!(error = %e, "live events dropped");
            }
        }
    });

    let revoked = Revocations::default();
    tokio::spawn(follow_revocations(approvals.clone(), revoked.clone()));

    let broker = Arc::new(Broker {
        policy,
        backend,
        ledger: crate::ledger::Ledger::new(state.clone()),
        state,
        audit: audit.clone(),
        approvals,
        grant_keys: m.grant_keys.clone(),
        approval_wait: Duration::from_secs(m.config.approval_wait_secs),
        max_args_bytes: m.config.max_args_bytes,
        events,
        revoked: revoked.clone(),
        limiter: crate::ratelimit::RateLimiter::default(),
        quarantine: Arc::new(crate::quarantine::Quarantine::open(
            &layout.private("broker"),
        )),
        redactor: std::sync::RwLock::new(Arc::new(redactor)),
    });
    // The policy version decisions will name, from the first one on.
    let started = Record {
        subject: "zt-broker".into(),
        status: "ok".into(),
        detail: format!(
            "policy {} in force at start, from {}",
            broker.policy.current().hash(),
            broker.policy.dir().display()
        ),
        ..Record::default()
    };
    broker.audit.append(Kind::PolicyReload, started).await?;
    tokio::spawn(broker.clone().watch_admitted(Duration::from_secs(15)));
    tokio::spawn(watch_policies(broker.clone()));

    let (keys, issuer, audience) = match &m.config.identity {
        Some(idp) => (
            SessionKeys::Jwks(crate::jwks::Jwks::fetch(&idp.jwks_url).await?),
            idp.issuer.clone(),
            idp.audience.clone(),
        ),
        None => (
            SessionKeys::Pinned(m.session_keys.clone()),
            m.stack.issuer.clone(),
            m.stack.broker_audience.clone(),
        ),
    };
    let auth = Auth {
        keys,
        issuer,
        audience,
        metadata_url: Arc::new(std::sync::OnceLock::new()),
        audit: audit.clone(),
        revoked,
        verified: Arc::default(),
        refusals: Arc::default(),
    };
    tokio::spawn(summarize_refusals(auth.refusals.clone(), audit));
    Ok(Started {
        layout,
        broker,
        auth,
    })
}

/// Runs the broker until `shutdown` resolves. Prints `broker_url=...` once
/// listening and records it in the stack's `run/` directory.
pub async fn serve(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Started {
        layout,
        broker,
        auth,
    } = match &opts.replica {
        None => start(&opts, AUDIT_CHAIN).await?,
        Some(name) => {
            anyhow::ensure!(
                valid_replica(name),
                "replica name `{name}` must be 1-32 lowercase letters, digits or dashes"
            );
            start(&opts, &format!("{AUDIT_CHAIN}-{name}")).await?
        }
    };

    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = MAX_BODY_BYTES;
    let config = config.enforce_origin_validation();
    let handler_broker = broker.clone();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(Mcp {
                broker: handler_broker.clone(),
                stdio: None,
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    );

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let _ = auth
        .metadata_url
        .set(format!("{base}/.well-known/oauth-protected-resource"));
    let resource_doc = json!({
        "resource": auth.audience,
        "resource_name": "zt-broker",
        "authorization_servers": [auth.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": broker.policy.current().tools().map(|t| t.name.clone()).collect::<Vec<_>>(),
    });
    let refusals = auth.refusals.clone();
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route_layer(middleware::from_fn_with_state(auth, authenticate))
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(move || {
                let doc = resource_doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));

    wait_for_revocations(&broker.revoked).await;
    let url = format!("{base}/mcp");
    match &opts.replica {
        None => layout.write_endpoint("broker", &url)?,
        Some(name) => layout.write_endpoint(&format!("broker-{name}"), &url)?,
    }
    println!("broker_url={url}");
    tracing::info!(%url, "broker listening");
    zt_proto::serve::http1(listener, app, shutdown).await;
    // The refusals counted since the last summary, then sign the audit
    // chain's head before exiting.
    if let Some(rec) = refusals.summary()
        && let Err(e) = broker.audit.append(Kind::Decision, rec).await
    {
        tracing::error!(error = %e, "audit write failed for a refusal summary");
    }
    broker.audit.close().await;
    Ok(())
}

/// Serves MCP over stdin/stdout for one agent, whose session token comes
/// from `token` (verified at start and again on every request, so expiry and
/// revocation apply). For local use: the broker then runs as a child of the
/// agent's client, so keep its data directory unreadable to the agent's user
/// (run it as its own user) or the trust boundary is only a process boundary.
pub async fn serve_stdio(opts: Options, token: String) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    // Its own audit chain: it may run beside the HTTP broker of the stack.
    let chain = format!("{AUDIT_CHAIN}-stdio-{}", &zt_proto::random_id("")[..12]);
    let Started { broker, auth, .. } = start(&opts, &chain).await?;
    wait_for_revocations(&broker.revoked).await;
    if let Err(why) = auth.check(&token).await {
        auth.audit
            .append(Kind::Decision, refused_token(&why))
            .await?;
        auth.audit.close().await;
        anyhow::bail!("session token refused: {why}");
    }
    let audit = broker.audit.clone();
    let mcp = Mcp {
        broker,
        stdio: Some((Arc::from(token), auth)),
    };
    let served = match mcp.serve(rmcp::transport::stdio()).await {
        Ok(running) => running
            .waiting()
            .await
            .map(|_| ())
            .context("serving MCP over stdio"),
        Err(e) => Err(anyhow::Error::from(e).context("starting MCP over stdio")),
    };
    // Sign the audit chain's head before exiting.
    audit.close().await;
    served
}

/// How often refusals beyond the audit budget are written as one entry.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Writes the refusals counted beyond the audit budget as one entry every
/// [`REFUSAL_SUMMARY_EVERY`].
async fn summarize_refusals(budget: Arc<RefusalBudget>, audit: Arc<AuditLog>) {
    let mut tick = tokio::time::interval(REFUSAL_SUMMARY_EVERY);
    loop {
        tick.tick().await;
        if let Some(rec) = budget.summary() {
            tracing::warn!(detail = %rec.detail, "refusal flood");
            if let Err(e) = audit.append(Kind::Decision, rec).await {
                tracing::error!(error = %e, "audit write failed for a refusal summary");
            }
        }
    }
}

/// Waits (a few seconds at most) for the first revocation sync, so a broker
/// announces itself ready only once it can tell revoked sessions apart;
/// without the approval service it starts anyway and refuses every call
/// until the first sync.
async fn wait_for_revocations(revoked: &Revocations) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !revoked.is_synced() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !revoked.is_synced() {
        tracing::warn!("approval service unreachable: refusing calls until revocations sync");
    }
}

/// Keeps the revocation set current. Revocations reach this broker within
/// about a second; while the approval service is unreachable the set stops
/// growing (in-policy calls go on; escalations are refused anyway).
async fn follow_revocations(approvals: ApprovalService, revoked: Revocations) {
    // A cursor on the service's monotonic sequence, a page at a time: the
    // set is complete (and the broker serves) only once a page says there
    // is no more.
    let mut after = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        loop {
            match approvals.list_revoked(after).await {
                Ok(page) => {
                    if page.last_seq < after {
                        tracing::warn!("the approval service's revocation cursor went back");
                        break;
                    }
                    after = page.last_seq;
                    revoked.extend(page.sessions.into_iter().map(|r| r.session_id));
                    if page.more {
                        continue;
                    }
                    if !revoked.is_synced() {
                        revoked.mark_synced();
                        tracing::info!("revocations synced: serving calls");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not refresh revocations"),
            }
            break;
        }
    }
}

/// Size and modification time of every file in `dir`: a cheap change detector.
fn fingerprint(
    dir: &std::path::Path,
) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.file_name(), meta.len(), meta.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

/// Reloads the policy when its files change. A broken edit keeps the policy
/// in force; both outcomes are audited.
async fn watch_policies(broker: SharedBroker) {
    let dir = broker.policy.dir().to_path_buf();
    let mut seen = fingerprint(&dir);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        reload_redactions(&broker);
        let (status, detail) = match broker.policy.reload() {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "policy reloaded");
                warn_unrouted(&broker.backend, &broker.policy.current());
                (
                    "ok",
                    format!(
                        "policy {} reloaded from {}",
                        broker.policy.current().hash(),
                        dir.display()
                    ),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
                (
                    "refused",
                    format!("reload refused, previous policy kept: {e}"),
                )
            }
        };
        let rec = Record {
            subject: "zt-broker".into(),
            status: status.into(),
            detail,
            ..Record::default()
        };
        if let Err(e) = broker.audit.append(Kind::PolicyReload, rec).await {
            tracing::error!(error = %e, "audit write of a policy reload failed");
        }
    }
}
