//! Atomic snapshot swapping for reloads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::{LoadError, PolicyBundle};

/// Holds the current [`PolicyBundle`] snapshot and swaps it atomically on reload.
///
/// Readers take an `Arc` with [`PolicyStore::current`] and decide on that snapshot
/// for as long as they hold it; a reload never changes a snapshot in use. A
/// reload that fails (unreadable file, parse error, failed startup check) keeps
/// the previous snapshot and returns the error. Watching the files is left to the
/// caller (e.g. the broker calls `reload` from a file watcher).
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicyBundle>>,
}

impl PolicyStore {
    /// Loads `dir` and holds it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<PolicyStore, LoadError> {
        let dir = dir.into();
        let bundle = PolicyBundle::load(&dir)?;
        Ok(PolicyStore {
            dir,
            current: RwLock::new(Arc::new(bundle)),
        })
    }

    /// Holds an already loaded bundle; reloads read the bundle's directory.
    pub fn from_bundle(bundle: PolicyBundle) -> PolicyStore {
        PolicyStore {
            dir: bundle.dir().to_path_buf(),
            current: RwLock::new(Arc::new(bundle)),
        }
    }

    /// The directory reloads read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<PolicyBundle> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the directory; on success swaps the snapshot atomically, on error
    /// keeps the old one and returns the error.
    pub fn reload(&self) -> Result<(), LoadError> {
        let fresh = Arc::new(PolicyBundle::load(&self.dir)?);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}
