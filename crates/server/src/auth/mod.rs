//! Auth: accounts, tokens and rules, enforced everywhere.
//!
//! [`Auth`] keeps accounts and rules in memory, backed by a [`Table`] (an embedded redb database in the data dir,
//! or PostgreSQL shared with other servers, which [`Auth::reload`] follows), and signs short-lived access tokens
//! (HS256 JWTs, with a key generated into the data dir on first start, readable by the server's user only;
//! servers that share their state must share this key file too). The proxy calls [`Auth::authorize`] for every request, core services included, so rules are
//! enforced without a network round trip; decisions are cached until the rules change. Refresh tokens are opaque,
//! stored hashed, rotate on use and are revoked when the account's secret changes or the account is deleted.

pub mod rules;
pub mod service;

use super::state::{self, StateError, Table};
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use base64::Engine;
use micro_core::proto::auth::{Access, Account as AccountMsg, Resource, Rule, Token};
use rand::RngCore;
use rules::{Decision, Subject};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Status;

/// The default admin's id and name.
pub const ADMIN: &str = "admin";
/// The default admin's password, as in Micro.
pub const DEFAULT_ADMIN_PASSWORD: &str = "micro";
/// The scope of administrators.
pub const ADMIN_SCOPE: &str = "admin";
/// The scope of service accounts.
pub const SERVICE_SCOPE: &str = "service";
/// Failed logins of one account from one source that are answered at once; each further one doubles the wait
/// before that source may try that account again, from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
const FREE_FAILURES: u32 = 5;
/// The first wait after [`FREE_FAILURES`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts of one source on one account.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(3600);
/// The most (account, source) pairs whose failures are remembered; the oldest are forgotten first.
const MAX_FAILURE_ENTRIES: usize = 65_536;
/// Bound of the decision cache; it is cleared when full.
const MAX_CACHED_DECISIONS: usize = 65_536;

/// Settings of the auth service.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Where the key and the database live.
    pub data_dir: PathBuf,
    /// The default admin's password, used when the admin is first created (default `micro`).
    pub admin_password: Option<String>,
    /// The longest lifetime of an access token.
    pub access_ttl: Duration,
    /// The lifetime of a refresh token.
    pub refresh_ttl: Duration,
    /// Where accounts, rules and refresh tokens live.
    pub state: state::Location,
}

impl AuthConfig {
    /// Defaults: 15 minute access tokens, 30 day refresh tokens.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            admin_password: None,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            state: state::Location::DataDir,
        }
    }
}

/// What can go wrong opening auth.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file or database could not be used.
    #[error("{0}")]
    Storage(String),
}

/// A verified caller, as the proxy puts it into request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Account id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `user` or `service`.
    pub kind: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// The namespace that issued it.
    pub issuer: String,
}

impl Account {
    /// Whether the account administers `namespace`: an admin (or service account) of it, or of `micro`.
    pub fn administers(&self, namespace: &str) -> bool {
        let privileged = (self.kind == "user" && self.scopes.iter().any(|s| s == ADMIN_SCOPE))
            || (self.kind == "service" && self.scopes.iter().any(|s| s == SERVICE_SCOPE));
        privileged && (self.issuer == namespace || self.issuer == micro_core::DEFAULT_NAMESPACE)
    }

    /// Whether the account may act in `namespace` at all.
    pub fn belongs_to(&self, namespace: &str) -> bool {
        self.issuer == namespace || self.administers(namespace)
    }
}

/// The address of a caller that reached the proxy through another listener of this server (the HTTP API
/// gateway), put into request extensions, so that auth can tell sources apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

/// Where a login comes from: failed logins are counted per account *and* source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The caller's address, when known.
    pub ip: Option<std::net::IpAddr>,
}

impl Source {
    /// A login from the loopback interface: a correct secret from there is never held back.
    fn loopback(&self) -> bool {
        self.ip.is_some_and(|ip| ip.is_loopback())
    }
}

/// Who is calling, as seen by core services (from request extensions).
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The verified account, if a valid token was presented.
    pub account: Option<Account>,
    /// The namespace of the request.
    pub namespace: String,
    /// Whether the request came from a loopback address.
    pub loopback: bool,
    /// Whether the request carried the server's local credential (see [`crate::local`]): the caller runs
    /// as the server's OS user on this machine, and may register services.
    pub local: bool,
    /// The caller's address, when the request arrived over TCP (failed logins are counted per source).
    pub remote: Option<std::net::IpAddr>,
}

