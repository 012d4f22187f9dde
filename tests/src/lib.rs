//! Harness for the end-to-end suites: finds the workspace's binaries, starts
//! a real stack with `zt-console up`, and speaks to it the way outside users
//! do — MCP over HTTP for agents, the CLIs for operators and auditors.

pub mod model;
pub mod pg;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::Value;

/// The directory holding the workspace's binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for name in [
        "zt-console",
        "zt-approval",
        "zt-broker",
        "zt-billing",
        "zt-policy",
    ] {
        assert!(
            dir.join(name).exists(),
            "{} not found in {}: build the binaries first (`cargo build --workspace --bins`, which ./scripts/test does)",
            name,
            dir.display()
        );
    }
    dir
}

/// A command for one of the workspace binaries.
pub fn bin(name: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    // Verifier state (`audit verify`) goes to a scratch directory, not the
    // user's home.
    cmd.env_remove("ZT_OPERATOR_TOKEN")
        .env_remove("ZT_DATA_DIR")
        .env("XDG_STATE_HOME", std::env::temp_dir().join("zt-test-state"));
    cmd
}

/// Runs a binary to completion.
pub fn run(name: &str, args: &[&str]) -> Output {
    bin(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Runs a binary and returns its trimmed stdout, failing on a non-zero exit.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `fut` to completion on a runtime of its own (on a thread of its
/// own, so it works from sync tests and from inside another runtime alike).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(fut)
    })
    .join()
    .expect("the future panicked")
}

/// A fresh directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("zt-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A data directory initialized for a stack (approval service, broker),
/// with the broker's wait for a human set to `wait_secs` and, with
/// `roomy`, the rate limits raised for long runs of trials.
pub fn prepare_dir(tag: &str, wait_secs: u64, roomy: bool) -> PathBuf {
    let dir = temp_dir(tag);
    let d = dir.to_string_lossy().into_owned();
    run_ok("zt-approval", &["init", "--data-dir", &d]);
    run_ok("zt-broker", &["init", "--data-dir", &d]);
    let config = dir.join("broker").join("broker.toml");
    let text = std::fs::read_to_string(&config).expect("broker config");
    let text = text.replace(
        "approval_wait_secs = 60",
        &format!("approval_wait_secs = {wait_secs}"),
    );
    std::fs::remove_file(&config).expect("replace broker config");
    std::fs::write(&config, text).expect("broker config");
    if roomy {
        std::fs::write(
            dir.join("policies").join("limits.toml"),
            "[session]\nburst = 100000\nper_minute = 100000\n\n\
             [tool.issue_refund]\nburst = 100000\nper_minute = 100000\n\n\
             [tool.change_plan]\nburst = 100000\nper_minute = 100000\n",
        )
        .expect("limits");
    }
    dir
}

