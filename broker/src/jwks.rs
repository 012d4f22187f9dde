//! Session-token keys from an identity provider's JWKS endpoint, so a real
//! IdP can issue the agents' session tokens instead of the stack's own
//! approval service.
//!
//! The document is fetched at start (a broker that cannot fetch it does not
//! start), re-fetched every [`REFRESH`], and re-fetched when a token names a
//! key id it does not know (at most every [`MIN_REFETCH`], so made-up key ids
//! cannot turn the broker into a request amplifier). A failed fetch keeps the
//! last good key set.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use zt_proto::token::{self, Expect, KeySet, Lifetime, TokenError, TokenType};

/// Periodic refresh.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Shortest interval between fetches forced by unknown key ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_DOC: usize = 256 * 1024;

/// A JWKS-backed key set.
#[derive(Debug)]
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    set: RwLock<KeySet>,
    last_fetch: Mutex<Instant>,
}

impl Jwks {
    /// Fetches the document at `url`; fails if it cannot.
    pub async fn fetch(url: &str) -> anyhow::Result<Arc<Jwks>> {
        // Idempotent: only the first install in a process takes effect.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Whoever answers this URL decides which session tokens the broker
        // accepts: TLS off loopback, and no redirect to anywhere else.
        anyhow::ensure!(
            url.starts_with("https://") || crate::backend::loopback_http(url),
            "the JWKS URL {url} must use https (plain http only on loopback)"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the JWKS client")?;
        let set = download(&http, url)
            .await
            .with_context(|| format!("fetching JWKS {url}"))?;
        let jwks = Arc::new(Jwks {
            url: url.to_owned(),
            http,
            set: RwLock::new(set),
            last_fetch: Mutex::new(Instant::now()),
        });
        let periodic = jwks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.tick().await;
            loop {
                tick.tick().await;
                periodic.refetch().await;
            }
        });
        Ok(jwks)
    }

    fn current(&self) -> KeySet {
        self.set.read().map(|s| s.clone()).unwrap_or_default()
    }

    async fn refetch(&self) {
        *self.last_fetch.lock().await = Instant::now();
        match download(&self.http, &self.url).await {
            Ok(set) => {
                if let Ok(mut s) = self.set.write() {
                    *s = set;
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last key set")
            }
        }
    }

    /// Verifies a token, re-fetching once if it names an unknown key.
    pub async fn verify<C: DeserializeOwned + Lifetime>(
        &self,
        jwt: &str,
        typ: TokenType,
        expect: &Expect<'_>,
    ) -> Result<C, TokenError> {
        match token::verify(jwt, &self.current(), typ, expect) {
            Err(TokenError::UnknownKey) => {
                let due = self.last_fetch.lock().await.elapsed() >= MIN_REFETCH;
                if !due {
                    return Err(TokenError::UnknownKey);
                }
                self.refetch().await;
                token::verify(jwt, &self.current(), typ, expect)
            }
            other => other,
        }
    }
}

async fn download(http: &reqwest::Client, url: &str) -> anyhow::Result<KeySet> {
    let resp = http.get(url).send().await?.error_for_status()?;
    if resp.content_length().is_some_and(|n| n > MAX_DOC as u64) {
        anyhow::bail!("JWKS document too large");
    }
    let body = resp.bytes().await?;
    if body.len() > MAX_DOC {
        anyhow::bail!("JWKS document too large");
    }
    Ok(KeySet::from_jwks(&String::from_utf8_lossy(&body))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn plain_http_off_loopback_and_redirects_are_refused() {
        let err = Jwks::fetch("http://idp.example/jwks.json")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("must use https"), "{err:#}");

        let key = zt_proto::keys::KeyPair::from_seed(&[7; 32]).public();
        let doc = KeySet::new(vec![key]).to_jwks();
        let good = serve(axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { doc }
            }),
        ))
        .await;
        let target = format!("{good}/jwks.json");
        assert!(
            Jwks::fetch(&target).await.is_ok(),
            "the document itself is fine"
        );
        // A redirect to that same document is not followed.
        let bouncer = serve(axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let target = target.clone();
                async move { axum::response::Redirect::temporary(&target) }
            }),
        ))
        .await;
        assert!(Jwks::fetch(&format!("{bouncer}/jwks.json")).await.is_err());
    }
}
