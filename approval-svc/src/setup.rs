//! Stack initialization and token issuance from the approval service's keys.

use std::path::PathBuf;

use anyhow::{Context, bail};
use zt_proto::keys::KeyPair;
use zt_proto::pinned::TrustRoots;
use zt_proto::stack::{Layout, StackInfo};
use zt_proto::token::{
    self, Actor, DEFAULT_SESSION_TTL_SECS, LauncherClaims, MAX_LAUNCHER_TTL_SECS,
    MAX_OPERATOR_TTL_SECS, MAX_SESSION_AGE_SECS, MAX_SESSION_TTL_SECS, OperatorClaims, Role,
    SessionClaims, TokenType,
};

/// Name of this service's audit chain.
pub const AUDIT_CHAIN: &str = "approval";

/// The approval service's private keys.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs session and operator tokens.
    pub token: KeyPair,
    /// Signs one-time grants.
    pub grant: KeyPair,
    /// Signs this service's audit chain.
    pub audit: KeyPair,
}

fn key_path(layout: &Layout, name: &str) -> PathBuf {
    layout.private("approval").join(format!("{name}.key"))
}

/// Creates (or completes) the approval service's part of a stack: the stack
/// identity, its private directory and keys, the public keys others pin,
/// and the policy data if none is there yet. Idempotent.
pub fn init(layout: &Layout) -> anyhow::Result<(StackInfo, Keys)> {
    let stack = layout.stack_or_create()?;
    layout.create_private("approval")?;
    let keys = Keys {
        token: KeyPair::load_or_generate(
            &key_path(layout, "token"),
            &layout.public_key("approval-token"),
        )?,
        grant: KeyPair::load_or_generate(
            &key_path(layout, "grant"),
            &layout.public_key("approval-grant"),
        )?,
        audit: KeyPair::load_or_generate(
            &key_path(layout, "audit"),
            &layout.audit_key(AUDIT_CHAIN),
        )?,
    };
    // The service trusts its own token keys only as pinned here, and the
    // keys they introduce by rotation, never a file that appears in public/.
    TrustRoots::ensure(&trust_path(layout), layout, &["approval-token"])?
        .publish(&layout.trust_file(), &["approval-token"])?;
    crate::tls::ensure_ca(layout, &stack)?;
    if !layout.policies().join("tools.toml").exists() {
        zt_policies::shipped::install(&layout.policies())
            .with_context(|| format!("writing policy data to {}", layout.policies().display()))?;
    }
    Ok((stack, keys))
}

/// The approval service's trust roots (`DIR/approval/trust.json`): its own
/// token key as set up, and the broker's service key pinned on first sight.
pub fn trust_path(layout: &Layout) -> std::path::PathBuf {
    layout.private("approval").join("trust.json")
}

/// Loads the keys of an initialized stack (never creates any).
pub fn load(layout: &Layout) -> anyhow::Result<(StackInfo, Keys)> {
    let stack = layout.stack()?;
    let keys = Keys {
        token: KeyPair::read(&key_path(layout, "token"))?,
        grant: KeyPair::read(&key_path(layout, "grant"))?,
        audit: KeyPair::read(&key_path(layout, "audit"))?,
    };
    Ok((stack, keys))
}

/// Parses a duration like `300`, `90s`, `5m`, `1h`.
pub fn parse_duration_secs(text: &str) -> anyhow::Result<i64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a duration"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("`{text}` is not a duration (use s, m, h or d)"),
    };
    n.checked_mul(mult).context("duration too large")
}

/// What a session token is for.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The agent's id (becomes the current actor).
    pub agent: String,
    /// The human it acts for.
    pub human: String,
    /// Lifetime in seconds (capped).
    pub ttl_secs: Option<i64>,
    /// Tools it may call; empty = all the policy allows.
    pub scope: Vec<String>,
    /// The launcher that asked, recorded as the previous actor.
    pub launcher: Option<String>,
    /// Refresh: the session id and first-issue time to keep.
    pub continues: Option<(String, i64)>,
}

