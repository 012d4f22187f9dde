//! The console's state and its key handling. No IO and no terminal here:
//! network results arrive as method calls ([`App::push_event`],
//! [`App::set_pending`], ...), keys go through [`on_key`] and mouse clicks
//! through [`on_mouse`], and whatever needs the network or the disk leaves
//! as an [`Action`] for the event loop to run.

use std::collections::BTreeMap;

use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Rect;
use zt_proto::pb::{ApprovalRequest, Event, Operator};

use super::audit_view::{AuditPage, AuditView, Badge, Page, Query, Verify};
use super::command::{self, AuditFilter, Command};
use super::ring::Ring;
use super::theme::Theme;
use super::view::{self, Hit};
use crate::client::{approvals, dollars};

/// Events kept in memory for the Live view (a ring: the oldest go first).
pub const EVENT_CAP: usize = 100_000;
/// Denial and alert events kept for the Denials view.
pub const DENIAL_CAP: usize = 5_000;
/// Alerts kept for the Alerts view.
pub const ALERT_CAP: usize = 1_000;
/// Agents counted one by one in the Denials view; beyond, "(other agents)".
pub const AGENT_CAP: usize = 1_000;
/// How long a toast stays on the status line.
pub const TOAST_MS: i64 = 6_000;
/// The denial-rate sparkline: buckets of this many ms...
pub const SPARK_BUCKET_MS: i64 = 10_000;
/// ...this many of them (5 minutes).
pub const SPARK_BUCKETS: usize = 30;
/// Rows moved by PageUp / PageDown.
const PAGE: usize = 10;

/// The console's views, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Pending,
    Live,
    Denials,
    Alerts,
    Audit,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Pending,
        View::Live,
        View::Denials,
        View::Alerts,
        View::Audit,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Pending => "Pending",
            View::Live => "Live",
            View::Denials => "Denials",
            View::Alerts => "Alerts",
            View::Audit => "Audit",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn next(self) -> View {
        View::ALL[(self.index() + 1) % View::ALL.len()]
    }

    fn prev(self) -> View {
        View::ALL[(self.index() + View::ALL.len() - 1) % View::ALL.len()]
    }
}

/// The state of the event stream to the approval service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Live,
    /// The stream broke; the next attempt is at `retry_at_ms`.
    Down {
        error: String,
        attempt: u32,
        retry_at_ms: i64,
    },
}

/// What the event loop must do on the console's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    Decide {
        id: String,
        approve: bool,
        reason: String,
    },
    /// Read a page of the audit log.
    AuditQuery(Query),
    /// Verify the audit log of this data directory.
    Verify(std::path::PathBuf),
}

/// The reason prompt of an approve or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub id: String,
    pub approve: bool,
    /// Always to deny; to approve when the request's amount is above the
    /// approval rules' threshold.
    pub reason_required: bool,
    pub input: String,
    pub error: Option<String>,
}

/// What the keyboard is talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Help,
    Prompt(Prompt),
    /// Typing a filter; the filter applies as it is typed.
    Filter,
    /// Typing a command after `:`.
    Command(String),
}

/// A one-line message on the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toast {
    pub text: String,
    pub error: bool,
    pub until_ms: i64,
}

/// A desktop notification for the event loop to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// Live view: follow the tail, or stay frozen at a sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveState {
    /// `Some(seq)`: paused; only events up to `seq` are shown.
    pub frozen_at: Option<u64>,
    /// Rows scrolled up from the bottom (while paused).
    pub scroll: usize,
}

/// Everything the console shows.
#[derive(Debug, Clone)]
pub struct App {
    pub theme: Theme,
    pub readonly: bool,
    pub banner: Option<String>,
    pub url: String,
    pub now_ms: i64,
    /// The terminal's size at the last draw (mouse clicks are mapped with it).
    pub area: Rect,
    pub operator: Option<Operator>,
    pub conn: Conn,
    pub view: View,
    pub mode: Mode,
    /// Pending requests, oldest first.
    pub pending: Vec<ApprovalRequest>,
    pub pending_error: Option<String>,
    /// The selected pending request, by id (survives refreshes).
    pub selected: Option<String>,
    /// Decisions sent and not yet answered.
    pub inflight: Vec<String>,
    /// The most recent events (at most [`EVENT_CAP`]).
    pub events: Ring<Event>,
    pub events_total: u64,
    pub last_seq: u64,
    pub live: LiveState,
    /// Denial and alert events, oldest first.
    pub denials: Ring<Event>,
    pub denials_total: u64,
    pub denials_by_agent: BTreeMap<String, u64>,
    /// Divergences of `@shadow` rules seen, per rule.
    pub shadow_by_rule: BTreeMap<String, u64>,
    pub denial_scroll: usize,
    /// The agent whose denial rate the sparkline shows (default: the top one).
    pub denial_agent: Option<String>,
    /// Alerts raised by the approval service's detection rules, oldest first.
    pub alerts: Ring<Event>,
    pub alerts_total: u64,
    /// The selected alert, counted from the newest (0).
    pub alert_selected: usize,
    /// Substring filter of the Live and Denials views (case-insensitive).
    pub filter: String,
    pub audit: AuditView,
    pub toast: Option<Toast>,
    /// Ring the terminal bell at the next draw (a new request arrived).
    pub bell: bool,
    /// Desktop notifications waiting for the event loop.
    pub notices: Vec<Notice>,
}

impl App {
    pub fn new(url: &str, readonly: bool, banner: Option<String>, now_ms: i64) -> App {
        App {
            theme: Theme { color: true },
            readonly,
            banner,
            url: url.to_owned(),
            now_ms,
            area: Rect::new(0, 0, 120, 40),
            operator: None,
            conn: Conn::Connecting,
            view: View::Pending,
            mode: Mode::Normal,
            pending: Vec::new(),
            pending_error: None,
            selected: None,
            inflight: Vec::new(),
            events: Ring::new(EVENT_CAP),
            events_total: 0,
            last_seq: 0,
            live: LiveState::default(),
            denials: Ring::new(DENIAL_CAP),
            denials_total: 0,
            denials_by_agent: BTreeMap::new(),
            shadow_by_rule: BTreeMap::new(),
            denial_scroll: 0,
            denial_agent: None,
            alerts: Ring::new(ALERT_CAP),
            alerts_total: 0,
            alert_selected: 0,
            filter: String::new(),
            audit: AuditView::default(),
            toast: None,
            bell: false,
            notices: Vec::new(),
        }
    }

