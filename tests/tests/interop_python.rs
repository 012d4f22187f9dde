//! Interoperability with a client nobody here wrote: the official Python MCP
//! SDK (`mcp==2.3.0`, installed by `./scripts/test`) initializes, lists the
//! tools, calls each one, sees a denial as `isError`, and gets 401 without a
//! token.

use std::path::PathBuf;

use serde_json::Value;
use zt_tests::Stack;

fn python() -> PathBuf {
    match std::env::var_os("ZT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "ZT_PYTHON is not set: run the suite with ./scripts/test, which installs the Python MCP SDK"
        ),
    }
}

#[test]
fn python_sdk_client_speaks_to_the_broker() {
    let stack = Stack::up("interop").expect("stack starts");
    let token = stack.session_token("agent:python-sdk", "alice");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/mcp_client.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(&stack.broker_url)
        .arg(&token)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("JSON report");

    assert_eq!(seen["no_token_status"], 401);
    assert!(
        seen["no_token_challenge"]
            .as_str()
            .unwrap_or_default()
            .contains("resource_metadata=")
    );
    assert_eq!(seen["server"], "zt-broker");
    assert_eq!(
        seen["tools"],
        serde_json::json!([
            "approval_status",
            "change_plan",
            "fetch_document",
            "issue_refund",
            "list_orders",
            "lookup_account"
        ])
    );
    assert_eq!(
        seen["schemas_strict"], true,
        "every input schema forbids unknown fields"
    );
    let calls = seen["calls"].as_array().expect("calls");
    let summary: Vec<(String, bool, String)> = calls
        .iter()
        .map(|c| {
            (
                c["tool"].as_str().unwrap_or_default().to_owned(),
                c["is_error"].as_bool().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("lookup_account", false, "ok"),
        ("list_orders", false, "ok"),
        ("issue_refund", false, "ok"),
        ("change_plan", false, "ok"),
        ("fetch_document", false, "ok"),
        ("lookup_account", true, "denied"),
        ("issue_refund", true, "denied"),
    ];
    let expected: Vec<(String, bool, String)> = expected
        .iter()
        .map(|(t, e, s)| ((*t).to_owned(), *e, (*s).to_owned()))
        .collect();
    assert_eq!(summary, expected);
}
