//! The HTTP API gateway: JSON over HTTP in front of every service, as Micro's `micro api` (reference §5).
//!
//! A request's path names a service and an endpoint ([`resolve`]); its query and JSON body become the request
//! message, converted with the service's schema from the registry ([`request`]). The gateway does not dial
//! services: it makes a gRPC call through the in-process [`Proxy`] as a tower service, so that auth, routing and
//! load balancing are the proxy's. The `Authorization` header (or a `micro-token` cookie) and `Micro-Namespace`
//! travel as gRPC metadata, and `micro-service` names the resolved service. The reply comes back as JSON (proto
//! field names, defaults included), server streams as Server-Sent Events or NDJSON ([`stream`]), and errors as
//! Micro's `{"id","code","detail","status"}` ([`error`]). `GET /` answers the version and `GET /openapi.json`
//! describes the namespace's services ([`openapi`]).
//!
//! The gateway is reachable from every web page a browser opens, so it defends itself against cross-site requests:
//!
//! - **CORS is off by default.** Only origins configured in [`GatewayConfig::cors_origins`] get CORS headers, with
//!   `Access-Control-Allow-Credentials: true`; `*` lets any origin read answers *without* credentials.
//! - **JSON only with a JSON content type.** A body is read as JSON only with `Content-Type: application/json` (or
//!   `…+json`, or `application/x-ndjson` for client streams); anything else is a 415 that names the expected type.
//!   A form (`application/x-www-form-urlencoded`) is read only when the request has an `Authorization` header: a
//!   browser sends that header cross-origin only after a CORS preflight, so a form can never be a cross-site
//!   "simple" request that carries credentials (`body_kind`).
//! - **Cross-site requests are refused.** A call whose credentials come from the `micro-token` cookie must prove
//!   that it comes from the gateway's own origin or a configured one (`Origin`, or `Sec-Fetch-Site: same-origin` or
//!   `none`); a call without credentials may not come from a foreign origin either. Either is otherwise a 403
//!   (`check_origin`). Every method counts, `GET` included, since `GET /store/write?…` is a call too.
//!
//! Connections are limited and time out as [`crate::conn`] describes: the head of a request must arrive
//! within the handshake timeout, a connection without a request in flight is closed after the idle timeout, and a
//! request body that stops arriving for the idle timeout is a 408.

pub mod error;
pub mod openapi;
pub mod request;
pub mod resolve;
pub mod stream;
mod unary;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use crate::conn;
use crate::proxy::{Proxy, SERVICE_HEADER};
use crate::registry::{MemoryRegistry, RegistryBackend, service::NAMESPACE_HEADER};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use error::{ApiError, GATEWAY_ID};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use micro_client::dynamic::DynamicCodec;
use prost_reflect::{DynamicMessage, SerializeOptions};
use resolve::{Resolver, Target};
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// The largest request body the gateway reads.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The largest gRPC message the gateway sends or accepts.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Settings of the gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Origins allowed by CORS, with credentials (`https://app.example.com`); their pages may also call with the
    /// `micro-token` cookie. `*` lets any origin read answers, without credentials. Empty (the default): no CORS
    /// headers, so browsers let no other origin read answers.
    pub cors_origins: Vec<String>,
}

/// The API gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    proxy: Proxy,
    registry: Arc<MemoryRegistry>,
    resolver: Resolver,
    config: GatewayConfig,
    /// Cancelled when the server shuts down: open streams then end.
    closing: CancellationToken,
    /// The issuers of recently seen tokens.
    issuers: Issuers,
    /// How long a request body may stop arriving before the request is refused (the idle timeout).
    body_timeout: std::time::Duration,
}

/// The issuers of recently seen bearer tokens ([`token_issuer`]), so that a token's payload is decoded once rather
/// than on every request. Bounded: cleared when full, and long values are not kept.
#[derive(Default)]
struct Issuers(std::sync::RwLock<std::collections::HashMap<Box<[u8]>, Issuer>>);

/// The issuer of a token, `None` when the token has none that can be read.
type Issuer = Option<Box<str>>;

impl Issuers {
    /// The most tokens remembered.
    const LIMIT: usize = 1024;
    /// The longest `Authorization` value remembered.
    const MAX_VALUE: usize = 4096;