/// Starts `PROGRAM serve --replica NAME` (`zt-broker` or `zt-approval`) on
/// the stack at `dir`, with its stores in `database` when given and, for a
/// broker, the approval service at `approval`; returns it with the URL it
/// prints (`broker_url=` or `approval_url=`).
pub fn spawn_replica(
    program: &str,
    dir: &Path,
    name: &str,
    database: Option<&str>,
    approval: Option<&str>,
) -> (Child, String) {
    let mut cmd = bin(program);
    cmd.args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--replica", name, "--listen", "127.0.0.1:0"])
        .env("ZT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(url) = database {
        cmd.env("ZT_DATABASE_URL", url);
    }
    if let Some(url) = approval {
        cmd.args(["--approval", url]);
    }
    let mut child = cmd.spawn().expect("replica starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let key = if program == "zt-approval" {
        "approval_url="
    } else {
        "broker_url="
    };
    let url = loop {
        let line = lines
            .next()
            .expect("replica prints its URL")
            .expect("a line");
        if let Some(u) = line.strip_prefix(key) {
            break u.to_owned();
        }
    };
    // Keep draining stdout so the replica never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// Starts `zt-approval serve` on the data directory `dir` expecting it to
/// refuse to start (a broken policy file): returns its exit code and what
/// it printed on stderr. Panics if it is still running after 30 s.
pub fn approval_refuses_to_start(dir: &str) -> (Option<i32>, String) {
    let mut child = bin("zt-approval")
        .args(["serve", "--data-dir", dir, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting zt-approval");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().expect("waiting") {
            break s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("zt-approval started despite the broken file");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (code, stderr)
}

/// A stack started with `zt-console up`, stopped on drop.
pub struct Stack {
    child: Child,
    /// MCP endpoint.
    pub broker_url: String,
    /// gRPC endpoint.
    pub approval_url: String,
    /// Data directory.
    pub data_dir: PathBuf,
    keep: bool,
    /// The PostgreSQL database of its services, when not SQLite.
    pub database: Option<String>,
}

impl Stack {
    /// Stops the stack as an operator would (its services sign their audit
    /// chains' heads on the way out) and keeps the data directory.
    pub fn stop_keep(mut self) -> PathBuf {
        self.keep = true;
        self.data_dir.clone()
    }

    /// Starts `zt-console up --data-dir <fresh dir>` and waits for its lines.
    pub fn up(tag: &str) -> anyhow::Result<Stack> {
        Stack::up_at(&temp_dir(tag))
    }

    /// Starts `zt-console up --data-dir DIR` (initialized or not).
    ///
    /// With `ZT_TEST_STACK_POSTGRES` set to a PostgreSQL server's base URL
    /// (`postgres://user@host:port`), every stack gets a fresh database on
    /// it: the same suites then run against PostgreSQL.
    pub fn up_at(dir: &Path) -> anyhow::Result<Stack> {
        match std::env::var("ZT_TEST_STACK_POSTGRES") {
            Ok(base) if !base.is_empty() => {
                let url = block_on(async move { pg::database_on(&base, "stack").await })?;
                Stack::up_with(dir, Some(&url))
            }
            _ => Stack::up_with(dir, None),
        }
    }

    /// Starts `zt-console up --data-dir DIR`, with the services' stores in
    /// the PostgreSQL database `database` when given (through the
    /// environment, as an operator would keep a password off the command
    /// line).
    pub fn up_with(dir: &Path, database: Option<&str>) -> anyhow::Result<Stack> {
        Stack::spawn(Stack::up_command(dir, &[]), database)
    }

    /// Starts `zt-console up --users --data-dir DIR` (as root): each service
    /// as its own operating-system user, run from the binaries in `bins`
    /// (which those users can reach).
    pub fn up_as_users(dir: &Path, bins: &Path) -> anyhow::Result<Stack> {
        let mut cmd = Stack::up_command(dir, &["--users"]);
        cmd.env("ZT_BIN_DIR", bins);
        Stack::spawn(cmd, None)
    }

    /// Starts `zt-console up --data-dir DIR` with each service on its own
    /// database URL (its own role), given through the environment.
    pub fn up_with_roles(
        dir: &Path,
        approval: &str,
        broker: &str,
        billing: &str,
    ) -> anyhow::Result<Stack> {
        let mut cmd = Stack::up_command(dir, &[]);
        cmd.env("ZT_APPROVAL_DATABASE_URL", approval)
            .env("ZT_BROKER_DATABASE_URL", broker)
            .env("ZT_BILLING_DATABASE_URL", billing);
        Stack::spawn(cmd, None)
    }

    /// Starts `zt-console up ARGS --data-dir DIR` (SQLite), e.g. `--tls`.
    pub fn up_args(dir: &Path, args: &[&str]) -> anyhow::Result<Stack> {
        Stack::spawn(Stack::up_command(dir, args), None)
    }

    fn up_command(dir: &Path, args: &[&str]) -> Command {
        let mut cmd = bin("zt-console");
        cmd.arg("up").args(args).arg("--data-dir").arg(dir);
        for var in [
            "ZT_DATABASE_URL",
            "ZT_APPROVAL_DATABASE_URL",
            "ZT_BROKER_DATABASE_URL",
            "ZT_BILLING_DATABASE_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn spawn(mut cmd: Command, database: Option<&str>) -> anyhow::Result<Stack> {
        match database {
            Some(url) => cmd.env("ZT_DATABASE_URL", url),
            None => cmd.env_remove("ZT_DATABASE_URL"),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting zt-console up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut broker, mut approval, mut data) = (None, None, None);
        while broker.is_none() || approval.is_none() || data.is_none() {
            let line = match rx.recv_timeout(Duration::from_secs(90)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!("zt-console up did not print its endpoints");
                }
            };
            if let Some(v) = line.strip_prefix("broker_url=") {
                broker = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("approval_url=") {
                approval = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data_dir=") {
                data = Some(PathBuf::from(v));
            }
        }
        Ok(Stack {
            child,
            broker_url: broker.unwrap_or_default(),
            approval_url: approval.unwrap_or_default(),
            data_dir: data.unwrap_or_default(),
            keep: false,
            database: database.map(str::to_owned),
        })
    }

    /// Where the stack's audit chains are: its PostgreSQL database, or
    /// `DIR/audit.db`.
    pub fn audit_location(&self) -> zt_proto::db::Location {
        match &self.database {
            Some(url) => zt_proto::db::Location::Postgres(url.clone()),
            None => zt_proto::db::Location::File(self.data_dir.join("audit.db")),
        }
    }

    /// Where the example backend's records are.
    pub fn backend_location(&self) -> zt_proto::db::Location {
        match &self.database {
            Some(url) => zt_proto::db::Location::Postgres(url.clone()),
            None => zt_proto::db::Location::File(self.data_dir.join("backend").join("backend.db")),
        }
    }

    /// Where the approval service's state is.
    pub fn approval_location(&self) -> zt_proto::db::Location {
        match &self.database {
            Some(url) => zt_proto::db::Location::Postgres(url.clone()),
            None => {
                zt_proto::db::Location::File(self.data_dir.join("approval").join("approval.db"))
            }
        }
    }

    /// The data directory as a string argument.
    pub fn dir(&self) -> String {
        self.data_dir.to_string_lossy().into_owned()
    }

    /// A session token for `agent` acting for `human`.
    pub fn session_token(&self, agent: &str, human: &str) -> String {
        run_ok(
            "zt-approval",
            &[
                "token",
                "issue",
                "--data-dir",
                &self.dir(),
                "--agent",
                agent,
                "--for",
                human,
            ],
        )
    }

    /// Revokes session `sid` through `zt-approval session revoke` (the
    /// approval service audits it and tells the brokers).
    pub fn revoke_session(&self, sid: &str, reason: &str) -> String {
        run_ok(
            "zt-approval",
            &[
                "session",
                "revoke",
                "--data-dir",
                &self.dir(),
                "--session",
                sid,
                "--reason",
                reason,
            ],
        )
    }

    /// An operator token.
    pub fn operator_token(&self, name: &str, role: &str, limit: i64) -> String {
        run_ok(
            "zt-approval",
            &[
                "token",
                "operator",
                "--data-dir",
                &self.dir(),
                "--name",
                name,
                "--role",
                role,
                "--limit",
                &limit.to_string(),
            ],
        )
    }

    /// Runs `zt-console ARGS --data-dir DIR` (e.g. `audit query --json`)
    /// and parses each line of its output as JSON, failing on a non-zero exit.
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = bin("zt-console")
            .args(args)
            .args(["--data-dir", &self.dir()])
            .output()
            .expect("running zt-console");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Runs the agent-side hook (`zt-policy hook`) of this stack for a
    /// call of the broker's `tool` with `input`, as the session `token`.
    pub fn hook(&self, token: &str, tool: &str, input: &Value) -> Output {
        use std::io::Write;
        let mut child = bin("zt-policy")
            .arg("hook")
            .env("ZT_DATA_DIR", &self.data_dir)
            .env("BROKER_SESSION_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running zt-policy hook");
        let payload =
            serde_json::json!({"tool_name": format!("mcp__broker__{tool}"), "tool_input": input});
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(payload.to_string().as_bytes());
        }
        child.wait_with_output().expect("zt-policy hook")
    }

    /// Runs `zt-console ARGS --data-dir DIR` as operator `token`.
    pub fn console(&self, token: &str, args: &[&str]) -> Output {
        bin("zt-console")
            .args(args)
            .args(["--data-dir", &self.dir()])
            .env("ZT_OPERATOR_TOKEN", token)
            .output()
            .expect("running zt-console")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SIGTERM lets `up` stop its services; then reap.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                if !self.keep {
                    let _ = std::fs::remove_dir_all(&self.data_dir);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sid` claim of a session token (read, not verified: for naming the
/// session a test revokes).
pub fn sid_of(jwt: &str) -> String {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["sid"].as_str().expect("sid").to_owned()
}

/// An MCP client session.
pub type Agent = zt_console::agent::Session;

pub use zt_console::agent::{connect, result_status as status, result_text as text};

/// Calls a tool with JSON arguments.
pub async fn call(agent: &Agent, tool: &str, args: Value) -> anyhow::Result<CallToolResult> {
    let args = match args {
        Value::Object(m) => m,
        _ => bail!("arguments must be an object"),
    };
    Ok(agent
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await?)
}

/// The stored bodies (canonical JSON) of one audit chain, in order.
pub async fn audit_bodies(data_dir: &Path, chain: &str) -> Vec<String> {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", data_dir.join("audit.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("audit db");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT body FROM audit_entries WHERE chain = ? ORDER BY seq")
            .bind(chain)
            .fetch_all(&mut conn)
            .await
            .expect("audit rows");
    let _ = conn.close().await;
    rows
}

/// A gRPC client of the stack's approval service presenting `token`.
pub struct Grpc {
    client: zt_proto::pb::approval_client::ApprovalClient<tonic::transport::Channel>,
    token: String,
}

impl Grpc {
    /// Connects to `url`.
    pub async fn connect(url: &str, token: &str) -> Grpc {
        Grpc {
            client: zt_proto::pb::approval_client::ApprovalClient::connect(url.to_owned())
                .await
                .expect("approval service reachable"),
            token: token.to_owned(),
        }
    }

    /// A request carrying the bearer token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().expect("header"),
        );
        r
    }

    /// The client.
    pub fn client(
        &self,
    ) -> zt_proto::pb::approval_client::ApprovalClient<tonic::transport::Channel> {
        self.client.clone()
    }
}

/// The broker's answer to a raw HTTP request.
pub struct Raw {
    /// HTTP status.
    pub status: u16,
    /// The `WWW-Authenticate` header, if any.
    pub challenge: String,
    /// The body.
    pub body: String,
}

/// Posts a raw MCP `tools/list`, with `token` as the bearer if given.
pub async fn raw_list(url: &str, token: Option<&str>) -> Raw {
    raw_post(
        url,
        token,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await
}

/// Posts a raw JSON-RPC body to the broker, with `token` as the bearer if given.
pub async fn raw_post(url: &str, token: Option<&str>, body: &str) -> Raw {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.expect("broker answers");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Raw {
        status,
        challenge,
        body: resp.text().await.unwrap_or_default(),
    }
}

/// A read-only connection to the stack's example backend database.
pub async fn backend(data_dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let db = data_dir.join("backend").join("backend.db");
    sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .expect("backend db")
}

/// The model saw nothing of the internals.
pub fn safe(shown: &str) -> Result<(), String> {
    let lower = shown.to_lowercase();
    for leak in [
        "select ",
        "insert ",
        "sqlite",
        "sqlx",
        "panicked",
        "backtrace",
        "/tmp/",
        ".rs:",
        "127.0.0.1",
        "private key",
        "ztb_",
        "stack trace",
        "error {",
    ] {
        if lower.contains(leak) {
            return Err(format!("leaks `{leak}`: {shown}"));
        }
    }
    if shown.chars().count() > 600 {
        return Err(format!(
            "message too long ({} chars)",
            shown.chars().count()
        ));
    }
    Ok(())
}
