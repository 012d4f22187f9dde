//! The one way a client reaches the approval service's gRPC port.
//!
//! `https://` URLs are verified against a CA file given by the caller (the
//! stack's `DIR/tls-ca.pem`, or one an operator gives), never the system's
//! roots; plain `http://` is allowed only to a loopback host, so tokens and
//! grants never cross a network in clear.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Why no endpoint could be made.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// Not a URL tonic can use.
    #[error("invalid approval URL {url}: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Plaintext to a host other machines may be.
    #[error(
        "refusing plaintext gRPC to {url}, which is not a loopback address: use https:// (the approval service's --tls)"
    )]
    Plaintext {
        /// The URL.
        url: String,
    },
    /// `https://` without a CA to verify it by.
    #[error("{url}: no CA to verify the approval service by ({reason})")]
    NoCa {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Whether `host` (as in a URL, IPv6 in brackets) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An endpoint for `url`, lazily connecting, with a 3 s connect timeout and
/// TCP_NODELAY; for `https://`, TLS verified against the PEM CA file `ca`.
pub fn endpoint(url: &str, ca: Option<&Path>) -> Result<Endpoint, GrpcError> {
    let invalid = |reason: String| GrpcError::Invalid {
        url: url.to_owned(),
        reason,
    };
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid("no host".into()))?
        .to_owned();
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    match uri.scheme_str() {
        Some("http") if is_loopback_host(&host) => Ok(endpoint),
        Some("http") => Err(GrpcError::Plaintext {
            url: url.to_owned(),
        }),
        Some("https") => {
            let no_ca = |reason: String| GrpcError::NoCa {
                url: url.to_owned(),
                reason,
            };
            let ca = ca.ok_or_else(|| no_ca("give --approval-ca FILE or --data-dir".into()))?;
            let pem =
                std::fs::read_to_string(ca).map_err(|e| no_ca(format!("{}: {e}", ca.display())))?;
            let domain = host.trim_start_matches('[').trim_end_matches(']');
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(domain);
            endpoint.tls_config(tls).map_err(|e| invalid(e.to_string()))
        }
        _ => Err(invalid("the scheme must be http or https".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback() {
        for ok in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
            assert!(endpoint(ok, None).is_ok(), "{ok}");
        }
        for far in [
            "http://10.0.0.1:1",
            "http://approval.internal:1",
            "http://0.0.0.0:1",
        ] {
            assert!(
                matches!(endpoint(far, None), Err(GrpcError::Plaintext { .. })),
                "{far}"
            );
        }
        assert!(matches!(
            endpoint("https://10.0.0.1:1", None),
            Err(GrpcError::NoCa { .. })
        ));
        assert!(matches!(
            endpoint("ftp://127.0.0.1:1", None),
            Err(GrpcError::Invalid { .. })
        ));
    }
}
