//! Approval rules as data: how long a request waits, when it needs more than
//! one approver, and when approving it needs a reason.
//!
//! The rules come from `approvals.toml` in the policy directory (see
//! [`ApprovalRules::from_toml`]); a key left out takes its default, an
//! unknown key or a value out of range is an error. The service reads the
//! file once, at start, and refuses to start when it is invalid.
//!
//! The rules in force when a request is escalated are fixed on the request
//! ([`ApprovalRules::for_amount`]): how many distinct approvals it needs and
//! whether approving it needs a reason. Some rules are not data and hold
//! whatever the file says: no one decides a request made on their own
//! behalf, an approver's limit must cover the amount, a reason is required
//! to deny and to cancel, and terminal states are final.
//!
//! Parsing and checking are pure: no IO, no clock.

use std::time::Duration;

use serde::Deserialize;

/// Default time a request stays pending: 15 minutes.
pub const DEFAULT_REQUEST_TTL_SECS: u64 = 15 * 60;
/// Longest request lifetime the file may set: 7 days.
pub const MAX_REQUEST_TTL_SECS: u64 = 7 * 24 * 3600;
/// Default amount above which a request needs a quorum: $500.00.
pub const DEFAULT_QUORUM_ABOVE_CENTS: i64 = 50_000;
/// Default number of distinct approvers above the quorum threshold.
pub const DEFAULT_QUORUM: u32 = 2;
/// Largest quorum the file may set.
pub const MAX_QUORUM: u32 = 5;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalRulesError {
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The approval rules (`approvals.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalRules {
    /// How long a request stays pending before it expires, in seconds.
    pub request_ttl_secs: u64,
    /// Amounts strictly above this many cents need [`quorum`](Self::quorum)
    /// distinct approvers.
    pub quorum_above_cents: i64,
    /// Distinct approvers needed above the threshold.
    pub quorum: u32,
    /// Approving an amount strictly above this many cents needs a reason.
    pub reason_to_approve_above_cents: i64,
}

impl Default for ApprovalRules {
    fn default() -> ApprovalRules {
        ApprovalRules {
            request_ttl_secs: DEFAULT_REQUEST_TTL_SECS,
            quorum_above_cents: DEFAULT_QUORUM_ABOVE_CENTS,
            quorum: DEFAULT_QUORUM,
            reason_to_approve_above_cents: DEFAULT_QUORUM_ABOVE_CENTS,
        }
    }
}

/// What the rules require of one request, fixed when it is escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    /// Distinct approvals that approve it.
    pub approvals: u32,
    /// Whether approving it needs a reason.
    pub approve_reason: bool,
}

impl ApprovalRules {
    /// Parses and checks a rules file's text.
    pub fn from_toml(text: &str) -> Result<ApprovalRules, ApprovalRulesError> {
        let rules: ApprovalRules = toml::from_str(text)
            .map_err(|e| ApprovalRulesError::Parse(e.to_string().trim().into()))?;
        rules.check()?;
        Ok(rules)
    }

    /// How long a request stays pending.
    pub fn request_ttl(&self) -> Duration {
        Duration::from_secs(self.request_ttl_secs)
    }

    /// What a request for `amount_cents` needs.
    pub fn for_amount(&self, amount_cents: i64) -> Requirements {
        Requirements {
            approvals: if amount_cents > self.quorum_above_cents {
                self.quorum
            } else {
                1
            },
            approve_reason: amount_cents > self.reason_to_approve_above_cents,
        }
    }

    fn check(&self) -> Result<(), ApprovalRulesError> {
        if !(1..=MAX_REQUEST_TTL_SECS).contains(&self.request_ttl_secs) {
            return Err(ApprovalRulesError::Invalid {
                key: "request_ttl_secs",
                message: format!("must be between 1 and {MAX_REQUEST_TTL_SECS} seconds"),
            });
        }
        if !(1..=MAX_QUORUM).contains(&self.quorum) {
            return Err(ApprovalRulesError::Invalid {
                key: "quorum",
                message: format!("must be between 1 and {MAX_QUORUM}"),
            });
        }
        if self.quorum_above_cents < 0 {
            return Err(ApprovalRulesError::Invalid {
                key: "quorum_above_cents",
                message: "must not be negative".into(),
            });
        }
        if self.reason_to_approve_above_cents < 0 {
            return Err(ApprovalRulesError::Invalid {
                key: "reason_to_approve_above_cents",
                message: "must not be negative".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        ApprovalRules::from_toml(text)
            .expect_err("invalid rules")
            .to_string()
    }

    #[test]
    fn the_shipped_file_holds_the_defaults() {
        let text = zt_policies::shipped::file(zt_policies::files::APPROVALS)
            .expect("approvals.toml is shipped");
        assert_eq!(
            ApprovalRules::from_toml(text).expect("valid"),
            ApprovalRules::default()
        );
        assert_eq!(
            ApprovalRules::default().request_ttl(),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn a_valid_file_is_read_and_left_out_keys_take_their_defaults() {
        let rules =
            ApprovalRules::from_toml("request_ttl_secs = 3\nquorum = 3\n").expect("valid rules");
        assert_eq!(
            rules,
            ApprovalRules {
                request_ttl_secs: 3,
                quorum: 3,
                ..ApprovalRules::default()
            }
        );
        assert_eq!(
            ApprovalRules::from_toml("").expect("empty"),
            ApprovalRules::default()
        );
    }

    #[test]
    fn requirements_follow_the_thresholds_strictly_above() {
        let rules = ApprovalRules::default();
        let one = Requirements {
            approvals: 1,
            approve_reason: false,
        };
        assert_eq!(rules.for_amount(0), one);
        assert_eq!(rules.for_amount(20_000), one);
        assert_eq!(rules.for_amount(50_000), one, "at the threshold: one");
        assert_eq!(
            rules.for_amount(50_001),
            Requirements {
                approvals: 2,
                approve_reason: true,
            }
        );
        let split = ApprovalRules {
            quorum_above_cents: 100_000,
            reason_to_approve_above_cents: 0,
            ..ApprovalRules::default()
        };
        assert_eq!(
            split.for_amount(80_000),
            Requirements {
                approvals: 1,
                approve_reason: true,
            }
        );
        let single = ApprovalRules {
            quorum: 1,
            ..ApprovalRules::default()
        };
        assert_eq!(single.for_amount(1_000_000).approvals, 1);
    }

    #[test]
    fn invalid_files_are_refused_with_the_problem() {
        for (text, want) in [
            ("quorum = 0", "`quorum`: must be between 1 and 5"),
            ("quorum = 9", "`quorum`: must be between 1 and 5"),
            (
                "request_ttl_secs = 0",
                "`request_ttl_secs`: must be between 1 and 604800 seconds",
            ),
            (
                "quorum_above_cents = -1",
                "`quorum_above_cents`: must not be negative",
            ),
            (
                "reason_to_approve_above_cents = -5",
                "`reason_to_approve_above_cents`: must not be negative",
            ),
            ("quorom = 2", "unknown field `quorom`"),
            ("quorum = \"two\"", "invalid type"),
            ("quorum = -2", "invalid value"),
            ("request_ttl_secs = ", "expected"),
        ] {
            let got = err(text);
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }
}
