//! MCP upstreams: a team's MCP server behind the broker.
//!
//! - **stdio**: the broker starts the server as its own child, with exactly
//!   the environment declared for it (secrets read from files), restarts it
//!   with backoff when it dies (1 s doubling to 30 s), and takes it down
//!   with itself (`kill_on_drop`, and `PR_SET_PDEATHSIG` for a broker that is
//!   killed outright).
//! - **Streamable HTTP**: one pooled rustls client, no redirects, the
//!   upstream's own credential on every request (never the agent's token),
//!   `https://` required off loopback; a lost session is re-established on
//!   the next call.
//!
//! A call whose agent asked for progress gets the server's progress
//! notifications passed on (under the agent's own token, the message made
//! one bounded printable line).
//!
//! Every call is bounded by the upstream's timeout (a call given up on is
//! cancelled upstream with `notifications/cancelled`), results larger than
//! its cap are refused, and nothing is retried: a call that may have had a
//! side effect is never sent twice.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RunningService};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, watch};

use super::upstreams::{McpSpec, McpTransport};
use super::{Actor, BackendError, Definition, Output, Upstream};

/// How long connecting and the MCP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between restarts of a stdio server that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stdio server that ran this long before dying restarts at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Longest a call waits for a stdio server that is starting.
const START_WAIT: Duration = Duration::from_secs(10);
/// Longest stderr line of a child passed to the log.
const MAX_LOG_LINE: usize = 500;

/// The broker's side of an upstream session: it hears the server's
/// progress notifications and routes each to the call that asked for it.
#[derive(Debug, Clone, Default)]
struct Client {
    progress: ProgressDispatcher,
    /// The tool list must be read again (a new session, or the server
    /// announced a change).
    stale: Arc<AtomicBool>,
}

impl rmcp::ClientHandler for Client {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.stale.store(true, Ordering::SeqCst);
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }
}

/// A session with an upstream.
type Session = RunningService<RoleClient, Client>;

/// An MCP upstream.
#[derive(Debug)]
pub struct Mcp {
    spec: McpSpec,
    client: Client,
    /// The server's tools as last listed, and when.
    listed: Mutex<Option<(Instant, HashMap<String, Value>)>>,
    /// The current session's peer (`None`: not connected).
    peer: watch::Receiver<Option<Peer<RoleClient>>>,
    link: Link,
}

#[derive(Debug)]
enum Link {
    /// The supervisor task owns the child and publishes its peer.
    Stdio {
        _supervisor: tokio::task::JoinHandle<()>,
    },
    /// Connected on demand; the session lives here.
    Http {
        http: reqwest::Client,
        session: Mutex<Option<Session>>,
        publish: watch::Sender<Option<Peer<RoleClient>>>,
    },
}

impl Mcp {
    /// Starts (stdio) or prepares (HTTP) the upstream of `spec`.
    pub fn start(spec: McpSpec) -> Result<Mcp, BackendError> {
        let (publish, peer) = watch::channel(None);
        let client = Client::default();
        if let Some(why) = &spec.unusable {
            tracing::error!(upstream = %spec.name, why, "the upstream is unusable: its calls fail closed");
        }
        let link = match &spec.transport {
            McpTransport::Stdio { .. } if spec.unusable.is_some() => Link::Stdio {
                _supervisor: tokio::spawn(async {}),
            },
            McpTransport::Stdio { .. } => Link::Stdio {
                _supervisor: tokio::spawn(supervise(spec.clone(), client.clone(), publish)),
            },
            McpTransport::Http { .. } => {
                let http = super::upstream_client(&spec.name)?;
                Link::Http {
                    http,
                    session: Mutex::new(None),
                    publish,
                }
            }
        };
        Ok(Mcp {
            spec,
            client,
            listed: Mutex::new(None),
            peer,
            link,
        })
    }

