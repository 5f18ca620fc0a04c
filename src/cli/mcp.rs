//! `micro mcp serve`: every registered endpoint as a Model Context Protocol tool, for AI agents.
//!
//! Over stdio (the default, for an agent that launches `micro`), calls go through the proxy with the CLI's env,
//! namespace and login, exactly as `micro call` makes them. Each endpoint of each service visible to the caller is
//! a tool named `<service>_<Handler>_<Method>`, described by its proto comment, with a JSON Schema of its request
//! as `inputSchema` (micro_client::json_schema) and of its response as `outputSchema`. Arguments are checked
//! against the request message before any call; a bad one is a tool error naming the field. Server streams
//! report each message as a progress notification and return them all (up to `--max-messages` and
//! `--max-bytes`); client and bidi streams take `{"messages": [...]}`. The MCP side is the official Rust SDK,
//! rmcp.
//!
//! `--address HOST:PORT` serves streamable HTTP at `/mcp` instead. Every HTTP request must carry
//! `Authorization: Bearer <token>`, which the server's `Auth.Inspect` must accept (else 401), and every call of
//! that session goes through the proxy as that caller, never with the CLI's own login.

use crate::exit::CliError;
use crate::settings::Settings;
use futures::StreamExt;
use micro_client::Connection;
use micro_client::dynamic::{CallOptions, call, message_to_json};
use micro_client::json_schema::message_schema;
use micro_client::schema_cache::SchemaCache;
use micro_core::schema;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many services' schemas `tools/list` resolves at once.
const RESOLVE_CONCURRENCY: usize = 16;
/// The services of the platform itself, exposed only with `--core`.
const CORE_SERVICES: &[&str] = micro_server::CORE_NAMES;
/// The longest tool name MCP allows.
const MAX_TOOL_NAME: usize = 64;

/// Arguments of `micro mcp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `micro mcp`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve every registered endpoint as an MCP tool, over stdio (or streamable HTTP with --address).
    Serve(ServeArgs),
}

/// Arguments of `micro mcp serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Expose only these services (a comma list; naming a core service here exposes it). `--exclude` wins.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub services: Vec<String>,
    /// Do not expose these services (a comma list).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub exclude: Vec<String>,
    /// Expose the core services too (auth, broker, config, events, registry, runtime, store, tasks).
    #[arg(long)]
    pub core: bool,
    /// Deadline of each tool call, e.g. `5s` (streams included).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The most messages of a server stream one tool call returns; the stream is cut there.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_messages: usize,
    /// The most bytes (of JSON) of a server stream one tool call returns; the stream is cut there.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_bytes: usize,
    /// Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio; each client authenticates with its own
    /// `Authorization: Bearer <token>`.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Expose only endpoints that are safe to call: marked `option idempotency_level = NO_SIDE_EFFECTS`, or named
    /// Get*, List* or Read*.
    #[arg(long)]
    pub read_only: bool,
    /// The most tool calls each caller may make, e.g. `10/s` or `100/m` (no limit by default).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<Rate>,
}

/// A rate limit: `calls` per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    calls: f64,
    per: Duration,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("invalid rate {s:?}: try 10/s or 100/m");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let calls: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if calls == 0 {
        return Err(bad());
    }
    Ok(Rate { calls: calls as f64, per })
}

/// Token buckets of the callers, by account: each holds up to `calls` and refills at `calls` per `per`.
#[derive(Debug, Default)]
struct Limiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// Takes one call from `account`'s bucket; `Err` is how long until the next call is allowed.
    fn take(&self, rate: Rate, account: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let (tokens, last) = buckets.entry(account.to_string()).or_insert((rate.calls, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() / rate.per.as_secs_f64() * rate.calls;
        *tokens = (*tokens + refill).min(rate.calls);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate.calls * rate.per.as_secs_f64()))
        }
    }
}

