//! Public keys pinned as files, reloadable for key rotation.
//!
//! Key files live in `DIR/public/`: `<name>.pem` (the current key) and
//! `<name>-<kid>.pem` (keys retired by a rotation, kept until what they
//! signed has expired and the file is removed). Services write there at run
//! time, so a file there proves nothing by itself: a verifier trusts a key
//! file only if the key is one of its **trust roots** (kept in its own
//! private directory, [`TrustRoots`], pinned when the stack was set up) or
//! was introduced by a trusted key of the same name through a signed
//! rotation record, `<name>-<kid>.intro` ([`Introduction`]). A key dropped
//! into `public/` by anyone without a trusted private key is ignored.
//!
//! The set is re-read when a token names a key it does not know (at most
//! every [`MIN_RELOAD`]) and every [`MAX_AGE`], so a rotation or a
//! retirement takes effect without restarting anything.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::canonical::{self, Domain};
use crate::grant::{Grant, GrantError};
use crate::keys::{KeyError, KeyPair, PublicKey};
use crate::stack::Layout;
use crate::token::{self, Expect, KeySet, Lifetime, TokenError, TokenType};

/// Shortest interval between reloads forced by unknown keys (a flood of
/// made-up key ids costs at most a few directory reads a second).
pub const MIN_RELOAD: Duration = Duration::from_millis(250);
/// Longest a loaded set is used before it is re-read.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// A signed rotation record: the key `by` (trusted for `name`) introduces
/// `public_key` as a key of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introduction {
    /// Format version, 1.
    pub v: u32,
    /// The key name (`approval-token`, ...).
    pub name: String,
    /// The introduced key, hex.
    pub public_key: String,
    /// The kid of the introducing key.
    pub by: String,
    /// When it was signed (ms since the epoch).
    pub time_ms: i64,
}

/// An [`Introduction`] as stored: its canonical text and the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedIntroduction {
    /// Canonical JSON of the introduction.
    pub body: String,
    /// Hex Ed25519 signature by `by` in the [`Domain::KeyIntro`] domain.
    pub sig: String,
}

/// Writes `public/<name>-<kid>.intro`: `by`, a key trusted for `name`,
/// introduces `new`.
pub fn write_introduction(
    layout: &Layout,
    name: &str,
    new: &PublicKey,
    by: &KeyPair,
) -> Result<PathBuf, KeyError> {
    let intro = Introduction {
        v: 1,
        name: name.to_owned(),
        public_key: new.to_hex(),
        by: by.kid().to_owned(),
        time_ms: crate::now_ms(),
    };
    let body = canonical::canonical_of(&intro).map_err(|_| KeyError::BadSignature)?;
    let sig = hex::encode(by.sign(Domain::KeyIntro, body.as_bytes()));
    let text = serde_json::to_string_pretty(&SignedIntroduction { body, sig })
        .map_err(|_| KeyError::BadSignature)?;
    let path = layout
        .public_dir()
        .join(format!("{name}-{}.intro", new.kid()));
    std::fs::write(&path, text).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The introductions for `name` in `dir` that parse (unverified).
fn read_introductions(dir: &Path, name: &str) -> Vec<(Introduction, SignedIntroduction)> {
    let prefix = format!("{name}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(file.starts_with(&prefix) && file.ends_with(".intro")) {
            continue;
        }
        // Small files only: a record is a few hundred bytes.
        if entry.metadata().map_or(true, |m| m.len() > 16 * 1024) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(signed) = serde_json::from_str::<SignedIntroduction>(&text) else {
            continue;
        };
        let Ok(intro) = serde_json::from_str::<Introduction>(&signed.body) else {
            continue;
        };
        if intro.v == 1 && intro.name == name {
            out.push((intro, signed));
        }
    }
    out
}

/// The keys trusted for `name`: the roots, and every key introduced by a
/// trusted key through a valid signed record, transitively.
pub fn trusted_keys(dir: &Path, name: &str, roots: &[PublicKey]) -> Vec<PublicKey> {
    let mut trusted: Vec<PublicKey> = roots.to_vec();
    let intros = read_introductions(dir, name);
    loop {
        let mut added = false;
        for (intro, signed) in &intros {
            let Some(new) = PublicKey::from_hex(&intro.public_key) else {
                continue;
            };
            if trusted.contains(&new) {
                continue;
            }
            let Some(by) = trusted.iter().find(|k| k.kid() == intro.by) else {
                continue;
            };
            let canonical_ok =
                canonical::canonical_of(intro).ok().as_deref() == Some(signed.body.as_str());
            let sig = hex::decode(&signed.sig).unwrap_or_default();
            if canonical_ok
                && by
                    .verify(Domain::KeyIntro, signed.body.as_bytes(), &sig)
                    .is_ok()
            {
                trusted.push(new);
                added = true;
            }
        }
        if !added {
            return trusted;
        }
    }
}

