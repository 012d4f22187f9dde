//! Snapshots of every view, drawn into a `TestBackend` from fixed data at a
//! fixed time so they read the same on every machine (`cargo insta review`
//! after an intended change). Snapshots hold text only; `view`'s tests
//! assert the colours and the `NO_COLOR` modifiers.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use insta::assert_snapshot;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};

use super::app::tests::{NOW, alert, sample};
use super::app::{Action, App, on_key};
use super::audit_view::{Badge, Collector, Page, Verify};
use super::theme::Theme;
use super::view::draw;

const W: u16 = 120;
const H: u16 = 30;

/// The screen as text, trailing blanks trimmed.
fn screen(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(W, H)).expect("test terminal");
    let mut app = app.clone();
    app.theme = Theme { color: false };
    t.draw(|f| draw(f, &app)).expect("draw");
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn press(app: &mut App, code: KeyCode) -> Option<Action> {
    on_key(app, KeyEvent::new(code, KeyModifiers::NONE))
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        press(app, KeyCode::Char(c));
    }
}

/// The audit entries of one escalated refund, as `audit_query` gives them.
pub(crate) fn refund_entries() -> Vec<Value> {
    let base = json!({
        "session": "sess-42", "human": "alice", "agent": "agent:support",
        "actors": ["agent:support"], "tool": "issue_refund",
        "args": {"amount": 20000, "order_id": "ord-77"}, "args_hash": "9f2c51d0",
        "rules": ["refund-over-rep-limit"], "request_id": "req-a1", "grant_id": "",
    });
    let rows = [
        (
            "broker",
            1,
            "decision",
            "escalate",
            "pending",
            "refund over the rep's limit",
        ),
        (
            "approval",
            1,
            "escalation",
            "escalate",
            "pending",
            "waiting for an operator",
        ),
        (
            "approval",
            2,
            "approval",
            "approve",
            "approved",
            "customer is owed it",
        ),
        (
            "broker",
            2,
            "grant_use",
            "allow",
            "executing",
            "grant redeemed",
        ),
        (
            "broker",
            3,
            "result",
            "executed",
            "ok",
            "refunded 20000 cents",
        ),
    ];
    rows.iter()
        .enumerate()
        .map(|(i, (chain, seq, kind, decision, status, detail))| {
            let mut v = base.clone();
            let time_ms = NOW - 60_000 + i as i64 * 5_000;
            v["time"] = json!(crate::audit_query::format_time(time_ms));
            v["time_ms"] = json!(time_ms);
            v["chain"] = json!(chain);
            v["seq"] = json!(seq);
            v["kind"] = json!(kind);
            v["decision"] = json!(decision);
            v["status"] = json!(status);
            v["detail"] = json!(detail);
            v["hash"] = json!(format!("{:064x}", (i + 1) * 0x1111));
            v["prev_hash"] = json!(format!("{:064x}", i * 0x1111));
            if *kind == "approval" {
                v["human"] = json!("carol");
            }
            v
        })
        .collect()
}

/// The sample app on the Audit view with the refund's entries loaded.
pub(crate) fn audit_app() -> App {
    let mut app = sample(false);
    app.audit.data_dir = Some("/srv/stack".into());
    press(&mut app, KeyCode::Char(':'));
    typed(&mut app, "audit tool=issue_refund");
    let Some(Action::AuditQuery(q)) = press(&mut app, KeyCode::Enter) else {
        panic!("no audit query");
    };
    let mut c = Collector::new(Page::Newest, 100);
    for line in refund_entries() {
        c.push(line);
    }
    app.audit_answered(q.id, Ok(c.finish(5, 0)));
    app
}

#[test]
fn pending_view() {
    assert_snapshot!(screen(&sample(false)));
}

#[test]
fn pending_view_readonly_and_reconnecting() {
    let mut app = sample(true);
    app.conn = super::app::Conn::Down {
        error: "approval service unavailable: connection refused".into(),
        attempt: 2,
        retry_at_ms: NOW + 3_000,
    };
    assert_snapshot!(screen(&app));
}

