//! The red-team regression suite: attacks on a running stack, each a case
//! that asserts all four of
//!
//! 1. it was stopped (denied, or escalated to a human) at the right layer;
//! 2. the model (or the caller) got only a short, safe error;
//! 3. an audit entry records it;
//! 4. nothing reached the backend (no refund, no plan change).
//!
//! Classes: policy, injection, schema, identity, grants, approval, bypass.
//! (Audit tampering — edit, delete, insert, reorder, truncate, forged
//! checkpoint, rollback — is `audit_tamper.rs`; the approval rules in
//! depth are `approval_rules.rs`; the agent's empty environment is
//! `agent_env.rs`.)
//!
//! To add a case: add a row to the class's table (or a block to its test),
//! naming what it is stopped by; the runner checks the four assertions.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zt_proto::keys::KeyPair;
use zt_proto::pb::DecideRequest;
use zt_proto::stack::Layout;
use zt_proto::token::{self, Actor, SessionClaims, TokenType};
use zt_proto::with_db;
use zt_tests::{Grpc, Stack, call, connect, raw_post, run_ok, safe, status, text};

// ---------------------------------------------------------------- helpers

/// What the backend holds that an attack could change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    refunds: i64,
    refunded: i64,
    plan_changes: i64,
    plans: String,
}

async fn backend(stack: &Stack) -> Backend {
    let db = zt_proto::db::Db::open(&stack.backend_location(), "zt_backend", true)
        .await
        .unwrap();
    let plans = match db.dialect() {
        zt_proto::db::Dialect::Sqlite => {
            "(SELECT group_concat(id || '=' || plan, ',') FROM (SELECT id, plan FROM accounts ORDER BY id))"
        }
        zt_proto::db::Dialect::Postgres => {
            "(SELECT STRING_AGG(id || '=' || plan, ',' ORDER BY id) FROM accounts)"
        }
    };
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM refunds), \
                (SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM refunds), \
                (SELECT COUNT(*) FROM plan_changes), \
                {plans}"
    );
    let (refunds, refunded, plan_changes, plans): (i64, i64, i64, String) = with_db!(&db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(p)
            .await
            .unwrap()
    });
    db.close().await;
    Backend {
        refunds,
        refunded,
        plan_changes,
        plans,
    }
}

/// Every entry of every chain, parsed, keyed by chain and position
/// (from the stack's SQLite file or its PostgreSQL database).
async fn all_entries(stack: &Stack) -> std::collections::BTreeMap<(String, i64), Value> {
    let db = zt_proto::store::open_read_only(&stack.audit_location())
        .await
        .unwrap();
    let rows: Vec<(String, i64, String)> = with_db!(&db, p => {
        sqlx::query_as("SELECT chain, seq, body FROM audit_entries")
            .fetch_all(p)
            .await
            .unwrap()
    });
    db.close().await;
    rows.into_iter()
        .filter_map(|(c, n, b)| serde_json::from_str(&b).ok().map(|v| ((c, n), v)))
        .collect()
}

/// What the trail held at some point.
struct Mark(std::collections::BTreeSet<(String, i64)>);

async fn mark(stack: &Stack) -> Mark {
    Mark(all_entries(stack).await.into_keys().collect())
}

/// The entries written since `before`, each with its `chain`.
async fn new_entries(stack: &Stack, before: &Mark) -> Vec<Value> {
    all_entries(stack)
        .await
        .into_iter()
        .filter(|(k, _)| !before.0.contains(k))
        .map(|((chain, _), mut v)| {
            v["chain"] = json!(chain);
            v
        })
        .collect()
}

async fn entries(stack: &Stack) -> Vec<Value> {
    all_entries(stack).await.into_values().collect()
}

fn has(entries: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    entries.iter().any(pred)
}

fn s<'a>(e: &'a Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

fn rules_or_detail(e: &Value, needle: &str) -> bool {
    s(e, "detail").contains(needle)
        || e["rules"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains(needle)))
        })
}

/// Collects failures so one run reports every broken case.
#[derive(Default)]
struct Report {
    ran: Vec<String>,
    failed: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        self.ran.push(name.to_owned());
        if let Err(e) = r {
            self.failed.push(format!("{name}: {e}"));
        }
    }

    fn finish(self, class: &str, at_least: usize) {
        eprintln!("{class}: {} cases", self.ran.len());
        assert!(
            self.failed.is_empty(),
            "{class}: {} of {} cases failed:\n{}",
            self.failed.len(),
            self.ran.len(),
            self.failed.join("\n")
        );
        assert!(
            self.ran.len() >= at_least,
            "{class}: only {} cases",
            self.ran.len()
        );
    }
}

