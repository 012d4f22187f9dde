//! The console as an operator uses it: tmux runs `zt-console demo` (a real
//! stack and a scripted agent), the test waits for the agent's $200.00
//! refund to appear in the queue, approves it with keystrokes, sees it
//! executed in the live view, opens the refund's audit entries with
//! `:audit tool=issue_refund`, verifies the chains with `v`, opens an entry,
//! quits, and checks the audit log records the approval.

use std::process::Command;
use std::time::{Duration, Instant};

use zt_tests::{bin_dir, run, temp_dir};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the tmux session when the test ends, pass or fail.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}

fn screen(session: &str) -> String {
    tmux(&["capture-pane", "-t", session, "-p"])
}

fn wait_for(session: &str, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = screen(session);
        if needles.iter().all(|n| s.contains(n)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needles:?}; screen:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn operator_approves_an_escalated_refund_with_keystrokes() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed; skipping the terminal test");
        return;
    }
    let dir = temp_dir("tui");
    // The verifier's state and the console's log stay out of the home directory.
    let state = temp_dir("tui-state");
    let session = format!("zt-tui-{}", std::process::id());
    let cmd = format!(
        "env -u DBUS_SESSION_BUS_ADDRESS XDG_STATE_HOME={} {} demo --data-dir {}; echo DEMO-EXIT=$?; sleep 30",
        state.display(),
        bin_dir().join("zt-console").display(),
        dir.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "45",
        &cmd,
    ]);
    let _guard = Session(session.clone());

    let s = wait_for(
        &session,
        &["Pending (1)", "issue_refund", "$200.00", "alice"],
    );
    assert!(s.contains("a approve"), "the key bar offers approval:\n{s}");

    tmux(&["send-keys", "-t", &session, "a"]);
    wait_for(&session, &["reason"]);
    tmux(&["send-keys", "-t", &session, "-l", "customer is owed it"]);
    tmux(&["send-keys", "-t", &session, "Enter"]);
    wait_for(&session, &["Pending (0)"]);

    tmux(&["send-keys", "-t", &session, "2"]);
    let live = wait_for(&session, &["executed", "refunded 20000 cents"]);
    assert!(live.contains("deny"), "denials stream in too:\n{live}");

    // The refund's trail in the audit log, through command mode.
    tmux(&["send-keys", "-t", &session, ":"]);
    tmux(&["send-keys", "-t", &session, "-l", "audit tool=issue_refund"]);
    tmux(&["send-keys", "-t", &session, "Enter"]);
    let audit = wait_for(
        &session,
        &[
            "filter: tool=issue_refund",
            "matching entries",
            "not verified yet",
        ],
    );
    for want in [
        "broker#",
        "approval#",
        "escalation",
        "approve",
        "result",
        "carol",
    ] {
        assert!(
            audit.contains(want),
            "no {want:?} in the audit view:\n{audit}"
        );
    }
    tmux(&["send-keys", "-t", &session, "v"]);
    wait_for(&session, &["✓ verified through"]);
    tmux(&["send-keys", "-t", &session, "Enter"]);
    let entry = wait_for(&session, &["Entry ", "prev_hash", "Arguments"]);
    assert!(entry.contains("issue_refund"), "{entry}");
    tmux(&["send-keys", "-t", &session, "Escape"]);
    wait_for(&session, &["filter: tool=issue_refund", "ENTRY"]);

    tmux(&["send-keys", "-t", &session, "q"]);
    let end = wait_for(&session, &["DEMO-EXIT="]);
    assert!(end.contains("DEMO-EXIT=0"), "{end}");

    let out = run(
        "zt-console",
        &["audit", "verify", "--data-dir", &dir.to_string_lossy()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bodies = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(zt_tests::audit_bodies(&dir, "approval"));
    assert!(
        bodies.iter().any(|b| b.contains("\"decision\":\"approve\"")
            && b.contains("\"subject\":\"carol\"")
            && b.contains("customer is owed it")),
        "the approval is audited with its operator and reason"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
}
