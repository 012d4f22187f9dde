//! The event loop and the tasks that feed it (bottom's pattern): input is
//! read on its own thread, the event stream and the pending list are fetched
//! by their own tasks, decisions run in spawned tasks; all of them send a
//! [`Msg`] over one channel. The UI loop only applies messages to the
//! [`App`] and draws.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossterm::event::Event as TermEvent;
use ratatui::DefaultTerminal;
use tokio::sync::{Notify, mpsc};
use zt_proto::pb::{ApprovalRequest, Event, Operator};

use super::app::{Action, App, Conn, on_key};
use super::view::draw;
use crate::client::OperatorClient;

/// How often the pending list is refreshed even without events.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff: first delay and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Messages applied between two frames at most (keeps input responsive
/// under an event flood).
const BATCH: usize = 2_000;

/// What the background tasks tell the UI loop.
#[derive(Debug)]
pub enum Msg {
    Term(TermEvent),
    InputFailed(String),
    Conn(Conn),
    Event(Box<Event>),
    Pending(Vec<ApprovalRequest>),
    PendingFailed(String),
    Operator(Operator),
    Decided {
        id: String,
        approve: bool,
        result: Result<Box<ApprovalRequest>, String>,
    },
}

/// Set by the panic hook; the loop stops at its next turn.
pub static PANICKED: AtomicBool = AtomicBool::new(false);

/// Runs the console on `terminal` until the operator quits.
pub async fn run_loop(
    terminal: &mut DefaultTerminal,
    client: OperatorClient,
    mut app: App,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let stop = Arc::new(AtomicBool::new(false));
    spawn_input(tx.clone(), stop.clone());
    let refresh = Arc::new(Notify::new());
    let tasks = [
        tokio::spawn(watch_events(client.clone(), tx.clone(), refresh.clone())),
        tokio::spawn(refresh_pending(client.clone(), tx.clone(), refresh.clone())),
    ];
    let result = ui_loop(terminal, &client, &mut app, &tx, &mut rx).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    result
}

async fn ui_loop(
    terminal: &mut DefaultTerminal,
    client: &OperatorClient,
    app: &mut App,
    tx: &mpsc::Sender<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if PANICKED.load(Ordering::Relaxed) {
            anyhow::bail!("the console hit an internal error (see the panic message above)");
        }
        if std::mem::take(&mut app.bell) {
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|_| out.flush());
        }
        terminal.draw(|f| draw(f, app))?;

        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return Ok(()),
            },
            _ = tick.tick() => None,
        };
        app.tick(zt_proto::now_ms());
        let batch = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .take(BATCH);
        for msg in batch {
            if let Some(action) = apply(app, msg)? {
                match action {
                    Action::Quit => return Ok(()),
                    Action::Decide {
                        id,
                        approve,
                        reason,
                    } => spawn_decide(client.clone(), tx.clone(), id, approve, reason),
                }
            }
        }
    }
}

/// Applies one message; returns what the loop must do.
fn apply(app: &mut App, msg: Msg) -> anyhow::Result<Option<Action>> {
    match msg {
        Msg::Term(TermEvent::Key(key)) => return Ok(on_key(app, key)),
        Msg::Term(_) => {} // resize and the rest: the next draw adapts
        Msg::InputFailed(e) => anyhow::bail!("reading the terminal failed: {e}"),
        Msg::Conn(c) => app.conn = c,
        Msg::Event(ev) => app.push_event(*ev),
        Msg::Pending(list) => app.set_pending(list),
        Msg::PendingFailed(e) => app.pending_error = Some(e),
        Msg::Operator(op) => app.operator = Some(op),
        Msg::Decided {
            id,
            approve,
            result,
        } => app.decided(&id, approve, result.map(|r| *r)),
    }
    Ok(None)
}

