//! One operating-system user per service (`zt-console up --users`).
//!
//! The trust domains are processes; on one machine they are only as
//! separate as their users. With `--users` the console (run as root)
//! prepares the data directory's ownership and modes and starts each service
//! under its own user with exactly the groups its shared files need:
//!
//! | user | groups | may write |
//! |---|---|---|
//! | `zt-approval` | `zt`, `zt-audit` | `approval/`, `audit.db`, its files in `public/` and `run/` |
//! | `zt-broker` | `zt`, `zt-audit`, `zt-records` | `broker/`, `audit.db`, its files in `public/` and `run/`; the records file (opened read-only) |
//! | `zt-billing` | `zt`, `zt-records` | the records file, its files in `run/` |
//!
//! Anyone else (the agent's user above all) reads only what is public:
//! `stack.json`, `trust.json`, `public/`, `policies/`. `scripts/system-users`
//! creates the users and groups.
//!
//! Everything here runs as root over a directory other users can write
//! into, so it never follows a symbolic link: a link found where a file of
//! the layout should be stops the start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User};
use zt_proto::stack::Layout;

/// The group of every service (`run/`, `public/`).
const SERVICES: &str = "zt";
/// The group of the audit writers (`audit.db`).
const AUDIT: &str = "zt-audit";
/// The group of the records database's users (`backend/`).
const RECORDS: &str = "zt-records";

/// Who a child process runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Identity {
    /// Makes the calling process this identity: supplementary groups,
    /// group, then user (after which it can no longer change them).
    ///
    /// Meant for the child between `fork` and `exec`: it allocates nothing
    /// and makes only async-signal-safe system calls.
    pub fn become_self(&self) -> std::io::Result<()> {
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setgid(self.gid)?;
        nix::unistd::setuid(self.uid)?;
        Ok(())
    }
}

/// The services' users and groups, looked up by name.
#[derive(Debug, Clone)]
pub struct SystemUsers {
    /// `zt-approval`.
    pub approval: Identity,
    /// `zt-broker`.
    pub broker: Identity,
    /// `zt-billing`.
    pub billing: Identity,
    services: Gid,
    audit: Gid,
    records: Gid,
}

fn user(name: &str) -> anyhow::Result<User> {
    User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .with_context(|| {
            format!("no user {name}: create the services' users with scripts/system-users")
        })
}

fn group(name: &str) -> anyhow::Result<Gid> {
    Ok(Group::from_name(name)
        .with_context(|| format!("looking up group {name}"))?
        .with_context(|| {
            format!("no group {name}: create the services' users with scripts/system-users")
        })?
        .gid)
}

impl SystemUsers {
    /// Looks the users and groups up; fails naming the first missing one,
    /// or if this process is not root (only root can start processes as
    /// other users).
    pub fn lookup() -> anyhow::Result<SystemUsers> {
        if !Uid::effective().is_root() {
            bail!("--users starts each service as its own user, which needs root");
        }
        let services = group(SERVICES)?;
        let audit = group(AUDIT)?;
        let records = group(RECORDS)?;
        let identity = |name: &str, groups: Vec<Gid>| -> anyhow::Result<Identity> {
            let u = user(name)?;
            if u.uid.is_root() || u.gid.as_raw() == 0 {
                bail!("user {name} must not be root or in group root");
            }
            Ok(Identity {
                uid: u.uid,
                gid: u.gid,
                groups,
            })
        };
        Ok(SystemUsers {
            approval: identity("zt-approval", vec![services, audit])?,
            broker: identity("zt-broker", vec![services, audit, records])?,
            billing: identity("zt-billing", vec![services, records])?,
            services,
            audit,
            records,
        })
    }

