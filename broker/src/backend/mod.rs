//! Backends: the upstreams a broker puts its tools in front of, declared as
//! data in its private `upstreams.toml` ([`upstreams`]), one module per
//! kind behind the one [`Upstream`] trait: [`mcp`] (an MCP server over
//! stdio or Streamable HTTP), [`http`] (a REST/JSON API) and [`sql`]
//! (read-only queries over a database). The example business is two of
//! them: its billing API (`http`, moving money and changing plans with a
//! key only the broker holds) and its records (`sql`).
//!
//! A tool's registry entry names its `upstream` and `operation`; its
//! `lookup` (what the policy needs about the call's object) and `replay`
//! (idempotent retries) are read-only operations of upstreams too. A tool
//! whose upstream is not declared fails closed. Nothing here knows the
//! example domain.

pub mod http;
pub mod mcp;
pub mod sql;
pub mod upstreams;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use zt_policies::{Resource, ToolSpec};

/// Backend failures. `Display` is safe to show an agent: `Unavailable` and
/// `Db` show a generic message and keep their cause for the log.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A business rule refused the action.
    #[error("{0}")]
    Refused(String),
    /// A backend service failed or could not be reached.
    #[error("the backend could not complete the request")]
    Unavailable(String),
    /// The database failed.
    #[error("the backend could not complete the request")]
    Db(#[from] sqlx::Error),
    /// The result was larger than the upstream's cap.
    #[error("the result was too large to return")]
    TooLarge(String),
}

/// Whether `url` is `http://` to a loopback address (where a credential
/// may travel without TLS).
pub(crate) fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// The HTTP client of an upstream: pooled, rustls, no redirects, bounded
/// connects, TCP_NODELAY.
pub(crate) fn upstream_client(name: &str) -> Result<reqwest::Client, BackendError> {
    // Idempotent: only the first install in a process takes effect.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BackendError::Unavailable(format!("upstream {name}: client: {e}")))
}

/// Longest message from a backend passed on to the model.
const MAX_MESSAGE: usize = 200;

/// A backend's message made safe to hand to a model: one line, printable,
/// bounded.
pub(crate) fn safe_message(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if message.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// What an executed call returned.
#[derive(Debug, Clone)]
pub enum Output {
    /// A JSON result of a built-in adapter (sent as structured content).
    Json(Value),
    /// An MCP upstream's own result: its content blocks (text, images,
    /// resources), structured content and error flag, passed on.
    Tool(rmcp::model::CallToolResult),
}

impl Output {
    /// The JSON a summary is drawn from (an MCP result's structured
    /// content, when it has any).
    pub fn json(&self) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Output::Json(v) => v,
            Output::Tool(r) => r.structured_content.as_ref().unwrap_or(&NULL),
        }
    }

    /// Whether the upstream reported the call as failed.
    pub fn failed(&self) -> bool {
        matches!(self, Output::Tool(r) if r.is_error == Some(true))
    }
}

/// An upstream: one kind per module, declared in `upstreams.toml`.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Its declared name.
    fn name(&self) -> &str;
    /// Calls `operation` with arguments that were validated and authorized,
    /// attaching the upstream's own credential (never the agent's token).
    /// Never retried: it may have a side effect.
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Output, BackendError>>;

    /// Whether an approved call of `operation` whose first run did not
    /// finish may be sent again (the upstream refuses a grant twice).
    fn resumable(&self, _operation: &str) -> bool {
        false
    }

    /// The upstream's live definition of `operation`, for kinds that
    /// publish definitions (MCP tools); compared with the admitted one.
    fn definition<'a>(
        &'a self,
        _operation: &'a str,
    ) -> BoxFuture<'a, Result<Definition, BackendError>> {
        Box::pin(async { Ok(Definition::NotPublished) })
    }

    /// Whether `operation` never changes anything, by structure (a SQL
    /// upstream's read-only connection, an HTTP GET) or because the
    /// upstream's declaration vouches for it; only such operations serve
    /// lookups and replays.
    fn read_only(&self, _operation: &str) -> bool {
        false
    }
}

