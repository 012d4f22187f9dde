//! The scripted agent: a real MCP client that replays a scenario of proposed
//! tool calls against the broker. No model is reachable here, so the demo's
//! "agent" is this; it holds only its session token.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The scenario the demo runs when none is given.
pub const DEMO_SCENARIO: &str = include_str!("../scenarios/demo.toml");

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// The agent's id.
    pub agent: String,
    /// The human it acts for.
    pub human: String,
    /// Steps in order.
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// One proposed tool call and what should come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the agent means to do.
    pub say: String,
    /// Tool name.
    pub tool: String,
    /// Arguments.
    pub args: toml::Table,
    /// ok | denied | awaiting_approval | approval.
    pub expect: String,
}

impl Scenario {
    /// Parses a scenario.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text).context("parsing scenario")?;
        for (i, step) in s.steps.iter().enumerate() {
            if !["ok", "denied", "awaiting_approval", "approval"].contains(&step.expect.as_str()) {
                bail!("step {}: unknown expectation `{}`", i + 1, step.expect);
            }
        }
        Ok(s)
    }
}

/// What happened at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Step number from 1.
    pub step: usize,
    /// Tool.
    pub tool: String,
    /// ok, or the broker's status for an error result (denied, awaiting_approval, error).
    pub status: String,
    /// The text the model received.
    pub text: String,
    /// What the scenario expected.
    pub expect: String,
    /// Milliseconds the call took.
    pub ms: u64,
}

impl Outcome {
    /// Whether the outcome matches the expectation. `approval` means: ok
    /// when `approved` (operators approve), denied when they deny.
    pub fn held(&self, operators_approve: bool) -> bool {
        match self.expect.as_str() {
            "approval" => self.status == if operators_approve { "ok" } else { "denied" },
            e => self.status == e,
        }
    }
}

/// An MCP client session with the broker.
pub type Session = RunningService<RoleClient, ()>;

/// Opens an MCP session with the broker at `broker_url`, presenting `token`
/// as the bearer on every request.
pub async fn connect(broker_url: &str, token: &str) -> anyhow::Result<Session> {
    // HTTP clients use rustls with ring; idempotent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let config = StreamableHttpClientTransportConfig::with_uri(broker_url).auth_header(token);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    ().serve(transport)
        .await
        .with_context(|| format!("connecting to the broker at {broker_url}"))
}

/// `ok`, or the broker's status for an error result (`denied`,
/// `awaiting_approval`, `error`).
pub fn result_status(r: &CallToolResult) -> String {
    if r.is_error == Some(true) {
        r.structured_content
            .as_ref()
            .and_then(|v| v.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned()
    } else {
        "ok".to_owned()
    }
}

/// The text the model received.
pub fn result_text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connects to `broker_url` with `token` and runs every step.
pub async fn run(
    broker_url: &str,
    token: &str,
    scenario: &Scenario,
) -> anyhow::Result<Vec<Outcome>> {
    let client = connect(broker_url, token).await?;
    let tools = client.list_all_tools().await.context("listing tools")?;
    tracing::info!(tools = tools.len(), "connected to the broker");
    let mut out = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let args = match serde_json::to_value(&step.args)? {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let started = Instant::now();
        let result = client
            .call_tool(CallToolRequestParams::new(step.tool.clone()).with_arguments(args))
            .await;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, text) = match result {
            Ok(r) => (result_status(&r), result_text(&r)),
            Err(e) => ("protocol_error".to_owned(), e.to_string()),
        };
        out.push(Outcome {
            step: i + 1,
            tool: step.tool.clone(),
            status,
            text,
            expect: step.expect.clone(),
            ms,
        });
    }
    let _ = client.cancel().await;
    Ok(out)
}
