//! Ed25519 keys and their files.
//!
//! A private key is a PKCS#8 PEM file readable only by its owner (`0600`);
//! its public half is an SPKI PEM file that other trust domains pin. A key's
//! id (`kid`) is derived from the public key, so it cannot be chosen to
//! collide with another key.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::canonical::{Domain, digest};

/// Errors reading, writing or using keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's contents are not a key of the expected kind.
    #[error("key file {path}: not an Ed25519 {kind} key in PEM form")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// "private" or "public".
        kind: &'static str,
    },
    /// The operating system gave no randomness.
    #[error("no randomness available to generate a key")]
    Entropy,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The id of a public key: the first 16 bytes of its domain-separated hash, in hex.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&digest(Domain::KeyId, public.as_bytes())[..16])
}

/// A private signing key with its id.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    kid: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<KeyPair, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| KeyError::Entropy)?;
        Ok(KeyPair::from_seed(&seed))
    }

    /// The key whose 32-byte seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> KeyPair {
        let signing = SigningKey::from_bytes(seed);
        let kid = key_id(&signing.verifying_key());
        KeyPair { signing, kid }
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.signing.verifying_key())
    }

    /// Signs `domain || 0x00 || message`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> [u8; 64] {
        self.signing.sign(&framed(domain, message)).to_bytes()
    }

    /// A 32-byte secret for `domain` derived from the private key: only the
    /// key's holder can compute it, and secrets for different domains are
    /// independent.
    pub fn derive(&self, domain: Domain) -> [u8; 32] {
        digest(domain, self.signing.as_bytes())
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        self.signing
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|_| KeyError::Malformed {
                path: PathBuf::new(),
                kind: "private",
            })
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn read(path: &Path) -> Result<KeyPair, KeyError> {
        let text = read_text(path)?;
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            kind: "private",
        })?;
        let kid = key_id(&signing.verifying_key());
        Ok(KeyPair { signing, kid })
    }

    /// Reads the key at `path`, or generates one there (mode `0600`) with its
    /// public half beside `public_path`.
    pub fn load_or_generate(path: &Path, public_path: &Path) -> Result<KeyPair, KeyError> {
        let pair = if path.exists() {
            KeyPair::read(path)?
        } else {
            let pair = KeyPair::generate()?;
            write_private(path, &pair.to_pkcs8_pem()?)?;
            pair
        };
        pair.public().write(public_path)?;
        Ok(pair)
    }

    /// The key in the form `jsonwebtoken` signs with.
    pub fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, KeyError> {
        let pem = self.to_pkcs8_pem()?;
        jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| KeyError::Malformed {
            path: PathBuf::new(),
            kind: "private",
        })
    }
}

/// A public verifying key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    kid: String,
}

impl PublicKey {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> PublicKey {
        let kid = key_id(&key);
        PublicKey { key, kid }
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The key from its raw 32 bytes in hex.
    pub fn from_hex(text: &str) -> Option<PublicKey> {
        let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok().map(PublicKey::new)
    }

    /// The raw 32 bytes in hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Verifies a signature made by [`KeyPair::sign`] for the same domain.
    /// Strict verification: rejects non-canonical and small-order encodings.
    pub fn verify(&self, domain: Domain, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig =
            ed25519_dalek::Signature::from_slice(signature).map_err(|_| KeyError::BadSignature)?;
        self.key
            .verify_strict(&framed(domain, message), &sig)
            .map_err(|_| KeyError::BadSignature)?;
        Ok(())
    }

    /// The key as SPKI PEM.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Reads an SPKI PEM public key.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_text(path)?;
        let key = VerifyingKey::from_public_key_pem(&text).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            kind: "public",
        })?;
        Ok(PublicKey::new(key))
    }

    /// Writes the SPKI PEM (world-readable: it is public).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(path, self.to_pem()).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The key in the form `jsonwebtoken` verifies with (raw 32 bytes).
    pub fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        jsonwebtoken::DecodingKey::from_ed_der(self.key.as_bytes())
    }
}

fn framed(domain: Domain, message: &[u8]) -> Vec<u8> {
    let label = domain.label().as_bytes();
    let mut framed = Vec::with_capacity(label.len() + 1 + message.len());
    framed.extend_from_slice(label);
    framed.push(0);
    framed.extend_from_slice(message);
    framed
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a secret file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_domain_separated() {
        let k = KeyPair::from_seed(&[7; 32]);
        let sig = k.sign(Domain::Grant, b"payload");
        assert!(k.public().verify(Domain::Grant, b"payload", &sig).is_ok());
        assert!(
            k.public()
                .verify(Domain::AuditLeaf, b"payload", &sig)
                .is_err()
        );
        assert!(k.public().verify(Domain::Grant, b"payloaD", &sig).is_err());
    }

    #[test]
    fn pem_round_trips_and_kid_is_stable() {
        let k = KeyPair::from_seed(&[9; 32]);
        let pem = k.to_pkcs8_pem().unwrap();
        let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(key_id(&back.verifying_key()), k.kid());
        let public = VerifyingKey::from_public_key_pem(&k.public().to_pem()).unwrap();
        assert_eq!(PublicKey::new(public), k.public());
        assert_eq!(PublicKey::from_hex(&k.public().to_hex()), Some(k.public()));
    }
}