/// Mints a session token. The human must be in the stack's directory and
/// every scoped tool in its registry.
pub fn issue_session(
    layout: &Layout,
    stack: &StackInfo,
    keys: &Keys,
    req: &SessionRequest,
) -> anyhow::Result<(String, SessionClaims)> {
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_SESSION_TTL_SECS);
    if ttl <= 0 || ttl > MAX_SESSION_TTL_SECS {
        bail!(
            "--ttl must be between 1s and {}m",
            MAX_SESSION_TTL_SECS / 60
        );
    }
    if req.agent.trim().is_empty() || req.agent.len() > 128 {
        bail!("--agent must be 1 to 128 characters");
    }
    let bundle = zt_policies::PolicyBundle::load(&layout.policies())
        .with_context(|| format!("loading policy data from {}", layout.policies().display()))?;
    if bundle.human(&req.human).is_none() {
        bail!(
            "unknown human `{}`: not in the stack's directory (humans.toml)",
            req.human
        );
    }
    for tool in &req.scope {
        if bundle.tool(tool).is_none() {
            bail!("unknown tool `{tool}` in --scope");
        }
    }
    let now = token::now_secs();
    let (sid, auth_time) = req
        .continues
        .clone()
        .unwrap_or_else(|| (zt_proto::random_id("sess_"), now));
    if now - auth_time > MAX_SESSION_AGE_SECS {
        bail!(
            "session {sid} is older than {}h; start a new one",
            MAX_SESSION_AGE_SECS / 3600
        );
    }
    let claims = SessionClaims {
        iss: stack.issuer.clone(),
        aud: stack.broker_audience.clone(),
        sub: req.human.clone(),
        act: Actor {
            sub: req.agent.clone(),
            act: req.launcher.as_ref().map(|l| {
                Box::new(Actor {
                    sub: format!("launcher:{l}"),
                    act: None,
                })
            }),
        },
        sid,
        jti: zt_proto::random_id("jti_"),
        iat: now,
        nbf: now,
        exp: now + ttl,
        scope: req.scope.join(" "),
        auth_time,
    };
    Ok((
        token::sign(&keys.token, TokenType::Session, &claims)?,
        claims,
    ))
}

/// What a launcher credential may start runs for.
#[derive(Debug, Clone)]
pub struct LauncherBounds {
    /// Humans (each in the stack's directory).
    pub humans: Vec<String>,
    /// Agent ids: exact, or a prefix ending in `*`.
    pub agents: Vec<String>,
    /// Tools its sessions may be scoped to (empty: what the policy allows).
    pub scope: Vec<String>,
    /// Longest session, in seconds.
    pub max_session_ttl: i64,
}

/// Mints a launcher credential: lets a program that starts agent runs ask
/// the running service for their session tokens, for the humans, agents,
/// tools and lifetimes in `bounds` only. Returns the token and its id.
pub fn issue_launcher(
    layout: &Layout,
    stack: &StackInfo,
    keys: &Keys,
    name: &str,
    bounds: LauncherBounds,
    ttl_secs: i64,
) -> anyhow::Result<(String, String)> {
    if name.trim().is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
        bail!("--name must be 1 to 64 characters without spaces");
    }
    if ttl_secs <= 0 || ttl_secs > MAX_LAUNCHER_TTL_SECS {
        bail!(
            "--ttl must be between 1s and {}d",
            MAX_LAUNCHER_TTL_SECS / 86400
        );
    }
    if bounds.max_session_ttl <= 0 || bounds.max_session_ttl > MAX_SESSION_TTL_SECS {
        bail!(
            "--session-ttl must be between 1s and {}m",
            MAX_SESSION_TTL_SECS / 60
        );
    }
    let bundle = zt_policies::PolicyBundle::load(&layout.policies())
        .with_context(|| format!("loading policy data from {}", layout.policies().display()))?;
    if bounds.humans.is_empty() {
        bail!("--for must name the humans it may start runs for");
    }
    let mut humans = Vec::new();
    for h in &bounds.humans {
        match token::identity(h) {
            Some(id) if bundle.human(&id).is_some() => humans.push(id),
            _ => bail!("unknown human `{h}` in --for: not in the stack's directory (humans.toml)"),
        }
    }
    if bounds.agents.is_empty()
        || bounds
            .agents
            .iter()
            .any(|a| a.trim().is_empty() || a.trim() == "*" || a.len() > 128)
    {
        bail!("--agents must name agent ids (or prefixes ending in `*`), not everything");
    }
    for tool in &bounds.scope {
        if bundle.tool(tool).is_none() {
            bail!("unknown tool `{tool}` in --scope");
        }
    }
    let now = token::now_secs();
    let claims = LauncherClaims {
        iss: stack.issuer.clone(),
        aud: stack.approval_audience.clone(),
        sub: name.to_owned(),
        jti: zt_proto::random_id("jti_"),
        iat: now,
        nbf: now,
        exp: now + ttl_secs,
        humans,
        agents: bounds.agents.iter().map(|a| a.trim().to_owned()).collect(),
        scope: bounds.scope,
        max_session_ttl: bounds.max_session_ttl,
    };
    let jwt = token::sign(&keys.token, TokenType::Launcher, &claims)?;
    Ok((jwt, claims.jti))
}

