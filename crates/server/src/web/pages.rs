//! The dashboard's pages: services, a service's endpoints with their forms, the runtime and its logs, store,
//! config, events, auth and the registry's feed.
//!
//! Each page reads what it shows through the proxy **as the session's user** (typed gRPC clients over
//! [`Gateway::transport`](crate::gateway::Gateway)), so a page shows what that user may read and a denied read is
//! an error page with the server's message and its HTTP status. Actions (calls, writes, kills) are made by the
//! page's script through `POST /api/call/…`, with the same authorisation. Live parts (logs, the registry's feed,
//! an events topic) follow Server-Sent Events.

use super::html::{self, attr, esc};
use super::session::Session;
use super::{Inner, Params, WebError, form, html_response, to_login};
use crate::registry::RegistryBackend;
use crate::runtime::records::Status;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use micro_core::proto::auth::{ListAccountsRequest, ListRequest as ListRulesRequest};
use micro_core::proto::auth::{accounts_client::AccountsClient, rules_client::RulesClient};
use micro_core::proto::config::{GetRequest as ConfigGet, Options as ConfigOptions, config_client::ConfigClient};
use micro_core::proto::events::{
    ConsumeRequest, ReadRequest as EventsRead, Subscribe, consume_request, store_client::StoreClient as EventsStore,
    stream_client::StreamClient,
};
use micro_core::proto::registry::{GetRequest, ListRequest, registry_client::RegistryClient};
use micro_core::proto::runtime::{ReadRequest as RuntimeRead, runtime_client::RuntimeClient};
use micro_core::proto::store::{
    DatabasesRequest, ListOptions, ListRequest as StoreList, ReadOptions, ReadRequest as StoreRead, TablesRequest,
    store_client::StoreClient,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

type St = State<Arc<Inner>>;

/// How long the services page waits for a node's health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The most keys the store page lists.
const STORE_KEYS: u32 = 200;
/// The most past events the events page shows.
const PAST_EVENTS: u64 = 20;

/// Renders a page for the session's user: the login form for a visitor without a session (back to `path`
/// afterwards), the page made by `body`, or an error page with the server's message and status.
async fn render<F, Fut>(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    path: &str,
    active: &str,
    title: &str,
    body: F,
) -> Response
where
    F: FnOnce(Arc<Inner>, Arc<Session>) -> Fut,
    Fut: Future<Output = Result<String, WebError>>,
{
    let Some(session) = inner.session(headers) else { return to_login(path) };
    match body(inner.clone(), session.clone()).await {
        Ok(html) => html_response(StatusCode::OK, html::page(Some(&session), active, title, &html)),
        Err(WebError::LoggedOut) => to_login(path),
        Err(WebError::Failed(code, message)) => {
            html_response(code, html::error_page(Some(&session), active, title, &message))
        }
    }
}

impl Inner {
    /// A gRPC request to `service` as the session's user.
    async fn request<T>(&self, session: &Session, service: &str, message: T) -> Result<tonic::Request<T>, WebError> {
        Ok(tonic::Request::from_parts(self.metadata(session, service).await?, Default::default(), message))
    }
}

/// `GET /services`: every service of the namespace, with its versions, nodes and health.
pub(crate) async fn services(State(inner): St, headers: HeaderMap) -> Response {
    render(&inner, &headers, "/services", "/services", "Services", |inner, session| async move {
        let req = inner.request(&session, "registry", ListRequest::default()).await?;
        let listed = RegistryClient::new(inner.gateway.transport()).list_services(req).await?.into_inner().services;
        let names: BTreeSet<String> = listed.into_iter().map(|s| s.name).collect();
        let rows = futures::future::join_all(names.iter().map(|name| service_row(&inner, &session, name))).await;
        let mut body = String::from(
            "<h1>Services</h1><p class=\"lede\">Every service registered in your namespace. Open one to call its \
             endpoints.</p>",
        );
        if names.is_empty() {
            body.push_str("<p class=\"empty\">No service is registered yet. Start one with <code>micro run</code>.</p>");
        }
        body.push_str(
            "<div class=\"scroll\"><table id=\"services\"><thead><tr><th scope=\"col\">Service</th>\
             <th scope=\"col\">Versions</th><th scope=\"col\">Nodes</th><th scope=\"col\">Health</th></tr></thead><tbody>",
        );
        for row in rows {
            body.push_str(&row?);
        }
        body.push_str("</tbody></table></div>");
        Ok(body)
    })
    .await
}

/// One row of the services table: the versions and nodes of `name`, each node's health checked through the
/// proxy (`grpc.health.v1.Health/Check` sent to that node).
async fn service_row(inner: &Inner, session: &Session, name: &str) -> Result<String, WebError> {
    let req = inner.request(session, "registry", GetRequest { service: name.into(), options: None }).await?;
    let versions = match RegistryClient::new(inner.gateway.transport()).get_service(req).await {
        Ok(rsp) => rsp.into_inner().services,
        Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
        Err(status) => return Err(status.into()),
    };
    let mut checks = Vec::new();
    for node in versions.iter().flat_map(|v| &v.nodes) {
        let mut metadata = inner.metadata(session, name).await?;
        if let Ok(v) = node.id.parse() {
            metadata.insert(micro_core::metadata::NODE_HEADER, v);
        }
        let mut req = tonic::Request::from_parts(metadata, Default::default(), HealthCheckRequest::default());
        req.set_timeout(HEALTH_TIMEOUT);
        let transport = inner.gateway.transport();
        checks.push(async move {
            let mut client = HealthClient::new(transport);
            match tokio::time::timeout(HEALTH_TIMEOUT, client.check(req)).await {
                Ok(Ok(rsp)) => ServingStatus::try_from(rsp.into_inner().status).unwrap_or(ServingStatus::Unknown),
                _ => ServingStatus::NotServing,
            }
        });
    }
    let health = futures::future::join_all(checks).await;
    let serving = health.iter().filter(|s| **s == ServingStatus::Serving).count();
    let (class, word) = match (serving, health.len()) {
        (_, 0) => ("unknown", "no nodes".to_string()),
        (s, n) if s == n => ("ok", format!("serving {s}/{n}")),
        (0, n) => ("bad", format!("not serving 0/{n}")),
        (s, n) => ("warn", format!("degraded {s}/{n}")),
    };
    let version_list: BTreeSet<&str> =
        versions.iter().map(|v| if v.version.is_empty() { "-" } else { v.version.as_str() }).collect();
    let nodes: Vec<String> = versions.iter().flat_map(|v| &v.nodes).map(|n| esc(&n.address)).collect();
    let n = attr(name);
    Ok(format!(
        "<tr data-service=\"{n}\"><th scope=\"row\"><a href=\"/services/{n}\">{name}</a></th><td>{versions}</td>\
         <td><span class=\"count\">{count}</span> <span class=\"muted\">{nodes}</span></td>\
         <td><span class=\"pill {class}\">{word}</span></td></tr>",
        name = esc(name),
        versions = esc(&version_list.into_iter().collect::<Vec<_>>().join(", ")),
        count = nodes.len(),
        nodes = nodes.join(", "),
    ))
}

/// `GET /services/{name}`: every endpoint of a service, with its comments and a call form.
pub(crate) async fn service(State(inner): St, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let path = format!("/services/{name}");
    render(&inner, &headers, &path, "/services", &name.clone(), |inner, session| async move {
        let req = inner.request(&session, "registry", GetRequest { service: name.clone(), options: None }).await?;
        let versions = RegistryClient::new(inner.gateway.transport()).get_service(req).await?.into_inner().services;
        let Some(latest) = versions.iter().find(|v| v.schema.is_some()).or(versions.first()) else {
            return Err(WebError::Failed(StatusCode::NOT_FOUND, format!("service \"{name}\" is not registered")));
        };
        let schema = latest.schema.as_ref().and_then(|s| inner.gateway.registry().schema(&s.hash));
        let mut body = format!("<p class=\"crumbs\"><a href=\"/services\">Services</a> /</p><h1>{}</h1>", esc(&name));
        let nodes: usize = versions.iter().map(|v| v.nodes.len()).sum();
        let version_list: Vec<String> = versions.iter().map(|v| esc(&v.version)).collect();
        let _ = write!(
            body,
            "<p class=\"lede\">Version {} · {nodes} node{} · {} endpoint{}</p>",
            version_list.join(", "),
            if nodes == 1 { "" } else { "s" },
            latest.endpoints.len(),
            if latest.endpoints.len() == 1 { "" } else { "s" },
        );
        let Some(schema) = schema else {
            body.push_str(
                "<p class=\"error\" role=\"alert\">This service registered no schema, so the dashboard cannot make \
                 forms for it. Services built with micro's library register theirs.</p>",
            );
            return Ok(body);
        };
        if let Some(doc) = latest
            .endpoints
            .first()
            .and_then(|e| micro_core::schema::find_method(&schema.pool, &e.method))
            .and_then(|m| micro_core::schema::service_comment(m.parent_service()))
        {
            let _ = write!(body, "<p class=\"doc\">{}</p>", esc(&doc));
        }
        let proxy = inner.config.proxy_address.to_string();
        let api = inner.config.api_address.map(|a| a.to_string()).unwrap_or_default();
        let scheme = if inner.config.tls { "https" } else { "http" };
        let mut toc = String::from("<nav class=\"toc\" aria-label=\"Endpoints\"><ul>");
        let mut sections = String::new();
        for (i, endpoint) in latest.endpoints.iter().enumerate() {
            let Some(method) = micro_core::schema::find_method(&schema.pool, &endpoint.method) else { continue };
            let id = format!("ep-{i}");
            let _ = write!(toc, "<li><a href=\"#{id}\">{}</a></li>", esc(&endpoint.name));
            let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                (false, false) => "unary",
                (false, true) => "server",
                (true, false) => "client",
                (true, true) => "bidi",
            };
            let badge = match kind {
                "server" => "<span class=\"badge\">server stream</span>",
                "client" => "<span class=\"badge\">client stream</span>",
                "bidi" => "<span class=\"badge\">bidi stream</span>",
                _ => "",
            };
            let doc = micro_core::schema::method_comment(&method)
                .map(|c| format!("<p class=\"doc\">{}</p>", esc(&c)))
                .unwrap_or_default();
            let lines = if method.is_client_streaming() {
                format!(
                    "<div class=\"lines\"><label for=\"{id}-lines\">Messages to send, one JSON per line</label>\
                     <textarea id=\"{id}-lines\" class=\"lines\" rows=\"3\" spellcheck=\"false\" \
                     placeholder=\"{{}}\"></textarea><button type=\"button\" class=\"add-line\">Add the form as a \
                     line</button></div>"
                )
            } else {
                String::new()
            };
            let _ = write!(
                sections,
                "<section class=\"endpoint\" id=\"{id}\" data-endpoint=\"{ep}\" data-service=\"{svc}\" \
                 data-stream=\"{kind}\" aria-labelledby=\"{id}-h\"><h2 id=\"{id}-h\">{ep_text} {badge}</h2>{doc}\
                 <p class=\"types\">{input} → {output}</p>\
                 <form class=\"call\" data-method=\"{grpc}\" data-proxy=\"{proxy}\" data-api=\"{scheme}://{api}\" \
                 data-path=\"{api_path}\" novalidate>\
                 <fieldset class=\"mode\"><legend class=\"sr\">Request as</legend>\
                 <label><input type=\"radio\" name=\"{id}-mode\" value=\"form\" checked> Form</label>\
                 <label><input type=\"radio\" name=\"{id}-mode\" value=\"json\"> Raw JSON</label></fieldset>\
                 <div class=\"form\">{fields}</div>\
                 <div class=\"raw\" hidden><label for=\"{id}-json\">Request JSON</label>\
                 <textarea id=\"{id}-json\" class=\"json\" rows=\"4\" spellcheck=\"false\">{{}}</textarea></div>\
                 {lines}<div class=\"actions\"><button type=\"submit\">{verb}</button>\
                 <button type=\"button\" class=\"stop\" hidden>Stop</button>\
                 <details class=\"copy\"><summary>Copy as</summary><div class=\"menu\">\
                 <button type=\"button\" data-copy=\"cli\">micro CLI</button>\
                 <button type=\"button\" data-copy=\"grpcurl\">grpcurl</button>\
                 <button type=\"button\" data-copy=\"curl\">curl</button></div>\
                 <pre class=\"command\" tabindex=\"0\"></pre></details></div></form>\
                 <div class=\"result\"><output class=\"status\" aria-live=\"polite\"></output>\
                 <label class=\"check raw-toggle\"><input type=\"checkbox\" class=\"raw-answer\"> compact</label>\
                 <pre class=\"answer\" tabindex=\"0\" aria-label=\"Answer of {ep}\"></pre></div></section>",
                ep = attr(&endpoint.name),
                ep_text = esc(&endpoint.name),
                svc = attr(&name),
                input = esc(method.input().full_name()),
                output = esc(method.output().full_name()),
                grpc = attr(method.parent_service().full_name()) + "/" + &attr(method.name()),
                proxy = attr(&proxy),
                api = attr(&api),
                api_path = attr(&format!("/{}/{}/{}", name, method.parent_service().name(), method.name())),
                fields = form::fields(&method.input(), &id),
                verb = if method.is_server_streaming() { "Start" } else { "Call" },
            );
        }
        toc.push_str("</ul></nav>");
        body.push_str(&toc);
        body.push_str(&sections);
        Ok(body)
    })
    .await
}

