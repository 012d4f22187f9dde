//! Attacks from inside one trust domain against another, each performed
//! against a running stack: what a process that is not the approval service
//! could do to make a broker accept what the approval service refused.

use base64::Engine as _;
use zt_tests::{Stack, raw_list, run_ok, spawn_replica};

/// The `sid` claim of a session token (read, not verified: the test only
/// needs to name the session it revokes).
fn sid(jwt: &str) -> String {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["sid"].as_str().expect("sid").to_owned()
}

/// A broker that starts while the approval service is unreachable does not
/// know which sessions were revoked: it refuses every call until its first
/// revocation sync, rather than serve a revoked token until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_serves_nothing_before_its_first_revocation_sync() {
    let stack = Stack::up("revoked-at-start").expect("stack starts");
    let revoked = stack.session_token("agent:x", "alice");
    run_ok(
        "zt-approval",
        &[
            "session",
            "revoke",
            "--data-dir",
            &stack.dir(),
            "--session",
            &sid(&revoked),
            "--reason",
            "leaked",
        ],
    );
    let good = stack.session_token("agent:x", "alice");
    // The running broker learned of the revocation.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        raw_list(&stack.broker_url, Some(&revoked)).await.status,
        401
    );

    // Another broker, cut off from the approval service from the start.
    let (mut late, url) = spawn_replica(
        "zt-broker",
        &stack.data_dir,
        "late",
        None,
        Some("http://127.0.0.1:9"),
    );
    let answer = raw_list(&url, Some(&revoked)).await;
    assert_eq!(answer.status, 503, "revoked token: {}", answer.body);
    assert_eq!(raw_list(&url, Some(&good)).await.status, 503);
    let _ = late.kill();
    let _ = late.wait();
}
