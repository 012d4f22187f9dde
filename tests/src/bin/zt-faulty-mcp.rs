//! An MCP server over stdio that misbehaves on demand, for the broker's
//! upstream fault tests. It speaks JSON-RPC by hand (one message per line),
//! so it can send exactly the bytes a broken server would:
//!
//! - `echo {text}`: answers normally;
//! - `crash`: exits in the middle of the call;
//! - `hang`: never answers (and keeps serving other requests);
//! - `garbage`: answers with a line that is not JSON-RPC;
//! - `huge`: answers with a result of `ZT_FAULTY_HUGE_BYTES` (default 2 MiB).
//!
//! With `ZT_FAULTY_TOOLS` naming a file of tool definitions (a JSON array),
//! it also lists those, read again at every `tools/list` (so a test can
//! change a tool under a running broker), and answers a call of one with
//! its arguments as text (and, for a tool that declares an `outputSchema`,
//! as structured content `{"args": ...}`).
//!
//! Every `tools/call` it receives is appended to the file named by
//! `ZT_FAULTY_CALLS` (when set) before it acts, so a test can count how
//! often a call was sent.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

fn tool(name: &str, description: &str, properties: Value) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties},
    })
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let calls = std::env::var_os("ZT_FAULTY_CALLS");
    let extra = std::env::var_os("ZT_FAULTY_TOOLS");
    let extra_tools = || -> Vec<Value> {
        extra
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let huge: usize = std::env::var("ZT_FAULTY_HUGE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 * 1024 * 1024);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = msg.get("id").cloned() else {
            continue; // a notification
        };
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let result = match method {
            "initialize" => json!({
                "protocolVersion": params.get("protocolVersion").cloned().unwrap_or(json!("2025-11-25")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "zt-faulty-mcp", "version": "1"},
            }),
            "ping" => json!({}),
            "tools/list" => {
                let mut tools = vec![
                    tool(
                        "echo",
                        "Echo the text.",
                        json!({"text": {"type": "string"}}),
                    ),
                    tool("crash", "Exit mid-call.", json!({})),
                    tool("hang", "Never answer.", json!({})),
                    tool("garbage", "Answer with garbage.", json!({})),
                    tool("huge", "Answer with a huge result.", json!({})),
                ];
                tools.extend(extra_tools());
                json!({ "tools": tools })
            }
            "tools/call" => {
                let name = params
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(path) = &calls
                    && let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                {
                    let _ = writeln!(f, "{name}");
                }
                match name {
                    "echo" => {
                        let text = params
                            .pointer("/arguments/text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        json!({"content": [{"type": "text", "text": format!("echo: {text}")}]})
                    }
                    "crash" => std::process::exit(3),
                    "hang" => continue,
                    "garbage" => {
                        let _ = writeln!(out, "{{this is not json-rpc");
                        let _ = out.flush();
                        continue;
                    }
                    "huge" => json!({"content": [{"type": "text", "text": "x".repeat(huge)}]}),
                    other
                        if extra_tools()
                            .iter()
                            .any(|t| t.get("name").and_then(Value::as_str) == Some(other)) =>
                    {
                        let args = params.get("arguments").cloned().unwrap_or(Value::Null);
                        let declares_output = extra_tools().iter().any(|t| {
                            t.get("name").and_then(Value::as_str) == Some(other)
                                && t.get("outputSchema").is_some()
                        });
                        let mut r = json!({"content": [{"type": "text", "text": format!("{other}: {args}")}]});
                        if declares_output {
                            r["structuredContent"] = json!({ "args": args });
                        }
                        r
                    }
                    _ => {
                        json!({"content": [{"type": "text", "text": "no such tool"}], "isError": true})
                    }
                }
            }
            _ => {
                let reply = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}});
                let _ = writeln!(out, "{reply}");
                let _ = out.flush();
                continue;
            }
        };
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
}
