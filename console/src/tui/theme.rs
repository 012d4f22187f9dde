//! Colours that read on dark and light terminals, and none at all under
//! `NO_COLOR` (then modifiers carry the meaning).

use ratatui::style::{Color, Modifier, Style};

/// Colours, or none (`NO_COLOR`): then modifiers carry the meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set to anything non-empty.
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    pub fn fg(self, c: Color, fallback: Modifier) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new().add_modifier(fallback)
        }
    }

    /// The style of a decision: allow green, constrain cyan, deny red,
    /// escalate yellow, approved blue (a vote toward a quorum too),
    /// executed magenta, expired and cancelled grey.
    pub fn decision(self, decision: &str) -> Style {
        match decision {
            "allow" => self.fg(Color::Green, Modifier::empty()),
            "constrain" => self.fg(Color::Cyan, Modifier::ITALIC),
            "deny" | "denied" | "failed" | "error" => self.fg(Color::Red, Modifier::BOLD),
            "escalate" => self.fg(Color::Yellow, Modifier::UNDERLINED),
            "approved" => self.fg(Color::Blue, Modifier::BOLD),
            "executed" => self.fg(Color::Magenta, Modifier::empty()),
            "expired" | "cancelled" => self.fg(Color::DarkGray, Modifier::DIM),
            "voted" => self.fg(Color::Blue, Modifier::empty()),
            "alert" => self.alert(),
            _ => Style::new(),
        }
    }

    /// An alert from a detection rule: reversed and bold (red when in
    /// colour), unlike any decision.
    pub fn alert(self) -> Style {
        self.fg(Color::Red, Modifier::empty())
            .add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }

    pub fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    pub fn header(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    pub fn label(self) -> Style {
        self.fg(Color::Cyan, Modifier::BOLD)
    }

    pub fn dim(self) -> Style {
        self.fg(Color::DarkGray, Modifier::DIM)
    }

    pub fn error(self) -> Style {
        self.fg(Color::Red, Modifier::BOLD)
    }

    pub fn ok(self) -> Style {
        self.fg(Color::Green, Modifier::empty())
    }

    pub fn warn(self) -> Style {
        self.fg(Color::Yellow, Modifier::BOLD)
    }

    pub fn key(self) -> Style {
        self.fg(Color::Yellow, Modifier::BOLD)
            .add_modifier(Modifier::BOLD)
    }
}
