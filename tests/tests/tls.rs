//! The approval service's gRPC port over TLS: `zt-console up --tls` serves it
//! with a certificate from the stack's own CA; the broker (its revocation
//! sync gates every call) and the console verify it. A plaintext client, a
//! client trusting another CA, and plaintext to or from an address other
//! machines can reach are all refused.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use zt_tests::{Stack, bin, call, connect, run, run_ok, status, temp_dir, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_speaks_tls_and_refuses_plaintext_off_loopback() {
    let stack = Stack::up_args(&temp_dir("tls"), &["--tls"]).expect("a TLS stack starts");
    assert!(
        stack.approval_url.starts_with("https://127.0.0.1:"),
        "{}",
        stack.approval_url
    );
    assert!(stack.data_dir.join("tls-ca.pem").exists());

    // The broker reached the approval service over TLS: it serves calls
    // only once its first revocation sync there has completed.
    let token = stack.session_token("agent:tls", "alice");
    let agent = connect(&stack.broker_url, &token).await.expect("connects");
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));

    // The console verifies the port with the stack's CA.
    let op = stack.operator_token("carol", "approver", 1000);
    let out = stack.console(&op, &["pending", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plaintext to the TLS port gets nothing.
    let plain = stack.approval_url.replacen("https://", "http://", 1);
    let out = stack.console(&op, &["pending", "--approval", &plain]);
    assert!(!out.status.success(), "plaintext to the TLS port worked");

    // A CA of another stack does not vouch for this one.
    let other = temp_dir("tls-other");
    run_ok(
        "zt-approval",
        &["init", "--data-dir", &other.to_string_lossy()],
    );
    let other_ca = other.join("tls-ca.pem");
    let out = bin("zt-console")
        .args([
            "pending",
            "--approval",
            &stack.approval_url,
            "--approval-ca",
        ])
        .arg(&other_ca)
        .env("ZT_OPERATOR_TOKEN", &op)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a certificate of another CA was accepted"
    );

    // No plaintext gRPC on an address other machines reach, either side.
    let dir = other.to_string_lossy().into_owned();
    let out = run(
        "zt-approval",
        &["serve", "--data-dir", &dir, "--listen", "0.0.0.0:0"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing plaintext gRPC"),
        "{err}"
    );
    let out = bin("zt-console")
        .args(["pending", "--approval", "http://192.0.2.1:50051"])
        .env("ZT_OPERATOR_TOKEN", &op)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing plaintext gRPC"),
        "{err}"
    );
    run_ok("zt-broker", &["init", "--data-dir", &dir]);
    let out = run(
        "zt-broker",
        &[
            "serve",
            "--data-dir",
            &dir,
            "--approval",
            "http://192.0.2.1:50051",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing plaintext gRPC"),
        "{err}"
    );

    // With TLS it listens on every address and is reached on loopback.
    let mut child = bin("zt-approval")
        .args([
            "serve",
            "--data-dir",
            &dir,
            "--listen",
            "0.0.0.0:0",
            "--tls",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("an approval_url line");
        if let Some(url) = line.strip_prefix("approval_url=") {
            break url.to_owned();
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let _ = std::fs::remove_dir_all(other);
}
