//! The upstreams a team puts behind the broker, declared as data in the
//! broker's private `DIR/broker/upstreams.toml` (connection details and
//! credentials never live in the policy directory the agent's hook reads).
//!
//! ```toml
//! [[upstream]]
//! name = "files"                 # what tools.toml's `upstream` names
//! kind = "mcp"                   # an MCP server over stdio: the broker's own child
//! command = "/usr/bin/node"
//! args = ["/opt/mcp/filesystem/dist/index.js", "/srv/docs"]
//! env = { NODE_ENV = "production" }          # the child's whole environment, with:
//! secret_env = { API_TOKEN = "files.token" } # values read from files in DIR/broker
//! timeout_secs = 30              # every call (default 30)
//! max_result_bytes = 1048576     # larger results are refused (default 1 MiB)
//!
//! [[upstream]]
//! name = "tickets"
//! kind = "mcp"                   # an MCP server over Streamable HTTP
//! url = "https://mcp.tickets.internal/mcp"   # https://, or http:// on loopback
//! credential = { header = "authorization", prefix = "Bearer ", secret_file = "tickets.token" }
//!
//! [[upstream]]
//! name = "crm"
//! kind = "http"                  # a REST/JSON API (see `OperationDecl`)
//! url = "https://crm.internal"   # or endpoint = "billing": DIR/run/billing.url
//! credential = { header = "x-api-key", secret_file = "crm.key" }
//! [[upstream.operation]]
//! name = "get_customer"
//! method = "GET"
//! path = "/v2/customers/{customer_id}"
//!
//! [[upstream]]
//! name = "crm-db"
//! kind = "sql"                   # read-only queries over a database
//! database_file = "crm-db.url"   # holds postgres://... (or: database = "/path/file.db")
//! schema = "crm"
//! [[upstream.query]]
//! name = "customer"
//! sql = "SELECT id, region FROM customers WHERE id = $1"
//! params = ["$args.customer_id"]
//! ```
//!
//! One module per kind implements [`super::Upstream`]; a new kind is a new
//! variant of [`Declared`] and a new module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// The file, in the broker's private directory.
pub const FILE: &str = "upstreams.toml";

/// Longest a secret file may be.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why `upstreams.toml` was refused. Each names its upstream.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{FILE}: {0}")]
    Parse(String),
    /// An upstream's declaration is inconsistent.
    #[error("{FILE}: upstream `{name}`: {message}")]
    Invalid {
        /// The upstream.
        name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    upstream: Vec<Declared>,
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Declared {
    /// An MCP server, over stdio or Streamable HTTP.
    Mcp(McpDecl),
    /// A REST/JSON API described as data.
    Http(HttpDecl),
    /// Read-only queries over a database.
    Sql(SqlDecl),
}

impl Declared {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        match self {
            Declared::Mcp(m) => &m.name,
            Declared::Http(h) => &h.name,
            Declared::Sql(q) => &q.name,
        }
    }
}

/// `kind = "sql"`: read-only parameterised queries over an SQLite file or a
/// PostgreSQL database; each `[[upstream.query]]` is one operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlDecl {
    /// The name tools refer to.
    pub name: String,
    /// An SQLite file (relative paths are in the broker's private
    /// directory), or `"stack"`: the stack's own records database
    /// (`zt-broker serve --database URL`, else broker.toml's
    /// `backend_database`).
    pub database: Option<String>,
    /// Or: a file holding the database URL (`postgres://...`, password
    /// included).
    pub database_file: Option<PathBuf>,
    /// PostgreSQL: the schema the queries run in (default `public`).
    pub schema: Option<String>,
    /// Longest a query may take, in seconds (default 10).
    pub timeout_secs: Option<u64>,
    /// Largest result, in bytes of JSON (default 1 MiB).
    pub max_result_bytes: Option<usize>,
    /// Most rows a `many` query may return (default 1000); more is refused.
    pub max_rows: Option<usize>,
    /// The queries.
    #[serde(default)]
    pub query: Vec<QueryDecl>,
}

