//! Budgets over time as data (`budgets.toml`): what a human, an agent, a
//! session or one resource has consumed through some tools within a sliding
//! window — refunded cents per human per day, calls per account per hour.
//!
//! The broker keeps the ledger (durably; on PostgreSQL shared by every
//! replica) and hands each budget's consumption *before* the call to the
//! policy as `context.budgets.NAME` (a `Long`), so a rule can say
//! `context.budgets.refunded_today + context.args.amount >
//! principal.human.daily_refund_limit`. A call the gate lets run consumes
//! its share in the same step as the decision, before its side effect.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The budgets of a policy directory; an absent file declares none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// The budgets (`[[budget]]`).
    #[serde(default)]
    pub budget: Vec<Budget>,
}

/// One budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The name rules read as `context.budgets.NAME` (a Cedar identifier).
    pub name: String,
    /// The tools whose calls consume it.
    pub tools: Vec<String>,
    /// What a call consumes.
    pub sum: Sum,
    /// Whose consumption it is.
    pub per: Per,
    /// The sliding window, e.g. `"24h"`, `"1h"`, `"15m"`.
    pub window: String,
}

/// What a call consumes of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sum {
    /// The tool's `amount_arg` (integer cents), as the call runs it.
    Amount,
    /// One per call.
    Calls,
}

/// Whose consumption a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// The human the agent acts for (the token's `sub`).
    Human,
    /// The agent (the token's actor), across its sessions.
    Agent,
    /// One agent session.
    Session,
    /// The resource the call acts on (its resource argument, e.g. one order).
    Resource,
}

impl Per {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Human => "human",
            Per::Agent => "agent",
            Per::Session => "session",
            Per::Resource => "resource",
        }
    }
}

impl Budget {
    /// The window as a duration; an error names what is wrong.
    pub fn window(&self) -> Result<Duration, String> {
        parse_window(&self.window)
    }

    /// Whether calls of `tool` consume this budget.
    pub fn applies_to(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }
}

/// `"90s"`, `"15m"`, `"1h"`, `"7d"`: a positive whole number and a unit.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("window `{text}` has no unit (s, m, h or d)"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("window `{text}` does not start with a whole number"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => {
            return Err(format!(
                "window `{text}`: unknown unit `{unit}` (s, m, h or d)"
            ));
        }
    };
    match secs {
        Some(s) if s > 0 && s <= 366 * 86_400 => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "window `{text}` must be between one second and a year"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_or_name_their_fault() {
        assert_eq!(parse_window("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_window("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_window("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "0h", "24", "1w", "-1h", "400d", "1.5h"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }
}