/// The runtime's services as table rows: name (linking to its logs), version, status, build, updated, error.
async fn runtime_table_rows(inner: &Inner, session: &Session) -> Result<String, WebError> {
    let req = inner.request(session, "runtime", RuntimeRead::default()).await?;
    let mut services = RuntimeClient::new(inner.gateway.transport()).read(req).await?.into_inner().services;
    services.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let mut rows = String::new();
    if services.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"6\">The runtime runs no service. Start one with <code>micro run</code>.</td></tr>");
    }
    for s in &services {
        let status = Status::from_code(s.status);
        let class = match status {
            Status::Running => "ok",
            Status::Error => "bad",
            Status::Stopped | Status::Unknown => "unknown",
            _ => "warn",
        };
        let m = &s.metadata;
        let build: String = m.get("build").map(|b| b.chars().take(7).collect()).unwrap_or_else(|| "-".into());
        let updated = m.get("updated").or_else(|| m.get("started")).and_then(|u| u.parse::<i64>().ok()).unwrap_or(0);
        let mut notes = Vec::new();
        if let Some(r) = m.get("restarts").filter(|r| r.as_str() != "0") {
            notes.push(format!("restarts {}", esc(r)));
        }
        if let Some(e) = m.get("error").filter(|e| !e.is_empty()) {
            notes.push(format!("<span class=\"error-text\">{}</span>", esc(e)));
        }
        if let Some(stage) = m.get("deploy") {
            notes.push(format!("deploying: {}", esc(stage)));
        }
        let n = attr(&s.name);
        let _ = write!(
            rows,
            "<tr data-service=\"{n}\"><th scope=\"row\"><a href=\"/runtime/{n}\">{name}</a></th><td>{version}</td>\
             <td><span class=\"pill {class}\">{word}</span></td><td><code>{build}</code></td><td>{updated}</td>\
             <td>{notes}</td></tr>",
            name = esc(&s.name),
            version = esc(if s.version.is_empty() { "-" } else { &s.version }),
            word = status.word(),
            build = esc(&build),
            updated = html::time(updated),
            notes = notes.join("; "),
        );
    }
    Ok(rows)
}

