//! Dashboard sessions: a login trades the user's name and password for a token pair (`Auth.Token`, through the
//! proxy, as `micro login` does), kept here on the server under a random session key. The browser holds only that
//! key, in an `HttpOnly`, `SameSite=Strict` cookie ([`COOKIE`]), so no script of any page can read the token, and
//! logging out ([`Sessions::remove`] plus `Auth.Revoke`) ends it for good.
//!
//! Each session also has its own CSRF token, which every state-changing request must echo (a hidden `csrf` input, or
//! the `X-CSRF-Token` header of the page's script), compared in constant time ([`same`]). Sessions end after
//! [`IDLE`] without a request; the store is bounded ([`LIMIT`]), and the oldest sessions go first when it is full.

use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "micro-session";
/// How long a session lives without a request.
pub(crate) const IDLE: Duration = Duration::from_secs(12 * 60 * 60);
/// The most sessions kept at once.
pub(crate) const LIMIT: usize = 10_000;
/// An access token this close to its expiry (seconds) is refreshed before it is used, as the CLI does.
pub(crate) const REFRESH_MARGIN: i64 = 60;

/// A token pair of a session.
#[derive(Clone, Default)]
pub(crate) struct Tokens {
    /// The access token (a JWT).
    pub access: String,
    /// The refresh token; it rotates on every use.
    pub refresh: String,
    /// Unix time the access token expires (0: never).
    pub expiry: i64,
}

impl Tokens {
    /// Whether the access token must be refreshed before it is used at `now` (unix seconds).
    pub(crate) fn stale(&self, now: i64) -> bool {
        self.expiry > 0 && self.expiry - REFRESH_MARGIN <= now && !self.refresh.is_empty()
    }
}

/// A logged-in browser.
pub(crate) struct Session {
    /// The key the cookie holds.
    pub id: String,
    /// The token that state-changing requests must send back.
    pub csrf: String,
    /// The account's id.
    pub account: String,
    /// The account's display name.
    pub name: String,
    /// Whether the account has the `admin` scope (only to choose what the pages offer: the proxy decides).
    pub admin: bool,
    /// The token pair; a refresh replaces it.
    pub tokens: Mutex<Tokens>,
    /// Serialises refreshes, so that two requests do not both spend the rotating refresh token.
    pub refreshing: tokio::sync::Mutex<()>,
    last_seen: Mutex<Instant>,
}

impl Session {
    /// A new session for an account, with fresh random keys.
    pub(crate) fn new(account: String, name: String, admin: bool, tokens: Tokens) -> Self {
        Self {
            id: random_key(),
            csrf: random_key(),
            account,
            name,
            admin,
            tokens: Mutex::new(tokens),
            refreshing: tokio::sync::Mutex::new(()),
            last_seen: Mutex::new(Instant::now()),
        }
    }

    /// The current token pair.
    pub(crate) fn tokens(&self) -> Tokens {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the token pair.
    pub(crate) fn set_tokens(&self, tokens: Tokens) {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    /// Whether `token` is this session's CSRF token.
    pub(crate) fn csrf_matches(&self, token: &str) -> bool {
        same(self.csrf.as_bytes(), token.as_bytes())
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn touch(&self, now: Instant) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }
}

/// The sessions of one dashboard.
#[derive(Default)]
pub(crate) struct Sessions {
    map: RwLock<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// Keeps `session`; when full, idle sessions are dropped, then the least recently used.
    pub(crate) fn insert(&self, session: Session) -> Arc<Session> {
        let session = Arc::new(session);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LIMIT {
            let now = Instant::now();
            map.retain(|_, s| s.idle_for(now) < IDLE);
            while map.len() >= LIMIT {
                let Some(oldest) = map.values().max_by_key(|s| s.idle_for(now)).map(|s| s.id.clone()) else { break };
                map.remove(&oldest);
            }
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session with key `id`, marked as used now; an idle one is ended instead.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Session>> {
        let now = Instant::now();
        let session = self.map.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()?;
        if session.idle_for(now) >= IDLE {
            self.remove(id);
            return None;
        }
        session.touch(now);
        Some(session)
    }

    /// Ends the session with key `id`, returning it.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.map.write().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    /// How many sessions are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// 32 random bytes as hex.
fn random_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value that gives the browser session key `id` (`Secure` when the dashboard serves TLS).
pub(crate) fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new("bob".into(), "bob".into(), false, Tokens::default())
    }

    #[test]
    fn keys_are_random_and_csrf_compares_exactly() {
        let (a, b) = (session(), session());
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        assert!(a.csrf_matches(&a.csrf.clone()));
        assert!(!a.csrf_matches(&b.csrf));
        assert!(!a.csrf_matches(""));
        assert!(!a.csrf_matches(&a.csrf[..63]));
    }

    #[test]
    fn sessions_are_found_by_key_and_end_on_remove() {
        let sessions = Sessions::default();
        let s = sessions.insert(session());
        assert!(sessions.get(&s.id).is_some());
        assert!(sessions.get("nope").is_none());
        assert!(sessions.remove(&s.id).is_some());
        assert!(sessions.get(&s.id).is_none());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn stale_tokens_are_those_near_expiry_that_can_be_refreshed() {
        let t = |expiry, refresh: &str| Tokens { access: "a".into(), refresh: refresh.into(), expiry };
        assert!(t(1000, "r").stale(1000 - REFRESH_MARGIN));
        assert!(!t(1000, "r").stale(1000 - REFRESH_MARGIN - 1));
        assert!(!t(1000, "").stale(2000));
        assert!(!t(0, "r").stale(2000));
    }

    #[test]
    fn cookies_are_read_by_name_and_set_strict_and_http_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; micro-session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie("abc", true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
