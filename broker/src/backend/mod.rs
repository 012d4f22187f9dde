//! Backends, as adapters behind one small trait.
//!
//! - [`Records`]: the example business's records database (SQLite through
//!   sqlx): the read-only tools, and the attributes the policy needs about
//!   every object a call acts on.
//! - [`Upstream`]s: servers declared as data in the broker's private
//!   `upstreams.toml` ([`upstreams`]), one module per kind: [`mcp`] (an MCP
//!   server over stdio or Streamable HTTP) and [`http`] (a REST/JSON API).
//!   A tool whose registry entry names an `upstream` goes there, as the
//!   upstream's `operation`. The example's billing API, which moves money
//!   and changes plans with a key only the broker holds, is one of them.
//!
//! The broker asks [`Backend`] for resource attributes and idempotent
//! replays (from the records), and routes each authorized call to its
//! upstream, or to the one adapter that owns its tool. A tool that neither
//! reaches fails closed.

pub mod http;
pub mod mcp;
mod records;
pub mod upstreams;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use zt_policies::Resource;

pub use records::Records;

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
}

/// Who is acting, passed with every write.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    /// Session id.
    pub session: &'a str,
    /// Human acted for.
    pub human: &'a str,
    /// Grant redeemed, if the call was approved by operators.
    pub grant_id: Option<&'a str>,
}

/// What the broker learned about a call's object before deciding.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The attributes the policy needs (`None`: the tool acts on no object).
    pub resource: Option<Resource>,
    /// For a read-only tool whose result is the very row read for the
    /// attributes: that result, so an allowed read costs one query.
    pub snapshot: Option<Value>,
}

/// A backend that executes some of the registry's tools.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// The tools it executes.
    fn tools(&self) -> &'static [&'static str];
    /// Executes a call whose arguments were validated and authorized.
    fn execute<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Value, BackendError>>;
}

/// The broker's backends.
#[derive(Debug, Clone)]
pub struct Backend {
    records: Records,
    owners: HashMap<&'static str, Arc<dyn Adapter>>,
    upstreams: HashMap<String, Arc<dyn Upstream>>,
}

impl Backend {
    /// The records database plus the given adapters; a later adapter takes
    /// over a tool an earlier one also lists.
    pub fn new(records: Records, adapters: Vec<Arc<dyn Adapter>>) -> Backend {
        let mut owners: HashMap<&'static str, Arc<dyn Adapter>> = HashMap::new();
        let first: Arc<dyn Adapter> = Arc::new(records.clone());
        for adapter in std::iter::once(first).chain(adapters) {
            for tool in adapter.tools() {
                owners.insert(tool, adapter.clone());
            }
        }
        Backend {
            records,
            owners,
            upstreams: HashMap::new(),
        }
    }

    /// Adds the declared upstreams.
    pub fn with_upstreams(mut self, upstreams: Vec<Arc<dyn Upstream>>) -> Backend {
        for u in upstreams {
            self.upstreams.insert(u.name().to_owned(), u);
        }
        self
    }

    /// Whether an approved call of `spec` whose first run did not finish
    /// may run again: a built-in adapter's always (the example's ledger
    /// refuses a grant twice), an upstream's only if it declares so.
    pub fn resumable(&self, spec: &zt_policies::ToolSpec) -> bool {
        match &spec.upstream {
            None => true,
            Some(name) => self
                .upstreams
                .get(name)
                .is_some_and(|u| u.resumable(spec.operation())),
        }
    }

    /// Whether an upstream of that name is declared.
    pub fn has_upstream(&self, name: &str) -> bool {
        self.upstreams.contains_key(name)
    }

    /// The attributes the policy needs about the object a call acts on.
    pub async fn resource(&self, tool: &str, args: &Value) -> Result<Fetched, BackendError> {
        self.records.resource(tool, args).await
    }

    /// The result of an earlier call this one repeats (same human, same
    /// idempotency key, same arguments), if any; a key reused with other
    /// arguments is refused.
    pub async fn replay(
        &self,
        tool: &str,
        args: &Value,
        human: &str,
    ) -> Result<Option<Value>, BackendError> {
        self.records.replay(tool, args, human).await
    }

    /// Executes an authorized call: on the upstream its registry entry
    /// names, or on the adapter that owns it.
    pub async fn execute(
        &self,
        spec: &zt_policies::ToolSpec,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Output, BackendError> {
        let tool = spec.name.as_str();
        if let Some(name) = &spec.upstream {
            return match self.upstreams.get(name) {
                Some(u) => u.call(spec.operation(), args, actor).await,
                None => Err(BackendError::Unavailable(format!(
                    "`{tool}` names upstream `{name}`, which upstreams.toml does not declare"
                ))),
            };
        }
        match self.owners.get(tool) {
            Some(adapter) => adapter.execute(tool, args, actor).await.map(Output::Json),
            None => Err(BackendError::Unavailable(format!(
                "no backend adapter executes `{tool}`"
            ))),
        }
    }

    /// Which adapter executes `tool`, if any.
    pub fn owner(&self, tool: &str) -> Option<&'static str> {
        self.owners.get(tool).map(|a| a.name())
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
