//! The broker's part of a stack: its keys, its private config with the
//! backend credentials, and the example backend's database.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use zt_proto::keys::KeyPair;
use zt_proto::pinned::{PinnedKeys, TrustRoots};
use zt_proto::stack::{Layout, StackInfo};

/// Name of this broker's audit chain.
pub const AUDIT_CHAIN: &str = "broker";

/// The broker's private configuration (`DIR/broker/broker.toml`, `0600`).
/// This file is where backend credentials live; nothing else reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The example backend's database file.
    pub backend_database: PathBuf,
    /// How long a call escalated to a human waits for the decision before
    /// the agent is told it is pending, in seconds.
    #[serde(default = "default_wait")]
    pub approval_wait_secs: u64,
    /// Largest accepted `tools/call` arguments, in bytes of JSON.
    #[serde(default = "default_max_args")]
    pub max_args_bytes: usize,
    /// Verify session tokens with an external identity provider instead of
    /// the stack's own issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Where the example's billing API runs, when not where it records
    /// itself (`DIR/run/billing.url`) and no `--billing URL` is given. The
    /// API itself is the `billing` upstream of `upstreams.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingConfig>,
}

/// Where the example's billing API runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// Written by earlier versions; the key file is now the `billing`
    /// upstream's `secret_file`.
    #[serde(default, skip_serializing)]
    pub api_key_file: Option<PathBuf>,
    /// The API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The broker's `upstreams.toml` as `init` writes it: the example business's
/// records (`sql`) and billing API (`http`), upstreams like any team's. It
/// is data (`broker/data/upstreams.toml`): no example-domain name is in the
/// broker's code.
const UPSTREAMS: &str = include_str!("../data/upstreams.toml");

/// The file the billing API key is issued into by default.
pub fn billing_key_path(layout: &Layout) -> PathBuf {
    layout.private("broker").join("billing.key")
}

/// An external identity provider for session tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Its JWKS document (`https://...` or `http://...` on loopback).
    pub jwks_url: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` its tokens carry for this broker.
    pub audience: String,
}

fn default_wait() -> u64 {
    60
}

fn default_max_args() -> usize {
    16 * 1024
}

/// Everything the broker loads at start.
#[derive(Debug)]
pub struct Material {
    /// The stack identity.
    pub stack: StackInfo,
    /// Private config.
    pub config: Config,
    /// Signs service tokens to the approval service.
    pub service_key: KeyPair,
    /// Signs the broker's audit chain.
    pub audit_key: KeyPair,
    /// Pinned keys that sign session tokens (current and retired).
    pub session_keys: Arc<PinnedKeys>,
    /// Pinned keys that sign grants (current and retired).
    pub grant_keys: Arc<PinnedKeys>,
}

fn config_path(layout: &Layout) -> PathBuf {
    layout.private("broker").join("broker.toml")
}

fn key_path(layout: &Layout, name: &str) -> PathBuf {
    layout.private("broker").join(format!("{name}.key"))
}

/// Creates the broker's keys and private config if missing. Idempotent.
/// The stack (identity, approval keys, policies) must exist already.
pub fn init(layout: &Layout) -> anyhow::Result<()> {
    layout
        .stack()
        .context("the approval service must initialize the stack first")?;
    layout.create_private("broker")?;
    KeyPair::load_or_generate(
        &key_path(layout, "service"),
        &layout.public_key("broker-service"),
    )?;
    KeyPair::load_or_generate(&key_path(layout, "audit"), &layout.audit_key(AUDIT_CHAIN))?;
    // The approval service's keys as they are at set-up: the only keys the
    // broker trusts for them, besides those they introduce by rotation.
    TrustRoots::ensure(&trust_path(layout), layout, TRUSTED)?;
    let path = config_path(layout);
    if !path.exists() {
        let config = Config {
            backend_database: layout.private("backend").join("backend.db"),
            approval_wait_secs: default_wait(),
            max_args_bytes: default_max_args(),
            identity: None,
            billing: None,
        };
        let text = format!(
            "# The broker's private configuration. Backend credentials live here and\n\
             # nowhere else; only the broker reads this file.\n{}",
            toml::to_string(&config)?
        );
        zt_proto::keys::write_private(&path, &text)?;
    }
    let upstreams = layout
        .private("broker")
        .join(crate::backend::upstreams::FILE);
    if !upstreams.exists() {
        zt_proto::keys::write_private(&upstreams, UPSTREAMS)?;
    }
    Ok(())
}

fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The key names the broker verifies: session tokens and grants.
const TRUSTED: &[&str] = &["approval-token", "approval-grant"];

/// The broker's trust roots (`DIR/broker/trust.json`).
pub fn trust_path(layout: &Layout) -> PathBuf {
    layout.private("broker").join("trust.json")
}

/// Loads everything the broker needs; fails if anything is missing.
pub fn load(layout: &Layout) -> anyhow::Result<Material> {
    let roots = TrustRoots::ensure(&trust_path(layout), layout, TRUSTED)
        .with_context(|| format!("trust roots {}", trust_path(layout).display()))?;
    let pinned = |name: &str| -> anyhow::Result<Arc<PinnedKeys>> {
        let keys = PinnedKeys::load(layout, name, roots.get(name))
            .with_context(|| format!("pinned key {}", layout.public_key(name).display()))?;
        Ok(Arc::new(keys))
    };
    let config = read_config(&config_path(layout))?;
    Ok(Material {
        stack: layout.stack()?,
        config,
        service_key: KeyPair::read(&key_path(layout, "service"))?,
        audit_key: KeyPair::read(&key_path(layout, "audit"))?,
        session_keys: pinned("approval-token")?,
        grant_keys: pinned("approval-grant")?,
    })
}