#[test]
fn live_view() {
    let mut app = sample(false);
    app.push_event(alert(
        6,
        "rogue-agent",
        "high denial-spike: agent rogue-agent had 10 denials within 1m",
    ));
    app.toast = None;
    press(&mut app, KeyCode::Char('2'));
    assert_snapshot!(screen(&app));
}

#[test]
fn denials_view_with_sparkline() {
    let mut app = sample(false);
    for (seq, ago_s) in [(6u64, 55i64), (7, 44), (8, 43), (9, 12), (10, 3)] {
        let mut e =
            super::app::tests::event(seq, "deny", "rogue-agent", "issue_refund", "over cap");
        e.time_ms = NOW - ago_s * 1000;
        e.rules = vec!["refund-hard-cap".into()];
        app.push_event(e);
    }
    app.push_event(alert(
        11,
        "rogue-agent",
        "high denial-spike: agent rogue-agent had 7 denials within 1m",
    ));
    app.toast = None;
    press(&mut app, KeyCode::Char('3'));
    assert_snapshot!(screen(&app));
}

#[test]
fn alerts_view() {
    let mut app = sample(false);
    app.push_event(alert(
        6,
        "rogue-agent",
        "high denial-spike: agent rogue-agent had 10 denials within 1m",
    ));
    let mut near_cap = alert(
        7,
        "",
        "medium near-cap-refunds: human bob had 3 refunds within 10% under the refund limit within 1h",
    );
    near_cap.rules = vec!["near-cap-refunds".into()];
    near_cap.human = "bob".into();
    app.push_event(near_cap);
    app.toast = None;
    press(&mut app, KeyCode::Char('4'));
    assert_snapshot!(screen(&app));
}

#[test]
fn alerts_view_empty() {
    let mut app = sample(false);
    press(&mut app, KeyCode::Char('4'));
    assert_snapshot!(screen(&app));
}

#[test]
fn audit_view_verified() {
    let mut app = audit_app();
    app.audit.verify = Verify::Done(Badge::Intact {
        chains: vec![("approval".into(), 2), ("broker".into(), 3)],
        entries: 5,
        unsigned: 0,
    });
    app.toast = None;
    assert_snapshot!(screen(&app));
}

#[test]
fn audit_view_broken() {
    let mut app = audit_app();
    app.audit.verify = Verify::Done(Badge::Broken {
        chain: "broker".into(),
        seq: 2,
        problem: "hash".into(),
        detail: "the stored hash is not the hash of the entry".into(),
        more: 0,
    });
    app.toast = None;
    assert_snapshot!(screen(&app));
}

#[test]
fn audit_view_verifying() {
    let mut app = audit_app();
    app.audit.verify = Verify::Running {
        done: 16_384,
        total: 65_536,
    };
    assert_snapshot!(screen(&app));
}

#[test]
fn audit_entry_detail() {
    let mut app = audit_app();
    app.audit.verify = Verify::Done(Badge::Intact {
        chains: vec![("approval".into(), 2), ("broker".into(), 3)],
        entries: 5,
        unsigned: 0,
    });
    app.toast = None;
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Enter);
    assert_snapshot!(screen(&app));
}

#[test]
fn audit_view_without_a_data_dir() {
    let mut app = sample(false);
    press(&mut app, KeyCode::Char('5'));
    assert_snapshot!(screen(&app));
}

#[test]
fn help_overlay() {
    let mut app = sample(false);
    press(&mut app, KeyCode::Char('?'));
    assert_snapshot!(screen(&app));
}

#[test]
fn command_line() {
    let mut app = audit_app();
    app.toast = None;
    press(&mut app, KeyCode::Char(':'));
    typed(&mut app, "audit tool=issue_refund si");
    press(&mut app, KeyCode::Tab);
    assert_snapshot!(screen(&app));
}
