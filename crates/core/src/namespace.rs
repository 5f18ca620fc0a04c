//! Namespaces: one naming rule for every building block.
//!
//! A namespace (Micro's registry domain) names a tenant. It becomes part of keys, of SQL and of file paths (the
//! runtime keeps logs and build trees per namespace), so every block validates it with [`validate`] before using
//! it: a DNS label of lowercase letters, digits and `-`, 1 to 63 characters, starting and ending with a letter or
//! a digit. Nothing that passes can name a parent directory, an absolute path or a hidden file.

/// The longest namespace.
pub const MAX_LEN: usize = 63;

/// Why a namespace was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid namespace {shown:?}: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or a digit"
)]
pub struct InvalidNamespace {
    shown: String,
}

/// Checks `namespace` against the rule (see the module's documentation).
pub fn validate(namespace: &str) -> Result<(), InvalidNamespace> {
    let bytes = namespace.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        return Ok(());
    }
    let shown: String = namespace.chars().take(80).collect();
    Err(InvalidNamespace { shown })
}

impl From<InvalidNamespace> for tonic::Status {
    fn from(e: InvalidNamespace) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_pass_and_paths_do_not() {
        for ok in ["micro", "a", "team-1", "0", &"a".repeat(63)] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "../../x", "/etc", "a/b", ".hidden", "a b", "ä", &"a".repeat(64), "*"]
        {
            assert!(validate(bad).is_err(), "{bad:?} passed");
        }
        assert!(validate("../x").unwrap_err().to_string().contains("\"../x\""));
    }
}