/// How many rows a query yields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rows {
    /// One row, as an object; none is "not found".
    #[default]
    One,
    /// Any number (up to `max_rows`), as an array.
    Many,
}

/// One query of a `sql` upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryDecl {
    /// What tools name as their `operation`.
    pub name: String,
    /// One `SELECT` (or `WITH ... SELECT`) with `$1`, `$2`, ... placeholders;
    /// columns become the result's fields (rename them with `AS`).
    pub sql: String,
    /// The placeholders' values, in order: templates as for HTTP
    /// operations (`"$args.NAME"`, `"$actor.human"`, literals); an argument
    /// the call does not have is NULL.
    #[serde(default)]
    pub params: Vec<serde_json::Value>,
    /// `one` (default) or `many`.
    #[serde(default)]
    pub rows: Rows,
    /// The result's shape: a template where `"$result"` is the row (or the
    /// rows); default the row (or the rows) itself.
    pub result: Option<serde_json::Value>,
    /// What the model is told was not found when a `one` query finds no
    /// row; `{NAME}` is the argument (default: the query's name).
    pub not_found: Option<String>,
}

/// Where a SQL upstream's database is.
#[derive(Debug, Clone)]
pub enum SqlDatabase {
    /// The stack's own records database.
    Stack,
    /// This one (`None`: its URL file could not be read).
    At(Option<zt_proto::db::Location>),
}

/// A SQL upstream, resolved.
#[derive(Debug, Clone)]
pub struct SqlSpec {
    /// Name.
    pub name: String,
    /// Where.
    pub database: SqlDatabase,
    /// PostgreSQL schema.
    pub schema: String,
    /// Per-query bound.
    pub timeout: Duration,
    /// Largest result.
    pub max_result_bytes: usize,
    /// Most rows of a `many` query.
    pub max_rows: usize,
    /// The queries by name.
    pub queries: BTreeMap<String, QueryDecl>,
    /// Why every call fails closed (a URL file that could not be read).
    pub unusable: Option<String>,
    /// The secrets it was given (cut out of every result by exact value).
    pub secrets: Vec<SecretString>,
}

/// `kind = "http"`: a REST/JSON API; each `[[upstream.operation]]` is one
/// request the registry's tools may name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDecl {
    /// The name tools refer to.
    pub name: String,
    /// The base URL (`https://`, or `http://` on loopback).
    pub url: Option<String>,
    /// Or: the URL a service of this stack records in `DIR/run/NAME.url`
    /// when it starts (the example's billing API).
    pub endpoint: Option<String>,
    /// The API's credential, sent with every request.
    pub credential: Option<CredentialDecl>,
    /// Longest a request may take, in seconds (default 10).
    pub timeout_secs: Option<u64>,
    /// Largest response body read, in bytes (default 1 MiB).
    pub max_response_bytes: Option<usize>,
    /// The operations.
    #[serde(default)]
    pub operation: Vec<OperationDecl>,
}

/// One request of an `http` upstream.
///
/// Values in `query` and `body` are JSON templates: a string
/// `"$args.NAME"` is the argument (left out when the call has none),
/// `"$actor"` is `{session, human, grant_id}`, `"$actor.session"`,
/// `"$actor.human"`, `"$actor.grant_id"` its parts; a string starting
/// `"$$"` is the literal text after one `$`; anything else is literal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationDecl {
    /// What tools name as their `operation`.
    pub name: String,
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// The path, from `/`; `{NAME}` is the argument, percent-encoded as one
    /// path segment (an empty, `.` or `..` value is refused).
    pub path: String,
    /// Query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, serde_json::Value>,
    /// The JSON body.
    pub body: Option<serde_json::Value>,
    /// A JSON pointer to the part of a successful response that is the
    /// result (default: all of it).
    pub result: Option<String>,
    /// A JSON pointer to a message in a 4xx response that is safe to show
    /// the model (made one bounded printable line).
    pub error_message: Option<String>,
    /// The API refuses a second use of one grant (it records the grant id
    /// it is sent in `$actor.grant_id`), so an approved call whose first
    /// run did not finish may be sent again. Default `false`: never.
    #[serde(default)]
    pub resumable: bool,
}

