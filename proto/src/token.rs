//! Session, operator and service tokens: EdDSA JWTs.
//!
//! Three token types exist and none can stand in for another: each has its
//! own `typ` header, its own audience and its own claims shape.
//!
//! - **Session** (`typ: at+jwt`, RFC 9068): minted per agent run by the
//!   approval service. `sub` is the human the agent acts for; `act` is the
//!   RFC 8693 actor chain (outermost = current actor, the agent); `sid`
//!   names the run; `scope` lists the tools it may call; lifetime minutes.
//! - **Operator** (`typ: zt-operator+jwt`): a person at the console, with a
//!   role and, for approvers, an approval limit in cents.
//! - **Service** (`typ: zt-service+jwt`): the broker calling the approval
//!   service, signed by the broker's own key, so no secret is shared.
//! - **Launcher** (`typ: zt-launcher+jwt`): a program that starts agent runs
//!   and asks the approval service for their session tokens; it has the
//!   shape of a service token, issued by the approval service.
//!
//! Verification accepts only `alg: EdDSA` with a `kid` found in the pinned
//! key set, checks `aud`, `iss`, `exp` and `nbf` with at most
//! [`LEEWAY_SECS`] of clock skew, and refuses lifetimes over the type's cap.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyPair, PublicKey};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Default session lifetime, in seconds.
pub const DEFAULT_SESSION_TTL_SECS: i64 = 300;
/// Longest session lifetime ever issued or accepted, in seconds.
pub const MAX_SESSION_TTL_SECS: i64 = 900;
/// Longest operator token lifetime, in seconds (a working day).
pub const MAX_OPERATOR_TTL_SECS: i64 = 12 * 3600;
/// Service tokens are minted per call batch and live briefly.
pub const SERVICE_TTL_SECS: i64 = 120;
/// Longest launcher credential lifetime, in seconds (7 days).
pub const MAX_LAUNCHER_TTL_SECS: i64 = 7 * 24 * 3600;
/// Longest a session may be kept alive by refreshing, in seconds (8 hours).
pub const MAX_SESSION_AGE_SECS: i64 = 8 * 3600;
/// Tokens longer than this are refused before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Which kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// An agent session.
    Session,
    /// A human operator.
    Operator,
    /// A service calling another.
    Service,
    /// An agent launcher asking for session tokens.
    Launcher,
}

impl TokenType {
    /// The JOSE `typ` header value.
    pub fn header(self) -> &'static str {
        match self {
            TokenType::Session => "at+jwt",
            TokenType::Operator => "zt-operator+jwt",
            TokenType::Service => "zt-service+jwt",
            TokenType::Launcher => "zt-launcher+jwt",
        }
    }

    fn max_lifetime(self) -> i64 {
        match self {
            TokenType::Session => MAX_SESSION_TTL_SECS,
            TokenType::Operator => MAX_OPERATOR_TTL_SECS,
            TokenType::Service => SERVICE_TTL_SECS,
            TokenType::Launcher => MAX_LAUNCHER_TTL_SECS,
        }
    }
}

/// Why a token was refused. The `Display` text is safe to return to a caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or too long.
    #[error("token is malformed")]
    Malformed,
    /// `alg` other than EdDSA (including `none`, HS*, RS*).
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    /// Wrong `typ` header for this endpoint.
    #[error("token is not a {0} token")]
    Type(&'static str),
    /// No `kid`, or a `kid` not in the pinned key set.
    #[error("token signing key is unknown")]
    UnknownKey,
    /// Signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// Past `exp`.
    #[error("token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `aud` is not this service.
    #[error("token audience is wrong")]
    Audience,
    /// `iss` is not the trusted issuer.
    #[error("token issuer is wrong")]
    Issuer,
    /// Lifetime longer than the type allows.
    #[error("token lifetime exceeds the allowed maximum")]
    Lifetime,
    /// Claims missing or of the wrong shape.
    #[error("token claims are invalid")]
    Claims,
    /// The session was revoked.
    #[error("session has been revoked")]
    Revoked,
    /// Signing failed (a local key problem).
    #[error("could not sign token")]
    Sign,
}

