//! A real identity provider plugged in: the broker verifies session tokens
//! with keys fetched from a JWKS URL (served here by a plain HTTP server),
//! honours the provider's issuer and audience, and picks up a new key when a
//! token names it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zt_proto::keys::KeyPair;
use zt_proto::stack::Layout;
use zt_proto::token::{self, Actor, KeySet, SessionClaims, TokenType};
use zt_tests::{Stack, raw_list, run_ok, temp_dir};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "https://broker.example/mcp";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn session(key: &KeyPair, aud: &str) -> String {
    let now = token::now_secs();
    let claims = SessionClaims {
        iss: ISSUER.into(),
        aud: aud.into(),
        sub: "alice".into(),
        act: Actor {
            sub: "agent:idp".into(),
            act: None,
        },
        sid: zt_proto::random_id("sess_"),
        jti: zt_proto::random_id("jti_"),
        iat: now,
        nbf: now,
        exp: now + 120,
        scope: String::new(),
        auth_time: now,
    };
    token::sign(key, TokenType::Session, &claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_verifies_session_tokens_from_an_identity_providers_jwks() {
    let dir = temp_dir("jwks");
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    run_ok("zt-broker", &["init", "--data-dir", &d]);

    // The "identity provider": its signing key and a JWKS document on HTTP.
    let idp = KeyPair::generate().unwrap();
    let site = temp_dir("jwks-site");
    std::fs::write(
        site.join("jwks.json"),
        KeySet::new(vec![idp.public()]).to_jwks(),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    );
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let _ = rustls::crypto::ring::default_provider().install_default();
    for _ in 0..50 {
        if reqwest::get(&url).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let config = Layout::new(&dir).private("broker").join("broker.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[identity]\njwks_url = \"{url}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let stack = Stack::up_at(&dir).expect("stack starts with an external identity provider");

    assert_eq!(
        raw_list(&stack.broker_url, Some(&session(&idp, AUDIENCE)))
            .await
            .status,
        200
    );
    // Wrong audience; and the stack's own tokens are not this broker's any more.
    assert_eq!(
        raw_list(
            &stack.broker_url,
            Some(&session(&idp, "https://other.example"))
        )
        .await
        .status,
        401
    );
    let own = stack.session_token("agent:own", "alice");
    assert_eq!(raw_list(&stack.broker_url, Some(&own)).await.status, 401);

    // The provider rotates: a token with the new kid is refused until the
    // JWKS lists it, then accepted on the next (rate-limited) re-fetch.
    let next = KeyPair::generate().unwrap();
    assert_eq!(
        raw_list(&stack.broker_url, Some(&session(&next, AUDIENCE)))
            .await
            .status,
        401
    );
    std::fs::write(
        site.join("jwks.json"),
        KeySet::new(vec![idp.public(), next.public()]).to_jwks(),
    )
    .unwrap();
    let mut status = 0;
    for _ in 0..40 {
        status = raw_list(&stack.broker_url, Some(&session(&next, AUDIENCE)))
            .await
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200, "the rotated key is fetched");
    let _ = std::fs::remove_dir_all(&site);
}
