//! The chain's order, opt-outs and statuses, with a fake handler, verifier and publisher.

use super::*;
use std::sync::Mutex;
use tonic::Code;
use tower::{Layer, ServiceExt};

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, what: impl Into<String>) {
    log.lock().unwrap().push(what.into());
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// A verifier that knows the token `good` (jane, scope `hello:call`) and `weak` (joe, no scope).
fn verifier(log: &Log) -> impl Verifier {
    let log = log.clone();
    move |token: String| {
        let log = log.clone();
        async move {
            push(&log, format!("verify {token}"));
            let account = |id: &str, scopes: &[&str]| Account {
                id: id.into(),
                issuer: "micro".into(),
                kind: "user".into(),
                name: id.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                verified: true,
            };
            match token.as_str() {
                "good" => Ok(account("jane", &["hello:call"])),
                "weak" => Ok(account("joe", &[])),
                _ => Err(tonic::Status::unauthenticated("invalid token")),
            }
        }
    }
}

/// A hook that records its calls, sets `x-<name>` on the way in, and refuses the call when told to.
struct Recording {
    name: &'static str,
    log: Log,
    refuse: bool,
}

impl Hook for Recording {
    fn before<'a>(
        &'a self,
        _call: &'a Call,
        metadata: &'a mut tonic::metadata::MetadataMap,
    ) -> BoxFuture<'a, Result<(), tonic::Status>> {
        Box::pin(async move {
            push(&self.log, format!("{}.before", self.name));
            if self.refuse {
                return Err(tonic::Status::failed_precondition(format!("{} says no", self.name)));
            }
            metadata.insert(
                format!("x-{}", self.name).parse::<tonic::metadata::MetadataKey<_>>().unwrap(),
                "1".parse().unwrap(),
            );
            Ok(())
        })
    }

    fn after<'a>(&'a self, _call: &'a Call, outcome: &'a Outcome) -> BoxFuture<'a, ()> {
        Box::pin(async move { push(&self.log, format!("{}.after {:?}", self.name, outcome.code)) })
    }
}

fn hook(name: &'static str, log: &Log) -> Recording {
    Recording { name, log: log.clone(), refuse: false }
}

/// A publisher that records the events.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, CallEvent)>>>);

