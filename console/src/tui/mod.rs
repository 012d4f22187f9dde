//! The terminal UI: the approval queue, live agent activity and denials.
//!
//! Layout (gitui/bottom style):
//! - [`app`]: the state and the key handling; no IO, no terminal. Keys map
//!   to state changes or to an [`app::Action`] for the loop to carry out.
//! - [`view`]: drawing, a pure function of the state (`draw(frame, &App)`).
//! - [`theme`]: colours, or modifiers only under `NO_COLOR`.
//! - [`event`]: the loop, the input thread and the network tasks (event
//!   stream with reconnect and resume, pending refresh, decisions).
//!
//! The terminal is restored on every way out: normal exit, error (a drop
//! guard) and panic (a hook that restores before the panic is printed).

pub mod app;
pub mod event;
pub mod theme;
pub mod view;

use std::io::stdout;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::backend::CrosstermBackend;
use ratatui::{DefaultTerminal, Terminal};

use crate::client::OperatorClient;

/// How the TUI runs.
#[derive(Debug, Clone, Default)]
pub struct TuiOptions {
    /// Hide approve/deny (watchers and auditors; the service refuses them anyway).
    pub readonly: bool,
    /// A line shown in the title bar (e.g. "demo: agent running").
    pub banner: Option<String>,
}

/// Runs the console until the operator quits.
pub async fn run(client: OperatorClient, opts: TuiOptions) -> anyhow::Result<()> {
    let mut app = app::App::new(client.url(), opts.readonly, opts.banner, zt_proto::now_ms());
    app.theme = theme::Theme::from_env();
    install_panic_hook();
    let (mut terminal, _guard) = init_terminal()?;
    event::run_loop(&mut terminal, client, app).await
    // `_guard` restores the terminal here, on success and on error alike.
}

/// Whether the terminal is in raw mode on the alternate screen (so that
/// restoring happens once, whoever gets there first).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Restores the terminal when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore();
    }
}

fn init_terminal() -> anyhow::Result<(DefaultTerminal, Restore)> {
    ACTIVE.store(true, Ordering::SeqCst);
    // From here on every exit path restores, including a failure below.
    let guard = Restore;
    enable_raw_mode()?;
    execute!(stdout(), EnterAlternateScreen)?;
    let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    Ok((terminal, guard))
}

fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
    }
}

/// Restores the terminal before the panic message is printed, and tells the
/// loop to stop (a panic in a background task must not leave the UI
/// drawing over a restored terminal).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            event::PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
}
