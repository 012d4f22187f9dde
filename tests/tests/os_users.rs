//! Trust domains as operating-system users: `zt-console up --users` runs the
//! approval service, the broker and the billing API each as its own user
//! (created by `scripts/system-users`), and the stack still serves agents.
//! Then, as the agent's user and as each service's, the test tries what the
//! file system must refuse: reading a key or credential, writing `public/`,
//! the policies or a database, the broker touching the approval service's
//! state.
//!
//! It needs root (to create users and switch to them); unless
//! `ZT_SKIP_ROOT_TESTS=1` says to skip it, running it as anyone else fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use zt_tests::{Stack, bin_dir, call, connect, run, status, temp_dir, text};

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The uid of `name`.
fn uid(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().expect("id");
    assert!(out.status.success(), "no user {name}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

/// Runs `sh -c script` as `user` with its own groups; whether it succeeded.
fn as_user(user: &str, script: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv")
        .status
        .success()
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// Asserts `user` can neither read nor open for writing `path` (the open
/// for appending writes nothing, so a failure of the test damages no file).
fn sealed(user: &str, path: &Path) {
    assert!(
        !as_user(user, &format!("cat {} > /dev/null", quoted(path))),
        "{user} read {}",
        path.display()
    );
    assert!(
        !as_user(user, &format!(": >> {}", quoted(path))),
        "{user} could write {}",
        path.display()
    );
}

/// Asserts `user` cannot open `path` for writing.
fn read_only(user: &str, path: &Path) {
    assert!(
        !as_user(user, &format!(": >> {}", quoted(path))),
        "{user} could write {}",
        path.display()
    );
}

/// Every file below `dir` (as root sees it).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("listing") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The uid each of the stack's services runs as, found through `/proc`.
fn service_uids(dir: &Path) -> Vec<(String, u32)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let path = entry.expect("entry").path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !(args.iter().any(|a| a == "serve") && args.iter().any(|a| a == &needle)) {
            continue;
        }
        let name = Path::new(&args[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .and_then(|u| u.parse().ok())
            .expect("a Uid line");
        found.push((name, real));
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_as_its_own_user() {
    if !is_root() {
        assert!(
            std::env::var("ZT_SKIP_ROOT_TESTS").as_deref() == Ok("1"),
            "this test needs root (it creates users); set ZT_SKIP_ROOT_TESTS=1 to skip it"
        );
        eprintln!("skipped: not root and ZT_SKIP_ROOT_TESTS=1");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/system-users");
    let made = Command::new(&script)
        .output()
        .expect("scripts/system-users");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    // The services' users must reach the binaries: a copy outside root's home.
    let bins = temp_dir("users-bin");
    std::fs::set_permissions(&bins, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["zt-approval", "zt-broker", "zt-billing", "zt-policy"] {
        std::fs::copy(bin_dir().join(name), bins.join(name)).expect("copying a binary");
    }
    let dir = temp_dir("users");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack = Stack::up_as_users(&dir, &bins).expect("the stack starts as three users");
    let d = stack.data_dir.clone();

    assert_eq!(
        service_uids(&d),
        vec![
            ("zt-approval".to_owned(), uid("zt-approval")),
            ("zt-billing".to_owned(), uid("zt-billing")),
            ("zt-broker".to_owned(), uid("zt-broker")),
        ],
        "each service runs as its own user"
    );

    // It serves: a read (the broker reads the records through its group),
    // a refund (through the billing API, audited).
    let token = stack.session_token("agent:os", "alice");
    let agent = connect(&stack.broker_url, &token).await.expect("connects");
    let r = call(&agent, "lookup_account", json!({"account_id": "acct_1001"}))
        .await
        .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));
    let r = call(
        &agent,
        "issue_refund",
        json!({"order_id": "ord_1001", "amount": 1}),
    )
    .await
    .unwrap();
    assert_eq!(status(&r), "ok", "{}", text(&r));

    // The agent's user: no key, credential or database, readable or
    // writable; nothing added to public/, the policies or the data
    // directory; only its own gate runs, from the public files.
    let agent_user = "zt-agent";
    let mut secrets: Vec<PathBuf> = ["approval", "broker", "backend"]
        .iter()
        .flat_map(|s| files(&d.join(s)))
        .collect();
    secrets.push(d.join("audit.db"));
    assert!(
        secrets.iter().any(|p| p.ends_with("approval/token.key"))
            && secrets.iter().any(|p| p.ends_with("broker/billing.key"))
            && secrets.iter().any(|p| p.ends_with("backend/backend.db")),
        "{secrets:?}"
    );
    for path in &secrets {
        sealed(agent_user, path);
    }
    let mut public = vec![d.join("stack.json"), d.join("trust.json")];
    public.extend(files(&d.join("public")));
    public.extend(files(&d.join("policies")));
    for path in &public {
        assert!(
            as_user(agent_user, &format!("cat {} > /dev/null", quoted(path))),
            "the agent reads {}",
            path.display()
        );
        read_only(agent_user, path);
    }
    for new in [
        d.join("public/approval-token-forged.pem"),
        d.join("policies/forged.cedar"),
        d.join("forged.json"),
        d.join("run/broker.url"),
    ] {
        assert!(
            !as_user(agent_user, &format!(": > {}", quoted(&new))),
            "the agent created {}",
            new.display()
        );
    }
    let hook = format!(
        "printf '%s' '{}' | ZT_DATA_DIR={} BROKER_SESSION_TOKEN={token} {}/zt-policy hook",
        r#"{"tool_name":"mcp__broker__lookup_account","tool_input":{"account_id":"acct_1001"}}"#,
        quoted(&d),
        bins.display()
    );
    assert!(
        as_user(agent_user, &hook),
        "the agent's policy hook works from the public files alone"
    );

    // The broker: none of the approval service's keys or state, not the
    // trust anchor, not the billing API's key digests; it cannot remove or
    // replace the approval service's files in shared directories.
    let approval_files = files(&d.join("approval"));
    assert!(approval_files.iter().any(|p| p.ends_with("approval.db")));
    for path in &approval_files {
        sealed("zt-broker", path);
    }
    sealed("zt-broker", &d.join("backend/billing.toml"));
    read_only("zt-broker", &d.join("trust.json"));
    for theirs in [
        d.join("public/approval-token.pem"),
        d.join("public/audit-approval.pem"),
    ] {
        read_only("zt-broker", &theirs);
    }
    // audit.db is both writers' (on SQLite one file holds every chain: what
    // keeps the broker out of the approval chain is the writer's MACs and
    // signed checkpoints, tested in `audit_tamper`), but not the broker's to
    // replace.
    assert!(
        as_user(
            "zt-broker",
            &format!(": >> {}", quoted(&d.join("audit.db")))
        ),
        "the broker writes its chain"
    );
    for theirs in [
        d.join("public/approval-token.pem"),
        d.join("audit.db"),
        d.join("trust.json"),
    ] {
        assert!(
            !as_user(
                "zt-broker",
                &format!("mv {} {}.gone", quoted(&theirs), quoted(&theirs))
            ),
            "the broker moved {}",
            theirs.display()
        );
    }
    // The billing API: none of the broker's credentials, no audit chain.
    for path in files(&d.join("broker")) {
        sealed("zt-billing", &path);
    }
    sealed("zt-billing", &d.join("audit.db"));

    // The audit trail the three users wrote verifies.
    drop(agent);
    let dir = stack.stop_keep();
    let out = run(
        "zt-console",
        &["audit", "verify", "--data-dir", &d.to_string_lossy()],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(bins);
}
