//! The console as an operator uses it: tmux runs `zt-console demo`, the test
//! waits for the scripted agent's $200.00 refund to appear in the queue,
//! approves it with keystrokes, sees it executed in the live view, quits, and
//! verifies the audit log records the approval.

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
    let session = format!("zt-tui-{}", std::process::id());
    let cmd = format!(
        "{} demo --data-dir {}; echo DEMO-EXIT=$?; sleep 30",
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
}
