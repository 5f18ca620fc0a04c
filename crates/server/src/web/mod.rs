//! The web dashboard (`micro server --web-address`, Micro's `micro web` on :8082): browse, call and operate every
//! service from a browser.
//!
//! Pages are rendered here, on the server, as plain HTML with one small embedded script and stylesheet
//! ([`html`]); nothing loads from another host. Every page and every action is made **as the logged-in user**:
//! the dashboard holds the user's token pair in a server-side [`session`] and calls services through the
//! in-process [`Gateway`] and [`Proxy`](crate::proxy::Proxy) with it, so the proxy applies the same rules as it does
//! to the CLI. The browser holds only a random session key, in an `HttpOnly`, `SameSite=Strict` cookie.
//!
//! State-changing requests must carry the session's CSRF token (a hidden `csrf` input, or the script's
//! `X-CSRF-Token` header), and any request whose `Origin` (or `Sec-Fetch-Site`) says it comes from another site is
//! refused, the login included. The script's endpoints:
//!
//! - `POST /api/call/{service}/{Handler.Method}`: a call with a JSON body (NDJSON for client streams), answered as
//!   the API gateway answers (JSON; NDJSON for server streams; Micro's error JSON with its HTTP status);
//! - `GET /api/sse/{service}/{Handler.Method}?request=…&csrf=…`: the read-only streams the pages follow (runtime
//!   logs, the registry's watch) as Server-Sent Events;
//! - `GET /api/events/tail?topic=…&csrf=…`: an events topic's new events, as Server-Sent Events;
//! - `GET /runtime/rows`: the runtime table's rows, which the runtime page refreshes every two seconds.

mod form;
mod html;
mod pages;
mod session;

use crate::auth::Peer;
use crate::conn;
use crate::gateway::Gateway;
use axum::Router;
use axum::extract::{Form, FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use micro_core::proto::auth::{InspectRequest, RevokeRequest, TokenRequest, auth_client::AuthClient};
use serde::Deserialize;
use session::{Session, Sessions, Tokens};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// The largest request body the dashboard reads (a call's JSON).
const MAX_BODY: usize = crate::gateway::MAX_BODY;
/// The id of errors the dashboard raises itself.
const WEB_ID: &str = "micro.web";

/// Where the dashboard's "copy as" commands point, and whether it serves TLS.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// The gRPC proxy's address (`grpcurl` commands).
    pub proxy_address: SocketAddr,
    /// The API gateway's address (`curl` commands), when it runs.
    pub api_address: Option<SocketAddr>,
    /// Whether the server serves TLS: the session cookie is then `Secure`, and the commands use `https`.
    pub tls: bool,
}

/// The web dashboard. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Gateway,
    sessions: Sessions,
    config: WebConfig,
    /// Cancelled on shutdown: open event streams end.
    closing: CancellationToken,
}

/// Why a page or an action failed.
#[derive(Debug)]
pub(crate) enum WebError {
    /// The session has ended (logged out, idle, or its token can no longer be refreshed): log in again.
    LoggedOut,
    /// A call failed, or the request was bad: the HTTP status and the server's message.
    Failed(StatusCode, String),
}

impl From<tonic::Status> for WebError {
    fn from(status: tonic::Status) -> Self {
        let e = crate::gateway::error::ApiError::from_status(WEB_ID, &status);
        WebError::Failed(e.status_code(), e.detail)
    }
}

impl From<crate::gateway::error::ApiError> for WebError {
    fn from(e: crate::gateway::error::ApiError) -> Self {
        WebError::Failed(e.status_code(), e.detail)
    }
}

impl Web {
    /// A dashboard that calls services through `gateway`.
    pub fn new(gateway: Gateway, config: WebConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                gateway,
                sessions: Sessions::default(),
                config,
                closing: CancellationToken::new(),
            }),
        }
    }

    /// The dashboard's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/services") }))
            .route("/login", get(login_form).post(login))
            .route("/logout", post(logout))
            .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", html::CSS) }))
            .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", html::JS) }))
            .route("/assets/icon.svg", get(|| async { asset("image/svg+xml", html::ICON) }))
            .route("/favicon.ico", get(|| async { Redirect::permanent("/assets/icon.svg") }))
            .route("/services", get(pages::services))
            .route("/services/{name}", get(pages::service))
            .route("/runtime", get(pages::runtime))
            .route("/runtime/rows", get(pages::runtime_rows))
            .route("/runtime/{name}", get(pages::logs))
            .route("/store", get(pages::store))
            .route("/config", get(pages::config))
            .route("/events", get(pages::events))
            .route("/auth", get(pages::auth))
            .route("/registry", get(pages::registry))
            .route("/api/call/{service}/{endpoint}", post(api_call))
            .route("/api/sse/{service}/{endpoint}", get(api_sse))
            .route("/api/events/tail", get(pages::events_tail))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.inner.clone())
    }
}