/// `GET /runtime`: the runtime's status table, refreshed by the page every two seconds.
pub(crate) async fn runtime(State(inner): St, headers: HeaderMap) -> Response {
    render(&inner, &headers, "/runtime", "/runtime", "Runtime", |inner, session| async move {
        let rows = runtime_table_rows(&inner, &session).await?;
        Ok(format!(
            "<h1>Runtime</h1><p class=\"lede\">The services the runtime runs, live. Open one for its logs.</p>\
             <div class=\"scroll\"><table id=\"runtime\" data-refresh=\"/runtime/rows\"><thead><tr>\
             <th scope=\"col\">Service</th><th scope=\"col\">Version</th><th scope=\"col\">Status</th>\
             <th scope=\"col\">Build</th><th scope=\"col\">Updated (UTC)</th><th scope=\"col\">Notes</th></tr></thead>\
             <tbody aria-live=\"polite\">{rows}</tbody></table></div>"
        ))
    })
    .await
}

/// `GET /runtime/rows`: the runtime table's rows alone, for the page's refresh.
pub(crate) async fn runtime_rows(State(inner): St, headers: HeaderMap) -> Response {
    let Some(session) = inner.session(&headers) else {
        return super::json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again");
    };
    match runtime_table_rows(&inner, &session).await {
        Ok(rows) => html_response(StatusCode::OK, rows),
        Err(WebError::LoggedOut) => super::json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended"),
        Err(WebError::Failed(code, message)) => super::json_error(code, message),
    }
}

