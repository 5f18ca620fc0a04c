//! The HTTP API gateway: JSON over HTTP in front of every service, as Micro's `micro api` (reference §5).
//!
//! A request's path names a service and an endpoint ([`resolve`]); its query and JSON body become the request
//! message, converted with the service's schema from the registry ([`request`]). The gateway does not dial
//! services: it makes a gRPC call through the in-process [`Proxy`] as a tower service, so that auth, routing and
//! load balancing are the proxy's. The `Authorization` header (or a `micro-token` cookie) and `Micro-Namespace`
//! travel as gRPC metadata, and `micro-service` names the resolved service. The reply comes back as JSON (proto
//! field names, defaults included), server streams as Server-Sent Events or NDJSON ([`stream`]), and errors as
//! Micro's `{"id","code","detail","status"}` ([`error`]). CORS is on by default; `GET /` answers the version and
//! `GET /openapi.json` describes the namespace's services ([`openapi`]).

pub mod error;
pub mod openapi;
pub mod request;
pub mod resolve;
pub mod stream;
mod unary;

#[cfg(test)]
mod tests;

use crate::client::dynamic::DynamicCodec;
use crate::server::proxy::{Proxy, SERVICE_HEADER};
use crate::server::registry::{MemoryRegistry, RegistryBackend, service::NAMESPACE_HEADER};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use error::{ApiError, GATEWAY_ID};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
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
    /// Origins allowed by CORS (`https://app.example.com`); empty = allow any origin.
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
        Self { inner: Arc::new(Inner { proxy, registry, resolver, config, closing, issuers }) }
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
        GatewayService { inner: self.inner.clone(), fixed }
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
}

impl Service<Request> for GatewayService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // CORS (reference §5.5): headers on every answer (unless already set), and `OPTIONS` answered at once.
        let allowed = allowed_origin(&self.inner.config.cors_origins, req.headers().get(header::ORIGIN));
        if req.method() == Method::OPTIONS {
            return Box::pin(std::future::ready(Ok(cors(StatusCode::OK.into_response(), allowed))));
        }
        match req.uri().path() {
            "/" | "/favicon.ico" | "/openapi.json" => {
                let fixed = self.fixed.clone();
                Box::pin(async move {
                    let rsp = match fixed.oneshot(req).await {
                        Ok(rsp) => rsp,
                        Err(never) => match never {},
                    };
                    Ok(cors(rsp, allowed))
                })
            }
            _ => {
                let inner = self.inner.clone();
                Box::pin(async move { Ok(cors(rpc(&inner, req).await, allowed)) })
            }
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves; open streams are then ended and in-flight requests
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::ServiceExt as _;
    use axum::serve::ListenerExt;
    let closing = gateway.inner.closing.clone();
    let service = gateway.service();
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, service.into_make_service())
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
}

/// The JSON of a message as micro prints it (`crate::cli::output::message_to_json`): proto field names, defaults
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
    let body = serde_json::json!({ "version": crate::VERSION, "openapi": "/openapi.json" }).to_string();
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
            Ok(issuer.map_or(Cow::Borrowed(crate::DEFAULT_NAMESPACE), Cow::Owned))
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
struct ProxyTransport(Proxy);

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