/// `kind = "mcp"`: `command` (stdio) or `url` (Streamable HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpDecl {
    /// The name tools refer to.
    pub name: String,
    /// Stdio: the program the broker starts (an absolute path: the child's
    /// environment has no `PATH` unless `env` gives one).
    pub command: Option<PathBuf>,
    /// Stdio: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Stdio: its working directory (default `/`).
    pub cwd: Option<PathBuf>,
    /// Stdio: the child's environment (nothing of the broker's is passed).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stdio: more variables, each read from a file (relative paths are in
    /// the broker's private directory).
    #[serde(default)]
    pub secret_env: BTreeMap<String, PathBuf>,
    /// Streamable HTTP: the endpoint.
    pub url: Option<String>,
    /// Streamable HTTP: the upstream's own credential, sent with every
    /// request (the agent's token never is).
    pub credential: Option<CredentialDecl>,
    /// Longest a call may take, in seconds (default 30).
    pub timeout_secs: Option<u64>,
    /// Largest result passed on, in bytes of JSON (default 1 MiB).
    pub max_result_bytes: Option<usize>,
    /// The server's tools the platform engineer vouches never change
    /// anything: only these may serve a tool's `lookup` (the server's own
    /// `readOnlyHint` is its word, not ours).
    #[serde(default)]
    pub read_only_tools: Vec<String>,
    /// How often the server's tool list is read again to compare it with
    /// what was admitted, in seconds (default 60; also on every new
    /// session and whenever the server announces a change).
    pub tools_refresh_secs: Option<u64>,
}

/// A credential header whose value is read from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDecl {
    /// The header (default `authorization`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Put before the secret, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
    /// The file holding the secret (relative paths are in the broker's
    /// private directory).
    pub secret_file: PathBuf,
}

fn default_header() -> String {
    "authorization".to_owned()
}

/// A credential ready to send: header name and value; `Debug` hides it.
#[derive(Clone)]
pub struct Credential {
    /// The header.
    pub header: String,
    /// Its value (prefix and secret).
    pub value: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// How an MCP upstream is reached, checked and with its secrets read.
#[derive(Debug, Clone)]
pub enum McpTransport {
    /// The broker's own child over stdio.
    Stdio {
        /// Program.
        command: PathBuf,
        /// Arguments.
        args: Vec<String>,
        /// Working directory.
        cwd: PathBuf,
        /// The whole environment, secrets included (`Debug` hides values).
        env: Vec<(String, SecretString)>,
    },
    /// Streamable HTTP.
    Http {
        /// Endpoint.
        url: String,
        /// The upstream's credential.
        credential: Option<Credential>,
    },
}

/// An HTTP upstream, resolved.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    /// Name.
    pub name: String,
    /// The base URL (no trailing `/`), or the stack endpoint to read it
    /// from at start.
    pub base: Base,
    /// The credential header.
    pub credential: Option<Credential>,
    /// Per-request bound.
    pub timeout: Duration,
    /// Largest response body.
    pub max_response_bytes: usize,
    /// The operations by name.
    pub operations: BTreeMap<String, OperationDecl>,
    /// Why every call fails closed (a secret file that could not be read).
    pub unusable: Option<String>,
    /// The secrets it was given (cut out of every result by exact value).
    pub secrets: Vec<SecretString>,
}

/// Where an HTTP upstream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// This URL.
    Url(String),
    /// The URL in `DIR/run/NAME.url`.
    Endpoint(String),
}

/// A declared upstream, checked.
#[derive(Debug, Clone)]
pub enum Spec {
    /// An MCP server.
    Mcp(McpSpec),
    /// A REST/JSON API.
    Http(HttpSpec),
    /// Read-only queries over a database.
    Sql(SqlSpec),
}

