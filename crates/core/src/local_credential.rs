//! The local credential: how a service proves that it runs as the same OS user as `micro server`, on the same
//! machine, without any set-up.
//!
//! At every start the server makes a fresh random secret and writes it to `local.secret` (mode 0600) in its data
//! dir, which is private to its user (0700). So that services find it whatever `--data-dir` the server uses, the
//! server also writes a *locator*: `<the default data dir>/servers/<proxy port>`, holding the path of that file. A
//! service library that registers through a proxy on a loopback address reads the locator for the proxy's port
//! (or `$MICRO_DATA_DIR/local.secret` when that is set), and sends the secret in the [`HEADER`] of its registry
//! calls. Only a process that can read the server user's files can present it: other local users cannot, and
//! neither can other hosts. A secret from an earlier start of the server is refused, so a stale file is harmless.

use std::path::{Path, PathBuf};

/// The metadata key that carries the local credential on registry calls.
pub const HEADER: &str = "micro-local-credential";
/// The file in the server's data dir that holds the secret.
pub const FILE: &str = "local.secret";

/// The platform's data dir for micro (`~/.local/share/micro` on Linux), the server's default data dir.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "micro", "micro").map(|p| p.data_dir().to_path_buf())
}

/// The locator of the server whose proxy listens on `port`.
fn locator(port: u16) -> Option<PathBuf> {
    Some(default_data_dir()?.join("servers").join(port.to_string()))
}

/// Makes a fresh secret, writes it to `data_dir` (0600) and the locator for `proxy`'s port, and returns it.
/// A locator that cannot be written (no home directory) is logged and skipped: services then need
/// `MICRO_DATA_DIR`.
pub fn create(data_dir: &Path, proxy: std::net::SocketAddr) -> std::io::Result<String> {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let file = data_dir.join(FILE);
    crate::fs::write_private_atomically(&file, secret.as_bytes())?;
    if let Some(locator) = locator(proxy.port()) {
        let written = locator.parent().map_or(Ok(()), crate::fs::create_private_dir).and_then(|()| {
            let path = std::fs::canonicalize(&file)?;
            crate::fs::write_private_atomically(&locator, path.to_string_lossy().as_bytes())
        });
        if let Err(e) = written {
            tracing::warn!(locator = %locator.display(), error = %e,
                "cannot write the local credential's locator: local services need MICRO_DATA_DIR to register");
        }
    }
    Ok(secret)
}

/// The local credential for a proxy at `proxy` (`host:port`, or an `http://` URL), if this process can read it:
/// `$MICRO_DATA_DIR/local.secret` when `data_dir` is given, else the locator of the proxy's port. Only for a
/// proxy on a loopback address: the credential never leaves the machine.
pub fn find(proxy: &str, data_dir: Option<&Path>) -> Option<String> {
    let authority = proxy.split_once("://").map_or(proxy, |(_, rest)| rest).trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return None;
    }
    let file = match data_dir {
        Some(dir) => dir.join(FILE),
        None => PathBuf::from(std::fs::read_to_string(locator(port.parse().ok()?)?).ok()?.trim()),
    };
    let secret = std::fs::read_to_string(file).ok()?;
    let secret = secret.trim();
    (!secret.is_empty()).then(|| secret.to_string())
}

/// Whether `presented` is `secret`, compared through their hashes so the time taken does not tell how much of it
/// matched.
pub fn matches(presented: &str, secret: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(presented.as_bytes()) == Sha256::digest(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_private_and_found_by_data_dir_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = create(dir.path(), "127.0.0.1:1".parse().unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(find("127.0.0.1:8081", Some(dir.path())).as_deref(), Some(secret.as_str()));
        assert_eq!(find("http://localhost:8081", Some(dir.path())).as_deref(), Some(secret.as_str()));
        assert_eq!(find("10.1.2.3:8081", Some(dir.path())), None);
        assert_eq!(find("example.com:8081", Some(dir.path())), None);
        assert!(matches(&secret, &secret));
        assert!(!matches("guess", &secret));
        // A new start makes a new secret.
        assert_ne!(create(dir.path(), "127.0.0.1:1".parse().unwrap()).unwrap(), secret);
    }
}
