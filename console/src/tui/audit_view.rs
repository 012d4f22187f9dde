//! The Audit view's state: one page of a query's matches, the entry open in
//! the detail pane, and the chain-status badge. No IO here: queries and
//! verification run in background tasks ([`super::event`]) and come back as
//! [`AuditPage`]s and [`Report`]s.

use std::collections::VecDeque;
use std::path::PathBuf;

use serde_json::Value;
use zt_proto::stack::Layout;
use zt_proto::store::Report;

use super::command::AuditFilter;

/// Rows kept per query: a page. Further matches are counted, not kept.
pub const PAGE_ROWS: usize = 5_000;

/// One audit entry as a row, with the whole entry for the detail pane.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub time_ms: i64,
    pub chain: String,
    pub seq: u64,
    pub kind: String,
    pub human: String,
    pub agent: String,
    pub tool: String,
    pub decision: String,
    pub status: String,
    pub detail: String,
    /// The entry as `audit_query::select` gives it (its export form).
    pub line: Value,
}

impl AuditRow {
    /// A row from an exported entry; missing fields are empty.
    pub fn from_line(line: Value) -> AuditRow {
        let s = |k: &str| line[k].as_str().unwrap_or_default().to_owned();
        AuditRow {
            time_ms: line["time_ms"].as_i64().unwrap_or_default(),
            chain: s("chain"),
            seq: line["seq"].as_u64().unwrap_or_default(),
            kind: s("kind"),
            human: s("human"),
            agent: s("agent"),
            tool: s("tool"),
            decision: s("decision"),
            status: s("status"),
            detail: s("detail"),
            line,
        }
    }

    /// `broker #123`.
    pub fn position(&self) -> String {
        format!("{} #{}", self.chain, self.seq)
    }
}

/// Which page of a query's matches (in time order) to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Page {
    /// The newest [`PAGE_ROWS`] matches.
    #[default]
    Newest,
    /// [`PAGE_ROWS`] matches from this index (0: the oldest match).
    From(u64),
}

/// Keeps one page of matches while a query streams them by, oldest first:
/// memory stays at one page however large the log.
#[derive(Debug)]
pub struct Collector {
    page: Page,
    cap: usize,
    seen: u64,
    rows: VecDeque<AuditRow>,
}

impl Collector {
    pub fn new(page: Page, cap: usize) -> Collector {
        Collector {
            page,
            cap: cap.max(1),
            seen: 0,
            rows: VecDeque::new(),
        }
    }

    /// The next match.
    pub fn push(&mut self, line: Value) {
        let index = self.seen;
        self.seen += 1;
        match self.page {
            Page::Newest => {
                if self.rows.len() == self.cap {
                    self.rows.pop_front();
                }
                self.rows.push_back(AuditRow::from_line(line));
            }
            Page::From(first) => {
                if index >= first && index < first.saturating_add(self.cap as u64) {
                    self.rows.push_back(AuditRow::from_line(line));
                }
            }
        }
    }

    /// The page, given what the query counted.
    pub fn finish(self, matched: u64, skipped: u64) -> AuditPage {
        let kept = self.rows.len() as u64;
        let first = match self.page {
            Page::Newest => self.seen - kept,
            Page::From(first) => first.min(self.seen),
        };
        AuditPage {
            rows: self.rows.into(),
            first,
            matched: matched.max(self.seen),
            skipped,
            cap: self.cap,
        }
    }
}

/// One page of matching entries, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub rows: Vec<AuditRow>,
    /// Index of `rows[0]` among all matches.
    pub first: u64,
    /// Matches in all.
    pub matched: u64,
    /// Entries that could not be read.
    pub skipped: u64,
    /// Rows a page holds.
    pub cap: usize,
}

impl AuditPage {
    /// The page before this one (older matches), if any.
    pub fn older(&self) -> Option<Page> {
        (self.first > 0).then(|| Page::From(self.first.saturating_sub(self.cap as u64)))
    }

    /// The page after this one (newer matches), if any.
    pub fn newer(&self) -> Option<Page> {
        let end = self.first + self.rows.len() as u64;
        if end >= self.matched {
            None
        } else if end + self.cap as u64 >= self.matched {
            Some(Page::Newest)
        } else {
            Some(Page::From(end))
        }
    }
}

