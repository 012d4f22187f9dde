//! Per-run identity through the approval service's gRPC identity endpoint:
//! a launcher mints a session (and appears in the RFC 8693 actor chain),
//! refreshes it (same session, new token id), and revokes it; the broker then
//! refuses the session's tokens and refresh is refused too.

use std::time::Duration;

use serde_json::json;
use zt_proto::keys::PublicKey;
use zt_proto::pb::{IssueSessionRequest, RefreshSessionRequest, RevokeSessionRequest};
use zt_proto::stack::Layout;
use zt_proto::token::{self, Expect, KeySet, SessionClaims, TokenType};
use zt_tests::{Grpc, Stack, call, connect, raw_list, raw_post, run, status};

fn verify(stack: &Stack, jwt: &str) -> SessionClaims {
    let layout = Layout::new(&stack.data_dir);
    let info = layout.stack().unwrap();
    let key = PublicKey::read(&layout.public_key("approval-token")).unwrap();
    token::verify(
        jwt,
        &KeySet::new(vec![key]),
        TokenType::Session,
        &Expect {
            issuer: &info.issuer,
            audience: &info.broker_audience,
        },
    )
    .expect("a valid session token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_issues_refreshes_and_revokes_sessions() {
    let stack = Stack::up("identity").expect("stack starts");
    let launcher = zt_tests::run_ok(
        "zt-approval",
        &[
            "token",
            "launcher",
            "--data-dir",
            &stack.dir(),
            "--name",
            "web-app",
            "--for",
            "alice",
            "--agents",
            "agent:support",
        ],
    );
    let grpc = Grpc::connect(&stack.approval_url, &launcher).await;

    let issued = grpc
        .client()
        .issue_session(grpc.req(IssueSessionRequest {
            agent: "agent:support".into(),
            human: "alice".into(),
            ttl_secs: 120,
            scope: vec!["lookup_account".into(), "issue_refund".into()],
        }))
        .await
        .expect("launcher may issue")
        .into_inner();
    let claims = verify(&stack, &issued.token);
    assert_eq!(
        claims.chain(),
        ["agent:support", "launcher:web-app", "alice"]
    );
    assert_eq!(claims.sid, issued.session_id);
    assert_eq!(claims.exp - claims.iat, 120);

    let agent = connect(&stack.broker_url, &issued.token).await.unwrap();
    let tools = agent.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["approval_status", "issue_refund", "lookup_account"],
        "tools/list shows only the session's scope (and the follow-up tool every session has)"
    );
    // A tool outside the scope: 403 insufficient_scope before MCP runs.
    let err = call(
        &agent,
        "change_plan",
        json!({"account_id": "acct_1001", "new_plan": "basic"}),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("insufficient scope"),
        "{err}"
    );
    let raw = raw_post(
        &stack.broker_url,
        Some(&issued.token),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"change_plan","arguments":{"account_id":"acct_1001","new_plan":"basic"}}}"#,
    )
    .await;
    assert_eq!(raw.status, 403, "{}", raw.body);
    assert!(
        raw.challenge.contains("error=\"insufficient_scope\""),
        "{}",
        raw.challenge
    );
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "in-scope calls still work");

    // Humans outside its bounds (unknown ones too) and lifetimes beyond
    // its bounds are refused at issue.
    let err = grpc
        .client()
        .issue_session(grpc.req(IssueSessionRequest {
            agent: "agent:support".into(),
            human: "mallory".into(),
            ttl_secs: 60,
            scope: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = grpc
        .client()
        .issue_session(grpc.req(IssueSessionRequest {
            agent: "agent:support".into(),
            human: "alice".into(),
            ttl_secs: 3600,
            scope: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // An operator token is not a launcher credential.
    let operator = stack.operator_token("carol", "approver", 100);
    let as_operator = Grpc::connect(&stack.approval_url, &operator).await;
    let err = as_operator
        .client()
        .issue_session(as_operator.req(IssueSessionRequest {
            agent: "a".into(),
            human: "alice".into(),
            ttl_secs: 60,
            scope: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Refresh keeps the session, changes the token id.
    let refreshed = grpc
        .client()
        .refresh_session(grpc.req(RefreshSessionRequest {
            token: issued.token.clone(),
            ttl_secs: 0,
        }))
        .await
        .expect("refresh")
        .into_inner();
    let fresh = verify(&stack, &refreshed.token);
    assert_eq!(fresh.sid, claims.sid);
    assert_ne!(fresh.jti, claims.jti);
    assert_eq!(fresh.auth_time, claims.auth_time);
    assert_eq!(fresh.scope, claims.scope);

    // A non-admin operator may not revoke; the CLI (as admin, through the service) may.
    let err = as_operator
        .client()
        .revoke_session(as_operator.req(RevokeSessionRequest {
            session_id: claims.sid.clone(),
            reason: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let out = run(
        "zt-approval",
        &[
            "session",
            "revoke",
            "--data-dir",
            &stack.dir(),
            "--session",
            &claims.sid,
            "--reason",
            "leaked",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The broker refuses both tokens of the session within a few seconds.
    let mut refused = raw_list(&stack.broker_url, Some(&refreshed.token)).await;
    for _ in 0..50 {
        refused = raw_list(&stack.broker_url, Some(&refreshed.token)).await;
        if refused.status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("revoked"), "{}", refused.body);
    assert_eq!(
        raw_list(&stack.broker_url, Some(&issued.token))
            .await
            .status,
        401
    );

    // And refresh is refused.
    let err = grpc
        .client()
        .refresh_session(grpc.req(RefreshSessionRequest {
            token: refreshed.token.clone(),
            ttl_secs: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Another session is unaffected.
    let other = stack.session_token("agent:other", "alice");
    assert_eq!(raw_list(&stack.broker_url, Some(&other)).await.status, 200);

    let out = run(
        "zt-console",
        &["audit", "verify", "--data-dir", &stack.dir()],
    );
    assert_eq!(out.status.code(), Some(0));
}
