//! `zt-broker admit`: a platform engineer reviews an MCP upstream's tools
//! and admits one into the registry. It runs with the broker's data (it
//! needs the upstream's credentials), connects to the upstream, and writes
//! what [`crate::admission`] derives: the `[[tool]]` entry with its
//! fingerprint, the Cedar action and a default-deny stub. Re-admitting a
//! tool shows what changed and moves its fingerprint (which lifts its
//! quarantine); the registry entry the engineer narrowed is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use zt_policies::{PolicyBundle, files};
use zt_proto::stack::Layout;

use crate::admission;
use crate::backend::mcp::Mcp;
use crate::backend::upstreams::{self, Spec};
use crate::quarantine::Quarantine;

/// What to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// The upstream, as `upstreams.toml` names it.
    pub upstream: String,
    /// Its tool to admit; `None`: list its tools and their state.
    pub tool: Option<String>,
    /// The registry's name for it (default: the upstream's, if it is one).
    pub name: Option<String>,
}

/// Runs `zt-broker admit`, printing to stdout.
pub async fn run(layout: &Layout, req: &Request) -> anyhow::Result<()> {
    let private = layout.private("broker");
    let spec = upstreams::load(&private)?
        .into_iter()
        .find(|s| s.name() == req.upstream)
        .with_context(|| {
            format!(
                "{} declares no upstream `{}`",
                private.join(upstreams::FILE).display(),
                req.upstream
            )
        })?;
    let Spec::Mcp(spec) = spec else {
        bail!(
            "`{}` is not an MCP upstream: the operations of http and sql upstreams are declared in upstreams.toml, so their tools are written by hand",
            req.upstream
        );
    };
    let mcp = Mcp::start(spec)?;
    let tools = tokio::time::timeout(Duration::from_secs(60), mcp.list())
        .await
        .context("listing the upstream's tools timed out")??;
    let dir = layout.policies();
    let bundle = PolicyBundle::load(&dir)
        .with_context(|| format!("loading the registry from {}", dir.display()))?;
    let quarantine = Quarantine::open(&private);
    let registered = |op: &str| {
        bundle
            .tools()
            .find(|t| t.upstream.as_deref() == Some(req.upstream.as_str()) && t.operation() == op)
            .cloned()
    };
    let Some(wanted) = &req.tool else {
        println!("tools of upstream `{}`:", req.upstream);
        for t in &tools {
            let op = t.get("name").and_then(Value::as_str).unwrap_or_default();
            let state = match registered(op) {
                None => "not admitted".to_owned(),
                Some(r) => match &r.fingerprint {
                    None => format!("in the registry as `{}`, not pinned", r.name),
                    Some(f) if *f == admission::fingerprint(t) => {
                        format!("admitted as `{}`", r.name)
                    }
                    Some(_) => format!("admitted as `{}`, CHANGED since", r.name),
                },
            };
            let first = t
                .get("description")
                .and_then(Value::as_str)
                .and_then(|d| d.lines().next())
                .unwrap_or_default();
            println!(
                "  {op:<32} {state:<40} {}",
                crate::backend::safe_message(first)
            );
        }
        return Ok(());
    };
    let Some(definition) = tools
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(wanted.as_str()))
    else {
        bail!("upstream `{}` lists no tool `{wanted}`", req.upstream);
    };
    let fingerprint = admission::fingerprint(definition);
    if let Some(existing) = registered(wanted) {
        readmit(&dir, &quarantine, &existing, definition, &fingerprint)?;
        return Ok(());
    }
    let name = req.name.clone().unwrap_or_else(|| wanted.clone());
    if bundle.tool(&name).is_some() {
        bail!("the registry already has a tool `{name}`; pass --as NAME");
    }
    let admission = admission::admit(&req.upstream, &name, definition)
        .map_err(|why| anyhow::anyhow!("`{wanted}` cannot be admitted as it is: {why}"))?;
    let schema_path = dir.join(files::SCHEMA);
    let schema_text = std::fs::read_to_string(&schema_path)?;
    let entity = if schema_text.contains(&format!("entity {};", admission::RESOURCE)) {
        String::new()
    } else {
        format!(
            "\n// What tools admitted from upstreams act on.\nentity {};\n",
            admission::RESOURCE
        )
    };
    let writes = [
        (dir.join(files::TOOLS), admission.registry.clone()),
        (schema_path, format!("{entity}{}", admission.action)),
        (dir.join(files::POLICY), admission.stub.clone()),
    ];
    append_all_or_none(&writes, &dir)?;
    quarantine.record_admitted(&name, definition)?;
    println!(
        "admitted `{wanted}` of upstream `{}` as `{name}` ({fingerprint})",
        req.upstream
    );
    println!(
        "  {}: the entry (review its title, description, risk and input_schema)",
        files::TOOLS
    );
    println!("  {}: action {name}", files::SCHEMA);
    println!(
        "  {}: `{name}-not-yet-allowed` denies every call: narrow `{name}-to-narrow`, then delete it",
        files::POLICY
    );
    Ok(())
}