    fn of(&self, authorization: &HeaderValue) -> Option<String> {
        let key = authorization.as_bytes();
        if key.len() > Self::MAX_VALUE {
            return token_issuer(authorization);
        }
        if let Some(known) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return known.as_deref().map(str::to_string);
        }
        let issuer = token_issuer(authorization);
        let mut known = self.0.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= Self::LIMIT {
            known.clear();
        }
        known.insert(key.into(), issuer.as_deref().map(Into::into));
        issuer
    }
}

impl Gateway {
    /// A gateway that calls services through `proxy` (where auth is enforced) and reads schemas from `registry`.
    pub fn new(proxy: Proxy, registry: Arc<MemoryRegistry>, config: GatewayConfig) -> Self {
        let resolver = Resolver::new(registry.clone());
        let closing = CancellationToken::new();
        let issuers = Issuers::default();
        let body_timeout = conn::Limits::from_env().idle;
        Self { inner: Arc::new(Inner { proxy, registry, resolver, config, closing, issuers, body_timeout }) }
    }

    /// The gateway's routes: `/`, `/openapi.json`, `/favicon.ico` and every service path, behind CORS.
    pub fn router(&self) -> Router {
        Router::new().fallback_service(self.service())
    }

    /// The gateway as one tower service, which [`serve`] runs without a router around it. Service paths, the hot
    /// path, go straight to [`rpc`]; only the three fixed routes go through an axum router.
    fn service(&self) -> GatewayService {
        let fixed = Router::new()
            .route("/", any(root))
            .route("/favicon.ico", any(|| async { StatusCode::OK }))
            .route("/openapi.json", get(openapi))
            .with_state(self.inner.clone());
        GatewayService { inner: self.inner.clone(), fixed, conn: None, peer: None }
    }

    /// Calls `endpoint` (`Handler.Method`) of `service` with a JSON `body` (NDJSON or a JSON array for client
    /// streams), as the caller whose credentials are in `headers` (`Authorization`). The web dashboard's calls: the
    /// same conversion, auth and answers as a request to the gateway, with the service named rather than resolved
    /// from a path. Server streams are written as SSE when `sse`, else as NDJSON.
    pub(crate) async fn call_endpoint(
        &self,
        headers: &HeaderMap,
        service: &str,
        endpoint: &str,
        body: &[u8],
        sse: bool,
        peer: Option<crate::auth::Peer>,
    ) -> Response {
        let inner = &self.inner;
        let answer = async {
            let namespace = namespace_with(headers, Some(&inner.issuers))?;
            let target = resolve::resolve_named(&inner.registry, &namespace, service, endpoint)
                .map_err(|e| if e.code == 404 { inner.hide_missing(headers, &namespace, e) } else { e })?;
            let metadata = metadata(headers, &namespace, &target.service)?;
            let input = request::Input { query: "", body, form: false };
            let format = if sse { stream::Format::Sse } else { stream::Format::Ndjson };
            inner.call(&target, metadata, input, format, peer).await
        };
        match answer.await {
            Ok(rsp) => rsp,
            Err(e) => e.into_response(),
        }
    }

    /// The gRPC metadata of a call to `service` by the caller whose credentials are in `headers`: the
    /// `Authorization`, the namespace (the token's issuer) and the service, as the gateway sends them.
    pub(crate) fn caller_metadata(
        &self,
        headers: &HeaderMap,
        service: &str,
    ) -> Result<tonic::metadata::MetadataMap, ApiError> {
        let namespace = namespace_with(headers, Some(&self.inner.issuers))?;
        Ok(tonic::metadata::MetadataMap::from_headers(metadata(headers, &namespace, service)?))
    }

    /// The proxy as a transport for generated gRPC clients (`RegistryClient::new(gateway.transport())`), so that
    /// calls made with it are authorised as the caller whose metadata they carry.
    pub(crate) fn transport(&self) -> ProxyTransport {
        ProxyTransport(self.inner.proxy.clone())
    }

    /// The registry the gateway reads schemas from.
    pub(crate) fn registry(&self) -> &Arc<MemoryRegistry> {
        &self.inner.registry
    }

