//! Public keys pinned as files, reloadable for key rotation.
//!
//! A verifier trusts `DIR/public/<name>.pem` (the current key) and every
//! `DIR/public/<name>-<kid>.pem` (keys retired by a rotation, trusted until
//! the tokens and grants they signed have expired and the file is removed).
//! The set is re-read when a token names a key it does not know (at most
//! every [`MIN_RELOAD`]) and every [`MAX_AGE`], so a rotation or a
//! retirement takes effect without restarting anything.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::grant::{Grant, GrantError};
use crate::keys::{KeyError, PublicKey};
use crate::stack::Layout;
use crate::token::{self, Expect, KeySet, Lifetime, TokenError, TokenType};

/// Shortest interval between reloads forced by unknown keys (a flood of
/// made-up key ids costs at most a few directory reads a second).
pub const MIN_RELOAD: Duration = Duration::from_millis(250);
/// Longest a loaded set is used before it is re-read.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// A reloadable set of pinned keys named `name`.
#[derive(Debug)]
pub struct PinnedKeys {
    dir: PathBuf,
    name: String,
    state: RwLock<(KeySet, Instant)>,
    forced: std::sync::Mutex<Option<Instant>>,
}

/// Reads every pinned key named `name` in `dir`.
pub fn read_pinned(dir: &std::path::Path, name: &str) -> Result<Vec<PublicKey>, KeyError> {
    let current = format!("{name}.pem");
    let retired = format!("{name}-");
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| KeyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if file == current || (file.starts_with(&retired) && file.ends_with(".pem")) {
            keys.push(PublicKey::read(&path)?);
        }
    }
    Ok(keys)
}

impl PinnedKeys {
    /// Loads the keys named `name` from the stack's `public/` directory;
    /// fails if there is none.
    pub fn load(layout: &Layout, name: &str) -> Result<PinnedKeys, KeyError> {
        let dir = layout.public_dir();
        let keys = read_pinned(&dir, name)?;
        if keys.is_empty() {
            return Err(KeyError::Io {
                path: layout.public_key(name),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no pinned key"),
            });
        }
        Ok(PinnedKeys {
            dir,
            name: name.to_owned(),
            state: RwLock::new((KeySet::new(keys), Instant::now())),
            forced: std::sync::Mutex::new(None),
        })
    }

    /// Like [`PinnedKeys::load`], but starts empty when no key is pinned yet
    /// (a peer that has not been initialized): its first use re-reads.
    pub fn lazy(layout: &Layout, name: &str) -> PinnedKeys {
        let keys = read_pinned(&layout.public_dir(), name).unwrap_or_default();
        let loaded = Instant::now()
            .checked_sub(MAX_AGE * 2)
            .unwrap_or_else(Instant::now);
        PinnedKeys {
            dir: layout.public_dir(),
            name: name.to_owned(),
            state: RwLock::new((KeySet::new(keys), loaded)),
            forced: std::sync::Mutex::new(None),
        }
    }

    /// The keys now trusted (reloaded first if the set is old).
    pub fn current(&self) -> KeySet {
        let stale = self
            .state
            .read()
            .map(|s| s.1.elapsed() > MAX_AGE)
            .unwrap_or(true);
        if stale {
            self.reload();
        }
        match self.state.read() {
            Ok(s) => s.0.clone(),
            Err(_) => KeySet::default(),
        }
    }

    /// Re-reads the files. A read failure keeps the previous set.
    fn reload(&self) {
        let fresh = read_pinned(&self.dir, &self.name);
        if let Ok(mut state) = self.state.write() {
            match fresh {
                Ok(keys) if !keys.is_empty() => *state = (KeySet::new(keys), Instant::now()),
                _ => state.1 = Instant::now(),
            }
        }
    }

    /// Reloads unless an unknown key forced a reload less than
    /// [`MIN_RELOAD`] ago; returns whether it did.
    fn reload_for_unknown(&self) -> bool {
        let due = match self.forced.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= MIN_RELOAD);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.reload();
        }
        due
    }

    /// Verifies a token, reloading once if it names an unknown key.
    pub fn verify<C: DeserializeOwned + Lifetime>(
        &self,
        jwt: &str,
        typ: TokenType,
        expect: &Expect<'_>,
    ) -> Result<C, TokenError> {
        match token::verify(jwt, &self.current(), typ, expect) {
            Err(TokenError::UnknownKey) if self.reload_for_unknown() => {
                token::verify(jwt, &self.current(), typ, expect)
            }
            other => other,
        }
    }

    /// Opens a sealed grant, reloading once if it names an unknown key.
    pub fn open_grant(&self, sealed: &str) -> Result<Grant, GrantError> {
        match Grant::open(sealed, &self.current()) {
            Err(GrantError::UnknownKey) if self.reload_for_unknown() => {
                Grant::open(sealed, &self.current())
            }
            other => other,
        }
    }
}