/// A verifier's trust roots: per key name, the public keys it pinned when
/// the stack was set up, kept in its own private directory
/// (`DIR/<service>/trust.json`), where no other trust domain writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoots {
    /// Key name → hex public keys.
    pub keys: BTreeMap<String, Vec<String>>,
}

impl TrustRoots {
    /// Reads the roots at `path` (none if the file does not exist).
    pub fn read(path: &Path) -> Result<TrustRoots, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|_| KeyError::Malformed {
                path: path.to_owned(),
                kind: "trust root",
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustRoots::default()),
            Err(source) => Err(KeyError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the roots to `path` (`0600`).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        self.write_mode(path, 0o600)
    }

    /// Writes the roots to `path` with `mode`, replacing it at once.
    fn write_mode(&self, path: &Path, mode: u32) -> Result<(), KeyError> {
        let text = serde_json::to_string_pretty(self).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            kind: "trust root",
        })?;
        let tmp = path.with_extension("json.new");
        let _ = std::fs::remove_file(&tmp);
        // Created 0600, then given its mode: never wider while written.
        crate::keys::write_private(&tmp, &text)?;
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Writes the roots for `names` alone to `path`, readable by everyone
    /// (`0644`), unless the file exists: a published anchor is never
    /// replaced by a running service.
    pub fn publish(&self, path: &Path, names: &[&str]) -> Result<(), KeyError> {
        if path.exists() {
            return Ok(());
        }
        let public = TrustRoots {
            keys: self
                .keys
                .iter()
                .filter(|(name, keys)| names.contains(&name.as_str()) && !keys.is_empty())
                .map(|(name, keys)| (name.clone(), keys.clone()))
                .collect(),
        };
        if public.keys.is_empty() {
            return Ok(());
        }
        public.write_mode(path, 0o644)
    }

    /// The roots for `name`.
    pub fn get(&self, name: &str) -> Vec<PublicKey> {
        self.keys
            .get(name)
            .map(|ks| ks.iter().filter_map(|k| PublicKey::from_hex(k)).collect())
            .unwrap_or_default()
    }

    /// Pins `name` to the keys now in `public/` if it has no root yet
    /// (trust on first use, at set-up); returns whether it changed.
    pub fn pin_if_missing(&mut self, layout: &Layout, name: &str) -> Result<bool, KeyError> {
        if self.keys.get(name).is_some_and(|k| !k.is_empty()) {
            return Ok(false);
        }
        let found = read_pinned(&layout.public_dir(), name).unwrap_or_default();
        if found.is_empty() {
            return Ok(false);
        }
        self.keys.insert(
            name.to_owned(),
            found.iter().map(PublicKey::to_hex).collect(),
        );
        Ok(true)
    }

    /// Reads the roots at `path`, pins each of `names` not yet pinned from
    /// `public/`, and writes the file back if that changed anything.
    pub fn ensure(path: &Path, layout: &Layout, names: &[&str]) -> Result<TrustRoots, KeyError> {
        let mut roots = TrustRoots::read(path)?;
        let mut changed = false;
        for name in names {
            changed |= roots.pin_if_missing(layout, name)?;
        }
        if changed {
            roots.write(path)?;
        }
        Ok(roots)
    }
}

/// A reloadable set of pinned keys named `name`.
#[derive(Debug)]
pub struct PinnedKeys {
    dir: PathBuf,
    name: String,
    roots: Roots,
    state: RwLock<(KeySet, Instant)>,
    forced: std::sync::Mutex<Option<Instant>>,
}

/// Where a [`PinnedKeys`] gets its roots.
#[derive(Debug)]
enum Roots {
    /// Fixed.
    Fixed(Vec<PublicKey>),
    /// Pinned on first sight into this trust file (a peer not yet set up
    /// when the verifier started).
    OnFirstSight(PathBuf, RwLock<Vec<PublicKey>>),
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

/// The key files for `name` in `dir` whose keys are trusted from `roots`.
pub fn read_trusted(
    dir: &Path,
    name: &str,
    roots: &[PublicKey],
) -> Result<Vec<PublicKey>, KeyError> {
    let files = read_pinned(dir, name)?;
    let trusted = trusted_keys(dir, name, roots);
    let (keep, ignored): (Vec<PublicKey>, Vec<PublicKey>) =
        files.into_iter().partition(|k| trusted.contains(k));
    for k in ignored {
        tracing::warn!(
            name,
            kid = k.kid(),
            "ignoring a key file in public/ that no trusted key introduced"
        );
    }
    Ok(keep)
}

impl PinnedKeys {
    /// Loads the keys named `name` from the stack's `public/` directory that
    /// `roots` trust (directly or through signed rotation records); fails
    /// if there is none.
    pub fn load(
        layout: &Layout,
        name: &str,
        roots: Vec<PublicKey>,
    ) -> Result<PinnedKeys, KeyError> {
        let dir = layout.public_dir();
        let keys = read_trusted(&dir, name, &roots)?;
        if keys.is_empty() {
            return Err(KeyError::Io {
                path: layout.public_key(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no trusted key (none pinned in the trust roots, or none introduced by one)",
                ),
            });
        }
        Ok(PinnedKeys {
            dir,
            name: name.to_owned(),
            roots: Roots::Fixed(roots),
            state: RwLock::new((KeySet::new(keys), Instant::now())),
            forced: std::sync::Mutex::new(None),
        })
    }

