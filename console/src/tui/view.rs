//! Drawing. Everything here reads the [`App`] and writes a frame; nothing
//! mutates state, so any state can be rendered into a `TestBackend`. The
//! layout functions are shared with [`hit`], which maps a mouse click to
//! what was drawn there.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Cell, Clear, HighlightSpacing, LineGauge, Paragraph, Row, Sparkline, Table, TableState,
    Wrap,
};
use serde_json::Value;
use zt_proto::pb::{ApprovalRequest, Event};

use super::app::{
    self, App, COMMAND_HELP, Conn, Mode, SPARK_BUCKET_MS, SPARK_BUCKETS, View, agent_of,
    alert_info, amount, commands, is_alert, request_agent,
};
use super::audit_view::{AuditRow, Page, Verify};
use super::theme::Theme;
use crate::audit_query::format_time;
use crate::client::{approvals, dollars};

/// The screen's rows: status bar, tabs, the view, the status line, keys.
#[derive(Debug, Clone, Copy)]
pub struct Areas {
    pub status: Rect,
    pub tabs: Rect,
    pub body: Rect,
    pub line: Rect,
    pub keys: Rect,
}

pub fn areas(area: Rect) -> Areas {
    let [status, tabs, body, line, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    Areas {
        status,
        tabs,
        body,
        line,
        keys,
    }
}

/// Draws the whole console.
pub fn draw(frame: &mut Frame, app: &App) {
    let theme = app.theme;
    let a = areas(frame.area());

    frame.render_widget(status_bar(app, theme), a.status);
    frame.render_widget(tab_bar(app, theme), a.tabs);
    match app.view {
        View::Pending => draw_pending(frame, a.body, app, theme),
        View::Live => draw_live(frame, a.body, app, theme),
        View::Denials => draw_denials(frame, a.body, app, theme),
        View::Alerts => draw_alerts(frame, a.body, app, theme),
        View::Audit => draw_audit(frame, a.body, app, theme),
    }
    draw_status_line(frame, a.line, app, theme);
    frame.render_widget(key_bar(app, theme), a.keys);

    match &app.mode {
        Mode::Help => draw_help(frame, app, theme),
        Mode::Prompt(p) => draw_prompt(frame, app, p, theme),
        Mode::Normal | Mode::Filter | Mode::Command(_) => {}
    }
}

/// What a mouse click at (`col`, `row`) lands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    /// A tab of the tab bar.
    Tab(View),
    /// A row of the current view's list (0: the first row of the list as
    /// drawn, counting rows scrolled out of sight).
    Row(usize),
    /// An agent in the Denials view's per-agent table.
    Agent(String),
}

/// Maps a click to what [`draw`] put there, for the last drawn size
/// (`app.area`).
pub fn hit(app: &App, col: u16, row: u16) -> Option<Hit> {
    let a = areas(app.area);
    let pos = Position::new(col, row);
    if a.tabs.contains(pos) {
        let mut x = a.tabs.x;
        for (view, label) in tab_labels(app) {
            let w = label.chars().count() as u16;
            if col >= x && col < x.saturating_add(w) {
                return Some(Hit::Tab(view));
            }
            x = x.saturating_add(w + 1);
        }
        return None;
    }
    if !a.body.contains(pos) {
        return None;
    }
    match app.view {
        View::Pending => {
            let (list, _) = pending_areas(a.body, app);
            let sel = app.selected_index().unwrap_or(0);
            table_row(list, sel, pos).map(Hit::Row)
        }
        View::Alerts => table_row(a.body, app.alert_selected, pos).map(Hit::Row),
        View::Audit if !app.audit.detail => {
            let [_, _, table, _] = audit_areas(a.body);
            table_row(table, app.audit.selected, pos).map(Hit::Row)
        }
        View::Denials => {
            let [list, agents, _] = denials_areas(a.body);
            if list.contains(pos) {
                table_row(list, 0, pos).map(Hit::Row)
            } else if agents.contains(pos) {
                let i = table_row(agents, 0, pos)?;
                app.agents_by_denials()
                    .get(i)
                    .map(|(a, _)| Hit::Agent((*a).to_owned()))
            } else {
                None
            }
        }
        View::Live | View::Audit => None,
    }
}

/// Rows of a bordered table with a header that fit in `area`.
fn visible_rows(area: Rect) -> usize {
    area.height.saturating_sub(3) as usize
}

/// The first row drawn so that `selected` is visible (the same offset the
/// click mapping uses).
pub fn table_offset(selected: usize, visible: usize) -> usize {
    if visible == 0 {
        0
    } else {
        selected.saturating_sub(visible - 1)
    }
}

/// The list row under `pos` in a bordered table with a header in `area`.
fn table_row(area: Rect, selected: usize, pos: Position) -> Option<usize> {
    let first_y = area.y.saturating_add(2);
    let visible = visible_rows(area);
    if pos.x <= area.x || pos.x.saturating_add(1) >= area.right() || pos.y < first_y {
        return None;
    }
    let i = (pos.y - first_y) as usize;
    (i < visible).then(|| table_offset(selected, visible) + i)
}

fn status_bar(app: &App, theme: Theme) -> Paragraph<'static> {
    let mut spans = vec![Span::styled(" zt-console ", theme.selected())];
    let sep = || Span::styled(" │ ", theme.dim());
    spans.push(Span::raw(" "));
    match &app.operator {
        Some(op) => {
            spans.push(Span::styled(
                op.name.clone(),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            let limit = if op.role == "approver" {
                format!(", limit {}", dollars(op.limit_cents))
            } else {
                String::new()
            };
            spans.push(Span::raw(format!(" ({}{limit})", op.role)));
        }
        None => spans.push(Span::styled("identifying…", theme.dim())),
    }
    if app.readonly {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled("read-only", theme.warn()));
    }
    spans.push(sep());
    spans.push(Span::raw(format!("pending {} · ", app.pending.len())));
    let alerts = format!("alerts {}", app.alerts_total);
    spans.push(if app.alerts_total > 0 {
        Span::styled(alerts, theme.alert())
    } else {
        Span::raw(alerts)
    });
    spans.push(Span::raw(format!(" · events {} held", app.events.len())));
    if app.events.dropped() > 0 {
        spans.push(Span::styled(
            format!(" ({} older dropped)", app.events.dropped()),
            theme.dim(),
        ));
    }
    spans.push(sep());
    spans.push(conn_span(app, theme));
    if let Some(b) = &app.banner {
        spans.push(sep());
        spans.push(Span::raw(b.clone()));
    }
    Paragraph::new(Line::from(spans))
}

fn conn_span(app: &App, theme: Theme) -> Span<'static> {
    match &app.conn {
        Conn::Connecting => Span::styled(format!("◌ connecting to {}", app.url), theme.warn()),
        // The URL only matters while it cannot be reached; keep the bar short.
        Conn::Live => Span::styled("● connected", theme.ok()),
        Conn::Down {
            attempt,
            retry_at_ms,
            ..
        } => {
            let secs = ((retry_at_ms - app.now_ms).max(0) + 999) / 1000;
            // The error itself is on the status line; keep the bar short.
            Span::styled(
                format!("✕ reconnecting in {secs}s (attempt {attempt})"),
                theme.error(),
            )
        }
    }
}

