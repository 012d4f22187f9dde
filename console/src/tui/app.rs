//! The console's state and its key handling. No IO and no terminal here:
//! network results arrive as method calls ([`App::push_event`],
//! [`App::set_pending`], ...), keys go through [`on_key`], and whatever needs
//! the network leaves as an [`Action`] for the event loop to run.

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use zt_proto::pb::{ApprovalRequest, Event, Operator};

use super::theme::Theme;
use crate::client::{approvals, dollars};

/// Events kept in memory for the Live view (a ring: the oldest go first).
pub const EVENT_CAP: usize = 20_000;
/// Denial and alert events kept for the Denials view.
pub const DENIAL_CAP: usize = 5_000;
/// How long a toast stays on the status line.
pub const TOAST_MS: i64 = 6_000;
/// Rows moved by PageUp / PageDown.
const PAGE: usize = 10;

/// The console's views, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Pending,
    Live,
    Denials,
}

impl View {
    pub const ALL: [View; 3] = [View::Pending, View::Live, View::Denials];

    pub fn title(self) -> &'static str {
        match self {
            View::Pending => "Pending",
            View::Live => "Live",
            View::Denials => "Denials",
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
}

/// A one-line message on the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toast {
    pub text: String,
    pub error: bool,
    pub until_ms: i64,
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
    pub events: VecDeque<Event>,
    pub events_total: u64,
    pub last_seq: u64,
    pub live: LiveState,
    /// Denial and alert events, oldest first.
    pub denials: VecDeque<Event>,
    pub denials_total: u64,
    /// Alerts raised by the approval service's detection rules.
    pub alerts_total: u64,
    pub denials_by_agent: BTreeMap<String, u64>,
    pub denial_scroll: usize,
    /// Substring filter of the Live and Denials views (case-insensitive).
    pub filter: String,
    pub toast: Option<Toast>,
    /// Ring the terminal bell at the next draw (a new request arrived).
    pub bell: bool,
}

impl App {
    pub fn new(url: &str, readonly: bool, banner: Option<String>, now_ms: i64) -> App {
        App {
            theme: Theme { color: true },
            readonly,
            banner,
            url: url.to_owned(),
            now_ms,
            operator: None,
            conn: Conn::Connecting,
            view: View::Pending,
            mode: Mode::Normal,
            pending: Vec::new(),
            pending_error: None,
            selected: None,
            inflight: Vec::new(),
            events: VecDeque::new(),
            events_total: 0,
            last_seq: 0,
            live: LiveState::default(),
            denials: VecDeque::new(),
            denials_total: 0,
            alerts_total: 0,
            denials_by_agent: BTreeMap::new(),
            denial_scroll: 0,
            filter: String::new(),
            toast: None,
            bell: false,
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
        }
        if alert || is_denial(&ev.decision) {
            if !alert {
                self.denials_total += 1;
                *self
                    .denials_by_agent
                    .entry(agent_of(&ev).to_owned())
                    .or_default() += 1;
            }
            if self.denials.len() == DENIAL_CAP {
                self.denials.pop_front();
            }
            self.denials.push_back(ev.clone());
            if self.denial_scroll > 0 {
                self.denial_scroll += 1;
            }
        }
        match ev.kind.as_str() {
            "request_pending" => {
                self.toast(
                    format!(
                        "new request {}: {}",
                        ev.request_id,
                        one_line(&ev.summary, &ev.tool)
                    ),
                    false,
                );
                self.bell = true;
            }
            "alert" => self.toast(format!("alert: {}", one_line(&ev.summary, &ev.tool)), true),
            _ => {}
        }
        if self.events.len() == EVENT_CAP {
            self.events.pop_front();
        }
        self.events.push_back(ev);
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
        let mut rows: Vec<&Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.seq <= upto && self.matches(e))
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
        self.denials
            .iter()
            .rev()
            .filter(|e| self.matches(e))
            .skip(self.denial_scroll)
            .take(height)
            .collect()
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
        let max = self
            .events
            .iter()
            .filter(|e| e.seq <= upto && self.matches(e))
            .count()
            .saturating_sub(1);
        self.live.scroll = self.live.scroll.min(max);
    }

    fn scroll_denials(&mut self, down: isize) {
        let max = self
            .denials
            .iter()
            .filter(|e| self.matches(e))
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
}

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
                }
            }
            if !app.filter.is_empty() && app.view != View::Pending {
                v.push(cmd("esc", "clear filter", false));
            }
            v.push(cmd("1-3 tab", "views", true));
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
        KeyCode::Tab => app.view = app.view.next(),
        KeyCode::BackTab => app.view = app.view.prev(),
        KeyCode::Char(c @ '1'..='3') => app.view = View::ALL[(c as u8 - b'1') as usize],
        KeyCode::Esc if !app.filter.is_empty() && app.view != View::Pending => {
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
                _ => {}
            },
        },
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

fn event_matches(ev: &Event, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let needle = filter.to_lowercase();
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
    .any(|f| f.to_lowercase().contains(&needle))
        || ev.rules.iter().any(|r| r.to_lowercase().contains(&needle))
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
        assert_eq!(app.view, View::Pending);
        on_key(&mut app, code(KeyCode::BackTab));
        assert_eq!(app.view, View::Denials);
        on_key(&mut app, key('1'));
        assert_eq!(app.view, View::Pending);
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
}