/// An embedded asset, cached for a year: its URL changes with its content ([`html::assets_version`]).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], body)
        .into_response()
}

/// An HTML answer, never cached (pages hold the user's data and CSRF token).
fn html_response(status: StatusCode, body: String) -> Response {
    let mut rsp = (status, body).into_response();
    let headers = rsp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    rsp
}

/// A JSON error as the gateway writes them (`{"id","code","detail","status"}`).
fn json_error(code: StatusCode, detail: impl Into<String>) -> Response {
    crate::gateway::error::ApiError::new(WEB_ID, code, detail).into_response()
}

/// Where to send a visitor who must log in first, back to `path` afterwards.
fn to_login(path: &str) -> Response {
    let next: String = form_urlencode(path);
    let mut rsp = Redirect::to(&format!("/login?next={next}")).into_response();
    rsp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

fn form_urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A safe place to go after logging in: a path on this site, else `/services`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && !n.contains("://") => {
            n.to_string()
        }
        _ => "/services".to_string(),
    }
}

/// Whether a request comes from this site: an `Origin` that is `http(s)://` + its `Host`, or `Sec-Fetch-Site:
/// same-origin` (or `none`, typed by the user); a request with neither comes from no browser page and passes.
fn same_site(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        return !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => matches!(site.trim(), "same-origin" | "none"),
        None => true,
    }
}

impl Inner {
    /// The session of the request's cookie, if it is live.
    fn session(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        self.sessions.get(session::cookie(headers, session::COOKIE)?)
    }

    /// The headers that carry the session's access token to the gateway, refreshing the token first when it is
    /// about to expire (as the CLI does). A token that cannot be refreshed ends the session.
    async fn caller(&self, session: &Session) -> Result<HeaderMap, WebError> {
        let now = unix_now();
        if session.tokens().stale(now) {
            let _one = session.refreshing.lock().await;
            let tokens = session.tokens();
            if tokens.stale(unix_now()) {
                match self.token(TokenRequest { refresh_token: tokens.refresh, ..Default::default() }, None).await {
                    Ok(fresh) => session.set_tokens(fresh),
                    Err(_) => {
                        self.sessions.remove(&session.id);
                        return Err(WebError::LoggedOut);
                    }
                }
            }
        }
        let mut headers = HeaderMap::new();
        let value =
            HeaderValue::from_str(&format!("Bearer {}", session.tokens().access)).map_err(|_| WebError::LoggedOut)?;
        headers.insert(header::AUTHORIZATION, value);
        Ok(headers)
    }

    /// The gRPC metadata of a call to `service` as the session's user.
    async fn metadata(&self, session: &Session, service: &str) -> Result<tonic::metadata::MetadataMap, WebError> {
        let headers = self.caller(session).await?;
        Ok(self.gateway.caller_metadata(&headers, service)?)
    }

