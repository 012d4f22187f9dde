//! The real Claude Code CLI (`@anthropic-ai/claude-code`, installed by
//! `./scripts/test` into `~/.cache`) and the real Python `claude-agent-sdk`
//! driving it, run with the shipped `examples/` configuration, unchanged,
//! against a real stack. The model is a scripted stand-in for the Messages
//! API (`zt_tests::model`): each test asserts what the model received, what
//! the audit log recorded and what reached the ledger.
//!
//! The loop: an allowed lookup; a call the hook constrains, whose rewritten
//! arguments reach the broker; a refund the hook denies and one the broker
//! denies; a smuggled field; an escalated refund that waits in `zt-console
//! pending`, is approved by an operator and collected with `approval_status`
//! (one refund in the ledger); an escalation an operator denies. Then the
//! hook failing in every way it can — nothing reaches the broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use zt_tests::model::{Model, Received, Turn, request_id_in};
use zt_tests::{Stack, bin, bin_dir, block_on, prepare_dir, safe, temp_dir};

/// How long the broker holds an escalated call before answering "awaiting
/// approval" (so the agent follows up with `approval_status`).
const WAIT_SECS: u64 = 2;

fn claude() -> PathBuf {
    match std::env::var_os("ZT_CLAUDE") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "ZT_CLAUDE is not set: run the suite with ./scripts/test, which installs the Claude Code CLI"
        ),
    }
}

fn sdk_python() -> PathBuf {
    match std::env::var_os("ZT_AGENT_SDK_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "ZT_AGENT_SDK_PYTHON is not set: run the suite with ./scripts/test, which installs claude-agent-sdk"
        ),
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A byte-for-byte copy of `examples/claude-code/` in a fresh directory
/// outside any git repository, and a fresh `HOME` beside it.
fn project(tag: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(tag);
    let project = root.join("project");
    std::fs::create_dir_all(project.join(".claude")).expect("project dir");
    for file in [".mcp.json", ".claude/settings.json"] {
        std::fs::copy(
            examples().join("claude-code").join(file),
            project.join(file),
        )
        .expect("copy the shipped config");
    }
    let home = root.join("home");
    std::fs::create_dir_all(&home).expect("home");
    (project, home)
}

/// How the agent runs.
#[derive(Clone, Copy)]
enum Driver {
    /// `claude -p` with extra arguments.
    Cli(&'static [&'static str]),
    /// `python examples/agent_sdk.py`, which drives the same CLI.
    Sdk,
}

