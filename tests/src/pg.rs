//! A private PostgreSQL server for a test run, started from the machine's
//! binaries (`initdb`, `pg_ctl`) in a temporary directory on a free port
//! and a private socket directory, and stopped when dropped. Or, when
//! `ZT_TEST_DATABASE_URL` is set, that server instead.
//!
//! The binaries are found on `PATH` or under `/usr/lib/postgresql/*/bin`.
//! PostgreSQL refuses to run as root: as root the server runs as the
//! `postgres` user (through `runuser`), and the data directory belongs to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// A running private server (or an external one).
pub struct Postgres {
    dir: Option<PathBuf>,
    bin: PathBuf,
    as_postgres: bool,
    /// `postgres://...` of the server, without a database name.
    pub base_url: String,
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

fn find_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir.canonicalize().unwrap_or(dir));
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Postgres {
    /// `ZT_TEST_DATABASE_URL`'s server, or a fresh private one.
    pub fn start() -> anyhow::Result<Postgres> {
        if let Ok(url) = std::env::var("ZT_TEST_DATABASE_URL") {
            let base = url
                .rsplit_once('/')
                .map_or(url.clone(), |(b, _)| b.to_owned());
            return Ok(Postgres {
                dir: None,
                bin: PathBuf::new(),
                as_postgres: false,
                base_url: base,
            });
        }
        let bin = find_bin().context("PostgreSQL binaries (initdb, pg_ctl) not found")?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(zt_proto::random_id("zt-pg-"));
        let data = dir.join("data");
        let sockets = dir.join("run");
        std::fs::create_dir_all(&sockets)?;
        let mut pg = Postgres {
            dir: Some(dir.clone()),
            bin,
            as_postgres,
            base_url: String::new(),
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?
                .success();
            if !ok {
                bail!("could not hand {} to the postgres user", dir.display());
            }
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "zt",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let port = free_port()?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            sockets.display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &dir.join("server.log").to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        pg.base_url = format!("postgres://zt@127.0.0.1:{port}");
        Ok(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .current_dir("/")
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Creates a fresh database and returns its URL.
    pub async fn database(&self, tag: &str) -> anyhow::Result<String> {
        database_on(&self.base_url, tag).await
    }

    /// The server's data directory (private servers only).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// Creates a fresh database on the server at `base_url` and returns its URL.
pub async fn database_on(base_url: &str, tag: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!(
        "zt_{}_{}_{}_{}",
        tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        &zt_proto::random_id("")[..8]
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{base_url}/postgres"))
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    Ok(format!("{base_url}/{name}"))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    &dir.join("data").to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