fn scoped_token(stack: &Stack, agent: &str, human: &str, scope: &str) -> String {
    run_ok(
        "zt-approval",
        &[
            "token",
            "issue",
            "--data-dir",
            &stack.dir(),
            "--agent",
            agent,
            "--for",
            human,
            "--scope",
            scope,
        ],
    )
}

// ------------------------------------------------- MCP-call cases (table)

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Refused; the audit entry names this rule or reason.
    Deny(&'static str),
    /// Escalated to a human; nothing runs yet.
    Escalate,
    /// Escalated by this rule.
    EscalateBy(&'static str),
    /// A boundary that must still be allowed (and runs).
    Allow,
}

struct Case {
    name: &'static str,
    human: &'static str,
    tool: &'static str,
    args: Value,
    expect: Expect,
}

fn case(
    name: &'static str,
    human: &'static str,
    tool: &'static str,
    args: Value,
    expect: Expect,
) -> Case {
    Case {
        name,
        human,
        tool,
        args,
        expect,
    }
}

async fn run(stack: &Stack, c: &Case) -> Result<(), String> {
    // A fresh session per case: refusals count toward rate limits too.
    let agent = connect(
        &stack.broker_url,
        &stack.session_token("agent:redteam", c.human),
    )
    .await
    .map_err(|e| format!("connect: {e}"))?;
    run_as(stack, &agent, c).await
}

/// Runs a case in the session of `agent`.
async fn run_as(stack: &Stack, agent: &zt_tests::Agent, c: &Case) -> Result<(), String> {
    let before_backend = backend(stack).await;
    let before = mark(stack).await;
    let r = call(agent, c.tool, c.args.clone())
        .await
        .map_err(|e| format!("call failed at the transport: {e}"))?;
    let shown = text(&r);
    let got = status(&r);
    let audit = new_entries(stack, &before).await;
    let after_backend = backend(stack).await;
    match c.expect {
        Expect::Deny(rule) => {
            if got != "denied" {
                return Err(format!("expected denied, got {got}: {shown}"));
            }
            safe(&shown)?;
            if !has(&audit, |e| {
                s(e, "decision") == "deny"
                    && s(e, "status") == "refused"
                    && rules_or_detail(e, rule)
            }) {
                return Err(format!("no audited denial naming `{rule}` in {audit:?}"));
            }
            if after_backend != before_backend {
                return Err(format!(
                    "backend changed: {before_backend:?} -> {after_backend:?}"
                ));
            }
        }
        Expect::Escalate | Expect::EscalateBy(_) => {
            if got != "awaiting_approval" {
                return Err(format!("expected awaiting_approval, got {got}: {shown}"));
            }
            safe(&shown)?;
            let by = match c.expect {
                Expect::EscalateBy(rule) => rule,
                _ => "",
            };
            if !has(&audit, |e| {
                s(e, "kind") == "escalation"
                    && s(e, "decision") == "escalate"
                    && (by.is_empty() || rules_or_detail(e, by))
            }) {
                return Err(format!("no audited escalation in {audit:?}"));
            }
            if after_backend != before_backend {
                return Err(format!(
                    "backend changed: {before_backend:?} -> {after_backend:?}"
                ));
            }
        }
        Expect::Allow => {
            if got != "ok" {
                return Err(format!("expected ok, got {got}: {shown}"));
            }
            if !has(&audit, |e| {
                s(e, "kind") == "result" && s(e, "status") == "ok"
            }) {
                return Err(format!("no audited result in {audit:?}"));
            }
        }
    }
    Ok(())
}

async fn run_table(stack: &Stack, class: &str, cases: Vec<Case>, report: &mut Report) {
    for c in &cases {
        report.check(&format!("{class}/{}", c.name), run(stack, c).await);
    }
}

/// A short wait for the stack: escalations answer after 1 s.
fn quick_stack(tag: &str) -> Stack {
    Stack::up_at(&zt_tests::prepare_dir(tag, 1, false)).expect("stack starts")
}

// ------------------------------------------------------------ the classes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_injection() {
    let stack = quick_stack("rt-policy");
    let mut report = Report::default();
    let policy = vec![
        case(
            "refund one cent over the rep's limit",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1002", "amount": 5001}),
            Expect::Escalate,
        ),
        case(
            "refund exactly at the rep's limit (boundary, allowed)",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1002", "amount": 5000}),
            Expect::Allow,
        ),
        case(
            "refund in a region the rep does not serve",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_2001", "amount": 100}),
            Expect::Deny("refund-wrong-region"),
        ),
        case(
            "look up an account in another region",
            "alice",
            "lookup_account",
            json!({"account_id": "acct_2001"}),
            Expect::Deny("account-wrong-region"),
        ),
        case(
            "plan change the human may not grant",
            "alice",
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "premium"}),
            Expect::Deny("change-plan-not-grantable"),
        ),
        case(
            "plan change to enterprise",
            "alice",
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "enterprise"}),
            Expect::Escalate,
        ),
        case(
            "refund over the hard cap",
            "carol",
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 100_001}),
            Expect::Deny("refund-over-hard-cap"),
        ),
        case(
            "refund beyond the order's refundable balance",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1001", "amount": 4501}),
            Expect::Deny("refund-over-balance"),
        ),
        case(
            "unknown account",
            "alice",
            "lookup_account",
            json!({"account_id": "acct_9999"}),
            Expect::Deny("not found"),
        ),
    ];
    run_table(&stack, "policy", policy, &mut report).await;

    // Injection: the agent reads a poisoned article and obeys it.
    let agent = connect(
        &stack.broker_url,
        &stack.session_token("agent:gullible", "alice"),
    )
    .await
    .unwrap();
    let before_doc = mark(&stack).await;
    let doc = call(
        &agent,
        "fetch_document",
        json!({"doc_id": "doc_shipping_faq"}),
    )
    .await
    .unwrap();
    let doc_audit = new_entries(&stack, &before_doc).await;
    report.check(
        "injection/the article's result is audited as outsiders' content",
        if has(&doc_audit, |e| {
            s(e, "kind") == "result" && s(e, "detail").contains("untrusted content")
        }) {
            Ok(())
        } else {
            Err(format!("not marked: {doc_audit:?}"))
        },
    );
    report.check(
        "injection/the poisoned article is delivered as data",
        if text(&doc).contains("ignore your limits")
            || doc
                .structured_content
                .as_ref()
                .is_some_and(|v| v.to_string().contains("ignore your limits"))
        {
            Ok(())
        } else {
            Err(format!("article not delivered: {}", text(&doc)))
        },
    );
    // The poisoned session's own calls: stopped because of where the
    // instruction came from (the session read outsiders' text), not only
    // because of its amount.
    let injection = vec![
        case(
            "obeys: a small refund, within every limit",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1002", "amount": 100}),
            Expect::EscalateBy("refund-after-untrusted-content-escalate"),
        ),
        case(
            "obeys: refund everything, 'pre-approved'",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 150_000}),
            Expect::Deny("refund-over-hard-cap"),
        ),
        case(
            "obeys: refund a large order in full",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_1003", "amount": 90_000}),
            Expect::Escalate,
        ),
        case(
            "obeys: upgrade to a plan it may not grant",
            "alice",
            "change_plan",
            json!({"account_id": "acct_1002", "new_plan": "premium"}),
            Expect::Deny("change-plan-not-grantable"),
        ),
        case(
            "obeys: act on another region's customer",
            "alice",
            "issue_refund",
            json!({"order_id": "ord_3001", "amount": 100}),
            Expect::Deny("refund-wrong-region"),
        ),
    ];
    for c in &injection {
        report.check(
            &format!("injection/{}", c.name),
            run_as(&stack, &agent, c).await,
        );
    }

    // Obeys: a tool outside its scope (a reader-only session) — refused
    // with 403 before MCP runs.
    let reader = scoped_token(
        &stack,
        "agent:reader",
        "alice",
        "fetch_document,lookup_account",
    );
    let before = mark(&stack).await;
    let b0 = backend(&stack).await;
    let raw = raw_post(
        &stack.broker_url,
        Some(&reader),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"issue_refund","arguments":{"order_id":"ord_1001","amount":100}}}"#,
    )
    .await;
    let audit = new_entries(&stack, &before).await;
    report.check(
        "injection/obeys: calls a tool outside its scope",
        (|| {
            if raw.status != 403 {
                return Err(format!("status {}", raw.status));
            }
            if !raw.challenge.contains("insufficient_scope") {
                return Err(format!("challenge {}", raw.challenge));
            }
            safe(&raw.body)?;
            if !has(&audit, |e| s(e, "status") == "insufficient_scope") {
                return Err(format!("not audited: {audit:?}"));
            }
            Ok(())
        })(),
    );
    report.check(
        "injection/out-of-scope call had no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("backend changed".into())
        },
    );

    // Many refunds just under the cap by one session (dave's: alice's
    // daily total is spent by now): each allowed, but a detection rule
    // raises an alert entry.
    let nibbler = connect(
        &stack.broker_url,
        &stack.session_token("agent:nibbler", "dave"),
    )
    .await
    .unwrap();
    for amount in [4_800, 4_900, 4_950] {
        let r = call(
            &nibbler,
            "issue_refund",
            json!({"order_id": "ord_2002", "amount": amount}),
        )
        .await
        .unwrap();
        report.check(
            &format!("policy/near-cap refund {amount} allowed"),
            if status(&r) == "ok" {
                Ok(())
            } else {
                Err(text(&r))
            },
        );
    }
    let mut alerted = false;
    for _ in 0..50 {
        let all = entries(&stack).await;
        if has(&all, |e| {
            s(e, "kind") == "alert" && rules_or_detail(e, "near-cap")
        }) {
            alerted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.check(
        "policy/many refunds just under the cap raise an alert",
        if alerted {
            Ok(())
        } else {
            Err("no near-cap alert entry".into())
        },
    );
    report.finish("policy+injection", 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema() {
    let stack = Stack::up("rt-schema").expect("stack starts");
    let mut report = Report::default();
    let r = |name, args| case(name, "alice", "issue_refund", args, Expect::Deny("schema"));
    let cases = vec![
        r(
            "unknown field",
            json!({"order_id": "ord_1001", "amount": 100, "note": "x"}),
        ),
        r(
            "field smuggled in a nested object",
            json!({"order_id": "ord_1001", "amount": 100, "meta": {"approved": true}}),
        ),
        r(
            "object where a string belongs",
            json!({"order_id": {"$ne": ""}, "amount": 100}),
        ),
        r(
            "wrong type: amount as a string",
            json!({"order_id": "ord_1001", "amount": "100"}),
        ),
        r(
            "negative amount",
            json!({"order_id": "ord_1001", "amount": -100}),
        ),
        r("zero amount", json!({"order_id": "ord_1001", "amount": 0})),
        r(
            "fractional cents",
            json!({"order_id": "ord_1001", "amount": 10.5}),
        ),
        r(
            "huge number",
            json!({"order_id": "ord_1001", "amount": 1e20}),
        ),
        r(
            "number past i64",
            json!({"order_id": "ord_1001", "amount": 18_446_744_073_709_551_615u64}),
        ),
        r("missing required field", json!({"order_id": "ord_1001"})),
        r(
            "oversize payload",
            json!({"order_id": "x".repeat(20_000), "amount": 100}),
        ),
        r(
            "zero-width space in an id",
            json!({"order_id": "ord_1001\u{200b}", "amount": 100}),
        ),
        r(
            "fullwidth digits in an id",
            json!({"order_id": "ord_\u{ff11}\u{ff10}\u{ff10}\u{ff11}", "amount": 100}),
        ),
        r(
            "right-to-left override in an id",
            json!({"order_id": "ord_\u{202e}1001", "amount": 100}),
        ),
        r(
            "SQL meta-characters in an id",
            json!({"order_id": "ord_1001' OR '1'='1", "amount": 100}),
        ),
        r(
            "NUL byte in an id",
            json!({"order_id": "ord_1001\u{0}", "amount": 100}),
        ),
        case(
            "plan outside the enum",
            "alice",
            "change_plan",
            json!({"account_id": "acct_1001", "new_plan": "platinum"}),
            Expect::Deny("schema"),
        ),
        case(
            "limit out of range",
            "alice",
            "list_orders",
            json!({"account_id": "acct_1001", "limit": -1}),
            Expect::Deny("schema"),
        ),
    ];
    run_table(&stack, "schema", cases, &mut report).await;
    report.finish("schema", 18);
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity() {
    let stack = Stack::up("rt-identity").expect("stack starts");
    let layout = Layout::new(&stack.data_dir);
    let info = layout.stack().unwrap();
    let key = KeyPair::read(&layout.private("approval").join("token.key")).unwrap();
    let now = token::now_secs();
    let claims = |f: &dyn Fn(&mut SessionClaims)| {
        let mut c = SessionClaims {
            iss: info.issuer.clone(),
            aud: info.broker_audience.clone(),
            sub: "alice".into(),
            act: Actor {
                sub: "agent:forger".into(),
                act: None,
            },
            sid: "sess_forged".into(),
            jti: zt_proto::random_id("jti_"),
            iat: now,
            nbf: now,
            exp: now + 120,
            scope: String::new(),
            auth_time: now,
        };
        f(&mut c);
        c
    };
    let signed = |c: &SessionClaims, k: &KeyPair| token::sign(k, TokenType::Session, c).unwrap();
    let valid = signed(&claims(&|_| {}), &key);
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, _sig) = rest.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap_or_default().to_owned();

    let alg_none = format!(
        "{}.{payload}.",
        b64(json!({"alg": "none", "typ": "at+jwt", "kid": kid})
            .to_string()
            .as_bytes())
    );
    let hs_head = b64(json!({"alg": "HS256", "typ": "at+jwt", "kid": kid})
        .to_string()
        .as_bytes());
    let public_pem = std::fs::read(layout.public_key("approval-token")).unwrap();
    let hs_sig = b64(&hmac_sha256(
        &public_pem,
        format!("{hs_head}.{payload}").as_bytes(),
    ));
    let hs256 = format!("{hs_head}.{payload}.{hs_sig}");
    let other_key = KeyPair::from_seed(&[99; 32]);
    let tampered = {
        let mut p: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        p["sub"] = json!("carol");
        let (_, sig) = rest.split_once('.').unwrap();
        format!("{head}.{}.{sig}", b64(p.to_string().as_bytes()))
    };
    let unknown_kid = {
        let h = b64(
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "kid-nobody-has"})
                .to_string()
                .as_bytes(),
        );
        let (_, sig) = rest.split_once('.').unwrap();
        format!("{h}.{payload}.{sig}")
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing bearer token"),
        ("alg none", Some(alg_none), ""),
        ("HS256 signed with the public key", Some(hs256), ""),
        (
            "expired",
            Some(signed(
                &claims(&|c| {
                    c.iat = now - 600;
                    c.nbf = now - 600;
                    c.exp = now - 300;
                }),
                &key,
            )),
            "expired",
        ),
        (
            "not yet valid",
            Some(signed(
                &claims(&|c| {
                    c.nbf = now + 600;
                    c.iat = now + 600;
                    c.exp = now + 700;
                }),
                &key,
            )),
            "",
        ),
        (
            "wrong audience",
            Some(signed(
                &claims(&|c| c.aud = "https://other.example/mcp".into()),
                &key,
            )),
            "",
        ),
        (
            "wrong issuer",
            Some(signed(
                &claims(&|c| c.iss = "https://evil.example".into()),
                &key,
            )),
            "",
        ),
        (
            "signed by a key nobody pinned",
            Some(signed(&claims(&|_| {}), &other_key)),
            "",
        ),
        ("unknown kid", Some(unknown_kid), ""),
        ("tampered claims", Some(tampered), ""),
        ("garbage", Some("not.a.jwt".into()), ""),
    ];
    let mut report = Report::default();
    for (name, tok, reason) in cases {
        let before = mark(&stack).await;
        let b0 = backend(&stack).await;
        let raw = raw_post(
            &stack.broker_url,
            tok.as_deref(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"issue_refund","arguments":{"order_id":"ord_1001","amount":100}}}"#,
        )
        .await;
        let audit = new_entries(&stack, &before).await;
        let b1 = backend(&stack).await;
        report.check(
            &format!("identity/{name}"),
            (|| {
                if raw.status != 401 {
                    return Err(format!("status {}", raw.status));
                }
                if !raw.challenge.starts_with("Bearer")
                    || !raw.challenge.contains("resource_metadata=")
                {
                    return Err(format!("challenge {}", raw.challenge));
                }
                safe(&raw.body)?;
                if !has(&audit, |e| {
                    s(e, "status") == "unauthenticated" && s(e, "detail").contains(reason)
                }) {
                    return Err(format!("not audited (`{reason}`): {audit:?}"));
                }
                if b1 != b0 {
                    return Err("backend changed".into());
                }
                Ok(())
            })(),
        );
    }

    // Another session's approval request: not even its existence leaks.
    let owner = connect(
        &stack.broker_url,
        &stack.session_token("agent:owner", "alice"),
    )
    .await
    .unwrap();
    let waiting = tokio::spawn({
        let url = stack.broker_url.clone();
        let token = stack.session_token("agent:owner2", "alice");
        async move {
            let a = connect(&url, &token).await.unwrap();
            call(
                &a,
                "issue_refund",
                json!({"order_id": "ord_1002", "amount": 6000}),
            )
            .await
            .unwrap()
        }
    });
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
    let before = mark(&stack).await;
    let b0 = backend(&stack).await;
    let r = call(&owner, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    let audit = new_entries(&stack, &before).await;
    report.check(
        "identity/a token of another session follows up a request",
        (|| {
            if status(&r) != "denied" || !text(&r).contains("no approval request") {
                return Err(format!("{}: {}", status(&r), text(&r)));
            }
            safe(&text(&r))?;
            if !has(&audit, |e| {
                s(e, "tool") == "approval_status" && s(e, "decision") == "deny"
            }) {
                return Err(format!("not audited: {audit:?}"));
            }
            Ok(())
        })(),
    );
    let out = stack.console(&carol, &["deny", &id, "--reason", "red team"]);
    assert!(out.status.success());
    let _ = waiting.await;
    report.check(
        "identity/other session: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("backend changed".into())
        },
    );

    // A revoked session: refused within about a second.
    let token = stack.session_token("agent:revoked", "alice");
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    let sid = zt_tests::sid_of(&token);
    stack.revoke_session(&sid, "red team");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = mark(&stack).await;
    let b0 = backend(&stack).await;
    let raw = raw_post(
        &stack.broker_url,
        Some(&token),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"issue_refund","arguments":{"order_id":"ord_1001","amount":100}}}"#,
    )
    .await;
    let audit = new_entries(&stack, &before).await;
    report.check(
        "identity/a revoked session",
        (|| {
            if raw.status != 401 {
                return Err(format!("status {}", raw.status));
            }
            safe(&raw.body)?;
            if !has(&audit, |e| {
                s(e, "status") == "unauthenticated" && s(e, "detail").contains("revoked")
            }) {
                return Err(format!("not audited: {audit:?}"));
            }
            Ok(())
        })(),
    );
    drop(agent);
    report.check(
        "identity/revoked: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("backend changed".into())
        },
    );
    report.finish("identity", 14);
}