    /// A token pair from `Auth.Token` (a login, or a refresh), through the proxy.
    async fn token(&self, req: TokenRequest, peer: Option<Peer>) -> Result<Tokens, tonic::Status> {
        let metadata =
            self.gateway.caller_metadata(&HeaderMap::new(), "auth").map_err(|e| tonic::Status::internal(e.detail))?;
        let mut extensions = tonic::Extensions::default();
        if let Some(peer) = peer {
            extensions.insert(peer);
        }
        let token = AuthClient::new(self.gateway.transport())
            .token(tonic::Request::from_parts(metadata, extensions, req))
            .await?
            .into_inner()
            .token
            .filter(|t| !t.access_token.is_empty())
            .ok_or_else(|| tonic::Status::internal("the server answered the login with no token"))?;
        Ok(Tokens { access: token.access_token, refresh: token.refresh_token, expiry: token.expiry })
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(State(inner): State<Arc<Inner>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    if inner.session(&headers).is_some() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    html_response(StatusCode::OK, html::login(None, "", &safe_next(q.next.as_deref())))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

async fn login(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let headers = req.headers().clone();
    let next = |f: &LoginForm| safe_next(f.next.as_deref());
    if !same_site(&headers) {
        return html_response(
            StatusCode::FORBIDDEN,
            html::login(Some("This login form was sent from another site, and refused."), "", "/services"),
        );
    }
    let Ok(Form(form)) = Form::<LoginForm>::from_request(req, &()).await else {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::login(Some("Send the form with a username and a password."), "", "/services"),
        );
    };
    let username = form.username.trim().to_string();
    if username.is_empty() || form.password.is_empty() {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::login(Some("Enter your username and your password."), &username, &next(&form)),
        );
    }
    let req = TokenRequest { id: username.clone(), secret: form.password.clone(), ..Default::default() };
    let tokens = match inner.token(req, peer).await {
        Ok(tokens) => tokens,
        Err(status) => {
            let code = crate::gateway::error::http_status(status.code());
            let message = match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::NotFound | tonic::Code::PermissionDenied => {
                    format!("Wrong username or password ({}).", status.message())
                }
                _ => format!("The login failed: {}", status.message()),
            };
            return html_response(code, html::login(Some(&message), &username, &next(&form)));
        }
    };
    // The account: its id, name and scopes (only to choose what the pages offer; the proxy decides).
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", tokens.access)) {
        headers.insert(header::AUTHORIZATION, v);
    }
    let account = match inner.gateway.caller_metadata(&headers, "auth") {
        Ok(metadata) => AuthClient::new(inner.gateway.transport())
            .inspect(tonic::Request::from_parts(
                metadata,
                Default::default(),
                InspectRequest { token: tokens.access.clone(), options: None },
            ))
            .await
            .ok()
            .and_then(|r| r.into_inner().account),
        Err(_) => None,
    };
    let (id, name, admin) = match account {
        Some(a) => {
            let name = if a.name.is_empty() { a.id.clone() } else { a.name.clone() };
            let admin = a.scopes.iter().any(|s| s == "admin");
            (a.id, name, admin)
        }
        None => (username.clone(), username.clone(), false),
    };
    tracing::info!(account = %id, "dashboard login");
    let session = inner.sessions.insert(Session::new(id, name, admin, tokens));
    let mut rsp = Redirect::to(&next(&form)).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&session.id, inner.config.tls)) {
        rsp.headers_mut().insert(header::SET_COOKIE, v);
    }
    rsp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(inner): State<Arc<Inner>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let Some(session) = inner.session(&headers) else { return Redirect::to("/login").into_response() };
    if !same_site(&headers) || !session.csrf_matches(&form.csrf) {
        return html_response(
            StatusCode::FORBIDDEN,
            html::error_page(Some(&session), "", "Refused", "The logout was not sent from this dashboard."),
        );
    }
    inner.sessions.remove(&session.id);
    // The refresh token is revoked too, so the session cannot be revived from a copy of it.
    let tokens = session.tokens();
    let mut auth_headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", tokens.access)) {
        auth_headers.insert(header::AUTHORIZATION, v);
    }
    if let Ok(metadata) = inner.gateway.caller_metadata(&auth_headers, "auth") {
        let req = RevokeRequest { refresh_token: tokens.refresh };
        if let Err(e) = AuthClient::new(inner.gateway.transport())
            .revoke(tonic::Request::from_parts(metadata, Default::default(), req))
            .await
        {
            tracing::debug!(error = %e.message(), "revoking a dashboard session's refresh token failed");
        }
    }
    tracing::info!(account = %session.account, "dashboard logout");
    let mut rsp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(inner.config.tls)) {
        rsp.headers_mut().insert(header::SET_COOKIE, v);
    }
    rsp
}

/// `POST /api/call/{service}/{endpoint}`: a call as the session's user, answered as the gateway answers.
async fn api_call(
    State(inner): State<Arc<Inner>>,
    Path((service, endpoint)): Path<(String, String)>,
    req: Request,
) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let headers = req.headers().clone();
    let Some(session) = inner.session(&headers) else {
        return json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again");
    };
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !same_site(&headers) || !session.csrf_matches(csrf) {
        return json_error(StatusCode::FORBIDDEN, "the request has no valid CSRF token: reload the page");
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(e) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request: {e}")),
    };
    let caller = match inner.caller(&session).await {
        Ok(caller) => caller,
        Err(_) => return json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again"),
    };
    inner.gateway.call_endpoint(&caller, &service, &endpoint, &body, false, peer).await
}