impl Spec {
    /// The secrets it was given.
    pub fn secrets(&self) -> &[SecretString] {
        match self {
            Spec::Mcp(m) => &m.secrets,
            Spec::Http(h) => &h.secrets,
            Spec::Sql(q) => &q.secrets,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Spec::Mcp(m) => &m.name,
            Spec::Http(h) => &h.name,
            Spec::Sql(q) => &q.name,
        }
    }
}

/// An MCP upstream, resolved.
#[derive(Debug, Clone)]
pub struct McpSpec {
    /// Name.
    pub name: String,
    /// Transport.
    pub transport: McpTransport,
    /// Per-call bound.
    pub timeout: Duration,
    /// Largest result.
    pub max_result_bytes: usize,
    /// Tools vouched read-only.
    pub read_only_tools: Vec<String>,
    /// How often the tool list is read again.
    pub tools_refresh: Duration,
    /// Why every call fails closed (a secret file that could not be read).
    pub unusable: Option<String>,
    /// The secrets it was given (cut out of every result by exact value).
    pub secrets: Vec<SecretString>,
}

/// Every upstream of `DIR/broker/upstreams.toml`, validated, secrets read.
/// No file: none.
pub fn load(private_dir: &Path) -> Result<Vec<Spec>, ConfigError> {
    let path = private_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Io { path, source }),
    };
    parse(&text, private_dir)
}

/// [`load`] on the file's text.
pub fn parse(text: &str, private_dir: &Path) -> Result<Vec<Spec>, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for declared in file.upstream {
        let name = declared.name().to_owned();
        let invalid = |message: String| ConfigError::Invalid {
            name: name.clone(),
            message,
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "names use only A-Z, a-z, 0-9, _ and - (at most 64)".into(),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid("declared twice".into()));
        }
        match declared {
            Declared::Mcp(m) => out.push(Spec::Mcp(mcp(m, private_dir).map_err(invalid)?)),
            Declared::Http(h) => out.push(Spec::Http(http(h, private_dir).map_err(invalid)?)),
            Declared::Sql(q) => out.push(Spec::Sql(sql(q, private_dir).map_err(invalid)?)),
        }
    }
    Ok(out)
}

/// An upstream's per-call timeout (default `default_secs`, at most 10
/// minutes) and size cap (default 1 MiB, at most 64 MiB).
fn bounds(
    timeout_secs: Option<u64>,
    default_secs: u64,
    max_bytes: Option<usize>,
    bytes_field: &str,
) -> Result<(Duration, usize), String> {
    let timeout = Duration::from_secs(timeout_secs.unwrap_or(default_secs));
    if timeout.is_zero() || timeout > Duration::from_secs(600) {
        return Err("timeout_secs must be 1..=600".into());
    }
    let max = max_bytes.unwrap_or(1024 * 1024);
    if max == 0 || max > 64 * 1024 * 1024 {
        return Err(format!("{bytes_field} must be 1..=67108864"));
    }
    Ok((timeout, max))
}

fn mcp(m: McpDecl, private_dir: &Path) -> Result<McpSpec, String> {
    let mut read = Read::default();
    let (timeout, max_result_bytes) =
        bounds(m.timeout_secs, 30, m.max_result_bytes, "max_result_bytes")?;
    let transport = match (m.command, m.url) {
        (Some(command), None) => {
            if m.credential.is_some() {
                return Err("`credential` is for `url`; give a stdio server `secret_env`".into());
            }
            if !command.is_absolute() {
                return Err(format!(
                    "command `{}` must be an absolute path (the child gets no PATH of the broker's)",
                    command.display()
                ));
            }
            let mut env = Vec::new();
            for (k, v) in m.env {
                check_var(&k)?;
                env.push((k, SecretString::from(v)));
            }
            for (k, file) in m.secret_env {
                check_var(&k)?;
                if env.iter().any(|(e, _)| *e == k) {
                    return Err(format!("`{k}` is in both env and secret_env"));
                }
                env.push((k, secret(private_dir, &file, &mut read)));
            }
            McpTransport::Stdio {
                command,
                args: m.args,
                cwd: m.cwd.unwrap_or_else(|| PathBuf::from("/")),
                env,
            }
        }
        (None, Some(url)) => {
            if !m.args.is_empty()
                || !m.env.is_empty()
                || !m.secret_env.is_empty()
                || m.cwd.is_some()
            {
                return Err("`args`, `env`, `secret_env` and `cwd` are for `command`".into());
            }
            if !(url.starts_with("https://") || super::loopback_http(&url)) {
                return Err(format!(
                    "url `{url}` must be https://, or http:// on a loopback address"
                ));
            }
            let credential = m
                .credential
                .map(|c| credential(c, private_dir, &mut read))
                .transpose()?;
            McpTransport::Http { url, credential }
        }
        (Some(_), Some(_)) => return Err("give `command` (stdio) or `url` (HTTP), not both".into()),
        (None, None) => return Err("give `command` (stdio) or `url` (Streamable HTTP)".into()),
    };
    Ok(McpSpec {
        name: m.name,
        transport,
        timeout,
        max_result_bytes,
        read_only_tools: m.read_only_tools,
        tools_refresh: match m.tools_refresh_secs.unwrap_or(60) {
            0 => return Err("tools_refresh_secs must be at least 1".into()),
            s => Duration::from_secs(s.min(86_400)),
        },
        unusable: read.unusable,
        secrets: read.values,
    })
}

