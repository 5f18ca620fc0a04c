//! Secrets at rest: AES-256-GCM under a key generated into the data dir (`config.key`, 32 random bytes, mode
//! 0600 on Unix).
//!
//! A sealed secret is `base64(nonce ‖ ciphertext ‖ tag)` with a random 96-bit nonce per seal; the caller's
//! additional data (the namespace and the path) is authenticated, so a secret only opens where it was sealed.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use std::path::Path;

/// The key file, in the data dir.
pub const KEY_FILE: &str = "config.key";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// What can go wrong with secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file cannot be read or created.
    #[error("{0}")]
    Key(String),
    /// Encryption failed.
    #[error("cannot encrypt the secret")]
    Seal,
    /// A secret does not open: it was sealed under another key or elsewhere, or it is damaged.
    #[error("a secret cannot be decrypted (was {KEY_FILE} replaced?)")]
    Open,
}

/// An AES-256-GCM cipher.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
    /// A one-way fingerprint of the key, to tell whether two servers hold the same one.
    fingerprint: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// A cipher with `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let fingerprint = micro_core::schema::hash(&[b"micro config key ".as_slice(), key].concat());
        Self { aead: Aes256Gcm::new(key.into()), fingerprint }
    }

    /// A one-way fingerprint of the key (SHA-256 of a label and the key, hex).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Loads the key from `path`, or creates it (readable by its owner only) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    SecretError::Key(format!(
                        "{} is not a {KEY_LEN}-byte key; restore it from a backup (the secrets need it)",
                        path.display()
                    ))
                })?;
                return Ok(Self::new(&key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SecretError::Key(format!("cannot read {}: {e}", path.display()))),
        }
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io = |e: std::io::Error| SecretError::Key(format!("cannot create {}: {e}", path.display()));
        let mut file = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut file, &key).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self::new(&key))
    }

    /// Encrypts `plain`, authenticating `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed =
            self.aead.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).map_err(|_| SecretError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypts what [`Cipher::seal`] made with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| SecretError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        self.aead.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad }).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let cipher = Cipher::load_or_create(&path).unwrap();
        let sealed = cipher.seal(b"\"hunter2\"", b"micro\0db.password").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, cipher.seal(b"\"hunter2\"", b"micro\0db.password").unwrap(), "a fresh nonce each time");
        assert_eq!(cipher.open(&sealed, b"micro\0db.password").unwrap(), b"\"hunter2\"");
        assert!(matches!(cipher.open(&sealed, b"micro\0other"), Err(SecretError::Open)));
        // The same key loads again; another key does not open the secret.
        let again = Cipher::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed, b"micro\0db.password").unwrap(), b"\"hunter2\"");
        assert!(Cipher::new(&[1; 32]).open(&sealed, b"micro\0db.password").is_err());
        assert!(cipher.open("not base64!", b"").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(Cipher::load_or_create(&path), Err(SecretError::Key(_))));
    }
}
