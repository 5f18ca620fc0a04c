//! Access rules: matching resources with wildcards and deciding, by priority, whether a caller may reach an
//! endpoint. At equal priority a deny wins; when no rule matches, access is refused.

use micro_core::proto::auth::{Access, Resource, Rule};

/// A caller as rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// Whether the caller presented a valid token.
    pub authenticated: bool,
    /// The account's scopes.
    pub scopes: &'a [String],
}

/// The outcome of evaluating rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Access is granted.
    Granted,
    /// Access is denied (or no rule matched).
    Denied,
}

/// Whether `pattern` (with `*` wildcards matching any run of characters) matches `value`.
pub fn glob(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || !value[first.len()..].ends_with(last) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a rule's resource covers `type:name:endpoint`.
pub fn covers(resource: &Resource, kind: &str, name: &str, endpoint: &str) -> bool {
    glob(&resource.r#type, kind) && glob(&resource.name, name) && glob(&resource.endpoint, endpoint)
}

fn applies(rule: &Rule, subject: Subject<'_>) -> bool {
    match rule.scope.as_str() {
        "" => true,
        "*" => subject.authenticated,
        scope => subject.authenticated && subject.scopes.iter().any(|s| s == scope),
    }
}

/// Sorts rules for evaluation and listing: priority descending, denies before grants, then id.
pub fn sort(rules: &mut [Rule]) {
    rules.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| (b.access == Access::Denied as i32).cmp(&(a.access == Access::Denied as i32)))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// Evaluates sorted rules for a caller reaching `type:name:endpoint`.
pub fn decide(sorted: &[Rule], subject: Subject<'_>, kind: &str, name: &str, endpoint: &str) -> Decision {
    for rule in sorted {
        let Some(resource) = &rule.resource else { continue };
        if !covers(resource, kind, name, endpoint) || !applies(rule, subject) {
            continue;
        }
        return if rule.access == Access::Granted as i32 { Decision::Granted } else { Decision::Denied };
    }
    Decision::Denied
}

/// Parses `type:name:endpoint`.
pub fn parse_resource(text: &str) -> Option<Resource> {
    let mut parts = text.splitn(3, ':');
    let (kind, name, endpoint) = (parts.next()?, parts.next()?, parts.next()?);
    if kind.is_empty() || name.is_empty() || endpoint.is_empty() {
        return None;
    }
    Some(Resource { r#type: kind.into(), name: name.into(), endpoint: endpoint.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, scope: &str, resource: &str, access: Access, priority: i32) -> Rule {
        Rule { id: id.into(), scope: scope.into(), resource: parse_resource(resource), access: access as i32, priority }
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("Registry.*", "Registry.ListServices"));
        assert!(glob("*.Call", "Helloworld.Call"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(!glob("abc", "abcd"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn priority_then_deny_wins() {
        let anon = Subject { authenticated: false, scopes: &[] };
        let scopes = vec!["admin".to_string()];
        let admin = Subject { authenticated: true, scopes: &scopes };
        let mut rules = vec![
            rule("any", "*", "*:*:*", Access::Granted, 0),
            rule("public-hello", "", "service:helloworld:*", Access::Granted, 10),
            rule("deny-hello-call", "*", "service:helloworld:Helloworld.Call", Access::Denied, 10),
            rule("grant-hello-call", "*", "service:helloworld:Helloworld.Call", Access::Granted, 10),
        ];
        sort(&mut rules);
        assert_eq!(decide(&rules, anon, "service", "helloworld", "Helloworld.Stream"), Decision::Granted);
        // The public grant at 10 applies to everyone, but the deny at the same priority wins for accounts.
        assert_eq!(decide(&rules, admin, "service", "helloworld", "Helloworld.Call"), Decision::Denied);
        assert_eq!(decide(&rules, anon, "service", "other", "X.Y"), Decision::Denied);
        assert_eq!(decide(&rules, admin, "service", "other", "X.Y"), Decision::Granted);
    }

    #[test]
    fn scopes_must_match() {
        let rules = vec![rule("admins", "admin", "*:*:*", Access::Granted, 0)];
        let scopes = vec!["dev".to_string()];
        let dev = Subject { authenticated: true, scopes: &scopes };
        assert_eq!(decide(&rules, dev, "service", "x", "X.Y"), Decision::Denied);
    }

    #[test]
    fn resources_parse() {
        assert!(parse_resource("service:helloworld:*").is_some());
        assert!(parse_resource("service:helloworld").is_none());
        assert!(parse_resource("::").is_none());
    }
}