fn sql(q: SqlDecl, private_dir: &Path) -> Result<SqlSpec, String> {
    let mut read = Read::default();
    let (timeout, max_result_bytes) = bounds(
        q.timeout_secs,
        super::sql::DEFAULT_TIMEOUT.as_secs(),
        q.max_result_bytes,
        "max_result_bytes",
    )?;
    let max_rows = q.max_rows.unwrap_or(1000);
    if max_rows == 0 || max_rows > 100_000 {
        return Err("max_rows must be 1..=100000".into());
    }
    let database = match (q.database, q.database_file) {
        (Some(d), None) if d == "stack" => SqlDatabase::Stack,
        (Some(d), None) => {
            if d.starts_with("postgres") {
                return Err(
                    "a PostgreSQL URL carries a password: put it in a file named by `database_file`"
                        .into(),
                );
            }
            let path = PathBuf::from(d.strip_prefix("sqlite://").unwrap_or(&d));
            let path = if path.is_absolute() {
                path
            } else {
                private_dir.join(path)
            };
            SqlDatabase::At(Some(zt_proto::db::Location::File(path)))
        }
        (None, Some(file)) => {
            let url = secret(private_dir, &file, &mut read);
            let url = secrecy::ExposeSecret::expose_secret(&url);
            if url.is_empty() {
                SqlDatabase::At(None)
            } else {
                let location = zt_proto::db::Location::parse(url)
                    .map_err(|e| format!("database_file {}: {e}", file.display()))?;
                SqlDatabase::At(Some(location))
            }
        }
        _ => return Err("give `database` or `database_file`, one of them".into()),
    };
    let schema = q.schema.unwrap_or_else(|| "public".to_owned());
    if schema.is_empty()
        || schema.len() > 63
        || !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("schema `{schema}`: letters, digits and _ only"));
    }
    let mut queries = BTreeMap::new();
    for query in q.query {
        let culprit = format!("query `{}`", query.name);
        if query.name.is_empty()
            || query.name.len() > 128
            || query.name.chars().any(char::is_control)
        {
            return Err(format!("{culprit}: a short printable name"));
        }
        super::sql::check_statement(&query.sql).map_err(|m| format!("{culprit}: {m}"))?;
        for p in &query.params {
            if !matches!(
                p,
                serde_json::Value::String(_)
                    | serde_json::Value::Number(_)
                    | serde_json::Value::Bool(_)
            ) {
                return Err(format!(
                    "{culprit}: a parameter is a `$args.NAME`/`$actor...` template or a literal string, number or boolean"
                ));
            }
            super::http::check_template(p).map_err(|m| format!("{culprit}: {m}"))?;
        }
        if let Some(t) = &query.result {
            super::http::check_template(&without_result(t))
                .map_err(|m| format!("{culprit}: result: {m}"))?;
        }
        if queries.insert(query.name.clone(), query).is_some() {
            return Err(format!("{culprit}: declared twice"));
        }
    }
    Ok(SqlSpec {
        name: q.name,
        database,
        schema,
        timeout,
        max_result_bytes,
        max_rows,
        queries,
        unusable: read.unusable,
        secrets: read.values,
    })
}