/// Whether an endpoint is safe to expose with `--read-only`.
fn is_read_only(method: &MethodDescriptor) -> bool {
    // google.protobuf.MethodOptions.IdempotencyLevel.NO_SIDE_EFFECTS
    const NO_SIDE_EFFECTS: i32 = 1;
    let marked = method
        .options()
        .get_field_by_name("idempotency_level")
        .and_then(|v| v.as_enum_number())
        .is_some_and(|level| level == NO_SIDE_EFFECTS);
    marked || ["Get", "List", "Read"].iter().any(|p| method.name().starts_with(p))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("invalid duration {s:?}: try 500ms or 30s"))
}

/// Runs `micro mcp`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(args) if args.address.is_some() => serve_http(settings, args).await,
        Command::Serve(args) => serve_stdio(settings, args).await,
    }
}

async fn serve_stdio(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    // Fail early, before the client's handshake, when there is no usable login.
    settings.connect_authed().await?;
    let account = settings.stored_token().ok().flatten().map(|(_, t)| t.account_id).unwrap_or_default();
    let server = McpServer::new(settings.clone(), args, account, Arc::default(), settings.schema_cache());
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| CliError::failure(format!("MCP handshake failed: {e}")))?;
    running.waiting().await.map_err(|e| CliError::failure(format!("MCP server stopped: {e}")))?;
    Ok(())
}

/// The caller of an HTTP session: its token (checked by `Auth.Inspect`) and account.
#[derive(Clone, Debug)]
struct Caller {
    token: String,
    account: String,
}

async fn serve_http(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let address = args.address.clone().unwrap_or_default();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| CliError::input(format!("cannot listen on {address}: {e}")))?;
    let local = listener.local_addr().map_err(|e| CliError::failure(e.to_string()))?;
    let (s, a, limiter, schemas) = (settings.clone(), args.clone(), Arc::<Limiter>::default(), settings.schema_cache());
    // Each session its own server (and tool map): what a caller sees depends on who it is. The rate limits are
    // per account across sessions, and the decoded schemas are shared by all.
    let factory = move || Ok(McpServer::new(s.clone(), a.clone(), String::new(), limiter.clone(), schemas.clone()));
    // The host allow-list guards against DNS rebinding from browsers; every request here needs a bearer token
    // that a rebinding page cannot have, and the server may well be reached by another name than localhost.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    let service = StreamableHttpService::new(factory, Arc::new(LocalSessionManager::default()), config);
    let app = axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(settings.clone(), authenticate));
    eprintln!("micro mcp serving streamable HTTP at http://{local}/mcp");
    // Without TCP_NODELAY every answer waits ~40 ms for the client's delayed ACK (Nagle's algorithm holds the
    // response's last segment back while its headers are unacknowledged).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an MCP connection");
        }
    });
    axum::serve(listener, app).await.map_err(|e| CliError::failure(format!("MCP HTTP server stopped: {e}")))?;
    Ok(())
}

/// Lets through only requests whose bearer token the server accepts, marking them with their [`Caller`].
async fn authenticate(
    axum::extract::State(settings): axum::extract::State<Settings>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return unauthorized("this MCP server needs `Authorization: Bearer <token>` (see `micro user token`)");
    };
    match inspect(&settings, &token).await {
        Ok(account) => {
            request.extensions_mut().insert(Caller { token, account });
            next.run(request).await
        }
        Err(reason) => unauthorized(&reason),
    }
}

/// The account of a token, asked of the server (`Auth.Inspect`).
async fn inspect(settings: &Settings, token: &str) -> Result<String, String> {
    use micro_core::proto::auth::InspectRequest;
    let conn = settings.connect().map_err(|e| e.message)?.with_token(Some(token));
    let req = conn.request(InspectRequest { token: token.to_string(), options: None });
    match conn.auth().inspect(req).await {
        Ok(resp) => resp.into_inner().account.map(|a| a.id).ok_or_else(|| "the token has no account".to_string()),
        Err(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
            Err(format!("the token was refused: {}", s.message()))
        }
        Err(s) => Err(format!("cannot check the token: {}", status_text(&s))),
    }
}

fn unauthorized(reason: &str) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(format!("{reason}\n")));
    *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

