//! Drawing. Everything here reads the [`App`] and writes a frame; nothing
//! mutates state, so any state can be rendered into a `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap,
};
use zt_proto::pb::{ApprovalRequest, Event};

use super::app::{
    self, App, Conn, Mode, View, agent_of, amount, commands, is_alert, request_agent,
};
use super::theme::Theme;
use crate::client::{approvals, dollars};

/// Draws the whole console.
pub fn draw(frame: &mut Frame, app: &App) {
    let theme = app.theme;
    let [status, tabs, body, line, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    frame.render_widget(status_bar(app, theme), status);
    frame.render_widget(tab_bar(app, theme), tabs);
    match app.view {
        View::Pending => draw_pending(frame, body, app, theme),
        View::Live => draw_live(frame, body, app, theme),
        View::Denials => draw_denials(frame, body, app, theme),
    }
    draw_status_line(frame, line, app, theme);
    frame.render_widget(key_bar(app, theme), keys);

    match &app.mode {
        Mode::Help => draw_help(frame, app, theme),
        Mode::Prompt(p) => draw_prompt(frame, app, p, theme),
        Mode::Normal | Mode::Filter => {}
    }
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
    spans.push(sep());
    spans.push(Span::raw(format!(
        "pending {} · events {} · denials {}",
        app.pending.len(),
        app.events_total,
        app.denials_total
    )));
    if app.alerts_total > 0 {
        spans.push(Span::raw(" · "));
        spans.push(Span::styled(
            format!("alerts {}", app.alerts_total),
            theme.alert(),
        ));
    }
    if app.readonly {
        spans.push(sep());
        spans.push(Span::styled("read-only", theme.warn()));
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
        Conn::Live => Span::styled(format!("● live {}", app.url), theme.ok()),
        Conn::Down {
            error,
            attempt,
            retry_at_ms,
        } => {
            let secs = ((retry_at_ms - app.now_ms).max(0) + 999) / 1000;
            // The whole error is on the status line; keep the bar short.
            let short: String = error.chars().take(40).collect();
            let ellipsis = if short.len() < error.len() { "…" } else { "" };
            Span::styled(
                format!("✕ disconnected (retry {attempt} in {secs}s): {short}{ellipsis}"),
                theme.error(),
            )
        }
    }
}

fn tab_bar(app: &App, theme: Theme) -> Paragraph<'static> {
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let count = match v {
            View::Pending => format!(" ({})", app.pending.len()),
            View::Live => String::new(),
            View::Denials => format!(" ({})", app.denials_total),
        };
        let text = format!(" {} {}{count} ", i + 1, v.title());
        let style = if *v == app.view {
            theme.selected()
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
    let line = if app.mode == Mode::Filter {
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
    } else if !app.filter.is_empty() && app.view != View::Pending {
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
    let s = (ms_left + 999) / 1000;
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

fn draw_pending(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let (list, detail) = if area.width >= 120 {
        let [l, d] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
            .areas(area);
        (l, d)
    } else {
        let rows = (app.pending.len() as u16 + 3).max(5).min(area.height / 2);
        let [l, d] = Layout::vertical([Constraint::Length(rows), Constraint::Min(3)]).areas(area);
        (l, d)
    };

    let header = Row::new(["ID", "TOOL", "AMOUNT", "HUMAN", "AGENT", "APPR", "EXPIRES"])
        .style(theme.header());
    let rows = app.pending.iter().map(|r| {
        let left = r.expires_at_ms - app.now_ms;
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
    let mut state = TableState::default().with_selected(app.selected_index());
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

    let left = req.expires_at_ms - app.now_ms;
    lines.push(field(
        "Expires in",
        format!(
            "{}  (created {})",
            countdown(left),
            ago(app.now_ms - req.created_at_ms)
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
    let height = area.height.saturating_sub(3) as usize;
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
        let inner = Rect::new(area.x + 2, area.y + 2, area.width.saturating_sub(4), 1);
        frame.render_widget(Paragraph::new(Span::styled(msg, theme.dim())), inner);
    }
}

fn draw_denials(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let [list, side] =
        Layout::horizontal([Constraint::Min(40), Constraint::Length(32)]).areas(area);
    let height = list.height.saturating_sub(3) as usize;
    let rows = app.denial_rows(height);
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

    let mut per_agent: Vec<(&String, &u64)> = app.denials_by_agent.iter().collect();
    per_agent.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let max = per_agent.first().map(|(_, n)| **n).unwrap_or(1).max(1);
    let bar_width = 8u64;
    let rows = per_agent.into_iter().map(|(agent, n)| {
        let filled = (n * bar_width).div_ceil(max) as usize;
        Row::new(vec![
            Cell::from(agent.clone()),
            Cell::from(n.to_string()),
            Cell::from(Span::styled("█".repeat(filled), theme.decision("deny"))),
        ])
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
    lines.push(Line::styled(
        "Decisions are checked again by the approval service.",
        theme.dim(),
    ));
    let area = popup(frame, 60, lines.len() as u16 + 2);
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
    use crate::tui::app::{Action, on_key};
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
            "● live",
            "pending 2 · events 5 · denials 2",
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
            assert!(
                t.contains("pending 2 · events 6 · denials 2 · alerts 1"),
                "{t}"
            );
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
        assert!(t.contains("disconnected (retry 3 in 4s)"), "{t}");
        assert!(
            t.contains("pending 2 · events 5"),
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
        for v in ['1', '2', '3', '?'] {
            press(&mut app, v);
            render(&app, COLOR, 10, 4);
            render(&app, COLOR, 1, 1);
        }
    }
}
