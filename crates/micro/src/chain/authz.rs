//! Authorization: the permission an endpoint needs, among the caller's scopes.

use super::Account;
use tonic::Status;

/// Whether `account` has `permission`: the scope itself, `*`, `admin`, or a scope `prefix:*` that covers it
/// (`inventory:*` covers `inventory:write` and `inventory:items:read`).
pub fn permits(account: &Account, permission: &str) -> bool {
    account.scopes.iter().any(|scope| {
        scope == permission
            || scope == "*"
            || scope == "admin"
            || scope.strip_suffix('*').is_some_and(|prefix| prefix.ends_with(':') && permission.starts_with(prefix))
    })
}

/// Checks that the caller may call `endpoint`, which needs `permission`.
pub(crate) fn check(
    account: Option<&Account>,
    endpoint: &str,
    permission: &str,
    authenticates: bool,
) -> Result<(), Status> {
    let Some(account) = account else {
        let why = if authenticates {
            "authentication is skipped for it"
        } else {
            "the chain authenticates no caller (see Chain::authenticate)"
        };
        return Err(Status::unauthenticated(format!("{endpoint} needs the permission {permission:?}, and {why}")));
    };
    if permits(account, permission) {
        return Ok(());
    }
    let hint = if account.verified {
        String::new()
    } else {
        " (the account's scopes are unknown: the proxy forwards the caller's token only to services trusted to act \
         for the caller, and this one authenticates by the proxy's headers)"
            .to_string()
    };
    Err(Status::permission_denied(format!(
        "{endpoint} needs the permission {permission:?}, which the account {} does not have{hint}",
        account.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(scopes: &[&str]) -> Account {
        Account { id: "jane".into(), scopes: scopes.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn scopes_grant_permissions() {
        assert!(permits(&with(&["inventory:write"]), "inventory:write"));
        assert!(permits(&with(&["a", "*"]), "inventory:write"));
        assert!(permits(&with(&["admin"]), "inventory:write"));
        assert!(permits(&with(&["inventory:*"]), "inventory:write"));
        assert!(!permits(&with(&["inventory:read"]), "inventory:write"));
        assert!(!permits(&with(&["inv*"]), "inventory:write"), "a prefix covers whole segments only");
        assert!(!permits(&with(&[]), "inventory:write"));
    }
}