/// The HTTP caller of a request, if it came over HTTP.
fn caller(context: &RequestContext<RoleServer>) -> Option<Caller> {
    caller_of(&context.extensions)
}

fn caller_of(extensions: &rmcp::model::Extensions) -> Option<Caller> {
    extensions.get::<axum::http::request::Parts>()?.extensions.get::<Caller>().cloned()
}

/// One tool: the endpoint it calls.
#[derive(Clone)]
struct Endpoint {
    service: String,
    method: MethodDescriptor,
}

/// The MCP server: tools from the registry, calls through the proxy.
#[derive(Clone)]
pub struct McpServer {
    settings: Settings,
    args: ServeArgs,
    /// Who the calls are made as, for the audit log.
    account: String,
    /// The tools of the last listing, by name.
    tools: Arc<Mutex<HashMap<String, Endpoint>>>,
    /// The callers' rate limits.
    limiter: Arc<Limiter>,
    /// Service records and decoded schemas, kept in memory across listings.
    schemas: SchemaCache,
}

impl McpServer {
    fn new(settings: Settings, args: ServeArgs, account: String, limiter: Arc<Limiter>, schemas: SchemaCache) -> Self {
        Self { settings, args, account, tools: Arc::default(), limiter, schemas }
    }

    /// The connection calls are made on: as the HTTP caller, else with the CLI's login.
    async fn connection(&self, caller: Option<&Caller>) -> Result<Connection, CliError> {
        match caller {
            Some(c) => Ok(self.settings.connect()?.with_token(Some(&c.token))),
            None => self.settings.connect_authed().await,
        }
    }

    /// Whether a service is exposed.
    fn exposed(&self, name: &str) -> bool {
        if self.args.exclude.iter().any(|s| s == name) {
            return false;
        }
        // Naming a service with --services exposes it, even a core one.
        if !self.args.services.is_empty() {
            return self.args.services.iter().any(|s| s == name);
        }
        self.args.core || !CORE_SERVICES.contains(&name)
    }

