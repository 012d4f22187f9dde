//! Refusals are audited one by one until they flood, then in aggregate.
//!
//! A request refused before it is authenticated (a bad token, a failed
//! operator login, an out-of-scope call) costs its refuser an audit entry,
//! and an audit entry costs a durable write. Whoever can reach the port can
//! send such requests in a loop, so each refuser spends on them from a
//! token bucket: within it every refusal is its own entry; beyond it
//! refusals are only counted, by class, and a periodic summary entry says
//! how many of each there were. Nothing is lost from the record, and a flood
//! cannot fill the disk nor starve the writes of real calls.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::audit::Record;

/// Refusals audited one by one: at most `burst` at once, refilled at
/// `per_sec`.
#[derive(Debug)]
pub struct RefusalBudget {
    per_sec: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    counted: BTreeMap<&'static str, u64>,
}

/// The shipped budget: 100 at once, 20 a second.
pub const DEFAULT_BURST: u32 = 100;
/// See [`DEFAULT_BURST`].
pub const DEFAULT_PER_SEC: u32 = 20;

impl Default for RefusalBudget {
    fn default() -> RefusalBudget {
        RefusalBudget::new(DEFAULT_PER_SEC, DEFAULT_BURST)
    }
}

impl RefusalBudget {
    /// A budget of `burst` refusals at once, refilled at `per_sec`.
    pub fn new(per_sec: u32, burst: u32) -> RefusalBudget {
        RefusalBudget {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            state: Mutex::new(State {
                tokens: f64::from(burst),
                last: Instant::now(),
                counted: BTreeMap::new(),
            }),
        }
    }

    /// Whether a refusal of `class` gets its own audit entry; if not, it is
    /// counted for the next [`RefusalBudget::summary`]. With a poisoned
    /// lock every refusal gets its own entry (the record is kept).
    pub fn admit(&self, class: &'static str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        let now = Instant::now();
        let refill = now.duration_since(s.last).as_secs_f64() * self.per_sec;
        s.tokens = (s.tokens + refill).min(self.burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            *s.counted.entry(class).or_default() += 1;
            false
        }
    }

    /// The audit record of the refusals counted since the last summary, if
    /// there were any (and resets the counts).
    pub fn summary(&self) -> Option<Record> {
        let counted = match self.state.lock() {
            Ok(mut s) => std::mem::take(&mut s.counted),
            Err(_) => return None,
        };
        let total: u64 = counted.values().sum();
        if total == 0 {
            return None;
        }
        let parts: Vec<String> = counted.iter().map(|(c, n)| format!("{c} {n}")).collect();
        Some(Record {
            subject: "unauthenticated".into(),
            decision: "deny".into(),
            status: "flood".into(),
            args: serde_json::json!(counted),
            detail: format!(
                "{total} refusals beyond the audit budget, recorded in aggregate: {}",
                parts.join(", ")
            ),
            ..Record::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_counted_not_written() {
        let b = RefusalBudget::new(0, 3);
        let admitted = (0..10).filter(|_| b.admit("invalid_token")).count();
        assert_eq!(admitted, 3);
        assert!(!b.admit("out_of_scope"));
        let r = b.summary().unwrap();
        assert_eq!(r.args["invalid_token"], 7);
        assert_eq!(r.args["out_of_scope"], 1);
        assert!(r.detail.starts_with("8 refusals"), "{}", r.detail);
        assert!(b.summary().is_none(), "counts reset");
    }
}
