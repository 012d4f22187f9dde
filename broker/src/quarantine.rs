//! Tools whose upstream definition drifted from the admitted one.
//!
//! A tool admitted with a fingerprint (`zt-broker admit`) is refused as
//! soon as its upstream serves a different definition (a changed
//! description, schema or annotations, or none at all) — and stays refused,
//! across restarts and even if the upstream changes back, until it is
//! re-admitted (a new fingerprint in `tools.toml`). Each hold is one file
//! in `DIR/broker/quarantine/`; one that cannot be read holds its tool
//! whatever its fingerprint (fail closed). What was admitted is kept in
//! `DIR/broker/admitted/` so a hold can say what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The registry's tool.
    pub tool: String,
    /// Its upstream.
    pub upstream: String,
    /// The admitted fingerprint the hold is for (`*`: any; its file could
    /// not be read).
    pub admitted: String,
    /// The live definition's fingerprint (`None`: the upstream no longer
    /// lists the tool).
    pub live: Option<String>,
    /// The reviewed parts that changed.
    pub changed: Vec<String>,
    /// When the drift was seen (ms since the epoch).
    pub since_ms: i64,
}

impl Hold {
    /// One line for operators.
    pub fn summary(&self) -> String {
        let what = match &self.live {
            None => "removed from the upstream".to_owned(),
            Some(_) if self.changed.is_empty() => "definition changed".to_owned(),
            Some(_) => format!("{} changed", self.changed.join(", ")),
        };
        format!(
            "upstream {}: tool {} quarantined: {what} since it was admitted; re-admit it with `zt-broker admit`",
            self.upstream, self.tool
        )
    }
}

/// The validator of an admitted output schema (`None`: none declared).
type OutputSchema = Option<Arc<jsonschema::Validator>>;

/// The holds, on disk and in memory.
pub struct Quarantine {
    dir: PathBuf,
    admitted: PathBuf,
    held: RwLock<HashMap<String, Hold>>,
    /// Per tool: the admitted fingerprint and the validator of the output
    /// schema admitted with it (`None`: it declared none).
    outputs: RwLock<HashMap<String, (String, OutputSchema)>>,
}

impl std::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quarantine")
            .field("dir", &self.dir)
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

/// Writes `path` (mode 0600) whole or not at all: a new file, renamed over
/// the old one.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", zt_proto::random_id("")));
    zt_proto::keys::write_private(&tmp, text).map_err(std::io::Error::other)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A tool name as a file name.
fn file_name(tool: &str) -> String {
    if !tool.is_empty()
        && tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!("{tool}.json")
    } else {
        format!("x-{}.json", hex::encode(tool))
    }
}

