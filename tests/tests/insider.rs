//! Attacks from inside one trust domain against another, each performed
//! against a running stack: what a process that is not the approval service
//! could do to make a broker accept what the approval service refused.

use base64::Engine as _;
use zt_proto::pb::{IssueSessionRequest, RevokeSessionRequest};
use zt_tests::{Grpc, Stack, raw_list, run_ok, sid_of, spawn_replica};

/// A broker that starts while the approval service is unreachable does not
/// know which sessions were revoked: it refuses every call until its first
/// revocation sync, rather than serve a revoked token until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_serves_nothing_before_its_first_revocation_sync() {
    let stack = Stack::up("revoked-at-start").expect("stack starts");
    let revoked = stack.session_token("agent:x", "alice");
    stack.revoke_session(&sid_of(&revoked), "leaked");
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

/// Runs `zt-approval ARGS` to mint a credential: (the token, its jti).
fn credential(args: &[&str]) -> (String, String) {
    let out = zt_tests::bin("zt-approval").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jti = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("jti=").map(str::to_owned))
        .expect("jti= on stderr");
    (String::from_utf8_lossy(&out.stdout).trim().to_owned(), jti)
}

fn launcher(stack: &Stack, name: &str, extra: &[&str]) -> (String, String) {
    let dir = stack.dir();
    let mut args = vec!["token", "launcher", "--data-dir", &dir, "--name", name];
    args.extend_from_slice(extra);
    credential(&args)
}