/// A query for the event loop to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Answers to older queries are ignored.
    pub id: u64,
    pub db: PathBuf,
    pub filter: AuditFilter,
    pub page: Page,
}

/// What the last verification found, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Badge {
    /// Every chain verified: each chain's last entry.
    Intact {
        chains: Vec<(String, u64)>,
        entries: u64,
        /// Entries not yet covered by a signed checkpoint.
        unsigned: u64,
    },
    /// The first problem found (and how many more).
    Broken {
        chain: String,
        seq: u64,
        problem: String,
        detail: String,
        more: usize,
    },
}

impl Badge {
    pub fn from_report(report: &Report) -> Badge {
        match report.findings.first() {
            None => Badge::Intact {
                chains: report
                    .verified
                    .iter()
                    .map(|v| (v.chain.clone(), v.entries))
                    .collect(),
                entries: report.entries(),
                unsigned: report.verified.iter().map(|v| v.unsigned_tail).sum(),
            },
            Some(f) => Badge::Broken {
                chain: f.chain.clone(),
                seq: f.seq,
                problem: f.problem.as_str().to_owned(),
                detail: f.detail.clone(),
                more: report.findings.len() - 1,
            },
        }
    }

    /// The badge's words: "verified through broker #17, approval #4" or
    /// "BROKEN at chain broker #57 (hash): ...".
    pub fn text(&self) -> String {
        match self {
            Badge::Intact {
                chains,
                entries,
                unsigned,
            } => {
                let through: Vec<String> =
                    chains.iter().map(|(c, n)| format!("{c} #{n}")).collect();
                let mut s = if through.is_empty() {
                    "✓ verified: the log is empty".to_owned()
                } else {
                    format!(
                        "✓ verified through {} ({entries} entries)",
                        through.join(", ")
                    )
                };
                if *unsigned > 0 {
                    s.push_str(&format!("; {unsigned} awaiting a signed checkpoint"));
                }
                s
            }
            Badge::Broken {
                chain,
                seq,
                problem,
                detail,
                more,
            } => {
                let at = if *seq == 0 {
                    format!("chain {chain}")
                } else {
                    format!("chain {chain} #{seq}")
                };
                let more = if *more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                format!("✕ BROKEN at {at} ({problem}): {detail}{more}")
            }
        }
    }

    /// Whether `chain`'s entry `seq` is covered by a successful verification.
    pub fn covers(&self, chain: &str, seq: u64) -> bool {
        match self {
            Badge::Intact { chains, .. } => chains.iter().any(|(c, n)| c == chain && seq <= *n),
            Badge::Broken { .. } => false,
        }
    }
}

/// The chain-status badge's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verify {
    #[default]
    NotYet,
    Running {
        done: u64,
        total: u64,
    },
    Done(Badge),
    /// The log could not be checked at all.
    Failed(String),
}

/// The Audit view.
#[derive(Debug, Clone, Default)]
pub struct AuditView {
    /// The stack's data directory (`--data-dir`); without one there is no log to read.
    pub data_dir: Option<PathBuf>,
    pub filter: AuditFilter,
    pub page: Page,
    /// The latest query's id (0: none yet).
    pub query_id: u64,
    pub loading: bool,
    pub result: Option<AuditPage>,
    pub error: Option<String>,
    /// The selected row, counted from the newest (0).
    pub selected: usize,
    /// The selected entry is open in the detail pane.
    pub detail: bool,
    pub detail_scroll: u16,
    pub verify: Verify,
}

impl AuditView {
    pub fn new(data_dir: Option<PathBuf>) -> AuditView {
        AuditView {
            data_dir,
            ..AuditView::default()
        }
    }