/// An RFC 8693 actor: who is acting, and (nested) who acted before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's identifier, e.g. `agent:subscription-agent`.
    pub sub: String,
    /// The previous actor in the chain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Issuer.
    pub iss: String,
    /// Audience: the broker's resource identifier.
    pub aud: String,
    /// The human the agent acts for.
    pub sub: String,
    /// The actor chain; the outermost actor is the agent now acting.
    pub act: Actor,
    /// Session (run) id; survives refresh.
    pub sid: String,
    /// Token id; new on every issue and refresh.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Space-separated tool names this session may call; empty means every
    /// tool the policy allows.
    #[serde(default)]
    pub scope: String,
    /// When the session was first issued (Unix seconds); refresh keeps it
    /// and refuses past [`MAX_SESSION_AGE_SECS`].
    #[serde(default)]
    pub auth_time: i64,
}

impl SessionClaims {
    /// The agent now acting (the outermost actor).
    pub fn agent(&self) -> &str {
        &self.act.sub
    }

    /// The behalf-of chain, current actor first, ending with the human.
    pub fn chain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = Some(&self.act);
        while let Some(a) = cur {
            out.push(a.sub.clone());
            cur = a.act.as_deref();
        }
        out.push(self.sub.clone());
        out
    }

    /// Whether the scope admits `tool`.
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.scope.trim().is_empty() || self.scope.split_whitespace().any(|t| t == tool)
    }

    /// Whether this session may call `tool` at all: a tool its scope admits,
    /// or one of the broker's built-in tools, which every session has.
    pub fn may_call(&self, tool: &str) -> bool {
        crate::builtin::is_builtin(tool) || self.allows_tool(tool)
    }
}

/// An operator's role at the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May approve and deny, up to a limit.
    Approver,
    /// Watches live activity; read-only.
    Watcher,
    /// Browses and verifies the audit log; read-only.
    Auditor,
    /// Everything an approver may, without a limit.
    Admin,
}

impl Role {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Approver => "approver",
            Role::Watcher => "watcher",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may vote on approval requests.
    pub fn may_decide(self) -> bool {
        matches!(self, Role::Approver | Role::Admin)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "approver" => Ok(Role::Approver),
            "watcher" => Ok(Role::Watcher),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected approver, watcher, auditor or admin)"
            )),
        }
    }
}

/// Claims of an operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaims {
    /// Issuer.
    pub iss: String,
    /// Audience: the approval service.
    pub aud: String,
    /// The operator's name.
    pub sub: String,
    /// The operator's role.
    pub role: Role,
    /// Approval limit in cents (approvers); 0 means none.
    #[serde(default)]
    pub limit: i64,
    /// Token id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
}

/// Claims of a service token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClaims {
    /// Issuer: the calling service.
    pub iss: String,
    /// Audience: the called service.
    pub aud: String,
    /// The calling service's name.
    pub sub: String,
    /// Token id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
}

/// A launcher credential: a program that starts agent runs, bound to what
/// it may start them for. A credential without these bounds is not one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LauncherClaims {
    /// Issuer: the approval service.
    pub iss: String,
    /// Audience: the approval service.
    pub aud: String,
    /// The launcher's name.
    pub sub: String,
    /// Token id (revocable by it).
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// The humans it may start runs for (canonical names; never empty).
    pub humans: Vec<String>,
    /// The agent ids it may name: exact, or a prefix ending in `*`.
    pub agents: Vec<String>,
    /// The tools its sessions may be scoped to; empty: whatever the policy
    /// allows.
    #[serde(default)]
    pub scope: Vec<String>,
    /// The longest session it may issue, in seconds.
    pub max_session_ttl: i64,
}