/// A `result` template with its `"$result"` leaves made literal, for the
/// template check.
fn without_result(t: &serde_json::Value) -> serde_json::Value {
    match t {
        serde_json::Value::String(s) if s == "$result" => serde_json::Value::Null,
        serde_json::Value::Array(a) => a.iter().map(without_result).collect(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), without_result(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

fn credential(
    c: CredentialDecl,
    private_dir: &Path,
    read: &mut Read,
) -> Result<Credential, String> {
    let header = c.header.to_ascii_lowercase();
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "credential header `{}` is not a header name",
            c.header
        ));
    }
    let secret = secret(private_dir, &c.secret_file, read);
    let value = format!(
        "{}{}",
        c.prefix,
        secrecy::ExposeSecret::expose_secret(&secret)
    );
    if value
        .chars()
        .any(|ch| !(ch == ' ' || ch.is_ascii_graphic()))
    {
        return Err("the credential holds characters a header cannot carry".into());
    }
    Ok(Credential {
        header,
        value: SecretString::from(value),
    })
}

fn http(h: HttpDecl, private_dir: &Path) -> Result<HttpSpec, String> {
    let mut read = Read::default();
    let (timeout, max_response_bytes) = bounds(
        h.timeout_secs,
        10,
        h.max_response_bytes,
        "max_response_bytes",
    )?;
    let base = match (h.url, h.endpoint) {
        (Some(url), None) => {
            let url = url.trim_end_matches('/').to_owned();
            check_base(&url)?;
            Base::Url(url)
        }
        (None, Some(name)) => Base::Endpoint(name),
        _ => return Err("give `url` or `endpoint`, one of them".into()),
    };
    let credential = h
        .credential
        .map(|c| credential(c, private_dir, &mut read))
        .transpose()?;
    let mut operations = BTreeMap::new();
    for op in h.operation {
        let culprit = format!("operation `{}`", op.name);
        if op.name.is_empty() || op.name.len() > 128 || op.name.chars().any(char::is_control) {
            return Err(format!("{culprit}: a short printable name"));
        }
        if !matches!(
            op.method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
        ) {
            return Err(format!(
                "{culprit}: method must be GET, POST, PUT, PATCH or DELETE"
            ));
        }
        super::http::check_path(&op.path).map_err(|m| format!("{culprit}: {m}"))?;
        for pointer in op.result.iter().chain(&op.error_message) {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(format!("{culprit}: `{pointer}` is not a JSON pointer"));
            }
        }
        if op.body.is_some() && op.method == "GET" {
            return Err(format!("{culprit}: a GET has no body"));
        }
        for template in op.query.values().chain(&op.body) {
            super::http::check_template(template).map_err(|m| format!("{culprit}: {m}"))?;
        }
        if operations.insert(op.name.clone(), op).is_some() {
            return Err(format!("{culprit}: declared twice"));
        }
    }
    Ok(HttpSpec {
        name: h.name,
        base,
        credential,
        timeout,
        max_response_bytes,
        operations,
        unusable: read.unusable,
        secrets: read.values,
    })
}

/// An HTTP upstream's base URL: `https://`, or `http://` on loopback, and
/// no query or fragment.
pub fn check_base(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || super::loopback_http(url)) {
        return Err(format!(
            "url `{url}` must be https://, or http:// on a loopback address (the credential travels with every request)"
        ));
    }
    if url.contains('?') || url.contains('#') {
        return Err(format!("url `{url}` must have no query or fragment"));
    }
    Ok(())
}

fn check_var(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not an environment variable name"))
    }
}