    /// Rows of the current page.
    pub fn len(&self) -> usize {
        self.result.as_ref().map_or(0, |p| p.rows.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th row from the newest.
    pub fn row(&self, i: usize) -> Option<&AuditRow> {
        let rows = &self.result.as_ref()?.rows;
        rows.len().checked_sub(i + 1).and_then(|j| rows.get(j))
    }

    /// Rows newest first.
    pub fn rows_newest_first(&self) -> impl Iterator<Item = &AuditRow> {
        self.result.iter().flat_map(|p| p.rows.iter().rev())
    }

    pub fn selected_row(&self) -> Option<&AuditRow> {
        self.row(self.selected)
    }

    /// Starts a query (the loop runs it); `Err` when there is no log to read.
    pub fn query(&mut self, filter: AuditFilter, page: Page) -> Result<Query, String> {
        let Some(dir) = &self.data_dir else {
            return Err("no audit log: start the console with --data-dir DIR".into());
        };
        self.query_id += 1;
        self.filter = filter;
        self.page = page;
        self.loading = true;
        self.error = None;
        self.detail = false;
        Ok(Query {
            id: self.query_id,
            db: Layout::new(dir).audit_db(),
            filter: self.filter.clone(),
            page,
        })
    }

    /// A query's answer; answers to superseded queries are dropped.
    pub fn answered(&mut self, id: u64, result: Result<AuditPage, String>) {
        if id != self.query_id {
            return;
        }
        self.loading = false;
        match result {
            Ok(page) => {
                self.result = Some(page);
                self.error = None;
                self.selected = 0;
                self.detail_scroll = 0;
            }
            Err(e) => self.error = Some(e),
        }
    }

    pub fn move_selection(&mut self, delta: isize) {
        let last = self.len().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(delta).min(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(seq: u64) -> Value {
        json!({"time_ms": 1_700_000_000_000i64 + seq as i64, "chain": "broker", "seq": seq, "kind": "decision"})
    }

    fn run(page: Page, cap: usize, n: u64) -> AuditPage {
        let mut c = Collector::new(page, cap);
        for i in 1..=n {
            c.push(line(i));
        }
        c.finish(n, 0)
    }

    #[test]
    fn the_newest_page_keeps_the_last_matches_only() {
        let p = run(Page::Newest, 5, 12);
        let seqs: Vec<u64> = p.rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [8, 9, 10, 11, 12]);
        assert_eq!((p.first, p.matched), (7, 12));
        assert_eq!(p.newer(), None);
        assert_eq!(p.older(), Some(Page::From(2)));
    }

    #[test]
    fn pages_walk_back_and_forth() {
        let p = run(Page::From(2), 5, 12);
        let seqs: Vec<u64> = p.rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6, 7]);
        assert_eq!(p.older(), Some(Page::From(0)));
        assert_eq!(p.newer(), Some(Page::Newest));
        let p = run(Page::From(0), 5, 12);
        assert_eq!(p.older(), None);
        assert_eq!(p.newer(), Some(Page::From(5)));
        let small = run(Page::Newest, 5, 3);
        assert_eq!((small.older(), small.newer()), (None, None));
    }

    #[test]
    fn memory_is_one_page() {
        let mut c = Collector::new(Page::Newest, PAGE_ROWS);
        for i in 0..(PAGE_ROWS as u64 * 3) {
            c.push(line(i));
        }
        let p = c.finish(PAGE_ROWS as u64 * 3, 1);
        assert_eq!(p.rows.len(), PAGE_ROWS);
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn rows_read_the_export_fields() {
        let r = AuditRow::from_line(json!({
            "time_ms": 5, "chain": "approval", "seq": 9, "kind": "approval",
            "human": "carol", "agent": "", "tool": "issue_refund",
            "decision": "approve", "status": "approved", "detail": "ok"
        }));
        assert_eq!(r.position(), "approval #9");
        assert_eq!((r.human.as_str(), r.status.as_str()), ("carol", "approved"));
        // Odd lines give empty fields, not a panic.
        let odd = AuditRow::from_line(json!([1, 2]));
        assert_eq!((odd.seq, odd.chain.as_str()), (0, ""));
    }

    #[test]
    fn stale_answers_are_dropped() {
        let mut v = AuditView::new(Some("/tmp/x".into()));
        let q1 = v.query(AuditFilter::default(), Page::Newest).unwrap();
        let q2 = v.query(AuditFilter::default(), Page::Newest).unwrap();
        assert_eq!(q2.db, PathBuf::from("/tmp/x/audit.db"));
        v.answered(q1.id, Err("old".into()));
        assert!(v.loading && v.error.is_none());
        v.answered(q2.id, Ok(run(Page::Newest, 5, 3)));
        assert!(!v.loading);
        assert_eq!(v.selected_row().map(|r| r.seq), Some(3));
        assert_eq!(v.row(2).map(|r| r.seq), Some(1));
        assert_eq!(v.row(3), None);
        assert!(
            AuditView::new(None)
                .query(AuditFilter::default(), Page::Newest)
                .is_err()
        );
    }
}
