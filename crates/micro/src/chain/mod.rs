//! The handler chain: SpaceONE's fixed pipeline around every call, as one tower layer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use micro::chain::{Chain, Inspect, Stage};
//! use micro::{broker::Broker, client::Client};
//!
//! let client = Client::from_env()?;
//! let chain = Chain::new()
//!     .authenticate(Inspect::new(&client)) // the caller's token, verified by the platform's auth
//!     .authorize("Inventory.Collect", "inventory:write") // a scope the caller's account must have
//!     .log() // one line per call
//!     .events(Broker::from_client(&client)) // started / succeeded / failed on `inventory.calls`
//!     .skip("Inventory.Ping", Stage::Authenticate); // a public endpoint
//! micro::Service::new("inventory")
//!     // .add_service(InventoryServer::new(Handler))
//!     .layer(chain)
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! In a handler, [`account`] says who called. Every call of an added service passes, in this order whatever the
//! order of the builder calls:
//!
//! 1. **authentication** ([`Chain::authenticate`]): the caller's account, from its bearer token verified by a
//!    [`Verifier`] (verified tokens are cached briefly), else from the proxy's identity headers; none is
//!    `UNAUTHENTICATED`;
//! 2. **authorization** ([`Chain::authorize`]): the permission an endpoint needs, among the account's scopes; else
//!    `PERMISSION_DENIED` naming the permission;
//! 3. **events** ([`Chain::events`]): `started` is published;
//! 4. **mutation hooks** ([`Chain::hook`]): each hook's `before`, in the order added (a hook may change the request's
//!    metadata, or reject the call with a status);
//! 5. **the handler**;
//! 6. the hooks' `after`, in reverse order (those whose `before` ran), seeing the outcome;
//! 7. **events**: `succeeded` or `failed`, with the duration and the code;
//! 8. **the request log** ([`Chain::log`]): one line with the endpoint, the account, the code and the duration.
//!
//! A call refused by authentication or authorization skips 3 to 6: it publishes `failed` and is logged. A call
//! whose caller goes away before it ends (its future is dropped) publishes `failed` and is logged with `CANCELLED`. Each stage
//! can be turned off per endpoint ([`Chain::skip`]). The gRPC health, reflection and debug services (what the
//! platform calls to check and describe a service) pass through untouched.
//!
//! The outcome is the status the response starts with: a handler's error (tonic answers it as a trailers-only
//! response) or OK. An error a streaming handler sends in the middle of a stream is not seen, and the duration of a
//! streaming call is the time until its response starts.

mod authn;
mod authz;
mod events;
mod hooks;
mod log;

pub use authn::{ACCOUNT_ID_HEADER, ACCOUNT_ISSUER_HEADER, Account, Inspect, Verifier, account};
pub use authz::permits;
pub use events::{CallEvent, EventKind, Publisher};
pub use hooks::{Hook, Outcome};

use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;

/// A stage of the chain, to turn off per endpoint with [`Chain::skip`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Authentication. An endpoint that skips it has no account, so it must not need a permission either.
    Authenticate,
    /// Authorization: the endpoint's permission is not checked.
    Authorize,
    /// The request log line.
    Log,
    /// The mutation hooks, before and after.
    Hooks,
    /// The call's events.
    Events,
}

/// The gRPC services the chain never touches: the platform checks and describes services through them.
const PASS_THROUGH: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "debug.Debug",
];

/// How long verified tokens are cached unless [`Chain::token_ttl`] says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30);

/// One call, as the chain's stages and the hooks see it (a handler finds it in the request's extensions too:
/// `request.extensions().get::<Call>()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// A unique id for the call (its events carry it).
    pub id: String,
    /// The HTTP path: `/helloworld.Helloworld/Call`.
    pub path: String,
    /// The gRPC service: `helloworld.Helloworld`.
    pub service: String,
    /// The endpoint, as micro names it: `Helloworld.Call`.
    pub endpoint: String,
    /// Who called, once authenticated.
    pub account: Option<Account>,
}