    /// Ends every open response stream (watches, SSE), as when the server shuts down.
    pub fn close_streams(&self) {
        self.inner.closing.cancel();
    }
}

/// The gateway's tower service: CORS on every answer, `OPTIONS` answered at once, the fixed routes, and [`rpc`]
/// for every other path.
#[derive(Clone)]
struct GatewayService {
    inner: Arc<Inner>,
    /// `/`, `/favicon.ico` and `/openapi.json`.
    fixed: Router,
    /// The connection the service answers on, told when each request starts and its response ends, so that it
    /// is not closed as idle while a response streams ([`serve`]).
    conn: Option<Arc<conn::Activity>>,
    /// The HTTP client's address, passed to the proxy with each call so that auth can tell sources apart
    /// (failed logins are counted per source).
    peer: Option<crate::auth::Peer>,
}

impl Service<Request> for GatewayService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(peer);
        }
        // The request is in flight until its response has been sent.
        let in_flight = self.conn.as_ref().map(|c| c.begin());
        // CORS (reference §5.5): headers on every answer (unless already set), and `OPTIONS` answered at once.
        let allowed = allowed_origin(&self.inner.config.cors_origins, req.headers().get(header::ORIGIN));
        if req.method() == Method::OPTIONS {
            let rsp = cors(StatusCode::OK.into_response(), allowed);
            return Box::pin(std::future::ready(Ok(tracked(rsp, in_flight))));
        }
        match req.uri().path() {
            "/" | "/favicon.ico" | "/openapi.json" => {
                let fixed = self.fixed.clone();
                Box::pin(async move {
                    let rsp = match fixed.oneshot(req).await {
                        Ok(rsp) => rsp,
                        Err(never) => match never {},
                    };
                    Ok(tracked(cors(rsp, allowed), in_flight))
                })
            }
            _ => {
                let inner = self.inner.clone();
                Box::pin(async move { Ok(tracked(cors(rpc(&inner, req).await, allowed), in_flight)) })
            }
        }
    }
}

/// `rsp`, whose body keeps its request in flight on its connection until it has been sent.
pub(crate) fn tracked(rsp: Response, in_flight: Option<conn::InFlight>) -> Response {
    match in_flight {
        Some(in_flight) => rsp.map(|body| Body::new(conn::Tracked::new(body, in_flight))),
        None => rsp,
    }
}

/// An HTTP service that is told the connection it serves on: its activity (requests in flight keep it from being
/// closed as idle) and the client's address (auth counts failed logins per source).
pub(crate) trait ForConnection: Clone + Send + 'static {
    /// This service, for the connection whose activity and peer are given.
    fn for_connection(&self, conn: Arc<conn::Activity>, peer: crate::auth::Peer) -> Self;
}

impl ForConnection for GatewayService {
    fn for_connection(&self, conn: Arc<conn::Activity>, peer: crate::auth::Peer) -> Self {
        Self { conn: Some(conn), peer: Some(peer), ..self.clone() }
    }
}

/// Makes the service of each connection that `axum::serve` accepts from a [`conn::Listener`].
#[derive(Clone)]
pub(crate) struct PerConnection<S>(pub(crate) S);

impl<'a, S: ForConnection> Service<axum::serve::IncomingStream<'a, conn::Listener>> for PerConnection<S> {
    type Response = S;
    type Error = Infallible;
    type Future = std::future::Ready<Result<S, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: axum::serve::IncomingStream<'a, conn::Listener>) -> Self::Future {
        let peer = crate::auth::Peer(*incoming.remote_addr());
        std::future::ready(Ok(self.0.for_connection(incoming.io().activity(), peer)))
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves; open streams are then ended and in-flight requests
/// finish. Connections are limited and time out as [`conn`] describes ([`conn::Mode::Requests`]: every request
/// is reported to its connection, so the head of a request must arrive in time and a connection is idle only
/// when no response is streaming).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_limited(listener, gateway, shutdown, conn::Limits::from_env()).await
}

/// [`serve`], over TLS with `tls` when given (ALPN `h2` and `http/1.1`; see [`crate::tls`]). The handshake
/// runs in each connection's task, bounded by the handshake timeout.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = conn::Listener::new(listener, conn::Limits::from_env(), conn::Mode::Requests).with_tls(tls);
    serve_listener(listener, gateway, shutdown).await
}