/// The tab bar's labels, in order (the click mapping measures them too).
fn tab_labels(app: &App) -> Vec<(View, String)> {
    View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let count = match v {
                View::Pending => format!(" ({})", app.pending.len()),
                View::Live | View::Audit => String::new(),
                View::Denials => format!(" ({})", app.denials_total),
                View::Alerts => format!(" ({})", app.alerts_total),
            };
            (*v, format!(" {} {}{count} ", i + 1, v.title()))
        })
        .collect()
}

fn tab_bar(app: &App, theme: Theme) -> Paragraph<'static> {
    let mut spans = Vec::new();
    for (v, text) in tab_labels(app) {
        let style = if v == app.view {
            theme.selected()
        } else if v == View::Alerts && app.alerts_total > 0 {
            theme.warn()
        } else {
            Style::new()
        };
        spans.push(Span::styled(text, style));
        spans.push(Span::raw(" "));
    }
    Paragraph::new(Line::from(spans))
}

fn key_bar(app: &App, theme: Theme) -> Paragraph<'static> {
    let mut spans = Vec::new();
    for c in commands(app).into_iter().filter(|c| c.bar) {
        spans.push(Span::styled(format!(" {}", c.keys), theme.key()));
        spans.push(Span::raw(format!(" {} ", c.desc)));
    }
    Paragraph::new(Line::from(spans))
}

