//! Runs a local stack: the example backend's billing API, the approval
//! service and the broker, each as its own process with its own keys, in one
//! data directory.
//!
//! The console only starts and stops them; it never reads their private
//! keys. Each child gets `PR_SET_PDEATHSIG`, so a console killed outright
//! takes its stack with it instead of leaving services holding ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zt_proto::db::DbUrl;
use zt_proto::stack::Layout;

use crate::users::{Identity, SystemUsers};

/// Where to find the other binaries: `ZT_BIN_DIR`, else beside this
/// executable, else `PATH`.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ZT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

fn missing(name: &str) -> String {
    format!(
        "cannot run {} (looked beside zt-console and on PATH; build them all with `cargo build --workspace --bins`)",
        binary(name).display()
    )
}

/// A command for one of the stack's binaries, with a clean environment:
/// services get only what they need, never the console's secrets.
pub fn command(name: &str) -> Command {
    command_as(name, None)
}

/// [`command`], run as `who` (its user, group and supplementary groups)
/// when given.
pub fn command_as(name: &str, who: Option<&Identity>) -> Command {
    let mut cmd = Command::new(binary(name));
    cmd.env_clear();
    for var in ["PATH", "HOME", "TMPDIR", "LANG", "ZT_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.stdin(Stdio::null());
    let who = who.cloned();
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (setgroups, setgid, setuid, prctl) on data moved in
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(who) = &who {
                who.become_self()?;
            }
            // After the user change, which clears the parent-death signal.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd
}

/// Runs a binary to completion; fails with its stderr if it fails.
pub async fn run_to_end(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = command(name)
        .args(args)
        .output()
        .await
        .with_context(|| missing(name))?;
    if !out.status.success() {
        bail!(
            "{name} {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The PostgreSQL database each service keeps its stores in (SQLite files
/// in the data directory where none is given). They may be one URL, or one
/// per service, each connecting as its own role (set up by the services'
/// `migrate` commands).
#[derive(Debug, Clone, Default)]
pub struct Databases {
    /// The approval service's state and audit chain.
    pub approval: Option<DbUrl>,
    /// The broker's state and audit chain, and its reads of the records.
    pub broker: Option<DbUrl>,
    /// The billing API's records.
    pub billing: Option<DbUrl>,
}

impl Databases {
    /// One database for every service.
    pub fn shared(url: &str) -> Databases {
        Databases {
            approval: Some(DbUrl::new(url)),
            broker: Some(DbUrl::new(url)),
            billing: Some(DbUrl::new(url)),
        }
    }
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The approval service's gRPC URL.
    pub approval_url: String,
    /// The broker's MCP endpoint.
    pub broker_url: String,
    children: Vec<(&'static str, Child)>,
}

/// Starts a service and waits for its `key=value` readiness line on stdout.
async fn spawn_ready(
    name: &'static str,
    args: &[&str],
    key: &str,
    log: &Path,
    env: &[(&str, String)],
    who: Option<&Identity>,
) -> anyhow::Result<(Child, String)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command_as(name, who)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| missing(name))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("{key}=");
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix(&prefix) {
                return Ok::<_, anyhow::Error>(Some(url.trim().to_owned()));
            }
        }
        Ok(None)
    };
    let why = match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(Ok(Some(url))) => {
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
        Ok(Ok(None)) => "exited before it was ready".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "did not become ready within 60 s".to_owned(),
    };
    let _ = child.start_kill();
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = logged.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    bail!("{name} {why}; its log ({}):\n{tail}", log.display())
}

impl Stack {
    /// Initializes `data_dir` (keys, policies, example backend) if needed and
    /// starts the approval service and the broker on loopback ports.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Stack> {
        Stack::start_with(data_dir, &Databases::default(), None, false).await
    }

    /// [`Stack::start`], with each service's stores in the PostgreSQL
    /// database of `databases` (passed to them in their environment, never
    /// on a command line where `ps` shows it),
    /// and each service run as its own operating-system user when `users`
    /// is given (the data directory's owners and modes prepared first), and
    /// the approval service's gRPC port on TLS from the stack's CA with `tls`.
    pub async fn start_with(
        data_dir: &Path,
        databases: &Databases,
        users: Option<&SystemUsers>,
        tls: bool,
    ) -> anyhow::Result<Stack> {
        let env = |url: &Option<DbUrl>| -> Vec<(&str, String)> {
            url.iter()
                .map(|u| ("ZT_DATABASE_URL", u.expose().to_owned()))
                .collect()
        };
        let (approval_env, broker_env, billing_env) = (
            env(&databases.approval),
            env(&databases.broker),
            env(&databases.billing),
        );
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        let dir = data_dir.to_string_lossy().into_owned();
        run_to_end("zt-approval", &["init", "--data-dir", &dir]).await?;
        run_to_end("zt-broker", &["init", "--data-dir", &dir]).await?;
        // The billing API issues its key straight into the broker's private
        // directory: the broker is the only holder.
        let key_out = Layout::new(&data_dir)
            .private("broker")
            .join("billing.key")
            .to_string_lossy()
            .into_owned();
        run_to_end(
            "zt-billing",
            &["init", "--data-dir", &dir, "--key-out", &key_out],
        )
        .await?;
        let run = data_dir.join("run");
        std::fs::create_dir_all(&run)?;
        if let Some(users) = users {
            users.prepare(&Layout::new(&data_dir))?;
        }
        let (billing, billing_url) = spawn_ready(
            "zt-billing",
            &["serve", "--data-dir", &dir, "--listen", "127.0.0.1:0"],
            "billing_url",
            &run.join("billing.log"),
            &billing_env,
            users.map(|u| &u.billing),
        )
        .await?;
        let mut approval_args = vec!["serve", "--data-dir", &dir, "--listen", "127.0.0.1:0"];
        if tls {
            approval_args.push("--tls");
        }
        let (approval, approval_url) = spawn_ready(
            "zt-approval",
            &approval_args,
            "approval_url",
            &run.join("approval.log"),
            &approval_env,
            users.map(|u| &u.approval),
        )
        .await?;
        let mut stack = Stack {
            data_dir,
            approval_url: approval_url.clone(),
            broker_url: String::new(),
            children: vec![("zt-billing", billing), ("zt-approval", approval)],
        };
        let (broker, broker_url) = spawn_ready(
            "zt-broker",
            &[
                "serve",
                "--data-dir",
                &dir,
                "--listen",
                "127.0.0.1:0",
                "--approval",
                &approval_url,
                "--billing",
                &billing_url,
            ],
            "broker_url",
            &run.join("broker.log"),
            &broker_env,
            users.map(|u| &u.broker),
        )
        .await?;
        stack.children.push(("zt-broker", broker));
        stack.broker_url = broker_url;
        Ok(stack)
    }

    /// Whether every service is still running; names the first that is not.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status})"));
            }
        }
        Ok(())
    }

    /// Stops the services: an interrupt first (they finish in-flight calls),
    /// then a kill after a grace period.
    pub async fn stop(mut self) {
        // Broker first, so nothing new is escalated to a stopping approval service.
        self.children.reverse();
        for (_, child) in &mut self.children {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: plain syscall on a child we own.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(service = name, "did not stop in time; killing");
                let _ = child.kill().await;
            }
        }
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_data_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(zt_proto::random_id(prefix))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