/// A secret file's contents, trimmed: a regular file, non-empty, at most
/// 64 KiB.
/// A secret file's contents; one that cannot be read makes the upstream
/// unusable (its calls fail closed, the reason logged) rather than keeping
/// the broker and every other tool from starting.
fn secret(private_dir: &Path, file: &Path, read: &mut Read) -> SecretString {
    match read_secret(private_dir, file) {
        Ok(s) => {
            read.values.push(s.clone());
            s
        }
        Err(why) => {
            read.unusable.get_or_insert(why);
            SecretString::from(String::new())
        }
    }
}

/// What reading an upstream's secret files gave.
#[derive(Default)]
struct Read {
    /// Why the upstream is unusable (the first secret that could not be
    /// read).
    unusable: Option<String>,
    /// The secrets read.
    values: Vec<SecretString>,
}

fn read_secret(private_dir: &Path, file: &Path) -> Result<SecretString, String> {
    let path = if file.is_absolute() {
        file.to_owned()
    } else {
        private_dir.join(file)
    };
    let shown = path.display();
    let meta = std::fs::metadata(&path).map_err(|e| format!("secret file {shown}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret file {shown} must be a regular file of at most 64 KiB"
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("secret file {shown}: {e}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("secret file {shown} is empty"));
    }
    Ok(SecretString::from(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(zt_proto::random_id("zt-upstreams-"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn declarations_parse_and_secrets_stay_hidden() {
        let d = dir();
        std::fs::write(d.join("t.token"), "s3cret-value\n").unwrap();
        let specs = parse(
            r#"
            [[upstream]]
            name = "files"
            kind = "mcp"
            command = "/usr/bin/node"
            args = ["x.js", "/srv"]
            env = { NODE_ENV = "production" }
            secret_env = { TOKEN = "t.token" }

            [[upstream]]
            name = "tickets"
            kind = "mcp"
            url = "http://127.0.0.1:9/mcp"
            credential = { prefix = "Bearer ", secret_file = "t.token" }
            timeout_secs = 5
            "#,
            &d,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        let shown = format!("{specs:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("production"), "{shown}");
        let Spec::Mcp(tickets) = &specs[1] else {
            panic!("{specs:?}")
        };
        match &tickets.transport {
            McpTransport::Http {
                credential: Some(c),
                ..
            } => {
                assert_eq!(c.header, "authorization");
                assert_eq!(
                    secrecy::ExposeSecret::expose_secret(&c.value),
                    "Bearer s3cret-value"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tickets.timeout, Duration::from_secs(5));
        assert!(tickets.unusable.is_none());

        // A secret that cannot be read: that upstream fails closed, the
        // others (and the broker) start.
        let specs = parse(
            "[[upstream]]\nname = \"a\"\nkind = \"http\"\nurl = \"https://a.example\"\n\
             credential = { secret_file = \"missing.key\" }\n",
            &d,
        )
        .unwrap();
        let Spec::Http(a) = &specs[0] else {
            panic!("{specs:?}")
        };
        assert!(
            a.unusable
                .as_deref()
                .is_some_and(|w| w.contains("missing.key")),
            "{a:?}"
        );
    }

    #[test]
    fn bad_declarations_are_refused_by_name() {
        let d = dir();
        for (text, why) in [
            (
                "[[upstream]]\nname = \"a\"\nkind = \"mcp\"\n",
                "give `command`",
            ),
            (
                "[[upstream]]\nname = \"a\"\nkind = \"mcp\"\ncommand = \"node\"\n",
                "absolute path",
            ),
            (
                "[[upstream]]\nname = \"a\"\nkind = \"mcp\"\nurl = \"http://example.com/mcp\"\n",
                "https://",
            ),
            (
                "[[upstream]]\nname = \"a\"\nkind = \"mcp\"\ncommand = \"/x\"\nbogus = 1\n",
                "unknown field",
            ),
            (
                "[[upstream]]\nname = \"a\"\nkind = \"ftp\"\n",
                "unknown variant",
            ),
            (
                "[[upstream]]\nname = \"a b\"\nkind = \"mcp\"\ncommand = \"/x\"\n",
                "names use only",
            ),
        ] {
            let e = parse(text, &d).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