/// [`serve`] with the given connection limits.
async fn serve_limited(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: conn::Limits,
) -> std::io::Result<()> {
    serve_listener(conn::Listener::new(listener, limits, conn::Mode::Requests), gateway, shutdown).await
}

/// Serves `gateway` on the connections of `listener` until `shutdown` resolves.
async fn serve_listener(
    listener: conn::Listener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = gateway.inner.closing.clone();
    let service = gateway.service();
    axum::serve(listener, PerConnection(service))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
}

/// The JSON of a message as micro prints it (`micro_client::dynamic::message_to_json`): proto field names, defaults
/// included.
pub(crate) fn json_bytes(message: &DynamicMessage) -> Vec<u8> {
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::new(&mut out);
    match message.serialize_with_options(&mut serializer, &options) {
        Ok(()) => out,
        Err(e) => serde_json::to_vec(&format!("<unprintable message: {e}>")).unwrap_or_default(),
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    // Room for the content type and the CORS headers added later, so the map is allocated once.
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut rsp = Response::new(body.into());
    *rsp.status_mut() = status;
    *rsp.headers_mut() = headers;
    rsp
}

async fn root() -> Response {
    let body = serde_json::json!({ "version": micro_core::VERSION, "openapi": "/openapi.json" }).to_string();
    json_response(StatusCode::OK, body)
}

/// The namespace of a request, as the proxy decides it (reference §5.4): the `Micro-Namespace` header, else the
/// issuer of the caller's token, else `micro`.
#[cfg(test)]
fn namespace(headers: &HeaderMap) -> Result<Cow<'_, str>, ApiError> {
    namespace_with(headers, None)
}

/// [`namespace`], with the token's issuer from `issuers` when given.
fn namespace_with<'a>(headers: &'a HeaderMap, issuers: Option<&Issuers>) -> Result<Cow<'a, str>, ApiError> {
    match headers.get(NAMESPACE_HEADER).map(|v| v.to_str().map(str::trim)) {
        Some(Ok(ns)) if !ns.is_empty() => Ok(Cow::Borrowed(ns)),
        Some(Err(_)) => Err(ApiError::bad_request(GATEWAY_ID, "the Micro-Namespace header is not valid text")),
        _ => {
            let credentials = match headers.get(header::AUTHORIZATION) {
                Some(v) => Some(Cow::Borrowed(v)),
                None => authorization(headers).map(Cow::Owned),
            };
            let issuer = credentials.and_then(|v| match issuers {
                Some(issuers) => issuers.of(&v),
                None => token_issuer(&v),
            });
            Ok(issuer.map_or(Cow::Borrowed(micro_core::DEFAULT_NAMESPACE), Cow::Owned))
        }
    }
}

/// The `iss` claim of a bearer JWT, read without verifying it: it only chooses where to look the service up, and
/// the proxy verifies the token (a forged issuer is refused there).
fn token_issuer(authorization: &HeaderValue) -> Option<String> {
    use base64::Engine;
    /// The one claim read; the others are skipped without being kept.
    #[derive(serde::Deserialize)]
    struct Claims<'a> {
        #[serde(borrow)]
        iss: Option<Cow<'a, str>>,
    }
    let token = authorization.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    let payload = token.split('.').nth(1)?.trim_end_matches('=');
    // Decoded on the stack when it fits, as micro's own tokens do: this runs on every request without a namespace.
    let mut stack = [0u8; 1024];
    let heap;
    let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = match engine.decode_slice(payload, &mut stack) {
        Ok(n) => &stack[..n],
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            heap = engine.decode(payload).ok()?;
            &heap[..]
        }
        Err(_) => return None,
    };
    let claims: Claims<'_> = serde_json::from_slice(bytes).ok()?;
    let issuer = claims.iss?;
    let issuer = issuer.trim();
    (!issuer.is_empty() && HeaderValue::from_str(issuer).is_ok()).then(|| issuer.to_string())
}