    /// The current peer, connecting an HTTP upstream if needed.
    async fn peer(&self) -> Result<Peer<RoleClient>, BackendError> {
        if let Some(p) = self.peer.borrow().clone()
            && !p.is_transport_closed()
        {
            return Ok(p);
        }
        let name = &self.spec.name;
        let Link::Http {
            http,
            session,
            publish,
        } = &self.link
        else {
            // A stdio server starting or restarting: wait for it, within
            // the call's own bound.
            let mut peer = self.peer.clone();
            let wait = tokio::time::timeout(self.spec.timeout.min(START_WAIT), async {
                loop {
                    if let Some(p) = peer.borrow_and_update().clone()
                        && !p.is_transport_closed()
                    {
                        return Some(p);
                    }
                    if peer.changed().await.is_err() {
                        return None;
                    }
                }
            });
            return match wait.await {
                Ok(Some(p)) => Ok(p),
                _ => Err(BackendError::Unavailable(format!(
                    "upstream {name}: the server is not running"
                ))),
            };
        };
        let mut session = session.lock().await;
        if let Some(s) = session.as_ref()
            && !s.is_closed()
        {
            return Ok(s.peer().clone());
        }
        let McpTransport::Http { url, credential } = &self.spec.transport else {
            return Err(BackendError::Unavailable(format!(
                "upstream {name}: no URL"
            )));
        };
        let mut config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url.as_str(),
            );
        config.max_json_response_size = self.spec.max_result_bytes.saturating_add(64 * 1024);
        if let Some(c) = credential {
            let name = reqwest::header::HeaderName::from_bytes(c.header.as_bytes())
                .map_err(|e| BackendError::Unavailable(format!("upstream {name}: header: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(
                secrecy::ExposeSecret::expose_secret(&c.value),
            )
            .map_err(|_| {
                BackendError::Unavailable(format!("upstream {name}: unusable credential"))
            })?;
            value.set_sensitive(true);
            config.custom_headers.insert(name, value);
        }
        let transport =
            rmcp::transport::StreamableHttpClientTransport::with_client(http.clone(), config);
        let running = tokio::time::timeout(CONNECT_TIMEOUT, self.client.clone().serve(transport))
            .await
            .map_err(|_| BackendError::Unavailable(format!("upstream {name}: connect timed out")))?
            .map_err(|e| BackendError::Unavailable(format!("upstream {name}: connect: {e}")))?;
        tracing::info!(upstream = %name, url = %url, "MCP upstream connected");
        self.client.stale.store(true, Ordering::SeqCst);
        let peer = running.peer().clone();
        publish.send_replace(Some(peer.clone()));
        *session = Some(running);
        Ok(peer)
    }

    /// The server's tools now, as JSON (MCP `Tool` definitions).
    pub async fn list(&self) -> Result<Vec<Value>, BackendError> {
        if let Some(why) = &self.spec.unusable {
            return Err(BackendError::Unavailable(format!(
                "upstream {}: {why}",
                self.spec.name
            )));
        }
        let peer = self.peer().await?;
        self.list_with(&peer).await
    }

    async fn list_with(&self, peer: &Peer<RoleClient>) -> Result<Vec<Value>, BackendError> {
        let name = &self.spec.name;
        let tools = tokio::time::timeout(self.spec.timeout, peer.list_all_tools())
            .await
            .map_err(|_| {
                BackendError::Unavailable(format!("upstream {name}: tools/list timed out"))
            })?
            .map_err(|e| BackendError::Unavailable(format!("upstream {name}: tools/list: {e}")))?;
        tools
            .iter()
            .map(|t| {
                serde_json::to_value(t).map_err(|e| {
                    BackendError::Unavailable(format!("upstream {name}: a tool definition: {e}"))
                })
            })
            .collect()
    }

    /// A call whose progress notifications are passed on to `to`. The
    /// server hears the session's own progress token (rmcp gives every
    /// request one), never the agent's.
    async fn call_relaying_progress(
        &self,
        peer: &Peer<RoleClient>,
        params: CallToolRequestParams,
        to: &super::Progress,
    ) -> Result<rmcp::model::CallToolResult, rmcp::ServiceError> {
        let mut options = PeerRequestOptions::no_options();
        options.timeout = Some(self.spec.timeout);
        let handle = peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                options,
            )
            .await?;
        let token = handle.progress_token.clone();
        let mut heard = self.client.progress.subscribe(token.clone()).await;
        let to = to.clone();
        let relay = tokio::spawn(async move {
            while let Some(p) = heard.next().await {
                let message = p.message.as_deref().map(super::safe_message);
                to(message.unwrap_or_default(), p.progress, p.total).await;
            }
        });
        let answer = handle.await_response().await;
        self.client.progress.unsubscribe(&token).await;
        // Progress already heard reaches the agent before the result.
        let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
        match answer? {
            ServerResult::CallToolResult(r) => Ok(r),
            _ => Err(rmcp::ServiceError::UnexpectedResponse),
        }
    }

    /// Forgets a broken HTTP session (the next call reconnects).
    async fn drop_session(&self) {
        if let Link::Http {
            session, publish, ..
        } = &self.link
        {
            publish.send_replace(None);
            session.lock().await.take();
        }
    }
}

impl Upstream for Mcp {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn read_only(&self, operation: &str) -> bool {
        self.spec.read_only_tools.iter().any(|t| t == operation)
    }

