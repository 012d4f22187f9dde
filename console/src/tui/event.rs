//! The event loop and the tasks that feed it (bottom's pattern): input is
//! read on its own thread, the event stream and the pending list are fetched
//! by their own tasks, decisions, audit queries and verification run in
//! spawned tasks; all of them send a [`Msg`] over one channel. The UI loop
//! only applies messages to the [`App`] and draws.
//!
//! Under a flood the loop stays responsive: it drains the channel in
//! batches of up to [`BATCH`] messages and draws at most once per [`FRAME`]
//! (and only when something changed), so 1,000 events a second cost 20
//! frames, not 1,000.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossterm::event::Event as TermEvent;
use ratatui::DefaultTerminal;
use ratatui::layout::Rect;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use zt_proto::pb::{ApprovalRequest, Event, Operator};

use super::app::{Action, App, Conn, on_key, on_mouse};
use super::audit_view::{AuditPage, Badge, Collector, PAGE_ROWS, Query};
use super::notify::Notifier;
use super::view::draw;
use crate::audit::{self, Source, StateFile};
use crate::client::OperatorClient;

/// How often the pending list is refreshed even without events.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff: first delay and cap.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Messages applied between two looks at the clock at most (keeps input
/// responsive under an event flood).
pub const BATCH: usize = 2_000;
/// The shortest time between two frames.
pub const FRAME: Duration = Duration::from_millis(50);
/// The clock tick (countdowns, toasts, the reconnect timer).
const TICK: Duration = Duration::from_millis(250);

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
    /// A page of the audit log, for query `id`.
    AuditPage {
        id: u64,
        result: Result<AuditPage, String>,
    },
    VerifyProgress {
        done: u64,
        total: u64,
    },
    Verified(Result<Badge, String>),
    /// SIGTERM or SIGINT: leave as if the operator quit.
    Shutdown,
}

/// Set by the panic hook; the loop stops at its next turn.
pub static PANICKED: AtomicBool = AtomicBool::new(false);

/// What the loop carries actions out with.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub client: OperatorClient,
    pub notifier: Notifier,
}

/// Runs the console on `terminal` until the operator quits.
pub async fn run_loop(
    terminal: &mut DefaultTerminal,
    client: OperatorClient,
    notifier: Notifier,
    mut app: App,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let stop = Arc::new(AtomicBool::new(false));
    spawn_input(tx.clone(), stop.clone());
    let refresh = Arc::new(Notify::new());
    let signal_tx = tx.clone();
    let tasks = [
        tokio::spawn(watch_events(client.clone(), tx.clone(), refresh.clone())),
        tokio::spawn(refresh_pending(client.clone(), tx.clone(), refresh.clone())),
        tokio::spawn(async move {
            crate::stack::shutdown_signal().await;
            let _ = signal_tx.send(Msg::Shutdown).await;
        }),
    ];
    let ctx = Ctx { client, notifier };
    let mut draw_frame = |app: &mut App| -> anyhow::Result<()> {
        if let Ok(size) = terminal.size() {
            app.area = Rect::new(0, 0, size.width, size.height);
        }
        if std::mem::take(&mut app.bell) {
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|_| out.flush());
        }
        terminal.draw(|f| draw(f, app))?;
        Ok(())
    };
    let result = ui_loop(&mut draw_frame, &ctx, &mut app, &tx, &mut rx).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    result
}

/// Frame pacing: draw when something changed, at most once per [`FRAME`].
#[derive(Debug)]
struct Frames {
    last: Option<Instant>,
    dirty: bool,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            last: None,
            dirty: true,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.dirty && self.last.is_none_or(|l| now >= l + FRAME)
    }

    /// When the next frame may be drawn, if one is needed.
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        self.dirty
            .then(|| self.last.map_or(now, |l| (l + FRAME).max(now)))
    }

    fn drawn(&mut self, now: Instant) {
        self.last = Some(now);
        self.dirty = false;
    }
}

/// Background work the loop may have to cancel.
#[derive(Debug, Default)]
struct Tasks {
    /// Tells the running audit query to stop (a newer one replaces it).
    query: Option<Arc<AtomicBool>>,
}