/// The caller's credentials: the `Authorization` header, else a `micro-token` cookie as a bearer token.
fn authorization(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        return Some(v.clone());
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else { continue };
        for cookie in cookies.split(';') {
            if let Some((name, value)) = cookie.trim().split_once('=')
                && name == "micro-token"
                && !value.is_empty()
                && let Ok(v) = HeaderValue::from_str(&format!("Bearer {value}"))
            {
                return Some(v);
            }
        }
    }
    None
}

/// The gRPC metadata of a call: credentials, namespace and target service. Nothing else of the HTTP request is
/// forwarded, so hop-by-hop and HTTP-only headers never reach services.
fn metadata(headers: &HeaderMap, namespace: &str, service: &str) -> Result<HeaderMap, ApiError> {
    // Names built at compile time (inserting by `&str` copies a custom name every time), and room for the headers
    // that tonic and the proxy add on the way (te, content-type, the caller's account), so the map never grows.
    const NAMESPACE: HeaderName = HeaderName::from_static(NAMESPACE_HEADER);
    const SERVICE: HeaderName = HeaderName::from_static(SERVICE_HEADER);
    let mut out = HeaderMap::with_capacity(12);
    if let Some(auth) = authorization(headers) {
        out.insert(header::AUTHORIZATION, auth);
    }
    let ns = HeaderValue::from_str(namespace)
        .map_err(|_| ApiError::bad_request(GATEWAY_ID, "the Micro-Namespace header is not valid text"))?;
    out.insert(NAMESPACE, ns);
    let svc = HeaderValue::from_str(service)
        .map_err(|_| ApiError::internal(service, "the service name cannot be sent as metadata"))?;
    out.insert(SERVICE, svc);
    Ok(out)
}

/// The proxy as a gRPC client transport: tonic's request body in, the proxy's response body out.
#[derive(Clone)]
pub(crate) struct ProxyTransport(Proxy);

impl ProxyTransport {
    /// The transport over `proxy`.
    pub(crate) fn new(proxy: Proxy) -> Self {
        Self(proxy)
    }
}

impl Service<http::Request<tonic::body::Body>> for ProxyTransport {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = <Proxy as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(req.map(Body::new))
    }
}

