//! The CLI's token store: one token pair per env and namespace, in `tokens.json` in the CLI's config dir.
//!
//! The file is private to the user: it is created with mode 0600 and every write goes to a fresh temporary file
//! (also 0600) in the same directory that is then renamed over the old one, so a reader never sees half a file and
//! a crash never leaves a world-readable copy behind. Tokens are secrets: nothing here puts a token in an error
//! message or a log line, and [`StoredToken`]'s `Debug` output redacts them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The token store's file name in the config dir.
pub const TOKENS_FILE: &str = "tokens.json";

/// A token pair saved by `micro login`, and the account it belongs to.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    /// The account's id.
    pub account_id: String,
    /// The access token (a signed JWT).
    pub access_token: String,
    /// The refresh token; it rotates on every use.
    #[serde(default)]
    pub refresh_token: String,
    /// Unix time the token was created.
    #[serde(default)]
    pub created: i64,
    /// Unix time the access token expires.
    #[serde(default)]
    pub expiry: i64,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("account_id", &self.account_id)
            .field("access_token", &"[hidden]")
            .field("refresh_token", &"[hidden]")
            .field("created", &self.created)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl StoredToken {
    /// Whether the access token expires within `margin_secs` of `now` (unix seconds). A token without an expiry
    /// never does.
    pub fn expires_within(&self, now: i64, margin_secs: i64) -> bool {
        self.expiry > 0 && self.expiry - margin_secs <= now
    }

    /// Whether there is a refresh token to renew the access token with.
    pub fn can_refresh(&self) -> bool {
        !self.refresh_token.is_empty()
    }
}

/// The file's contents: env name → namespace → token.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    #[serde(default)]
    envs: BTreeMap<String, BTreeMap<String, StoredToken>>,
}

/// The token store could not be read or written. The message names the file, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    /// Reading or writing failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done: `read`, `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a token store. Only the position is reported: the parser's message could quote a token.
    #[error("{path} is not a valid micro token store (line {line}, column {column}); delete it and log in again")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
}

/// The token store in a config dir.
#[derive(Clone, Debug)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// The store in `config_dir` (the file is created on the first save).
    pub fn new(config_dir: &Path) -> Self {
        Self { dir: config_dir.to_path_buf() }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(TOKENS_FILE)
    }

    fn load(&self) -> Result<TokensFile, TokenStoreError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(TokensFile::default()),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenStoreError::Invalid {
                path: path.clone(),
                line: e.line(),
                column: e.column(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
            Err(source) => Err(TokenStoreError::Io { action: "read", path, source }),
        }
    }

    fn save(&self, file: &TokensFile) -> Result<(), TokenStoreError> {
        let path = self.path();
        let io = |source| TokenStoreError::Io { action: "write", path: path.clone(), source };
        micro_core::fs::create_private_dir(&self.dir).map_err(io)?;
        let mut text = serde_json::to_vec_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
        text.push(b'\n');
        write_private_atomically(&path, &text).map_err(io)
    }

    /// The token of `namespace` in `env`, if one was saved.
    pub fn get(&self, env: &str, namespace: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        Ok(self.load()?.envs.get(env).and_then(|n| n.get(namespace)).cloned())
    }

    /// Saves the token of `namespace` in `env`, replacing any other.
    pub fn put(&self, env: &str, namespace: &str, token: StoredToken) -> Result<(), TokenStoreError> {
        let mut file = self.load()?;
        file.envs.entry(env.to_string()).or_default().insert(namespace.to_string(), token);
        self.save(&file)
    }

    /// Removes the token of `namespace` in `env`; whether there was one. The file is not touched when there was none.
    pub fn remove(&self, env: &str, namespace: &str) -> Result<bool, TokenStoreError> {
        let mut file = self.load()?;
        let Some(namespaces) = file.envs.get_mut(env) else { return Ok(false) };
        if namespaces.remove(namespace).is_none() {
            return Ok(false);
        }
        if namespaces.is_empty() {
            file.envs.remove(env);
        }
        self.save(&file)?;
        Ok(true)
    }
}

pub(crate) use micro_core::fs::write_private_atomically;

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: i64) -> StoredToken {
        StoredToken {
            account_id: "admin".into(),
            access_token: format!("access-{n}"),
            refresh_token: format!("refresh-{n}"),
            created: n,
            expiry: n + 900,
        }
    }

    #[test]
    fn round_trip_per_env_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(&dir.path().join("config"));
        assert_eq!(store.get("local", "micro").unwrap(), None);
        store.put("local", "micro", token(1)).unwrap();
        store.put("local", "foo", token(2)).unwrap();
        store.put("prod", "micro", token(3)).unwrap();
        assert_eq!(store.get("local", "micro").unwrap(), Some(token(1)));
        assert_eq!(store.get("local", "foo").unwrap(), Some(token(2)));
        assert_eq!(store.get("prod", "micro").unwrap(), Some(token(3)));
        store.put("local", "micro", token(4)).unwrap();
        assert_eq!(store.get("local", "micro").unwrap(), Some(token(4)));
        assert!(store.remove("local", "micro").unwrap());
        assert!(!store.remove("local", "micro").unwrap());
        assert_eq!(store.get("local", "micro").unwrap(), None);
        assert_eq!(store.get("local", "foo").unwrap(), Some(token(2)));
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private_and_written_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        store.put("local", "micro", token(1)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path()), 0o600);
        // A file that was readable by others is replaced by a private one, not rewritten in place.
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::metadata(store.path()).unwrap();
        store.put("local", "micro", token(2)).unwrap();
        let after = std::fs::metadata(store.path()).unwrap();
        assert_eq!(mode(&store.path()), 0o600);
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino(), "the file is replaced by a rename");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TOKENS_FILE)]);
    }

    #[test]
    fn errors_and_debug_never_show_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        std::fs::write(
            store.path(),
            r#"{"envs":{"local":{"micro":{"account_id":"a","access_token":"secret-jwt","expiry":"secret-jwt"}}}}"#,
        )
        .unwrap();
        let err = store.get("local", "micro").unwrap_err().to_string();
        assert!(!err.contains("secret-jwt"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        let debug = format!("{:?}", token(1));
        assert!(!debug.contains("access-1") && !debug.contains("refresh-1"), "{debug}");
    }

    #[test]
    fn expiry_margin() {
        let t = token(1000); // expires at 1900
        assert!(!t.expires_within(1000, 60));
        assert!(t.expires_within(1840, 60));
        assert!(t.expires_within(2000, 60));
        assert!(!StoredToken { expiry: 0, ..t }.expires_within(i64::MAX - 1, 60));
    }
}