/// Tells the MCP client how a long call is going: `(message, progress,
/// total)`.
pub type Progress = Arc<dyn Fn(String, f64, Option<f64>) -> BoxFuture<'static, ()> + Send + Sync>;

/// An upstream's live definition of one of its operations.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    /// The kind publishes none (HTTP and SQL operations are declared here).
    NotPublished,
    /// The upstream does not list it (any more).
    Absent,
    /// What it lists (an MCP `Tool` as JSON).
    Present(Value),
}

/// Who is acting, passed with every call.
#[derive(Clone)]
pub struct Actor<'a> {
    /// Session id.
    pub session: &'a str,
    /// Human acted for.
    pub human: &'a str,
    /// Grant redeemed, if the call was approved by operators.
    pub grant_id: Option<&'a str>,
    /// Where an upstream's progress notifications go, when the agent asked
    /// for them.
    pub progress: Option<&'a Progress>,
}

impl std::fmt::Debug for Actor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("session", &self.session)
            .field("human", &self.human)
            .field("grant_id", &self.grant_id)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What the broker learned about a call's object before deciding.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The attributes the policy needs (`None`: the tool declares no
    /// lookup).
    pub resource: Option<Resource>,
    /// For a read-only tool whose lookup is its own operation: that
    /// result, so an allowed read costs one upstream call.
    pub snapshot: Option<Output>,
}

/// The broker's backends: its upstreams by name.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    upstreams: HashMap<String, Arc<dyn Upstream>>,
}

impl Backend {
    /// The declared upstreams.
    pub fn new(upstreams: Vec<Arc<dyn Upstream>>) -> Backend {
        Backend {
            upstreams: upstreams
                .into_iter()
                .map(|u| (u.name().to_owned(), u))
                .collect(),
        }
    }

    /// Whether an approved call of `spec` whose first run did not finish
    /// may run again: only if its upstream declares the operation so.
    pub fn resumable(&self, spec: &ToolSpec) -> bool {
        spec.upstream
            .as_ref()
            .and_then(|name| self.upstreams.get(name))
            .is_some_and(|u| u.resumable(spec.operation()))
    }

    /// The live definition of `spec`'s operation on its upstream.
    pub async fn definition(&self, spec: &ToolSpec) -> Result<Definition, BackendError> {
        match spec.upstream.as_ref().and_then(|n| self.upstreams.get(n)) {
            Some(u) => u.definition(spec.operation()).await,
            None => Ok(Definition::NotPublished),
        }
    }

    /// Whether an upstream of that name is declared.
    pub fn has_upstream(&self, name: &str) -> bool {
        self.upstreams.contains_key(name)
    }

    /// Whether `operation` of upstream `name` is read-only.
    pub fn read_only(&self, name: &str, operation: &str) -> bool {
        self.upstreams
            .get(name)
            .is_some_and(|u| u.read_only(operation))
    }