/// The loop proper, drawing through `draw` (a terminal, or a test's counter).
pub(crate) async fn ui_loop<D>(
    draw: &mut D,
    ctx: &Ctx,
    app: &mut App,
    tx: &mpsc::Sender<Msg>,
    rx: &mut mpsc::Receiver<Msg>,
) -> anyhow::Result<()>
where
    D: FnMut(&mut App) -> anyhow::Result<()>,
{
    let mut tick = tokio::time::interval_at(Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut frames = Frames::new();
    let mut tasks = Tasks::default();
    loop {
        if PANICKED.load(Ordering::Relaxed) {
            anyhow::bail!("the console hit an internal error (see the panic message above)");
        }
        let now = Instant::now();
        if frames.due(now) {
            draw(app)?;
            frames.drawn(now);
        }
        let wake = frames.wake_at(now);
        let first = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return Ok(()),
            },
            _ = tick.tick() => {
                frames.dirty = true;
                None
            }
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => None,
        };
        app.tick(zt_proto::now_ms());
        if let Some(first) = first {
            frames.dirty = true;
            let batch = std::iter::once(first)
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
                .take(BATCH);
            for msg in batch {
                if let Some(action) = apply(app, msg)?
                    && run_action(ctx, tx, &mut tasks, action)
                {
                    return Ok(());
                }
            }
        }
        deliver_notices(app, &ctx.notifier);
    }
}

/// Hands the app's desktop notifications to the notifier (which never
/// blocks; the bell and the toast were already set by the app).
fn deliver_notices(app: &mut App, notifier: &Notifier) {
    for n in app.notices.drain(..) {
        let outcome = notifier.notify(&n.title, &n.body);
        tracing::trace!(?outcome, "desktop notification");
    }
}

/// Carries out an action; returns whether the console must quit.
fn run_action(ctx: &Ctx, tx: &mpsc::Sender<Msg>, tasks: &mut Tasks, action: Action) -> bool {
    match action {
        Action::Quit => return true,
        Action::Decide {
            id,
            approve,
            reason,
        } => spawn_decide(ctx.client.clone(), tx.clone(), id, approve, reason),
        Action::AuditQuery(q) => {
            if let Some(old) = tasks.query.take() {
                old.store(true, Ordering::Relaxed);
            }
            tasks.query = Some(spawn_query(tx.clone(), q));
        }
        Action::Verify(dir) => spawn_verify(tx.clone(), dir),
    }
    false
}

/// Applies one message; returns what the loop must do.
fn apply(app: &mut App, msg: Msg) -> anyhow::Result<Option<Action>> {
    match msg {
        Msg::Term(TermEvent::Key(key)) => return Ok(on_key(app, key)),
        Msg::Term(TermEvent::Mouse(m)) => return Ok(on_mouse(app, m)),
        Msg::Term(TermEvent::Resize(w, h)) => app.area = Rect::new(0, 0, w, h),
        Msg::Term(_) => {} // focus, paste: nothing to do
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
        Msg::AuditPage { id, result } => app.audit_answered(id, result),
        Msg::VerifyProgress { done, total } => app.verify_progress(done, total),
        Msg::Verified(result) => app.verified(result),
        Msg::Shutdown => return Ok(Some(Action::Quit)),
    }
    Ok(None)
}

/// Reads one page of the audit log on a blocking thread (parsing every
/// entry is CPU work); the returned flag stops it early.
fn spawn_query(tx: mpsc::Sender<Msg>, q: Query) -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = cancel.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let filter = q.filter.to_query();
            let mut page = Collector::new(q.page, PAGE_ROWS);
            let result = crate::audit_query::select(&q.db, &filter, |line| {
                if stop.load(Ordering::Relaxed) {
                    anyhow::bail!("superseded by a newer query");
                }
                page.push(line);
                Ok(())
            })
            .await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let result = result
                .map(|(matched, skipped)| page.finish(matched, skipped))
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::AuditPage { id: q.id, result }).await;
        });
    });
    cancel
}