/// Re-admits a tool already in the registry: shows what changed since it
/// was admitted and moves its fingerprint.
fn readmit(
    dir: &Path,
    quarantine: &Quarantine,
    existing: &zt_policies::ToolSpec,
    definition: &Value,
    fingerprint: &str,
) -> anyhow::Result<()> {
    let name = &existing.name;
    if existing.fingerprint.as_deref() == Some(fingerprint) {
        println!("`{name}` is admitted as it is served now ({fingerprint}); nothing changed");
        quarantine.record_admitted(name, definition)?;
        if quarantine.release(name)? {
            println!("released `{name}` from quarantine");
        }
        return Ok(());
    }
    match quarantine.admitted(name) {
        Some(before) => {
            let changed = admission::changes(&before, definition);
            println!(
                "`{name}`: changed since it was admitted: {}",
                changed.join(", ")
            );
            for part in changed {
                println!("  {part}:");
                println!("    was: {}", shown(&before[part]));
                println!("    now: {}", shown(&definition[part]));
            }
        }
        None => println!(
            "`{name}`: no earlier admission recorded; the definition now:\n  {}",
            shown(definition)
        ),
    }
    let path = dir.join(files::TOOLS);
    let text = std::fs::read_to_string(&path)?;
    let updated = set_fingerprint(&text, name, fingerprint)
        .with_context(|| format!("{}: no [[tool]] named `{name}`", path.display()))?;
    let backup = text.clone();
    std::fs::write(&path, updated)?;
    if let Err(e) = PolicyBundle::load(dir) {
        std::fs::write(&path, backup)?;
        bail!("the policy directory would not load, nothing changed: {e}");
    }
    quarantine.record_admitted(name, definition)?;
    if quarantine.release(name)? {
        println!("released `{name}` from quarantine");
    }
    println!(
        "re-admitted `{name}` ({fingerprint}); if its inputSchema changed, narrow input_schema in {} to match",
        files::TOOLS
    );
    Ok(())
}

/// A reviewed part as one bounded line.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    let mut out: String = text.chars().take(400).collect();
    if text.chars().count() > 400 {
        out.push('…');
    }
    out
}

/// `tools.toml` with the `fingerprint` of the `[[tool]]` named `name` set
/// (added after its `name` line if it had none); `None` if there is no
/// such tool.
pub fn set_fingerprint(text: &str, name: &str, fingerprint: &str) -> Option<String> {
    let line_of = format!("fingerprint = \"{fingerprint}\"");
    let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
    // The head of each [[tool]]: from its header to its first sub-table.
    let mut head: Option<usize> = None;
    let mut found = None;
    for (i, line) in out.iter().enumerate() {
        let t = line.trim();
        if t == "[[tool]]" {
            head = Some(i);
        } else if t.starts_with('[') {
            head = None;
        } else if let Some(start) = head {
            let is_name = t
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|v| v.strip_prefix('='))
                .is_some_and(|v| v.trim().trim_matches('"') == name);
            if is_name {
                found = Some((start, i));
                break;
            }
        }
    }
    let (start, name_line) = found?;
    let end = out[start + 1..]
        .iter()
        .position(|l| l.trim().starts_with('['))
        .map_or(out.len(), |p| start + 1 + p);
    match (start + 1..end).find(|&i| out[i].trim().starts_with("fingerprint")) {
        Some(i) => out[i] = line_of,
        None => out.insert(name_line + 1, line_of),
    }
    Some(out.join("\n") + "\n")
}

/// Appends each text to its file; if the policy directory then does not
/// load, every file is restored and the problems are the error.
fn append_all_or_none(writes: &[(PathBuf, String)], dir: &Path) -> anyhow::Result<()> {
    let mut before = Vec::new();
    for (path, _) in writes {
        before.push((path.clone(), std::fs::read_to_string(path)?));
    }
    let restore = |before: &[(PathBuf, String)]| {
        for (path, text) in before {
            let _ = std::fs::write(path, text);
        }
    };
    for ((path, add), (_, old)) in writes.iter().zip(&before) {
        if let Err(e) = std::fs::write(path, format!("{old}{add}")) {
            restore(&before);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
    }
    if let Err(e) = PolicyBundle::load(dir) {
        restore(&before);
        bail!("the policy directory would not load with the new tool, nothing changed:\n{e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_set_in_its_own_tool_only() {
        let text = "[[tool]]\nfingerprint = \"sha256:first\"\nname = \"z\"\n\n[[tool]]\nname = \"a\"\nfingerprint = \"sha256:old\"\n\n[tool.input_schema]\ntype = \"object\"\n\n\
                    [[tool]]\nname = \"b\"\ntitle = \"B\"\n\n[tool.input_schema]\nname = \"x\"\n";
        let a = set_fingerprint(text, "a", "sha256:new").unwrap();
        assert!(
            a.contains("name = \"a\"\nfingerprint = \"sha256:new\"\n"),
            "{a}"
        );
        assert!(!a.contains("sha256:old"));
        let b = set_fingerprint(text, "b", "sha256:bb").unwrap();
        assert!(
            b.contains("name = \"b\"\nfingerprint = \"sha256:bb\"\ntitle"),
            "{b}"
        );
        assert!(b.contains("sha256:old"), "a untouched: {b}");
        assert_eq!(b.matches("sha256:bb").count(), 1, "{b}");
        assert!(set_fingerprint(text, "x", "sha256:x").is_none());
        // A fingerprint above the name is the tool's own.
        let z = set_fingerprint(text, "z", "sha256:zz").unwrap();
        assert!(
            z.starts_with("[[tool]]\nfingerprint = \"sha256:zz\"\nname = \"z\""),
            "{z}"
        );
        assert_eq!(z.matches("fingerprint").count(), 2, "{z}");
    }
}