impl LauncherClaims {
    /// Whether it may start a run of `agent` for `human`, scoped to `scope`
    /// (empty: unscoped), for `ttl` seconds; the reason when not.
    pub fn may_issue(
        &self,
        human: &str,
        agent: &str,
        scope: &[String],
        ttl: i64,
    ) -> Result<(), String> {
        if !self.humans.iter().any(|h| h == human) {
            return Err(format!(
                "launcher {} may not start runs for `{human}`",
                self.sub
            ));
        }
        let agent_ok = self.agents.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => agent.starts_with(prefix),
            None => a == agent,
        });
        if !agent_ok {
            return Err(format!(
                "launcher {} may not name agent `{agent}`",
                self.sub
            ));
        }
        if !self.scope.is_empty() {
            if scope.is_empty() {
                return Err(format!(
                    "launcher {} issues only sessions scoped to {}",
                    self.sub,
                    self.scope.join(",")
                ));
            }
            if let Some(t) = scope.iter().find(|t| !self.scope.contains(t)) {
                return Err(format!("launcher {} may not grant tool `{t}`", self.sub));
            }
        }
        if ttl > self.max_session_ttl {
            return Err(format!(
                "launcher {} issues sessions of at most {}s",
                self.sub, self.max_session_ttl
            ));
        }
        Ok(())
    }
}

/// The lifetime claims every token type shares, checked generically.
pub trait Lifetime {
    /// Issued at (Unix seconds).
    fn iat(&self) -> i64;
    /// Expiry (Unix seconds).
    fn exp(&self) -> i64;
}

macro_rules! lifetime {
    ($($t:ty),*) => {$(
        impl Lifetime for $t {
            fn iat(&self) -> i64 { self.iat }
            fn exp(&self) -> i64 { self.exp }
        }
    )*};
}
lifetime!(SessionClaims, OperatorClaims, ServiceClaims, LauncherClaims);

/// The public keys a verifier trusts (several during a rollover), by key id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<(String, PublicKey)>,
}

/// Why a JWKS document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    /// No usable Ed25519 signing key in it.
    #[error("the JWKS document has no Ed25519 signing key")]
    NoKeys,
}

impl KeySet {
    /// A key set of the given keys, each under its derived id.
    pub fn new(keys: Vec<PublicKey>) -> KeySet {
        KeySet {
            keys: keys.into_iter().map(|k| (k.kid().to_owned(), k)).collect(),
        }
    }

    /// The key with id `kid`.
    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|(id, _)| id == kid).map(|(_, k)| k)
    }

    /// Parses a JWKS document (RFC 7517), keeping the Ed25519 signing keys
    /// (`kty: OKP`, `crv: Ed25519`, no `use` or `use: sig`, no `alg` or
    /// `alg: EdDSA`) under the `kid` the document gives (or the derived one).
    /// Other keys are ignored: this verifier accepts EdDSA only.
    pub fn from_jwks(text: &str) -> Result<KeySet, JwksError> {
        use base64::Engine;
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| JwksError::Malformed("no `keys` array".into()))?;
        let field = |k: &serde_json::Value, name: &str| {
            k.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let mut out = Vec::new();
        for k in keys {
            let ed25519 = field(k, "kty").as_deref() == Some("OKP")
                && field(k, "crv").as_deref() == Some("Ed25519")
                && field(k, "use").as_deref().is_none_or(|u| u == "sig")
                && field(k, "alg").as_deref().is_none_or(|a| a == "EdDSA");
            if !ed25519 {
                continue;
            }
            let Some(x) = field(k, "x") else { continue };
            let Ok(raw) =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x.trim_end_matches('='))
            else {
                continue;
            };
            let Some(key) = PublicKey::from_hex(&hex::encode(raw)) else {
                continue;
            };
            let kid = field(k, "kid").unwrap_or_else(|| key.kid().to_owned());
            out.push((kid, key));
        }
        if out.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(KeySet { keys: out })
    }

    /// The set as a JWKS document.
    pub fn to_jwks(&self) -> String {
        use base64::Engine;
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|(kid, k)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": kid,
                    "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.as_bytes()),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

/// What a verifier expects of a token besides its signature.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Trusted issuer.
    pub issuer: &'a str,
    /// This service's audience identifier.
    pub audience: &'a str,
}

/// Signs `claims` as a JWT of type `typ` with `key`.
pub fn sign<C: Serialize>(key: &KeyPair, typ: TokenType, claims: &C) -> Result<String, TokenError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some(typ.header().to_owned());
    header.kid = Some(key.kid().to_owned());
    let enc = key.encoding_key().map_err(|_| TokenError::Sign)?;
    jsonwebtoken::encode(&header, claims, &enc).map_err(|_| TokenError::Sign)
}