    /// Runs a read-only `operation` of upstream `name` for a lookup or a
    /// replay; any other operation is refused (fail closed).
    async fn read(
        &self,
        name: &str,
        operation: &str,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Output, BackendError> {
        let Some(u) = self.upstreams.get(name) else {
            return Err(BackendError::Unavailable(format!(
                "upstream `{name}` is not declared in upstreams.toml"
            )));
        };
        if !u.read_only(operation) {
            return Err(BackendError::Unavailable(format!(
                "`{operation}` of upstream `{name}` is not read-only, so it cannot serve a lookup"
            )));
        }
        let out = u.call(operation, args, actor).await?;
        if out.failed() {
            return Err(BackendError::Unavailable(format!(
                "`{operation}` of upstream `{name}` reported an error"
            )));
        }
        Ok(out)
    }

    /// The attributes the policy needs about the object a call of `spec`
    /// acts on (entity id `id`), from its declared lookup: every mapped
    /// pointer must be in the result (a missing or null one fails closed).
    pub async fn resource(
        &self,
        spec: &ToolSpec,
        id: &str,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Fetched, BackendError> {
        let Some(lookup) = &spec.lookup else {
            return Ok(Fetched::default());
        };
        let out = self
            .read(&lookup.upstream, &lookup.operation, args, actor)
            .await?;
        let found = out.json();
        let mut attrs = serde_json::Map::new();
        for (name, pointer) in &lookup.attrs {
            match found.pointer(pointer) {
                Some(v) if !v.is_null() => {
                    attrs.insert(name.clone(), v.clone());
                }
                _ => {
                    return Err(BackendError::Unavailable(format!(
                        "lookup `{}` of `{}`: the result has no `{pointer}` for `{name}`",
                        lookup.operation, spec.name
                    )));
                }
            }
        }
        let own = spec.read_only
            && spec.upstream.as_deref() == Some(lookup.upstream.as_str())
            && spec.operation() == lookup.operation;
        Ok(Fetched {
            resource: Some(Resource {
                id: id.to_owned(),
                attrs,
            }),
            snapshot: own.then_some(out),
        })
    }

    /// The result of an earlier call this one repeats (same human, same
    /// idempotency key, same arguments), if `spec` declares replays and
    /// one is recorded; a key reused with other arguments is refused.
    pub async fn replay(
        &self,
        spec: &ToolSpec,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Option<Value>, BackendError> {
        let Some(replay) = &spec.replay else {
            return Ok(None);
        };
        if args.get(&replay.key_arg).and_then(Value::as_str).is_none() {
            return Ok(None);
        }
        let out = match self
            .read(&replay.upstream, &replay.operation, args, actor)
            .await
        {
            Ok(out) => out,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut first = out.json().clone();
        if !first.is_object() {
            return Ok(None);
        }
        for (arg, pointer) in &replay.same {
            if args.get(arg) != first.pointer(pointer) {
                return Err(BackendError::Refused(format!(
                    "this idempotency key was already used for a different `{}` call",
                    spec.name
                )));
            }
        }
        if let Value::Object(m) = &mut first {
            m.insert("replayed".into(), Value::Bool(true));
        }
        Ok(Some(first))
    }

    /// Executes an authorized call on the upstream its registry entry
    /// names.
    pub async fn execute(
        &self,
        spec: &ToolSpec,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Output, BackendError> {
        let tool = spec.name.as_str();
        let Some(name) = &spec.upstream else {
            return Err(BackendError::Unavailable(format!(
                "`{tool}` names no upstream in tools.toml"
            )));
        };
        match self.upstreams.get(name) {
            Some(u) => u.call(spec.operation(), args, actor).await,
            None => Err(BackendError::Unavailable(format!(
                "`{tool}` names upstream `{name}`, which upstreams.toml does not declare"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_travel_only_over_tls_or_loopback() {
        assert!(upstreams::check_base("https://billing.example.com").is_ok());
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(loopback_http(ok), "{ok}");
        }
        for bad in [
            "http://billing.example.com",
            "http://127.0.0.1.evil.com",
            "http://127.0.0.1@evil.com",
            "ftp://127.0.0.1",
        ] {
            assert!(!loopback_http(bad), "{bad}");
            assert!(upstreams::check_base(bad).is_err(), "{bad}");
        }
        assert!(upstreams::check_base("https://a.example/?x=1").is_err());
    }

    #[test]
    fn backend_messages_are_bounded_single_lines() {
        let long = "x".repeat(500);
        assert_eq!(safe_message(&long).chars().count(), MAX_MESSAGE + 1);
        assert_eq!(safe_message("a\nb\u{1b}[2J"), "a b [2J");
    }
}