/// The streams the pages follow over `GET` (read-only).
const SSE_STREAMS: &[(&str, &str)] = &[("runtime", "Runtime.Logs"), ("registry", "Registry.Watch")];

#[derive(Deserialize)]
struct SseQuery {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
}

/// `GET /api/sse/{service}/{endpoint}?request=…&csrf=…`: a read-only stream as Server-Sent Events.
async fn api_sse(
    State(inner): State<Arc<Inner>>,
    Path((service, endpoint)): Path<(String, String)>,
    Query(q): Query<SseQuery>,
    req: Request,
) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let headers = req.headers();
    let Some(session) = inner.session(headers) else {
        return json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again");
    };
    if !same_site(headers) || !session.csrf_matches(&q.csrf) {
        return json_error(StatusCode::FORBIDDEN, "the request has no valid CSRF token: reload the page");
    }
    if !SSE_STREAMS.contains(&(service.as_str(), endpoint.as_str())) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{service} {endpoint} is not a stream the dashboard follows"),
        );
    }
    let caller = match inner.caller(&session).await {
        Ok(caller) => caller,
        Err(_) => return json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again"),
    };
    let body = if q.request.trim().is_empty() { "{}" } else { q.request.as_str() };
    inner.gateway.call_endpoint(&caller, &service, &endpoint, body.as_bytes(), true, peer).await
}

/// Each connection's service: the router, with the connection told when each request starts and its response
/// ends (so that a streaming response keeps it from being closed as idle), and the client's address for auth.
#[derive(Clone)]
struct WebService {
    router: Router,
    conn: Option<Arc<conn::Activity>>,
    peer: Option<Peer>,
}

impl Service<Request> for WebService {
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
        let in_flight = self.conn.as_ref().map(|c| c.begin());
        let router = self.router.clone();
        Box::pin(async move {
            let rsp = match router.oneshot(req).await {
                Ok(rsp) => rsp,
                Err(never) => match never {},
            };
            Ok(crate::gateway::tracked(rsp, in_flight))
        })
    }
}

impl crate::gateway::ForConnection for WebService {
    fn for_connection(&self, conn: Arc<conn::Activity>, peer: Peer) -> Self {
        Self { router: self.router.clone(), conn: Some(conn), peer: Some(peer) }
    }
}

/// Serves the dashboard on `listener` (over TLS with `tls` when given) until `shutdown` resolves; open event
/// streams then end and in-flight requests finish. Connections are limited and time out as [`conn`] describes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = conn::Listener::new(listener, conn::Limits::from_env(), conn::Mode::Requests).with_tls(tls);
    let closing = web.inner.closing.clone();
    let gateway = web.inner.gateway.clone();
    let service = WebService { router: web.router(), conn: None, peer: None };
    axum::serve(listener, crate::gateway::PerConnection(service))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
            gateway.close_streams();
        })
        .await
}

/// The query of a page, as text pairs.
pub(crate) type Params = Query<HashMap<String, String>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/services/helloworld")), "/services/helloworld");
        assert_eq!(safe_next(Some("//evil.example")), "/services");
        assert_eq!(safe_next(Some("https://evil.example")), "/services");
        assert_eq!(safe_next(Some("/\\evil.example")), "/services");
        assert_eq!(safe_next(None), "/services");
    }

    #[test]
    fn requests_from_other_sites_are_told_apart() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            same_site(&h)
        };
        assert!(with(&[("host", "127.0.0.1:8082"), ("origin", "http://127.0.0.1:8082")]));
        assert!(!with(&[("host", "127.0.0.1:8082"), ("origin", "http://evil.example")]));
        assert!(!with(&[("host", "127.0.0.1:8082"), ("origin", "null")]));
        assert!(with(&[("sec-fetch-site", "same-origin")]));
        assert!(!with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[]));
    }

    #[test]
    fn login_redirects_keep_the_path() {
        assert_eq!(form_urlencode("/services/a b?x=1"), "/services/a%20b%3Fx%3D1");
    }
}
