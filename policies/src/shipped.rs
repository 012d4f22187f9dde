//! The example domain's policy data, compiled into every binary so a new
//! stack can be initialized anywhere (`zt-approval init` writes it into the
//! stack's data directory, where operators edit it and the broker reloads it).

use std::path::Path;

/// `(file name, contents)` of every shipped data file.
pub const FILES: &[(&str, &str)] = &[
    (files::TOOLS, include_str!("../data/tools.toml")),
    (files::HUMANS, include_str!("../data/humans.toml")),
    (files::POLICY, include_str!("../data/policy.cedar")),
    (files::SCHEMA, include_str!("../data/schema.cedarschema")),
    (files::LIMITS, include_str!("../data/limits.toml")),
    (files::BUDGETS, include_str!("../data/budgets.toml")),
    (files::DETECTIONS, include_str!("../data/detections.toml")),
    (files::APPROVALS, include_str!("../data/approvals.toml")),
    (files::REDACTIONS, include_str!("../data/redactions.toml")),
    (files::INVARIANTS, include_str!("../data/invariants.toml")),
];

use crate::files;

/// The shipped contents of data file `name`, if it is one.
pub fn file(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Writes the shipped data files into `dir`, creating it. Existing files are
/// left alone, so an operator's edits survive a restart.
pub fn install(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, contents) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, contents)?;
        }
    }
    Ok(())
}