impl Publisher for Events {
    fn publish<'a>(&'a self, topic: &'a str, event: &'a CallEvent) -> BoxFuture<'a, Result<(), String>> {
        self.0.lock().unwrap().push((topic.to_string(), event.clone()));
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Events {
    /// The events once `n` have been published (they are published in the background).
    async fn wait(&self, n: usize) -> Vec<(String, CallEvent)> {
        for _ in 0..200 {
            if self.0.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The handler: records the call with the account and the hooks' headers it sees; `Fail` methods fail.
fn handler(
    log: &Log,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let log = log.clone();
    tower::service_fn(move |req: http::Request<Body>| {
        let log = log.clone();
        async move {
            let account = req.extensions().get::<Account>().map_or("-".to_string(), |a| a.id.clone());
            let mut tags: Vec<&str> =
                req.headers().keys().map(|k| k.as_str()).filter(|k| k.starts_with("x-")).collect();
            tags.sort();
            push(&log, format!("handler {account} {}", tags.join(",")));
            if req.uri().path().ends_with("/Hang") {
                std::future::pending::<()>().await;
            }
            if req.uri().path().ends_with("/Fail") {
                return Ok(tonic::Status::not_found("no such thing").into_http());
            }
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        }
    })
}

fn request(path: &str, token: Option<&str>) -> http::Request<Body> {
    let mut builder = http::Request::builder().uri(path);
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    builder.body(Body::empty()).unwrap()
}

/// Calls `path` through `chain` around the fake handler: the status (None for OK) and the chain's trace.
async fn call(chain: &Chain, log: &Log, req: http::Request<Body>) -> (Option<tonic::Status>, Vec<String>) {
    let trace: Log = Default::default();
    let mut chain = chain.clone();
    chain.trace = Some(trace.clone());
    let response = chain.layer(handler(log)).oneshot(req).await.unwrap();
    let status = tonic::Status::from_header_map(response.headers());
    (status, take(&trace))
}

fn full(log: &Log, events: &Events) -> Chain {
    // Built out of order on purpose: the chain's order is fixed.
    Chain::new()
        .events(events.clone())
        .hook(hook("a", log))
        .log()
        .authorize("*", "hello:call")
        .hook(hook("b", log))
        .authenticate(verifier(log))
}

const ALL: [&str; 10] = [
    "authenticate",
    "authorize",
    "events:started",
    "hook:before",
    "hook:before",
    "handler",
    "hook:after",
    "hook:after",
    "events:succeeded",
    "log",
];

#[tokio::test]
async fn the_stages_run_in_the_fixed_order() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events);
    let (status, trace) = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(trace, ALL);
    // The handler saw the account and both hooks' metadata; the hooks ran out in reverse.
    assert_eq!(take(&log), ["verify good", "a.before", "b.before", "handler jane x-a,x-b", "b.after Ok", "a.after Ok"]);
    let published = events.wait(2).await;
    let kinds: Vec<_> = published.iter().map(|(topic, e)| (topic.as_str(), e.kind)).collect();
    assert_eq!(kinds, [("helloworld.calls", EventKind::Started), ("helloworld.calls", EventKind::Succeeded)]);
    let (started, done) = (&published[0].1, &published[1].1);
    assert_eq!(started.call_id, done.call_id);
    assert_eq!((done.endpoint.as_str(), done.account.as_deref()), ("Helloworld.Call", Some("jane")));
    assert_eq!((done.code, done.error.as_ref(), done.duration_ms.is_some()), (Some(0), None, true));
    assert_eq!(started.duration_ms, None);
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events);
    for _ in 0..3 {
        let (status, _) = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await;
        assert!(status.is_none(), "{status:?}");
    }
    let verified = take(&log).into_iter().filter(|l| l.starts_with("verify")).count();
    assert_eq!(verified, 1, "one verification for three calls");
    // A zero TTL verifies every call.
    let chain = full(&log, &events).token_ttl(Duration::ZERO);
    for _ in 0..2 {
        call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await;
    }
    assert_eq!(take(&log).into_iter().filter(|l| l.starts_with("verify")).count(), 2);
}

#[tokio::test]
async fn a_caller_without_an_account_is_unauthenticated() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events);
    let (status, trace) = call(&chain, &log, request("/helloworld.Helloworld/Call", None)).await;
    let status = status.expect("an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("needs an account"), "{}", status.message());
    assert_eq!(trace, ["authenticate", "events:failed", "log"], "nothing else runs");
    assert!(take(&log).is_empty(), "neither hooks nor the handler ran");
    let published = events.wait(1).await;
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!((published[0].1.kind, published[0].1.code), (EventKind::Failed, Some(Code::Unauthenticated as i32)));

    // A token the verifier refuses.
    let (status, _) = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("forged"))).await;
    assert_eq!(status.expect("an error").code(), Code::Unauthenticated);
}

#[tokio::test]
async fn without_a_token_the_proxy_headers_name_the_account() {
    let log = Log::default();
    let chain = Chain::new().authenticate(verifier(&log));
    let mut req = request("/helloworld.Helloworld/Call", None);
    req.headers_mut().insert(ACCOUNT_ID_HEADER, "jane".parse().unwrap());
    req.headers_mut().insert(ACCOUNT_ISSUER_HEADER, "micro".parse().unwrap());
    let (status, _) = call(&chain, &log, req).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(take(&log), ["handler jane "], "no token to verify");
    // Such an account has no scopes: a permission is denied, saying why.
    let chain = chain.authorize("Helloworld.Call", "hello:call");
    let mut req = request("/helloworld.Helloworld/Call", None);
    req.headers_mut().insert(ACCOUNT_ID_HEADER, "jane".parse().unwrap());
    req.headers_mut().insert(ACCOUNT_ISSUER_HEADER, "micro".parse().unwrap());
    let status = call(&chain, &log, req).await.0.expect("an error");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("scopes are unknown"), "{}", status.message());
}

