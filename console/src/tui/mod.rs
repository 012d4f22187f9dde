//! The terminal UI: the approval queue, live agent activity, denials,
//! alerts and the audit log, in k9s' manner (`:` commands, `/` filters,
//! `?` help, `esc` back, one-letter keys, the mouse for picking rows).
//!
//! Layout (gitui/bottom style):
//! - [`app`]: the state and the key and mouse handling; no IO, no terminal.
//!   Keys map to state changes or to an [`app::Action`] for the loop to
//!   carry out.
//! - [`command`]: parsing and completing `:` commands.
//! - [`audit_view`]: the Audit view's page of entries and chain badge.
//! - [`ring`]: the bounded buffers events are kept in.
//! - [`view`]: drawing, a pure function of the state (`draw(frame, &App)`),
//!   and the mapping of clicks to what was drawn.
//! - [`theme`]: colours, or modifiers only under `NO_COLOR`.
//! - [`event`]: the loop (batched input, paced frames), the input thread
//!   and the background tasks (event stream with reconnect and resume,
//!   pending refresh, decisions, audit queries, verification).
//! - [`notify`]: desktop notifications that never hold the loop up.
//!
//! The terminal is restored on every way out: normal exit, error (a drop
//! guard), SIGTERM/SIGINT (the loop quits) and panic (a hook that restores
//! before the panic is printed); mouse capture is released with it.

pub mod app;
pub mod audit_view;
pub mod command;
pub mod event;
pub mod notify;
pub mod ring;
pub mod theme;
pub mod view;

#[cfg(test)]
mod snapshots;

use std::io::stdout;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};

use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
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

/// Settings from the command line that every way into the TUI shares
/// (`zt-console` itself and `zt-console demo`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The stack's data directory: the Audit view reads its log.
    pub data_dir: Option<PathBuf>,
    /// `--no-notify`: no desktop notifications (the bell and toasts stay).
    pub no_notify: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Records the settings once, before the TUI starts; later calls are ignored.
pub fn configure(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// Runs the console until the operator quits.
pub async fn run(client: OperatorClient, opts: TuiOptions) -> anyhow::Result<()> {
    let settings = SETTINGS.get().cloned().unwrap_or_default();
    let mut app = app::App::new(client.url(), opts.readonly, opts.banner, zt_proto::now_ms());
    app.theme = theme::Theme::from_env();
    app.audit = audit_view::AuditView::new(settings.data_dir);
    let notifier = notify::Notifier::from_env(!settings.no_notify);
    if !notifier.enabled() {
        tracing::info!("desktop notifications off (--no-notify, or no session D-Bus)");
    }
    install_panic_hook();
    let (mut terminal, _guard) = init_terminal()?;
    event::run_loop(&mut terminal, client, notifier, app).await
    // `_guard` restores the terminal here, on success and on error alike.
}

/// The TUI's log (`$ZT_CONSOLE_LOG`, else `zt-console/console.log` under
/// `$XDG_STATE_HOME` or `~/.local/state`), opened for appending: the TUI
/// owns the terminal, so warnings (a desktop notification that failed, ...)
/// go there. `None` when it cannot be opened.
pub fn open_log() -> Option<std::fs::File> {
    let path = match std::env::var_os("ZT_CONSOLE_LOG").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?
            .join("zt-console")
            .join("console.log"),
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
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
    execute!(stdout(), EnterAlternateScreen, EnableMouseCapture)?;
    let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    Ok((terminal, guard))
}

fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(
            stdout(),
            DisableMouseCapture,
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
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