/// Reads a body of at most [`MAX_BODY`] bytes. A body that arrives in one chunk, as small requests do, is kept as
/// it is, without a copy.
async fn read_body(body: Body, id: &str) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
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
        let namespace = namespace_with(&parts.headers, Some(&self.issuers))?;
        let target = match self.resolver.resolve(&namespace, parts.uri.path()) {
            Ok(target) => target,
            Err(e) if e.code == StatusCode::NOT_FOUND.as_u16() => {
                return Err(self.hide_missing(&parts.headers, &namespace, e));
            }
            Err(e) => return Err(e),
        };
        let id = target.service.as_str();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
            .map_or(Cow::Borrowed(""), |v| match v.bytes().any(|b| b.is_ascii_uppercase()) {
                true => Cow::Owned(v.to_ascii_lowercase()),
                false => Cow::Borrowed(v),
            });
        let declared_form = content_type == "application/x-www-form-urlencoded";
        if content_type.starts_with("multipart/")
            || content_type.starts_with("application/grpc")
            || content_type.contains("proto")
            || content_type == "application/octet-stream"
        {
            return Err(ApiError::new(
                id,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {content_type} is not supported: send JSON"),
            ));
        }
        let body = read_body(body, id).await?;
        // `curl -d '{…}'` labels JSON as a form: a body that looks like JSON is read as JSON.
        let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{' || *b == b'[');
        let form = declared_form && !looks_like_json;
        let input = request::Input { query: parts.uri.query().unwrap_or_default(), body: &body, form };
        let metadata = metadata(&parts.headers, &namespace, id)?;
        let format = stream::Format::for_accept(parts.headers.get(header::ACCEPT));
        self.call(&target, metadata, input, format).await
    }

    async fn call(
        &self,
        target: &Target,
        metadata: HeaderMap,
        input: request::Input<'_>,
        format: stream::Format,
    ) -> Result<Response, ApiError> {
        let id = target.service.as_str();
        let method = &target.method;
        let path = match &target.path {
            Some(path) => path.clone(),
            None => http::uri::PathAndQuery::try_from(crate::schema::method_path(method))
                .map_err(|e| ApiError::internal(id, format!("invalid method path: {e}")))?,
        };
        let codec = DynamicCodec::new(method.output());
        let mut grpc = grpc(&self.proxy);
        fn with<T>(metadata: HeaderMap, message: T) -> tonic::Request<T> {
            tonic::Request::from_parts(
                tonic::metadata::MetadataMap::from_headers(metadata),
                Default::default(),
                message,
            )
        }
        let status = |s: tonic::Status| ApiError::from_status(id, &s);
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => {
                let message = request::message(&method.input(), input, id)?;
                let output = method.output();
                let rsp = unary::call(&self.proxy, path, metadata, &message, &output, MAX_MESSAGE).await;
                Ok(json_response(StatusCode::OK, json_bytes(&rsp.map_err(status)?)))
            }
            (false, true) => {
                let message = request::message(&method.input(), input, id)?;
                let rsp = grpc.server_streaming(with(metadata, message), path, codec).await.map_err(status)?;
                Ok(stream::respond(format, id.to_string(), rsp.into_inner(), self.closing.clone()))
            }
            (true, false) => {
                let messages = request::messages(&method.input(), input, id)?;
                let rsp = grpc.client_streaming(with(metadata, futures::stream::iter(messages)), path, codec).await;
                Ok(json_response(StatusCode::OK, json_bytes(rsp.map_err(status)?.get_ref())))
            }
            (true, true) => {
                let messages = request::messages(&method.input(), input, id)?;
                let rsp = grpc
                    .streaming(with(metadata, futures::stream::iter(messages)), path, codec)
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
        use crate::proto::registry::{ListRequest, registry_client::RegistryClient};
        let namespace = namespace_with(headers, Some(&self.issuers))?;
        let metadata = metadata(headers, &namespace, "registry")?;
        let mut client = RegistryClient::new(ProxyTransport(self.proxy.clone())).max_decoding_message_size(MAX_MESSAGE);
        let metadata = tonic::metadata::MetadataMap::from_headers(metadata);
        let req = tonic::Request::from_parts(metadata, Default::default(), ListRequest::default());
        let services = client.list_services(req).await.map_err(|s| ApiError::from_status("registry", &s))?;
        let registry = &self.registry;
        Ok(openapi::document(&services.into_inner().services, |hash| registry.schema(hash)))
    }
}

/// `rsp` with the CORS headers (reference §5.5) of a request whose origin is `allowed` (`None`: not allowed), each
/// unless already set.
fn cors(mut rsp: Response, allowed: Option<HeaderValue>) -> Response {
    if let Some(origin) = allowed {
        let echoed = origin != "*";
        let headers = rsp.headers_mut();
        let mut set = |name: header::HeaderName, value: HeaderValue| {
            if !headers.contains_key(&name) {
                headers.insert(name, value);
            }
        };
        set(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        set(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, PATCH, GET, OPTIONS, PUT, DELETE"));
        set(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization, Micro-Namespace",
            ),
        );
        if echoed {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    rsp
}

/// The `Access-Control-Allow-Origin` value for a request from `origin`, or `None` when it is not allowed.
fn allowed_origin(allowed: &[String], origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return Some(origin.cloned().unwrap_or(HeaderValue::from_static("*")));
    }
    let origin = origin?;
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(text)).then(|| origin.clone())
}