    fn definition<'a>(
        &'a self,
        operation: &'a str,
    ) -> BoxFuture<'a, Result<Definition, BackendError>> {
        Box::pin(async move {
            let name = &self.spec.name;
            if let Some(why) = &self.spec.unusable {
                return Err(BackendError::Unavailable(format!("upstream {name}: {why}")));
            }
            let peer = self.peer().await?;
            let mut listed = self.listed.lock().await;
            let stale = self.client.stale.swap(false, Ordering::SeqCst);
            let fresh = listed
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < self.spec.tools_refresh);
            if stale || !fresh {
                let by_name = self
                    .list_with(&peer)
                    .await?
                    .into_iter()
                    .filter_map(|t| Some((t.get("name")?.as_str()?.to_owned(), t)))
                    .collect();
                *listed = Some((Instant::now(), by_name));
            }
            Ok(match listed.as_ref().and_then(|(_, t)| t.get(operation)) {
                Some(v) => Definition::Present(v.clone()),
                None => Definition::Absent,
            })
        })
    }

    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Output, BackendError>> {
        Box::pin(async move {
            let name = &self.spec.name;
            if let Some(why) = &self.spec.unusable {
                return Err(BackendError::Unavailable(format!("upstream {name}: {why}")));
            }
            let peer = self.peer().await?;
            let mut params = CallToolRequestParams::new(operation.to_owned());
            if let Value::Object(map) = args {
                params = params.with_arguments(map.clone());
            }
            let answer = tokio::time::timeout(self.spec.timeout, async {
                match actor.progress {
                    None => peer.call_tool(params).await,
                    Some(to) => self.call_relaying_progress(&peer, params, to).await,
                }
            })
            .await;
            let result = match answer {
                Err(_) => {
                    return Err(BackendError::Unavailable(format!(
                        "upstream {name}: `{operation}` timed out after {:?}",
                        self.spec.timeout
                    )));
                }
                Ok(Err(e)) => {
                    // Anything but the server's own answer may have broken
                    // the session: the next call starts a new one.
                    if !matches!(e, rmcp::ServiceError::McpError(_)) {
                        self.drop_session().await;
                    }
                    return Err(BackendError::Unavailable(format!(
                        "upstream {name}: `{operation}`: {e}"
                    )));
                }
                Ok(Ok(r)) => r,
            };
            let size = serde_json::to_vec(&result).map_or(usize::MAX, |v| v.len());
            if size > self.spec.max_result_bytes {
                return Err(BackendError::TooLarge(format!(
                    "upstream {name}: `{operation}` returned {size} bytes (at most {})",
                    self.spec.max_result_bytes
                )));
            }
            Ok(Output::Tool(result))
        })
    }
}

/// Runs a stdio server for as long as the broker runs: start, publish the
/// peer, wait for it to die, back off, start again.
async fn supervise(
    spec: McpSpec,
    client: Client,
    publish: watch::Sender<Option<Peer<RoleClient>>>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match spawn(&spec, client.clone()).await {
            Ok((mut child, running)) => {
                tracing::info!(upstream = %spec.name, pid = child.id(), "MCP upstream started");
                client.stale.store(true, Ordering::SeqCst);
                publish.send_replace(Some(running.peer().clone()));
                let why = tokio::select! {
                    status = child.wait() => format!("exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())),
                    () = closed(&running) => "closed its session".to_owned(),
                };
                publish.send_replace(None);
                tracing::warn!(upstream = %spec.name, why, "MCP upstream stopped; restarting");
                drop(running);
                let _ = child.kill().await;
            }
            Err(e) => {
                tracing::warn!(upstream = %spec.name, error = %e, "MCP upstream could not start");
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once the session has ended.
async fn closed(running: &Session) {
    while !running.is_closed() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the child and completes the MCP handshake with it.
async fn spawn(spec: &McpSpec, client: Client) -> Result<(tokio::process::Child, Session), String> {
    let McpTransport::Stdio {
        command,
        args,
        cwd,
        env,
    } = &spec.transport
    else {
        return Err("not a stdio upstream".into());
    };
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(
            env.iter()
                .map(|(k, v)| (k, secrecy::ExposeSecret::expose_secret(v))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", command.display()))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill().await;
        return Err("no pipes to the child".into());
    };
    if let Some(stderr) = child.stderr.take() {
        let name = spec.name.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line: String = line
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(MAX_LOG_LINE)
                    .collect();
                tracing::info!(upstream = %name, "{line}");
            }
        });
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, client.serve((stdout, stdin))).await {
        Ok(Ok(running)) => Ok((child, running)),
        Ok(Err(e)) => {
            let _ = child.kill().await;
            Err(format!("MCP handshake: {e}"))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err("MCP handshake timed out".into())
        }
    }
}