/// An operator credential for `name` with `role` (and any further flags).
fn operator(stack: &Stack, name: &str, role: &str, extra: &[&str]) -> (String, String) {
    let dir = stack.dir();
    let mut args = vec![
        "token",
        "operator",
        "--data-dir",
        &dir,
        "--name",
        name,
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    credential(&args)
}

/// Revokes a credential by its token id.
fn revoke_credential(stack: &Stack, jti: &str, reason: &str) {
    run_ok(
        "zt-approval",
        &[
            "token",
            "revoke",
            "--data-dir",
            &stack.dir(),
            "--jti",
            jti,
            "--reason",
            reason,
        ],
    );
}

fn issue(agent: &str, human: &str, ttl: u32, scope: &[&str]) -> IssueSessionRequest {
    IssueSessionRequest {
        agent: agent.into(),
        human: human.into(),
        ttl_secs: ttl,
        scope: scope.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A launcher credential starts runs only within its bounds, revokes only
/// its own sessions, and stops working once revoked by its token id; so
/// does an operator token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_bounded_and_revocable() {
    let stack = Stack::up("bounded").expect("stack starts");
    let (web, web_jti) = launcher(
        &stack,
        "web-app",
        &[
            "--for",
            "alice",
            "--agents",
            "agent:support-*",
            "--scope",
            "lookup_account,issue_refund",
            "--session-ttl",
            "5m",
        ],
    );
    let g = Grpc::connect(&stack.approval_url, &web).await;
    let ok = g
        .client()
        .issue_session(g.req(issue("agent:support-7", "alice", 60, &[])))
        .await
        .expect("within its bounds")
        .into_inner();
    // Unscoped, it gets exactly its scope.
    let claims = ok.token.split('.').nth(1).unwrap().to_owned();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["scope"], "lookup_account issue_refund");

    // Each way out of its bounds: the support lead (whose limit is the hard
    // cap), another agent, a wider scope, a longer session.
    for (req, why) in [
        (issue("agent:support-7", "carol", 60, &[]), "carol"),
        (issue("agent:admin", "alice", 60, &[]), "agent"),
        (
            issue("agent:support-7", "alice", 60, &["change_plan"]),
            "change_plan",
        ),
        (issue("agent:support-7", "alice", 600, &[]), "at most"),
    ] {
        let err = g.client().issue_session(g.req(req)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{why}: {err:?}");
        assert!(err.message().contains(why), "{why}: {}", err.message());
    }

    // Another launcher may not revoke web-app's session, nor one from the CLI.
    let (other, _) = launcher(
        &stack,
        "batch",
        &["--for", "bob", "--agents", "agent:batch"],
    );
    let o = Grpc::connect(&stack.approval_url, &other).await;
    let cli_session = sid_of(&stack.session_token("agent:x", "dave"));
    for target in [ok.session_id.clone(), cli_session] {
        let err = o
            .client()
            .revoke_session(o.req(RevokeSessionRequest {
                session_id: target,
                reason: "not mine".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    // Its own, yes.
    g.client()
        .revoke_session(g.req(RevokeSessionRequest {
            session_id: ok.session_id.clone(),
            reason: "run over".into(),
        }))
        .await
        .expect("a launcher revokes its own session");

    // Revoked by token id: refused from then on.
    revoke_credential(&stack, &web_jti, "leaked");
    let err = g
        .client()
        .issue_session(g.req(issue("agent:support-7", "alice", 60, &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let (op, op_jti) = operator(&stack, "carol", "approver", &["--limit", "1000"]);
    assert!(stack.console(&op, &["pending"]).status.success());
    revoke_credential(&stack, &op_jti, "left");
    let out = stack.console(&op, &["pending"]);
    assert!(!out.status.success(), "a revoked operator token is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Revocations reach a broker however many there are: 80,000 of them (one
/// unpaged message would pass tonic's 4 MiB limit, after which no broker
/// applied any revocation) and then one more, which a new broker must see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_page_past_any_message_limit() {
    use sqlx::Connection as _;
    let stack = Stack::up("many-revoked").expect("stack starts");
    let url = format!(
        "sqlite://{}",
        stack
            .data_dir
            .join("approval")
            .join("approval.db")
            .display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    for i in 0..80_000i64 {
        sqlx::query(
            "INSERT INTO revoked_sessions (session_id, at_ms, reason, seq) VALUES ($1, $2, $3, $4)",
        )
        .bind(format!("sess_bulk_{i:08}_padding_to_a_realistic_length"))
        .bind(zt_proto::now_ms())
        .bind("bulk revocation of an old run")
        .bind(i + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let _ = conn.close().await;

    let token = stack.session_token("agent:x", "alice");
    stack.revoke_session(&sid_of(&token), "leaked");
    let (mut late, url) = spawn_replica(
        "zt-broker",
        &stack.data_dir,
        "late",
        None,
        Some(&stack.approval_url),
    );
    let answer = raw_list(&url, Some(&token)).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.body.contains("revoked"), "{}", answer.body);
    let good = stack.session_token("agent:x", "alice");
    assert_eq!(raw_list(&url, Some(&good)).await.status, 200);
    // The running broker followed along too.
    let mut status = 0;
    for _ in 0..50 {
        status = raw_list(&stack.broker_url, Some(&token)).await.status;
        if status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
    let _ = late.kill();
    let _ = late.wait();
}

/// A loop of requests with bad tokens, from anything that reaches the port
/// (a browser's no-cors POST to 127.0.0.1 included): each once cost a
/// durable audit entry. Beyond a budget they are only counted and recorded
/// in one summary entry; none is lost from the record, and real calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_audited_in_aggregate() {
    const N: usize = 1_000;
    let stack = Stack::up("flood").expect("stack starts");
    let good = stack.session_token("agent:x", "alice");
    let started = std::time::Instant::now();
    let mut limited = 0;
    for _ in 0..N {
        match raw_list(&stack.broker_url, Some("not.a.token"))
            .await
            .status
        {
            401 => {}
            429 => limited += 1,
            other => panic!("status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(limited > 0, "the flood was rate-limited");
    assert_eq!(raw_list(&stack.broker_url, Some(&good)).await.status, 200);
    // The summary is written every few seconds.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let bodies = zt_tests::audit_bodies(&stack.data_dir, "broker").await;
    let one_by_one = bodies
        .iter()
        .filter(|b| b.contains("\"status\":\"unauthenticated\""))
        .count();
    let summarized: u64 = bodies
        .iter()
        .filter(|b| b.contains("\"status\":\"flood\""))
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["args"]["invalid_token"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(
        one_by_one + summarized as usize,
        N,
        "every refusal is on record"
    );
    let budget = 100.0 + 20.0 * elapsed + 5.0;
    assert!(
        (one_by_one as f64) <= budget,
        "{one_by_one} refusals written one by one in {elapsed:.1} s"
    );
    assert_eq!(limited as u64, summarized);
}

/// Opens `n` connections to `addr`, each sending `start` and then nothing
/// more.
async fn stalled(addr: &str, start: &[u8], n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        if !start.is_empty() {
            tcp.write_all(start).await.unwrap();
        }
        conns.push(tcp);
    }
    conns
}

/// Whether the server closes every connection (0 bytes, or an error answer
/// then close) within `bound`.
async fn all_closed(conns: &mut [tokio::net::TcpStream], bound: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let started = std::time::Instant::now();
    for tcp in conns {
        let left = bound.saturating_sub(started.elapsed());
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(left, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if read.is_err() {
            return false;
        }
    }
    true
}

fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Clients that open connections and never finish their request headers
/// (slowloris) on the broker and the billing API, or never finish the
/// HTTP/2 preface on the approval service, are cut off; every port keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off() {
    use std::time::Duration;
    let stack = Stack::up("slowloris").expect("stack starts");
    let layout = zt_proto::stack::Layout::new(&stack.data_dir);
    let billing = layout.endpoint("billing").expect("billing API running");
    let half_headers = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut broker = stalled(&host_port(&stack.broker_url), half_headers, 20).await;
    let mut billing_conns = stalled(&host_port(&billing), half_headers, 20).await;
    let mut grpc = stalled(&host_port(&stack.approval_url), b"PRI * HTTP/2.0\r\n", 10).await;
    grpc.extend(stalled(&host_port(&stack.approval_url), b"", 10).await);

    // Served meanwhile.
    let good = stack.session_token("agent:x", "alice");
    assert_eq!(raw_list(&stack.broker_url, Some(&good)).await.status, 200);
    let (op, _) = operator(&stack, "carol", "approver", &[]);
    assert!(stack.console(&op, &["pending", "--json"]).status.success());

    // The approval service gives a connection 10 s to start; the HTTP
    // servers give a request 30 s for its headers.
    assert!(
        all_closed(&mut grpc, Duration::from_secs(20)).await,
        "a stalled gRPC connection was kept open"
    );
    assert!(
        all_closed(&mut broker, Duration::from_secs(45)).await,
        "a half-sent request held a broker connection open"
    );
    assert!(
        all_closed(&mut billing_conns, Duration::from_secs(15)).await,
        "a half-sent request held a billing API connection open"
    );
    assert_eq!(raw_list(&stack.broker_url, Some(&good)).await.status, 200);
    assert!(stack.console(&op, &["pending", "--json"]).status.success());
}
