//! Token buckets per session and per (session, tool), sized by the policy's
//! `limits.toml`. In memory, per broker process; entries of idle sessions
//! are dropped once the table grows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zt_policies::limits::{Bucket, Limits};

/// Sessions outlive their tokens by at most this; idle buckets older are dropped.
const IDLE: Duration = Duration::from_secs(15 * 60);
/// Prune when the table holds more entries than this.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct State {
    tokens: f64,
    last: Instant,
}

/// Which limit a call exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    /// The session's overall limit.
    Session,
    /// The per-tool limit.
    Tool,
}

/// The broker's rate limiter.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), State>>,
}

fn refill(state: &mut State, bucket: Bucket, now: Instant) {
    let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
    let rate = f64::from(bucket.per_minute) / 60.0;
    state.tokens = (state.tokens + elapsed * rate).min(f64::from(bucket.burst));
    state.last = now;
}

impl RateLimiter {
    /// Takes one token from the session's bucket and the tool's bucket, or
    /// none if either is empty.
    pub fn check(&self, limits: &Limits, session: &str, tool: &str) -> Result<(), Exceeded> {
        self.check_at(limits, session, tool, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (for tests).
    pub fn check_at(
        &self,
        limits: &Limits,
        session: &str,
        tool: &str,
        now: Instant,
    ) -> Result<(), Exceeded> {
        // A poisoned lock fails closed.
        let Ok(mut map) = self.buckets.lock() else {
            return Err(Exceeded::Session);
        };
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, s| now.saturating_duration_since(s.last) < IDLE);
        }
        let wanted = [
            (limits.session, String::new(), Exceeded::Session),
            (
                limits.tool.get(tool).copied(),
                tool.to_owned(),
                Exceeded::Tool,
            ),
        ];
        let mut take = Vec::new();
        for (bucket, key, which) in wanted {
            let Some(bucket) = bucket else { continue };
            let state = map
                .entry((session.to_owned(), key.clone()))
                .or_insert(State {
                    tokens: f64::from(bucket.burst),
                    last: now,
                });
            refill(state, bucket, now);
            if state.tokens < 1.0 {
                return Err(which);
            }
            take.push(key);
        }
        for key in take {
            if let Some(state) = map.get_mut(&(session.to_owned(), key)) {
                state.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let mut l = Limits {
            session: Some(Bucket {
                burst: 4,
                per_minute: 60,
            }),
            ..Limits::default()
        };
        l.tool.insert(
            "issue_refund".into(),
            Bucket {
                burst: 2,
                per_minute: 6,
            },
        );
        l
    }

    #[test]
    fn buckets_empty_and_refill() {
        let r = RateLimiter::default();
        let l = limits();
        let t0 = Instant::now();
        assert!(r.check_at(&l, "s1", "issue_refund", t0).is_ok());
        assert!(r.check_at(&l, "s1", "issue_refund", t0).is_ok());
        assert_eq!(
            r.check_at(&l, "s1", "issue_refund", t0),
            Err(Exceeded::Tool)
        );
        // The refused call took nothing from the session bucket: two left.
        assert!(r.check_at(&l, "s1", "lookup_account", t0).is_ok());
        assert!(r.check_at(&l, "s1", "lookup_account", t0).is_ok());
        assert_eq!(
            r.check_at(&l, "s1", "lookup_account", t0),
            Err(Exceeded::Session)
        );
        // Another session is unaffected.
        assert!(r.check_at(&l, "s2", "issue_refund", t0).is_ok());
        // 10 s later: 6/min refills one refund token, 60/min ten session tokens.
        let t1 = t0 + Duration::from_secs(10);
        assert!(r.check_at(&l, "s1", "issue_refund", t1).is_ok());
        assert_eq!(
            r.check_at(&l, "s1", "issue_refund", t1),
            Err(Exceeded::Tool)
        );
    }

    #[test]
    fn no_limits_no_refusals() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(
                r.check_at(&Limits::default(), "s", "issue_refund", t0)
                    .is_ok()
            );
        }
    }
}
