//! How an entry is sealed into its chain: its digest (SHA-256 of the entry's bytes, which
//! name the previous entry's digest), and optionally an Ed25519 signature of that digest.
//!
//! Keys are standard PEM files (PKCS#8 for the signing key, SubjectPublicKeyInfo for the
//! public key), so an auditor can check a signature with OpenSSL as well as with
//! `aksync verify`: `openssl pkeyutl -verify -pubin -inkey aksync.pub.pem -rawin -in
//! digest.bin -sigfile signature.bin`, where `digest.bin` holds the entry digest's 32 bytes.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, Verifier as _};

use crate::run::record::{sha256, Hash};

/// Separates entry digests from every other SHA-256 of the same bytes.
const DOMAIN: &[u8] = b"aksync ledger entry v1\n";
const SEAL_FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 8;

/// The digest of an entry's stored bytes.
pub fn entry_digest(entry: &[u8]) -> Hash {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + entry.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(entry);
    sha256(&bytes)
}

/// Separates report manifest digests from entry digests.
const MANIFEST_DOMAIN: &[u8] = b"aksync report manifest v1\n";

/// The digest a manifest's signature covers: its canonical JSON without the `signature` key.
pub fn manifest_digest(manifest: &serde_json::Value) -> Hash {
    let mut unsigned = manifest.clone();
    if let Some(fields) = unsigned.as_object_mut() {
        fields.remove("signature");
    }
    let mut bytes = MANIFEST_DOMAIN.to_vec();
    bytes.extend_from_slice(&crate::canonical::canonical_json(&unsigned));
    sha256(&bytes)
}

/// A key's short name: the first 8 bytes of the SHA-256 of its 32-byte public key.
pub type KeyId = [u8; KEY_ID_LEN];

/// How people see a key: `ed25519:` and the key id in hex.
pub fn fingerprint(key_id: &KeyId) -> String {
    format!("ed25519:{}", hex::encode(key_id))
}

/// An entry's digest and, when a signing key was configured, its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub digest: Hash,
    pub signature: Option<(KeyId, [u8; 64])>,
}

impl Seal {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SEAL_FORMAT];
        out.extend_from_slice(&self.digest);
        match &self.signature {
            None => out.push(0),
            Some((key, signature)) => {
                out.push(1);
                out.extend_from_slice(key);
                out.extend_from_slice(signature);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Seal> {
        let (&format, rest) = bytes.split_first()?;
        if format != SEAL_FORMAT || rest.len() < 33 {
            return None;
        }
        let digest: Hash = rest[..32].try_into().ok()?;
        let signature = match (rest[32], &rest[33..]) {
            (0, []) => None,
            (1, signed) if signed.len() == KEY_ID_LEN + 64 => Some((
                signed[..KEY_ID_LEN].try_into().ok()?,
                signed[KEY_ID_LEN..].try_into().ok()?,
            )),
            _ => return None,
        };
        Some(Seal { digest, signature })
    }

    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not an Ed25519 {what} in PEM form ({reason}): make one with `aksync keygen --out FILE`")]
    Parse {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{path} exists already: aksync does not overwrite a key; choose another file or remove it first")]
    Exists { path: String },
}

/// The key that signs every entry digest, from `[ledger] signing_key_file`.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: KeyId,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "SigningKey({})", fingerprint(&self.id))
    }
}

fn key_id(public: &ed25519_dalek::VerifyingKey) -> KeyId {
    sha256(public.as_bytes())[..KEY_ID_LEN]
        .try_into()
        .expect("8 bytes")
}

fn shown(path: &Path) -> String {
    crate::display::escape(&path.display().to_string()).into_owned()
}

impl SigningKey {
    pub fn generate() -> SigningKey {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let id = key_id(&key.verifying_key());
        SigningKey { key, id }
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read_key_file(path)?;
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|error| KeyError::Parse {
                path: shown(path),
                what: "signing key",
                reason: error.to_string(),
            })?;
        let id = key_id(&key.verifying_key());
        Ok(SigningKey { key, id })
    }

    /// Writes the key as PKCS#8 PEM, readable by its owner only; never over an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(Default::default())
            .map_err(|error| KeyError::Write {
                path: shown(path),
                reason: error.to_string(),
            })?;
        write_new_file(path, pem.as_bytes(), 0o600)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    pub fn sign(&self, digest: &Hash) -> [u8; 64] {
        self.key.sign(digest).to_bytes()
    }

    /// The seal of an entry whose digest is `digest`.
    pub fn seal(&self, digest: Hash) -> Seal {
        Seal {
            digest,
            signature: Some((self.id, self.sign(&digest))),
        }
    }
}

/// A public key that checks signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_key_file(path)?;
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&text).map_err(|error| {
            KeyError::Parse {
                path: shown(path),
                what: "public key",
                reason: error.to_string(),
            }
        })?;
        Ok(PublicKey {
            id: key_id(&key),
            key,
        })
    }

    pub fn from_pem(text: &str) -> Option<PublicKey> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(text).ok()?;
        Some(PublicKey {
            id: key_id(&key),
            key,
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.id)
    }

    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(Default::default())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_new_file(path, self.to_pem().as_bytes(), 0o644)
    }

    pub fn verifies(&self, digest: &Hash, signature: &[u8; 64]) -> bool {
        self.key
            .verify(digest, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

/// A key file is small; anything larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let read_error = |reason: String| KeyError::Read {
        path: shown(path),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|error| read_error(error.to_string()))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| read_error(error.to_string()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(read_error("larger than a key file can be".into()));
    }
    Ok(text)
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: shown(path) },
            _ => KeyError::Write {
                path: shown(path),
                reason: error.to_string(),
            },
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| KeyError::Write {
            path: shown(path),
            reason: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_round_trip_signed_or_not() {
        let plain = Seal {
            digest: entry_digest(b"{}"),
            signature: None,
        };
        assert_eq!(Seal::decode(&plain.encode()), Some(plain.clone()));
        let key = SigningKey::generate();
        let signed = key.seal(plain.digest);
        assert_eq!(Seal::decode(&signed.encode()), Some(signed.clone()));
        assert_eq!(Seal::decode(&signed.encode()[..40]), None);
        let (id, signature) = signed.signature.unwrap();
        assert_eq!(id, key.id());
        assert!(key.public().verifies(&plain.digest, &signature));
        assert!(!key.public().verifies(&entry_digest(b"[]"), &signature));
    }

    #[test]
    fn keys_round_trip_through_pem_files_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let secret = dir.path().join("signing.pem");
        key.save(&secret).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(key.save(&secret), Err(KeyError::Exists { .. })));
        let loaded = SigningKey::load(&secret).unwrap();
        assert_eq!(loaded.id(), key.id());
        let public = dir.path().join("public.pem");
        key.public().save(&public).unwrap();
        assert_eq!(PublicKey::load(&public).unwrap(), key.public());
        let error = SigningKey::load(&public).unwrap_err().to_string();
        assert!(error.contains("not an Ed25519 signing key"), "{error}");
        assert!(format!("{key:?}").starts_with("SigningKey(ed25519:"));
    }
}