impl Quarantine {
    /// The holds recorded in the broker's private directory.
    pub fn open(private_dir: &Path) -> Quarantine {
        let dir = private_dir.join("quarantine");
        let mut held = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let hold = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Hold>(&t).ok());
                match hold {
                    Some(h)
                        if path.file_name().and_then(|n| n.to_str())
                            == Some(&file_name(&h.tool)) =>
                    {
                        held.insert(h.tool.clone(), h);
                    }
                    _ => {
                        // Which tool it holds is not known for sure: the
                        // name in the file name, for any fingerprint.
                        let stem = path
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .unwrap_or_default()
                            .to_owned();
                        let tool = stem
                            .strip_prefix("x-")
                            .and_then(|h| hex::decode(h).ok())
                            .and_then(|b| String::from_utf8(b).ok())
                            .unwrap_or(stem);
                        tracing::error!(file = %path.display(), tool, "an unreadable quarantine record holds its tool");
                        held.insert(
                            tool.clone(),
                            Hold {
                                tool,
                                upstream: "?".into(),
                                admitted: "*".into(),
                                live: None,
                                changed: vec!["unknown (unreadable record)".into()],
                                since_ms: 0,
                            },
                        );
                    }
                }
            }
        }
        Quarantine {
            dir,
            admitted: private_dir.join("admitted"),
            held: RwLock::new(held),
            outputs: RwLock::new(HashMap::new()),
        }
    }

    /// The hold on `tool` admitted as `fingerprint`, if any. A hold whose
    /// record was removed (`zt-broker admit` released it) is gone.
    pub fn held(&self, tool: &str, fingerprint: &str) -> Option<Hold> {
        let hold = {
            let held = self
                .held
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.get(tool)
                .filter(|h| h.admitted == "*" || h.admitted == fingerprint)
                .cloned()?
        };
        if self.dir.join(file_name(tool)).exists() {
            return Some(hold);
        }
        self.held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tool);
        None
    }

    /// Ends the hold on `tool` (re-admission); `Ok(true)` if there was one.
    pub fn release(&self, tool: &str) -> std::io::Result<bool> {
        self.held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tool);
        match std::fs::remove_file(self.dir.join(file_name(tool))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records `hold` (durably first); `Ok(false)` if the tool was held
    /// for that fingerprint already.
    pub fn hold(&self, hold: Hold) -> std::io::Result<bool> {
        if self.held(&hold.tool, &hold.admitted).is_some() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_string_pretty(&hold).map_err(std::io::Error::other)?;
        replace(&self.dir.join(file_name(&hold.tool)), &text)?;
        self.held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hold.tool.clone(), hold);
        Ok(true)
    }

    /// The definition `tool` was admitted with, if recorded.
    pub fn admitted(&self, tool: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.admitted.join(file_name(tool))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The validator of the output schema `tool` was admitted with as
    /// `fingerprint`, if its recorded definition is that one and declares
    /// one. A declared schema that does not compile validates nothing
    /// (`Err`, so the caller refuses the result).
    pub fn output_schema(
        &self,
        tool: &str,
        fingerprint: &str,
    ) -> Result<Option<Arc<jsonschema::Validator>>, String> {
        if let Some((f, v)) = self
            .outputs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tool)
            && f == fingerprint
        {
            return Ok(v.clone());
        }
        let validator = match self.admitted(tool) {
            Some(def) if crate::admission::fingerprint(&def) == fingerprint => {
                match def.get("outputSchema") {
                    Some(schema) if schema.is_object() => {
                        Some(Arc::new(jsonschema::validator_for(schema).map_err(
                            |e| format!("the admitted output schema does not compile: {e}"),
                        )?))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        self.outputs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tool.to_owned(), (fingerprint.to_owned(), validator.clone()));
        Ok(validator)
    }

    /// Records the definition `tool` is admitted with (by `zt-broker admit`).
    pub fn record_admitted(&self, tool: &str, definition: &Value) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.admitted)?;
        let text = serde_json::to_string_pretty(definition).map_err(std::io::Error::other)?;
        replace(&self.admitted.join(file_name(tool)), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_survives_a_restart_until_the_fingerprint_changes() {
        let dir = std::env::temp_dir().join(zt_proto::random_id("zt-quarantine-"));
        std::fs::create_dir_all(&dir).unwrap();
        let q = Quarantine::open(&dir);
        let hold = Hold {
            tool: "read_file".into(),
            upstream: "files".into(),
            admitted: "sha256:aa".into(),
            live: Some("sha256:bb".into()),
            changed: vec!["description".into()],
            since_ms: 1,
        };
        assert!(q.hold(hold.clone()).unwrap());
        assert!(!q.hold(hold.clone()).unwrap(), "held once");
        let q = Quarantine::open(&dir);
        assert_eq!(q.held("read_file", "sha256:aa"), Some(hold));
        assert_eq!(q.held("read_file", "sha256:cc"), None, "re-admitted");
        // Released by another process (`zt-broker admit`): gone here too.
        let other = Quarantine::open(&dir);
        assert!(other.release("read_file").unwrap());
        assert_eq!(q.held("read_file", "sha256:aa"), None);
        // A record that cannot be read holds its tool whatever it was
        // admitted as.
        std::fs::write(dir.join("quarantine").join("other.json"), "{not json").unwrap();
        let q = Quarantine::open(&dir);
        assert!(q.held("other", "sha256:anything").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
