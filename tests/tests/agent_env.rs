//! The agent holds no backend credential: the demo's agent process, caught
//! while it waits on an escalated refund, has a cleared environment with its
//! session token and nothing of the stack's secrets or the parent's: not the
//! billing API key, not the database location, no key material.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use zt_tests::Stack;

const CANARY: &str = "ZT_TEST_PARENT_SECRET";

#[test]
fn the_agent_process_environment_holds_no_backend_credential() {
    // SAFETY: the only test of this binary, before any other thread exists
    // (the runtime below is created afterwards). ZT_BIN_DIR tells the console
    // code where the binaries are, since this test runs from elsewhere.
    unsafe {
        std::env::set_var(CANARY, "billing-key-that-must-not-leak");
        std::env::set_var("ZT_BIN_DIR", zt_tests::bin_dir());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stack = Stack::up("agent-env").expect("stack starts");
        let scenario = stack.data_dir.join("one-refund.toml");
        std::fs::write(
            &scenario,
            "name = \"env\"\nagent = \"agent:env\"\nhuman = \"alice\"\n\n[[step]]\nsay = \"big refund\"\n\
             tool = \"issue_refund\"\nargs = { order_id = \"ord_1002\", amount = 20000 }\nexpect = \"approval\"\n",
        )
        .unwrap();
        let token = stack.session_token("agent:env", "alice");
        let mut cmd = zt_console::demo::agent_command(&stack.broker_url, &scenario, &token);
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("agent starts");
        let pid = child.id().expect("pid");

        // Wait until the agent's refund is pending: the agent is blocked on it.
        let carol = stack.operator_token("carol", "approver", 500_000);
        let mut id = String::new();
        for _ in 0..100 {
            let out = stack.console(&carol, &["pending", "--json"]);
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(r) = list.first() {
                id = r["id"].as_str().unwrap_or_default().to_owned();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!id.is_empty(), "the agent's refund was escalated");

        let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("agent is alive");
        let env: BTreeMap<String, String> = raw
            .split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv).into_owned();
                kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let allowed = ["PATH", "HOME", "TMPDIR", "LANG", "ZT_LOG", "RUST_BACKTRACE", "BROKER_SESSION_TOKEN"];
        for key in env.keys() {
            assert!(allowed.contains(&key.as_str()), "unexpected variable {key} in the agent's environment");
        }
        assert_eq!(env.get("BROKER_SESSION_TOKEN"), Some(&token));
        assert!(!env.contains_key(CANARY), "the parent's environment does not leak");
        let config = std::fs::read_to_string(stack.data_dir.join("broker").join("broker.toml")).unwrap();
        let backend = config
            .lines()
            .find_map(|l| l.strip_prefix("backend_database = "))
            .map(|v| v.trim_matches('"').to_owned())
            .expect("the broker's config names its backend");
        let billing_key = std::fs::read_to_string(stack.data_dir.join("broker").join("billing.key"))
            .expect("the broker holds the billing API key");
        let billing_key = billing_key.trim();
        assert!(billing_key.starts_with("ztb_"), "an issued key");
        for (k, v) in &env {
            assert!(!v.contains(billing_key), "{k} carries the billing API key");
            assert!(!v.contains(&backend), "{k} reveals the backend location");
            assert!(!v.contains("PRIVATE KEY"), "{k} carries key material");
            assert!(!v.contains(&stack.dir()), "{k} points into the stack's data directory");
        }

        let out = stack.console(&carol, &["approve", &id, "--reason", "env test"]);
        assert!(out.status.success());
        let done = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("agent finishes")
            .unwrap();
        let outcomes: Value = serde_json::from_slice(&done.stdout).expect("agent JSON");
        // The approved refund ran through the billing API, with the broker's key.
        assert_eq!(outcomes[0]["status"], "ok", "{outcomes}");
    });
}