fn draw_status_line(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let line = if let Mode::Command(input) = &app.mode {
        Line::from(vec![
            Span::styled(":", theme.key()),
            Span::raw(input.clone()),
            Span::styled("█", theme.dim()),
        ])
    } else if app.mode == Mode::Filter {
        Line::from(vec![
            Span::styled("/", theme.key()),
            Span::raw(app.filter.clone()),
            Span::styled("█", theme.dim()),
        ])
    } else if let Some(t) = &app.toast {
        let style = if t.error { theme.error() } else { theme.ok() };
        Line::from(Span::styled(format!(" {}", t.text), style))
    } else if let Conn::Down { error, .. } = &app.conn {
        Line::from(Span::styled(
            format!(" event stream: {error}"),
            theme.error(),
        ))
    } else if let Some(e) = app
        .pending_error
        .as_ref()
        .filter(|_| app.view == View::Pending)
    {
        Line::from(Span::styled(
            format!(" could not refresh the queue: {e}"),
            theme.error(),
        ))
    } else if !app.filter.is_empty() && matches!(app.view, View::Live | View::Denials) {
        Line::from(vec![
            Span::styled(" filter: ", theme.dim()),
            Span::raw(app.filter.clone()),
        ])
    } else {
        Line::default()
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// "4m05s", "59s", "1h02m"; "expired" at or after the deadline.
pub fn countdown(ms_left: i64) -> String {
    if ms_left <= 0 {
        return "expired".into();
    }
    let s = ms_left.saturating_add(999) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// "HH:MM:SS" (UTC) of a Unix time in ms.
pub fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

fn ago(ms: i64) -> String {
    if ms < 0 {
        return "just now".into();
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// The Pending view's queue and detail pane: side by side when wide enough.
fn pending_areas(area: Rect, app: &App) -> (Rect, Rect) {
    if area.width >= 120 {
        let [l, d] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .areas(area);
        (l, d)
    } else {
        let rows = (app.pending.len() as u16 + 3).max(5).min(area.height / 2);
        let [l, d] = Layout::vertical([Constraint::Length(rows), Constraint::Min(3)]).areas(area);
        (l, d)
    }
}

fn draw_pending(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let (list, detail) = pending_areas(area, app);

    let header = Row::new(["ID", "TOOL", "AMOUNT", "HUMAN", "AGENT", "APPR", "EXPIRES"])
        .style(theme.header());
    let rows = app.pending.iter().map(|r| {
        let left = r.expires_at_ms.saturating_sub(app.now_ms);
        let exp_style = if left < 60_000 {
            theme.error()
        } else {
            Style::new()
        };
        let mut id = short_id(&r.id);
        if app.inflight.contains(&r.id) {
            id.push_str(" …");
        }
        Row::new(vec![
            Cell::from(id),
            Cell::from(r.tool.clone()),
            Cell::from(amount(r.amount_cents)),
            Cell::from(r.human.clone()),
            Cell::from(request_agent(r).to_owned()),
            Cell::from(format!(
                "{}/{}",
                r.approvers.len(),
                r.approvals_required.max(1)
            )),
            Cell::from(Span::styled(countdown(left), exp_style)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(15),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(4),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected())
    .highlight_symbol("▶ ")
    .highlight_spacing(HighlightSpacing::Always)
    .block(Block::bordered().title(format!(" Pending ({}) — oldest first ", app.pending.len())));
    let selected = app.selected_index();
    let mut state = TableState::default()
        .with_selected(selected)
        .with_offset(table_offset(selected.unwrap_or(0), visible_rows(list)));
    frame.render_stateful_widget(table, list, &mut state);

    let block = Block::bordered().title(" Request ");
    let text = match app.selected_request() {
        Some(req) => request_detail(app, req, theme),
        None => Text::from(Line::styled(
            "No pending requests. New escalations appear here as they arrive.",
            theme.dim(),
        )),
    };
    frame.render_widget(
        Paragraph::new(text).block(block).wrap(Wrap { trim: false }),
        detail,
    );
}

/// Ids are long ("req_" and 32 hex digits); the table shows a prefix, the
/// detail pane the whole id.
pub fn short_id(id: &str) -> String {
    if id.chars().count() <= 15 {
        id.to_owned()
    } else {
        let mut s: String = id.chars().take(14).collect();
        s.push('…');
        s
    }
}

fn field(name: &str, value: impl Into<String>, theme: Theme) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<14}"), theme.label()),
        Span::raw(value.into()),
    ])
}

fn request_detail(app: &App, req: &ApprovalRequest, theme: Theme) -> Text<'static> {
    let mut lines = vec![Line::from(vec![
        Span::styled(req.id.clone(), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw("  "),
        Span::styled(req.tool.clone(), theme.decision("escalate")),
        Span::raw(format!("  {}", req.status)),
        Span::raw(if req.risk.is_empty() {
            String::new()
        } else {
            format!("  risk {}", req.risk)
        }),
    ])];

    let mut amount_spans = vec![
        Span::styled(format!("{:<14}", "Amount"), theme.label()),
        Span::styled(
            amount(req.amount_cents),
            Style::new().add_modifier(Modifier::BOLD),
        ),
    ];
    if let Some(op) = &app.operator {
        let (text, style) = match op.role.as_str() {
            "approver" if req.amount_cents > op.limit_cents => (
                format!("  exceeds your approval limit {}", dollars(op.limit_cents)),
                theme.error(),
            ),
            "approver" => (
                format!("  within your approval limit {}", dollars(op.limit_cents)),
                theme.ok(),
            ),
            "admin" => ("  (admin: no approval limit)".to_owned(), theme.dim()),
            role => (format!("  (role {role} may not decide)"), theme.warn()),
        };
        amount_spans.push(Span::styled(text, style));
    }
    lines.push(Line::from(amount_spans));

    let left = req.expires_at_ms.saturating_sub(app.now_ms);
    lines.push(field(
        "Expires in",
        format!(
            "{}  (created {})",
            countdown(left),
            ago(app.now_ms.saturating_sub(req.created_at_ms))
        ),
        theme,
    ));
    lines.push(field("Human", req.human.clone(), theme));
    lines.push(field("Agent", request_agent(req).to_owned(), theme));
    let mut chain: Vec<&str> = req.actors.iter().map(String::as_str).collect();
    chain.push(&req.human);
    lines.push(field("Behalf-of", chain.join(" → "), theme));
    if let Some(op) = &app.operator
        && (op.name == req.human || req.actors.iter().any(|a| a == &op.name))
    {
        lines.push(Line::styled(
            "⚠ made on your own behalf: you cannot decide it",
            theme.error(),
        ));
    }
    lines.push(field("Session", req.session_id.clone(), theme));
    lines.push(field(
        "Rules",
        if req.rules.is_empty() {
            "—".into()
        } else {
            req.rules.join(", ")
        },
        theme,
    ));
    lines.push(field("Reason", req.reason.clone(), theme));
    if !req.justification.is_empty() {
        lines.push(field(
            "Justification",
            format!("“{}”", req.justification),
            theme,
        ));
    }
    let mut tally = vec![
        Span::styled(format!("{:<14}", "Approvals"), theme.label()),
        Span::styled(approvals(req), Style::new().add_modifier(Modifier::BOLD)),
    ];
    if req.approve_reason_required {
        tally.push(Span::styled("  approving needs a reason", theme.dim()));
    }
    if let Some(op) = &app.operator
        && req.votes.iter().any(|v| v.operator == op.name)
    {
        tally.push(Span::styled("  you voted", theme.dim()));
    }
    lines.push(Line::from(tally));
    if req.votes.is_empty() {
        lines.push(field("Votes", "none yet", theme));
    } else {
        for (i, v) in req.votes.iter().enumerate() {
            let name = if i == 0 { "Votes" } else { "" };
            let line = field(
                name,
                format!(
                    "{} {} at {}: {}",
                    v.operator,
                    v.decision,
                    clock(v.at_ms),
                    v.reason
                ),
                theme,
            );
            lines.push(line.style(theme.decision(if v.decision == "approve" {
                "approved"
            } else {
                "denied"
            })));
        }
    }
    lines.push(Line::default());
    lines.push(Line::styled("Arguments, as they will run:", theme.label()));
    for l in pretty_json(&req.args_json).lines() {
        lines.push(Line::raw(format!("  {l}")));
    }
    if !req.args_hash.is_empty() {
        lines.push(Line::styled(
            format!("  args hash {}", req.args_hash),
            theme.dim(),
        ));
    }

    let recent: Vec<&Event> = app
        .events
        .iter()
        .rev()
        .filter(|e| {
            !req.session_id.is_empty() && e.session_id == req.session_id && e.kind == "tool_call"
        })
        .take(5)
        .collect();
    if !recent.is_empty() {
        lines.push(Line::default());
        lines.push(Line::styled("Recent calls in this session:", theme.label()));
        for e in recent.into_iter().rev() {
            lines.push(Line::from(vec![
                Span::raw(format!("  {} ", clock(e.time_ms))),
                Span::styled(format!("{:<9} ", e.decision), theme.decision(&e.decision)),
                Span::raw(format!("{} {}", e.tool, e.summary)),
            ]));
        }
    }
    Text::from(lines)
}

fn pretty_json(s: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| s.to_owned()),
        Err(_) => s.to_owned(),
    }
}

fn event_row(e: &Event, theme: Theme) -> Row<'static> {
    if is_alert(e) {
        // Labelled in words too, so it reads the same without colour.
        return Row::new(vec![
            Cell::from(clock(e.time_ms)),
            Cell::from("▲ ALERT"),
            Cell::from(e.agent.clone()),
            Cell::from(e.human.clone()),
            Cell::from(e.tool.clone()),
            Cell::from(e.summary.clone()),
        ])
        .style(theme.alert());
    }
    if e.kind == "shadow" {
        // A trial rule would have decided otherwise; nothing was enforced.
        return Row::new(vec![
            Cell::from(clock(e.time_ms)),
            Cell::from("◇ SHADOW"),
            Cell::from(agent_of(e).to_owned()),
            Cell::from(e.human.clone()),
            Cell::from(e.tool.clone()),
            Cell::from(e.summary.clone()),
        ])
        .style(theme.decision("expired"));
    }
    Row::new(vec![
        Cell::from(clock(e.time_ms)),
        Cell::from(e.decision.clone()),
        Cell::from(agent_of(e).to_owned()),
        Cell::from(e.human.clone()),
        Cell::from(e.tool.clone()),
        Cell::from(if e.request_id.is_empty() {
            e.summary.clone()
        } else {
            format!("[{}] {}", e.request_id, e.summary)
        }),
    ])
    .style(theme.decision(&e.decision))
}

const EVENT_WIDTHS: [Constraint; 6] = [
    Constraint::Length(8),
    Constraint::Length(9),
    Constraint::Length(16),
    Constraint::Length(10),
    Constraint::Length(15),
    Constraint::Fill(1),
];

fn draw_live(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let height = visible_rows(area);
    let rows = app.live_rows(height);
    let mut title = String::from(" Live ");
    match app.live.frozen_at {
        Some(_) => {
            title.push_str(&format!("— PAUSED (+{} new) ", app.live_new_since_pause()));
        }
        None => title.push_str("— following "),
    }
    if !app.filter.is_empty() {
        title.push_str(&format!("— filter “{}” ", app.filter));
    }
    if !app.shadow_by_rule.is_empty() {
        let counts: Vec<String> = app
            .shadow_by_rule
            .iter()
            .map(|(rule, n)| format!("{rule} ×{n}"))
            .collect();
        title.push_str(&format!("— shadow: {} ", counts.join(", ")));
    }
    let header =
        Row::new(["TIME", "DECISION", "AGENT", "HUMAN", "TOOL", "SUMMARY"]).style(theme.header());
    let empty = rows.is_empty();
    let table = Table::new(rows.into_iter().map(|e| event_row(e, theme)), EVENT_WIDTHS)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
    if empty {
        let msg = if app.filter.is_empty() {
            "waiting for agent activity…"
        } else {
            "no events match the filter"
        };
        empty_note(frame, area, msg, theme);
    }
}

/// A dim line inside an empty table.
fn empty_note(frame: &mut Frame, area: Rect, msg: &str, theme: Theme) {
    if area.height < 4 || area.width < 5 {
        return;
    }
    let inner = Rect::new(area.x + 2, area.y + 2, area.width.saturating_sub(4), 1);
    frame.render_widget(
        Paragraph::new(Span::styled(msg.to_owned(), theme.dim())),
        inner,
    );
}

/// The Denials view: the list, the per-agent table, the agent's rate.
fn denials_areas(area: Rect) -> [Rect; 3] {
    let [list, side] =
        Layout::horizontal([Constraint::Min(40), Constraint::Length(32)]).areas(area);
    let [agents, spark] = Layout::vertical([Constraint::Min(3), Constraint::Length(8)]).areas(side);
    [list, agents, spark]
}

fn draw_denials(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let [list, side, spark] = denials_areas(area);
    let rows = app.denial_rows(visible_rows(list));
    let mut title = format!(" Denials ({}) ", app.denials_total);
    if app.alerts_total > 0 {
        title.push_str(&format!("· alerts {} ", app.alerts_total));
    }
    title.push_str("— newest first ");
    if !app.filter.is_empty() {
        title.push_str(&format!("— filter “{}” ", app.filter));
    }
    let header =
        Row::new(["TIME", "DECISION", "AGENT", "HUMAN", "TOOL", "REASON"]).style(theme.header());
    let empty = rows.is_empty();
    let table = Table::new(
        rows.into_iter().map(|e| {
            let mut e = e.clone();
            if !e.rules.is_empty() && !is_alert(&e) {
                e.summary = format!("{} [{}]", e.summary, e.rules.join(", "));
            }
            event_row(&e, theme)
        }),
        EVENT_WIDTHS,
    )
    .header(header)
    .block(Block::bordered().title(title));
    frame.render_widget(table, list);
    if empty {
        let msg = if app.filter.is_empty() {
            "no denials yet"
        } else {
            "no denials match the filter"
        };
        empty_note(frame, list, msg, theme);
    }

    let chosen = app.spark_agent();
    let per_agent = app.agents_by_denials();
    let max = per_agent.first().map(|(_, n)| *n).unwrap_or(1).max(1);
    let bar_width = 8u64;
    let rows = per_agent.into_iter().map(|(agent, n)| {
        let filled = (n * bar_width).div_ceil(max) as usize;
        let row = Row::new(vec![
            Cell::from(agent.to_owned()),
            Cell::from(n.to_string()),
            Cell::from(Span::styled("█".repeat(filled), theme.decision("deny"))),
        ]);
        if Some(agent) == chosen {
            row.style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(5),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["AGENT", "N", ""]).style(theme.header()))
    .block(Block::bordered().title(" Per agent "));
    frame.render_widget(table, side);

    draw_sparkline(frame, spark, app, chosen, theme);
}

/// Denials per 10 s over the last 5 minutes for one agent.
fn draw_sparkline(frame: &mut Frame, area: Rect, app: &App, agent: Option<&str>, theme: Theme) {
    let Some(agent) = agent else {
        frame.render_widget(
            Paragraph::new(Span::styled("no denials to chart", theme.dim()))
                .block(Block::bordered().title(" Denial rate ")),
            area,
        );
        return;
    };
    let data = app.denial_rate(agent);
    let peak = data.iter().copied().max().unwrap_or(0);
    let total: u64 = data.iter().sum();
    let block = Block::bordered().title(format!(" {agent} "));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [chart, legend] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    frame.render_widget(
        Sparkline::default()
            .data(&data)
            .max(peak.max(1))
            .style(theme.decision("deny")),
        chart,
    );
    let minutes = SPARK_BUCKET_MS * SPARK_BUCKETS as i64 / 60_000;
    frame.render_widget(
        Paragraph::new(Span::styled(
            format!(
                "{total} in {minutes}m · peak {peak}/{}s",
                SPARK_BUCKET_MS / 1000
            ),
            theme.dim(),
        )),
        legend,
    );
}

fn severity_style(severity: &str, theme: Theme) -> Style {
    match severity {
        "high" => theme.error(),
        "medium" => theme.warn(),
        _ => theme.label(),
    }
}

fn draw_alerts(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let header =
        Row::new(["TIME", "SEVERITY", "RULE", "SUBJECT", "COUNT", "SUMMARY"]).style(theme.header());
    let rows = app.alerts.iter().rev().map(|e| {
        let info = alert_info(e);
        Row::new(vec![
            Cell::from(clock(e.time_ms)),
            Cell::from(Span::styled(
                format!("▲ {}", info.severity),
                severity_style(&info.severity, theme),
            )),
            Cell::from(info.rule),
            Cell::from(format!("{} {}", info.by, info.subject)),
            Cell::from(info.count.map_or_else(|| "?".into(), |n| n.to_string())),
            Cell::from(e.summary.clone()),
        ])
    });
    let title = format!(" Alerts ({}) — newest first ", app.alerts_total);
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(18),
            Constraint::Length(30),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected())
    .highlight_symbol("▶ ")
    .highlight_spacing(HighlightSpacing::Always)
    .block(Block::bordered().title(title));
    let selected = (!app.alerts.is_empty()).then_some(app.alert_selected);
    let mut state = TableState::default()
        .with_selected(selected)
        .with_offset(table_offset(app.alert_selected, visible_rows(area)));
    frame.render_stateful_widget(table, area, &mut state);
    if app.alerts.is_empty() {
        empty_note(
            frame,
            area,
            "No alerts. Detection rules (denial spikes, amounts just under a limit, escalation floods) raise them here.",
            theme,
        );
    }
}

/// The Audit view: filter bar, chain badge, the list (or the entry), a note.
fn audit_areas(area: Rect) -> [Rect; 4] {
    Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area)
}

/// "2023-11-14 22:13:20" (UTC).
fn date_time(ms: i64) -> String {
    format_time(ms)
        .replacen('T', " ", 1)
        .chars()
        .take(19)
        .collect()
}

fn draw_audit(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let a = &app.audit;
    if a.data_dir.is_none() {
        frame.render_widget(
            Paragraph::new(vec![
                Line::styled("No audit log to read.", theme.label()),
                Line::default(),
                Line::raw("Start the console with --data-dir DIR (the stack's data directory):"),
                Line::raw("it reads DIR/audit.db read-only and verifies it with v."),
            ])
            .block(Block::bordered().title(" Audit ")),
            area,
        );
        return;
    }
    let [bar, badge, body, note] = audit_areas(area);

    let filter = if a.filter.is_empty() {
        Span::styled("none — every entry", theme.dim())
    } else {
        Span::styled(
            a.filter.to_string(),
            Style::new().add_modifier(Modifier::BOLD),
        )
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" filter: ", theme.label()),
            filter,
            Span::styled("   (/ or :audit key=value … to change)", theme.dim()),
        ])),
        bar,
    );
    draw_badge(frame, badge, app, theme);

    if a.detail {
        draw_audit_detail(frame, body, app, theme);
    } else {
        draw_audit_table(frame, body, app, theme);
    }

    let text = match (&a.result, &a.error) {
        (_, Some(e)) => Span::styled(format!(" could not read the log: {e}"), theme.error()),
        (None, None) => Span::styled(" reading the log…", theme.dim()),
        (Some(p), None) => {
            let mut s = if p.rows.len() as u64 >= p.matched {
                format!(" {} matching entries", p.matched)
            } else {
                format!(
                    " entries {}–{} of {} matching (newest first)",
                    p.first + 1,
                    p.first + p.rows.len() as u64,
                    p.matched
                )
            };
            match (p.older().is_some(), p.newer().is_some()) {
                (true, true) => s.push_str(" · [ older  ] newer"),
                (true, false) => s.push_str(" · more… [ for older"),
                (false, true) => s.push_str(" · more… ] for newer"),
                (false, false) => {}
            }
            if p.skipped > 0 {
                s.push_str(&format!(
                    " · {} unreadable entries skipped (verify with v)",
                    p.skipped
                ));
            }
            Span::styled(s, theme.dim())
        }
    };
    frame.render_widget(Paragraph::new(Line::from(text)), note);
}

