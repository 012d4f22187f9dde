//! Desktop notifications for new approval requests, over the session D-Bus
//! (notify-rust's pure-Rust zbus backend; no libdbus).
//!
//! A notification is a courtesy on top of the terminal bell and the
//! console's own toast, which always happen: it is skipped when there is no
//! session bus (`DBUS_SESSION_BUS_ADDRESS` unset, as over SSH or in CI) or
//! when `--no-notify` says so, sent from a spawned task so the UI loop never
//! waits on D-Bus, given up after [`TIMEOUT`], and at most one is in flight
//! (a burst of requests does not queue a burst of notifications). A failure
//! is logged once, to the console's log, never to the screen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a notification may take before it is given up.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a notification was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// `--no-notify`.
    Disabled,
    /// No session bus to send it on.
    NoBus,
    /// The previous one is still on its way.
    Busy,
    /// Not inside a tokio runtime (nothing to send it from).
    NoRuntime,
}

/// What became of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to a background task.
    Sent,
    Skipped(Skipped),
}

/// Sends desktop notifications without ever blocking the caller.
#[derive(Debug, Clone)]
pub struct Notifier {
    state: Result<(), Skipped>,
    busy: Arc<AtomicBool>,
    warned: Arc<AtomicBool>,
}

impl Notifier {
    /// From the environment: on when `wanted` and a session bus is named.
    pub fn from_env(wanted: bool) -> Notifier {
        let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty());
        Notifier::new(wanted, bus)
    }

    /// On when `wanted` and `bus` (a session bus address is known).
    pub fn new(wanted: bool, bus: bool) -> Notifier {
        let state = match (wanted, bus) {
            (false, _) => Err(Skipped::Disabled),
            (true, false) => Err(Skipped::NoBus),
            (true, true) => Ok(()),
        };
        Notifier {
            state,
            busy: Arc::new(AtomicBool::new(false)),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether notifications can be sent at all.
    pub fn enabled(&self) -> bool {
        self.state.is_ok()
    }

    /// Sends one notification from a spawned task; returns at once.
    pub fn notify(&self, title: &str, body: &str) -> Delivery {
        if let Err(why) = self.state {
            return Delivery::Skipped(why);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Delivery::Skipped(Skipped::NoRuntime);
        };
        if self.busy.swap(true, Ordering::AcqRel) {
            return Delivery::Skipped(Skipped::Busy);
        }
        let mut n = notify_rust::Notification::new();
        n.appname("zt-console")
            .summary(title)
            .body(body)
            .timeout(notify_rust::Timeout::Milliseconds(10_000));
        let busy = self.busy.clone();
        let warned = self.warned.clone();
        runtime.spawn(async move {
            let outcome = match tokio::time::timeout(TIMEOUT, n.show_async()).await {
                Ok(Ok(_handle)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
            };
            if let Err(e) = outcome {
                if !warned.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "desktop notification failed ({e}); the terminal bell and the console's toasts still announce requests"
                    );
                } else {
                    tracing::debug!("desktop notification failed: {e}");
                }
            }
            busy.store(false, Ordering::Release);
        });
        Delivery::Sent
    }

    /// Whether a failure has been logged.
    pub fn has_warned(&self) -> bool {
        self.warned.load(Ordering::Acquire)
    }

    /// Whether a notification is on its way.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_without_a_bus_or_when_disabled() {
        assert_eq!(
            Notifier::new(true, false).notify("t", "b"),
            Delivery::Skipped(Skipped::NoBus)
        );
        assert_eq!(
            Notifier::new(false, true).notify("t", "b"),
            Delivery::Skipped(Skipped::Disabled)
        );
        // Outside a runtime there is nothing to send it from: no panic either.
        assert_eq!(
            Notifier::new(true, true).notify("t", "b"),
            Delivery::Skipped(Skipped::NoRuntime)
        );
    }

    #[tokio::test]
    async fn a_bus_that_is_not_there_fails_quietly_and_once() {
        // Where no session bus runs, the attempt fails in its task, is
        // logged, and frees the slot; the caller never waits.
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
            return; // a desktop session: do not pop up a real notification
        }
        let n = Notifier::new(true, true);
        assert_eq!(n.notify("t", "b"), Delivery::Sent);
        assert_eq!(n.notify("t", "b"), Delivery::Skipped(Skipped::Busy));
        let deadline = tokio::time::Instant::now() + TIMEOUT + Duration::from_secs(3);
        while n.is_busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!n.is_busy(), "the attempt ends within the timeout");
    }
}