/// Mints an operator token.
pub fn issue_operator(
    stack: &StackInfo,
    keys: &Keys,
    name: &str,
    role: Role,
    limit: i64,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    let Some(name) = token::identity(name) else {
        bail!(
            "--name must be 1 to 64 characters of a-z, 0-9, '.', '_', '-', starting with a letter \
             (letter case and surrounding spaces are ignored)"
        );
    };
    if limit < 0 {
        bail!("--limit must not be negative");
    }
    if ttl_secs <= 0 || ttl_secs > MAX_OPERATOR_TTL_SECS {
        bail!(
            "--ttl must be between 1s and {}h",
            MAX_OPERATOR_TTL_SECS / 3600
        );
    }
    let now = token::now_secs();
    let claims = OperatorClaims {
        iss: stack.issuer.clone(),
        aud: stack.approval_audience.clone(),
        sub: name,
        role,
        limit,
        jti: zt_proto::random_id("jti_"),
        iat: now,
        nbf: now,
        exp: now + ttl_secs,
    };
    Ok(token::sign(&keys.token, TokenType::Operator, &claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("300").unwrap(), 300);
        assert_eq!(parse_duration_secs("5m").unwrap(), 300);
        assert_eq!(parse_duration_secs("2h").unwrap(), 7200);
        assert_eq!(parse_duration_secs("2d").unwrap(), 172_800);
        assert!(parse_duration_secs("5w").is_err());
        assert!(parse_duration_secs("m").is_err());
    }
}

/// Which of the approval service's signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyName {
    /// Signs session, operator and launcher tokens.
    Token,
    /// Signs one-time grants.
    Grant,
}

impl KeyName {
    fn file(self) -> &'static str {
        match self {
            KeyName::Token => "token",
            KeyName::Grant => "grant",
        }
    }

    fn public(self) -> &'static str {
        match self {
            KeyName::Token => "approval-token",
            KeyName::Grant => "approval-grant",
        }
    }
}

/// Rotates a signing key: the current key's public half stays pinned as
/// `public/<name>-<kid>.pem` (so what it signed keeps verifying until it
/// expires), a new key becomes current. Verifiers pick both up without a
/// restart. Returns (old kid, new kid).
pub fn rotate(layout: &Layout, which: KeyName) -> anyhow::Result<(String, String)> {
    let path = key_path(layout, which.file());
    let old = KeyPair::read(&path)?;
    let retired = layout.public_key(&format!("{}-{}", which.public(), old.kid()));
    old.public().write(&retired)?;
    let new = KeyPair::generate()?;
    // The old key introduces the new one: verifiers trust it from this
    // signed record, never from its key file alone.
    zt_proto::pinned::write_introduction(layout, which.public(), &new.public(), &old)?;
    let tmp = path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    zt_proto::keys::write_private(&tmp, &new.to_pkcs8_pem()?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    new.public().write(&layout.public_key(which.public()))?;
    Ok((old.kid().to_owned(), new.kid().to_owned()))
}

/// Stops trusting a retired key: removes `public/<name>-<kid>.pem`.
pub fn retire(layout: &Layout, which: KeyName, kid: &str) -> anyhow::Result<()> {
    if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--kid must be a key id (hex)");
    }
    let path = layout.public_key(&format!("{}-{kid}", which.public()));
    std::fs::remove_file(&path).with_context(|| format!("no retired key {}", path.display()))
}