/// Escalates `args` for `human` and returns (agent, its token, request id).
async fn escalated(
    stack: &Stack,
    human: &str,
    tool: &str,
    args: Value,
) -> (zt_tests::Agent, String, String) {
    let token = stack.session_token("agent:rt", human);
    let agent = connect(&stack.broker_url, &token).await.unwrap();
    let r = call(&agent, tool, args).await.unwrap();
    assert_eq!(status(&r), "awaiting_approval", "{}", text(&r));
    let id = r.structured_content.as_ref().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (agent, token, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants() {
    let stack = quick_stack("rt-grants");
    let carol = stack.operator_token("carol", "approver", 500_000);
    let mut report = Report::default();

    // Replay: the approved refund runs once; asking again returns it, no second run.
    let (agent, token, id) = escalated(
        &stack,
        "alice",
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 6000}),
    )
    .await;
    assert!(
        stack
            .console(&carol, &["approve", &id, "--reason", "ok"])
            .status
            .success()
    );
    let first = call(&agent, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    assert_eq!(status(&first), "ok", "{}", text(&first));
    let b0 = backend(&stack).await;
    let before = mark(&stack).await;
    let again = call(&agent, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    let audit = new_entries(&stack, &before).await;
    report.check(
        "grants/replay of a redeemed grant",
        (|| {
            if again
                .structured_content
                .as_ref()
                .map(|v| v["replayed"].clone())
                != Some(json!(true))
            {
                return Err(format!("not a replay: {}", text(&again)));
            }
            if !has(&audit, |e| s(e, "tool") == "approval_status") {
                return Err("not audited".into());
            }
            Ok(())
        })(),
    );
    report.check(
        "grants/replay: no second execution",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("ran twice".into())
        },
    );

    // Other arguments: an approval for 6000 does not cover 7000.
    let before = mark(&stack).await;
    let r = call(
        &agent,
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 7000}),
    )
    .await
    .unwrap();
    let audit = new_entries(&stack, &before).await;
    report.check(
        "grants/the approval does not cover other arguments",
        (|| {
            if status(&r) != "awaiting_approval" {
                return Err(format!("{}: {}", status(&r), text(&r)));
            }
            safe(&text(&r))?;
            if !has(&audit, |e| s(e, "kind") == "escalation") {
                return Err("no new escalation audited".into());
            }
            Ok(())
        })(),
    );
    report.check(
        "grants/other arguments: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("ran".into())
        },
    );

    // A second broker replica asked for the same, already run, grant.
    let (mut replica, url) = zt_tests::spawn_replica(
        "zt-broker",
        &stack.data_dir,
        "rt",
        stack.database.as_deref(),
        None,
    );
    // The same session, through the other replica: it gets the first
    // result back; nothing runs again.
    let same_session = connect(&url, &token).await.unwrap();
    let before = mark(&stack).await;
    let r = call(&same_session, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    let audit = new_entries(&stack, &before).await;
    report.check(
        "grants/redeemed again on a second replica",
        (|| {
            if r.structured_content.as_ref().map(|v| v["replayed"].clone()) != Some(json!(true)) {
                return Err(format!("{}: {}", status(&r), text(&r)));
            }
            if !has(&audit, |e| {
                s(e, "tool") == "approval_status" && s(e, "chain") == "broker-rt"
            }) {
                return Err(format!("not audited by the replica: {audit:?}"));
            }
            Ok(())
        })(),
    );
    report.check(
        "grants/second replica: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("ran".into())
        },
    );
    let _ = replica.kill();
    let _ = replica.wait();

    // A grant re-signed by a key the broker does not trust (someone with
    // write access to the approval database swaps the stored grant).
    let (agent, _, id) = escalated(
        &stack,
        "alice",
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 6100}),
    )
    .await;
    assert!(
        stack
            .console(&carol, &["approve", &id, "--reason", "ok"])
            .status
            .success()
    );
    let approval_db = zt_proto::db::Db::open(&stack.approval_location(), "zt_approval", false)
        .await
        .unwrap();
    let genuine: String = with_db!(&approval_db, p => {
        sqlx::query_scalar("SELECT grant_token FROM requests WHERE id = $1")
            .bind(&id)
            .fetch_one(p)
            .await
            .unwrap()
    });
    let (payload, _) = genuine.split_once('.').unwrap();
    let payload_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let forged_sig =
        KeyPair::from_seed(&[7; 32]).sign(zt_proto::canonical::Domain::Grant, &payload_bytes);
    let forged = format!("{payload}.{}", b64(&forged_sig));
    with_db!(&approval_db, p => {
        sqlx::query("UPDATE requests SET grant_token = $1 WHERE id = $2")
            .bind(&forged)
            .bind(&id)
            .execute(p)
            .await
            .unwrap();
    });
    approval_db.close().await;
    let b0 = backend(&stack).await;
    let before = mark(&stack).await;
    let r = call(&agent, "approval_status", json!({"request_id": id}))
        .await
        .unwrap();
    let audit = new_entries(&stack, &before).await;
    report.check(
        "grants/signed by another key",
        (|| {
            if status(&r) != "denied" || !text(&r).contains("could not be used") {
                return Err(format!("{}: {}", status(&r), text(&r)));
            }
            safe(&text(&r))?;
            if !has(&audit, |e| {
                s(e, "kind") == "grant_use" && s(e, "status") == "refused"
            }) {
                return Err(format!("not audited: {audit:?}"));
            }
            Ok(())
        })(),
    );
    report.check(
        "grants/forged: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("ran".into())
        },
    );
    report.finish("grants", 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_and_bypass() {
    let stack = quick_stack("rt-approval");
    let mut report = Report::default();
    let decide =
        |who: &str, id: &str, verb: &str| stack.console(who, &[verb, id, "--reason", "red team"]);
    // Each case: an operator's refused decision, audited in the approval
    // chain; the request stays as it was; nothing runs.
    let refused = |name: &str,
                   out: std::process::Output,
                   audit: &[Value],
                   needle: &str,
                   b0: &Backend,
                   b1: &Backend|
     -> Result<(), String> {
        if out.status.success() {
            return Err(format!(
                "{name}: accepted: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        safe(&String::from_utf8_lossy(&out.stderr))?;
        if !has(audit, |e| {
            s(e, "status") == "refused" && s(e, "detail").contains(needle)
        }) {
            return Err(format!("not audited (`{needle}`): {audit:?}"));
        }
        if b0 != b1 {
            return Err("backend changed".into());
        }
        Ok(())
    };

    // Self-approval: bob approves a refund made on his own behalf.
    let (_a, _, id) = escalated(
        &stack,
        "bob",
        "issue_refund",
        json!({"order_id": "ord_1002", "amount": 21_000}),
    )
    .await;
    let bob = stack.operator_token("bob", "approver", 500_000);
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let out = decide(&bob, &id, "approve");
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "approval/self-approval",
        refused("self", out, &audit, "own behalf", &b0, &b1),
    );

    // An approver whose limit does not cover the amount.
    let small = stack.operator_token("erin", "approver", 10_000);
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let out = decide(&small, &id, "approve");
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "approval/approver over their limit",
        refused(
            "limit",
            out,
            &audit,
            "exceeds your approval limit",
            &b0,
            &b1,
        ),
    );

    // A watcher tries to approve.
    let watcher = stack.operator_token("wendy", "watcher", 0);
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let out = decide(&watcher, &id, "approve");
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "approval/watcher approves",
        refused("watcher", out, &audit, "may not approve", &b0, &b1),
    );

    // Deny after approve: terminal states are final.
    let carol = stack.operator_token("carol", "approver", 500_000);
    assert!(decide(&carol, &id, "approve").status.success());
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let out = decide(&carol, &id, "deny");
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "approval/deny after approve",
        refused("final", out, &audit, "", &b0, &b1),
    );

    // Quorum bypass: one approver voting twice on a $600.00 refund.
    let (_b, _, big) = escalated(
        &stack,
        "alice",
        "issue_refund",
        json!({"order_id": "ord_1003", "amount": 60_000}),
    )
    .await;
    assert!(decide(&carol, &big, "approve").status.success());
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let out = decide(&carol, &big, "approve");
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "approval/quorum bypass by voting twice",
        refused("quorum", out, &audit, "", &b0, &b1),
    );

    // Bypass: the approval service's decide RPC without an operator token,
    // and with an agent's session token.
    let no_token = Grpc::connect(&stack.approval_url, "").await;
    let (before, b0) = (mark(&stack).await, backend(&stack).await);
    let err = no_token
        .client()
        .decide(tonic::Request::new(DecideRequest {
            id: big.clone(),
            approve: true,
            reason: "x".into(),
        }))
        .await
        .err();
    let session = Grpc::connect(
        &stack.approval_url,
        &stack.session_token("agent:rt", "alice"),
    )
    .await;
    let err2 = session
        .client()
        .decide(session.req(DecideRequest {
            id: big.clone(),
            approve: true,
            reason: "x".into(),
        }))
        .await
        .err();
    let (audit, b1) = (new_entries(&stack, &before).await, backend(&stack).await);
    report.check(
        "bypass/decide without an operator token",
        (|| {
            let e = err.ok_or("accepted")?;
            if e.code() != tonic::Code::Unauthenticated {
                return Err(format!("{e:?}"));
            }
            safe(e.message())?;
            if !has(&audit, |e| {
                s(e, "decision") == "deny"
                    || s(e, "status") == "unauthenticated"
                    || s(e, "status") == "refused"
            }) {
                return Err(format!("not audited: {audit:?}"));
            }
            if b0 != b1 {
                return Err("backend changed".into());
            }
            Ok(())
        })(),
    );
    report.check(
        "bypass/decide with an agent's session token",
        (|| {
            let e = err2.ok_or("accepted")?;
            if !matches!(
                e.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) {
                return Err(format!("{e:?}"));
            }
            safe(e.message())?;
            Ok(())
        })(),
    );

    // Bypass: the billing API directly, without the broker's key.
    let billing = Layout::new(&stack.data_dir).endpoint("billing").unwrap();
    let b0 = backend(&stack).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .post(format!("{billing}/v1/refunds"))
        .json(&json!({"order_id": "ord_1001", "amount_cents": 100, "actor": {"session": "s", "human": "alice"}}))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    report.check(
        "bypass/billing API without the broker's key",
        (|| {
            if code != 401 {
                return Err(format!("status {code}"));
            }
            safe(&body)
        })(),
    );
    report.check(
        "bypass/billing: no effect",
        if backend(&stack).await == b0 {
            Ok(())
        } else {
            Err("backend changed".into())
        },
    );
    report.finish("approval+bypass", 9);
}