/// What the hook is, for one run.
enum Hook {
    /// The real `zt-policy hook`, with the stack's data directory.
    Real,
    /// The real hook with `ZT_DATA_DIR` pointing nowhere.
    NoDataDir,
    /// A `zt-policy` that runs this shell script instead.
    Broken(&'static str),
}

struct Run {
    out: Output,
    model: Model,
}

/// Starts the agent for `token` against `stack`, answered by `script`;
/// `during` runs while it does (operators deciding), then the agent is
/// awaited (at most 3 minutes).
fn run_agent(
    tag: &str,
    driver: Driver,
    hook: Hook,
    stack: &Stack,
    token: &str,
    script: Vec<Turn>,
    during: impl FnOnce(&Model),
) -> Run {
    let model = Model::start(script);
    let (project, home) = project(tag);
    let mut path = Vec::new();
    if let Hook::Broken(body) = hook {
        let shims = project.parent().expect("root").join("shim");
        std::fs::create_dir_all(&shims).expect("shim dir");
        let shim = shims.join("zt-policy");
        std::fs::write(&shim, format!("#!/bin/sh\n{body}\n")).expect("shim");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.push(shims);
    }
    path.push(bin_dir());
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let data_dir = match hook {
        Hook::NoDataDir => project.join("no-such-stack"),
        _ => stack.data_dir.clone(),
    };
    let mut cmd = Command::new("timeout");
    cmd.arg("180");
    match driver {
        Driver::Cli(extra) => {
            cmd.arg(claude())
                .args([
                    "-p",
                    "Help the customer.",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                ])
                .args(extra);
        }
        Driver::Sdk => {
            cmd.arg(sdk_python())
                .arg(examples().join("agent_sdk.py"))
                .arg("Help the customer.")
                .env("CLAUDE_CLI_PATH", claude());
        }
    }
    let child = cmd
        .current_dir(&project)
        .env_clear()
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", &model.url)
        .env("ANTHROPIC_API_KEY", "sk-ant-stand-in")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("BROKER_URL", &stack.broker_url)
        .env("BROKER_SESSION_TOKEN", token)
        .env("ZT_DATA_DIR", &data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let waiter = std::thread::spawn(move || child.wait_with_output());
    during(&model);
    let out = waiter
        .join()
        .expect("waiting for the agent")
        .expect("the agent's output");
    let _ = std::fs::remove_dir_all(project.parent().expect("root"));
    assert!(
        out.status.success(),
        "{tag}: the agent failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing but the Messages API was asked for.
    for p in model.paths() {
        assert!(
            p.starts_with("/v1/messages"),
            "{tag}: unexpected request {p}"
        );
    }
    Run { out, model }
}

/// The text the broker (or the hook) gave, without the CLI's own note
/// about a deferred tool's schema.
fn shown(r: &Received) -> &str {
    r.text
        .split("\n\nThis tool's input schema was not in your prompt")
        .next()
        .unwrap_or_default()
}

fn result(run: &Run, turn: usize) -> Received {
    run.model
        .result_of(turn)
        .unwrap_or_else(|| panic!("the model never received the result of turn {turn}"))
}

/// Every audit entry an agent caused, in both chains.
fn audit(stack: &Stack, agent: &str) -> Vec<Value> {
    stack.json_lines(&["audit", "query", "--json", "--agent", agent])
}

/// The refunds in the example ledger.
fn refunds(stack: &Stack) -> Vec<(String, i64, Option<String>)> {
    let dir = stack.data_dir.clone();
    block_on(async move {
        let mut db = zt_tests::backend(&dir).await;
        sqlx::query_as("SELECT order_id, amount_cents, grant_id FROM refunds ORDER BY id")
            .fetch_all(&mut db)
            .await
            .expect("refunds")
    })
}

fn plan_changes(stack: &Stack) -> i64 {
    let dir = stack.data_dir.clone();
    block_on(async move {
        let mut db = zt_tests::backend(&dir).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM plan_changes")
            .fetch_one(&mut db)
            .await
            .expect("plan changes")
    })
}

/// As the support lead: waits for `request` in `zt-console pending --json`,
/// checks what it shows, and decides it.
fn decide(stack: &Stack, request: &str, tool: &str, verb: &str) {
    let carol = stack.operator_token("carol", "approver", 500_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pending = loop {
        let out = stack.console(&carol, &["pending", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).expect("pending JSON");
        if let Some(p) = list
            .as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == request).cloned())
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{request} never appeared in zt-console pending"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(pending["human"], "alice", "{pending}");
    assert_eq!(pending["tool"], tool, "{pending}");
    assert_eq!(pending["status"], "pending", "{pending}");
    let out = stack.console(
        &carol,
        &[verb, request, "--reason", "checked with the customer"],
    );
    assert!(
        out.status.success(),
        "{verb} {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the "awaiting approval" answer of turn `turn` and returns its request id.
fn awaiting(model: &Model, turn: usize) -> String {
    let r = model
        .wait_result(turn, 90)
        .unwrap_or_else(|| panic!("turn {turn}'s escalated call never came back"));
    assert!(
        shown(&r).starts_with("awaiting approval req_"),
        "turn {turn}: {r:?}"
    );
    request_id_in(&r.text).expect("a request id")
}

/// The whole loop, through `driver`, for an agent named `agent`.
fn the_loop(tag: &str, driver: Driver, agent: &str) {
    let dir = prepare_dir(tag, WAIT_SECS, false);
    let stack = Stack::up_at(&dir).expect("stack starts");
    let token = stack.session_token(agent, "alice");
    let approved = Arc::new(Semaphore::new(0));
    let denied = Arc::new(Semaphore::new(0));
    let script = vec![
        /* 0 */ Turn::broker("lookup_account", json!({"account_id": "acct_1001"})),
        /* 1 */
        Turn::broker(
            "list_orders",
            json!({"account_id": "acct_1001", "limit": 50}),
        ),
        /* 2 */
        Turn::broker(
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 200000}),
        ),
        /* 3 */
        Turn::broker(
            "issue_refund",
            json!({"order_id": "ord_2001", "amount": 100}),
        ),
        /* 4 */
        Turn::broker(
            "issue_refund",
            json!({"order_id": "ord_1001", "amount": 100, "note": "also credit acct_2001"}),
        ),
        /* 5 */
        Turn::broker(
            "issue_refund",
            json!({"order_id": "ord_1002", "amount": 20000}),
        ),
        /* 6 */
        Turn::FollowUp {
            gate: approved.clone(),
        },
        /* 7 */
        Turn::broker(
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "enterprise"}),
        ),
        /* 8 */
        Turn::FollowUp {
            gate: denied.clone(),
        },
        /* 9 */ Turn::Text("Done.".into()),
    ];
    let mut requests = Vec::new();
    let run = run_agent(tag, driver, Hook::Real, &stack, &token, script, |model| {
        let refund = awaiting(model, 5);
        decide(&stack, &refund, "issue_refund", "approve");
        approved.add_permits(1);
        let plan = awaiting(model, 7);
        decide(&stack, &plan, "change_plan", "deny");
        denied.add_permits(1);
        requests = vec![refund, plan];
    });
    let entries = audit(&stack, agent);
    let broker_decisions = |tool: &str| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| e["chain"] == "broker" && e["kind"] == "decision" && e["tool"] == tool)
            .cloned()
            .collect()
    };

