//! A team's own MCP server behind the broker, added with data files only:
//! the official `@modelcontextprotocol/server-filesystem` (npm, pinned and
//! installed by `scripts/test`; `ZT_MCP_FILESYSTEM` names its entry point)
//! over stdio, as the broker's own child, with a Cedar policy on its `path`
//! argument: reads only under one directory, writes escalate to an
//! operator, everything else denied — through the broker, the hook and an
//! operator's approval.

use std::io::Write;
use std::path::{Path, PathBuf};

use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use zt_tests::{Stack, bin, call, connect, prepare_dir, status, text};

/// The server's entry point; the suite fails (never skips) without it.
fn filesystem_server() -> PathBuf {
    let path = std::env::var_os("ZT_MCP_FILESYSTEM").map(PathBuf::from).expect(
        "ZT_MCP_FILESYSTEM must name server-filesystem's dist/index.js (./scripts/test installs it)",
    );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// `node`, as an absolute path: the child gets no PATH of the broker's.
fn node() -> PathBuf {
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .expect("sh");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_absolute(), "node is not on PATH");
    path
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// Puts the filesystem server behind the broker of `dir`, serving `root`:
/// the upstream (private), three tools, their Cedar actions and rules.
fn add_files_upstream(dir: &Path, root: &Path) {
    let root = root.to_string_lossy();
    append(
        &dir.join("broker").join("upstreams.toml"),
        &format!(
            "[[upstream]]\nname = \"files\"\nkind = \"mcp\"\ncommand = {node:?}\n\
             args = [{server:?}, {root:?}]\nenv = {{ NODE_ENV = \"production\" }}\ntimeout_secs = 20\n",
            node = node().to_string_lossy(),
            server = filesystem_server().to_string_lossy(),
        ),
    );
    let policies = dir.join("policies");
    append(
        &policies.join("tools.toml"),
        r#"
[[tool]]
name = "read_text_file"
title = "Read a shared document"
description = "Read a text file of the shared documents, by absolute path."
risk = "low"
read_only = true
destructive = false
resource = "File"
resource_arg = "path"
upstream = "files"

[tool.resource_attrs]
path = { arg = "path", as = "path" }

[tool.input_schema]
type = "object"
additionalProperties = false
required = ["path"]

[tool.input_schema.properties.path]
type = "string"
maxLength = 4096

[tool.input_schema.properties.head]
type = "integer"
minimum = 1
maximum = 10000

[[tool]]
name = "list_shared"
title = "List a shared directory"
description = "List a directory of the shared documents."
risk = "low"
read_only = true
destructive = false
resource = "File"
resource_arg = "path"
upstream = "files"
operation = "list_directory"

[tool.resource_attrs]
path = { arg = "path", as = "path" }

[tool.input_schema]
type = "object"
additionalProperties = false
required = ["path"]

[tool.input_schema.properties.path]
type = "string"
maxLength = 4096

[[tool]]
name = "write_file"
title = "Write a shared document"
description = "Create or overwrite a text file of the shared documents."
risk = "high"
read_only = false
destructive = true
resource = "File"
resource_arg = "path"
upstream = "files"

[tool.resource_attrs]
path = { arg = "path", as = "path" }
dir = { arg = "path", as = "dirname" }

[tool.input_schema]
type = "object"
additionalProperties = false
required = ["path", "content"]

[tool.input_schema.properties.path]
type = "string"
maxLength = 4096

[tool.input_schema.properties.content]
type = "string"
maxLength = 100000
"#,
    );
    append(
        &policies.join("schema.cedarschema"),
        r#"
entity File = {
  path?: String,
  dir?: String,
};

action read_text_file appliesTo {
  principal: Agent,
  resource: File,
  context: { args: { path: String, head?: Long } },
};

action list_shared appliesTo {
  principal: Agent,
  resource: File,
  context: { args: { path: String } },
};

action write_file appliesTo {
  principal: Agent,
  resource: File,
  context: { args: { path: String, content: String } },
};
"#,
    );
    append(
        &policies.join("policy.cedar"),
        &format!(
            r#"
@id("files-read-docs")
@reason("reading the shared documents")
permit (principal, action in [Action::"read_text_file", Action::"list_shared"], resource is File)
when {{ resource has path && (resource.path == "{root}/docs" || resource.path like "{root}/docs/*") }};

@id("files-write-docs")
@effect("escalate")
@reason("writing a shared document needs an operator's approval")
@model_message("Writing this document needs approval from a support lead.")
permit (principal, action == Action::"write_file", resource is File)
when {{ resource has dir && resource.dir == "{root}/docs" }};
"#
        ),
    );
}

fn hook(stack: &Stack, token: &str, tool: &str, input: Value) -> String {
    let out = stack.hook(token, tool, &input);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(r: &CallToolResult, why: &str) {
    assert_eq!(r.is_error, Some(true), "{}", text(r));
    assert!(text(r).contains(why), "{}", text(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_stdio_goes_behind_the_broker_with_data_files_only() {
    let dir = prepare_dir("upstreams", 1, false);
    let root = dir.join("files");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("secret")).unwrap();
    std::fs::write(root.join("docs").join("readme.txt"), "hello from docs\n").unwrap();
    std::fs::write(root.join("secret").join("creds.txt"), "top secret\n").unwrap();
    let root = root.canonicalize().unwrap();
    let r = root.to_string_lossy().into_owned();
    add_files_upstream(&dir, &root);
    let check = bin("zt-policy")
        .args(["check"])
        .arg(dir.join("policies"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let stack = Stack::up_at(&dir).expect("stack starts");
    let token = stack.session_token("agent:files", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    let listed: Vec<String> = agent
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for tool in [
        "read_text_file",
        "list_shared",
        "write_file",
        "lookup_account",
    ] {
        assert!(listed.iter().any(|t| t == tool), "{tool} in {listed:?}");
    }

    // Reads under docs/ reach the server (its own result, passed on); the
    // example's tools keep working beside it.
    let read = call(
        &agent,
        "read_text_file",
        json!({"path": format!("{r}/docs/readme.txt")}),
    )
    .await
    .unwrap();
    assert_ne!(read.is_error, Some(true), "{}", text(&read));
    assert!(text(&read).contains("hello from docs"), "{}", text(&read));
    let listing = call(&agent, "list_shared", json!({"path": format!("{r}/docs")}))
        .await
        .unwrap();
    assert!(text(&listing).contains("readme.txt"), "{}", text(&listing));
    let account = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&account), "ok", "{}", text(&account));

    // Outside docs/: default deny; a path that climbs out: refused before
    // the policy; a relative one too. None reaches the server.
    for path in [
        format!("{r}/secret/creds.txt"),
        format!("{r}/docs/../secret/creds.txt"),
        "secret/creds.txt".to_owned(),
        format!("{r}//docs/readme.txt"),
    ] {
        let denied = call(&agent, "read_text_file", json!({"path": path}))
            .await
            .unwrap();
        assert_eq!(denied.is_error, Some(true), "{path}: {}", text(&denied));
        assert!(!text(&denied).contains("top secret"), "{path}");
    }
    refused(
        &call(
            &agent,
            "read_text_file",
            json!({"path": format!("{r}/docs/../secret/creds.txt")}),
        )
        .await
        .unwrap(),
        "normal form",
    );
    refused(
        &call(
            &agent,
            "read_text_file",
            json!({"path": format!("{r}/docs/readme.txt"), "mode": "x"}),
        )
        .await
        .unwrap(),
        "invalid arguments",
    );

    // The hook decides the same from the public files alone.
    assert!(
        hook(
            &stack,
            &token,
            "read_text_file",
            json!({"path": format!("{r}/docs/readme.txt")})
        )
        .contains(r#""permissionDecision":"allow""#)
    );
    assert!(
        hook(
            &stack,
            &token,
            "read_text_file",
            json!({"path": format!("{r}/secret/creds.txt")})
        )
        .contains(r#""permissionDecision":"deny""#)
    );

    // A write escalates; nothing is written until carol approves; then it
    // runs once, on the server.
    let target = root.join("docs").join("note.txt");
    let w = call(
        &agent,
        "write_file",
        json!({"path": target.to_string_lossy(), "content": "approved text"}),
    )
    .await
    .unwrap();
    assert_eq!(status(&w), "awaiting_approval", "{}", text(&w));
    let id = w.structured_content.as_ref().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!target.exists());
    let carol = stack.operator_token("carol", "approver", 0);
    let out = stack.console(&carol, &["approve", &id, "--reason", "doc update"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = call(&agent, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    assert_ne!(done.is_error, Some(true), "{}", text(&done));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "approved text");
    let denied = call(
        &agent,
        "write_file",
        json!({"path": format!("{r}/secret/x.txt"), "content": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(denied.is_error, Some(true), "{}", text(&denied));
    assert!(!root.join("secret").join("x.txt").exists());

    // Every decision is in the trail, which verifies.
    drop(agent);
    let d = stack.stop_keep();
    let out = bin("zt-console")
        .args(["audit", "verify", "--no-state", "--data-dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// One tool of the faulty server (no resource argument: the resource is
/// the tool itself).
fn probe_tool(name: &str, upstream: &str, operation: &str, read_only: bool) -> String {
    format!(
        r#"
[[tool]]
name = "{name}"
title = "Probe {name}"
description = "A probe of the upstream fault handling."
risk = "low"
read_only = {read_only}
destructive = false
resource = "Probe"
upstream = "{upstream}"
operation = "{operation}"

[tool.input_schema]
type = "object"
additionalProperties = false

[tool.input_schema.properties.text]
type = "string"
maxLength = 100
"#
    )
}

/// Every way an upstream can fail — down, dying mid-call, hanging, talking
/// garbage, answering too much, not declared at all — gives the model a
/// short safe error and an audited error entry, sends the call once and
/// never again, and leaves the broker serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_fails_closed_and_the_broker_stays_healthy() {
    let dir = prepare_dir("upstream-faults", 1, false);
    let calls = dir.join("faulty-calls.txt");
    let faulty = zt_tests::bin_dir().join("zt-faulty-mcp");
    assert!(faulty.is_file(), "{}", faulty.display());
    append(
        &dir.join("broker").join("upstreams.toml"),
        &format!(
            "[[upstream]]\nname = \"faulty\"\nkind = \"mcp\"\ncommand = {faulty:?}\n\
             env = {{ ZT_FAULTY_CALLS = {calls:?} }}\nsecret_env = {{ FAULTY_TOKEN = \"faulty.token\" }}\n\
             timeout_secs = 2\nmax_result_bytes = 1048576\n\n\
             [[upstream]]\nname = \"down\"\nkind = \"mcp\"\ncommand = \"/bin/false\"\ntimeout_secs = 2\n",
            faulty = faulty.to_string_lossy(),
            calls = calls.to_string_lossy(),
        ),
    );
    let policies = dir.join("policies");
    let tools = [
        ("echo", "faulty", "echo", true),
        ("crash", "faulty", "crash", false),
        ("hang", "faulty", "hang", false),
        ("garbage", "faulty", "garbage", true),
        ("huge", "faulty", "huge", true),
        ("down_echo", "down", "echo", true),
        ("ghost", "nowhere", "echo", true),
    ];
    let mut registry = String::new();
    let mut schema = String::from("\nentity Probe;\n");
    for (name, upstream, operation, read_only) in tools {
        registry.push_str(&probe_tool(name, upstream, operation, read_only));
        schema.push_str(&format!(
            "action {name} appliesTo {{ principal: Agent, resource: Probe, context: {{ args: {{ text?: String }} }} }};\n"
        ));
    }
    append(&policies.join("tools.toml"), &registry);
    append(&policies.join("schema.cedarschema"), &schema);
    let actions: Vec<String> = tools
        .iter()
        .map(|(name, ..)| format!("Action::\"{name}\""))
        .collect();
    append(
        &policies.join("policy.cedar"),
        &format!(
            "\n@id(\"probes\")\npermit (principal, action in [{}], resource is Probe);\n",
            actions.join(", ")
        ),
    );
    // A secret of the broker's, handed to this upstream.
    const SECRET: &str = "zt-upstream-secret-4242";
    std::fs::write(dir.join("broker").join("faulty.token"), SECRET).unwrap();
    let stack = Stack::up_at(&dir).expect("stack starts");
    let agent = connect(
        &stack.broker_url,
        &stack.session_token("agent:faults", "alice"),
    )
    .await
    .unwrap();
    let echo = || async {
        let r = call(&agent, "echo", json!({"text": "still here"}))
            .await
            .unwrap();
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("echo: still here"), "{}", text(&r));
    };
    echo().await;

    // A result carrying the broker's own secret and a token-shaped string:
    // both cut before the model sees them; the audit entry says what was
    // cut, never the text.
    let token_shaped = format!("ghp_{}", "a1".repeat(18));
    let r = call(
        &agent,
        "echo",
        json!({"text": format!("the key is {SECRET} and {token_shaped}")}),
    )
    .await
    .unwrap();
    let shown = text(&r);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains(&token_shaped), "{shown}");
    assert!(shown.contains("[redacted: broker-credential]"), "{shown}");
    assert!(shown.contains("[redacted: github-token]"), "{shown}");

    for (tool, says) in [
        ("crash", "could not complete"),
        ("hang", "could not complete"),
        ("garbage", "could not complete"),
        ("huge", "too large"),
        ("down_echo", "could not complete"),
        ("ghost", "could not complete"),
    ] {
        let started = std::time::Instant::now();
        let r = call(&agent, tool, json!({})).await.unwrap();
        assert_eq!(r.is_error, Some(true), "{tool}: {}", text(&r));
        let shown = text(&r);
        assert!(shown.contains(says), "{tool}: {shown}");
        for internal in [
            "faulty",
            "zt-faulty-mcp",
            "/bin/false",
            "nowhere",
            "timed out",
        ] {
            assert!(
                !shown.contains(internal),
                "{tool} leaked `{internal}`: {shown}"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{tool} took {:?}",
            started.elapsed()
        );
        // The broker, and the server unless it died, keep serving.
        echo().await;
    }

    // Each failing call reached the server once: nothing was retried.
    let sent = std::fs::read_to_string(&calls).unwrap();
    for tool in ["crash", "hang", "garbage", "huge"] {
        assert_eq!(
            sent.lines().filter(|l| *l == tool).count(),
            1,
            "{tool} sent once: {sent}"
        );
    }
    let d = stack.stop_keep();
    let bodies = zt_tests::audit_bodies(&d, "broker").await;
    for tool in ["crash", "hang", "garbage", "huge", "down_echo", "ghost"] {
        assert!(
            bodies
                .iter()
                .any(|b| b.contains(&format!("\"tool\":\"{tool}\""))
                    && b.contains("\"status\":\"error\"")),
            "{tool}: an audited error"
        );
    }
    let redacted: Vec<&String> = bodies
        .iter()
        .filter(|b| b.contains("\"kind\":\"result\"") && b.contains("redacted"))
        .collect();
    assert_eq!(redacted.len(), 1, "{redacted:?}");
    // (The arguments are the agent's own and recorded as sent.)
    let entry: Value = serde_json::from_str(redacted[0]).unwrap();
    let detail = entry["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("redacted 1 broker-credential, 1 github-token")
            && detail.contains("result sha256:")
            && !detail.contains(SECRET),
        "{detail}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The official `@modelcontextprotocol/server-everything` (npm, pinned;
/// `ZT_MCP_EVERYTHING` names its entry point) serving Streamable HTTP on
/// `port`; killed when dropped.
struct Everything(std::process::Child);

impl Everything {
    fn start(port: u16) -> Everything {
        let server = std::env::var_os("ZT_MCP_EVERYTHING").map(PathBuf::from).expect(
            "ZT_MCP_EVERYTHING must name server-everything's dist/index.js (./scripts/test installs it)",
        );
        assert!(server.is_file(), "{} is missing", server.display());
        let child = std::process::Command::new(node())
            .arg(server)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting server-everything");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "server-everything did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Everything(child)
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An MCP server over Streamable HTTP behind the broker: text, binary
/// (image) and structured results passed on, the upstream's own errors
/// passed on as errors, tool names the registry cannot use mapped by
/// `operation`, and a server that goes away and comes back reconnected to
/// on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_streamable_http_goes_behind_the_broker() {
    let dir = prepare_dir("upstream-http", 1, false);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let everything = Everything::start(port);
    std::fs::write(
        dir.join("broker").join("everything.token"),
        "upstream-own-secret\n",
    )
    .unwrap();
    append(
        &dir.join("broker").join("upstreams.toml"),
        &format!(
            "[[upstream]]\nname = \"everything\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
             credential = {{ prefix = \"Bearer \", secret_file = \"everything.token\" }}\ntimeout_secs = 10\n"
        ),
    );
    let tool = |name: &str, op: &str, props: &str, required: &str| {
        format!(
            "\n[[tool]]\nname = \"{name}\"\ntitle = \"{name}\"\ndescription = \"server-everything's {op}\"\n\
             risk = \"low\"\nread_only = true\ndestructive = false\nresource = \"Probe\"\n\
             upstream = \"everything\"\noperation = \"{op}\"\n\n[tool.input_schema]\ntype = \"object\"\n\
             additionalProperties = false\nrequired = [{required}]\n{props}"
        )
    };
    let policies = dir.join("policies");
    append(
        &policies.join("tools.toml"),
        &[
            tool(
                "say",
                "echo",
                "[tool.input_schema.properties.message]\ntype = \"string\"\nmaxLength = 200\n",
                "\"message\"",
            ),
            tool(
                "add",
                "get-sum",
                "[tool.input_schema.properties.a]\ntype = \"integer\"\n[tool.input_schema.properties.b]\ntype = \"integer\"\n",
                "\"a\", \"b\"",
            ),
            tool(
                "add_words",
                "get-sum",
                "[tool.input_schema.properties.a]\ntype = \"string\"\nmaxLength = 10\n[tool.input_schema.properties.b]\ntype = \"string\"\nmaxLength = 10\n",
                "\"a\", \"b\"",
            ),
            tool("tiny_image", "get-tiny-image", "", ""),
            tool(
                "long_op",
                "trigger-long-running-operation",
                "[tool.input_schema.properties.duration]\ntype = \"integer\"\nminimum = 1\nmaximum = 3\n\
                 [tool.input_schema.properties.steps]\ntype = \"integer\"\nminimum = 1\nmaximum = 5\n",
                "\"duration\", \"steps\"",
            ),
            tool(
                "weather",
                "get-structured-content",
                "[tool.input_schema.properties.location]\ntype = \"string\"\nenum = [\"Chicago\"]\n",
                "\"location\"",
            ),
        ]
        .concat(),
    );
    append(
        &policies.join("schema.cedarschema"),
        "\nentity Probe;\n\
         action say appliesTo { principal: Agent, resource: Probe, context: { args: { message: String } } };\n\
         action add appliesTo { principal: Agent, resource: Probe, context: { args: { a: Long, b: Long } } };\n\
         action add_words appliesTo { principal: Agent, resource: Probe, context: { args: { a: String, b: String } } };\n\
         action tiny_image appliesTo { principal: Agent, resource: Probe, context: { args: {} } };\n\
         action weather appliesTo { principal: Agent, resource: Probe, context: { args: { location: String } } };\n\
         action long_op appliesTo { principal: Agent, resource: Probe, context: { args: { duration: Long, steps: Long } } };\n",
    );
    append(
        &policies.join("policy.cedar"),
        "\n@id(\"everything\")\npermit (principal, action in [Action::\"say\", Action::\"add\", \
         Action::\"add_words\", Action::\"tiny_image\", Action::\"weather\", Action::\"long_op\"], \
         resource is Probe);\n",
    );
    let stack = Stack::up_at(&dir).expect("stack starts");
    let agent = connect(
        &stack.broker_url,
        &stack.session_token("agent:http", "alice"),
    )
    .await
    .unwrap();

    let r = call(&agent, "say", json!({"message": "over http"}))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("over http"), "{}", text(&r));
    let r = call(&agent, "add", json!({"a": 2, "b": 3})).await.unwrap();
    assert!(text(&r).contains('5'), "{}", text(&r));
    let r = call(&agent, "tiny_image", json!({})).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let image = r
        .content
        .iter()
        .find_map(|c| c.as_image())
        .expect("an image block passed on");
    assert_eq!(image.mime_type, "image/png");
    assert!(!image.data.is_empty());
    let r = call(&agent, "weather", json!({"location": "Chicago"}))
        .await
        .unwrap();
    let structured = r.structured_content.clone().unwrap_or(Value::Null);
    assert!(structured.get("temperature").is_some(), "{structured}");
    // The upstream refuses what its own schema refuses: an error, passed on.
    let r = call(&agent, "add_words", json!({"a": "two", "b": "three"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{}", text(&r));

    // The agent asks for progress: the server's progress reaches it under
    // the agent's own token, before the result.
    let session = stack.session_token("agent:http", "alice");
    let request = json!({
        "jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {
            "name": "long_op",
            "arguments": {"duration": 1, "steps": 3},
            "_meta": {"progressToken": "agent-token-1"}
        }
    })
    .to_string();
    let raw = zt_tests::raw_post(&stack.broker_url, Some(&session), &request).await;
    assert_eq!(raw.status, 200, "{}", raw.body);
    let notes = raw.body.matches("notifications/progress").count();
    assert_eq!(notes, 3, "{}", raw.body);
    assert_eq!(
        raw.body
            .matches("\"progressToken\":\"agent-token-1\"")
            .count(),
        3,
        "each under the agent's own token: {}",
        raw.body
    );
    let first = raw.body.find("notifications/progress").unwrap();
    let result = raw
        .body
        .rfind("Long running operation completed")
        .expect("the result");
    assert!(result > first, "{}", raw.body);

    // The server goes away: a short error; it comes back: served again.
    drop(everything);
    let r = call(&agent, "say", json!({"message": "anyone?"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("could not complete"), "{}", text(&r));
    let _everything = Everything::start(port);
    let r = call(&agent, "say", json!({"message": "back"}))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("back"), "{}", text(&r));
}

/// `zt-test-api` on a free port: its child and base URL; killed on drop.
struct TestApi(std::process::Child, String);

impl TestApi {
    fn start() -> TestApi {
        use std::io::BufRead;
        let mut child = std::process::Command::new(zt_tests::bin_dir().join("zt-test-api"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting zt-test-api");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("a line").expect("readable");
            if let Some(u) = line.strip_prefix("api_url=") {
                break u.to_owned();
            }
        };
        TestApi(child, url)
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A REST/JSON API behind the broker as data: path arguments encoded as
/// one segment each, bodies built from arguments and the actor, the
/// upstream's credential injected (a wrong one is the operator's problem,
/// not the model's), 4xx as a safe refusal, 5xx, redirects, timeouts,
/// oversize and non-JSON answers as "could not complete", a side effect
/// never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_api_goes_behind_the_broker_as_data() {
    let api = TestApi::start();
    let dir = prepare_dir("upstream-rest", 1, false);
    let broker = dir.join("broker");
    std::fs::write(broker.join("api.key"), "api-secret\n").unwrap();
    std::fs::write(broker.join("wrong.key"), "not-the-secret\n").unwrap();
    let operations = r#"
[[upstream.operation]]
name = "get_item"
method = "GET"
path = "/v1/items/{id}"

[[upstream.operation]]
name = "create_item"
method = "POST"
path = "/v1/items"
body = { name = "$args.name", tags = "$args.tags", by = "$actor.human", session = "$actor.session", kind = "$$literal" }
result = "/received"

[[upstream.operation]]
name = "refuse"
method = "GET"
path = "/v1/refuse"
error_message = "/error/message"

[[upstream.operation]]
name = "boom"
method = "POST"
path = "/v1/boom"
body = {}

[[upstream.operation]]
name = "big"
method = "GET"
path = "/v1/big"

[[upstream.operation]]
name = "redirect"
method = "GET"
path = "/v1/redirect"

[[upstream.operation]]
name = "slow"
method = "GET"
path = "/v1/slow"

[[upstream.operation]]
name = "notjson"
method = "GET"
path = "/v1/notjson"
"#;
    append(
        &broker.join("upstreams.toml"),
        &format!(
            "[[upstream]]\nname = \"api\"\nkind = \"http\"\nurl = \"{url}\"\n\
             credential = {{ prefix = \"Bearer \", secret_file = \"api.key\" }}\n\
             timeout_secs = 2\n{operations}\n\
             [[upstream]]\nname = \"api_wrong_key\"\nkind = \"http\"\nurl = \"{url}\"\n\
             credential = {{ prefix = \"Bearer \", secret_file = \"wrong.key\" }}\n\
             [[upstream.operation]]\nname = \"get_item\"\nmethod = \"GET\"\npath = \"/v1/items/{{id}}\"\n",
            url = api.1
        ),
    );
    let tools = [
        ("get_item", "api", "get_item", "id"),
        ("create_item", "api", "create_item", "name"),
        ("refuse", "api", "refuse", ""),
        ("boom", "api", "boom", ""),
        ("big", "api", "big", ""),
        ("redirect", "api", "redirect", ""),
        ("slow", "api", "slow", ""),
        ("notjson", "api", "notjson", ""),
        ("get_item_wrong_key", "api_wrong_key", "get_item", "id"),
    ];
    let mut registry = String::new();
    let mut schema = String::from("\nentity Probe;\n");
    for (name, upstream, operation, arg) in tools {
        let (props, required, ctx) = match arg {
            "" => (String::new(), String::new(), String::new()),
            "name" => (
                "[tool.input_schema.properties.name]\ntype = \"string\"\nmaxLength = 50\n\
                 [tool.input_schema.properties.tags]\ntype = \"array\"\nitems = { type = \"string\", maxLength = 20 }\nmaxItems = 5\n"
                    .to_owned(),
                "required = [\"name\"]\n".to_owned(),
                "name: String, tags?: Set<String>".to_owned(),
            ),
            a => (
                format!("[tool.input_schema.properties.{a}]\ntype = \"string\"\nmaxLength = 50\n"),
                format!("required = [\"{a}\"]\n"),
                format!("{a}: String"),
            ),
        };
        registry.push_str(&format!(
            "\n[[tool]]\nname = \"{name}\"\ntitle = \"{name}\"\ndescription = \"The test API's {operation}.\"\n\
             risk = \"low\"\nread_only = false\ndestructive = false\nresource = \"Probe\"\n\
             upstream = \"{upstream}\"\noperation = \"{operation}\"\n\n[tool.input_schema]\ntype = \"object\"\n\
             additionalProperties = false\n{required}{props}"
        ));
        schema.push_str(&format!(
            "action {name} appliesTo {{ principal: Agent, resource: Probe, context: {{ args: {{ {ctx} }} }} }};\n"
        ));
    }
    let policies = dir.join("policies");
    append(&policies.join("tools.toml"), &registry);
    append(&policies.join("schema.cedarschema"), &schema);
    let actions: Vec<String> = tools
        .iter()
        .map(|(name, ..)| format!("Action::\"{name}\""))
        .collect();
    append(
        &policies.join("policy.cedar"),
        &format!(
            "\n@id(\"test-api\")\npermit (principal, action in [{}], resource is Probe);\n",
            actions.join(", ")
        ),
    );
    let stack = Stack::up_at(&dir).expect("stack starts");
    let token = stack.session_token("agent:rest", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    let ok = |r: &CallToolResult| -> Value {
        assert_ne!(r.is_error, Some(true), "{}", text(r));
        r.structured_content.clone().unwrap_or(Value::Null)
    };

    // A path argument is one segment, however it is spelled.
    for (id, raw) in [
        ("a b", "/v1/items/a%20b"),
        ("x/../../admin", "/v1/items/x%2F..%2F..%2Fadmin"),
        ("q?x=1#f", "/v1/items/q%3Fx%3D1%23f"),
    ] {
        let v = ok(&call(&agent, "get_item", json!({"id": id})).await.unwrap());
        assert_eq!(v["raw_path"], raw, "{v}");
        assert_eq!(v["id"], id, "{v}");
    }
    refused(
        &call(&agent, "get_item", json!({"id": ".."})).await.unwrap(),
        "could not complete",
    );
    // The body from the arguments and the actor; absent arguments left out.
    let v = ok(&call(&agent, "create_item", json!({"name": "widget"}))
        .await
        .unwrap());
    assert_eq!(
        v,
        json!({"name": "widget", "by": "alice", "session": zt_tests::sid_of(&token), "kind": "$literal"})
    );
    // A 4xx is the API's refusal, as one safe line.
    refused(
        &call(&agent, "refuse", json!({})).await.unwrap(),
        "item is locked by someone",
    );
    for (tool, says) in [
        ("boom", "could not complete"),
        ("big", "too large"),
        ("redirect", "could not complete"),
        ("slow", "could not complete"),
        ("notjson", "could not complete"),
    ] {
        let r = call(&agent, tool, json!({})).await.unwrap();
        refused(&r, says);
        assert!(!text(&r).contains("127.0.0.1"), "{tool}: {}", text(&r));
    }
    let r = call(&agent, "get_item_wrong_key", json!({"id": "a"}))
        .await
        .unwrap();
    refused(&r, "could not complete");
    assert!(!text(&r).contains("bad key"), "{}", text(&r));
    // The failed POST reached the API once: never retried.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let count: Value = reqwest::get(format!("{}/count", api.1))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["boom"], 1, "{count}");
    ok(&call(&agent, "get_item", json!({"id": "still-here"}))
        .await
        .unwrap());
}

/// A team's own database behind the broker as a `sql` upstream: a lookup
/// fetches the attribute the policy decides on, the read is answered by the
/// same query, arguments are bound (an injection finds nothing), a query
/// returning too many rows is refused, and nothing can be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_goes_behind_the_broker_as_data() {
    let dir = prepare_dir("upstream-sql", 1, false);
    let broker = dir.join("broker");
    // The team's database, written by the team (not by the broker).
    let db_path = broker.join("crm.db");
    {
        let db = zt_proto::db::Db::open(
            &zt_proto::db::Location::File(db_path.clone()),
            "public",
            false,
        )
        .await
        .unwrap();
        let zt_proto::db::Db::Sqlite(pool) = &db else {
            panic!("an SQLite file");
        };
        for stmt in [
            "CREATE TABLE customers (id TEXT PRIMARY KEY, region TEXT NOT NULL, tier TEXT NOT NULL, \
             vip INTEGER NOT NULL, score REAL NOT NULL, notes TEXT)",
            "INSERT INTO customers VALUES ('c_1', 'eu', 'gold', 1, 4.5, NULL), \
             ('c_2', 'apac', 'silver', 0, 3.0, 'x')",
            "CREATE TABLE visits (customer_id TEXT, at INTEGER)",
            "INSERT INTO visits SELECT 'c_1', value FROM json_each('[1,2,3,4,5,6]')",
        ] {
            sqlx::query(stmt).execute(pool).await.unwrap();
        }
        db.close().await;
    }
    append(
        &broker.join("upstreams.toml"),
        r#"
[[upstream]]
name = "crm"
kind = "sql"
database = "crm.db"
max_rows = 5

[[upstream.query]]
name = "customer"
sql = "SELECT id AS customer_id, region, tier, vip, score, notes FROM customers WHERE id = $1"
params = ["$args.customer_id"]
not_found = "customer {customer_id}"

[[upstream.query]]
name = "visits"
sql = "SELECT at FROM visits WHERE customer_id = $1 ORDER BY at"
params = ["$args.customer_id"]
rows = "many"
result = { customer_id = "$args.customer_id", visits = "$result" }
"#,
    );
    let policies = dir.join("policies");
    let tool = |name: &str, op: &str| {
        format!(
            "\n[[tool]]\nname = \"{name}\"\ntitle = \"{name}\"\ndescription = \"The CRM's {op}.\"\n\
             risk = \"low\"\nread_only = true\ndestructive = false\nresource = \"Customer\"\n\
             resource_arg = \"customer_id\"\nupstream = \"crm\"\noperation = \"{op}\"\n\
             lookup = {{ upstream = \"crm\", operation = \"customer\", attrs = {{ region = \"/region\" }} }}\n\n\
             [tool.input_schema]\ntype = \"object\"\nadditionalProperties = false\n\
             required = [\"customer_id\"]\n[tool.input_schema.properties.customer_id]\n\
             type = \"string\"\nmaxLength = 64\n"
        )
    };
    append(
        &policies.join("tools.toml"),
        &(tool("crm_customer", "customer")
            + &tool("crm_visits", "visits")
            + &tool("crm_tiny", "customer").replace(
                "operation = \"customer\"\n",
                "operation = \"customer\"\nmax_result_bytes = 20\n",
            )),
    );
    append(
        &policies.join("schema.cedarschema"),
        "\nentity Customer = { region?: String };\n\
         action crm_customer appliesTo { principal: Agent, resource: Customer, context: { args: { customer_id: String } } };\n\
         action crm_visits appliesTo { principal: Agent, resource: Customer, context: { args: { customer_id: String } } };\n\
         action crm_tiny appliesTo { principal: Agent, resource: Customer, context: { args: { customer_id: String } } };\n",
    );
    append(
        &policies.join("policy.cedar"),
        "\n@id(\"crm-own-region\")\n@reason(\"a customer of a region the human serves\")\n\
         permit (principal, action in [Action::\"crm_customer\", Action::\"crm_visits\", Action::\"crm_tiny\"], resource is Customer)\n\
         when { resource has region && principal.human.allowed_regions.contains(resource.region) };\n",
    );
    let check = bin("zt-policy")
        .args(["check"])
        .arg(&policies)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let stack = Stack::up_at(&dir).expect("stack starts");
    let token = stack.session_token("agent:crm", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();

    // alice serves eu: c_1 is hers, read by the lookup's own query, every
    // column type as JSON.
    let r = call(&agent, "crm_customer", json!({"customer_id": "c_1"}))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert_eq!(
        r.structured_content.clone().unwrap(),
        json!({"customer_id": "c_1", "region": "eu", "tier": "gold", "vip": 1, "score": 4.5, "notes": null})
    );
    // c_2 is in apac: default deny, on the attribute the lookup fetched.
    let r = call(&agent, "crm_customer", json!({"customer_id": "c_2"}))
        .await
        .unwrap();
    refused(&r, "not permitted");
    // No such customer, and an injection is only a strange id.
    refused(
        &call(&agent, "crm_customer", json!({"customer_id": "c_9"}))
            .await
            .unwrap(),
        "customer c_9 not found",
    );
    refused(
        &call(
            &agent,
            "crm_customer",
            json!({"customer_id": "x' OR '1'='1"}),
        )
        .await
        .unwrap(),
        "not found",
    );
    // A tool's own cap, below its upstream's: refused, not cut.
    refused(
        &call(&agent, "crm_tiny", json!({"customer_id": "c_1"}))
            .await
            .unwrap(),
        "too large",
    );
    // Six visits where at most five rows may come back: refused, not cut.
    refused(
        &call(&agent, "crm_visits", json!({"customer_id": "c_1"}))
            .await
            .unwrap(),
        "too large",
    );
    let audit = bin("zt-console")
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(audit.status.success(), "{audit:?}");
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nothing of the example domain is in the mechanism's code: no crate of
/// the broker, the approval service or the protocol (their tests aside)
/// names one of the shipped tools, their arguments or the humans'
/// attributes. The example is data (`policies/data`, `broker/data`).
#[test]
fn the_mechanism_names_none_of_the_example_domain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("policies").join("data");
    let tools = std::fs::read_to_string(data.join("tools.toml")).unwrap();
    let humans = std::fs::read_to_string(data.join("humans.toml")).unwrap();
    let mut names: Vec<String> = Vec::new();
    let mut lines = tools.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line == "[[tool]]"
            && let Some(next) = lines.peek()
            && let Some(name) = next.trim().strip_prefix("name = ")
        {
            names.push(name.trim_matches('"').to_owned());
        }
        if let Some(arg) = line
            .strip_prefix("[tool.input_schema.properties.")
            .and_then(|l| l.strip_suffix(']'))
            && arg.ends_with("_id")
        {
            names.push(arg.to_owned());
        }
    }
    for line in humans.lines() {
        if let Some((key, _)) = line.split_once(" = ")
            && key.contains('_')
            && !key.starts_with('#')
        {
            names.push(key.trim().to_owned());
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    let mut found = Vec::new();
    for krate in ["broker", "approval-svc", "proto"] {
        let mut stack = vec![root.join(krate).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for name in &names {
                    if code.contains(name.as_str()) {
                        found.push(format!("{}: {name}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "example-domain names in mechanism code: {found:#?}"
    );
}