impl Call {
    /// The call to `path` (`/package.Service/Method`), or `None` for a path that is not a gRPC method.
    pub fn from_path(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        let short = service.rsplit_once('.').map_or(service, |(_, s)| s);
        Some(Self {
            id: uuid::Uuid::new_v4().to_string(),
            path: path.to_string(),
            service: service.to_string(),
            endpoint: format!("{short}.{method}"),
            account: None,
        })
    }

    /// Whether `pattern` names this call: its endpoint (`Helloworld.Call`), its path (`/helloworld.Helloworld/Call`),
    /// every method of its service (`Helloworld.*`), or every call (`*`).
    pub fn matches(&self, pattern: &str) -> bool {
        self.specificity(pattern).is_some()
    }

    /// How precisely `pattern` names this call (higher is more precise), or `None`.
    fn specificity(&self, pattern: &str) -> Option<u8> {
        if pattern == self.endpoint || pattern == self.path {
            Some(2)
        } else if pattern.strip_suffix(".*").is_some_and(|h| self.endpoint.split_once('.').is_some_and(|(s, _)| s == h))
        {
            Some(1)
        } else if pattern == "*" {
            Some(0)
        } else {
            None
        }
    }

    /// The service's name by micro's convention (the gRPC service's package): `helloworld`.
    fn service_name(&self) -> &str {
        self.service.rsplit_once('.').map_or(self.service.as_str(), |(package, _)| package)
    }
}

/// The handler chain: a tower layer built in a fixed order (see the [module docs](self)), applied with
/// [`crate::Service::layer`]. Nothing is on until asked for. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Chain {
    authn: Option<authn::Authenticator>,
    token_ttl: Option<Duration>,
    permissions: Vec<(String, String)>,
    log: bool,
    hooks: Vec<Arc<dyn Hook>>,
    events: Option<events::Emitter>,
    events_topic: Option<String>,
    skips: HashMap<Stage, HashSet<String>>,
    #[cfg(test)]
    trace: Option<Arc<std::sync::Mutex<Vec<String>>>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("authenticate", &self.authn.is_some())
            .field("permissions", &self.permissions)
            .field("log", &self.log)
            .field("hooks", &self.hooks.len())
            .field("events", &self.events.is_some())
            .field("events_topic", &self.events_topic)
            .field("skips", &self.skips)
            .finish()
    }
}

impl Chain {
    /// A chain with every stage off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticates callers: a bearer token the proxy forwards (it does to services trusted to act for the
    /// caller: registered with the local credential, by an admin, or by the service's own account) is verified by
    /// `verifier` (the platform's auth: [`Inspect`]) and the account it names, with its scopes, is cached for the
    /// [token TTL](Chain::token_ttl); without a token, the account is the one the proxy names in the
    /// `micro-account-id` and `micro-account-issuer` headers, without scopes (see [`Account::verified`]).
    ///
    /// **Trust.** The proxy always replaces those headers, so they are true for calls through the proxy. A caller
    /// that reaches the service's address directly can set them: keep the service on an address only the proxy
    /// reaches (the default, `127.0.0.1`), or require a permission (header accounts have no scopes).
    pub fn authenticate(mut self, verifier: impl Verifier) -> Self {
        self.authn = Some(authn::Authenticator::new(Some(Arc::new(verifier))));
        self
    }

    /// Authenticates callers by the proxy's identity headers only (no token is verified, accounts have no scopes).
    /// The trust this implies is [`Chain::authenticate`]'s.
    pub fn authenticate_headers(mut self) -> Self {
        self.authn = Some(authn::Authenticator::new(None));
        self
    }