#[tokio::test]
async fn a_missing_permission_is_denied_by_name() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events).authorize("Helloworld.Admin", "hello:admin");
    let status = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("weak"))).await.0.expect("an error");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("\"hello:call\"") && status.message().contains("joe"), "{}", status.message());
    // The most precise pattern applies: jane may call, but not administer.
    assert!(call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await.0.is_none());
    let status = call(&chain, &log, request("/helloworld.Helloworld/Admin", Some("good"))).await.0.expect("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("\"hello:admin\""), "{}", status.message());
}

#[tokio::test]
async fn each_stage_can_be_turned_off_per_endpoint() {
    let marks = |stage: Stage| -> &'static [&'static str] {
        match stage {
            Stage::Authenticate => &["authenticate"],
            Stage::Authorize => &["authorize"],
            Stage::Log => &["log"],
            Stage::Hooks => &["hook:before", "hook:after"],
            Stage::Events => &["events:started", "events:succeeded"],
        }
    };
    for stage in [Stage::Authenticate, Stage::Authorize, Stage::Log, Stage::Hooks, Stage::Events] {
        let (log, events) = (Log::default(), Events::default());
        let mut chain = full(&log, &events).skip("Helloworld.Call", stage);
        if stage == Stage::Authenticate {
            // Without an account there is nothing to authorize.
            chain = chain.skip("/helloworld.Helloworld/Call", Stage::Authorize);
        }
        let (status, trace) = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await;
        assert!(status.is_none(), "{stage:?}: {status:?}");
        let expected: Vec<&str> = ALL
            .into_iter()
            .filter(|m| !marks(stage).contains(m))
            .filter(|m| stage != Stage::Authenticate || *m != "authorize")
            .collect();
        assert_eq!(trace, expected, "{stage:?} skipped");
        // Other endpoints keep every stage.
        let (status, trace) = call(&chain, &log, request("/helloworld.Helloworld/Other", Some("good"))).await;
        assert!(status.is_none(), "{stage:?}: {status:?}");
        assert_eq!(trace, ALL, "{stage:?} kept elsewhere");
    }
    // A whole service, by `Handler.*`.
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events).skip("Helloworld.*", Stage::Hooks);
    let trace = call(&chain, &log, request("/helloworld.Helloworld/Other", Some("good"))).await.1;
    assert!(!trace.iter().any(|m| m.starts_with("hook")), "{trace:?}");
}

#[tokio::test]
async fn skipping_authentication_alone_fails_closed() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events).skip("Helloworld.Call", Stage::Authenticate);
    let status = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await.0.expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("\"hello:call\""), "{}", status.message());
    // And a chain that authenticates nobody cannot grant a permission.
    let chain = Chain::new().authorize("*", "hello:call");
    let status = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await.0.expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(take(&log).is_empty());
}

#[tokio::test]
async fn a_hook_can_refuse_a_call() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events).hook(Recording { name: "c", log: log.clone(), refuse: true });
    let status = call(&chain, &log, request("/helloworld.Helloworld/Call", Some("good"))).await.0.expect("refused");
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "c says no"));
    // The handler did not run; the hooks that let the call through see the refusal, in reverse.
    assert_eq!(
        take(&log),
        ["verify good", "a.before", "b.before", "c.before", "b.after FailedPrecondition", "a.after FailedPrecondition"]
    );
    let published = events.wait(2).await;
    assert_eq!(published[1].1.kind, EventKind::Failed);
    assert_eq!(published[1].1.error.as_deref(), Some("c says no"));
}