    /// Every tool of every exposed service, fresh from the registry.
    async fn load_tools(&self, caller: Option<&Caller>) -> Result<Vec<(Tool, Endpoint)>, CliError> {
        let conn = self.connection(caller).await?;
        let ctx =
            crate::exit::RpcContext { address: self.settings.proxy.clone(), endpoint: "Registry.ListServices".into() };
        let services = conn.list_services().await.map_err(|s| crate::exit::from_status(&s, &ctx))?;
        let mut names: Vec<String> = services.into_iter().map(|s| s.name).filter(|n| self.exposed(n)).collect();
        names.sort();
        names.dedup();
        let cache = &self.schemas;
        // Resolved a few at a time: each is a round trip to the registry (answered from the cache when the
        // schema's hash is unchanged), and the order of `names` is kept.
        let resolved: Vec<_> = futures::stream::iter(names)
            .map(|name| {
                let conn = &conn;
                async move { cache.resolve(conn, &name, false).await }
            })
            .buffered(RESOLVE_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        for found in resolved {
            let Ok((service, Some(schema))) = found else { continue };
            for ep in &service.endpoints {
                let Some(method) = schema::find_method(&schema.pool, &ep.method) else { continue };
                if self.args.read_only && !is_read_only(&method) {
                    continue;
                }
                let endpoint = Endpoint { service: service.name.clone(), method };
                out.push((tool(&endpoint), endpoint));
            }
        }
        Ok(out)
    }

    async fn refresh(&self, caller: Option<&Caller>) -> Result<Vec<Tool>, CliError> {
        let loaded = self.load_tools(caller).await?;
        let mut map = HashMap::new();
        let mut tools = Vec::new();
        for (tool, endpoint) in loaded {
            map.insert(tool.name.to_string(), endpoint);
            tools.push(tool);
        }
        *self.tools.lock().expect("tools lock") = map;
        Ok(tools)
    }

    async fn find(&self, name: &str, caller: Option<&Caller>) -> Result<Option<Endpoint>, CliError> {
        if let Some(e) = self.tools.lock().expect("tools lock").get(name).cloned() {
            return Ok(Some(e));
        }
        self.refresh(caller).await?;
        Ok(self.tools.lock().expect("tools lock").get(name).cloned())
    }

    /// Follows the registry (`Registry.Watch`) and tells the client when the tools change: a service of those
    /// exposed registers, changes its endpoints, or goes away. Ends when the client's transport closes.
    async fn watch_registry(self, caller: Option<Caller>, peer: rmcp::Peer<RoleServer>) -> Result<(), CliError> {
        use micro_core::proto::registry::{Options, WatchRequest};
        let conn = self.connection(caller.as_ref()).await?;
        let request = conn.request(WatchRequest {
            service: String::new(),
            options: Some(Options { ttl: 0, domain: conn.namespace().to_string() }),
        });
        let ctx = crate::exit::RpcContext { address: self.settings.proxy.clone(), endpoint: "Registry.Watch".into() };
        let mut events =
            conn.registry().watch(request).await.map_err(|s| crate::exit::from_status(&s, &ctx))?.into_inner();
        let endpoints = |s: &micro_core::proto::registry::Service| -> Vec<String> {
            let mut e: Vec<String> = s.endpoints.iter().map(|e| e.method.clone()).collect();
            e.sort();
            e
        };
        let mut known: HashMap<String, Vec<String>> = HashMap::new();
        if let Ok(services) = conn.list_services().await {
            for s in services.iter().filter(|s| self.exposed(&s.name)) {
                known.insert(s.name.clone(), endpoints(s));
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                e = events.message() => e,
                _ = tick.tick() => {
                    if peer.is_transport_closed() { return Ok(()); }
                    continue;
                }
            };
            let Ok(Some(event)) = event else { return Ok(()) };
            let Some(service) = event.service else { continue };
            if !self.exposed(&service.name) {
                continue;
            }
            let changed = match event.action.as_str() {
                "delete" => known.remove(&service.name).is_some(),
                _ => {
                    let now = endpoints(&service);
                    known.insert(service.name.clone(), now.clone()) != Some(now)
                }
            };
            if changed {
                tracing::debug!(service = %service.name, action = %event.action, "tools changed");
                if peer.notify_tool_list_changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Makes one call; `Ok` is the tool's result, errors included.
    async fn call_endpoint(
        &self,
        endpoint: &Endpoint,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let method = &endpoint.method;
        let requests = requests(method, arguments)?;
        let conn = self.connection(caller(context).as_ref()).await.map_err(|e| e.message)?;
        let options = CallOptions {
            metadata: Vec::new(),
            timeout: Some(self.args.timeout),
            service: Some(endpoint.service.clone()),
        };
        let deadline = tokio::time::Instant::now() + self.args.timeout;
        let stream = futures::stream::iter(requests);
        let mut responses = match tokio::time::timeout_at(deadline, call(&conn, method, stream, &options)).await {
            Err(_) => return Err("the call timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Err(status))) => return Err(status_text(&status)),
            Ok(Ok(Ok(s))) => s,
        };
        if !method.is_server_streaming() {
            return match tokio::time::timeout_at(deadline, responses.message()).await {
                Err(_) => Err("the call timed out".into()),
                Ok(Err(status)) => Err(status_text(&status)),
                Ok(Ok(None)) => Err("the service sent no response".into()),
                Ok(Ok(Some(m))) => Ok(result(message_to_json(&m))),
            };
        }
        let progress = context.meta.get_progress_token();
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        let mut error = None;
        loop {
            let next = match tokio::time::timeout_at(deadline, responses.message()).await {
                Err(_) => {
                    error = Some("the call timed out".to_string());
                    break;
                }
                Ok(n) => n,
            };
            match next {
                Ok(Some(m)) => {
                    let value = message_to_json(&m);
                    let size = value.to_string().len();
                    if messages.len() >= self.args.max_messages || bytes + size > self.args.max_bytes {
                        truncated = true;
                        break;
                    }
                    bytes += size;
                    if let Some(token) = &progress {
                        let param = ProgressNotificationParam::new(token.clone(), (messages.len() + 1) as f64)
                            .with_message(value.to_string());
                        let _ = context.peer.notify_progress(param).await;
                    }
                    messages.push(value);
                }
                Ok(None) => break,
                Err(status) => {
                    error = Some(status_text(&status));
                    break;
                }
            }
        }
        let mut out = json!({ "messages": messages, "truncated": truncated });
        if let Some(e) = error {
            // What arrived before the error is still worth showing.
            out["error"] = Value::String(e);
            let mut r = result(out);
            r.is_error = Some(true);
            return Ok(r);
        }
        Ok(result(out))
    }
}

/// A successful result: the JSON as text and as structured content.
fn result(value: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    r.structured_content = Some(value);
    r
}

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The request messages of a call from the tool's arguments: the arguments themselves, or for client streams
/// the array `messages`.
fn requests(method: &MethodDescriptor, mut arguments: Map<String, Value>) -> Result<Vec<DynamicMessage>, String> {
    let input = method.input();
    if method.is_client_streaming() {
        let items = match arguments.remove("messages") {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return Err("invalid argument \"messages\": expected an array of request messages".into()),
        };
        if let Some(other) = arguments.keys().next() {
            return Err(format!("invalid argument {other:?}: a stream takes only \"messages\""));
        }
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(o) => to_message(&input, o, &format!("messages[{i}].")),
                _ => Err(format!("invalid argument \"messages[{i}]\": expected an object")),
            })
            .collect();
    }
    Ok(vec![to_message(&input, arguments, "")?])
}

/// Converts arguments to a message; an error names the first field that does not convert.
fn to_message(
    descriptor: &MessageDescriptor,
    object: Map<String, Value>,
    prefix: &str,
) -> Result<DynamicMessage, String> {
    match DynamicMessage::deserialize(descriptor.clone(), Value::Object(object.clone())) {
        Ok(m) => Ok(m),
        Err(e) => Err(match bad_field(descriptor, &object) {
            Some((path, reason)) => format!("invalid argument \"{prefix}{path}\": {reason}"),
            None => format!("invalid arguments: {e}"),
        }),
    }
}

/// The path of the first field of `object` that does not convert, with the reason: each key alone, then down
/// into nested messages.
fn bad_field(descriptor: &MessageDescriptor, object: &Map<String, Value>) -> Option<(String, String)> {
    for (key, value) in object {
        let single = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        let Err(e) = DynamicMessage::deserialize(descriptor.clone(), single) else { continue };
        let field = descriptor.get_field_by_name(key).or_else(|| descriptor.get_field_by_json_name(key));
        let Some(field) = field else {
            let names: Vec<String> = descriptor.fields().map(|f| f.name().to_string()).collect();
            return Some((
                key.clone(),
                format!("no such field in {}; fields: {}", descriptor.name(), names.join(", ")),
            ));
        };
        if let (Kind::Message(m), Value::Object(inner)) = (field.kind(), value)
            && !field.is_map()
            && !schema::is_well_known(&m)
            && let Some((path, reason)) = bad_field(&m, inner)
        {
            return Some((format!("{key}.{path}"), reason));
        }
        if let (Kind::Message(m), Value::Array(items)) = (field.kind(), value)
            && field.is_list()
            && !schema::is_well_known(&m)
        {
            for (i, item) in items.iter().enumerate() {
                if let Value::Object(inner) = item
                    && let Some((path, reason)) = bad_field(&m, inner)
                {
                    return Some((format!("{key}[{i}].{path}"), reason));
                }
            }
        }
        return Some((key.clone(), format!("expected {}: {}", schema::type_name(&field), clean(&e.to_string()))));
    }
    None
}

/// A serde error without its position, which means nothing to the caller.
fn clean(error: &str) -> String {
    match error.find(" at line ") {
        Some(i) => error[..i].to_string(),
        None => error.to_string(),
    }
}

/// The tool of an endpoint.
fn tool(endpoint: &Endpoint) -> Tool {
    let method = &endpoint.method;
    let name = tool_name(&endpoint.service, method.parent_service().name(), method.name());
    let mut description = schema::method_comment(method)
        .unwrap_or_else(|| format!("Calls {} of the {} service.", schema::endpoint_name(method), endpoint.service));
    let input = message_schema(&method.input());
    let output = message_schema(&method.output());
    let input_schema = if method.is_client_streaming() {
        description.push_str(" Takes a stream: pass the request messages as the array `messages`.");
        object_schema(json!({
            "type": "object",
            "properties": { "messages": { "type": "array", "items": input, "description": "the request messages, in order" } },
            "required": ["messages"]
        }))
    } else {
        input
    };
    let output_schema = if method.is_server_streaming() {
        description.push_str(" Streams: the result holds the messages (progress notifications report each one).");
        object_schema(json!({
            "type": "object",
            "properties": {
                "messages": { "type": "array", "items": output },
                "truncated": { "type": "boolean", "description": "the stream was cut at the message or byte cap" },
                "error": { "type": "string", "description": "the error that ended the stream, if any" }
            },
            "required": ["messages", "truncated"]
        }))
    } else {
        output
    };
    let mut t = Tool::new(name, description, Arc::new(input_schema));
    t.output_schema = Some(Arc::new(output_schema));
    let mut annotations =
        ToolAnnotations::with_title(format!("{} {}", endpoint.service, schema::endpoint_name(method)));
    if is_read_only(method) {
        annotations.read_only_hint = Some(true);
    }
    t.annotations = Some(annotations);
    t
}

fn object_schema(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// `<service>_<Handler>_<Method>` with every character outside `[a-zA-Z0-9_-]` as `_`; a longer name than MCP
/// allows keeps its start and ends with a hash of the whole, so it stays stable and distinct.
pub(crate) fn tool_name(service: &str, handler: &str, method: &str) -> String {
    let raw = format!("{service}_{handler}_{method}");
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if clean.len() <= MAX_TOOL_NAME && !clean.is_empty() {
        return clean;
    }
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let hash = raw.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let suffix = format!("_{:08x}", hash as u32);
    format!("{}{suffix}", &clean[..MAX_TOOL_NAME - suffix.len()])
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
            .with_server_info(rmcp::model::Implementation::new("micro", micro_core::VERSION))
            .with_instructions(
                "Each tool calls one endpoint of a service registered with micro. Arguments are the request \
                 message as JSON (proto field names); the result is the response as JSON.",
            )
    }

    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let watcher = self.clone();
        let caller = caller_of(&context.extensions);
        tokio::spawn(async move {
            if let Err(e) = watcher.watch_registry(caller, context.peer).await {
                eprintln!("mcp: cannot follow the registry, so tools/list_changed is not sent: {}", e.message);
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools =
            self.refresh(caller(&context).as_ref()).await.map_err(|e| McpError::internal_error(e.message, None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        let name = request.name.to_string();
        let caller = caller(&context);
        let account = caller.as_ref().map_or(self.account.as_str(), |c| c.account.as_str()).to_string();
        if let Some(rate) = self.args.rate
            && let Err(wait) = self.limiter.take(rate, &account, Instant::now())
        {
            audit(&account, &name, "rate limited", started.elapsed());
            return Ok(error_result(format!(
                "rate limit: at most {} calls per {:?} for {account}; retry in {}ms",
                rate.calls,
                rate.per,
                wait.as_millis().max(1)
            ))
            .into());
        }
        let endpoint = match self.find(&name, caller.as_ref()).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(McpError::invalid_params(format!("unknown tool {name:?}"), None)),
            Err(e) => return Err(McpError::internal_error(e.message, None)),
        };
        let outcome = self.call_endpoint(&endpoint, request.arguments.unwrap_or_default(), &context).await;
        let (result, outcome_text) = match outcome {
            Ok(r) if r.is_error == Some(true) => (r, "error".to_string()),
            Ok(r) => (r, "ok".to_string()),
            Err(e) => {
                let text = format!("error: {e}");
                (error_result(e), text)
            }
        };
        audit(&account, &name, &outcome_text, started.elapsed());
        Ok(result.into())
    }
}

/// The audit line of one call: stderr (the server's log), never stdout, which carries the protocol.
fn audit(account: &str, tool: &str, outcome: &str, took: Duration) {
    let account = if account.is_empty() { "-" } else { account };
    eprintln!("mcp call account={account} tool={tool} outcome={outcome:?} took={}ms", took.as_millis());
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::schema::Schema;

    #[test]
    fn tool_names_are_legal_and_stable() {
        assert_eq!(tool_name("helloworld", "Helloworld", "Call"), "helloworld_Helloworld_Call");
        assert_eq!(tool_name("go.micro.srv", "Foo", "Bar"), "go_micro_srv_Foo_Bar");
        let long = "x".repeat(80);
        let a = tool_name(&long, "H", "M");
        assert_eq!(a.len(), MAX_TOOL_NAME);
        assert_eq!(a, tool_name(&long, "H", "M"));
        assert_ne!(a, tool_name(&long, "H", "N"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn rates_and_buckets() {
        assert_eq!(parse_rate("10/s").unwrap(), Rate { calls: 10.0, per: Duration::from_secs(1) });
        assert_eq!(parse_rate("100/m").unwrap().per, Duration::from_secs(60));
        assert!(parse_rate("0/s").is_err() && parse_rate("ten/s").is_err() && parse_rate("10").is_err());
        let limiter = Limiter::default();
        let rate = parse_rate("2/s").unwrap();
        let t0 = Instant::now();
        assert!(limiter.take(rate, "a", t0).is_ok());
        assert!(limiter.take(rate, "a", t0).is_ok());
        let wait = limiter.take(rate, "a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.take(rate, "b", t0).is_ok(), "each caller has its own bucket");
        assert!(limiter.take(rate, "a", t0 + Duration::from_millis(500)).is_ok(), "refilled");
    }

    #[test]
    fn read_only_endpoints() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let get = schema::find_method(&schema.pool, "/registry.Registry/GetService").unwrap();
        let register = schema::find_method(&schema.pool, "/registry.Registry/Register").unwrap();
        assert!(is_read_only(&get));
        assert!(!is_read_only(&register));
        // The idempotency_level option marks a method of any name.
        let dir = tempfile::tempdir().unwrap();
        let proto = r#"syntax = "proto3"; package t; message M {}
            service S {
              rpc Fetch(M) returns (M) { option idempotency_level = NO_SIDE_EFFECTS; }
              rpc Put(M) returns (M) { option idempotency_level = IDEMPOTENT; }
            }"#;
        std::fs::write(dir.path().join("t.proto"), proto).unwrap();
        let files = protox::compile(["t.proto"], [dir.path()]).unwrap();
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(files).unwrap();
        assert!(is_read_only(&schema::find_method(&pool, "/t.S/Fetch").unwrap()));
        assert!(!is_read_only(&schema::find_method(&pool, "/t.S/Put").unwrap()));
    }

    #[test]
    fn a_bad_argument_names_its_field() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let method = schema::find_method(&schema.pool, "/registry.Registry/GetService").unwrap();
        let args = json!({ "service": "x", "options": { "ttl": "soon" } });
        let Value::Object(args) = args else { unreachable!() };
        let err = requests(&method, args).unwrap_err();
        assert!(err.starts_with("invalid argument \"options.ttl\""), "{err}");
        let Value::Object(args) = json!({ "servicee": "x" }) else { unreachable!() };
        let err = requests(&method, args).unwrap_err();
        assert!(err.contains("\"servicee\"") && err.contains("no such field"), "{err}");
        let Value::Object(args) = json!({ "service": "x" }) else { unreachable!() };
        assert_eq!(requests(&method, args).unwrap().len(), 1);
    }
}