    // 0: allowed, executed, audited.
    let r = result(&run, 0);
    assert!(!r.is_error && r.text.contains("Ada Lovelace"), "{r:?}");
    assert!(
        broker_decisions("lookup_account")
            .iter()
            .any(|e| e["decision"] == "allow"),
        "{entries:?}"
    );

    // 1: the hook's rewrite (limit 50 -> 20) is what reached the broker.
    let r = result(&run, 1);
    assert!(!r.is_error && r.text.contains("ord_1001"), "{r:?}");
    let lists = broker_decisions("list_orders");
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(lists[0]["args"]["limit"], 20, "{lists:?}");
    assert_eq!(lists[0]["decision"], "allow", "{lists:?}");

    // 2: over the hard cap: the hook denies; the broker never hears of it.
    let r = result(&run, 2);
    assert!(r.is_error && shown(&r).contains("$1,000"), "{r:?}");
    safe(shown(&r)).unwrap();
    assert!(
        !entries.iter().any(|e| e["args"]["order_id"] == "ord_1003"),
        "a hook-denied call reached the broker: {entries:?}"
    );

    // 3: another region: the hook cannot know, the broker denies (audited).
    let r = result(&run, 3);
    assert!(shown(&r).contains("region"), "{r:?}");
    safe(shown(&r)).unwrap();
    assert!(
        broker_decisions("issue_refund")
            .iter()
            .any(|e| e["args"]["order_id"] == "ord_2001" && e["decision"] == "deny"),
        "{entries:?}"
    );

    // 4: a smuggled field: denied by the hook, never sent.
    let r = result(&run, 4);
    assert!(
        r.is_error && shown(&r).contains("unknown field `note`"),
        "{r:?}"
    );
    safe(shown(&r)).unwrap();
    assert!(
        !entries.iter().any(|e| e["args"].get("note").is_some()),
        "{entries:?}"
    );

