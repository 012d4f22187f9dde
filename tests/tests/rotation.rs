//! Key rotation without downtime: after `zt-approval keys rotate`, tokens
//! signed by the new key and by the old one are both accepted by the running
//! broker and the hook; once the old key is retired, the hook refuses its
//! tokens.

use std::io::Write;
use std::process::Stdio;

use zt_tests::{Stack, bin, raw_list, run_ok};

fn hook(stack: &Stack, token: &str) -> Option<i32> {
    let mut child = bin("zt-policy")
        .arg("hook")
        .env("ZT_DATA_DIR", &stack.data_dir)
        .env("BROKER_SESSION_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"tool_name":"mcp__broker__lookup_account","tool_input":{"account_id":"acct_1001"}}"#)
        .unwrap();
    child.wait_with_output().unwrap().status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_tokens_until_retired() {
    let stack = Stack::up("rotation").expect("stack starts");
    let old = stack.session_token("agent:rot", "alice");
    assert_eq!(raw_list(&stack.broker_url, Some(&old)).await.status, 200);

    let out = run_ok(
        "zt-approval",
        &["keys", "rotate", "--data-dir", &stack.dir()],
    );
    let retired = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("retired="))
        .expect("rotate prints the retired kid")
        .to_owned();
    let current = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("current="))
        .expect("rotate prints the current kid")
        .to_owned();
    let jwks = run_ok("zt-approval", &["keys", "jwks", "--data-dir", &stack.dir()]);
    let published = zt_proto::token::KeySet::from_jwks(&jwks).expect("a JWKS document");
    assert!(published.get(&retired).is_some() && published.get(&current).is_some());
    let new = stack.session_token("agent:rot", "alice");
    assert_ne!(
        old.split('.').next(),
        new.split('.').next(),
        "a different kid signs"
    );

    // The running broker learns the new key on first sight and keeps the old one.
    assert_eq!(raw_list(&stack.broker_url, Some(&new)).await.status, 200);
    assert_eq!(raw_list(&stack.broker_url, Some(&old)).await.status, 200);
    assert_eq!(hook(&stack, &new), Some(0));
    assert_eq!(hook(&stack, &old), Some(0));

    run_ok(
        "zt-approval",
        &[
            "keys",
            "retire",
            "--data-dir",
            &stack.dir(),
            "--kid",
            &retired,
        ],
    );
    assert_eq!(
        hook(&stack, &old),
        Some(2),
        "a retired key no longer verifies"
    );
    assert_eq!(hook(&stack, &new), Some(0));
}
