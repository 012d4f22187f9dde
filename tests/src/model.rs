//! A scripted stand-in for the Anthropic Messages API, so the real Claude
//! Code CLI (and the Agent SDK driving it) can run here, where no model is
//! reachable.
//!
//! It answers the CLI's streaming `POST /v1/messages` with the SSE events the
//! real API sends (`message_start`, `content_block_start` / `_delta`
//! (`text_delta`, `input_json_delta` for a `tool_use`) / `_stop`,
//! `message_delta`, `message_stop`). The reply to a request is the script's
//! turn at the number of assistant messages the conversation already holds,
//! so the CLI's retries and system reminders do not shift the script. Every
//! `tool_result` the CLI sends back is recorded: that is what the model
//! received. A tool use of turn `k` has the id `toolu_zt_<k>`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// One reply of the scripted model.
#[derive(Clone)]
pub enum Turn {
    /// Call `name` (e.g. `mcp__broker__lookup_account`) with `input`.
    Tool {
        /// The tool, as the CLI names it.
        name: String,
        /// Its arguments.
        input: Value,
    },
    /// Call `mcp__broker__approval_status` on the request id the latest tool
    /// result named, once `gate` has a permit (the test adds one when an
    /// operator has decided).
    FollowUp {
        /// Released by the test.
        gate: Arc<Semaphore>,
    },
    /// Say something and end the turn.
    Text(String),
}

impl Turn {
    /// A broker tool call: `tool` is the broker's name for it.
    pub fn broker(tool: &str, input: Value) -> Turn {
        Turn::Tool {
            name: format!("mcp__broker__{tool}"),
            input,
        }
    }
}

/// A tool result the model received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `toolu_zt_<turn>`.
    pub tool_use_id: String,
    /// Its text (text blocks joined).
    pub text: String,
    /// Whether the CLI flagged it as an error.
    pub is_error: bool,
}

#[derive(Default)]
struct Seen {
    results: Vec<Received>,
    paths: Vec<String>,
}

struct Shared {
    script: Vec<Turn>,
    seen: Mutex<Seen>,
}

/// The running stand-in; stops when dropped.
pub struct Model {
    /// For `ANTHROPIC_BASE_URL`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Model {
    /// Serves `script` on a loopback port.
    pub fn start(script: Vec<Turn>) -> Model {
        let shared = Arc::new(Shared {
            script,
            seen: Mutex::new(Seen::default()),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let _ = addr_tx.send(listener.local_addr().expect("address"));
                let app = Router::new().fallback(answer).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv().expect("stand-in starts");
        Model {
            url: format!("http://{addr}"),
            shared,
            stop: Some(stop_tx),
        }
    }

    /// Every tool result received so far, in the order first seen.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .seen
            .lock()
            .map(|s| s.results.clone())
            .unwrap_or_default()
    }

    /// The result of the tool use of turn `turn`, once received.
    pub fn result_of(&self, turn: usize) -> Option<Received> {
        let id = tool_use_id(turn);
        self.received().into_iter().find(|r| r.tool_use_id == id)
    }

    /// Waits up to `secs` for the result of turn `turn`.
    pub fn wait_result(&self, turn: usize, secs: u64) -> Option<Received> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(r) = self.result_of(turn) {
                return Some(r);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The paths of every request the CLI made.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .map(|s| s.paths.clone())
            .unwrap_or_default()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The id of turn `turn`'s tool use.
pub fn tool_use_id(turn: usize) -> String {
    format!("toolu_zt_{turn}")
}

/// The first `req_` + 32 lowercase hex digits in `text`.
pub fn request_id_in(text: &str) -> Option<String> {
    text.match_indices("req_").find_map(|(i, _)| {
        let id = text.get(i..i + 36)?;
        id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then(|| id.to_owned())
    })
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn answer(State(shared): State<Arc<Shared>>, uri: Uri, body: axum::body::Bytes) -> Response {
    let path = uri.path().to_owned();
    if let Ok(mut seen) = shared.seen.lock() {
        seen.paths.push(uri.to_string());
    }
    if path != "/v1/messages" {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return plain(StatusCode::BAD_REQUEST, "not JSON");
    };
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut latest = String::new();
    if let Ok(mut seen) = shared.seen.lock() {
        for block in messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        {
            let id = block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let text = block.get("content").map(text_of).unwrap_or_default();
            latest = text.clone();
            if !seen.results.iter().any(|r| r.tool_use_id == id) {
                seen.results.push(Received {
                    tool_use_id: id,
                    text,
                    is_error: block.get("is_error").and_then(Value::as_bool) == Some(true),
                });
            }
        }
    }
    let turn = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count();
    let step = shared
        .script
        .get(turn)
        .cloned()
        .unwrap_or_else(|| Turn::Text("Done.".into()));
    let (name, input) = match step {
        Turn::Text(text) => return sse(turn, None, &text),
        Turn::Tool { name, input } => (name, input),
        Turn::FollowUp { gate } => {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            let id = request_id_in(&latest).unwrap_or_default();
            (
                "mcp__broker__approval_status".to_owned(),
                json!({ "request_id": id }),
            )
        }
    };
    sse(turn, Some(&name), &input.to_string())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    Response::builder()
        .status(status)
        .body(Body::from(text))
        .unwrap_or_default()
}

/// One assistant message as SSE: a tool use named `tool` with `payload` as
/// its JSON input, or a text block `payload`.
fn sse(turn: usize, tool: Option<&str>, payload: &str) -> Response {
    let (block, delta, stop) = match tool {
        Some(name) => (
            json!({ "type": "tool_use", "id": tool_use_id(turn), "name": name, "input": {} }),
            json!({ "type": "input_json_delta", "partial_json": payload }),
            "tool_use",
        ),
        None => (
            json!({ "type": "text", "text": "" }),
            json!({ "type": "text_delta", "text": payload }),
            "end_turn",
        ),
    };
    let events = [
        (
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": format!("msg_zt_{turn}"), "type": "message", "role": "assistant",
                "model": "claude-stand-in", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": { "input_tokens": 10, "output_tokens": 1 } } }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": block }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        (
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": stop, "stop_sequence": null },
                    "usage": { "output_tokens": 5 } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::request_id_in;

    #[test]
    fn finds_request_ids() {
        let id = format!("req_{}", "3f".repeat(16));
        assert_eq!(
            request_id_in(&format!("awaiting approval {id}: wait")),
            Some(id)
        );
        assert_eq!(request_id_in("req_short"), None);
    }
}