/// `GET /runtime/{name}`: a service's logs, following as they arrive, with kill (and update, for admins).
pub(crate) async fn logs(State(inner): St, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let path = format!("/runtime/{name}");
    render(&inner, &headers, &path, "/runtime", &format!("{name} logs"), |inner, session| async move {
        let req = RuntimeRead {
            options: Some(micro_core::proto::runtime::ReadOptions { service: name.clone(), ..Default::default() }),
        };
        let req = inner.request(&session, "runtime", req).await?;
        let services = RuntimeClient::new(inner.gateway.transport()).read(req).await?.into_inner().services;
        let status = services.first().map_or("not running", |s| Status::from_code(s.status).word());
        let n = attr(&name);
        let update = if session.admin {
            format!(
                "<form class=\"act\" data-action=\"update\" data-service=\"{n}\"><button type=\"submit\">Update \
                 </button></form>"
            )
        } else {
            String::new()
        };
        Ok(format!(
            "<p class=\"crumbs\"><a href=\"/runtime\">Runtime</a> /</p><h1>{name}</h1>\
             <div class=\"toolbar\"><span class=\"pill\">{status}</span>\
             <form class=\"act\" data-action=\"kill\" data-service=\"{n}\" data-confirm=\"Kill {n}?\">\
             <button type=\"submit\" class=\"danger\">Kill</button></form>{update}\
             <label class=\"check\"><input type=\"checkbox\" id=\"follow\" checked> follow</label></div>\
             <output class=\"status\" id=\"logs-status\" aria-live=\"polite\">connecting…</output>\
             <pre id=\"logs\" data-service=\"{n}\" tabindex=\"0\" aria-label=\"Logs of {n}\"></pre>",
            name = esc(&name),
        ))
    })
    .await
}

