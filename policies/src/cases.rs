//! Tables of synthetic requests with expected decisions (`zt-policy test FILE`).
//!
//! File format (TOML; a `.json` file holds the same structure as JSON):
//!
//! ```toml
//! [[case]]
//! name = "alice refunds exactly her rep limit"
//! tool = "issue_refund"
//! human = "alice"
//! agent = "agent-1"                  # optional, default "test-agent"
//! args = { order_id = "ord_1", amount = 5000 }
//! resource = { id = "ord_1", attrs = { region = "eu", amount = 9000, refunded = 0 } }  # optional
//! expect = "allow"                   # allow | constrain | deny | escalate
//! expect_args = { ... }              # required when expect = "constrain": the rewritten args
//! expect_rules = ["refund-within-rep-limit"]   # optional: exact rule ids of the decision
//! context = { tainted = true, budgets = { refunded_today = 12000 } }  # optional; default: untainted, nothing consumed
//! ```
//!
//! For every case that does not expect `constrain`, the decision's arguments must
//! equal the arguments sent.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Decision, DecisionRequest, Effect, PolicyBundle, Resource};

/// A table of cases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases (`[[case]]`).
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

fn default_agent() -> String {
    "test-agent".to_string()
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// One synthetic request and its expected decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Name shown on failure.
    pub name: String,
    /// Tool name.
    pub tool: String,
    /// Human the agent acts for.
    pub human: String,
    /// Agent id.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// Arguments.
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Resource, when known.
    #[serde(default)]
    pub resource: Option<Resource>,
    /// The session's taint and budgets; when absent, an untainted session
    /// that has consumed nothing.
    #[serde(default)]
    pub context: Option<crate::CallContext>,
    /// Expected effect.
    pub expect: Effect,
    /// Expected (rewritten) arguments; required for `constrain`.
    #[serde(default)]
    pub expect_args: Option<Value>,
    /// Expected rule ids, exactly and in order.
    #[serde(default)]
    pub expect_rules: Option<Vec<String>>,
}

impl Case {
    /// The request this case sends.
    pub fn request(&self, bundle: &PolicyBundle) -> DecisionRequest {
        DecisionRequest {
            tool: self.tool.clone(),
            args: self.args.clone(),
            agent: self.agent.clone(),
            human: self.human.clone(),
            resource: self.resource.clone(),
            context: self
                .context
                .clone()
                .unwrap_or_else(|| bundle.assumed_context(&self.tool)),
        }
    }

    /// Checks a decision against the expectation; `Err` explains the mismatch.
    pub fn verify(&self, d: &Decision) -> Result<(), String> {
        let mut problems = Vec::new();
        if d.effect != self.expect {
            problems.push(format!("expected {}, got {}", self.expect, d.effect));
        }
        match (&self.expect_args, self.expect) {
            (Some(want), _) if &d.args != want => {
                problems.push(format!("expected args {want}, got {}", d.args));
            }
            (None, Effect::Constrain) => {
                problems.push("a constrain case needs expect_args".to_string());
            }
            (None, _) if d.args != self.args => {
                problems.push(format!("arguments changed to {}", d.args));
            }
            _ => {}
        }
        if let Some(want) = &self.expect_rules
            && want != &d.rules
        {
            problems.push(format!("expected rules {want:?}, got {:?}", d.rules));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} (rules {:?}; reason: {})",
                problems.join("; "),
                d.rules,
                d.reason
            ))
        }
    }
}

/// One failed case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFailure {
    /// The case's name.
    pub name: String,
    /// What differed.
    pub message: String,
}

/// The result of running a table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseReport {
    /// How many cases passed.
    pub passed: usize,
    /// The failed cases.
    pub failures: Vec<CaseFailure>,
}

impl CaseReport {
    /// `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failures.len())
    }
}

/// Reads a case table: JSON when the file name ends in `.json`, TOML otherwise.
pub fn load(path: &Path) -> Result<CaseFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Runs every case against the bundle.
pub fn run(bundle: &PolicyBundle, file: &CaseFile) -> CaseReport {
    let mut report = CaseReport::default();
    for case in &file.cases {
        let decision = bundle.decide(&case.request(bundle));
        match case.verify(&decision) {
            Ok(()) => report.passed += 1,
            Err(message) => report.failures.push(CaseFailure {
                name: case.name.clone(),
                message,
            }),
        }
    }
    report
}