/// Verifies a JWT of type `typ` against the pinned `keys` and `expect`.
pub fn verify<C: DeserializeOwned + Lifetime>(
    token: &str,
    keys: &KeySet,
    typ: TokenType,
    expect: &Expect<'_>,
) -> Result<C, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        // `alg: none` and other unknown algorithms do not parse as a header;
        // name the algorithm when the header says one.
        match unverified_alg(token) {
            alg if alg == "unknown" || alg == "EdDSA" => TokenError::Malformed,
            alg => TokenError::Algorithm(alg),
        }
    })?;
    if header.alg != jsonwebtoken::Algorithm::EdDSA {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    if header.typ.as_deref() != Some(typ.header()) {
        return Err(TokenError::Type(typ.header()));
    }
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.validate_exp = true;
    validation.set_audience(&[expect.audience]);
    validation.set_issuer(&[expect.issuer]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<C>(token, &key.decoding_key(), &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAudience => TokenError::Audience,
            K::InvalidIssuer => TokenError::Issuer,
            K::InvalidSignature => TokenError::Signature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                TokenError::Algorithm("mismatch".into())
            }
            K::MissingRequiredClaim(_) | K::Json(_) | K::InvalidClaimFormat(_) => {
                TokenError::Claims
            }
            _ => TokenError::Malformed,
        }
    })?;
    let claims = data.claims;
    let life = claims.exp() - claims.iat();
    if life <= 0 || life > typ.max_lifetime() {
        return Err(TokenError::Lifetime);
    }
    Ok(claims)
}