/// `GET /store?database=…&table=…&prefix=…&key=…`: the store's databases and tables, a table's keys, a record.
pub(crate) async fn store(State(inner): St, headers: HeaderMap, params: Params) -> Response {
    let q = params.0;
    let database = q.get("database").cloned().unwrap_or_default();
    let table = q.get("table").cloned().unwrap_or_default();
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let key = q.get("key").cloned();
    render(&inner, &headers, "/store", "/store", "Store", |inner, session| async move {
        let client = StoreClient::new(inner.gateway.transport());
        let dbs = client.clone().databases(inner.request(&session, "store", DatabasesRequest {}).await?).await?;
        let mut databases = dbs.into_inner().databases;
        if databases.is_empty() {
            databases.push(String::new());
        }
        let db = if database.is_empty() { databases[0].clone() } else { database.clone() };
        let tables = client
            .clone()
            .tables(inner.request(&session, "store", TablesRequest { database: db.clone() }).await?)
            .await?
            .into_inner()
            .tables;
        let mut body = String::from("<h1>Store</h1><div id=\"store\" class=\"columns\"><aside><h2>Tables</h2>");
        for d in &databases {
            let _ = write!(body, "<h3>{}</h3><ul class=\"tables\">", esc(if d.is_empty() { "(default)" } else { d }));
            let list = if *d == db { tables.clone() } else { Vec::new() };
            if *d != db {
                let _ = write!(body, "<li><a href=\"/store?database={}\">open…</a></li>", attr(&urlencode(d)));
            }
            for t in &list {
                let current = if *t == table { " aria-current=\"page\"" } else { "" };
                let _ = write!(
                    body,
                    "<li><a href=\"/store?database={}&amp;table={}\"{current}>{}</a></li>",
                    attr(&urlencode(d)),
                    attr(&urlencode(t)),
                    esc(if t.is_empty() { "(default)" } else { t })
                );
            }
            body.push_str("</ul>");
        }
        body.push_str("</aside><div class=\"main\">");
        let _ = write!(
            body,
            "<form class=\"inline\" method=\"get\" action=\"/store\"><input type=\"hidden\" name=\"database\" \
             value=\"{db}\"><input type=\"hidden\" name=\"table\" value=\"{t}\"><label for=\"prefix\">Keys starting \
             with</label><input id=\"prefix\" name=\"prefix\" value=\"{p}\"><button type=\"submit\">List</button></form>",
            db = attr(&db),
            t = attr(&table),
            p = attr(&prefix),
        );
        let options =
            ListOptions { database: db.clone(), table: table.clone(), prefix, limit: STORE_KEYS, ..Default::default() };
        let mut keys = Vec::new();
        let mut stream = client
            .clone()
            .list(inner.request(&session, "store", StoreList { options: Some(options) }).await?)
            .await?
            .into_inner();
        while let Some(page) = stream.next().await {
            keys.extend(page?.keys);
        }
        let _ = write!(body, "<h2>Keys <span class=\"muted\">({}{})</span></h2>", keys.len(), if keys.len() as u32 >= STORE_KEYS { "+" } else { "" });
        body.push_str("<ul class=\"keys\" id=\"store-keys\">");
        for k in &keys {
            let _ = write!(
                body,
                "<li><a href=\"/store?database={}&amp;table={}&amp;key={}\">{}</a></li>",
                attr(&urlencode(&db)),
                attr(&urlencode(&table)),
                attr(&urlencode(k)),
                esc(k)
            );
        }
        if keys.is_empty() {
            body.push_str("<li class=\"empty\">No keys.</li>");
        }
        body.push_str("</ul>");
        if let Some(key) = key {
            let read = StoreRead {
                key: key.clone(),
                options: Some(ReadOptions { database: db.clone(), table: table.clone(), ..Default::default() }),
            };
            let found = client.clone().read(inner.request(&session, "store", read).await?).await;
            let _ = write!(body, "<section class=\"record\" aria-labelledby=\"rec-h\"><h2 id=\"rec-h\">{}</h2>", esc(&key));
            match found {
                Ok(rsp) => {
                    for r in rsp.into_inner().records {
                        let text = match std::str::from_utf8(&r.value) {
                            Ok(s) => pretty(s),
                            Err(_) => format!("(binary, base64) {}", base64_encode(&r.value)),
                        };
                        let expiry = if r.expires_at > 0 { html::time(r.expires_at) } else { "never".into() };
                        let _ = write!(body, "<p class=\"muted\">Expires: {expiry}</p><pre class=\"answer\">{}</pre>", esc(&text));
                    }
                }
                Err(status) => {
                    let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(status.message()));
                }
            }
            let _ = write!(
                body,
                "<form class=\"act\" data-action=\"store-delete\" data-database=\"{db}\" data-table=\"{t}\" \
                 data-key=\"{k}\" data-confirm=\"Delete this record?\"><button type=\"submit\" class=\"danger\">Delete \
                 record</button></form></section>",
                db = attr(&db),
                t = attr(&table),
                k = attr(&key),
            );
        }
        let _ = write!(
            body,
            "<section aria-labelledby=\"write-h\"><h2 id=\"write-h\">Write a record</h2>\
             <form class=\"act stacked\" data-action=\"store-write\" data-database=\"{db}\" data-table=\"{t}\">\
             <label for=\"w-key\">Key</label><input id=\"w-key\" name=\"key\" required>\
             <label for=\"w-value\">Value</label><textarea id=\"w-value\" name=\"value\" rows=\"3\"></textarea>\
             <label for=\"w-ttl\">Expires after (seconds, 0 = never)</label>\
             <input id=\"w-ttl\" name=\"ttl\" type=\"number\" min=\"0\" step=\"1\" value=\"0\">\
             <button type=\"submit\">Write</button></form></section></div></div>",
            db = attr(&db),
            t = attr(&table),
        );
        Ok(body)
    })
    .await
}