/// Verifies the log of `dir` on a blocking thread, reporting progress.
fn spawn_verify(tx: mpsc::Sender<Msg>, dir: PathBuf) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let progress_tx = tx.clone();
            // Progress is advisory: dropped rather than waited for when the
            // channel is full.
            let mut progress = move |done: u64, total: u64| {
                let _ = progress_tx.try_send(Msg::VerifyProgress { done, total });
            };
            let result = audit::verify(
                &Source::DataDir(dir),
                &StateFile::Default,
                zt_proto::store::Scope::Full,
                &mut progress,
            )
            .await
            .map(|outcome| Badge::from_report(&outcome.report))
            .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::Verified(result)).await;
        });
    });
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
    use crate::tui::notify::{Delivery, Skipped};
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
        apply(&mut app, Msg::Term(TermEvent::Resize(90, 30))).unwrap();
        assert_eq!((app.area.width, app.area.height), (90, 30));
        apply(&mut app, Msg::Verified(Err("no audit log".into()))).unwrap();
        assert!(app.toast.as_ref().is_some_and(|t| t.error));
        let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        assert_eq!(
            apply(&mut app, Msg::Term(TermEvent::Key(q))).unwrap(),
            Some(Action::Quit)
        );
        assert_eq!(apply(&mut app, Msg::Shutdown).unwrap(), Some(Action::Quit));
        assert!(apply(&mut app, Msg::InputFailed("gone".into())).is_err());
    }

    fn ctx() -> Ctx {
        Ctx {
            client: OperatorClient::new("http://127.0.0.1:9", "token", None).expect("client"),
            notifier: Notifier::new(true, false),
        }
    }

    /// 10,000 events arrive at once: the loop takes them all and draws once.
    #[tokio::test]
    async fn a_flood_of_events_costs_one_frame() {
        let mut app = sample(false);
        let before = app.events.len();
        let (tx, mut rx) = mpsc::channel(20_000);
        for seq in 100..10_100u64 {
            tx.try_send(Msg::Event(Box::new(event(seq, "allow", "a", "t", "x"))))
                .expect("room");
        }
        let mut draws = Vec::new();
        let mut draw = |app: &mut App| -> anyhow::Result<()> {
            draws.push(app.events.len());
            Ok(())
        };
        let quit = tx.clone();
        let feeder = async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
            quit.send(Msg::Term(TermEvent::Key(q))).await.expect("send");
        };
        let ctx = ctx();
        let (result, ()) = tokio::join!(ui_loop(&mut draw, &ctx, &mut app, &tx, &mut rx), feeder);
        result.expect("the loop ends cleanly");
        // The first frame, then one frame with all 10,000 applied.
        assert_eq!(draws, [before, before + 10_000]);
        assert_eq!(app.events_total as usize, before + 10_000);
    }

    #[tokio::test]
    async fn frames_are_at_least_50_ms_apart_under_a_steady_stream() {
        let mut app = sample(false);
        let (tx, mut rx) = mpsc::channel(100);
        let mut draws: Vec<Instant> = Vec::new();
        let mut draw = |_: &mut App| -> anyhow::Result<()> {
            draws.push(Instant::now());
            Ok(())
        };
        let feed = tx.clone();
        let feeder = async move {
            // 1,000 events a second for half a second.
            for seq in 100..600u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let ev = Msg::Event(Box::new(event(seq, "allow", "a", "t", "x")));
                feed.send(ev).await.expect("send");
            }
            let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
            feed.send(Msg::Term(TermEvent::Key(q))).await.expect("send");
        };
        let ctx = ctx();
        let started = Instant::now();
        let (result, ()) = tokio::join!(ui_loop(&mut draw, &ctx, &mut app, &tx, &mut rx), feeder);
        result.expect("the loop ends cleanly");
        // Real time: however slow the machine, at most one frame per FRAME
        // (plus the first and the last), and still frames during the flood.
        let budget = started.elapsed().as_millis() / FRAME.as_millis() + 2;
        assert!(
            draws.len() as u128 <= budget,
            "{} frames for 500 events in {:?}",
            draws.len(),
            started.elapsed()
        );
        assert!(draws.len() >= 5, "it keeps drawing during the flood");
        for pair in draws.windows(2) {
            assert!(pair[1] - pair[0] >= FRAME, "{:?}", pair[1] - pair[0]);
        }
    }

    #[tokio::test]
    async fn without_a_bus_a_new_request_still_rings_and_toasts() {
        let mut app = sample(false);
        let notifier = Notifier::new(true, false);
        let mut ev = event(
            9,
            "escalate",
            "support-agent",
            "issue_refund",
            "refund $200.00",
        );
        ev.kind = "request_pending".into();
        ev.request_id = "req-z9".into();
        apply(&mut app, Msg::Event(Box::new(ev))).unwrap();
        assert_eq!(app.notices.len(), 1);
        assert_eq!(notifier.notify("t", "b"), Delivery::Skipped(Skipped::NoBus));
        deliver_notices(&mut app, &notifier);
        assert!(app.notices.is_empty());
        assert!(app.bell, "the terminal bell rings");
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.text.contains("new request req-z9")),
            "{:?}",
            app.toast
        );
    }
}