    /// Like [`PinnedKeys::load`] for a peer that may not be set up yet: the
    /// roots come from the trust file `trust`; when it has none for `name`,
    /// the first key file seen is pinned there (trust on first use), and from
    /// then on only keys it introduces are added.
    pub fn on_first_sight(layout: &Layout, name: &str, trust: &Path) -> PinnedKeys {
        let roots = TrustRoots::read(trust).unwrap_or_default().get(name);
        let keys = read_trusted(&layout.public_dir(), name, &roots).unwrap_or_default();
        let loaded = Instant::now()
            .checked_sub(MAX_AGE * 2)
            .unwrap_or_else(Instant::now);
        PinnedKeys {
            dir: layout.public_dir(),
            name: name.to_owned(),
            roots: Roots::OnFirstSight(trust.to_owned(), RwLock::new(roots)),
            state: RwLock::new((KeySet::new(keys), loaded)),
            forced: std::sync::Mutex::new(None),
        }
    }

    fn roots(&self) -> Vec<PublicKey> {
        match &self.roots {
            Roots::Fixed(r) => r.clone(),
            Roots::OnFirstSight(path, roots) => {
                let known = roots.read().map(|r| r.clone()).unwrap_or_default();
                if !known.is_empty() {
                    return known;
                }
                let mut trust = TrustRoots::read(path).unwrap_or_default();
                let layout = Layout::new(self.dir.parent().unwrap_or(&self.dir));
                if trust.pin_if_missing(&layout, &self.name).unwrap_or(false)
                    && trust.write(path).is_err()
                {
                    return Vec::new();
                }
                let pinned = trust.get(&self.name);
                if let Ok(mut r) = roots.write() {
                    r.clone_from(&pinned);
                }
                pinned
            }
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
        let fresh = read_trusted(&self.dir, &self.name, &self.roots());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_and_what_they_introduce_are_trusted() {
        let dir = std::env::temp_dir().join(crate::random_id("zt-pinned-"));
        let layout = Layout::new(&dir);
        std::fs::create_dir_all(layout.public_dir()).unwrap();
        let root = KeyPair::from_seed(&[1; 32]);
        let next = KeyPair::from_seed(&[2; 32]);
        let after = KeyPair::from_seed(&[3; 32]);
        let dropped = KeyPair::from_seed(&[4; 32]);
        let name = "approval-token";
        root.public()
            .write(&layout.public_key(&format!("{name}-{}", root.kid())))
            .unwrap();
        next.public().write(&layout.public_key(name)).unwrap();
        after
            .public()
            .write(&layout.public_key(&format!("{name}-{}", after.kid())))
            .unwrap();
        dropped
            .public()
            .write(&layout.public_key(&format!("{name}-{}", dropped.kid())))
            .unwrap();
        let roots = vec![root.public()];
        let kids = |keys: Vec<PublicKey>| {
            let mut k: Vec<String> = keys.iter().map(|k| k.kid().to_owned()).collect();
            k.sort();
            k
        };
        let sorted = |mut k: Vec<&str>| {
            k.sort_unstable();
            k.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        // Files alone: only the root.
        assert_eq!(
            kids(read_trusted(&layout.public_dir(), name, &roots).unwrap()),
            vec![root.kid().to_owned()]
        );
        // Introduced by the root, then by what it introduced.
        write_introduction(&layout, name, &next.public(), &root).unwrap();
        write_introduction(&layout, name, &after.public(), &next).unwrap();
        // A key introducing itself, and a record claiming a trusted signer.
        write_introduction(&layout, name, &dropped.public(), &dropped).unwrap();
        let forged = dropped.public();
        let path = layout
            .public_dir()
            .join(format!("{name}-{}.intro", forged.kid()));
        let mut signed: SignedIntroduction =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        signed.body = signed.body.replace(dropped.kid(), root.kid());
        std::fs::write(&path, serde_json::to_string(&signed).unwrap()).unwrap();
        assert_eq!(
            kids(read_trusted(&layout.public_dir(), name, &roots).unwrap()),
            sorted(vec![root.kid(), next.kid(), after.kid()])
        );
        // A record for another name introduces nothing here.
        write_introduction(&layout, "approval-grant", &dropped.public(), &root).unwrap();
        assert!(
            !kids(read_trusted(&layout.public_dir(), name, &roots).unwrap())
                .contains(&dropped.kid().to_owned())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
