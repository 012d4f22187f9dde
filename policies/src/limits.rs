//! Rate limits as data (`limits.toml`): token buckets per agent session,
//! one for all its calls and one per tool. A call over a limit is refused
//! and audited by the broker; floods of denials or escalations are thereby
//! blunted before they reach the policy, the backend or a human.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A token bucket: up to `burst` calls at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Calls allowed at once.
    pub burst: u32,
    /// Sustained calls per minute.
    pub per_minute: u32,
}

/// The limits of a policy directory; an absent file means no limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Every call of one session.
    #[serde(default)]
    pub session: Option<Bucket>,
    /// Calls of one tool by one session.
    #[serde(default)]
    pub tool: BTreeMap<String, Bucket>,
}