fn grpc(proxy: &Proxy) -> tonic::client::Grpc<ProxyTransport> {
    tonic::client::Grpc::new(ProxyTransport(proxy.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Reads a body of at most [`MAX_BODY`] bytes, each chunk within `timeout` of the previous one (else a 408). A body
/// that arrives in one chunk, as small requests do, is kept as it is, without a copy.
async fn read_body(body: Body, id: &str, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut out = bytes::BytesMut::new();
    loop {
        let Ok(next) = tokio::time::timeout(timeout, stream.next()).await else {
            return Err(ApiError::new(
                id,
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body stopped arriving for {}", humantime::format_duration(timeout)),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad_request(id, format!("cannot read the request body: {e}")))?;
        let held = first.as_ref().map_or(0, Bytes::len);
        if held + out.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::new(
                id,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} MiB", MAX_BODY / (1024 * 1024)),
            ));
        }
        match first.take() {
            None if out.is_empty() => first = Some(chunk),
            held => {
                if let Some(held) = held {
                    out.extend_from_slice(&held);
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| out.freeze()))
}

async fn openapi(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    match inner.openapi(&headers).await {
        Ok(doc) => json_response(StatusCode::OK, doc.to_string()),
        Err(e) => e.into_response(),
    }
}

/// A call to a service: the answer, or the error as Micro's JSON. Logged at debug level.
async fn rpc(inner: &Inner, req: Request) -> Response {
    // The request line is copied only when it will be logged: this runs on every call.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (std::time::Instant::now(), req.method().clone(), req.uri().path().to_string()));
    let rsp = match inner.rpc(req).await {
        Ok(rsp) => rsp,
        Err(e) => e.into_response(),
    };
    if let Some((started, method, path)) = logged {
        tracing::debug!(%method, %path, status = rsp.status().as_u16(), elapsed = ?started.elapsed(), "api request");
    }
    rsp
}

impl Inner {
    async fn rpc(&self, req: Request) -> Result<Response, ApiError> {
        let (parts, body) = req.into_parts();
        // Cross-site requests and bodies of the wrong type are refused before the path is resolved, so that the
        // answer is the same whether the service exists or not.
        check_origin(&parts.headers, &parts.uri, &self.config.cors_origins)?;
        let kind = body_kind(&parts.headers)?;
        let namespace = namespace_with(&parts.headers, Some(&self.issuers))?;
        let target = match self.resolver.resolve(&namespace, parts.uri.path()) {
            Ok(target) => target,
            Err(e) if e.code == StatusCode::NOT_FOUND.as_u16() => {
                return Err(self.hide_missing(&parts.headers, &namespace, e));
            }
            Err(e) => return Err(e),
        };
        let id = target.service.as_str();
        let body = read_body(body, id, self.body_timeout).await?;
        if kind == BodyKind::Unlabelled && !body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                GATEWAY_ID,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the request body has no Content-Type: send JSON with Content-Type: {JSON}"),
            ));
        }
        // `curl -d '{…}'` labels JSON as a form: a body that looks like JSON is read as JSON.
        let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{' || *b == b'[');
        let form = kind == BodyKind::Form && !looks_like_json;
        let input = request::Input { query: parts.uri.query().unwrap_or_default(), body: &body, form };
        let metadata = metadata(&parts.headers, &namespace, id)?;
        let format = stream::Format::for_accept(parts.headers.get(header::ACCEPT));
        let peer = parts.extensions.get::<crate::auth::Peer>().copied();
        self.call(&target, metadata, input, format, peer).await
    }

    async fn call(
        &self,
        target: &Target,
        metadata: HeaderMap,
        input: request::Input<'_>,
        format: stream::Format,
        peer: Option<crate::auth::Peer>,
    ) -> Result<Response, ApiError> {
        let id = target.service.as_str();
        let method = &target.method;
        let path = match &target.path {
            Some(path) => path.clone(),
            None => http::uri::PathAndQuery::try_from(micro_core::schema::method_path(method))
                .map_err(|e| ApiError::internal(id, format!("invalid method path: {e}")))?,
        };
        let codec = DynamicCodec::new(method.output());
        let mut grpc = grpc(&self.proxy);
        let mut extensions = tonic::Extensions::default();
        if let Some(peer) = peer {
            extensions.insert(peer);
        }
        fn with<T>(metadata: HeaderMap, extensions: tonic::Extensions, message: T) -> tonic::Request<T> {
            tonic::Request::from_parts(tonic::metadata::MetadataMap::from_headers(metadata), extensions, message)
        }
        let status = |s: tonic::Status| ApiError::from_status(id, &s);
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => {
                let message = request::message(&method.input(), input, id)?;
                let output = method.output();
                let rsp = unary::call(&self.proxy, path, metadata, &message, &output, MAX_MESSAGE, peer).await;
                Ok(json_response(StatusCode::OK, json_bytes(&rsp.map_err(status)?)))
            }
            (false, true) => {
                let message = request::message(&method.input(), input, id)?;
                let rsp =
                    grpc.server_streaming(with(metadata, extensions, message), path, codec).await.map_err(status)?;
                Ok(stream::respond(format, id.to_string(), rsp.into_inner(), self.closing.clone()))
            }
            (true, false) => {
                let messages = request::messages(&method.input(), input, id)?;
                let rsp = grpc
                    .client_streaming(with(metadata, extensions, futures::stream::iter(messages)), path, codec)
                    .await;
                Ok(json_response(StatusCode::OK, json_bytes(rsp.map_err(status)?.get_ref())))
            }
            (true, true) => {
                let messages = request::messages(&method.input(), input, id)?;
                let rsp = grpc
                    .streaming(with(metadata, extensions, futures::stream::iter(messages)), path, codec)
                    .await
                    .map_err(status)?;
                Ok(stream::respond(format, id.to_string(), rsp.into_inner(), self.closing.clone()))
            }
        }
    }

    /// What a caller learns about a path that names no service: only a caller that may act in the namespace hears
    /// "not found". Anyone else gets the same 401 or 403 as for a service that exists, so probing the gateway
    /// without an account does not reveal which services a namespace runs.
    fn hide_missing(&self, headers: &HeaderMap, namespace: &str, missing: ApiError) -> ApiError {
        let Some(auth) = self.proxy.auth() else { return missing };
        let token = authorization(headers)
            .and_then(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_string()));
        let account = match token.map(|t| auth.verify(&t)) {
            Some(Ok(account)) => account,
            Some(Err(status)) => return ApiError::from_status(GATEWAY_ID, &status),
            None => return ApiError::new(GATEWAY_ID, StatusCode::UNAUTHORIZED, "an account is required"),
        };
        if account.belongs_to(namespace) {
            missing
        } else {
            ApiError::new(GATEWAY_ID, StatusCode::FORBIDDEN, format!("access denied to namespace {namespace}"))
        }
    }

    /// The OpenAPI document of the caller's namespace. The service list is read through the proxy, with the
    /// caller's credentials, so that it is subject to the same auth as `micro services`.
    async fn openapi(&self, headers: &HeaderMap) -> Result<serde_json::Value, ApiError> {
        use micro_core::proto::registry::{ListRequest, registry_client::RegistryClient};
        let namespace = namespace_with(headers, Some(&self.issuers))?;
        let metadata = metadata(headers, &namespace, "registry")?;
        let mut client = RegistryClient::new(ProxyTransport(self.proxy.clone())).max_decoding_message_size(MAX_MESSAGE);
        // The registry answers in pages: follow them.
        let mut services = Vec::new();
        let mut page_token = String::new();
        loop {
            let metadata = tonic::metadata::MetadataMap::from_headers(metadata.clone());
            let req =
                tonic::Request::from_parts(metadata, Default::default(), ListRequest { options: None, page_token });
            let page = client.list_services(req).await.map_err(|s| ApiError::from_status("registry", &s))?.into_inner();
            services.extend(page.services);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let registry = &self.registry;
        Ok(openapi::document(&services, |hash| registry.schema(hash)))
    }
}

/// The content type the gateway reads request bodies as.
const JSON: &str = "application/json";

/// How a request's body is to be read, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    /// JSON: `application/json`, any `…/…+json`, or `application/x-ndjson` (client streams).
    Json,
    /// A form (`application/x-www-form-urlencoded`), allowed with an `Authorization` header only.
    Form,
    /// No `Content-Type`: the body must be empty (the request comes from the query).
    Unlabelled,
}

/// How the body of a request with `headers` is read, or a 415 that names the type to send.
///
/// Only JSON types are read as JSON: `text/plain` (or no type at all on a non-empty body) is what a cross-site
/// "simple" request sends without a CORS preflight, so reading it would let any web page call services with the
/// browser's `micro-token` cookie. Forms are such a type too, and are read only with an `Authorization` header,
/// which a browser sends cross-origin only after a preflight that CORS allows.
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(BodyKind::Unlabelled) };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    let refuse = |detail: String| Err(ApiError::new(GATEWAY_ID, StatusCode::UNSUPPORTED_MEDIA_TYPE, detail));
    match essence.as_str() {
        JSON | "application/x-ndjson" => Ok(BodyKind::Json),
        t if t.ends_with("+json") && t.contains('/') => Ok(BodyKind::Json),
        "application/x-www-form-urlencoded" if headers.contains_key(header::AUTHORIZATION) => Ok(BodyKind::Form),
        "application/x-www-form-urlencoded" => refuse(format!(
            "a form body (application/x-www-form-urlencoded) is read only with an Authorization header: send JSON \
             with Content-Type: {JSON}"
        )),
        "" => refuse(format!("the Content-Type header is not valid: send JSON with Content-Type: {JSON}")),
        other => refuse(format!("content type {other} is not supported: send JSON with Content-Type: {JSON}")),
    }
}