/// `GET /config`: the namespace's config as paths and values, secrets masked, with set and delete.
pub(crate) async fn config(State(inner): St, headers: HeaderMap) -> Response {
    render(&inner, &headers, "/config", "/config", "Config", |inner, session| async move {
        let req = ConfigGet { namespace: String::new(), path: String::new(), options: Some(ConfigOptions { secret: false }) };
        let got = ConfigClient::new(inner.gateway.transport()).get(inner.request(&session, "config", req).await?).await;
        let data = match got {
            Ok(rsp) => rsp.into_inner().value.map(|v| v.data).unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::NotFound => String::new(),
            Err(status) => return Err(status.into()),
        };
        let value: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
        let mut leaves = BTreeMap::new();
        flatten("", &value, &mut leaves);
        let mut body = String::from(
            "<h1>Config</h1><p class=\"lede\">Your namespace's config. Secret values show as <code>[secret]</code>.</p>\
             <div id=\"config\"><div class=\"scroll\"><table id=\"config-values\"><thead><tr><th scope=\"col\">Path</th>\
             <th scope=\"col\">Value</th><th scope=\"col\"><span class=\"sr\">Actions</span></th></tr></thead><tbody>",
        );
        if leaves.is_empty() {
            body.push_str("<tr class=\"empty\"><td colspan=\"3\">No config is set.</td></tr>");
        }
        for (path, value) in &leaves {
            let _ = write!(
                body,
                "<tr data-path=\"{p}\"><th scope=\"row\"><code>{path}</code></th><td><code>{value}</code></td><td>\
                 <form class=\"act\" data-action=\"config-delete\" data-path=\"{p}\" data-confirm=\"Delete {p}?\">\
                 <button type=\"submit\" class=\"danger small\" aria-label=\"Delete {p}\">Delete</button></form></td></tr>",
                p = attr(path),
                path = esc(path),
                value = esc(value),
            );
        }
        body.push_str(
            "</tbody></table></div><section aria-labelledby=\"set-h\"><h2 id=\"set-h\">Set a value</h2>\
             <form class=\"act stacked\" data-action=\"config-set\"><label for=\"c-path\">Path</label>\
             <input id=\"c-path\" name=\"path\" placeholder=\"database.address\" required>\
             <label for=\"c-value\">Value (JSON, or text)</label><textarea id=\"c-value\" name=\"value\" rows=\"2\"></textarea>\
             <label class=\"check\"><input type=\"checkbox\" name=\"secret\"> secret (encrypted at rest, masked here)</label>\
             <button type=\"submit\">Set</button></form></section></div>",
        );
        Ok(body)
    })
    .await
}

/// The leaves of a JSON value as `a.b.c` paths and their text.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&path, v, out);
            }
        }
        serde_json::Value::Null if prefix.is_empty() => {}
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `GET /events?topic=…`: publish to a topic, its recent events, and a live tail of new ones.
pub(crate) async fn events(State(inner): St, headers: HeaderMap, params: Params) -> Response {
    let topic = params.0.get("topic").cloned().unwrap_or_default();
    render(&inner, &headers, "/events", "/events", "Events", |inner, session| async move {
        let mut body = format!(
            "<h1>Events</h1><div id=\"events\"><form class=\"inline\" method=\"get\" action=\"/events\">\
             <label for=\"topic\">Topic</label><input id=\"topic\" name=\"topic\" value=\"{}\" required>\
             <button type=\"submit\">Open</button></form>",
            attr(&topic)
        );
        if topic.is_empty() {
            body.push_str("<p class=\"empty\">Name a topic to read its events and follow new ones.</p></div>");
            return Ok(body);
        }
        let req = EventsRead { topic: topic.clone(), limit: PAST_EVENTS, offset: 0 };
        let past = EventsStore::new(inner.gateway.transport()).read(inner.request(&session, "events", req).await?).await;
        let _ = write!(
            body,
            "<section aria-labelledby=\"tail-h\"><h2 id=\"tail-h\">New events</h2>\
             <output class=\"status\" id=\"tail-status\" aria-live=\"polite\">connecting…</output>\
             <ol id=\"events-feed\" class=\"feed\" data-topic=\"{}\" aria-live=\"polite\"></ol></section>",
            attr(&topic)
        );
        body.push_str("<section aria-labelledby=\"past-h\"><h2 id=\"past-h\">Stored events <span class=\"muted\">(oldest first, up to 20)</span></h2>");
        match past {
            Ok(rsp) => {
                let events = rsp.into_inner().events;
                if events.is_empty() {
                    body.push_str("<p class=\"empty\">No stored events.</p>");
                }
                body.push_str("<ol class=\"feed\">");
                for e in events {
                    let payload = String::from_utf8_lossy(&e.payload);
                    let _ = write!(
                        body,
                        "<li><span class=\"muted\">#{} {}</span><pre>{}</pre></li>",
                        e.sequence,
                        html::time(e.timestamp),
                        esc(&pretty(&payload))
                    );
                }
                body.push_str("</ol>");
            }
            Err(status) => {
                let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(status.message()));
            }
        }
        let _ = write!(
            body,
            "</section><section aria-labelledby=\"pub-h\"><h2 id=\"pub-h\">Publish</h2>\
             <form class=\"act stacked\" data-action=\"publish\" data-topic=\"{}\"><label for=\"e-payload\">Payload \
             (JSON)</label><textarea id=\"e-payload\" name=\"payload\" rows=\"3\">{{}}</textarea>\
             <button type=\"submit\">Publish</button></form></section></div>",
            attr(&topic)
        );
        Ok(body)
    })
    .await
}