#[tokio::test]
async fn a_handler_error_is_the_outcome() {
    let (log, events) = (Log::default(), Events::default());
    // The topic may be set before the publisher: the builder's order does not matter.
    let chain = Chain::new().events_topic("audit").hook(hook("a", &log)).hook(hook("b", &log));
    let chain = chain.authenticate(verifier(&log)).events(events.clone());
    let (status, trace) = call(&chain, &log, request("/helloworld.Helloworld/Fail", Some("good"))).await;
    assert_eq!(status.expect("an error").code(), Code::NotFound);
    assert_eq!(
        trace.iter().filter(|m| m.starts_with("events")).collect::<Vec<_>>(),
        ["events:started", "events:failed"]
    );
    assert_eq!(take(&log)[4..], ["b.after NotFound", "a.after NotFound"]);
    let published = events.wait(2).await;
    let done = &published[1];
    assert_eq!(done.0, "audit");
    assert_eq!(
        (done.1.kind, done.1.code, done.1.error.as_deref()),
        (EventKind::Failed, Some(5), Some("no such thing"))
    );
}

#[tokio::test]
async fn the_platform_services_pass_through() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events);
    for path in [
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/debug.Debug/Stats",
    ] {
        let (status, trace) = call(&chain, &log, request(path, None)).await;
        assert!(status.is_none(), "{path}: {status:?}");
        assert!(trace.is_empty(), "{path}: {trace:?}");
    }
}

#[test]
fn calls_are_named_by_their_path() {
    let call = Call::from_path("/inventory.v1.Inventory/Collect").unwrap();
    assert_eq!((call.service.as_str(), call.endpoint.as_str()), ("inventory.v1.Inventory", "Inventory.Collect"));
    assert_eq!(call.service_name(), "inventory.v1");
    for pattern in ["Inventory.Collect", "/inventory.v1.Inventory/Collect", "Inventory.*", "*"] {
        assert!(call.matches(pattern), "{pattern}");
    }
    for pattern in ["Inventory.Col", "Other.*", "Inventory", "inventory.Collect"] {
        assert!(!call.matches(pattern), "{pattern}");
    }
    assert!(Call::from_path("/nope").is_none() && Call::from_path("/a/b/c").is_none() && Call::from_path("").is_none());
}

/// A publisher that never answers.
struct Stuck;

impl Publisher for Stuck {
    fn publish<'a>(&'a self, _: &'a str, _: &'a CallEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_stuck_broker_holds_no_call_up() {
    let log = Log::default();
    let chain = Chain::new().events(Stuck);
    let service = chain.layer(handler(&log));
    let started = Instant::now();
    // More events than the queue holds: the extra ones are dropped, and every call completes at once.
    for _ in 0..1500 {
        let response = service.clone().oneshot(request("/helloworld.Helloworld/Call", None)).await.unwrap();
        assert!(tonic::Status::from_header_map(response.headers()).is_none());
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(take(&log).len(), 1500);
}

#[tokio::test]
async fn a_call_whose_caller_goes_away_ends_as_cancelled() {
    let (log, events) = (Log::default(), Events::default());
    let chain = full(&log, &events);
    let trace: Log = Default::default();
    let mut traced = chain.clone();
    traced.trace = Some(trace.clone());
    let call = traced.layer(handler(&log)).oneshot(request("/helloworld.Helloworld/Hang", Some("good")));
    assert!(tokio::time::timeout(Duration::from_millis(100), call).await.is_err(), "the handler hangs");
    assert_eq!(take(&trace)[5..], ["handler", "events:failed", "log"]);
    let published = events.wait(2).await;
    assert_eq!((published[1].1.kind, published[1].1.code), (EventKind::Failed, Some(Code::Cancelled as i32)));
    assert_eq!(published[0].1.call_id, published[1].1.call_id);
}