impl Caller {
    /// The caller of a request (anonymous and remote when the proxy did not mark it).
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions().get::<Caller>().cloned().unwrap_or_default()
    }

    /// Requires an account that belongs to `namespace`.
    pub fn require_member(&self, namespace: &str) -> Result<&Account, Status> {
        let account = self.account.as_ref().ok_or_else(|| Status::unauthenticated("an account is required"))?;
        if !account.belongs_to(namespace) {
            return Err(Status::permission_denied(format!("access denied to namespace {namespace}")));
        }
        Ok(account)
    }

    /// Requires an administrator of `namespace`.
    pub fn require_admin(&self, namespace: &str) -> Result<&Account, Status> {
        let account = self.require_member(namespace)?;
        if !account.administers(namespace) {
            return Err(Status::permission_denied(format!("{} is not an administrator of {namespace}", account.id)));
        }
        Ok(account)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredAccount {
    id: String,
    name: String,
    kind: String,
    scopes: Vec<String>,
    metadata: HashMap<String, String>,
    issuer: String,
    secret_hash: String,
    /// A random number that every access token of the account carries; a new one is drawn when the secret
    /// changes (and a recreated account has another), so tokens issued before stop verifying at once.
    #[serde(default)]
    generation: u64,
}

impl StoredAccount {
    /// The account as the proxy and the core services see it.
    fn account(&self) -> Account {
        Account {
            id: self.id.clone(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            scopes: self.scopes.clone(),
            issuer: self.issuer.clone(),
        }
    }

    fn message(&self) -> AccountMsg {
        AccountMsg {
            id: self.id.clone(),
            r#type: self.kind.clone(),
            metadata: self.metadata.clone(),
            scopes: self.scopes.clone(),
            issuer: self.issuer.clone(),
            secret: String::new(),
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRule {
    id: String,
    scope: String,
    kind: String,
    name: String,
    endpoint: String,
    granted: bool,
    priority: i32,
}

impl StoredRule {
    fn rule(&self) -> Rule {
        Rule {
            id: self.id.clone(),
            scope: self.scope.clone(),
            resource: Some(Resource {
                r#type: self.kind.clone(),
                name: self.name.clone(),
                endpoint: self.endpoint.clone(),
            }),
            access: if self.granted { Access::Granted } else { Access::Denied } as i32,
            priority: self.priority,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRefresh {
    namespace: String,
    account: String,
    expires: u64,
    /// The login session the refresh token continues (it keeps its id across refreshes).
    #[serde(default)]
    session: String,
}

/// A session ended by `Auth.Revoke` (logout): its access tokens stop verifying, on every server that shares the
/// state. Kept until the last of its access tokens would have expired anyway.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRevoked {
    expires: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    typ: String,
    scopes: Vec<String>,
    iss: String,
    iat: u64,
    exp: u64,
    /// The account's generation when the token was issued.
    #[serde(default)]
    generation: u64,
    /// The login session.
    #[serde(default)]
    sid: String,
}

impl Claims {
    /// The claims of an access token for `account`, issued at `created` for `ttl` (at least a second), in login
    /// session `session` (empty for a token the server mints for itself).
    fn of(account: &StoredAccount, created: u64, ttl: Duration, session: &str) -> Self {
        Claims {
            sub: account.id.clone(),
            name: account.name.clone(),
            typ: account.kind.clone(),
            scopes: account.scopes.clone(),
            iss: account.issuer.clone(),
            iat: created,
            exp: created + ttl.as_secs().max(1),
            generation: account.generation,
            sid: session.to_string(),
        }
    }
}

#[derive(Default)]
struct State {
    /// (namespace, id) → account
    accounts: HashMap<(String, String), StoredAccount>,
    /// namespace → user rules
    rules: HashMap<String, Vec<StoredRule>>,
    /// Revoked sessions → until when they are remembered (Unix seconds).
    revoked: HashMap<String, u64>,
}

/// Failed logins of one account from one source.
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// (namespace, account, source) of failed logins.
type FailureKey = (String, String, Option<std::net::IpAddr>);

type DecisionKey = (String, bool, Vec<String>, String, String);

/// The auth core: accounts, rules and tokens.
pub struct Auth {
    /// Accounts and rules (`account/<ns>/<id>`, `rule/<ns>/<id>`), as JSON; changes are announced.
    store: Table,
    /// Refresh tokens (`refresh/<hash>`): the same table, but their changes are not announced (nothing caches them).
    tokens: Table,
    state: RwLock<State>,
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    config: AuthConfig,
    decisions: RwLock<HashMap<DecisionKey, Decision>>,
    failures: Mutex<HashMap<FailureKey, Failures>>,
    /// Verified tokens → (account, expiry, accounts generation), so that a token is checked once, not per request.
    verified: RwLock<HashMap<String, (Account, u64, u64)>>,
    /// Bumped whenever an account or a session changes, invalidating `verified`.
    generation: std::sync::atomic::AtomicU64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The password hasher: Argon2id with 7 MiB of memory and 5 passes, one lane. OWASP lists it as as strong as the
/// crate's default (19 MiB, 2 passes); it takes about as long, and the 12 MiB it does not use is memory the server
/// never holds (the allocator keeps what a hash used, so this is most of a fresh server's idle memory). Hashes carry
/// their parameters, so those made with other parameters still verify.
fn hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None).unwrap_or(argon2::Params::DEFAULT);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

fn hash_secret(secret: &str) -> Result<String, Status> {
    hasher()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Status::internal(format!("hashing the secret: {e}")))
}

fn secret_matches(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| hasher().verify_password(secret.as_bytes(), &h).is_ok())
}

fn key_of(kind: &str, namespace: &str, id: &str) -> String {
    format!("{kind}/{namespace}/{id}")
}

fn storage(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("auth store: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(storage)
}

/// Every value under `prefix`, decoded; undecodable entries are skipped with a warning.
fn scan<T: DeserializeOwned>(table: &Table, prefix: &str) -> Result<Vec<(String, T)>, StateError> {
    let mut out = Vec::new();
    for (key, bytes) in table.scan(prefix)? {
        match serde_json::from_slice(&bytes) {
            Ok(value) => out.push((key, value)),
            Err(e) => tracing::warn!(%key, error = %e, "skipping an unreadable auth record"),
        }
    }
    Ok(out)
}

/// Accounts and rules as stored.
fn load_state(store: &Table) -> Result<State, StateError> {
    let mut state = State::default();
    for (_, a) in scan::<StoredAccount>(store, "account/")? {
        state.accounts.insert((a.issuer.clone(), a.id.clone()), a);
    }
    for (key, r) in scan::<StoredRule>(store, "rule/")? {
        let namespace = key.split('/').nth(1).unwrap_or_default().to_string();
        state.rules.entry(namespace).or_default().push(r);
    }
    let now = now();
    for (key, r) in scan::<StoredRevoked>(store, "revoked/")? {
        if r.expires > now {
            state.revoked.insert(key.trim_start_matches("revoked/").to_string(), r.expires);
        }
    }
    Ok(state)
}

/// Rules every namespace has; they cannot be deleted. Registry reads and reflection are public in `micro` only.
pub fn system_rules(namespace: &str) -> Vec<Rule> {
    let rule = |id: &str, scope: &str, kind: &str, name: &str, endpoint: &str, priority: i32| Rule {
        id: id.into(),
        scope: scope.into(),
        resource: Some(Resource { r#type: kind.into(), name: name.into(), endpoint: endpoint.into() }),
        access: Access::Granted as i32,
        priority,
    };
    let mut rules = vec![
        rule("system-login", "", "service", "auth", "Auth.Token", 1000),
        rule("system-logout", "", "service", "auth", "Auth.Revoke", 1000),
        rule("system-health", "", "service", "*", "Health.Check", 1000),
        // Registration is checked by the registry itself (admins, service accounts, or the local loop).
        rule("system-register", "", "service", "registry", "Registry.Register", 1000),
        rule("system-deregister", "", "service", "registry", "Registry.Deregister", 1000),
        rule("system-accounts", "*", "*", "*", "*", 0),
    ];
    if namespace == micro_core::DEFAULT_NAMESPACE {
        for (id, endpoint) in [
            ("system-registry-get", "Registry.GetService"),
            ("system-registry-list", "Registry.ListServices"),
            ("system-registry-watch", "Registry.Watch"),
            ("system-registry-schema", "Registry.GetSchema"),
        ] {
            rules.push(rule(id, "", "service", "registry", endpoint, 1000));
        }
        rules.push(rule("system-reflection", "", "service", "grpc.reflection.*", "*", 1000));
    }
    rules
}

impl Auth {
    /// Opens auth in `config.data_dir` (and `config.state`): creates the signing key (mode 0600) and the default
    /// admin on first start. Blocks; with shared state, call it inside a tokio runtime but off its workers.
    pub fn open(config: AuthConfig) -> Result<Self, AuthError> {
        let failed = |e: StateError| AuthError::Storage(format!("auth store: {e}"));
        let key = load_or_create_key(&config.data_dir.join(KEY_FILE)).map_err(AuthError::Storage)?;
        let store = Table::open(&config.state, &config.data_dir, "auth.redb", "auth").map_err(failed)?;
        state::check_key(&store, &config.data_dir, KEY_FILE, &micro_core::schema::hash(&key)).map_err(failed)?;
        let state = load_state(&store).map_err(failed)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        let auth = Self {
            tokens: store.quiet(),
            store,
            state: RwLock::new(state),
            encoding: jsonwebtoken::EncodingKey::from_secret(&key),
            decoding: jsonwebtoken::DecodingKey::from_secret(&key),
            validation,
            config,
            decisions: RwLock::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        auth.ensure_admin()?;
        Ok(auth)
    }

    fn ensure_admin(&self) -> Result<(), AuthError> {
        let key = (micro_core::DEFAULT_NAMESPACE.to_string(), ADMIN.to_string());
        let existing = self.state.read().unwrap_or_else(|e| e.into_inner()).accounts.get(&key).cloned();
        match existing {
            Some(admin) => {
                if secret_matches(DEFAULT_ADMIN_PASSWORD, &admin.secret_hash) {
                    tracing::warn!(
                        "the admin account still has the default password \"micro\": change it with `micro user set password`"
                    );
                }
            }
            None => {
                let password = self.config.admin_password.clone().unwrap_or_else(|| DEFAULT_ADMIN_PASSWORD.into());
                if password == DEFAULT_ADMIN_PASSWORD {
                    tracing::warn!(
                        "created the admin account with the default password \"micro\": change it with `micro user set password`"
                    );
                }
                let hash = hash_secret(&password).map_err(|s| AuthError::Storage(s.message().to_string()))?;
                let account = StoredAccount {
                    id: ADMIN.into(),
                    name: ADMIN.into(),
                    kind: "user".into(),
                    scopes: vec![ADMIN_SCOPE.into()],
                    metadata: HashMap::from([("created".to_string(), now().to_string())]),
                    issuer: micro_core::DEFAULT_NAMESPACE.into(),
                    secret_hash: hash,
                    generation: rand::rng().next_u64(),
                };
                self.put_account(account).map_err(|s| AuthError::Storage(s.message().to_string()))?;
            }
        }
        Ok(())
    }

    /// Whether other servers share these accounts (the state is in PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.config.state.is_shared()
    }

    /// Reads accounts and rules again, after another server that shares them changed them: decisions and
    /// verified tokens are forgotten (a deleted account's tokens stop working here too).
    pub fn reload(&self) {
        match load_state(&self.store) {
            Ok(state) => {
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
                self.decisions.write().unwrap_or_else(|e| e.into_inner()).clear();
                self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload the shared accounts and rules"),
        }
    }

    fn put_account(&self, account: StoredAccount) -> Result<(), Status> {
        let key = key_of("account", &account.issuer, &account.id);
        self.store.apply(&[(key, encode(&account)?)], &[]).map_err(storage)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.accounts.insert((account.issuer.clone(), account.id.clone()), account);
        drop(state);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Whether a service owned by `owner` (the registry's [`OWNER_KEY`](crate::registry::OWNER_KEY)) may
    /// receive the bearer tokens of callers in `namespace`: the server's own registrations and the local
    /// credential's (processes of the server's OS user, which can read its keys anyway), and accounts that still
    /// administer the namespace or are the service account of service `name` in it.
    pub fn trusts(&self, owner: &str, namespace: &str, name: &str) -> bool {
        use crate::registry::{LOCAL_OWNER, SERVER_OWNER};
        if owner.is_empty() || owner == LOCAL_OWNER || owner == SERVER_OWNER {
            return true;
        }
        let Some((id, issuer)) = owner.rsplit_once('@') else { return false };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(stored) = state.accounts.get(&(issuer.to_string(), id.to_string())) else { return false };
        let account = stored.account();
        account.administers(namespace)
            || (account.kind == "service"
                && account.issuer == namespace
                && account.scopes.iter().any(|s| s.strip_prefix("service:") == Some(name)))
    }

    fn find_account(&self, namespace: &str, id_or_name: &str) -> Option<StoredAccount> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = state.accounts.get(&(namespace.to_string(), id_or_name.to_string())) {
            return Some(a.clone());
        }
        state.accounts.values().find(|a| a.issuer == namespace && a.name == id_or_name).cloned()
    }

    /// Verifies an access token: signature, expiry, and that its account still exists. A verified token is
    /// remembered until it expires or an account is deleted, so the signature is checked once per token.
    pub fn verify(&self, token: &str) -> Result<Account, Status> {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some((account, exp, seen)) = self.verified.read().unwrap_or_else(|e| e.into_inner()).get(token)
            && *seen == generation
            && *exp > now()
        {
            return Ok(account.clone());
        }
        let (account, exp) = self.verify_uncached(token)?;
        let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_DECISIONS {
            let now = now();
            cache.retain(|_, (_, exp, seen)| *exp > now && *seen == generation);
            if cache.len() >= MAX_CACHED_DECISIONS {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (account.clone(), exp, generation));
        Ok(account)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Account, u64), Status> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            let why = match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "the token's signature does not match",
                _ => "the token is malformed",
            };
            Status::unauthenticated(format!("invalid token: {why}"))
        })?;
        let c = data.claims;
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(stored) = state.accounts.get(&(c.iss.clone(), c.sub.clone())) else {
            return Err(Status::unauthenticated("invalid token: the account no longer exists"));
        };
        if stored.generation != c.generation {
            return Err(Status::unauthenticated(
                "invalid token: the account's secret changed or the account was recreated since it was issued; log in again",
            ));
        }
        if !c.sid.is_empty() && state.revoked.contains_key(&c.sid) {
            return Err(Status::unauthenticated("invalid token: its session was logged out; log in again"));
        }
        // Who the account is now, not what the token says it was: scopes come from the stored account.
        Ok((stored.account(), c.exp))
    }

    /// Decides whether `account` may call `endpoint` of service `name` in `namespace`: UNAUTHENTICATED for an
    /// anonymous caller that no public rule lets in, PERMISSION_DENIED for an account that is refused.
    pub fn authorize(
        &self,
        account: Option<&Account>,
        namespace: &str,
        name: &str,
        endpoint: &str,
    ) -> Result<(), Status> {
        if let Some(a) = account
            && !a.belongs_to(namespace)
        {
            return Err(Status::permission_denied(format!("access denied to namespace {namespace}")));
        }
        let scopes = account.map(|a| a.scopes.clone()).unwrap_or_default();
        let key: DecisionKey = (namespace.into(), account.is_some(), scopes, name.into(), endpoint.into());
        let cached = self.decisions.read().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let decision = match cached {
            Some(d) => d,
            None => {
                let rules = self.rules_of(namespace);
                let subject = Subject { authenticated: account.is_some(), scopes: &key.2 };
                let d = rules::decide(&rules, subject, "service", name, endpoint);
                let mut cache = self.decisions.write().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_DECISIONS {
                    cache.clear();
                }
                cache.insert(key, d);
                d
            }
        };
        match (decision, account) {
            (Decision::Granted, _) => Ok(()),
            (Decision::Denied, None) => {
                Err(Status::unauthenticated(format!("Unauthorized call made to {name}:{endpoint}")))
            }
            (Decision::Denied, Some(a)) => {
                Err(Status::permission_denied(format!("Forbidden call made to {name}:{endpoint} by {}", a.id)))
            }
        }
    }

    /// System rules plus the namespace's own, sorted for evaluation.
    pub fn rules_of(&self, namespace: &str) -> Vec<Rule> {
        let mut rules = system_rules(namespace);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        rules.extend(state.rules.get(namespace).into_iter().flatten().map(StoredRule::rule));
        rules::sort(&mut rules);
        rules
    }

    /// Signs an access token's claims.
    fn sign(&self, claims: &Claims) -> Result<String, Status> {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(storage)
    }

    fn issue(&self, account: &StoredAccount, expiry: Option<Duration>, session: &str) -> Result<Token, Status> {
        let ttl = expiry.filter(|d| !d.is_zero()).map_or(self.config.access_ttl, |d| d.min(self.config.access_ttl));
        let created = now();
        let claims = Claims::of(account, created, ttl, session);
        let access = self.sign(&claims)?;
        let refresh = random_token(32);
        let record = StoredRefresh {
            namespace: account.issuer.clone(),
            account: account.id.clone(),
            expires: created + self.config.refresh_ttl.as_secs(),
            session: session.to_string(),
        };
        self.tokens
            .apply(&[(format!("refresh/{}", micro_core::schema::hash(refresh.as_bytes())), encode(&record)?)], &[])
            .map_err(storage)?;
        Ok(Token { access_token: access, refresh_token: refresh, created: created as i64, expiry: claims.exp as i64 })
    }

    /// How long `source` must still wait before trying `id` again, if it must.
    fn backoff(&self, key: &FailureKey) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let until = failures.get(key)?.blocked_until?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    fn record_failure(&self, key: FailureKey) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_FAILURE_ENTRIES {
            failures.retain(|_, f| now.duration_since(f.last) < FAILURE_MEMORY);
            if failures.len() >= MAX_FAILURE_ENTRIES
                && let Some(oldest) = failures.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let f = failures.entry(key).or_insert(Failures { count: 0, last: now, blocked_until: None });
        if now.duration_since(f.last) > FAILURE_MEMORY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES - 1).min(20);
            let wait = FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
            f.blocked_until = now.checked_add(wait);
        }
    }

    /// Logs in with an id or name and a secret, from an unknown source. See [`Auth::login_from`].
    pub fn login(&self, namespace: &str, id: &str, secret: &str, expiry: Option<Duration>) -> Result<Token, Status> {
        self.login_from(namespace, id, secret, expiry, Source::default())
    }

    /// Logs in with an id or name and a secret. A missing account and a wrong secret get the same answer.
    /// Failures are counted per account and source: after [`FREE_FAILURES`], that source waits before its next
    /// attempt on that account, twice as long after each further failure. Other sources are not held back, and
    /// a correct secret from the loopback interface is always accepted, so nobody can lock the admin out.
    pub fn login_from(
        &self,
        namespace: &str,
        id: &str,
        secret: &str,
        expiry: Option<Duration>,
        source: Source,
    ) -> Result<Token, Status> {
        let key: FailureKey = (namespace.to_string(), id.to_string(), source.ip);
        let too_many = |wait: Duration| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            Status::resource_exhausted(format!("Too many failed logins; try again in {secs}s"))
        };
        let backoff = self.backoff(&key);
        if let Some(wait) = backoff
            && !source.loopback()
        {
            return Err(too_many(wait));
        }
        let account = self.find_account(namespace, id);
        // Hash even when the account is missing, so timing does not tell the two apart.
        let ok = match &account {
            Some(a) => secret_matches(secret, &a.secret_hash),
            None => {
                let _ = secret_matches(secret, dummy_hash());
                false
            }
        };
        match (ok, account) {
            (true, Some(a)) => {
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                self.issue(&a, expiry, &random_token(16))
            }
            _ => {
                self.record_failure(key);
                Err(backoff.map_or_else(|| Status::unauthenticated("Invalid credentials"), too_many))
            }
        }
    }

    /// An access token of the account `id` of `namespace` (or else of `micro`), valid for `ttl` (at most the access
    /// tokens' lifetime), without a refresh token: what the tasks service calls a task's stages with, as the task's
    /// owner.
    pub(crate) fn access_token_for(&self, namespace: &str, id: &str, ttl: Duration) -> Result<String, Status> {
        let account = self
            .find_account(namespace, id)
            .or_else(|| self.find_account(micro_core::DEFAULT_NAMESPACE, id))
            .ok_or_else(|| Status::permission_denied(format!("the account {id} no longer exists")))?;
        self.sign(&Claims::of(&account, now(), ttl.min(self.config.access_ttl), ""))
    }

    /// Exchanges a refresh token for a new pair; the old refresh token stops working.
    pub fn refresh(&self, refresh_token: &str, expiry: Option<Duration>) -> Result<Token, Status> {
        let key = format!("refresh/{}", micro_core::schema::hash(refresh_token.as_bytes()));
        // Taken, not read: of two uses of one refresh token (on any server), one wins.
        let taken = self.tokens.take(&key).map_err(storage)?;
        let Some(record) = taken.and_then(|bytes| serde_json::from_slice::<StoredRefresh>(&bytes).ok()) else {
            return Err(Status::unauthenticated("invalid token provided"));
        };
        if record.expires < now() {
            return Err(Status::unauthenticated("invalid token provided"));
        }
        let account = self
            .find_account(&record.namespace, &record.account)
            .ok_or_else(|| Status::unauthenticated("invalid token provided"))?;
        let session = if record.session.is_empty() { random_token(16) } else { record.session };
        if self.state.read().unwrap_or_else(|e| e.into_inner()).revoked.contains_key(&session) {
            return Err(Status::unauthenticated("invalid token provided"));
        }
        self.issue(&account, expiry, &session)
    }

    /// Revokes one refresh token (logout) and ends its session: the session's access tokens stop verifying at
    /// once, here and on every server that shares the state. An unknown token is not an error.
    pub fn revoke(&self, refresh_token: &str) -> Result<(), Status> {
        let key = format!("refresh/{}", micro_core::schema::hash(refresh_token.as_bytes()));
        let taken = self.tokens.take(&key).map_err(storage)?;
        let Some(record) = taken.and_then(|bytes| serde_json::from_slice::<StoredRefresh>(&bytes).ok()) else {
            return Ok(());
        };
        if record.session.is_empty() {
            return Ok(());
        }
        // Remembered for as long as an access token of the session can live.
        let now = now();
        let revoked = StoredRevoked { expires: now + self.config.access_ttl.as_secs() + 1 };
        let expired: Vec<String> = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state.revoked.iter().filter(|(_, e)| **e <= now).map(|(sid, _)| format!("revoked/{sid}")).collect()
        };
        self.store.apply(&[(format!("revoked/{}", record.session), encode(&revoked)?)], &expired).map_err(storage)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.revoked.retain(|_, expires| *expires > now);
        state.revoked.insert(record.session, revoked.expires);
        drop(state);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn revoke_refresh_tokens(&self, namespace: &str, id: &str) -> Result<(), Status> {
        let stale: Vec<String> = scan::<StoredRefresh>(&self.tokens, "refresh/")
            .map_err(storage)?
            .into_iter()
            .filter(|(_, r)| r.namespace == namespace && r.account == id)
            .map(|(k, _)| k)
            .collect();
        self.tokens.apply(&[], &stale).map_err(storage)
    }

    /// Creates an account; returns it with its plaintext secret (generated when empty).
    #[allow(clippy::too_many_arguments)]
    pub fn create_account(
        &self,
        namespace: &str,
        id: &str,
        name: &str,
        kind: &str,
        scopes: Vec<String>,
        mut metadata: HashMap<String, String>,
        secret: &str,
    ) -> Result<AccountMsg, Status> {
        if id.trim().is_empty() {
            return Err(Status::invalid_argument("ID required"));
        }
        let kind = if kind.is_empty() { "user" } else { kind };
        if kind != "user" && kind != "service" {
            return Err(Status::invalid_argument(format!("invalid account type {kind:?}: use user or service")));
        }
        let name = if name.is_empty() { id } else { name };
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.accounts.contains_key(&(namespace.to_string(), id.to_string())) {
                return Err(Status::already_exists("Account with this ID already exists"));
            }
            if state.accounts.values().any(|a| a.issuer == namespace && (a.name == name || a.id == name)) {
                return Err(Status::already_exists("Account with this Name already exists"));
            }
        }
        let secret = if secret.is_empty() { random_token(24) } else { secret.to_string() };
        metadata.insert("created".into(), now().to_string());
        let account = StoredAccount {
            id: id.into(),
            name: name.into(),
            kind: kind.into(),
            scopes,
            metadata,
            issuer: namespace.into(),
            secret_hash: hash_secret(&secret)?,
            generation: rand::rng().next_u64(),
        };
        self.put_account(account.clone())?;
        let mut msg = account.message();
        msg.secret = secret;
        Ok(msg)
    }

    /// The accounts of a namespace, without secrets, sorted by id.
    pub fn accounts(&self, namespace: &str) -> Vec<AccountMsg> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<AccountMsg> =
            state.accounts.values().filter(|a| a.issuer == namespace).map(StoredAccount::message).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Deletes an account and revokes its refresh tokens.
    pub fn delete_account(&self, namespace: &str, id: &str) -> Result<(), Status> {
        if self.find_account(namespace, id).is_none_or(|a| a.id != id) {
            return Err(Status::not_found("Account not found"));
        }
        self.store.apply(&[], &[key_of("account", namespace, id)]).map_err(storage)?;
        self.state.write().unwrap_or_else(|e| e.into_inner()).accounts.remove(&(namespace.to_string(), id.to_string()));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.revoke_refresh_tokens(namespace, id)
    }

    /// Changes a secret. `old` is checked unless `trusted` (an admin acting on another account).
    pub fn change_secret(&self, namespace: &str, id: &str, old: &str, new: &str, trusted: bool) -> Result<(), Status> {
        if new.is_empty() {
            return Err(Status::invalid_argument("New secret should not be blank"));
        }
        let mut account = self
            .find_account(namespace, id)
            .filter(|a| a.id == id)
            .ok_or_else(|| Status::not_found("Account not found"))?;
        if !trusted && !secret_matches(old, &account.secret_hash) {
            return Err(Status::unauthenticated("Secret not correct"));
        }
        account.secret_hash = hash_secret(new)?;
        // Every access token issued before stops verifying.
        account.generation = rand::rng().next_u64();
        self.put_account(account)?;
        self.revoke_refresh_tokens(namespace, id)
    }

    /// Creates a rule.
    pub fn create_rule(&self, namespace: &str, rule: Rule) -> Result<(), Status> {
        if rule.id.trim().is_empty() {
            return Err(Status::invalid_argument("ID missing"));
        }
        if rule.id.starts_with("system-") {
            return Err(Status::invalid_argument("Rule ids starting with system- are reserved"));
        }
        let resource = rule.resource.clone().ok_or_else(|| Status::invalid_argument("Resource missing"))?;
        if resource.r#type.is_empty() || resource.name.is_empty() || resource.endpoint.is_empty() {
            return Err(Status::invalid_argument("Invalid resource, must be in the format type:name:endpoint"));
        }
        let granted = match Access::try_from(rule.access) {
            Ok(Access::Granted) => true,
            Ok(Access::Denied) => false,
            _ => return Err(Status::invalid_argument("Access missing")),
        };
        let stored = StoredRule {
            id: rule.id.clone(),
            scope: rule.scope,
            kind: resource.r#type,
            name: resource.name,
            endpoint: resource.endpoint,
            granted,
            priority: rule.priority,
        };
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.rules.get(namespace).is_some_and(|r| r.iter().any(|r| r.id == stored.id)) {
                return Err(Status::already_exists("A rule with this ID already exists"));
            }
        }
        self.store.apply(&[(key_of("rule", namespace, &stored.id), encode(&stored)?)], &[]).map_err(storage)?;
        self.state.write().unwrap_or_else(|e| e.into_inner()).rules.entry(namespace.into()).or_default().push(stored);
        self.decisions.write().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// Deletes a rule.
    pub fn delete_rule(&self, namespace: &str, id: &str) -> Result<(), Status> {
        if id.starts_with("system-") {
            return Err(Status::invalid_argument("System rules cannot be deleted"));
        }
        let exists = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state.rules.get(namespace).is_some_and(|r| r.iter().any(|r| r.id == id))
        };
        if !exists {
            return Err(Status::not_found("Rule not found"));
        }
        self.store.apply(&[], &[key_of("rule", namespace, id)]).map_err(storage)?;
        if let Some(rules) = self.state.write().unwrap_or_else(|e| e.into_inner()).rules.get_mut(namespace) {
            rules.retain(|r| r.id != id);
        }
        self.decisions.write().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// The account behind a stored id, as a message without secret.
    pub fn account(&self, namespace: &str, id: &str) -> Option<AccountMsg> {
        self.find_account(namespace, id).filter(|a| a.id == id).map(|a| a.message())
    }
}

/// The signing key's file, in the data dir.
pub const KEY_FILE: &str = "auth.key";

/// The hash of a random secret, verified against when an account is missing so that both cases take the same time.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_secret(&random_token(16)).unwrap_or_default())
}

fn load_or_create_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {
            return Err(format!("{} is too short to be a signing key; delete it to make a new one", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let mut key = vec![0u8; 64];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, &key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.sync_all().map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_with_small_memory_and_old_hashes_still_verify() {
        let hash = hash_secret("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{hash}");
        assert!(secret_matches("s3cret", &hash) && !secret_matches("other", &hash));
        // A hash made with the crate's defaults (19 MiB, 2 passes), as servers made before.
        let old = argon2::Argon2::default().hash_password(b"s3cret").unwrap().to_string();
        assert!(old.contains("m=19456,t=2,p=1"), "{old}");
        assert!(secret_matches("s3cret", &old) && !secret_matches("other", &old));
    }

    fn open() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::open(AuthConfig::new(dir.path().to_path_buf())).unwrap();
        (dir, auth)
    }

    #[test]
    fn default_admin_logs_in_and_tokens_verify() {
        let (_dir, auth) = open();
        let token = auth.login("micro", "admin", "micro", None).unwrap();
        let account = auth.verify(&token.access_token).unwrap();
        assert_eq!(account.id, "admin");
        assert!(account.administers("micro") && account.administers("other"));
        assert_eq!(auth.login("micro", "admin", "wrong", None).unwrap_err().message(), "Invalid credentials");
        assert_eq!(auth.login("micro", "nobody", "micro", None).unwrap_err().message(), "Invalid credentials");
        assert!(auth.login("other", "admin", "micro", None).is_err(), "other namespaces have no default admin");
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let (_dir, auth) = open();
        let token = auth.login("micro", "admin", "micro", None).unwrap().access_token;
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(auth.verify(std::str::from_utf8(&tampered).unwrap()).is_err());
        let (_dir2, other) = open();
        assert!(other.verify(&token).is_err(), "a token signed by another server's key is refused");
    }

    #[test]
    fn refresh_rotates() {
        let (_dir, auth) = open();
        let first = auth.login("micro", "admin", "micro", None).unwrap();
        let second = auth.refresh(&first.refresh_token, None).unwrap();
        assert!(auth.verify(&second.access_token).is_ok());
        assert!(auth.refresh(&first.refresh_token, None).is_err(), "a used refresh token stops working");
        assert!(auth.refresh(&second.refresh_token, None).is_ok());
    }

    #[test]
    fn password_change_revokes_and_old_secret_stops_working() {
        let (_dir, auth) = open();
        let t = auth.login("micro", "admin", "micro", None).unwrap();
        auth.change_secret("micro", "admin", "micro", "new-secret", false).unwrap();
        assert!(auth.login("micro", "admin", "micro", None).is_err());
        assert!(auth.login("micro", "admin", "new-secret", None).is_ok());
        assert!(auth.refresh(&t.refresh_token, None).is_err());
        assert!(auth.change_secret("micro", "admin", "wrong", "x", false).is_err());
    }

    #[test]
    fn accounts_by_name_and_duplicates() {
        let (_dir, auth) = open();
        let created = auth.create_account("ns", "u1", "alice", "user", vec![], HashMap::new(), "pw").unwrap();
        assert_eq!(created.secret, "pw");
        assert!(auth.login("ns", "alice", "pw", None).is_ok());
        assert!(auth.login("ns", "u1", "pw", None).is_ok());
        assert_eq!(
            auth.create_account("ns", "u2", "alice", "user", vec![], HashMap::new(), "pw").unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            auth.create_account("ns", "u1", "", "user", vec![], HashMap::new(), "pw").unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
    }

    #[test]
    fn failed_logins_back_off_per_source_and_never_lock_out_loopback() {
        let (_dir, auth) = open();
        let from = |ip: &str| Source { ip: Some(ip.parse().unwrap()) };
        let attacker = from("203.0.113.7");
        for _ in 0..=FREE_FAILURES {
            assert_eq!(
                auth.login_from("micro", "admin", "wrong", None, attacker).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        // The attacker's source now waits, even with the right secret…
        let held = auth.login_from("micro", "admin", "micro", None, attacker).unwrap_err();
        assert_eq!(held.code(), tonic::Code::ResourceExhausted, "{held:?}");
        // …but the admin, from another source or from loopback, is not locked out.
        assert!(auth.login_from("micro", "admin", "micro", None, from("198.51.100.1")).is_ok());
        assert!(auth.login_from("micro", "admin", "micro", None, from("127.0.0.1")).is_ok());
        // From loopback, a wrong secret is still held back once over the limit.
        for _ in 0..=FREE_FAILURES {
            let _ = auth.login_from("micro", "admin", "wrong", None, from("127.0.0.1"));
        }
        let err = auth.login_from("micro", "admin", "wrong", None, from("127.0.0.1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(auth.login_from("micro", "admin", "micro", None, from("127.0.0.1")).is_ok());
        // The wait doubles with each further failure, up to the cap.
        let key: FailureKey = ("micro".into(), "x".into(), attacker.ip);
        for _ in 0..(FREE_FAILURES + 3) {
            auth.record_failure(key.clone());
        }
        let wait = auth.backoff(&key).unwrap();
        assert!(wait > Duration::from_secs(3) && wait <= Duration::from_secs(4), "{wait:?}");
        for _ in 0..40 {
            auth.record_failure(key.clone());
        }
        assert!(auth.backoff(&key).unwrap() <= MAX_BACKOFF);
    }

    #[test]
    fn access_tokens_end_with_logout_secret_changes_and_deletion() {
        let (_dir, auth) = open();
        // Logout (revoke) ends that session's access token, not another session's.
        let one = auth.login("micro", "admin", "micro", None).unwrap();
        let two = auth.login("micro", "admin", "micro", None).unwrap();
        assert!(auth.verify(&one.access_token).is_ok());
        auth.revoke(&one.refresh_token).unwrap();
        assert!(auth.verify(&one.access_token).unwrap_err().message().contains("logged out"));
        assert!(auth.refresh(&one.refresh_token, None).is_err());
        assert!(auth.verify(&two.access_token).is_ok());
        // A refreshed token keeps its session: revoking the new refresh token ends it too.
        let three = auth.refresh(&two.refresh_token, None).unwrap();
        auth.revoke(&three.refresh_token).unwrap();
        assert!(auth.verify(&three.access_token).is_err());
        assert!(auth.verify(&two.access_token).is_err());

        // A password change ends every access token of the account.
        let t = auth.login("micro", "admin", "micro", None).unwrap();
        auth.change_secret("micro", "admin", "micro", "new", false).unwrap();
        assert!(auth.verify(&t.access_token).unwrap_err().message().contains("secret changed"));
        assert!(auth.verify(&auth.login("micro", "admin", "new", None).unwrap().access_token).is_ok());

        // A deleted admin, recreated without scopes: the old token fails, and a new one carries no admin scope.
        auth.create_account("micro", "boss", "", "user", vec![ADMIN_SCOPE.into()], HashMap::new(), "pw").unwrap();
        let old = auth.login("micro", "boss", "pw", None).unwrap();
        assert!(auth.verify(&old.access_token).unwrap().administers("micro"));
        auth.delete_account("micro", "boss").unwrap();
        auth.create_account("micro", "boss", "", "user", vec![], HashMap::new(), "pw").unwrap();
        assert!(auth.verify(&old.access_token).is_err());
        let new = auth.login("micro", "boss", "pw", None).unwrap();
        assert!(!auth.verify(&new.access_token).unwrap().administers("micro"));
    }

    /// Account `u` of namespace `a`, a user without scopes.
    fn plain_user() -> Account {
        Account { id: "u".into(), name: "u".into(), kind: "user".into(), scopes: vec![], issuer: "a".into() }
    }

    /// A rule that denies every account helloworld, at priority 0.
    fn deny_hello() -> Rule {
        Rule {
            id: "no-hello".into(),
            scope: "*".into(),
            resource: rules::parse_resource("service:helloworld:*"),
            access: Access::Denied as i32,
            priority: 0,
        }
    }

    #[test]
    fn rules_and_namespaces() {
        let (_dir, auth) = open();
        // Anonymous: registry reads are public in micro only.
        assert!(auth.authorize(None, "micro", "registry", "Registry.ListServices").is_ok());
        assert_eq!(
            auth.authorize(None, "other", "registry", "Registry.ListServices").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(auth.authorize(None, "micro", "auth", "Auth.Token").is_ok());
        assert!(auth.authorize(None, "micro", "helloworld", "Helloworld.Call").is_err());
        let user = plain_user();
        assert!(auth.authorize(Some(&user), "a", "helloworld", "Helloworld.Call").is_ok());
        assert_eq!(
            auth.authorize(Some(&user), "b", "helloworld", "Helloworld.Call").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A deny rule at equal priority wins over the system grant, and the cache notices the change.
        let deny = deny_hello();
        auth.create_rule("a", deny).unwrap();
        assert_eq!(
            auth.authorize(Some(&user), "a", "helloworld", "Helloworld.Call").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        auth.delete_rule("a", "no-hello").unwrap();
        assert!(auth.authorize(Some(&user), "a", "helloworld", "Helloworld.Call").is_ok());
    }

    /// Two servers on one PostgreSQL database (`MICRO_TEST_POSTGRES_URL`, as the store's tests) with the test keys
    /// that every such server shares: what one changes, the other sees after a reload (which the server runs on
    /// PostgreSQL's announcement).
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread")]
    async fn servers_that_share_postgres_see_each_others_changes() {
        let Some(url) = micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres") else { return };
        tokio::task::spawn_blocking(move || {
            let open = || {
                let dir = tempfile::tempdir().unwrap();
                let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/it/fixtures/shared-keys/auth.key");
                std::fs::copy(key, dir.path().join(KEY_FILE)).unwrap();
                let mut config = AuthConfig::new(dir.path().to_path_buf());
                config.state = state::Location::Postgres(url.clone());
                let auth = Auth::open(config).unwrap();
                (dir, auth)
            };
            let ((_a_dir, a), (_b_dir, b)) = (open(), open());
            let ns = format!("ns-{}", uuid::Uuid::new_v4());
            a.create_account(&ns, "u", "", "user", vec![], HashMap::new(), "pw").unwrap();
            assert!(b.login(&ns, "u", "pw", None).is_err(), "not yet reloaded");
            b.reload();
            let first = b.login(&ns, "u", "pw", None).unwrap();
            assert_eq!(a.verify(&first.access_token).unwrap().id, "u", "one key signs for both");
            // A refresh token works once, on whichever server.
            let second = a.refresh(&first.refresh_token, None).unwrap();
            assert!(b.refresh(&first.refresh_token, None).is_err());
            // Rules.
            let user = Account { issuer: ns.clone(), ..plain_user() };
            assert!(b.authorize(Some(&user), &ns, "helloworld", "Helloworld.Call").is_ok());
            let deny = deny_hello();
            a.create_rule(&ns, deny).unwrap();
            b.reload();
            assert!(b.authorize(Some(&user), &ns, "helloworld", "Helloworld.Call").is_err());
            // Deleting the account ends its tokens everywhere.
            assert!(b.verify(&second.access_token).is_ok());
            a.delete_account(&ns, "u").unwrap();
            b.reload();
            assert!(b.verify(&second.access_token).is_err());
        })
        .await
        .unwrap();
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let auth = Auth::open(AuthConfig::new(dir.path().to_path_buf())).unwrap();
            auth.create_account("ns", "svc", "", "service", vec!["service".into()], HashMap::new(), "s").unwrap();
        }
        let auth = Auth::open(AuthConfig::new(dir.path().to_path_buf())).unwrap();
        assert!(auth.login("ns", "svc", "s", None).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
