//! Key rotation without downtime: after `zt-approval keys rotate`, tokens
//! signed by the new key and by the old one are both accepted by the running
//! broker and the hook; once the old key is retired, the hook refuses its
//! tokens.

use serde_json::json;
use zt_tests::{Stack, raw_list, run_ok};

fn hook(stack: &Stack, token: &str) -> Option<i32> {
    stack
        .hook(token, "lookup_account", &json!({"account_id": "acct_1001"}))
        .status
        .code()
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

/// Whoever can add a file to `public/` (services write there at run time)
/// but holds no trusted private key: a key of their own, dropped in as a
/// "retired" approval key, with a rotation record signed by itself. Neither
/// the broker, the approval service nor the agent's policy hook trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_dropped_into_public_mints_nothing() {
    use zt_proto::keys::{KeyPair, PublicKey};
    let stack = Stack::up("dropped-key").expect("stack starts");
    let real = zt_proto::stack::Layout::new(&stack.data_dir);

    // The attacker's own "approval service" with the real stack's public
    // identity (stack.json is public), so its tokens name the right issuer.
    let att_dir = zt_tests::temp_dir("attacker");
    let att = att_dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &att]);
    std::fs::copy(real.stack_file(), att_dir.join("stack.json")).unwrap();
    let att_layout = zt_proto::stack::Layout::new(&att_dir);
    for name in ["approval-token", "approval-grant"] {
        let key = PublicKey::read(&att_layout.public_key(name)).unwrap();
        std::fs::copy(
            att_layout.public_key(name),
            real.public_key(&format!("{name}-{}", key.kid())),
        )
        .unwrap();
    }
    let att_token = KeyPair::read(&att_dir.join("approval").join("token.key")).unwrap();
    zt_proto::pinned::write_introduction(&real, "approval-token", &att_token.public(), &att_token)
        .unwrap();

    let forged = run_ok(
        "zt-approval",
        &[
            "token",
            "issue",
            "--data-dir",
            &att,
            "--agent",
            "agent:x",
            "--for",
            "carol",
        ],
    );
    assert_eq!(
        raw_list(&stack.broker_url, Some(forged.trim()))
            .await
            .status,
        401,
        "the broker refuses a session token signed by a dropped-in key"
    );
    assert_eq!(
        hook(&stack, forged.trim()),
        Some(2),
        "the agent's policy hook refuses it too"
    );
    let op = run_ok(
        "zt-approval",
        &[
            "token",
            "operator",
            "--data-dir",
            &att,
            "--name",
            "mallory",
            "--role",
            "admin",
        ],
    );
    let out = stack.console(op.trim(), &["pending", "--json"]);
    assert!(
        !out.status.success(),
        "the approval service refuses an operator token signed by a dropped-in key: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The stack's published key set does not carry it either.
    let jwks = run_ok("zt-approval", &["keys", "jwks", "--data-dir", &stack.dir()]);
    let published = zt_proto::token::KeySet::from_jwks(&jwks).expect("a JWKS document");
    assert!(published.get(att_token.kid()).is_none(), "{jwks}");
    // The real keys still work.
    let good = stack.session_token("agent:x", "alice");
    assert_eq!(raw_list(&stack.broker_url, Some(&good)).await.status, 200);
    assert_eq!(hook(&stack, &good), Some(0));
    let _ = std::fs::remove_dir_all(&att_dir);
}
