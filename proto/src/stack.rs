//! The layout of a stack's data directory, shared by every process.
//!
//! ```text
//! DIR/stack.json             stack id, issuer and audiences (public)
//! DIR/public/*.pem           public keys other domains pin
//! DIR/policies/              policy data (tools, humans, rules), reloadable
//! DIR/audit.db               audit chains of every writer (SQLite)
//! DIR/approval/              approval service only: its private keys, its database
//! DIR/broker/                broker only: its private keys, backend credentials (incl. billing.key), its database
//! DIR/backend/               the example backend: records database, billing API config
//! DIR/run/                   endpoints of running services
//! ```
//!
//! Each service creates its own private directory `0700` (and strips any
//! access for others from an existing one), so the approval
//! service's keys are not readable through the broker's and vice versa when
//! they run as different users.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the layout.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `stack.json` is not valid.
    #[error("{path}: not a valid stack file: {reason}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No stack has been initialized there.
    #[error(
        "{0} is not an initialized stack (run `zt-approval init --data-dir {0}` or `zt-console up --data-dir {0}`)"
    )]
    Missing(PathBuf),
}

/// Identity of a stack: who issues tokens and whom they are for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackInfo {
    /// Random id of this stack.
    pub stack_id: String,
    /// `iss` of every token the approval service issues.
    pub issuer: String,
    /// `aud` of session tokens: the broker's resource identifier.
    pub broker_audience: String,
    /// `aud` of operator and service tokens: the approval service.
    pub approval_audience: String,
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `stack.json`.
    pub fn stack_file(&self) -> PathBuf {
        self.root.join("stack.json")
    }

    /// `trust.json`: the stack's public trust anchor, the approval
    /// service's token key as set up, for verifiers with no private
    /// directory of their own (the policy hook, running as the agent).
    /// Written once at set-up; a file dropped into `public/` never adds to it.
    pub fn trust_file(&self) -> PathBuf {
        self.root.join("trust.json")
    }

    /// `tls-ca.pem`: the certificate of the stack's own TLS CA, which
    /// clients of the approval service's gRPC port trust for it. Public;
    /// written once at set-up, never replaced by a service.
    pub fn tls_ca_file(&self) -> PathBuf {
        self.root.join("tls-ca.pem")
    }

    /// A public key file other domains pin, e.g. `public("approval-token")`.
    pub fn public_key(&self, name: &str) -> PathBuf {
        self.root.join("public").join(format!("{name}.pem"))
    }

    /// The pinned public key of audit chain `chain`.
    pub fn audit_key(&self, chain: &str) -> PathBuf {
        self.public_key(&format!("audit-{chain}"))
    }

    /// The directory of public keys.
    pub fn public_dir(&self) -> PathBuf {
        self.root.join("public")
    }

    /// Policy data.
    pub fn policies(&self) -> PathBuf {
        self.root.join("policies")
    }

    /// The shared audit database file.
    pub fn audit_db(&self) -> PathBuf {
        self.root.join("audit.db")
    }

    /// A service's private directory (`approval`, `broker`, `backend`).
    pub fn private(&self, service: &str) -> PathBuf {
        self.root.join(service)
    }

    /// Where a running service records its endpoint.
    pub fn endpoint_file(&self, service: &str) -> PathBuf {
        self.root.join("run").join(format!("{service}.url"))
    }

    /// Creates a private directory with mode `0700`. An existing one keeps
    /// its owner and group bits (a deployment with one user per service
    /// gives a group access where a file is shared, e.g. `backend/` to the
    /// broker's records reader) but loses any access for others.
    pub fn create_private(&self, service: &str) -> Result<PathBuf, StackError> {
        let dir = self.private(service);
        let io = |source| StackError::Io {
            path: dir.clone(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            match std::fs::symlink_metadata(&dir) {
                Ok(m) => {
                    let mode = m.permissions().mode() & 0o7777;
                    if mode & 0o007 != 0 {
                        std::fs::set_permissions(
                            &dir,
                            std::fs::Permissions::from_mode(mode & !0o007),
                        )
                        .map_err(io)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(self.root()).map_err(io)?;
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&dir)
                        .map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            }
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(&dir).map_err(io)?;
        Ok(dir)
    }

    /// Reads `stack.json`.
    pub fn stack(&self) -> Result<StackInfo, StackError> {
        let path = self.stack_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StackError::Missing(self.root.clone()));
            }
            Err(source) => return Err(StackError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| StackError::Invalid {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads `stack.json`, creating a new stack identity if there is none.
    pub fn stack_or_create(&self) -> Result<StackInfo, StackError> {
        match self.stack() {
            Err(StackError::Missing(_)) => {}
            other => return other,
        }
        let id = crate::random_id("");
        let short = &id[..12];
        let info = StackInfo {
            stack_id: short.to_owned(),
            issuer: format!("urn:zt:issuer:{short}"),
            broker_audience: format!("urn:zt:broker:{short}"),
            approval_audience: format!("urn:zt:approval:{short}"),
        };
        let path = self.stack_file();
        std::fs::create_dir_all(&self.root).map_err(|source| StackError::Io {
            path: self.root.clone(),
            source,
        })?;
        let text = serde_json::to_string_pretty(&info).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| StackError::Io { path, source })?;
        Ok(info)
    }

    /// Records a running service's endpoint.
    pub fn write_endpoint(&self, service: &str, url: &str) -> Result<(), StackError> {
        let path = self.endpoint_file(service);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StackError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, url).map_err(|source| StackError::Io { path, source })
    }

    /// Reads a running service's endpoint, if recorded.
    pub fn endpoint(&self, service: &str) -> Option<String> {
        std::fs::read_to_string(self.endpoint_file(service))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
}