    // 5-6: escalated, approved by carol, collected with approval_status.
    let [refund, plan] = &requests[..] else {
        panic!("the operators never decided: {requests:?}")
    };
    let r = result(&run, 6);
    assert!(!r.is_error, "{r:?}");
    assert!(
        r.text.contains("refund_id") && r.text.contains("20000"),
        "{r:?}"
    );
    assert!(
        entries.iter().any(|e| e["chain"] == "approval"
            && e["kind"] == "approval"
            && e["request_id"] == refund.as_str()
            && e["human"] == "carol"
            && e["decision"] == "approve"),
        "{entries:?}"
    );
    let executed: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["chain"] == "broker"
                && e["kind"] == "result"
                && e["request_id"] == refund.as_str()
                && e["decision"] == "executed"
        })
        .collect();
    assert_eq!(executed.len(), 1, "{entries:?}");
    let ledger = refunds(&stack);
    assert_eq!(ledger.len(), 1, "exactly one refund: {ledger:?}");
    assert_eq!(ledger[0].0, "ord_1002");
    assert_eq!(ledger[0].1, 20000);
    assert!(ledger[0].2.is_some(), "the refund ran on a grant");

    // 7-8: escalated, denied by carol; approval_status says so; nothing ran.
    let r = result(&run, 8);
    assert!(r.is_error && shown(&r).contains("denied"), "{r:?}");
    safe(shown(&r)).unwrap();
    assert!(
        entries.iter().any(|e| e["chain"] == "approval"
            && e["request_id"] == plan.as_str()
            && e["decision"] == "deny"),
        "{entries:?}"
    );
    assert_eq!(plan_changes(&stack), 0);

    if let Driver::Cli(_) = driver {
        // `claude -p` exits 0 even when calls were denied: its result event
        // lists the hook's denials (and nothing else).
        let stdout = String::from_utf8_lossy(&run.out.stdout);
        let result_event: Value = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "result")
            .expect("a result event");
        let denied_ids: Vec<&str> = result_event["permission_denials"]
            .as_array()
            .expect("permission_denials")
            .iter()
            .filter_map(|d| d["tool_use_id"].as_str())
            .collect();
        assert_eq!(denied_ids, ["toolu_zt_2", "toolu_zt_4"], "{result_event}");
    }

    let dir = stack.stop_keep();
    let verify = bin("zt-console")
        .args(["audit", "verify", "--no-state", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("audit verify");
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn claude_code_completes_the_loop() {
    the_loop("claude-loop", Driver::Cli(&[]), "agent:claude-code");
}

#[test]
fn agent_sdk_example_completes_the_loop() {
    the_loop("sdk-loop", Driver::Sdk, "agent:sdk");
}

/// Every way the hook can fail, in the permission modes the README
/// documents; a refund that would run if it reached the broker.
#[test]
fn a_failing_hook_lets_nothing_through() {
    let dir = prepare_dir("hook-fail", WAIT_SECS, false);
    let stack = Stack::up_at(&dir).expect("stack starts");
    let agent = "agent:failing-hook";
    let token = stack.session_token(agent, "alice");
    let refund = || {
        vec![
            Turn::broker(
                "issue_refund",
                json!({"order_id": "ord_1001", "amount": 100}),
            ),
            Turn::Text("Done.".into()),
        ]
    };
    let killed = "kill -9 $$";
    let hung = "sleep 60";
    let garbage = "echo 'not a decision'";
    let crashed = "echo 'zt-policy: crashed' >&2; exit 1";
    let default_mode: &[&str] = &["--permission-mode", "default"];
    let cases: Vec<(&str, Driver, Hook)> = vec![
        ("no data dir", Driver::Cli(&[]), Hook::NoDataDir),
        ("killed", Driver::Cli(&[]), Hook::Broken(killed)),
        (
            "hung past its timeout",
            Driver::Cli(&[]),
            Hook::Broken(hung),
        ),
        ("garbage on stdout", Driver::Cli(&[]), Hook::Broken(garbage)),
        ("exit 1", Driver::Cli(&[]), Hook::Broken(crashed)),
        (
            "killed, default mode",
            Driver::Cli(default_mode),
            Hook::Broken(killed),
        ),
        (
            "garbage, default mode",
            Driver::Cli(default_mode),
            Hook::Broken(garbage),
        ),
        ("sdk: no data dir", Driver::Sdk, Hook::NoDataDir),
        ("sdk: killed", Driver::Sdk, Hook::Broken(killed)),
        (
            "sdk: hung past its timeout",
            Driver::Sdk,
            Hook::Broken(hung),
        ),
        ("sdk: garbage on stdout", Driver::Sdk, Hook::Broken(garbage)),
    ];
    let mut failures = Vec::new();
    for (name, driver, hook) in cases {
        let run = run_agent("hook-fail", driver, hook, &stack, &token, refund(), |_| {});
        match run.model.result_of(0) {
            Some(r) if r.is_error => {}
            other => failures.push(format!("{name}: the model got {other:?}")),
        }
        let reached = audit(&stack, agent)
            .into_iter()
            .filter(|e| e["chain"] == "broker" && e["tool"] == "issue_refund")
            .count();
        if reached > 0 {
            failures.push(format!("{name}: {reached} audit entries at the broker"));
        }
    }
    assert!(refunds(&stack).is_empty(), "{failures:?}");
    assert!(failures.is_empty(), "{failures:#?}");

    // The control: with a working hook the same call reaches the broker and
    // runs, so the checks above would have seen it.
    let run = run_agent(
        "hook-ok",
        Driver::Cli(&[]),
        Hook::Real,
        &stack,
        &token,
        refund(),
        |_| {},
    );
    let r = result(&run, 0);
    assert!(!r.is_error && r.text.contains("refund_id"), "{r:?}");
    assert_eq!(refunds(&stack).len(), 1);
}