/// Whether a request comes from a place allowed to make it: a 403 for a cross-site request.
///
/// A request with an `Authorization` header passes: a browser sends that header cross-origin only after a CORS
/// preflight, which only configured origins pass, and other clients had to hold the token. Otherwise:
///
/// - credentials from the `micro-token` cookie need proof of a trusted origin: an `Origin` that is the gateway's own
///   (`http(s)://` + its `Host`) or one of `cors_origins` (not `*`), or, without `Origin`, `Sec-Fetch-Site:
///   same-origin` or `none` (typed by the user). A browser sends one or the other on every request, a cross-site
///   `GET` included, so a request that has neither is not trusted with a cookie (send an `Authorization` header
///   instead).
/// - a request without credentials may not come from a foreign origin (an untrusted `Origin`, or
///   `Sec-Fetch-Site: cross-site`/`same-site`), unless `cors_origins` has `*`: the rules grant anonymous callers
///   some calls, and no web page should make them through a visitor's browser.
fn check_origin(headers: &HeaderMap, uri: &http::Uri, cors_origins: &[String]) -> Result<(), ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let cookie = authorization(headers).is_some();
    let public = !cookie && cors_origins.iter().any(|o| o.trim() == "*");
    let refuse = |detail: String| Err(ApiError::new(GATEWAY_ID, StatusCode::FORBIDDEN, detail));
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("<not text>");
        if trusted_origin(text, headers, uri, cors_origins) || public {
            return Ok(());
        }
        return refuse(if cookie {
            format!(
                "cross-origin request from {text} refused: the micro-token cookie is accepted only from the gateway's \
                 own origin or one of --api-cors-origins; send an Authorization header instead"
            )
        } else {
            format!("cross-origin request from {text} refused: it is not one of --api-cors-origins")
        });
    }
    let site = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or_default().trim().to_ascii_lowercase());
    match site.as_deref() {
        Some("same-origin" | "none") => Ok(()),
        None if !cookie => Ok(()),
        None => refuse(
            "a request authenticated by the micro-token cookie must show that it comes from the gateway's own origin \
             or one of --api-cors-origins (an Origin or Sec-Fetch-Site header, as browsers send): send the token \
             in an Authorization header instead"
                .to_string(),
        ),
        Some(_) if public => Ok(()),
        Some(site) => refuse(format!(
            "cross-site request refused (Sec-Fetch-Site: {site}): calls from other sites need an Authorization header"
        )),
    }
}

