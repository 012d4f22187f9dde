//! `limits.toml`: loaded with the policy, checked at startup.

use std::path::{Path, PathBuf};

use zt_policies::PolicyBundle;
use zt_policies::limits::Bucket;

fn copy_of_shipped(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zt-limits-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    zt_policies::shipped::install(&dir).unwrap();
    dir
}

#[test]
fn shipped_limits_load() {
    let b = PolicyBundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap();
    assert_eq!(
        b.limits().tool.get("issue_refund"),
        Some(&Bucket {
            burst: 5,
            per_minute: 10
        })
    );
    assert!(b.limits().session.is_some());
}

#[test]
fn broken_limits_are_named() {
    let dir = copy_of_shipped("broken");
    std::fs::write(
        dir.join("limits.toml"),
        "[session]\nburst = 0\nper_minute = 10\n[tool.drop_tables]\nburst = 1\nper_minute = 1\n",
    )
    .unwrap();
    let problems: Vec<String> = PolicyBundle::check_dir(&dir)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("limits.toml: session") && p.contains("at least 1")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("limits.toml: tool `drop_tables`")),
        "{problems:?}"
    );

    std::fs::write(
        dir.join("limits.toml"),
        "[session]\nburst = 1\nper_minute = 1\nrate = 3\n",
    )
    .unwrap();
    let err = PolicyBundle::load(&dir).unwrap_err().to_string();
    assert!(err.contains("limits.toml"), "{err}");

    std::fs::remove_file(dir.join("limits.toml")).unwrap();
    let b = PolicyBundle::load(&dir).unwrap();
    assert!(
        b.limits().session.is_none() && b.limits().tool.is_empty(),
        "no file, no limits"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