fn draw_badge(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let line = match &app.audit.verify {
        Verify::NotYet => Line::from(vec![
            Span::styled(" chain: ", theme.label()),
            Span::styled("not verified yet", theme.warn()),
            Span::styled(" (v to verify)", theme.dim()),
        ]),
        Verify::Running { done, total } => {
            let ratio = if *total == 0 {
                0.0
            } else {
                (*done as f64 / *total as f64).clamp(0.0, 1.0)
            };
            frame.render_widget(
                LineGauge::default()
                    .ratio(ratio)
                    .label(format!(" verifying {done}/{total} entries "))
                    .filled_symbol("━")
                    .unfilled_symbol("─")
                    .filled_style(theme.ok())
                    .unfilled_style(theme.dim()),
                area,
            );
            return;
        }
        Verify::Done(b) => {
            let style = match b {
                super::audit_view::Badge::Intact { .. } => theme.ok(),
                super::audit_view::Badge::Broken { .. } => theme.error(),
            };
            Line::from(vec![
                Span::styled(" chain: ", theme.label()),
                Span::styled(b.text(), style),
            ])
        }
        Verify::Failed(e) => Line::from(vec![
            Span::styled(" chain: ", theme.label()),
            Span::styled(format!("could not verify: {e}"), theme.error()),
        ]),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn audit_row(r: &AuditRow, theme: Theme) -> Row<'static> {
    let style = match r.decision.as_str() {
        "approve" => theme.decision("approved"),
        d => theme.decision(d),
    };
    Row::new(vec![
        Cell::from(date_time(r.time_ms)),
        Cell::from(format!("{}#{}", r.chain, r.seq)),
        Cell::from(r.kind.clone()),
        Cell::from(r.human.clone()),
        Cell::from(r.agent.clone()),
        Cell::from(r.tool.clone()),
        Cell::from(Span::styled(r.decision.clone(), style)),
        Cell::from(r.status.clone()),
    ])
}

fn draw_audit_table(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let a = &app.audit;
    let header = Row::new([
        "TIME", "ENTRY", "KIND", "HUMAN", "AGENT", "TOOL", "DECISION", "STATUS",
    ])
    .style(theme.header());
    let mut title = String::from(" Audit log ");
    if a.loading {
        title.push_str("— loading… ");
    } else if let Some(p) = &a.result {
        title.push_str(&format!("— {} matching ", p.matched));
        if a.page != Page::Newest {
            title.push_str("— older page ");
        }
    }
    // Only the visible rows are built, however long the page.
    let visible = visible_rows(area);
    let offset = table_offset(a.selected, visible);
    let rows: Vec<Row> = a
        .rows_newest_first()
        .skip(offset)
        .take(visible)
        .map(|r| audit_row(r, theme))
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(19),
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Fill(1),
            Constraint::Length(15),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected())
    .highlight_symbol("▶ ")
    .highlight_spacing(HighlightSpacing::Always)
    .block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected((!empty).then_some(a.selected - offset));
    frame.render_stateful_widget(table, area, &mut state);
    if empty && !a.loading && a.result.is_some() {
        empty_note(frame, area, "no entries match the filter", theme);
    }
}