/// Whether `origin` is the gateway's own (`http://` or `https://` followed by the request's host, as the browser
/// addressed it) or one of the configured origins (`*` is not a trust).
fn trusted_origin(origin: &str, headers: &HeaderMap, uri: &http::Uri, cors_origins: &[String]) -> bool {
    if configured(cors_origins, origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let strip = |h: &str| h.strip_suffix(default_port).unwrap_or(h).to_ascii_lowercase();
    strip(rest) == strip(host)
}

/// Whether `origin` is one of `cors_origins` (ignoring case and a trailing `/`).
fn configured(cors_origins: &[String], origin: &str) -> bool {
    cors_origins.iter().any(|a| {
        let a = a.trim().trim_end_matches('/');
        a != "*" && a.eq_ignore_ascii_case(origin)
    })
}

/// The CORS answer to a request's origin.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cors {
    /// No CORS headers.
    None,
    /// `Access-Control-Allow-Origin: *`, without credentials (`*` is configured).
    Any,
    /// The origin echoed, with `Access-Control-Allow-Credentials: true` (a configured origin).
    Origin(HeaderValue),
}

/// `rsp` with the CORS headers (reference §5.5) of a request whose origin got `allowed`, each unless already set.
fn cors(mut rsp: Response, allowed: Cors) -> Response {
    let headers = rsp.headers_mut();
    let (origin, credentials) = match allowed {
        Cors::None => return rsp,
        Cors::Any => (HeaderValue::from_static("*"), false),
        Cors::Origin(origin) => (origin, true),
    };
    let mut set = |name: header::HeaderName, value: HeaderValue| {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    set(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, PATCH, GET, OPTIONS, PUT, DELETE"));
    set(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization, Micro-Namespace",
        ),
    );
    if credentials {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    rsp
}

/// The CORS answer to a request from `origin`: its own echo, with credentials, when it is one of `allowed`; `*`
/// without credentials when `allowed` has `*`; else none (the default, with nothing configured).
fn allowed_origin(allowed: &[String], origin: Option<&HeaderValue>) -> Cors {
    if let Some(origin) = origin
        && let Ok(text) = origin.to_str()
        && configured(allowed, text)
    {
        return Cors::Origin(origin.clone());
    }
    if allowed.iter().any(|a| a.trim() == "*") { Cors::Any } else { Cors::None }
}