    /// How long a verified token's account is cached (default [`DEFAULT_TOKEN_TTL`]): a revoked token or a changed
    /// account takes up to this long to be noticed. Zero verifies every call.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = Some(ttl);
        self
    }

    /// The permission (a scope, e.g. `inventory:write`) the caller's account needs to call `endpoint`
    /// (`Handler.Method`, `/package.Handler/Method`, `Handler.*` or `*`; the most precise pattern applies). An
    /// account passes with the scope itself, `*`, `admin`, or a scope `prefix:*` covering it (`inventory:*`).
    pub fn authorize(mut self, endpoint: impl Into<String>, permission: impl Into<String>) -> Self {
        self.permissions.push((endpoint.into(), permission.into()));
        self
    }

    /// Logs one line per call (target `micro::chain`, level info): endpoint, account, code, duration.
    pub fn log(mut self) -> Self {
        self.log = true;
        self
    }

    /// Adds a mutation hook: its `before` runs after the hooks added earlier, its `after` before theirs.
    pub fn hook(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Publishes each call's events with `publisher` (a [`crate::broker::Broker`]) on the topic
    /// `<service>.calls` (the service by micro's convention: `inventory.calls` for `/inventory.Inventory/…`), or
    /// [`Chain::events_topic`]. Publishing never holds a call up: events queue (up to 1024) for one background
    /// task that publishes them in order; when the queue is full, events are dropped and a warning says so.
    pub fn events(mut self, publisher: impl Publisher) -> Self {
        self.events = Some(events::Emitter::new(Arc::new(publisher)));
        self
    }

    /// The topic of the events, instead of `<service>.calls` (see [`Chain::events`]).
    pub fn events_topic(mut self, topic: impl Into<String>) -> Self {
        self.events_topic = Some(topic.into());
        self
    }

    fn topic(&self, call: &Call) -> String {
        match &self.events_topic {
            Some(t) => t.clone(),
            None => format!("{}.calls", call.service_name()),
        }
    }

    /// Turns `stage` off for `endpoint` (a pattern as in [`Chain::authorize`]).
    pub fn skip(mut self, endpoint: impl Into<String>, stage: Stage) -> Self {
        self.skips.entry(stage).or_default().insert(endpoint.into());
        self
    }

    fn on(&self, stage: Stage, call: &Call) -> bool {
        let configured = match stage {
            Stage::Authenticate => self.authn.is_some(),
            Stage::Authorize => !self.permissions.is_empty(),
            Stage::Log => self.log,
            Stage::Hooks => !self.hooks.is_empty(),
            Stage::Events => self.events.is_some(),
        };
        configured && !self.skips.get(&stage).is_some_and(|s| s.iter().any(|p| call.matches(p)))
    }

    /// The permission `call` needs: the most precise pattern's.
    fn permission(&self, call: &Call) -> Option<&str> {
        self.permissions
            .iter()
            .filter_map(|(pattern, permission)| call.specificity(pattern).map(|s| (s, permission)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p.as_str())
    }

    fn mark(&self, _what: &str) {
        #[cfg(test)]
        if let Some(t) = &self.trace {
            t.lock().unwrap().push(_what.to_string());
        }
    }

    /// Runs `req` through the stages and `inner`.
    async fn run<S>(&self, mut inner: S, mut req: http::Request<Body>) -> http::Response<Body>
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    {
        let Some(mut call) = Call::from_path(req.uri().path()).filter(|c| !PASS_THROUGH.contains(&c.service.as_str()))
        else {
            return match inner.call(req).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
        };
        let started = Instant::now();

        // 1 and 2: who calls, and may they.
        let admitted = self.admit(&mut call, req.headers()).await;
        if let Err(status) = admitted {
            let outcome = Outcome::of_status(&status);
            self.finish(&call, &outcome, started);
            return status.into_http();
        }
        if let Some(account) = &call.account {
            req.extensions_mut().insert(account.clone());
        }
        req.extensions_mut().insert(call.clone());
        // A call whose caller goes away (its future is dropped) still ends its events and its log line.
        let mut pending = Pending { chain: self, call: &call, started, armed: true };

        // 3.
        if self.on(Stage::Events, &call) {
            self.mark("events:started");
            if let Some(e) = &self.events {
                e.emit(self.topic(&call), CallEvent::new(EventKind::Started, &call, None, None));
            }
        }

        // 4: hooks before, 5: the handler, 6: hooks after.
        let hooks: &[Arc<dyn Hook>] = if self.on(Stage::Hooks, &call) { &self.hooks } else { &[] };
        let mut ran = 0;
        let mut rejected = None;
        if !hooks.is_empty() {
            let mut metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(req.headers_mut()));
            for hook in hooks {
                self.mark("hook:before");
                match hook.before(&call, &mut metadata).await {
                    Ok(()) => ran += 1,
                    Err(status) => {
                        rejected = Some(status);
                        break;
                    }
                }
            }
            *req.headers_mut() = metadata.into_headers();
        }
        let response = match rejected {
            Some(status) => status.into_http(),
            None => {
                self.mark("handler");
                match inner.call(req).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                }
            }
        };
        let outcome = Outcome::of_response(&response);
        for hook in hooks[..ran].iter().rev() {
            self.mark("hook:after");
            hook.after(&call, &outcome).await;
        }

        // 7 and 8.
        pending.armed = false;
        self.finish(&call, &outcome, started);
        response
    }

    /// Authentication and authorization: the caller's account goes into `call`.
    async fn admit(&self, call: &mut Call, headers: &http::HeaderMap) -> Result<(), tonic::Status> {
        if self.on(Stage::Authenticate, call) {
            self.mark("authenticate");
            if let Some(a) = &self.authn {
                call.account = Some(a.authenticate(headers, self.token_ttl.unwrap_or(DEFAULT_TOKEN_TTL)).await?);
            }
        }
        if self.on(Stage::Authorize, call)
            && let Some(permission) = self.permission(call)
        {
            self.mark("authorize");
            authz::check(call.account.as_ref(), &call.endpoint, permission, self.authn.is_some())?;
        }
        Ok(())
    }

    /// The call's last events and its log line.
    fn finish(&self, call: &Call, outcome: &Outcome, started: Instant) {
        let elapsed = started.elapsed();
        if self.on(Stage::Events, call)
            && let Some(e) = &self.events
        {
            let kind = if outcome.is_ok() { EventKind::Succeeded } else { EventKind::Failed };
            self.mark(if outcome.is_ok() { "events:succeeded" } else { "events:failed" });
            e.emit(self.topic(call), CallEvent::new(kind, call, Some(elapsed), Some(outcome)));
        }
        if self.on(Stage::Log, call) {
            self.mark("log");
            log::line(call, outcome, elapsed);
        }
    }
}

/// Ends a call that is dropped between its admission and its end: `CANCELLED`.
struct Pending<'a> {
    chain: &'a Chain,
    call: &'a Call,
    started: Instant,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            let outcome = Outcome { code: tonic::Code::Cancelled, message: "the caller went away".into() };
            self.chain.finish(self.call, &outcome, self.started);
        }
    }
}

impl<S> tower::Layer<S> for Chain {
    type Service = ChainService<S>;

    fn layer(&self, inner: S) -> ChainService<S> {
        ChainService { inner, chain: Arc::new(self.clone()) }
    }
}

/// A service wrapped in the [`Chain`].
#[derive(Clone)]
pub struct ChainService<S> {
    inner: S,
    chain: Arc<Chain>,
}

impl<S> std::fmt::Debug for ChainService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainService").field("chain", &self.chain).finish()
    }
}

impl<S> tower::Service<http::Request<Body>> for ChainService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is not ready yet; the one polled ready serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let chain = self.chain.clone();
        Box::pin(async move { Ok(chain.run(inner, req).await) })
    }
}

#[cfg(test)]
mod tests;