/// Best-effort read of the `alg` a refused header claimed, for the error text.
fn unverified_alg(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
        .map(|alg| {
            alg.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(16)
                .collect()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The canonical form of an operator's (or a human's) identity: trimmed,
/// lower-case, 1 to 64 characters of `a-z`, `0-9`, `.`, `_`, `-`, starting
/// with a letter. Two spellings of one name (`Carol`, `carol `) are one
/// identity, so neither passes a no-self-approval check nor counts twice
/// toward a quorum; anything else is not a name.
pub fn identity(name: &str) -> Option<String> {
    let id = name.trim().to_lowercase();
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    ok.then_some(id)
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    crate::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const ISS: &str = "urn:zt:approval:test";
    const AUD: &str = "urn:zt:broker:test";

    fn claims(iat: i64, ttl: i64) -> SessionClaims {
        SessionClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "alice".into(),
            act: Actor {
                sub: "agent:subscription".into(),
                act: Some(Box::new(Actor {
                    sub: "launcher:web".into(),
                    act: None,
                })),
            },
            sid: "sess_1".into(),
            jti: "jti_1".into(),
            iat,
            nbf: iat,
            exp: iat + ttl,
            scope: "lookup_account issue_refund".into(),
            auth_time: iat,
        }
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            audience: AUD,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip_and_chain() {
        let k = KeyPair::from_seed(&[1; 32]);
        let t = sign(&k, TokenType::Session, &claims(now_secs(), 300)).unwrap();
        let keys = KeySet::new(vec![k.public()]);
        let c: SessionClaims = verify(&t, &keys, TokenType::Session, &expect()).unwrap();
        assert_eq!(c.chain(), ["agent:subscription", "launcher:web", "alice"]);
        assert!(c.allows_tool("issue_refund"));
        assert!(!c.allows_tool("change_plan"));
        assert!(!c.may_call("change_plan"));
        assert!(c.may_call(crate::builtin::APPROVAL_STATUS));
    }

    #[test]
    fn attacks_are_refused() {
        let k = KeyPair::from_seed(&[1; 32]);
        let other = KeyPair::from_seed(&[2; 32]);
        let keys = KeySet::new(vec![k.public()]);
        let now = now_secs();
        let v = |t: &str| verify::<SessionClaims>(t, &keys, TokenType::Session, &expect());

        // Wrong key (unknown kid) and a known kid with a foreign signature.
        let t = sign(&other, TokenType::Session, &claims(now, 300)).unwrap();
        assert_eq!(v(&t), Err(TokenError::UnknownKey));
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[0] = b64(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":k.kid()}));
        assert_eq!(v(&parts.join(".")), Err(TokenError::Signature));

        // alg none and HS256.
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"at+jwt","kid":k.kid()})),
            b64(&serde_json::to_value(claims(now, 300)).unwrap())
        );
        assert!(matches!(v(&none), Err(TokenError::Algorithm(_))));
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some(k.kid().into()),
                typ: Some("at+jwt".into()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &claims(now, 300),
            &jsonwebtoken::EncodingKey::from_secret(k.public().as_bytes()),
        )
        .unwrap();
        assert!(matches!(v(&hs), Err(TokenError::Algorithm(_))));
        let rs = format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg":"RS256","typ":"at+jwt","kid":k.kid()})),
            b64(&serde_json::to_value(claims(now, 300)).unwrap())
        );
        assert!(matches!(v(&rs), Err(TokenError::Algorithm(_))));

        // Tampered payload.
        let good = sign(&k, TokenType::Session, &claims(now, 300)).unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut c = claims(now, 300);
        c.sub = "carol".into();
        parts[1] = b64(&serde_json::to_value(c).unwrap());
        assert_eq!(v(&parts.join(".")), Err(TokenError::Signature));

        // Expired, not yet valid, over-long lifetime.
        let t = sign(&k, TokenType::Session, &claims(now - 1000, 300)).unwrap();
        assert_eq!(v(&t), Err(TokenError::Expired));
        let mut c = claims(now, 300);
        c.nbf = now + 120;
        let t = sign(&k, TokenType::Session, &c).unwrap();
        assert_eq!(v(&t), Err(TokenError::NotYetValid));
        let t = sign(&k, TokenType::Session, &claims(now, 3600)).unwrap();
        assert_eq!(v(&t), Err(TokenError::Lifetime));

        // Wrong audience / issuer.
        let mut c = claims(now, 300);
        c.aud = "urn:zt:broker:other".into();
        assert_eq!(
            v(&sign(&k, TokenType::Session, &c).unwrap()),
            Err(TokenError::Audience)
        );
        let mut c = claims(now, 300);
        c.iss = "urn:evil".into();
        assert_eq!(
            v(&sign(&k, TokenType::Session, &c).unwrap()),
            Err(TokenError::Issuer)
        );

        // A token of another type.
        let t = sign(&k, TokenType::Operator, &claims(now, 300)).unwrap();
        assert_eq!(v(&t), Err(TokenError::Type("at+jwt")));

        // Garbage.
        assert_eq!(v("not-a-token"), Err(TokenError::Malformed));
        assert_eq!(
            v(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn jwks_round_trip_and_foreign_keys_ignored() {
        let k = KeyPair::from_seed(&[7; 32]);
        let set = KeySet::new(vec![k.public()]);
        let back = KeySet::from_jwks(&set.to_jwks()).unwrap();
        assert_eq!(back.get(k.kid()), Some(&k.public()));
        let t = sign(&k, TokenType::Session, &claims(now_secs(), 60)).unwrap();
        assert!(verify::<SessionClaims>(&t, &back, TokenType::Session, &expect()).is_ok());

        // An IdP's own kid is honoured; RSA and EC keys are ignored, not trusted.
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.public().as_bytes());
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "ec1", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "idp-2026", "x": x, "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "idp-2027", "x": x, "alg": "EdDSA"}
        ]});
        let set = KeySet::from_jwks(&doc.to_string()).unwrap();
        assert!(
            set.get("rsa1").is_none() && set.get("ec1").is_none() && set.get("idp-2026").is_none()
        );
        assert_eq!(set.get("idp-2027"), Some(&k.public()));
        assert_eq!(
            KeySet::from_jwks(r#"{"keys": []}"#).unwrap_err(),
            JwksError::NoKeys
        );
        assert!(matches!(
            KeySet::from_jwks("nope"),
            Err(JwksError::Malformed(_))
        ));
    }

    #[test]
    fn rollover_accepts_both_keys() {
        let old = KeyPair::from_seed(&[3; 32]);
        let new = KeyPair::from_seed(&[4; 32]);
        let keys = KeySet::new(vec![old.public(), new.public()]);
        for k in [&old, &new] {
            let t = sign(k, TokenType::Session, &claims(now_secs(), 60)).unwrap();
            assert!(verify::<SessionClaims>(&t, &keys, TokenType::Session, &expect()).is_ok());
        }
    }
}