/// Fields of an entry in the order an auditor reads them; the rest follow.
const ENTRY_FIELDS: [&str; 13] = [
    "kind",
    "session",
    "human",
    "agent",
    "actors",
    "tool",
    "decision",
    "status",
    "rules",
    "request_id",
    "grant_id",
    "detail",
    "args_hash",
];

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn draw_audit_detail(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let a = &app.audit;
    let Some(r) = a.selected_row() else {
        return;
    };
    let mut lines = vec![Line::from(vec![
        Span::styled(r.position(), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {}  ", format_time(r.time_ms))),
        Span::styled(r.kind.clone(), theme.label()),
    ])];
    let position = match &a.verify {
        Verify::Done(b) if b.covers(&r.chain, r.seq) => Span::styled("  (verified)", theme.ok()),
        Verify::Done(_) => Span::styled("  (not covered by the last verification)", theme.warn()),
        _ => Span::styled("  (not verified yet: v)", theme.dim()),
    };
    lines.push(Line::from(vec![
        Span::styled(format!("{:<14}", "Chain"), theme.label()),
        Span::raw(r.position()),
        position,
    ]));
    let obj = r.line.as_object();
    let get = |k: &str| obj.and_then(|o| o.get(k));
    let hash = |k: &str| get(k).map(value_text).unwrap_or_default();
    lines.push(field("hash", hash("hash"), theme));
    lines.push(field("prev_hash", hash("prev_hash"), theme));
    for k in ENTRY_FIELDS {
        if let Some(v) = get(k).filter(|v| !is_blank(v)) {
            lines.push(field(k, value_text(v), theme));
        }
    }
    let known = |k: &str| {
        ENTRY_FIELDS.contains(&k)
            || matches!(
                k,
                "time" | "time_ms" | "chain" | "seq" | "args" | "hash" | "prev_hash"
            )
    };
    if let Some(o) = obj {
        for (k, v) in o.iter().filter(|(k, v)| !known(k) && !is_blank(v)) {
            lines.push(field(k, value_text(v), theme));
        }
    }
    lines.push(Line::default());
    lines.push(Line::styled("Arguments:", theme.label()));
    match get("args").filter(|v| !is_blank(v)) {
        Some(args) => {
            let text = serde_json::to_string_pretty(args).unwrap_or_else(|_| args.to_string());
            for l in text.lines() {
                lines.push(Line::raw(format!("  {l}")));
            }
        }
        None => lines.push(Line::styled("  none", theme.dim())),
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((a.detail_scroll, 0))
            .block(Block::bordered().title(format!(" Entry {} — esc to go back ", r.position()))),
        area,
    );
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn popup(frame: &Frame, width: u16, height: u16) -> Rect {
    let area = frame.area();
    area.centered(
        Constraint::Length(width.min(area.width)),
        Constraint::Length(height.min(area.height)),
    )
}

fn draw_help(frame: &mut Frame, app: &App, theme: Theme) {
    let cmds = commands(app);
    let mut lines = vec![Line::styled(
        format!("{} view", app.view.title()),
        theme.label(),
    )];
    for c in &cmds {
        lines.push(Line::from(vec![
            Span::styled(format!("  {:<12}", c.keys), theme.key()),
            Span::raw(c.desc),
        ]));
    }
    lines.push(Line::default());
    lines.push(Line::styled("Commands", theme.label()));
    for (keys, desc) in COMMAND_HELP {
        lines.push(Line::from(vec![
            Span::styled(format!("  {keys:<24}"), theme.key()),
            Span::raw(desc),
        ]));
    }
    lines.push(Line::default());
    lines.push(Line::styled(
        "Decisions are checked again by the approval service.",
        theme.dim(),
    ));
    let area = popup(frame, 72, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Help — esc to close ")),
        area,
    );
}

fn draw_prompt(frame: &mut Frame, app: &App, p: &app::Prompt, theme: Theme) {
    let verb = if p.approve { "Approve" } else { "Deny" };
    let what = app
        .pending
        .iter()
        .find(|r| r.id == p.id)
        .map(|r| format!("{} {} for {}", r.tool, amount(r.amount_cents), r.human))
        .unwrap_or_else(|| "(no longer in the queue)".into());
    let need = if p.reason_required {
        "reason (required)"
    } else {
        "reason (optional)"
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled(
                format!("{verb} {}", p.id),
                theme.decision(if p.approve { "approved" } else { "denied" }),
            ),
            Span::raw(format!(": {what}")),
        ]),
        Line::default(),
        Line::from(vec![
            Span::styled(format!("{need}: "), theme.label()),
            Span::raw(p.input.clone()),
            Span::styled("█", theme.dim()),
        ]),
        Line::default(),
    ];
    match &p.error {
        Some(e) => lines.push(Line::styled(e.clone(), theme.error())),
        None => lines.push(Line::styled(
            "enter to confirm · esc to cancel",
            theme.dim(),
        )),
    }
    let area = popup(frame, 70, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {verb} "))),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{NOW, event, sample};
    use crate::tui::app::{Action, on_key, on_mouse};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::style::Color;

    const COLOR: Theme = Theme { color: true };

    fn render(app: &App, theme: Theme, w: u16, h: u16) -> Buffer {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut app = app.clone();
        app.theme = theme;
        t.draw(|f| draw(f, &app)).unwrap();
        t.backend().buffer().clone()
    }

    fn text(buf: &Buffer) -> String {
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    /// The first row containing `needle`, and its x offset.
    fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
        let t = text(buf);
        t.lines().enumerate().find_map(|(y, line)| {
            line.find(needle)
                .map(|byte| (line[..byte].chars().count() as u16, y as u16))
        })
    }

    fn press(app: &mut App, c: char) -> Option<Action> {
        on_key(app, KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    #[test]
    fn countdown_and_clock_formats() {
        assert_eq!(countdown(245_000), "4m05s");
        assert_eq!(countdown(59_001), "1m00s");
        assert_eq!(countdown(1), "1s");
        assert_eq!(countdown(0), "expired");
        assert_eq!(countdown(3_720_000), "1h02m");
        assert_eq!(clock(NOW), "22:13:20");
    }

    #[test]
    fn pending_view_shows_queue_detail_and_keys() {
        let app = sample(false);
        let buf = render(&app, COLOR, 140, 40);
        let t = text(&buf);
        for want in [
            "alice (approver, limit $500.00)",
            "events 5 held │ ● connected",
            "pending 2 · alerts 0 · events 5 held",
            "1 Pending (2)",
            "req-a1",
            "req-b2",
            "issue_refund",
            "$200.00",
            "support-agent",
            "4m05s",
            "10m00s",
            "within your approval limit $500.00",
            "refund-over-rep-limit",
            "refund exceeds the rep's limit of $50.00",
            "support-agent → bob",
            "sess-42",
            "customer was charged twice",
            "\"order_id\": \"ord-77\"",
            "\"amount\": 20000",
            "Recent calls in this session",
            " a approve",
            " d deny",
            "? help",
            "q quit",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // Oldest first: req-a1 (2 minutes old) above req-b2.
        let (_, ya) = find(&buf, "req-a1").unwrap();
        let (_, yb) = find(&buf, "req-b2").unwrap();
        assert!(ya < yb);
        // The selected row is reversed, in colour and without.
        let (x, y) = find(&buf, "▶ req-a1").unwrap();
        assert!(buf[(x + 2, y)].modifier.contains(Modifier::REVERSED));
        let (x, y) = find(&buf, "  req-b2").unwrap();
        assert!(!buf[(x + 2, y)].modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn quorum_progress_is_shown_in_the_table_and_the_detail() {
        let mut app = sample(false);
        let mut list = app.pending.clone();
        if let Some(r) = list.iter_mut().find(|r| r.id == "req-a1") {
            r.amount_cents = 80_000;
            r.approvals_required = 2;
            r.approve_reason_required = true;
            r.approvers = vec!["carol".into()];
            r.votes = vec![zt_proto::pb::Vote {
                operator: "carol".into(),
                decision: "approve".into(),
                reason: "owed".into(),
                at_ms: NOW,
            }];
        }
        app.set_pending(list);
        let t = text(&render(&app, COLOR, 140, 40));
        for want in [
            "APPR",
            "1/2",
            "0/1",
            "Approvals     1 of 2 (carol)  approving needs a reason",
            "carol approve at 22:13:20: owed",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        press(&mut app, 'a');
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("reason (required)"), "{t}");
    }

    #[test]
    fn long_ids_are_shortened_in_the_table_only() {
        let mut app = sample(false);
        let id = "req_0123456789abcdef0123456789abcdef";
        let mut list = app.pending.clone();
        list.push(crate::tui::app::tests::request(
            id,
            "issue_refund",
            100,
            500,
            60,
        ));
        app.set_pending(list);
        press(&mut app, 'g');
        let t = text(&render(&app, COLOR, 160, 40));
        assert!(t.contains("req_0123456789… issue_refund"), "{t}");
        assert!(t.contains(id), "the detail shows the whole id: {t}");
    }

    #[test]
    fn countdown_ticks_with_the_clock() {
        let mut app = sample(false);
        app.tick(NOW + 5_000);
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("4m00s"), "{t}");
        app.tick(NOW + 246_000);
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("expired"), "{t}");
    }

    #[test]
    fn narrow_terminal_stacks_the_detail_below() {
        let app = sample(false);
        let buf = render(&app, COLOR, 80, 40);
        let (_, list_y) = find(&buf, "req-b2").unwrap();
        let (_, amount_y) = find(&buf, "within your approval limit").unwrap();
        assert!(amount_y > list_y);
    }

    #[test]
    fn over_limit_and_own_requests_are_flagged() {
        let mut app = sample(false);
        if let Some(op) = app.operator.as_mut() {
            op.limit_cents = 5_000;
            op.name = "bob".into();
        }
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("exceeds your approval limit $50.00"), "{t}");
        assert!(t.contains("made on your own behalf"), "{t}");
    }

    #[test]
    fn readonly_hides_decisions_and_says_so() {
        let app = sample(true);
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("read-only"));
        let keys = t.lines().last().unwrap_or("");
        assert!(keys.contains("q quit"), "{keys}");
        assert!(
            !keys.contains("approve") && !keys.contains("deny"),
            "{keys}"
        );
    }

    #[test]
    fn prompt_overlay_shows_the_request_and_the_error() {
        let mut app = sample(false);
        press(&mut app, 'd');
        on_key(&mut app, KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(
            t.contains("Deny req-a1: issue_refund $200.00 for bob"),
            "{t}"
        );
        assert!(t.contains("a reason is required to deny"), "{t}");
        assert!(t.contains("enter deny"), "key bar follows the prompt: {t}");
    }

    #[test]
    fn live_view_colours_by_decision() {
        let mut app = sample(false);
        press(&mut app, '2');
        let buf = render(&app, COLOR, 120, 20);
        let t = text(&buf);
        assert!(t.contains("following"), "{t}");
        assert!(t.contains("space pause"), "{t}");
        for (needle, color) in [
            ("lookup_account acct-1", Color::Green),
            ("limit capped at 50", Color::Cyan),
            ("refund to another region", Color::Red),
            ("refund $200.00 over rep limit", Color::Yellow),
        ] {
            let (x, y) = find(&buf, needle).unwrap_or_else(|| panic!("{needle} missing:\n{t}"));
            assert_eq!(buf[(x, y)].fg, color, "{needle}");
        }
    }

    #[test]
    fn live_view_filter_and_pause() {
        let mut app = sample(false);
        press(&mut app, '2');
        press(&mut app, '/');
        for c in "region".chars() {
            press(&mut app, c);
        }
        let t = text(&render(&app, COLOR, 120, 20));
        assert!(t.contains("refund to another region"), "{t}");
        assert!(!t.contains("plan not allowed"), "{t}");
        assert!(t.contains("/region"), "filter input shown: {t}");
        on_key(&mut app, KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        press(&mut app, ' ');
        app.push_event(event(
            6,
            "executed",
            "support-agent",
            "issue_refund",
            "refund done",
        ));
        let t = text(&render(&app, COLOR, 120, 20));
        assert!(t.contains("PAUSED (+1 new)"), "{t}");
        assert!(!t.contains("refund done"), "{t}");
        assert!(t.contains("space follow"), "{t}");
    }

    #[test]
    fn denials_view_lists_denials_and_counts_per_agent() {
        let mut app = sample(false);
        press(&mut app, '3');
        let buf = render(&app, COLOR, 140, 20);
        let t = text(&buf);
        assert!(t.contains("Denials (2)"), "{t}");
        assert!(t.contains("plan not allowed"), "{t}");
        assert!(t.contains("refund to another region"), "{t}");
        assert!(
            !t.contains("lookup_account acct-1"),
            "allowed calls are not denials: {t}"
        );
        let (x, y) = find(&buf, "rogue-agent").unwrap();
        assert!(x > 0);
        let per_agent = t.lines().nth(y as usize).unwrap_or("");
        assert!(
            t.lines()
                .any(|l| l.contains("rogue-agent") && l.contains(" 2 ")),
            "{per_agent}\n{t}"
        );
        // Newest first.
        let (_, y5) = find(&buf, "plan not allowed").unwrap();
        let (_, y3) = find(&buf, "refund to another region").unwrap();
        assert!(y5 < y3);
    }

    #[test]
    fn a_shadow_divergence_is_labelled_and_counted_per_rule() {
        let mut app = sample(false);
        let mut ev = crate::tui::app::tests::alert(
            6,
            "agent:a",
            "shadow rules would have decided escalate (by refund-over-20-escalate) where the policy decided allow",
        );
        ev.kind = "shadow".into();
        ev.decision = "allow".into();
        ev.rules = vec!["refund-over-20-escalate".into()];
        app.push_event(ev.clone());
        ev.seq = 7;
        app.push_event(ev);
        press(&mut app, '2');
        let buf = render(&app, COLOR, 200, 20);
        let t = text(&buf);
        assert!(t.contains("shadow: refund-over-20-escalate ×2"), "{t}");
        let (_, y) = find(&buf, "◇ SHADOW").unwrap_or_else(|| panic!("no shadow row:\n{t}"));
        let row: String = t.lines().nth(y as usize).unwrap_or("").into();
        assert!(row.contains("would have decided escalate"), "{row}");
        assert_eq!(app.alerts_total, 0, "a divergence is not an alert");
    }

    #[test]
    fn alerts_stand_out_in_the_live_and_denials_views() {
        let mut app = sample(false);
        app.push_event(crate::tui::app::tests::alert(
            6,
            "rogue-agent",
            "high denial-spike: agent rogue-agent had 10 denials within 1m",
        ));
        for (view, title) in [('2', "Live"), ('3', "Denials (2) · alerts 1")] {
            press(&mut app, view);
            let buf = render(&app, COLOR, 180, 20);
            let t = text(&buf);
            assert!(t.contains(title), "{t}");
            assert!(t.contains("pending 2 · alerts 1 · events 6 held"), "{t}");
            let (x, y) = find(&buf, "▲ ALERT").unwrap_or_else(|| panic!("no alert row:\n{t}"));
            let row: String = t.lines().nth(y as usize).unwrap_or("").into();
            assert!(
                row.contains("rogue-agent had 10 denials within 1m"),
                "{row}"
            );
            assert!(
                !row.contains("[denial-spike]"),
                "the rule is in the summary once: {row}"
            );
            assert_eq!(buf[(x, y)].fg, Color::Red);
            assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
            // Without colour: the same words, reversed and bold.
            let buf = render(&app, Theme { color: false }, 180, 20);
            let (x, y) = find(&buf, "▲ ALERT").unwrap_or_else(|| panic!("no alert row"));
            assert_eq!(buf[(x, y)].fg, Color::Reset);
            assert!(
                buf[(x, y)]
                    .modifier
                    .contains(Modifier::REVERSED | Modifier::BOLD)
            );
        }
    }

    #[test]
    fn help_overlay_lists_the_key_bar_entries() {
        let mut app = sample(false);
        press(&mut app, '?');
        let t = text(&render(&app, COLOR, 140, 40));
        assert!(t.contains("Help"), "{t}");
        for c in commands(&app) {
            assert!(t.contains(c.desc), "help lacks {:?}:\n{t}", c.desc);
        }
        assert!(
            t.contains("first / last"),
            "help shows more than the bar: {t}"
        );
    }

    #[test]
    fn no_color_uses_modifiers_only() {
        let mut app = sample(false);
        press(&mut app, '2');
        let buf = render(&app, Theme { color: false }, 120, 20);
        for cell in buf.content() {
            assert_eq!(cell.fg, Color::Reset, "colour used with NO_COLOR");
            assert_eq!(cell.bg, Color::Reset, "colour used with NO_COLOR");
        }
        let (x, y) = find(&buf, "refund to another region").unwrap();
        assert!(buf[(x, y)].modifier.contains(Modifier::BOLD));
    }

    #[test]
    fn disconnected_state_is_shown() {
        let mut app = sample(false);
        app.conn = Conn::Down {
            error: "approval service unavailable: connection refused".into(),
            attempt: 3,
            retry_at_ms: NOW + 4_000,
        };
        let t = text(&render(&app, COLOR, 200, 20));
        assert!(t.contains("✕ reconnecting in 4s (attempt 3)"), "{t}");
        assert!(
            t.contains("pending 2 · alerts 0 · events 5 held"),
            "counts stay visible: {t}"
        );
        assert!(
            t.contains("event stream: approval service unavailable: connection refused"),
            "{t}"
        );
    }

    #[test]
    fn tiny_terminal_does_not_panic() {
        let mut app = sample(false);
        app.audit = crate::tui::snapshots::audit_app().audit;
        for v in ['1', '2', '3', '4', '5', '?', ':'] {
            press(&mut app, v);
            render(&app, COLOR, 10, 4);
            render(&app, COLOR, 1, 1);
            render(&app, COLOR, 0, 0);
            on_key(&mut app, KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
        }
        on_key(&mut app, KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert!(app.audit.detail);
        render(&app, COLOR, 10, 4);
        render(&app, COLOR, 1, 1);
    }

    #[test]
    fn alert_severities_are_coloured_and_worded() {
        let mut app = sample(false);
        app.push_event(crate::tui::app::tests::alert(
            6,
            "rogue-agent",
            "high denial-spike: agent rogue-agent had 10 denials within 1m",
        ));
        app.push_event(crate::tui::app::tests::alert(
            7,
            "x",
            "medium escalation-flood: agent x had 5 escalations within 5m",
        ));
        press(&mut app, '4');
        let buf = render(&app, COLOR, 140, 20);
        let t = text(&buf);
        assert!(t.contains("4 Alerts (2)"), "{t}");
        let (x, y) = find(&buf, "▲ high").unwrap_or_else(|| panic!("{t}"));
        assert_eq!(buf[(x, y)].fg, Color::Red);
        let (x, y) = find(&buf, "▲ medium").unwrap_or_else(|| panic!("{t}"));
        assert_eq!(buf[(x, y)].fg, Color::Yellow);
        let row = t.lines().nth(y as usize).unwrap_or("");
        assert!(
            row.contains("escalation-flood") && row.contains("agent x"),
            "{row}"
        );
        let buf = render(&app, Theme { color: false }, 140, 20);
        let (x, y) = find(&buf, "▲ high").unwrap_or_else(|| panic!("no alert"));
        assert_eq!(buf[(x, y)].fg, Color::Reset);
        assert!(buf[(x, y)].modifier.contains(Modifier::BOLD));
    }

    #[test]
    fn the_chain_badge_is_green_when_intact_and_red_when_broken() {
        use crate::tui::audit_view::{Badge, Verify};
        let mut app = crate::tui::snapshots::audit_app();
        app.audit.verify = Verify::Done(Badge::Intact {
            chains: vec![("broker".into(), 3)],
            entries: 3,
            unsigned: 0,
        });
        let buf = render(&app, COLOR, 140, 30);
        let (x, y) =
            find(&buf, "✓ verified through broker #3").unwrap_or_else(|| panic!("{}", text(&buf)));
        assert_eq!(buf[(x, y)].fg, Color::Green);
        app.audit.verify = Verify::Done(Badge::Broken {
            chain: "broker".into(),
            seq: 2,
            problem: "hash".into(),
            detail: "edited".into(),
            more: 1,
        });
        let buf = render(&app, COLOR, 140, 30);
        let (x, y) = find(&buf, "✕ BROKEN at chain broker #2 (hash): edited (+1 more)")
            .unwrap_or_else(|| panic!("{}", text(&buf)));
        assert_eq!(buf[(x, y)].fg, Color::Red);
        // The approval row's decision reads in the approval colour.
        let (x, y) = find(&buf, "approve ").unwrap_or_else(|| panic!("{}", text(&buf)));
        assert_eq!(buf[(x, y)].fg, Color::Blue);
    }

    #[test]
    fn the_denial_sparkline_is_drawn_in_the_denial_colour() {
        let mut app = sample(false);
        press(&mut app, '3');
        let buf = render(&app, COLOR, 140, 30);
        let t = text(&buf);
        assert!(t.contains("2 in 5m · peak 2/10s"), "{t}");
        let bars: Vec<_> = buf
            .content()
            .iter()
            .filter(|c| "▁▂▃▄▅▆▇█".contains(c.symbol()) && c.fg == Color::Red)
            .collect();
        assert!(!bars.is_empty(), "no red bars:\n{t}");
    }

    #[test]
    fn no_color_holds_in_every_view() {
        let mut app = crate::tui::snapshots::audit_app();
        app.push_event(crate::tui::app::tests::alert(
            6,
            "rogue-agent",
            "high denial-spike: agent rogue-agent had 10 denials within 1m",
        ));
        for v in ['1', '2', '3', '4', '5'] {
            press(&mut app, v);
            let buf = render(&app, Theme { color: false }, 140, 30);
            for cell in buf.content() {
                assert_eq!(cell.fg, Color::Reset, "colour in view {v} with NO_COLOR");
                assert_eq!(cell.bg, Color::Reset, "colour in view {v} with NO_COLOR");
            }
        }
    }

    #[test]
    fn the_entry_detail_shows_every_field_and_both_hashes() {
        let mut app = crate::tui::snapshots::audit_app();
        // The approval entry: third newest.
        on_key(
            &mut app,
            KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE),
        );
        on_key(
            &mut app,
            KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE),
        );
        on_key(&mut app, KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let t = text(&render(&app, COLOR, 160, 45));
        for want in [
            "Entry approval #2",
            "Chain         approval #2  (not verified yet: v)",
            "human         carol",
            "decision      approve",
            "detail        customer is owed it",
            "\"order_id\": \"ord-77\"",
            "\"amount\": 20000",
            &format!("hash          {:064x}", 3 * 0x1111),
            &format!("prev_hash     {:064x}", 2 * 0x1111),
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn odd_events_and_clicks_do_not_panic() {
        use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
        let mut app = sample(false);
        for (seq, time_ms) in [(10u64, i64::MIN), (11, i64::MAX), (12, 0), (0, -1)] {
            let mut e = event(seq, "deny", "", "", "");
            e.time_ms = time_ms;
            e.summary = "ü\u{0}\t\n".repeat(500);
            app.push_event(e.clone());
            e.kind = "alert".into();
            e.seq += 100;
            app.push_event(e);
        }
        let mut list = app.pending.clone();
        let mut odd = crate::tui::app::tests::request("req-odd", "", i64::MIN, 0, 0);
        odd.expires_at_ms = i64::MIN;
        odd.created_at_ms = i64::MAX;
        odd.args_json = "{not json".into();
        list.push(odd);
        app.set_pending(list);
        for v in ['1', '2', '3', '4', '5'] {
            press(&mut app, v);
            for (w, h) in [(140, 40), (20, 6), (u16::MAX / 300, 3)] {
                app.area = Rect::new(0, 0, w, h);
                render(&app, COLOR, w, h);
                for (col, row) in [(0, 0), (5, 4), (u16::MAX, u16::MAX), (w - 1, h - 1)] {
                    on_mouse(
                        &mut app,
                        MouseEvent {
                            kind: MouseEventKind::Down(MouseButton::Left),
                            column: col,
                            row,
                            modifiers: KeyModifiers::NONE,
                        },
                    );
                }
            }
        }
    }
}
