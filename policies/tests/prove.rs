//! `zt-policy prove` against a real SMT solver: the shipped invariants are
//! proven; a policy that lost one `@effect` line is caught with a
//! counterexample, and that counterexample, fed back through `zt-policy
//! explain`, is a refund the weakened gate lets through and the shipped one
//! escalates.
//!
//! Needs `CVC5` (./scripts/test sets it after `scripts/cvc5 --install`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn solver() -> PathBuf {
    match std::env::var_os("CVC5") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "CVC5 is not set: run the suite with ./scripts/test, which installs the solver (scripts/cvc5 --install)"
        ),
    }
}

fn zt_policy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zt-policy"))
        .args(args)
        .env_remove("ZT_POLICY_DIR")
        .env("CVC5", solver())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_of_shipped(name: &str) -> TempCopy {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "zt-prove-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    TempCopy(dir)
}

fn replace(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn findings(stdout: &str) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn finding<'a>(all: &'a [Value], invariant: &str, tool: &str) -> &'a Value {
    all.iter()
        .find(|f| f["invariant"] == invariant && f["tool"] == tool)
        .unwrap_or_else(|| panic!("no finding for {invariant}/{tool}: {all:?}"))
}

#[test]
fn shipped_invariants_are_proven() {
    let (code, out, err) = zt_policy(&["prove", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let all = findings(&out);
    assert_eq!(all.len(), 16, "{out}");
    for f in &all {
        assert_eq!(f["result"], "proven", "{f}");
        assert_eq!(f["vacuous"], false, "{f}");
    }
    // The tool's JSON Schema bounds are assumed, and said.
    let daily = finding(&all, "refund-unattended-within-daily-total", "issue_refund");
    let assumed = daily["assuming"].to_string();
    assert!(assumed.contains("context.args.amount >= 1"), "{daily}");
    assert!(
        assumed.contains("context.budgets.refunded_today >= 0"),
        "{daily}"
    );

    let (code, out, err) = zt_policy(&["prove"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("proven    refund-unattended-within-rep-limit  issue_refund"),
        "{out}"
    );
    assert!(out.contains("16 of 16 invariant checks proven"), "{out}");

    let (code, out, _) = zt_policy(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", 9 invariants, policy sha256:"), "{out}");
}

/// The counterexample as `zt-policy explain` arguments, its human added to
/// `dir`'s directory as `cex`.
fn explain_counterexample(dir: &Path, cex: &Value) -> Value {
    let entities = cex["entities"].as_array().unwrap();
    let of_type = |t: &str| {
        entities
            .iter()
            .find(|e| e["uid"]["type"] == t)
            .unwrap_or_else(|| panic!("no {t} in {cex}"))
    };
    let mut human = of_type("Human")["attrs"].clone();
    human["id"] = json!("cex");
    human["name"] = json!("Counterexample");
    let table = toml::Value::try_from(&human).unwrap();
    let humans = dir.join("humans.toml");
    let text = std::fs::read_to_string(&humans).unwrap();
    std::fs::write(
        &humans,
        format!("{text}\n[[human]]\n{}", toml::to_string(&table).unwrap()),
    )
    .unwrap();

    let context = &cex["context"];
    // String formats are not part of a proof (the solver's strings are
    // placeholders): give the arguments ones the schema accepts.
    let mut args = context["args"].clone();
    args["order_id"] = json!("ord_cex");
    if let Some(obj) = args.as_object_mut() {
        obj.remove("idempotency_key");
    }
    let session = json!({
        "tainted": context["session"]["tainted"],
        "budgets": context["budgets"],
    });
    let (code, out, err) = zt_policy(&[
        "--dir",
        dir.to_str().unwrap(),
        "explain",
        "--tool",
        "issue_refund",
        "--human",
        "cex",
        "--args",
        &args.to_string(),
        "--resource",
        &of_type("Order")["attrs"].to_string(),
        "--context",
        &session.to_string(),
        "--json",
    ]);
    assert!(code == 0 || code == 1, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

#[test]
fn a_lost_escalation_is_caught_with_a_refund_the_gate_lets_through() {
    // A plausible slip: the `@effect("escalate")` line of the rep-limit
    // escalation deleted, so the rule silently becomes a plain allow.
    let weak = copy_of_shipped("weak");
    replace(
        &weak.0,
        "policy.cedar",
        "@id(\"refund-over-rep-limit-escalate\")\n@effect(\"escalate\")\n",
        "@id(\"refund-over-rep-limit-escalate\")\n",
    );
    // Proven against the enforced invariants, not the candidate's copy.
    let shipped_invariants = data_dir().join("invariants.toml");
    let (code, out, err) = zt_policy(&[
        "prove",
        weak.0.to_str().unwrap(),
        "--invariants",
        shipped_invariants.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let all = findings(&out);
    let f = finding(&all, "refund-unattended-within-rep-limit", "issue_refund");
    assert_eq!(f["result"], "violated", "{f}");
    assert_eq!(f["gate_agrees"], true, "{f}");
    assert!(
        f["gate"]
            .as_str()
            .unwrap()
            .starts_with("the gate allows it (refund-over-rep-limit-escalate"),
        "{f}"
    );
    // Invariants the slip does not touch still hold.
    for (inv, tool) in [
        ("refund-never-above-hard-cap", "issue_refund"),
        ("own-regions-only", "issue_refund"),
        ("plan-unattended-grantable", "change_plan"),
    ] {
        assert_eq!(finding(&all, inv, tool)["result"], "proven", "{inv}");
    }

    // The counterexample is real: the weakened gate allows it, and it
    // breaks the property.
    let cex = &f["counterexample"];
    let amount = cex["context"]["args"]["amount"].as_i64().unwrap();
    let human = cex["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uid"]["type"] == "Human")
        .unwrap();
    let limit = human["attrs"]["rep_limit"].as_i64().unwrap();
    assert!(
        amount > limit,
        "amount {amount} within rep_limit {limit}: {cex}"
    );
    assert!(
        (1..=10_000_000).contains(&amount),
        "outside the tool's schema: {cex}"
    );

    let decided = explain_counterexample(&weak.0, cex);
    assert_eq!(decided["effect"], "allow", "{decided}");
    // The shipped policy escalates the very same request.
    let shipped = copy_of_shipped("shipped");
    let decided = explain_counterexample(&shipped.0, cex);
    assert_eq!(decided["effect"], "escalate", "{decided}");

    // The human-readable report names the invariant and the request.
    let (code, out, _) = zt_policy(&[
        "prove",
        weak.0.to_str().unwrap(),
        "--invariants",
        shipped_invariants.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("VIOLATED  refund-unattended-within-rep-limit  issue_refund"),
        "{out}"
    );
    assert!(
        out.contains("breaks: context.args.amount <= principal.human.rep_limit"),
        "{out}"
    );
}

#[test]
fn a_counterexample_the_gate_denies_is_told_apart() {
    // Without its `assuming`, the daily-total invariant has a counterexample
    // under Cedar's semantics (the sum overflows, so Cedar skips the
    // escalation rule), which the gate denies because the rule errors.
    let dir = copy_of_shipped("no-assumption");
    replace(
        &dir.0,
        "invariants.toml",
        "assuming = \"context.budgets.refunded_today >= 0 && context.budgets.refunded_today <= 1000000000000000\"",
        "",
    );
    let (code, out, err) = zt_policy(&["prove", dir.0.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let all = findings(&out);
    let f = finding(&all, "refund-unattended-within-daily-total", "issue_refund");
    assert_eq!(f["result"], "violated", "{f}");
    assert_eq!(f["gate_agrees"], false, "{f}");
    assert!(f["gate"].as_str().unwrap().contains("errors on it"), "{f}");
}

#[test]
fn what_cannot_be_checked_says_so() {
    // No solver: exit 2, named.
    let (code, out, err) = zt_policy(&["prove", "--solver", "/nonexistent/cvc5"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("cannot start the SMT solver `/nonexistent/cvc5`"),
        "{err}"
    );

    // An invariant that does not type-check: `check` names it, `prove` exits 2.
    let dir = copy_of_shipped("bad-invariant");
    replace(
        &dir.0,
        "invariants.toml",
        "only_when = \"!context.session.tainted\"",
        "only_when = \"context.session.tainted_by > 0\"",
    );
    let (code, out, _) = zt_policy(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("invariants.toml: invariant `refund-unattended-clean-session`: `only_when` does not type-check for `issue_refund`"),
        "{out}"
    );
    let (code, out, err) = zt_policy(&["prove", dir.0.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");

    // A condition cannot smuggle in a second rule.
    replace(
        &dir.0,
        "invariants.toml",
        "only_when = \"context.session.tainted_by > 0\"",
        "only_when = \"true }; permit (principal, action, resource) when { true\"",
    );
    let (code, out, _) = zt_policy(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("`only_when` is not one Cedar condition"),
        "{out}"
    );

    // Unknown tools and unknown fields are refused.
    std::fs::write(
        dir.0.join("invariants.toml"),
        "[[invariant]]\nname = \"x\"\ntools = [\"wire_money\"]\nruns = \"unattended\"\nonly_when = \"true\"\n",
    )
    .unwrap();
    let (code, out, _) = zt_policy(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown tool `wire_money`"), "{out}");
    std::fs::write(
        dir.0.join("invariants.toml"),
        "[[invariant]]\nname = \"x\"\ntools = [\"issue_refund\"]\nruns = \"sometimes\"\nonly_when = \"true\"\n",
    )
    .unwrap();
    let (code, out, _) = zt_policy(&["check", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invariants.toml"), "{out}");
}