    /// Advances the clock (countdowns, toasts, reconnect timer).
    pub fn tick(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        if self.toast.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.toast = None;
        }
    }

    pub fn toast(&mut self, text: impl Into<String>, error: bool) {
        self.toast = Some(Toast {
            text: text.into(),
            error,
            until_ms: self.now_ms + TOAST_MS,
        });
    }

    /// One event from the stream. Duplicates (by sequence) are dropped.
    pub fn push_event(&mut self, ev: Event) {
        if ev.seq != 0 && ev.seq <= self.last_seq {
            return;
        }
        self.last_seq = self.last_seq.max(ev.seq);
        self.events_total += 1;
        let alert = is_alert(&ev);
        if alert {
            self.alerts_total += 1;
            self.alerts.push(ev.clone());
            if self.alert_selected > 0 {
                self.alert_selected = (self.alert_selected + 1).min(self.alerts.len() - 1);
            }
        }
        if alert || is_denial(&ev.decision) {
            if !alert {
                self.denials_total += 1;
                let agent = agent_of(&ev);
                let key = if self.denials_by_agent.contains_key(agent)
                    || self.denials_by_agent.len() < AGENT_CAP
                {
                    agent.to_owned()
                } else {
                    OTHER_AGENTS.to_owned()
                };
                *self.denials_by_agent.entry(key).or_default() += 1;
            }
            self.denials.push(ev.clone());
            if self.denial_scroll > 0 {
                self.denial_scroll += 1;
            }
        }
        match ev.kind.as_str() {
            "request_pending" => {
                let what = one_line(&ev.summary, &ev.tool);
                self.toast(format!("new request {}: {what}", ev.request_id), false);
                self.bell = true;
                self.notices.push(Notice {
                    title: "Approval needed".into(),
                    body: format!("{what} ({})", ev.request_id),
                });
            }
            "shadow" => {
                for rule in &ev.rules {
                    *self.shadow_by_rule.entry(rule.clone()).or_default() += 1;
                }
            }
            "alert" => {
                let what = one_line(&ev.summary, &ev.tool);
                self.toast(format!("alert: {what}"), true);
                self.notices.push(Notice {
                    title: "Alert".into(),
                    body: what,
                });
            }
            _ => {}
        }
        self.events.push(ev);
    }

    /// A fresh pending list from the service.
    pub fn set_pending(&mut self, mut list: Vec<ApprovalRequest>) {
        list.sort_by(|a, b| {
            a.created_at_ms
                .cmp(&b.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        let old_index = self.selected_index();
        self.pending = list;
        self.pending_error = None;
        let still_there = self
            .selected
            .as_ref()
            .is_some_and(|id| self.pending.iter().any(|r| &r.id == id));
        if !still_there {
            // Keep the cursor where it was, on whatever moved into its place.
            let i = old_index
                .unwrap_or(0)
                .min(self.pending.len().saturating_sub(1));
            self.selected = self.pending.get(i).map(|r| r.id.clone());
        }
    }

    /// The answer to a decision the console sent.
    pub fn decided(&mut self, id: &str, approve: bool, result: Result<ApprovalRequest, String>) {
        self.inflight.retain(|i| i != id);
        match result {
            Ok(req) if req.status == "pending" => {
                self.toast(
                    format!(
                        "{id}: vote recorded, approvals {}; still pending",
                        approvals(&req)
                    ),
                    false,
                );
                if let Some(slot) = self.pending.iter_mut().find(|r| r.id == id) {
                    *slot = req;
                }
            }
            Ok(req) => {
                self.toast(format!("{id} {}", req.status), false);
                // Through set_pending, so the cursor stays where it was.
                let rest = self
                    .pending
                    .iter()
                    .filter(|r| r.id != id)
                    .cloned()
                    .collect();
                self.set_pending(rest);
            }
            Err(e) => {
                let verb = if approve { "approve" } else { "deny" };
                self.toast(format!("could not {verb} {id}: {e}"), true);
            }
        }
    }

    /// A page of the audit log (or why it could not be read).
    pub fn audit_answered(&mut self, id: u64, result: Result<AuditPage, String>) {
        if let (true, Err(e)) = (id == self.audit.query_id, &result) {
            self.toast(format!("audit query failed: {e}"), true);
        }
        self.audit.answered(id, result);
    }

    /// Progress of a verification.
    pub fn verify_progress(&mut self, done: u64, total: u64) {
        if matches!(self.audit.verify, Verify::Running { .. }) {
            self.audit.verify = Verify::Running { done, total };
        }
    }

    /// A verification's outcome.
    pub fn verified(&mut self, result: Result<Badge, String>) {
        self.audit.verify = match result {
            Ok(badge) => {
                let broken = matches!(badge, Badge::Broken { .. });
                self.toast(badge.text(), broken);
                Verify::Done(badge)
            }
            Err(e) => {
                self.toast(format!("could not verify: {e}"), true);
                Verify::Failed(e)
            }
        };
    }

    pub fn selected_index(&self) -> Option<usize> {
        let id = self.selected.as_ref()?;
        self.pending.iter().position(|r| &r.id == id)
    }

    pub fn selected_request(&self) -> Option<&ApprovalRequest> {
        self.selected_index().map(|i| &self.pending[i])
    }

    fn move_selection(&mut self, delta: isize) {
        if self.pending.is_empty() {
            self.selected = None;
            return;
        }
        let last = self.pending.len() - 1;
        let cur = self.selected_index().unwrap_or(0);
        let next = cur.saturating_add_signed(delta).min(last);
        self.selected = Some(self.pending[next].id.clone());
    }

    /// Does `ev` pass the current filter?
    pub fn matches(&self, ev: &Event) -> bool {
        event_matches(ev, &self.filter)
    }

    /// The Live rows to show in `height` rows, oldest first.
    pub fn live_rows(&self, height: usize) -> Vec<&Event> {
        let upto = self.live.frozen_at.unwrap_or(u64::MAX);
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.seq <= upto && event_matches_lower(e, &needle))
            .skip(self.live.scroll)
            .take(height)
            .collect();
        rows.reverse();
        rows
    }

    /// Events that arrived since the Live view was paused.
    pub fn live_new_since_pause(&self) -> usize {
        match self.live.frozen_at {
            Some(seq) => self.events.iter().rev().take_while(|e| e.seq > seq).count(),
            None => 0,
        }
    }

    /// The Denials rows to show in `height` rows, newest first.
    pub fn denial_rows(&self, height: usize) -> Vec<&Event> {
        let needle = self.filter.to_lowercase();
        self.denials
            .iter()
            .rev()
            .filter(|e| event_matches_lower(e, &needle))
            .skip(self.denial_scroll)
            .take(height)
            .collect()
    }

    /// Agents by denials, most first.
    pub fn agents_by_denials(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .denials_by_agent
            .iter()
            .map(|(a, n)| (a.as_str(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    /// The agent the sparkline follows: the chosen one, else the top one.
    pub fn spark_agent(&self) -> Option<&str> {
        match &self.denial_agent {
            Some(a) if self.denials_by_agent.contains_key(a) => Some(a),
            _ => self.agents_by_denials().first().map(|(a, _)| *a),
        }
    }

    /// Denials of `agent` per [`SPARK_BUCKET_MS`] over the last
    /// [`SPARK_BUCKETS`] buckets, oldest first (the last bucket ends now).
    pub fn denial_rate(&self, agent: &str) -> Vec<u64> {
        let mut buckets = vec![0u64; SPARK_BUCKETS];
        let span = SPARK_BUCKET_MS * SPARK_BUCKETS as i64;
        let start = self.now_ms - span;
        for e in self.denials.iter() {
            if is_alert(e) || agent_of(e) != agent || e.time_ms <= start || e.time_ms > self.now_ms
            {
                continue;
            }
            // (start, now] in buckets of SPARK_BUCKET_MS, the last one ending now.
            let i = ((e.time_ms - start - 1) / SPARK_BUCKET_MS) as usize;
            if let Some(b) = buckets.get_mut(i) {
                *b += 1;
            }
        }
        buckets
    }

    fn cycle_denial_agent(&mut self, step: isize) {
        let agents: Vec<String> = self
            .agents_by_denials()
            .iter()
            .map(|(a, _)| (*a).to_owned())
            .collect();
        if agents.is_empty() {
            return;
        }
        let cur = self
            .spark_agent()
            .and_then(|a| agents.iter().position(|x| x == a))
            .unwrap_or(0);
        let n = agents.len() as isize;
        let next = (cur as isize + step).rem_euclid(n) as usize;
        self.denial_agent = agents.get(next).cloned();
    }

    /// The selected alert.
    pub fn selected_alert(&self) -> Option<&Event> {
        self.alerts.nth_newest(self.alert_selected)
    }

    fn move_alert(&mut self, delta: isize) {
        let last = self.alerts.len().saturating_sub(1);
        self.alert_selected = self.alert_selected.saturating_add_signed(delta).min(last);
    }

    fn toggle_pause(&mut self) {
        if self.live.frozen_at.is_some() {
            self.live = LiveState::default();
        } else {
            self.live.frozen_at = Some(self.last_seq);
        }
    }

    fn scroll_live(&mut self, up: isize) {
        if self.live.frozen_at.is_none() {
            if up <= 0 {
                return;
            }
            self.live.frozen_at = Some(self.last_seq);
        }
        self.live.scroll = self.live.scroll.saturating_add_signed(up);
        let upto = self.live.frozen_at.unwrap_or(u64::MAX);
        let needle = self.filter.to_lowercase();
        let max = self
            .events
            .iter()
            .filter(|e| e.seq <= upto && event_matches_lower(e, &needle))
            .count()
            .saturating_sub(1);
        self.live.scroll = self.live.scroll.min(max);
    }

    fn scroll_denials(&mut self, down: isize) {
        let needle = self.filter.to_lowercase();
        let max = self
            .denials
            .iter()
            .filter(|e| event_matches_lower(e, &needle))
            .count()
            .saturating_sub(1);
        self.denial_scroll = self.denial_scroll.saturating_add_signed(down).min(max);
    }

    fn open_prompt(&mut self, approve: bool) {
        if self.readonly {
            return;
        }
        match self.selected_request() {
            Some(req) if self.inflight.contains(&req.id) => {
                let id = req.id.clone();
                self.toast(format!("{id}: a decision is already on its way"), true);
            }
            Some(req) => {
                self.mode = Mode::Prompt(Prompt {
                    id: req.id.clone(),
                    approve,
                    reason_required: !approve || req.approve_reason_required,
                    input: String::new(),
                    error: None,
                });
            }
            None => self.toast("no pending request selected", true),
        }
    }

    /// Switches to `view`; the Audit view runs its first query when first shown.
    pub fn show(&mut self, view: View) -> Option<Action> {
        self.view = view;
        if view == View::Audit && self.audit.query_id == 0 && self.audit.data_dir.is_some() {
            let filter = self.audit.filter.clone();
            return self.audit_query(filter, Page::Newest);
        }
        None
    }

    fn audit_query(&mut self, filter: AuditFilter, page: Page) -> Option<Action> {
        self.view = View::Audit;
        match self.audit.query(filter, page) {
            Ok(q) => Some(Action::AuditQuery(q)),
            Err(e) => {
                self.toast(e, true);
                None
            }
        }
    }

    fn start_verify(&mut self) -> Option<Action> {
        self.view = View::Audit;
        if matches!(self.audit.verify, Verify::Running { .. }) {
            self.toast("a verification is already running", false);
            return None;
        }
        match self.audit.data_dir.clone() {
            Some(dir) => {
                self.audit.verify = Verify::Running { done: 0, total: 0 };
                Some(Action::Verify(dir))
            }
            None => {
                self.toast("no audit log: start the console with --data-dir DIR", true);
                None
            }
        }
    }

    fn run_command(&mut self, line: &str) -> Option<Action> {
        match command::parse(line) {
            Ok(Command::View(v)) => self.show(v),
            Ok(Command::Audit(f)) => self.audit_query(f, Page::Newest),
            Ok(Command::Verify) => self.start_verify(),
            Ok(Command::Help) => {
                self.mode = Mode::Help;
                None
            }
            Ok(Command::Quit) => Some(Action::Quit),
            Err(e) => {
                self.toast(e, true);
                None
            }
        }
    }

    /// Selects row `i` of the current view's list (a mouse click).
    fn select_row(&mut self, i: usize) {
        match self.view {
            View::Pending => {
                if let Some(r) = self.pending.get(i) {
                    self.selected = Some(r.id.clone());
                }
            }
            View::Alerts => {
                if i < self.alerts.len() {
                    self.alert_selected = i;
                }
            }
            View::Audit if !self.audit.detail => {
                if i < self.audit.len() {
                    self.audit.selected = i;
                }
            }
            View::Denials => {
                let rows = self.denial_rows(i + 1);
                if let Some(e) = rows.get(i).filter(|e| !is_alert(e)) {
                    self.denial_agent = Some(agent_of(e).to_owned());
                }
            }
            View::Live | View::Audit => {}
        }
    }
}

/// Where the agents beyond [`AGENT_CAP`] are counted.
pub const OTHER_AGENTS: &str = "(other agents)";

/// A key bar / help entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    pub keys: &'static str,
    pub desc: &'static str,
    /// Shown in the key bar (all entries are shown in the help overlay).
    pub bar: bool,
}

const fn cmd(keys: &'static str, desc: &'static str, bar: bool) -> Cmd {
    Cmd { keys, desc, bar }
}

/// The keys that work right now: the key bar and the `?` overlay are both
/// drawn from this list, so they cannot disagree with [`on_key`].
pub fn commands(app: &App) -> Vec<Cmd> {
    match &app.mode {
        Mode::Prompt(p) => vec![
            cmd("enter", if p.approve { "approve" } else { "deny" }, true),
            cmd("esc", "cancel", true),
            cmd("ctrl-c", "quit", false),
        ],
        Mode::Filter => vec![
            cmd("enter", "keep filter", true),
            cmd("esc", "clear filter", true),
            cmd("ctrl-c", "quit", false),
        ],
        Mode::Command(_) => vec![
            cmd("enter", "run", true),
            cmd("tab", "complete", true),
            cmd("esc", "cancel", true),
            cmd("ctrl-c", "quit", false),
        ],
        Mode::Help | Mode::Normal => {
            let mut v = Vec::new();
            match app.view {
                View::Pending => {
                    v.push(cmd("j/k ↑/↓", "select", true));
                    v.push(cmd("g/G", "first / last", false));
                    if !app.readonly {
                        v.push(cmd("a", "approve", true));
                        v.push(cmd("d", "deny", true));
                    }
                }
                View::Live => {
                    let pause = if app.live.frozen_at.is_some() {
                        "follow"
                    } else {
                        "pause"
                    };
                    v.push(cmd("space", pause, true));
                    v.push(cmd("/", "filter", true));
                    v.push(cmd("j/k ↑/↓", "scroll", true));
                    v.push(cmd("pgup/pgdn", "scroll a page", false));
                    v.push(cmd("G", "follow the tail", false));
                }
                View::Denials => {
                    v.push(cmd("/", "filter", true));
                    v.push(cmd("j/k ↑/↓", "scroll", true));
                    v.push(cmd("g", "newest", false));
                    v.push(cmd("[/]", "sparkline agent", true));
                    v.push(cmd("click", "show that agent's rate", false));
                }
                View::Alerts => {
                    v.push(cmd("j/k ↑/↓", "select", true));
                    v.push(cmd("g/G", "newest / oldest", false));
                    v.push(cmd("enter", "subject's events in Live", true));
                }
                View::Audit if app.audit.detail => {
                    v.push(cmd("j/k ↑/↓", "scroll", true));
                    v.push(cmd("esc", "back to the list", true));
                    v.push(cmd("v", "verify the chains", true));
                }
                View::Audit => {
                    v.push(cmd("j/k ↑/↓", "select", true));
                    v.push(cmd("enter", "entry detail", true));
                    v.push(cmd("/", "edit filter", true));
                    v.push(cmd("v", "verify", true));
                    v.push(cmd("r", "reload", false));
                    v.push(cmd("[/]", "older / newer page", false));
                    v.push(cmd("g/G", "newest / oldest", false));
                }
            }
            if !app.filter.is_empty() && matches!(app.view, View::Live | View::Denials) {
                v.push(cmd("esc", "clear filter", false));
            }
            v.push(cmd(":", "command", true));
            v.push(cmd("1-5 tab", "views", true));
            let help = if app.mode == Mode::Help {
                "close help"
            } else {
                "help"
            };
            v.push(cmd("?", help, true));
            v.push(cmd("q", "quit", true));
            v.push(cmd("ctrl-c", "quit", false));
            v
        }
    }
}

/// The `:` commands, for the help overlay.
pub const COMMAND_HELP: [(&str, &str); 9] = [
    (":pending :live :denials", "show a view"),
    (":alerts", "alerts from the detection rules"),
    (":audit [key=value ...]", "the audit log, filtered"),
    ("  keys", "session human agent tool decision"),
    ("", "kind chain since until"),
    ("  e.g.", ":audit tool=issue_refund since=2h"),
    (":verify", "verify the audit chains"),
    (":help", "this overlay"),
    (":q :quit", "quit"),
];

/// Handles one key. Returns what the event loop must do, if anything.
pub fn on_key(app: &mut App, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    // Text input takes plain (and shifted) characters only, not Alt/Ctrl chords.
    let plain = !key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
    if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
        return Some(Action::Quit);
    }
    match &mut app.mode {
        Mode::Prompt(p) => {
            match key.code {
                KeyCode::Esc => app.mode = Mode::Normal,
                KeyCode::Enter => {
                    let reason = p.input.trim().to_owned();
                    if p.reason_required && reason.is_empty() {
                        p.error = Some(if p.approve {
                            "a reason is required to approve this amount".into()
                        } else {
                            "a reason is required to deny".into()
                        });
                        return None;
                    }
                    let action = Action::Decide {
                        id: p.id.clone(),
                        approve: p.approve,
                        reason,
                    };
                    let verb = if p.approve { "approving" } else { "denying" };
                    let id = p.id.clone();
                    app.mode = Mode::Normal;
                    app.inflight.push(id.clone());
                    app.toast(format!("{verb} {id}…"), false);
                    return Some(action);
                }
                KeyCode::Backspace => {
                    p.input.pop();
                }
                KeyCode::Char(c) if plain => {
                    p.input.push(c);
                    p.error = None;
                }
                _ => {}
            }
            return None;
        }
        Mode::Filter => {
            match key.code {
                KeyCode::Esc => {
                    app.filter.clear();
                    app.mode = Mode::Normal;
                }
                KeyCode::Enter => app.mode = Mode::Normal,
                KeyCode::Backspace => {
                    app.filter.pop();
                }
                KeyCode::Char(c) if plain => app.filter.push(c),
                _ => {}
            }
            app.live.scroll = 0;
            app.denial_scroll = 0;
            return None;
        }
        Mode::Command(line) => {
            match key.code {
                KeyCode::Esc => app.mode = Mode::Normal,
                KeyCode::Enter => {
                    let line = std::mem::take(line);
                    app.mode = Mode::Normal;
                    return app.run_command(&line);
                }
                KeyCode::Tab => {
                    if let Some(done) = command::complete(line) {
                        *line = done;
                    }
                }
                KeyCode::Backspace if line.is_empty() => app.mode = Mode::Normal,
                KeyCode::Backspace => {
                    line.pop();
                }
                KeyCode::Char(c) if plain => line.push(c),
                _ => {}
            }
            return None;
        }
        Mode::Help => {
            if matches!(key.code, KeyCode::Esc | KeyCode::Char('?')) {
                app.mode = Mode::Normal;
                return None;
            }
            if key.code == KeyCode::Char('q') {
                return Some(Action::Quit);
            }
            // Other keys act on the view underneath and close the overlay.
            app.mode = Mode::Normal;
        }
        Mode::Normal => {}
    }

    match key.code {
        KeyCode::Char('q') => return Some(Action::Quit),
        KeyCode::Char('?') => app.mode = Mode::Help,
        KeyCode::Char(':') => app.mode = Mode::Command(String::new()),
        KeyCode::Tab => return app.show(app.view.next()),
        KeyCode::BackTab => return app.show(app.view.prev()),
        KeyCode::Char(c @ '1'..='5') => {
            let i = (c as u8 - b'1') as usize;
            return app.show(View::ALL[i.min(View::ALL.len() - 1)]);
        }
        KeyCode::Esc
            if !app.filter.is_empty() && matches!(app.view, View::Live | View::Denials) =>
        {
            app.filter.clear();
            app.live.scroll = 0;
            app.denial_scroll = 0;
        }
        code => match app.view {
            View::Pending => match code {
                KeyCode::Down | KeyCode::Char('j') => app.move_selection(1),
                KeyCode::Up | KeyCode::Char('k') => app.move_selection(-1),
                KeyCode::PageDown => app.move_selection(PAGE as isize),
                KeyCode::PageUp => app.move_selection(-(PAGE as isize)),
                KeyCode::Home | KeyCode::Char('g') => app.move_selection(isize::MIN),
                KeyCode::End | KeyCode::Char('G') => app.move_selection(isize::MAX),
                KeyCode::Char('a') => app.open_prompt(true),
                KeyCode::Char('d') => app.open_prompt(false),
                _ => {}
            },
            View::Live => match code {
                KeyCode::Char(' ') => app.toggle_pause(),
                KeyCode::Char('/') => app.mode = Mode::Filter,
                KeyCode::Up | KeyCode::Char('k') => app.scroll_live(1),
                KeyCode::Down | KeyCode::Char('j') => app.scroll_live(-1),
                KeyCode::PageUp => app.scroll_live(PAGE as isize),
                KeyCode::PageDown => app.scroll_live(-(PAGE as isize)),
                KeyCode::End | KeyCode::Char('G') => app.live = LiveState::default(),
                _ => {}
            },
            View::Denials => match code {
                KeyCode::Char('/') => app.mode = Mode::Filter,
                KeyCode::Down | KeyCode::Char('j') => app.scroll_denials(1),
                KeyCode::Up | KeyCode::Char('k') => app.scroll_denials(-1),
                KeyCode::PageDown => app.scroll_denials(PAGE as isize),
                KeyCode::PageUp => app.scroll_denials(-(PAGE as isize)),
                KeyCode::Home | KeyCode::Char('g') => app.denial_scroll = 0,
                KeyCode::Char(']') => app.cycle_denial_agent(1),
                KeyCode::Char('[') => app.cycle_denial_agent(-1),
                _ => {}
            },
            View::Alerts => match code {
                KeyCode::Down | KeyCode::Char('j') => app.move_alert(1),
                KeyCode::Up | KeyCode::Char('k') => app.move_alert(-1),
                KeyCode::PageDown => app.move_alert(PAGE as isize),
                KeyCode::PageUp => app.move_alert(-(PAGE as isize)),
                KeyCode::Home | KeyCode::Char('g') => app.alert_selected = 0,
                KeyCode::End | KeyCode::Char('G') => app.move_alert(isize::MAX),
                KeyCode::Enter => {
                    if let Some(a) = app.selected_alert() {
                        let subject = alert_info(a).subject;
                        app.filter = subject;
                        app.live = LiveState::default();
                        app.view = View::Live;
                    }
                }
                _ => {}
            },
            View::Audit => return audit_key(app, code),
        },
    }
    None
}

fn audit_key(app: &mut App, code: KeyCode) -> Option<Action> {
    let a = &mut app.audit;
    if a.detail {
        match code {
            KeyCode::Esc | KeyCode::Enter | KeyCode::Backspace => a.detail = false,
            KeyCode::Down | KeyCode::Char('j') => {
                a.detail_scroll = a.detail_scroll.saturating_add(1)
            }
            KeyCode::Up | KeyCode::Char('k') => a.detail_scroll = a.detail_scroll.saturating_sub(1),
            KeyCode::PageDown => a.detail_scroll = a.detail_scroll.saturating_add(PAGE as u16),
            KeyCode::PageUp => a.detail_scroll = a.detail_scroll.saturating_sub(PAGE as u16),
            KeyCode::Home | KeyCode::Char('g') => a.detail_scroll = 0,
            KeyCode::Char('v') => return app.start_verify(),
            _ => {}
        }
        return None;
    }
    match code {
        KeyCode::Down | KeyCode::Char('j') => a.move_selection(1),
        KeyCode::Up | KeyCode::Char('k') => a.move_selection(-1),
        KeyCode::PageDown => a.move_selection(PAGE as isize),
        KeyCode::PageUp => a.move_selection(-(PAGE as isize)),
        KeyCode::Home | KeyCode::Char('g') => a.selected = 0,
        KeyCode::End | KeyCode::Char('G') => a.move_selection(isize::MAX),
        KeyCode::Enter if a.selected_row().is_some() => {
            a.detail = true;
            a.detail_scroll = 0;
        }
        KeyCode::Char('/') => {
            let mut line = String::from("audit ");
            if !a.filter.is_empty() {
                line.push_str(&a.filter.to_string());
                line.push(' ');
            }
            app.mode = Mode::Command(line);
        }
        KeyCode::Char('r') => {
            let (f, p) = (a.filter.clone(), a.page);
            return app.audit_query(f, p);
        }
        KeyCode::Char('v') => return app.start_verify(),
        KeyCode::Char('[') | KeyCode::Char(']') => {
            let older = code == KeyCode::Char('[');
            let next = a
                .result
                .as_ref()
                .and_then(|p| if older { p.older() } else { p.newer() });
            match next {
                Some(page) => {
                    let f = a.filter.clone();
                    return app.audit_query(f, page);
                }
                None => {
                    let end = if older { "oldest" } else { "newest" };
                    app.toast(format!("this is the {end} page"), false);
                }
            }
        }
        _ => {}
    }
    None
}

/// Handles a mouse event: a left click selects a row or a tab, the wheel
/// moves like j/k. Returns what the event loop must do, if anything.
pub fn on_mouse(app: &mut App, ev: MouseEvent) -> Option<Action> {
    if app.mode != Mode::Normal {
        return None;
    }
    match ev.kind {
        MouseEventKind::Down(MouseButton::Left) => match view::hit(app, ev.column, ev.row) {
            Some(Hit::Tab(v)) => return app.show(v),
            Some(Hit::Row(i)) => app.select_row(i),
            Some(Hit::Agent(a)) => app.denial_agent = Some(a),
            None => {}
        },
        MouseEventKind::ScrollDown => {
            return on_key(app, KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        }
        MouseEventKind::ScrollUp => {
            return on_key(app, KeyEvent::new(KeyCode::Up, KeyModifiers::NONE));
        }
        _ => {}
    }
    None
}

/// A decision that refused something.
pub fn is_denial(decision: &str) -> bool {
    matches!(decision, "deny" | "denied")
}

/// An alert raised by a detection rule (shown among the denials).
pub fn is_alert(ev: &Event) -> bool {
    ev.kind == "alert"
}

/// The agent of an event ("?" when the event names none).
pub fn agent_of(ev: &Event) -> &str {
    if ev.agent.is_empty() { "?" } else { &ev.agent }
}

/// The agent of a request: the current actor of its behalf-of chain.
pub fn request_agent(req: &ApprovalRequest) -> &str {
    req.actors.first().map(String::as_str).unwrap_or("?")
}

/// An alert's parts, read from its summary ("high denial-spike: agent
/// agent:x had 10 denials within 1m"); what cannot be read is "?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertInfo {
    pub severity: String,
    pub rule: String,
    /// agent, session or human.
    pub by: String,
    pub subject: String,
    pub count: Option<u32>,
}

pub fn alert_info(ev: &Event) -> AlertInfo {
    let (head, tail) = ev.summary.split_once(": ").unwrap_or(("", &ev.summary));
    let (severity, rule) = head.split_once(' ').unwrap_or(("", head));
    let words: Vec<&str> = tail.split_whitespace().collect();
    let (by, subject, count) = match words.as_slice() {
        [by, subject, "had", count, ..] => (*by, *subject, count.parse().ok()),
        _ => ("", "", None),
    };
    let or = |s: &str, fallback: &str| {
        if s.is_empty() {
            fallback.to_owned()
        } else {
            s.to_owned()
        }
    };
    let fallback_subject = [&ev.agent, &ev.session_id, &ev.human]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or("?", |s| s.as_str());
    let rule = ev
        .rules
        .first()
        .map(String::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or(rule);
    AlertInfo {
        severity: or(severity, "?"),
        rule: or(rule, "?"),
        by: or(by, "?"),
        subject: or(subject, fallback_subject),
        count,
    }
}

fn event_matches(ev: &Event, filter: &str) -> bool {
    event_matches_lower(ev, &filter.to_lowercase())
}

/// `needle` is already lowercase (done once per list, not once per event).
fn event_matches_lower(ev: &Event, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    let has = |f: &str| {
        if f.is_ascii() && needle.is_ascii() {
            f.as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        } else {
            f.to_lowercase().contains(needle)
        }
    };
    [
        &ev.kind,
        &ev.session_id,
        &ev.human,
        &ev.agent,
        &ev.tool,
        &ev.decision,
        &ev.summary,
        &ev.request_id,
    ]
    .iter()
    .any(|f| has(f))
        || ev.rules.iter().any(|r| has(r))
}

fn one_line(summary: &str, fallback: &str) -> String {
    let s = if summary.is_empty() {
        fallback
    } else {
        summary
    };
    s.lines().next().unwrap_or("").to_owned()
}

/// "$200.00", or "—" for calls that move no money.
pub fn amount(cents: i64) -> String {
    if cents == 0 {
        "—".into()
    } else {
        dollars(cents)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zt_proto::pb::Vote;

    pub const NOW: i64 = 1_700_000_000_000;

    pub fn request(
        id: &str,
        tool: &str,
        cents: i64,
        created_ago_s: i64,
        expires_in_s: i64,
    ) -> ApprovalRequest {
        ApprovalRequest {
            id: id.into(),
            status: "pending".into(),
            tool: tool.into(),
            args_json: format!(r#"{{"amount":{cents},"order_id":"ord-77"}}"#),
            args_hash: "9f2c".into(),
            session_id: "sess-42".into(),
            human: "bob".into(),
            actors: vec!["support-agent".into()],
            rules: vec!["refund-over-rep-limit".into()],
            reason: "refund exceeds the rep's limit of $50.00".into(),
            risk: "high".into(),
            amount_cents: cents,
            justification: "customer was charged twice".into(),
            created_at_ms: NOW - created_ago_s * 1000,
            expires_at_ms: NOW + expires_in_s * 1000,
            votes: vec![],
            grant: String::new(),
            outcome: String::new(),
            approvals_required: 1,
            approvers: vec![],
            approve_reason_required: false,
        }
    }

    pub fn event(seq: u64, decision: &str, agent: &str, tool: &str, summary: &str) -> Event {
        Event {
            seq,
            time_ms: NOW - 1000 * (100 - seq as i64),
            kind: "tool_call".into(),
            session_id: "sess-42".into(),
            human: "bob".into(),
            agent: agent.into(),
            tool: tool.into(),
            decision: decision.into(),
            summary: summary.into(),
            request_id: String::new(),
            args_json: String::new(),
            rules: vec![],
        }
    }

    /// Two pending requests and a few events.
    pub fn sample(readonly: bool) -> App {
        let mut app = App::new("http://127.0.0.1:7001", readonly, None, NOW);
        app.operator = Some(Operator {
            name: "alice".into(),
            role: "approver".into(),
            limit_cents: 50_000,
        });
        app.conn = Conn::Live;
        app.set_pending(vec![
            request("req-b2", "change_plan", 0, 10, 600),
            request("req-a1", "issue_refund", 20_000, 120, 245),
        ]);
        for ev in [
            event(
                1,
                "allow",
                "support-agent",
                "lookup_account",
                "lookup_account acct-1",
            ),
            event(
                2,
                "constrain",
                "support-agent",
                "list_orders",
                "limit capped at 50",
            ),
            event(
                3,
                "deny",
                "rogue-agent",
                "issue_refund",
                "refund to another region",
            ),
            event(
                4,
                "escalate",
                "support-agent",
                "issue_refund",
                "refund $200.00 over rep limit",
            ),
            event(5, "deny", "rogue-agent", "change_plan", "plan not allowed"),
        ] {
            app.push_event(ev);
        }
        app
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, s: &str) -> Option<Action> {
        let mut last = None;
        for c in s.chars() {
            last = on_key(app, key(c));
        }
        last
    }

    #[test]
    fn pending_is_sorted_oldest_first_and_selects_the_first() {
        let app = sample(false);
        let ids: Vec<_> = app.pending.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["req-a1", "req-b2"]);
        assert_eq!(app.selected.as_deref(), Some("req-a1"));
    }

    #[test]
    fn approve_with_reason_submits() {
        let mut app = sample(false);
        assert_eq!(on_key(&mut app, key('a')), None);
        assert!(matches!(
            app.mode,
            Mode::Prompt(Prompt { approve: true, .. })
        ));
        assert_eq!(typed(&mut app, "ok"), None);
        let action = on_key(&mut app, code(KeyCode::Enter));
        assert_eq!(
            action,
            Some(Action::Decide {
                id: "req-a1".into(),
                approve: true,
                reason: "ok".into()
            })
        );
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.inflight, ["req-a1"]);
    }

    #[test]
    fn deny_without_reason_does_not_submit() {
        let mut app = sample(false);
        on_key(&mut app, key('j'));
        on_key(&mut app, key('d'));
        assert_eq!(on_key(&mut app, code(KeyCode::Enter)), None);
        match &app.mode {
            Mode::Prompt(p) => {
                assert!(!p.approve);
                assert_eq!(p.id, "req-b2");
                assert_eq!(p.error.as_deref(), Some("a reason is required to deny"));
            }
            other => panic!("prompt closed: {other:?}"),
        }
        // Whitespace is not a reason either.
        typed(&mut app, "  ");
        assert_eq!(on_key(&mut app, code(KeyCode::Enter)), None);
        typed(&mut app, "fraud");
        assert_eq!(
            on_key(&mut app, code(KeyCode::Enter)),
            Some(Action::Decide {
                id: "req-b2".into(),
                approve: false,
                reason: "fraud".into()
            })
        );
    }

    #[test]
    fn approving_above_the_threshold_needs_a_reason() {
        let mut app = sample(false);
        let mut list = app.pending.clone();
        if let Some(r) = list.iter_mut().find(|r| r.id == "req-a1") {
            r.approve_reason_required = true;
        }
        app.set_pending(list);
        on_key(&mut app, key('a'));
        assert_eq!(on_key(&mut app, code(KeyCode::Enter)), None);
        match &app.mode {
            Mode::Prompt(p) => assert_eq!(
                p.error.as_deref(),
                Some("a reason is required to approve this amount")
            ),
            other => panic!("prompt closed: {other:?}"),
        }
        typed(&mut app, "verified with the customer");
        assert!(matches!(
            on_key(&mut app, code(KeyCode::Enter)),
            Some(Action::Decide { approve: true, .. })
        ));
        // Below the threshold an approval needs none.
        on_key(&mut app, key('j'));
        on_key(&mut app, key('a'));
        assert!(on_key(&mut app, code(KeyCode::Enter)).is_some());
    }

    #[test]
    fn esc_cancels_the_prompt_and_backspace_edits() {
        let mut app = sample(false);
        on_key(&mut app, key('a'));
        typed(&mut app, "okx");
        on_key(&mut app, code(KeyCode::Backspace));
        match &app.mode {
            Mode::Prompt(p) => assert_eq!(p.input, "ok"),
            other => panic!("{other:?}"),
        }
        // 'q' inside the prompt is text, not quit.
        assert_eq!(on_key(&mut app, key('q')), None);
        assert_eq!(on_key(&mut app, code(KeyCode::Esc)), None);
        assert_eq!(app.mode, Mode::Normal);
        assert!(app.inflight.is_empty());
    }

    #[test]
    fn readonly_ignores_approve_and_deny() {
        let mut app = sample(true);
        assert_eq!(on_key(&mut app, key('a')), None);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(on_key(&mut app, key('d')), None);
        assert_eq!(app.mode, Mode::Normal);
        let keys: Vec<_> = commands(&app).iter().map(|c| c.desc).collect();
        assert!(
            !keys.contains(&"approve") && !keys.contains(&"deny"),
            "{keys:?}"
        );
    }

    #[test]
    fn a_second_decision_on_the_same_request_waits() {
        let mut app = sample(false);
        on_key(&mut app, key('a'));
        assert!(on_key(&mut app, code(KeyCode::Enter)).is_some());
        on_key(&mut app, key('a'));
        assert_eq!(app.mode, Mode::Normal);
        assert!(app.toast.as_ref().is_some_and(|t| t.error));
    }

    #[test]
    fn quit_keys() {
        let mut app = sample(false);
        assert_eq!(on_key(&mut app, key('q')), Some(Action::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        on_key(&mut app, key('a'));
        assert_eq!(on_key(&mut app, ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn views_switch_by_number_and_tab() {
        let mut app = sample(false);
        on_key(&mut app, key('2'));
        assert_eq!(app.view, View::Live);
        on_key(&mut app, code(KeyCode::Tab));
        assert_eq!(app.view, View::Denials);
        on_key(&mut app, code(KeyCode::Tab));
        assert_eq!(app.view, View::Alerts);
        on_key(&mut app, code(KeyCode::Tab));
        assert_eq!(app.view, View::Audit);
        on_key(&mut app, code(KeyCode::Tab));
        assert_eq!(app.view, View::Pending);
        on_key(&mut app, code(KeyCode::BackTab));
        assert_eq!(app.view, View::Audit);
        on_key(&mut app, key('4'));
        assert_eq!(app.view, View::Alerts);
        on_key(&mut app, key('1'));
        assert_eq!(app.view, View::Pending);
        // Without a data directory the Audit view asks for nothing.
        assert_eq!(on_key(&mut app, key('5')), None);
    }

    #[test]
    fn filter_narrows_live_and_esc_clears_it() {
        let mut app = sample(false);
        on_key(&mut app, key('2'));
        assert_eq!(app.live_rows(50).len(), 5);
        on_key(&mut app, key('/'));
        assert_eq!(app.mode, Mode::Filter);
        typed(&mut app, "ROGUE");
        let seqs: Vec<u64> = app.live_rows(50).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 5]);
        on_key(&mut app, code(KeyCode::Enter));
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.live_rows(50).len(), 2);
        // Alt chords are not text.
        on_key(&mut app, key('/'));
        on_key(
            &mut app,
            KeyEvent::new(KeyCode::Char('1'), KeyModifiers::ALT),
        );
        assert_eq!(app.filter, "ROGUE");
        on_key(&mut app, code(KeyCode::Enter));
        on_key(&mut app, code(KeyCode::Esc));
        assert_eq!(app.filter, "");
        assert_eq!(app.live_rows(50).len(), 5);
    }

    #[test]
    fn pause_freezes_live_and_follow_resumes() {
        let mut app = sample(false);
        on_key(&mut app, key('2'));
        on_key(&mut app, key(' '));
        app.push_event(event(
            6,
            "allow",
            "support-agent",
            "lookup_account",
            "later",
        ));
        assert_eq!(app.live_rows(50).last().map(|e| e.seq), Some(5));
        assert_eq!(app.live_new_since_pause(), 1);
        on_key(&mut app, key('k'));
        assert_eq!(app.live_rows(50).last().map(|e| e.seq), Some(4));
        on_key(&mut app, key(' '));
        assert_eq!(app.live_rows(50).last().map(|e| e.seq), Some(6));
        assert_eq!(
            app.live_rows(2).iter().map(|e| e.seq).collect::<Vec<_>>(),
            [5, 6]
        );
    }

    #[test]
    fn denials_are_counted_per_agent_and_duplicates_dropped() {
        let mut app = sample(false);
        app.push_event(event(5, "deny", "rogue-agent", "change_plan", "again"));
        assert_eq!(app.denials_total, 2);
        assert_eq!(app.denials_by_agent.get("rogue-agent"), Some(&2));
        assert_eq!(app.events.len(), 5);
    }

    /// An alert as the approval service publishes it.
    pub fn alert(seq: u64, agent: &str, summary: &str) -> Event {
        let mut ev = event(seq, "alert", agent, "", summary);
        ev.kind = "alert".into();
        ev.rules = vec!["denial-spike".into()];
        ev
    }

    #[test]
    fn alerts_join_the_denials_without_counting_as_denials() {
        let mut app = sample(false);
        app.push_event(alert(
            6,
            "rogue-agent",
            "high denial-spike: agent rogue-agent had 10 denials within 1m",
        ));
        assert_eq!(app.alerts_total, 1);
        assert_eq!(app.denials_total, 2);
        assert_eq!(app.denials_by_agent.get("rogue-agent"), Some(&2));
        assert_eq!(app.denial_rows(10).first().map(|e| e.seq), Some(6));
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.error && t.text.starts_with("alert: high denial-spike"))
        );
    }

    #[test]
    fn refresh_keeps_the_selection_or_its_position() {
        let mut app = sample(false);
        on_key(&mut app, key('j'));
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
        let mut list = app.pending.clone();
        list.push(request("req-c3", "issue_refund", 9_900, 1, 900));
        app.set_pending(list);
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
        // The selected one is decided elsewhere: the cursor stays in place.
        app.set_pending(vec![
            request("req-a1", "issue_refund", 20_000, 120, 245),
            request("req-c3", "issue_refund", 9_900, 1, 900),
        ]);
        assert_eq!(app.selected.as_deref(), Some("req-c3"));
        app.set_pending(vec![]);
        assert_eq!(app.selected, None);
    }

    #[test]
    fn decision_results_become_toasts() {
        let mut app = sample(false);
        app.inflight.push("req-a1".into());
        let mut done = request("req-a1", "issue_refund", 20_000, 120, 245);
        done.status = "approved".into();
        app.decided("req-a1", true, Ok(done));
        assert!(app.inflight.is_empty());
        assert_eq!(app.pending.len(), 1);
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
        assert_eq!(
            app.toast.as_ref().map(|t| t.text.as_str()),
            Some("req-a1 approved")
        );

        app.decided(
            "req-b2",
            false,
            Err("not allowed: you cannot decide a request made on your own behalf".into()),
        );
        let t = app.toast.clone().expect("toast");
        assert!(t.error);
        assert!(t.text.contains("own behalf"), "{}", t.text);

        let mut partial = request("req-b2", "change_plan", 0, 10, 600);
        partial.votes.push(Vote {
            operator: "alice".into(),
            decision: "approve".into(),
            reason: "ok".into(),
            at_ms: NOW,
        });
        partial.approvals_required = 2;
        partial.approvers.push("alice".into());
        app.decided("req-b2", true, Ok(partial));
        assert_eq!(app.pending[0].votes.len(), 1);
        assert_eq!(
            app.toast.as_ref().map(|t| t.text.as_str()),
            Some("req-b2: vote recorded, approvals 1 of 2 (alice); still pending")
        );
        app.tick(NOW + TOAST_MS + 1);
        assert_eq!(app.toast, None);
    }

    #[test]
    fn new_requests_ring_the_bell() {
        let mut app = sample(false);
        let mut ev = event(
            9,
            "escalate",
            "support-agent",
            "issue_refund",
            "refund $200.00",
        );
        ev.kind = "request_pending".into();
        ev.request_id = "req-z9".into();
        app.push_event(ev);
        assert!(app.bell);
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.text.contains("req-z9"))
        );
    }

    fn run_command(app: &mut App, line: &str) -> Option<Action> {
        assert_eq!(on_key(app, key(':')), None);
        assert_eq!(app.mode, Mode::Command(String::new()));
        typed(app, line);
        on_key(app, code(KeyCode::Enter))
    }

    #[test]
    fn command_mode_switches_views_and_quits() {
        let mut app = sample(false);
        assert_eq!(run_command(&mut app, "live"), None);
        assert_eq!((app.view, &app.mode), (View::Live, &Mode::Normal));
        run_command(&mut app, "denials");
        assert_eq!(app.view, View::Denials);
        run_command(&mut app, "alerts");
        assert_eq!(app.view, View::Alerts);
        run_command(&mut app, "pending");
        assert_eq!(app.view, View::Pending);
        run_command(&mut app, "help");
        assert_eq!(app.mode, Mode::Help);
        on_key(&mut app, code(KeyCode::Esc));
        assert_eq!(run_command(&mut app, "q"), Some(Action::Quit));
        assert_eq!(run_command(&mut app, "quit"), Some(Action::Quit));
    }

    #[test]
    fn command_mode_keys_are_text_and_esc_leaves() {
        let mut app = sample(false);
        on_key(&mut app, key(':'));
        // 'q', digits and '?' are text here, not quit / views / help.
        assert_eq!(typed(&mut app, "q2?"), None);
        assert_eq!(app.mode, Mode::Command("q2?".into()));
        on_key(&mut app, code(KeyCode::Backspace));
        assert_eq!(app.mode, Mode::Command("q2".into()));
        assert_eq!(on_key(&mut app, code(KeyCode::Esc)), None);
        assert_eq!((app.view, &app.mode), (View::Pending, &Mode::Normal));
        // Backspace on an empty line leaves too (as in vim).
        on_key(&mut app, key(':'));
        on_key(&mut app, code(KeyCode::Backspace));
        assert_eq!(app.mode, Mode::Normal);
        // Tab completes.
        on_key(&mut app, key(':'));
        typed(&mut app, "de");
        on_key(&mut app, code(KeyCode::Tab));
        assert_eq!(app.mode, Mode::Command("denials".into()));
        on_key(&mut app, code(KeyCode::Enter));
        assert_eq!(app.view, View::Denials);
    }

    #[test]
    fn unknown_commands_and_bad_filters_become_error_toasts() {
        let mut app = sample(false);
        assert_eq!(run_command(&mut app, "pods"), None);
        let t = app.toast.clone().expect("toast");
        assert!(t.error && t.text.contains("unknown command :pods"), "{t:?}");
        assert_eq!((app.view, &app.mode), (View::Pending, &Mode::Normal));
        app.audit.data_dir = Some("/data".into());
        assert_eq!(run_command(&mut app, "audit colour=red"), None);
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.error && t.text.contains("unknown filter key"))
        );
    }

    #[test]
    fn audit_command_queries_with_its_filter() {
        let mut app = sample(false);
        // No data directory: nothing to read, and it says so.
        assert_eq!(run_command(&mut app, "audit tool=issue_refund"), None);
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.text.contains("--data-dir"))
        );

        app.audit.data_dir = Some("/data".into());
        let action = run_command(&mut app, "audit session=x tool=y");
        let Some(Action::AuditQuery(q)) = action else {
            panic!("no query: {action:?}");
        };
        assert_eq!(app.view, View::Audit);
        assert_eq!(q.filter.to_string(), "session=x tool=y");
        assert_eq!(q.db, std::path::PathBuf::from("/data/audit.db"));
        assert_eq!(q.page, Page::Newest);
        assert!(app.audit.loading);
        // '/' in the Audit view edits the same filter on the command line.
        on_key(&mut app, key('/'));
        assert_eq!(app.mode, Mode::Command("audit session=x tool=y ".into()));
        on_key(&mut app, code(KeyCode::Esc));
        // 'r' reruns it; 'v' verifies, once at a time.
        assert!(matches!(
            on_key(&mut app, key('r')),
            Some(Action::AuditQuery(_))
        ));
        assert_eq!(
            on_key(&mut app, key('v')),
            Some(Action::Verify("/data".into()))
        );
        assert_eq!(on_key(&mut app, key('v')), None);
    }

    #[test]
    fn the_audit_view_queries_when_first_shown() {
        let mut app = sample(false);
        app.audit.data_dir = Some("/data".into());
        assert!(matches!(
            on_key(&mut app, key('5')),
            Some(Action::AuditQuery(_))
        ));
        on_key(&mut app, key('1'));
        assert_eq!(on_key(&mut app, key('5')), None, "not again on every visit");
    }

    #[test]
    fn audit_rows_open_in_the_detail_and_esc_goes_back() {
        let mut app = sample(false);
        app.audit.data_dir = Some("/data".into());
        let Some(Action::AuditQuery(q)) = on_key(&mut app, key('5')) else {
            panic!("no query");
        };
        let mut c = crate::tui::audit_view::Collector::new(q.page, 10);
        for seq in 1..=3u64 {
            c.push(serde_json::json!({"chain": "broker", "seq": seq, "kind": "decision"}));
        }
        app.audit_answered(q.id, Ok(c.finish(3, 0)));
        assert_eq!(app.audit.selected_row().map(|r| r.seq), Some(3));
        on_key(&mut app, key('j'));
        assert_eq!(app.audit.selected_row().map(|r| r.seq), Some(2));
        on_key(&mut app, key('G'));
        assert_eq!(app.audit.selected_row().map(|r| r.seq), Some(1));
        on_key(&mut app, code(KeyCode::Enter));
        assert!(app.audit.detail);
        on_key(&mut app, key('j'));
        assert_eq!(app.audit.detail_scroll, 1);
        on_key(&mut app, code(KeyCode::Esc));
        assert!(!app.audit.detail);
        assert_eq!(app.audit.selected, 2);
        // One page only: '[' and ']' say so.
        on_key(&mut app, key('['));
        assert!(
            app.toast
                .as_ref()
                .is_some_and(|t| t.text.contains("oldest page"))
        );
    }

    #[test]
    fn the_event_ring_holds_100_000_and_drops_the_oldest() {
        let mut app = App::new("http://x", false, None, NOW);
        let n = EVENT_CAP as u64 + 5;
        for seq in 1..=n {
            app.push_event(event(seq, "allow", "a", "t", ""));
        }
        assert_eq!(app.events.len(), 100_000);
        assert_eq!(app.events.dropped(), 5);
        assert_eq!(app.events_total, n);
        assert_eq!(app.events.iter().next().map(|e| e.seq), Some(6));
        assert_eq!(app.events.newest().map(|e| e.seq), Some(n));
    }

    #[test]
    fn alerts_are_listed_newest_first_and_parsed() {
        let mut app = sample(false);
        app.push_event(alert(
            6,
            "agent:rogue",
            "high denial-spike: agent agent:rogue had 10 denials within 1m",
        ));
        let mut second = alert(
            7,
            "",
            "medium near-cap-refunds: human bob had 3 refunds within 10% under the refund limit within 1h",
        );
        second.rules = vec!["near-cap-refunds".into()];
        app.push_event(second);
        assert_eq!(app.alerts.len(), 2);
        let info = alert_info(app.selected_alert().expect("an alert"));
        assert_eq!(
            info,
            AlertInfo {
                severity: "medium".into(),
                rule: "near-cap-refunds".into(),
                by: "human".into(),
                subject: "bob".into(),
                count: Some(3),
            }
        );
        on_key(&mut app, key('4'));
        on_key(&mut app, key('j'));
        assert_eq!(app.selected_alert().map(|e| e.seq), Some(6));
        // A new alert keeps the selection on the same alert.
        app.push_event(alert(
            8,
            "agent:x",
            "low escalation-flood: agent agent:x had 5 escalations within 5m",
        ));
        assert_eq!(app.selected_alert().map(|e| e.seq), Some(6));
        // Enter shows the subject's events in the Live view.
        on_key(&mut app, code(KeyCode::Enter));
        assert_eq!((app.view, app.filter.as_str()), (View::Live, "agent:rogue"));
    }

    #[test]
    fn odd_alert_summaries_do_not_panic() {
        for summary in [
            "",
            ":",
            "high",
            "high x: agent",
            "  : had had had",
            "ü: ü ü had ü",
        ] {
            let mut ev = alert(1, "", summary);
            ev.rules.clear();
            let info = alert_info(&ev);
            assert!(
                !info.rule.is_empty() && !info.subject.is_empty(),
                "{summary:?}"
            );
        }
    }

    #[test]
    fn the_denial_rate_counts_per_ten_seconds() {
        let mut app = App::new("http://x", false, None, NOW);
        let mut seq = 0;
        let mut deny = |app: &mut App, agent: &str, ago_ms: i64| {
            seq += 1;
            let mut e = event(seq, "deny", agent, "t", "");
            e.time_ms = NOW - ago_ms;
            app.push_event(e);
        };
        deny(&mut app, "a", 1_000); // last bucket
        deny(&mut app, "a", 9_000); // last bucket
        deny(&mut app, "a", 15_000); // the one before
        deny(&mut app, "a", 400_000); // too old
        deny(&mut app, "b", 1_000);
        deny(&mut app, "b", 2_000);
        deny(&mut app, "b", 3_000);
        deny(&mut app, "b", 4_000);
        deny(&mut app, "b", 5_000);
        let rate = app.denial_rate("a");
        assert_eq!(rate.len(), SPARK_BUCKETS);
        assert_eq!(rate[SPARK_BUCKETS - 1], 2);
        assert_eq!(rate[SPARK_BUCKETS - 2], 1);
        assert_eq!(rate.iter().sum::<u64>(), 3);
        // The top agent by default; [ and ] cycle.
        assert_eq!(app.spark_agent(), Some("b"));
        on_key(&mut app, key('3'));
        on_key(&mut app, key(']'));
        assert_eq!(app.spark_agent(), Some("a"));
        on_key(&mut app, key(']'));
        assert_eq!(app.spark_agent(), Some("b"));
        on_key(&mut app, key('['));
        assert_eq!(app.spark_agent(), Some("a"));
    }

    fn click(app: &mut App, col: u16, row: u16) -> Option<Action> {
        on_mouse(
            app,
            MouseEvent {
                kind: MouseEventKind::Down(MouseButton::Left),
                column: col,
                row,
                modifiers: KeyModifiers::NONE,
            },
        )
    }

    #[test]
    fn clicking_a_row_selects_it_and_a_tab_shows_it() {
        let mut app = sample(false);
        app.area = Rect::new(0, 0, 140, 40);
        // Body starts at row 2; border, header, then the rows.
        assert_eq!(app.selected.as_deref(), Some("req-a1"));
        click(&mut app, 5, 5);
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
        click(&mut app, 5, 4);
        assert_eq!(app.selected.as_deref(), Some("req-a1"));
        // Below the last row, on the border, outside: nothing happens.
        click(&mut app, 5, 6);
        click(&mut app, 0, 4);
        click(&mut app, 500, 500);
        assert_eq!(app.selected.as_deref(), Some("req-a1"));
        // The tab bar: " 1 Pending (2)  2 Live  3 Denials (2) ..."
        click(&mut app, 18, 1);
        assert_eq!(app.view, View::Live);
        // The wheel scrolls like j/k.
        on_key(&mut app, key('1'));
        on_mouse(
            &mut app,
            MouseEvent {
                kind: MouseEventKind::ScrollDown,
                column: 5,
                row: 5,
                modifiers: KeyModifiers::NONE,
            },
        );
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
        // Clicks do nothing while a prompt is open.
        on_key(&mut app, key('a'));
        click(&mut app, 5, 4);
        assert_eq!(app.selected.as_deref(), Some("req-b2"));
    }

    #[test]
    fn clicking_a_denial_charts_its_agent() {
        let mut app = sample(false);
        app.area = Rect::new(0, 0, 140, 30);
        app.push_event(event(6, "deny", "other-agent", "t", "x"));
        on_key(&mut app, key('3'));
        assert_eq!(app.spark_agent(), Some("rogue-agent"));
        // Newest first: the first row is other-agent's denial.
        click(&mut app, 20, 4);
        assert_eq!(app.spark_agent(), Some("other-agent"));
        // The per-agent table on the right: rows sorted by count.
        click(&mut app, 115, 4);
        assert_eq!(app.spark_agent(), Some("rogue-agent"));
    }

    #[test]
    fn alerts_queue_a_desktop_notice() {
        let mut app = sample(false);
        let mut ev = event(
            9,
            "alert",
            "",
            "lookup_ticket",
            "high upstream-drift: upstream tickets: tool lookup_ticket quarantined: description changed",
        );
        ev.kind = "alert".into();
        app.push_event(ev);
        assert_eq!(app.notices.len(), 1, "{:?}", app.notices);
        assert_eq!(app.notices[0].title, "Alert");
        assert!(app.notices[0].body.contains("lookup_ticket quarantined"));
    }

    #[test]
    fn new_requests_queue_a_desktop_notice() {
        let mut app = sample(false);
        let mut ev = event(
            9,
            "escalate",
            "support-agent",
            "issue_refund",
            "refund $200.00",
        );
        ev.kind = "request_pending".into();
        ev.request_id = "req-z9".into();
        app.push_event(ev);
        assert_eq!(
            app.notices,
            [Notice {
                title: "Approval needed".into(),
                body: "refund $200.00 (req-z9)".into()
            }]
        );
    }
}