    /// Gives the data directory (initialized, services stopped) the owners
    /// and modes of the table in this module's documentation. Idempotent.
    pub fn prepare(&self, layout: &Layout) -> anyhow::Result<()> {
        let root = Uid::from_raw(0);
        let root_gid = Gid::from_raw(0);
        reachable(layout.root())?;
        // DIR: the audit writers create `audit.db-wal` and `-shm` beside it
        // (setgid: in group zt-audit); sticky: no one removes or renames
        // another's file.
        set(layout.root(), root, self.audit, 0o3775)?;
        for public in [
            layout.stack_file(),
            layout.trust_file(),
            layout.tls_ca_file(),
        ] {
            if exists(&public)? {
                set(&public, root, root_gid, 0o644)?;
            }
        }
        set(&layout.policies(), root, root_gid, 0o755)?;
        tree(&layout.policies(), &|_, dir| {
            Ok(Some((root, root_gid, if dir { 0o755 } else { 0o644 })))
        })?;
        // public/ and run/: every service adds its own files; no one
        // else's can be replaced (sticky), and no one outside the services
        // adds any.
        for shared in [layout.public_dir(), layout.root().join("run")] {
            make_dir(&shared)?;
            set(&shared, root, self.services, 0o1775)?;
        }
        tree(&layout.public_dir(), &|name, _| {
            let owner = if name.starts_with("approval") || name.starts_with("audit-approval") {
                self.approval.uid
            } else if name.starts_with("broker") || name.starts_with("audit-broker") {
                self.broker.uid
            } else {
                root
            };
            Ok(Some((owner, root_gid, 0o644)))
        })?;
        // Endpoints of an earlier run go: each service writes its own.
        remove_endpoints(&layout.root().join("run"))?;
        tree(&layout.root().join("run"), &|_, _| {
            Ok(Some((root, root_gid, 0o644)))
        })?;
        // The audit database, created here so that it is the writers'
        // group's from the start (SQLite gives -wal and -shm its mode).
        let audit_db = layout.audit_db();
        for suffix in ["", "-wal", "-shm"] {
            let path = audit_db.with_file_name(format!("audit.db{suffix}"));
            if suffix.is_empty() && !exists(&path)? {
                create_empty(&path)?;
            }
            if exists(&path)? {
                set(&path, self.approval.uid, self.audit, 0o660)?;
            }
        }
        for (service, who) in [("approval", &self.approval), ("broker", &self.broker)] {
            let dir = layout.private(service);
            set(&dir, who.uid, who.gid, 0o700)?;
            tree(&dir, &|_, _| Ok(Some((who.uid, who.gid, 0))))?;
        }
        // backend/: the billing API's; the broker reads the records file
        // through group zt-records, never billing.toml (0600).
        let backend = layout.private("backend");
        set(&backend, self.billing.uid, self.records, 0o3770)?;
        tree(&backend, &|name, _| {
            Ok(Some(if name.starts_with("backend.db") {
                (self.billing.uid, self.records, 0o660)
            } else {
                (self.billing.uid, self.billing.gid, 0o600)
            }))
        })?;
        Ok(())
    }
}

/// Every directory above `dir` must let others pass (`o+x`), or the
/// services cannot reach their files.
fn reachable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for above in dir.ancestors().skip(1) {
        let m = fs::metadata(above).with_context(|| format!("reading {}", above.display()))?;
        if m.mode() & 0o001 == 0 {
            bail!(
                "{} is not searchable by other users (mode {:o}), so the services cannot reach {}: put the data directory elsewhere",
                above.display(),
                m.mode() & 0o7777,
                dir.display()
            );
        }
    }
    Ok(())
}

fn meta(path: &Path) -> anyhow::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "{} is a symbolic link; refusing to touch it",
                path.display()
            )
        }
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn exists(path: &Path) -> anyhow::Result<bool> {
    Ok(meta(path)?.is_some())
}

fn make_dir(path: &Path) -> anyhow::Result<()> {
    if !exists(path)? {
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(())
}

fn create_empty(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Sets owner and mode of one file or directory (`mode` 0: keep the mode),
/// through a descriptor opened without following a link, so a link swapped
/// in after the check is not followed either.
fn set(path: &Path, uid: Uid, gid: Gid, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if meta(path)?.is_none() {
        bail!("{} is missing: initialize the stack first", path.display());
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {} (not following links)", path.display()))?;
    std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw()))
        .with_context(|| format!("chown {}", path.display()))?;
    if mode != 0 {
        // chown cleared any set-id bits; the mode sets them again.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

/// What to do with one entry below a directory: its name and whether it is
/// a directory in, `None` (leave it) or owner, group and mode out.
type Rule<'a> = dyn Fn(&str, bool) -> anyhow::Result<Option<(Uid, Gid, u32)>> + 'a;

/// Applies `rule` to everything below `dir`, never following a link.
fn tree(dir: &Path, rule: &Rule<'_>) -> anyhow::Result<()> {
    if meta(dir)?.is_none() {
        return Ok(());
    }
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let m = meta(&path)?.context("vanished")?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some((uid, gid, mode)) = rule(&name, m.is_dir())? {
            set(&path, uid, gid, mode)?;
        }
        if m.is_dir() {
            tree(&path, rule)?;
        }
    }
    Ok(())
}

fn remove_endpoints(run: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(run).with_context(|| format!("listing {}", run.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "url") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
