//! The billing adapter: refunds and plan changes through the billing API,
//! authenticated with an API key that lives in the broker's private
//! directory and nowhere else.
//!
//! The key is sent only to the configured billing URL (which must be
//! `https://`, or `http://` on loopback), never logged and never part of any
//! result. Errors the API explains (not found, refused) reach the model as
//! a short sanitized message; anything else is "the backend could not
//! complete the request" plus a log line.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Actor, Adapter, BackendError};

/// How long one billing request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An API key; its `Debug` does not show it.
#[derive(Clone)]
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A client of the billing API.
#[derive(Debug, Clone)]
pub struct Billing {
    base: String,
    key: ApiKey,
    http: reqwest::Client,
}

/// Why a billing client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The URL is not `https://` or loopback `http://`.
    #[error(
        "billing URL `{0}` must be https://, or http:// on a loopback address (the API key travels with every request)"
    )]
    InsecureUrl(String),
    /// The key file is empty or not a key.
    #[error("the billing API key file is empty or malformed")]
    BadKey,
    /// The HTTP client could not be built.
    #[error("building the billing HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub(crate) fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl Billing {
    /// A client for the API at `url` presenting `key`.
    pub fn new(url: &str, key: &str) -> Result<Billing, BillingError> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("https://") || loopback_http(url)) {
            return Err(BillingError::InsecureUrl(url.to_owned()));
        }
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(BillingError::BadKey);
        }
        // Idempotent: only the first install in a process takes effect.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Billing {
            base: url.to_owned(),
            key: ApiKey(key.to_owned()),
            http,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, BackendError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.key.0)
            .json(&body)
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("billing {path}: {e}")))?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| BackendError::Unavailable(format!("billing {path}: bad response: {e}")))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(super::safe_message)
            .unwrap_or_default();
        match status.as_u16() {
            404 | 409 if !message.is_empty() => Err(BackendError::Refused(message)),
            401 | 403 => Err(BackendError::Unavailable(format!(
                "billing {path}: the API refused the broker's key ({status})"
            ))),
            _ => Err(BackendError::Unavailable(format!(
                "billing {path}: {status}: {message}"
            ))),
        }
    }
}

fn actor_json(actor: &Actor<'_>) -> Value {
    let mut v = json!({ "session": actor.session, "human": actor.human });
    if let (Some(g), Value::Object(m)) = (actor.grant_id, &mut v) {
        m.insert("grant_id".into(), json!(g));
    }
    v
}

const TOOLS: &[&str] = &["issue_refund", "change_plan"];

impl Adapter for Billing {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn tools(&self) -> &'static [&'static str] {
        TOOLS
    }

    fn execute<'a>(
        &'a self,
        tool: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let field = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
            match tool {
                "issue_refund" => {
                    let mut body = json!({
                        "order_id": field("order_id"),
                        "amount_cents": field("amount"),
                        "actor": actor_json(actor),
                    });
                    if let (Some(key), Value::Object(m)) = (args.get("idempotency_key"), &mut body)
                    {
                        m.insert("idempotency_key".into(), key.clone());
                    }
                    self.post("/v1/refunds", body).await
                }
                "change_plan" => {
                    let body = json!({
                        "account_id": field("account_id"),
                        "new_plan": field("new_plan"),
                        "actor": actor_json(actor),
                    });
                    self.post("/v1/plan-changes", body).await
                }
                other => Err(BackendError::Unavailable(format!(
                    "the billing adapter does not execute `{other}`"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_travels_only_over_tls_or_loopback() {
        assert!(Billing::new("https://billing.example.com", "ztb_x").is_ok());
        assert!(Billing::new("http://127.0.0.1:8080/", "ztb_x").is_ok());
        assert!(Billing::new("http://localhost:1", "ztb_x").is_ok());
        for bad in [
            "http://billing.example.com",
            "http://127.0.0.1.evil.com",
            "http://127.0.0.1@evil.com",
            "ftp://127.0.0.1",
        ] {
            assert!(
                matches!(
                    Billing::new(bad, "ztb_x"),
                    Err(BillingError::InsecureUrl(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Billing::new("https://b.example", " "),
            Err(BillingError::BadKey)
        ));
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let b = Billing::new("http://127.0.0.1:1", "ztb_secret").expect("client");
        assert!(!format!("{b:?}").contains("ztb_secret"));
    }

    #[test]
    fn backend_messages_are_bounded_single_lines() {
        let long = "x".repeat(500);
        assert_eq!(super::super::safe_message(&long).chars().count(), 201);
        assert_eq!(super::super::safe_message("a\nb\u{1b}[2J"), "a b [2J");
    }
}