/// Reads the terminal on a thread of its own (crossterm's blocking API),
/// polling so that it notices `stop`.
fn spawn_input(tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("zt-console-input".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ev = match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => crossterm::event::read(),
                    Err(e) => Err(e),
                };
                let msg = match ev {
                    Ok(ev) => Msg::Term(ev),
                    Err(e) => Msg::InputFailed(e.to_string()),
                };
                let failed = matches!(msg, Msg::InputFailed(_));
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::warn!("could not start the input thread: {e}"));
}

/// Follows the event stream, resuming from the last sequence after a break.
async fn watch_events(client: OperatorClient, tx: mpsc::Sender<Msg>, refresh: Arc<Notify>) {
    let mut last_seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 0u32;
    loop {
        let error = match client.watch(last_seq).await {
            Ok(mut stream) => {
                if tx.send(Msg::Conn(Conn::Live)).await.is_err() {
                    return;
                }
                refresh.notify_one();
                let mut got_any = false;
                let error = loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            got_any = true;
                            last_seq = last_seq.max(ev.seq);
                            if ev.kind.starts_with("request_") {
                                refresh.notify_one();
                            }
                            if tx.send(Msg::Event(Box::new(ev))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break "the event stream ended".to_owned(),
                        Err(s) => break format!("event stream broke: {}", s.message()),
                    }
                };
                if got_any {
                    // It was healthy: retry at once, then back off.
                    backoff = BACKOFF_MIN;
                    attempt = 0;
                }
                error
            }
            Err(e) => e.to_string(),
        };
        attempt += 1;
        let down = Conn::Down {
            error,
            attempt,
            retry_at_ms: zt_proto::now_ms() + backoff.as_millis() as i64,
        };
        if tx.send(Msg::Conn(down)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if tx.send(Msg::Conn(Conn::Connecting)).await.is_err() {
            return;
        }
    }
}

/// Keeps the pending list (and the operator's identity) fresh: when told
/// to, and every few seconds.
async fn refresh_pending(client: OperatorClient, tx: mpsc::Sender<Msg>, refresh: Arc<Notify>) {
    let mut who = false;
    loop {
        if !who && let Ok(op) = client.who_am_i().await {
            who = true;
            if tx.send(Msg::Operator(op)).await.is_err() {
                return;
            }
        }
        let msg = match client.pending().await {
            Ok(list) => Msg::Pending(list),
            Err(e) => Msg::PendingFailed(e.to_string()),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        tokio::select! {
            _ = refresh.notified() => {
                // Coalesce a burst of request events into one refresh.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
        }
    }
}

fn spawn_decide(
    client: OperatorClient,
    tx: mpsc::Sender<Msg>,
    id: String,
    approve: bool,
    reason: String,
) {
    tokio::spawn(async move {
        let result = client
            .decide(&id, approve, &reason)
            .await
            .map(Box::new)
            .map_err(|e| e.to_string());
        let _ = tx
            .send(Msg::Decided {
                id,
                approve,
                result,
            })
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{event, sample};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    #[test]
    fn messages_update_the_app() {
        let mut app = sample(false);
        apply(
            &mut app,
            Msg::Event(Box::new(event(7, "deny", "x-agent", "t", "s"))),
        )
        .unwrap();
        assert_eq!(app.denials_by_agent.get("x-agent"), Some(&1));
        apply(&mut app, Msg::Conn(Conn::Connecting)).unwrap();
        assert_eq!(app.conn, Conn::Connecting);
        apply(&mut app, Msg::PendingFailed("boom".into())).unwrap();
        assert_eq!(app.pending_error.as_deref(), Some("boom"));
        apply(&mut app, Msg::Pending(vec![])).unwrap();
        assert!(app.pending.is_empty() && app.pending_error.is_none());
        let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        assert_eq!(
            apply(&mut app, Msg::Term(TermEvent::Key(q))).unwrap(),
            Some(Action::Quit)
        );
        assert!(apply(&mut app, Msg::InputFailed("gone".into())).is_err());
    }
}