/// `GET /api/events/tail?topic=…&csrf=…`: the new events of a topic as Server-Sent Events, until the page closes
/// or the server shuts down.
pub(crate) async fn events_tail(State(inner): St, headers: HeaderMap, params: Params) -> Response {
    let q = params.0;
    let Some(session) = inner.session(&headers) else {
        return super::json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended: log in again");
    };
    if !super::same_site(&headers) || !session.csrf_matches(q.get("csrf").map_or("", String::as_str)) {
        return super::json_error(StatusCode::FORBIDDEN, "the request has no valid CSRF token: reload the page");
    }
    let topic = q.get("topic").cloned().unwrap_or_default();
    if topic.trim().is_empty() {
        return super::json_error(StatusCode::BAD_REQUEST, "name the topic to tail: ?topic=NAME");
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<ConsumeRequest>(16);
    let subscribe = Subscribe { topic, auto_ack: true, ..Default::default() };
    let _ = tx.try_send(ConsumeRequest { request: Some(consume_request::Request::Subscribe(subscribe)) });
    let metadata = match inner.metadata(&session, "events").await {
        Ok(m) => m,
        Err(_) => return super::json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended"),
    };
    let req = tonic::Request::from_parts(metadata, Default::default(), tokio_stream::wrappers::ReceiverStream::new(rx));
    let stream = match StreamClient::new(inner.gateway.transport()).consume(req).await {
        Ok(rsp) => rsp.into_inner(),
        Err(status) => return WebError::from(status).into_json(),
    };
    let closing = inner.closing.clone();
    // The sender lives as long as the stream: dropping it would half-close the request and end the consumption.
    let events = stream
        .map(move |item| {
            let _keep = &tx;
            Ok::<_, std::convert::Infallible>(match item {
                Ok(e) => SseEvent::default().data(
                    serde_json::json!({
                        "id": e.id,
                        "sequence": e.sequence,
                        "timestamp": e.timestamp,
                        "payload": String::from_utf8_lossy(&e.payload),
                    })
                    .to_string(),
                ),
                Err(status) => SseEvent::default()
                    .event("error")
                    .data(serde_json::json!({"code": status.code() as i32, "detail": status.message()}).to_string()),
            })
        })
        .take_until(closing.cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

impl WebError {
    /// This error as the gateway's error JSON.
    fn into_json(self) -> Response {
        match self {
            WebError::LoggedOut => super::json_error(StatusCode::UNAUTHORIZED, "your dashboard session has ended"),
            WebError::Failed(code, message) => super::json_error(code, message),
        }
    }
}

/// `GET /auth`: accounts and rules, with create and delete (admins).
pub(crate) async fn auth(State(inner): St, headers: HeaderMap) -> Response {
    render(&inner, &headers, "/auth", "/auth", "Auth", |inner, session| async move {
        let req = inner.request(&session, "auth", ListAccountsRequest { options: None }).await?;
        let accounts = match AccountsClient::new(inner.gateway.transport()).list(req).await {
            Ok(rsp) => rsp.into_inner().accounts,
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                return Err(WebError::Failed(
                    StatusCode::FORBIDDEN,
                    format!("Only admins can see accounts and rules ({}).", status.message()),
                ));
            }
            Err(status) => return Err(status.into()),
        };
        let req = inner.request(&session, "auth", ListRulesRequest { options: None }).await?;
        let rules = RulesClient::new(inner.gateway.transport()).list(req).await?.into_inner().rules;
        let mut body = String::from(
            "<h1>Auth</h1><section aria-labelledby=\"acc-h\"><h2 id=\"acc-h\">Accounts</h2><div class=\"scroll\">\
             <table id=\"accounts\"><thead><tr><th scope=\"col\">ID</th><th scope=\"col\">Name</th>\
             <th scope=\"col\">Type</th><th scope=\"col\">Scopes</th><th scope=\"col\"><span class=\"sr\">Actions</span>\
             </th></tr></thead><tbody>",
        );
        for a in &accounts {
            let _ = write!(
                body,
                "<tr data-account=\"{id}\"><th scope=\"row\">{id_text}</th><td>{name}</td><td>{kind}</td><td>{scopes}</td>\
                 <td><form class=\"act\" data-action=\"account-delete\" data-id=\"{id}\" data-confirm=\"Delete account \
                 {id}?\"><button type=\"submit\" class=\"danger small\" aria-label=\"Delete {id}\">Delete</button></form>\
                 </td></tr>",
                id = attr(&a.id),
                id_text = esc(&a.id),
                name = esc(&a.name),
                kind = esc(&a.r#type),
                scopes = esc(&a.scopes.join(", ")),
            );
        }
        body.push_str(
            "</tbody></table></div><form class=\"act stacked\" data-action=\"account-create\">\
             <h3>Create an account</h3><label for=\"a-id\">ID</label><input id=\"a-id\" name=\"id\" required>\
             <label for=\"a-secret\">Secret</label><input id=\"a-secret\" name=\"secret\" type=\"password\" \
             autocomplete=\"new-password\"><label for=\"a-scopes\">Scopes (comma-separated)</label>\
             <input id=\"a-scopes\" name=\"scopes\" placeholder=\"admin\"><button type=\"submit\">Create</button></form>\
             </section><section aria-labelledby=\"rules-h\"><h2 id=\"rules-h\">Rules</h2><div class=\"scroll\">\
             <table id=\"rules\"><thead><tr><th scope=\"col\">ID</th><th scope=\"col\">Scope</th>\
             <th scope=\"col\">Resource</th><th scope=\"col\">Access</th><th scope=\"col\">Priority</th>\
             <th scope=\"col\"><span class=\"sr\">Actions</span></th></tr></thead><tbody>",
        );
        for r in &rules {
            let resource = r
                .resource
                .as_ref()
                .map(|res| format!("{}:{}:{}", res.r#type, res.name, res.endpoint))
                .unwrap_or_default();
            let access = if r.access == 2 { "denied" } else { "granted" };
            let _ = write!(
                body,
                "<tr data-rule=\"{id}\"><th scope=\"row\">{id_text}</th><td>{scope}</td><td><code>{resource}</code></td>\
                 <td>{access}</td><td>{priority}</td><td><form class=\"act\" data-action=\"rule-delete\" data-id=\"{id}\" \
                 data-confirm=\"Delete rule {id}?\"><button type=\"submit\" class=\"danger small\" \
                 aria-label=\"Delete rule {id}\">Delete</button></form></td></tr>",
                id = attr(&r.id),
                id_text = esc(&r.id),
                scope = esc(if r.scope.is_empty() { "(public)" } else { &r.scope }),
                resource = esc(&resource),
                priority = r.priority,
            );
        }
        body.push_str(
            "</tbody></table></div><form class=\"act stacked\" data-action=\"rule-create\"><h3>Create a rule</h3>\
             <label for=\"r-id\">ID</label><input id=\"r-id\" name=\"id\" required>\
             <label for=\"r-scope\">Scope (empty = public, * = any account)</label><input id=\"r-scope\" name=\"scope\">\
             <label for=\"r-resource\">Resource (type:name:endpoint)</label>\
             <input id=\"r-resource\" name=\"resource\" value=\"service:*:*\" required>\
             <label for=\"r-access\">Access</label><select id=\"r-access\" name=\"access\">\
             <option value=\"GRANTED\">granted</option><option value=\"DENIED\">denied</option></select>\
             <label for=\"r-priority\">Priority</label><input id=\"r-priority\" name=\"priority\" type=\"number\" \
             step=\"1\" value=\"0\"><button type=\"submit\">Create</button></form></section>",
        );
        Ok(body)
    })
    .await
}

/// `GET /registry`: the registry's current services, and a live feed of registrations and expiries.
pub(crate) async fn registry(State(inner): St, headers: HeaderMap) -> Response {
    render(&inner, &headers, "/registry", "/registry", "Registry", |inner, session| async move {
        let req = inner.request(&session, "registry", ListRequest::default()).await?;
        let listed = RegistryClient::new(inner.gateway.transport()).list_services(req).await?.into_inner().services;
        let mut body = String::from(
            "<h1>Registry</h1><p class=\"lede\">Registrations, updates and expiries as they happen.</p>\
             <output class=\"status\" id=\"feed-status\" aria-live=\"polite\">connecting…</output>\
             <ol id=\"registry-feed\" class=\"feed\" aria-live=\"polite\"></ol><h2>Registered now</h2><ul class=\"keys\">",
        );
        let mut seen = BTreeSet::new();
        for s in listed {
            if seen.insert((s.name.clone(), s.version.clone())) {
                let _ = write!(
                    body,
                    "<li><a href=\"/services/{}\">{}</a> <span class=\"muted\">{}</span></li>",
                    attr(&s.name),
                    esc(&s.name),
                    esc(&s.version)
                );
            }
        }
        body.push_str("</ul>");
        Ok(body)
    })
    .await
}

/// A JSON text pretty-printed, or the text as it is.
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// Percent-encoding of a query value.
fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_shown_as_leaf_paths() {
        let v = serde_json::json!({"db": {"host": "h", "port": 5432}, "flag": true, "empty": {}});
        let mut out = BTreeMap::new();
        flatten("", &v, &mut out);
        assert_eq!(out.get("db.host").map(String::as_str), Some("h"));
        assert_eq!(out.get("db.port").map(String::as_str), Some("5432"));
        assert_eq!(out.get("flag").map(String::as_str), Some("true"));
        assert_eq!(out.get("empty").map(String::as_str), Some("{}"));
    }

    #[test]
    fn values_are_pretty_when_json_and_kept_otherwise() {
        assert_eq!(pretty("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty("plain text"), "plain text");
        assert_eq!(urlencode("a b&c"), "a%20b%26c");
    }
}
