//! Dynamic service commands: `micro <service> [endpoint] [--flags]`, built at run time from the service's schema.
//!
//! `micro helloworld` means `Helloworld.Call`; `micro helloworld stream` means `Helloworld.Stream`; for a gRPC
//! service whose name differs from the registered name, `micro svc foo bar` means `Foo.Bar`. Flags come from the
//! request message: scalars, enums by name, repeated fields (repeat the flag or give a comma list), maps
//! (`--labels k=v`), nested messages (`--options-surname`, or `--options_surname`), bytes (`@file` reads a file),
//! Timestamp (RFC 3339) and Duration (`5s`). Help shows each flag's type and its proto comment.
//!
//! An endpoint command also takes the request as an optional REQUEST argument: JSON, `@FILE`, or `@-` for stdin
//! ([`request`]); flags given as well override its fields. Without REQUEST or flags, a piped stdin is the request.
//! Besides the request's fields it has the call options `--output/-o`, `--timeout`, `--header/-H` and `--print`
//! ([`print`]). A request field keeps its flag name: a call option whose name a field takes becomes `--call-NAME`
//! (`--call-timeout`), and the endpoint's help says so.

pub mod print;
pub mod request;

use super::output::{Printer, message_to_json};
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{Output, Settings};
use base64::Engine;
use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command};
use futures::StreamExt;
use micro_client::dynamic::{CallOptions, call};
use micro_client::json::{self, JsonError, Problem};
use micro_client::{Connection, schema_cache::ResolveError};
use micro_core::proto::registry::Service;
use micro_core::schema::{self, Schema};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::ffi::OsString;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// How deep flags descend into nested messages; deeper fields take JSON.
const MAX_FLAG_DEPTH: usize = 6;
/// The default deadline of unary calls.
const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(10);

/// The requests of a call.
pub enum Requests {
    /// These messages, in order: one for unary and server-streaming calls, any number for client streams.
    Given(Vec<DynamicMessage>),
    /// A client or bidi stream's requests: stdin's lines as they arrive, one JSON document each, with the fields of
    /// `overlay` (given by flags) set on each.
    StdinLines {
        /// Fields set on every request (`None`: none).
        overlay: Option<Map<String, Value>>,
    },
}

/// One call to make.
pub struct Invocation {
    /// The registered service name, sent as `micro-service`; empty for a direct call (`--address`), which has none.
    pub service: String,
    /// The method.
    pub method: MethodDescriptor,
    /// The requests.
    pub requests: Requests,
    /// Metadata to send.
    pub metadata: Vec<(String, String)>,
    /// The deadline.
    pub timeout: Option<Duration>,
}

/// The record and schema of a service, mapping failures to the CLI's messages and exit codes.
pub async fn resolve(
    settings: &Settings,
    conn: &Connection,
    name: &str,
    offline: bool,
) -> Result<(Service, Option<Schema>), CliError> {
    let cache = settings.schema_cache();
    cache.resolve(conn, name, offline).await.map_err(|e| match e {
        ResolveError::NotFound(n) => CliError::new(ExitStatus::NotFound, format!("Service \"{n}\" not found")),
        ResolveError::Rpc(status) => from_status(
            &status,
            &RpcContext { address: settings.proxy.clone(), endpoint: "Registry.GetService".into() },
        ),
        ResolveError::NoSchema(n) => CliError::input(format!("service \"{n}\" registered no schema")),
    })
}

/// Finds an endpoint by Micro name (`Helloworld.Call`, any case) or gRPC path (`/helloworld.Helloworld/Call`).
pub fn find_endpoint(service: &Service, schema: Option<&Schema>, endpoint: &str) -> Result<MethodDescriptor, CliError> {
    let Some(schema) = schema else {
        return Err(CliError::input(format!(
            "Service \"{}\" registered no schema, so micro cannot encode a request for it",
            service.name
        )));
    };
    let wanted = endpoint.trim_start_matches('/');
    let found = service
        .endpoints
        .iter()
        .find(|e| e.name == endpoint)
        .or_else(|| service.endpoints.iter().find(|e| e.name.eq_ignore_ascii_case(endpoint)))
        .or_else(|| {
            service.endpoints.iter().find(|e| {
                let path = e.method.trim_start_matches('/');
                path == wanted || path.replacen('/', ".", 1) == wanted
            })
        });
    let method = found.and_then(|e| schema::find_method(&schema.pool, &e.method));
    method.ok_or_else(|| {
        let names: Vec<&str> = service.endpoints.iter().map(|e| e.name.as_str()).collect();
        let hint = super::suggest::did_you_mean(endpoint, names.iter().copied());
        CliError::new(
            ExitStatus::UnknownMethod,
            format!(
                "Endpoint {endpoint} not found for service {}. Endpoints: {}{hint}",
                service.name,
                names.join(", ")
            ),
        )
    })
}

/// `PingPong` → `ping-pong`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 && !out.ends_with('-') {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        } else if c == '_' {
            out.push('-');
        } else {
            out.push(c);
        }
    }
    out
}

/// `PingPong` → `pingPong` (Micro's command word).
fn lower_camel(name: &str) -> String {
    let mut c = name.chars();
    c.next().map(|f| f.to_lowercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn normalize(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase()
}

/// One endpoint's place in the command tree.
struct Route {
    words: Vec<String>,
    method: MethodDescriptor,
}

/// The command words of each endpoint: `[call]` when the gRPC service is named like the registered service,
/// else `[foo, bar]`.
fn routes(service: &Service, schema: &Schema) -> Vec<Route> {
    let mut out = Vec::new();
    for ep in &service.endpoints {
        let Some(method) = schema::find_method(&schema.pool, &ep.method) else { continue };
        let handler = method.parent_service().name().to_string();
        let words = if normalize(&handler) == normalize(&service.name) {
            vec![kebab(method.name())]
        } else {
            vec![kebab(&handler), kebab(method.name())]
        };
        out.push(Route { words, method });
    }
    out
}

fn word_command(word: &str, original: &str) -> Command {
    let mut cmd = Command::new(word.to_string());
    for alias in [lower_camel(original), original.to_string(), original.to_ascii_lowercase()] {
        if alias != word {
            cmd = cmd.alias(alias);
        }
    }
    cmd
}

/// The flags of the root command that reach every subcommand (global flags); under the root, fields with these
/// names get no flag.
const ROOT_GLOBALS: &[&str] =
    &["env", "namespace", "proxy", "output", "jq", "ca-cert", "client-cert", "client-key", "insecure-skip-verify"];

/// The call options of an endpoint command, besides the request's fields. A request field keeps its flag name; an
/// option whose name a field takes becomes `--call-NAME` (and is left out if that is taken too).
const CALL_OPTIONS: &[&str] = &["output", "jq", "timeout", "header", "print"];

/// The id of the REQUEST argument of an endpoint command.
const REQUEST_ID: &str = "micro::request";

/// The clap command of a service: one subcommand per endpoint, with typed flags. `under_root` builds it as a
/// subcommand of the root command (for completion), whose global flags it must not repeat.
pub fn service_command(service: &Service, schema: &Schema, under_root: bool) -> Command {
    let mut about = format!("Call the {} service", service.name);
    if let Some(c) = schema
        .pool
        .services()
        .find(|s| service.endpoints.iter().any(|e| e.method.starts_with(&format!("/{}/", s.full_name()))))
        .and_then(|s| schema::service_comment(&s))
    {
        about = c;
    }
    let mut cmd = Command::new(service.name.clone())
        .about(about)
        .version(service.version.clone())
        .subcommand_required(false)
        .disable_help_subcommand(true);
    for route in routes(service, schema) {
        let leaf = endpoint_command(&route.words[route.words.len() - 1], &route.method, under_root);
        if route.words.len() == 1 {
            cmd = cmd.subcommand(leaf);
        } else {
            let group = &route.words[0];
            let existing = cmd.find_subcommand_mut(group);
            match existing {
                Some(g) => {
                    let g2 = std::mem::replace(g, Command::new(group.clone()));
                    *g = g2.subcommand(leaf);
                }
                None => {
                    let handler = route.method.parent_service().name().to_string();
                    let g = word_command(group, &handler)
                        .about(format!("Endpoints of {handler}"))
                        .subcommand_required(true)
                        .subcommand(leaf);
                    cmd = cmd.subcommand(g);
                }
            }
        }
    }
    cmd
}

/// The command of one endpoint: the call options, an optional REQUEST, and a flag per request field (nested
/// messages flattened).
pub fn endpoint_command(word: &str, method: &MethodDescriptor, under_root: bool) -> Command {
    let mut about = schema::method_comment(method).unwrap_or_else(|| schema::endpoint_name(method));
    if method.is_client_streaming() {
        about.push_str(" (reads JSON requests from stdin, one per line, when no flag is given)");
    } else if method.is_server_streaming() {
        about.push_str(" (streams responses)");
    }
    let mut cmd = word_command(word, method.name()).about(about);
    let mut used: HashSet<String> = ["help".to_string()].into();
    if under_root {
        used.extend(ROOT_GLOBALS.iter().map(|g| g.to_string()));
    }
    // The fields first: they keep their names.
    let mut fields = Vec::new();
    add_flags(&mut fields, &method.input(), &mut Vec::new(), &mut used, 0);
    let mut moved = Vec::new();
    for name in CALL_OPTIONS {
        // Under the root (completion), the root's own --output and --jq reach every subcommand.
        if under_root && (*name == "output" || *name == "jq") {
            continue;
        }
        let Some(long) = [name.to_string(), format!("call-{name}")].into_iter().find(|l| !used.contains(l)) else {
            continue;
        };
        if long != *name {
            moved.push(format!("--{long}"));
        }
        used.insert(long.clone());
        cmd = cmd.arg(call_option(name, long));
    }
    cmd = cmd.arg(
        Arg::new(REQUEST_ID)
            .value_name("REQUEST")
            .help("The request: JSON, @FILE, or @- for stdin; flags given as well override its fields"),
    );
    let mut notes = String::from(
        "The request is REQUEST, the flags, or both (the flags override REQUEST's fields). Without either, a piped \
         stdin is the request.\nA request field keeps its flag name: a call option with the same name becomes \
         --call-NAME",
    );
    if moved.is_empty() {
        notes.push('.');
    } else {
        notes.push_str(&format!(" (here: {}).", moved.join(", ")));
    }
    cmd.after_help(notes).next_help_heading("Request fields").args(fields)
}

/// The call option `name` of an endpoint command, as `--long` (its name, or `call-NAME`).
fn call_option(name: &str, long: String) -> Arg {
    let arg = Arg::new(format!("micro::{name}")).long(long);
    match name {
        "output" => arg
            .short('o')
            .value_name("FORMAT")
            .value_parser(clap::builder::EnumValueParser::<Output>::new())
            .help("Output format [json, yaml, raw]")
            .hide_possible_values(true),
        "timeout" => arg
            .value_name("DURATION")
            .value_parser(super::call::parse_timeout)
            .help("Deadline of the call, e.g. 500ms or 5s (unary calls default to 10s; streams to none)"),
        "jq" => arg.value_name("EXPR").help("Select from the JSON output with a jq expression (strings print raw)"),
        "header" => arg
            .short('H')
            .value_name("KEY:VALUE")
            .action(ArgAction::Append)
            .help("Metadata to send with the call (repeatable)"),
        _ => arg
            .value_name("TOOL")
            .value_parser(clap::builder::EnumValueParser::<print::Print>::new())
            .hide_possible_values(true)
            .help(
                "Print the command that makes this call instead: grpcurl (through the proxy) or curl (the API gateway)",
            ),
    }
}

fn add_flags(
    args: &mut Vec<Arg>,
    message: &MessageDescriptor,
    path: &mut Vec<String>,
    used: &mut HashSet<String>,
    depth: usize,
) {
    for field in message.fields() {
        path.push(field.name().to_string());
        match field.kind() {
            Kind::Message(m)
                if !field.is_list() && !field.is_map() && !schema::is_well_known(&m) && depth + 1 < MAX_FLAG_DEPTH =>
            {
                add_flags(args, &m, path, used, depth + 1);
            }
            _ => args.extend(field_arg(&field, path, used)),
        }
        path.pop();
    }
}

fn field_arg(field: &FieldDescriptor, path: &[String], used: &mut HashSet<String>) -> Option<Arg> {
    let long = path.join("-").replace('_', "-");
    if !used.insert(long.clone()) {
        return None;
    }
    let id = path.join(".");
    let type_name = schema::type_name(field);
    let mut help = schema::field_comment(field).unwrap_or_default();
    if let Kind::Enum(e) = field.kind() {
        let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
        help = format!("{help} [values: {}]", names.join(", ")).trim().to_string();
    }
    if field.kind() == Kind::Bytes {
        help = format!("{help} (text, or @FILE to read a file)").trim().to_string();
    }
    let mut arg =
        Arg::new(id).long(long.clone()).value_name(type_name).help(help).value_parser(clap::value_parser!(String));
    for alias in [path.join("_"), path.join("-")] {
        if alias != long && used.insert(alias.clone()) {
            arg = arg.alias(alias);
        }
    }
    let repeated = field.is_list() || field.is_map();
    if repeated {
        arg = arg.action(ArgAction::Append);
        let scalar_elements =
            !matches!(field.kind(), Kind::Message(ref m) if !field.is_map() && !schema::is_well_known(m));
        if scalar_elements && !field.is_map() || field.is_map() {
            arg = arg.value_delimiter(',');
        }
    } else if field.kind() == Kind::Bool {
        arg = arg.num_args(0..=1).default_missing_value("true");
    }
    Some(arg)
}

/// A flag value that does not fit its field.
fn bad_value(flag: &str, raw: &str, expected: &str) -> CliError {
    CliError::input(format!("invalid value {raw:?} for --{flag}: expected {expected}"))
}

fn parse_int<T: std::str::FromStr + TryFrom<i128>>(raw: &str) -> Option<T> {
    let s = raw.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        // `from_str_radix` takes a sign of its own: `0x-5` is no number.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        i128::from_str_radix(hex, 16).ok()?
    } else {
        return s.parse().ok();
    };
    T::try_from(if neg { value.checked_neg()? } else { value }).ok()
}

fn parse_duration(raw: &str) -> Option<String> {
    if let Some(num) = raw.strip_suffix('s')
        && let Ok(secs) = num.parse::<f64>()
        && secs.is_finite()
    {
        return Some(raw.to_string());
    }
    let d = humantime::parse_duration(raw).ok()?;
    if d.subsec_nanos() == 0 {
        return Some(format!("{}s", d.as_secs()));
    }
    let fraction = format!("{:09}", d.subsec_nanos());
    Some(format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0')))
}

/// Converts one flag value to the JSON the proto3 mapping expects for `kind`.
fn scalar_json(kind: &Kind, flag: &str, raw: &str) -> Result<Value, CliError> {
    let bad = |expected: &str| bad_value(flag, raw, expected);
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::from(parse_int::<i32>(raw).ok_or_else(|| bad("int32"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::String(parse_int::<i64>(raw).ok_or_else(|| bad("int64"))?.to_string())
        }
        Kind::Uint32 | Kind::Fixed32 => Value::from(parse_int::<u32>(raw).ok_or_else(|| bad("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::String(parse_int::<u64>(raw).ok_or_else(|| bad("uint64"))?.to_string()),
        Kind::Float | Kind::Double => {
            let what = if *kind == Kind::Float { "float" } else { "double" };
            let v: f64 = raw.trim().parse().map_err(|_| bad(what))?;
            if v.is_nan() {
                Value::String("NaN".into())
            } else if v.is_infinite() {
                Value::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
            } else {
                serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| bad(what))?
            }
        }
        Kind::Bool => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
            "" | "true" | "t" | "1" | "yes" | "y" | "on" => true,
            "false" | "f" | "0" | "no" | "n" | "off" => false,
            _ => return Err(bad("bool (true or false)")),
        }),
        Kind::String => Value::String(raw.to_string()),
        Kind::Bytes => {
            let bytes = match raw.strip_prefix('@') {
                Some(path) => {
                    std::fs::read(path).map_err(|e| CliError::input(format!("cannot read {path} for --{flag}: {e}")))?
                }
                None => raw.as_bytes().to_vec(),
            };
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Kind::Enum(e) => {
            let found = e
                .get_value_by_name(raw)
                .or_else(|| e.values().find(|v| v.name().eq_ignore_ascii_case(raw)))
                .or_else(|| raw.parse::<i32>().ok().and_then(|n| e.get_value(n)));
            match found {
                Some(v) => Value::String(v.name().to_string()),
                None => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                    return Err(bad(&format!("one of {}", names.join(", "))));
                }
            }
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => {
                // The proto3 JSON mapping itself decides: RFC 3339 with `Z` or an offset.
                let value = Value::String(raw.trim().to_string());
                DynamicMessage::deserialize(m.clone(), value.clone()).map_err(|_| {
                    bad("an RFC 3339 timestamp such as 2024-01-02T15:04:05Z or 2024-01-02T17:04:05+02:00")
                })?;
                value
            }
            "google.protobuf.Duration" => {
                Value::String(parse_duration(raw.trim()).ok_or_else(|| bad("a duration such as 5s, 1m30s or 250ms"))?)
            }
            "google.protobuf.FieldMask" => Value::String(raw.to_string()),
            name if name.starts_with("google.protobuf.")
                && name.ends_with("Value")
                && name != "google.protobuf.Value" =>
            {
                let inner = m.get_field_by_name("value").map(|f| f.kind()).unwrap_or(Kind::String);
                scalar_json(&inner, flag, raw)?
            }
            "google.protobuf.Value" => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
            _ => serde_json::from_str(raw).map_err(|_| bad(&format!("a JSON {} message", m.name())))?,
        },
    })
}

fn field_json(field: &FieldDescriptor, flag: &str, values: &[String]) -> Result<Value, CliError> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return Ok(Value::Null) };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = Map::new();
        for raw in values {
            let (k, v) = raw.split_once('=').ok_or_else(|| bad_value(flag, raw, "KEY=VALUE"))?;
            scalar_json(&key_kind, flag, k)?; // validates the key
            map.insert(k.to_string(), scalar_json(&value_kind, flag, v)?);
        }
        return Ok(Value::Object(map));
    }
    if field.is_list() {
        let kind = field.kind();
        return values.iter().map(|v| scalar_json(&kind, flag, v)).collect::<Result<Vec<_>, _>>().map(Value::Array);
    }
    scalar_json(&field.kind(), flag, values.last().map(String::as_str).unwrap_or(""))
}

/// What the field flags of an endpoint command make: the request's JSON object, and the ids of the flags given
/// (`options.surname`).
type FlagRequest = (Map<String, Value>, Vec<String>);

/// The request the field flags of an endpoint command make; `None` when no field flag was given.
fn flags_json(method: &MethodDescriptor, matches: &clap::ArgMatches) -> Result<Option<FlagRequest>, CliError> {
    let input = method.input();
    let mut root = Map::new();
    let mut given = Vec::new();
    for id in matches.ids() {
        let id = id.as_str();
        if id.starts_with("micro::") || !matches.contains_id(id) {
            continue;
        }
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let values: Vec<String> = matches.get_many::<String>(id).map(|v| v.cloned().collect()).unwrap_or_default();
        let path: Vec<&str> = id.split('.').collect();
        let flag = path.join("-").replace('_', "-");
        // Walk the descriptors along the path.
        let mut message = input.clone();
        let mut object = &mut root;
        for (i, name) in path.iter().enumerate() {
            let Some(field) = message.get_field_by_name(name) else { break };
            if i + 1 == path.len() {
                object.insert(name.to_string(), field_json(&field, &flag, &values)?);
                given.push(id.to_string());
            } else if let Kind::Message(m) = field.kind() {
                let entry = object.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
                object = match entry {
                    Value::Object(o) => o,
                    _ => break,
                };
                message = m;
            }
        }
    }
    Ok((!given.is_empty()).then_some((root, given)))
}

/// A request that does not fit its type, naming the flag that set the wrong value when a flag did (`given` holds the
/// ids of the flags given), else where it came from (`origin`: ` from FILE`, ` from stdin` or nothing).
fn flag_error(e: &JsonError, given: &[String], origin: &str) -> CliError {
    // The flag that set the value at `path`, or one inside it (a flag of a nested message's field).
    let flag_at = |path: &str| -> Option<String> {
        let fields = path.split('[').next().unwrap_or(path);
        let outer = given.iter().filter(|id| fields == id.as_str() || fields.starts_with(&format!("{id}.")));
        let inner = || given.iter().filter(|id| id.starts_with(&format!("{fields}.")));
        outer
            .max_by_key(|id| id.len())
            .or_else(|| inner().min_by_key(|id| id.len()))
            .map(|id| format!("--{}", id.replace(['.', '_'], "-")))
    };
    if let Problem::Oneof { oneof, first, .. } = &e.problem {
        let first_path = match e.path.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.{first}"),
            None => first.clone(),
        };
        if let (Some(a), Some(b)) = (flag_at(&first_path), flag_at(&e.path)) {
            return CliError::input(format!("{a} and {b} set two fields of oneof {oneof:?}; give only one"));
        }
    }
    match flag_at(&e.path) {
        Some(flag) => CliError::input(format!("invalid value for {flag}: {e}")),
        None => request::json_error(e, origin),
    }
}

/// Builds the request message from the parsed flags of an endpoint command. `None` when no field flag was given.
pub fn request_from_matches(
    method: &MethodDescriptor,
    matches: &clap::ArgMatches,
) -> Result<Option<DynamicMessage>, CliError> {
    let Some((object, given)) = flags_json(method, matches)? else { return Ok(None) };
    json::to_message(Value::Object(object), &method.input()).map(Some).map_err(|e| flag_error(&e, &given, ""))
}

/// Overrides the fields of `base` (a request read from REQUEST) with those of `flags` (what the field flags made),
/// field by field: a nested message merges, anything else replaces, and a field of a oneof replaces its siblings.
fn overlay(base: &mut Map<String, Value>, flags: &Map<String, Value>, message: &MessageDescriptor) {
    for (key, value) in flags {
        let Some(field) = message.get_field_by_name(key) else {
            base.insert(key.clone(), value.clone());
            continue;
        };
        let oneof = field.containing_oneof().map(|o| o.full_name().to_string());
        // Take out every key of `base` that names this field (by its JSON or proto name) or a sibling in its oneof.
        let mut existing = None;
        base.retain(|k, v| {
            let Some(other) = message.get_field_by_json_name(k).or_else(|| message.get_field_by_name(k)) else {
                return true;
            };
            if other.number() == field.number() {
                existing = Some(std::mem::take(v));
                return false;
            }
            let sibling = oneof.is_some() && other.containing_oneof().map(|o| o.full_name().to_string()) == oneof;
            !sibling
        });
        let merged = match (field.kind(), existing, value) {
            (Kind::Message(m), Some(Value::Object(mut inner)), Value::Object(over))
                if !field.is_list() && !field.is_map() && !schema::is_well_known(&m) =>
            {
                overlay(&mut inner, over, &m);
                Value::Object(inner)
            }
            _ => value.clone(),
        };
        base.insert(key.clone(), merged);
    }
}

/// Runs `micro <service> …`.
pub async fn exec(settings: &Settings, args: Vec<OsString>) -> anyhow::Result<()> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.into_string().map_err(|a| CliError::input(format!("argument {a:?} is not valid UTF-8"))))
        .collect::<Result<_, _>>()?;
    let name = args[0].clone();
    let wants_help = args.iter().any(|a| a == "--help" || a == "-h");
    let conn = settings.connect_authed().await?;
    let (service, schema) = match resolve(settings, &conn, &name, wants_help).await {
        Ok(found) => found,
        Err(e) if e.status == ExitStatus::NotFound && e.message.starts_with("Service \"") => {
            return Err(super::suggest::unknown_service(settings, &conn, &name).await.into());
        }
        Err(e) => return Err(e.into()),
    };
    let Some(schema) = schema else {
        return Err(CliError::input(format!(
            "Service \"{name}\" registered no schema, so it has no typed commands; use `micro call {name} ENDPOINT '{{…}}'`"
        ))
        .into());
    };
    let cmd = service_command(&service, &schema, false).bin_name(format!("micro {name}"));
    let mut argv = args.clone();
    // A bare service name (or only flags, or only a REQUEST file) means its Call endpoint.
    let first_word = argv.get(1).map(String::as_str);
    let bare = match first_word {
        None => true,
        Some(w) => w.starts_with(['-', '@', '{']) && w != "--help" && w != "-h" && w != "--version" && w != "-V",
    };
    if bare && cmd.find_subcommand("call").is_some() {
        argv.insert(1, "call".into());
    }
    let matches = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => return Err(clap_error(e, &cmd, &argv).into()),
    };
    // Walk to the leaf endpoint.
    let mut words = Vec::new();
    let mut leaf = &matches;
    while let Some((word, sub)) = leaf.subcommand() {
        words.push(word.to_string());
        leaf = sub;
    }
    let Some(route) = routes(&service, &schema).into_iter().find(|r| r.words == words) else {
        let help = cmd.clone().render_help().to_string();
        return Err(CliError::failure(format!("No endpoint given for {name}.\n\n{help}")).into());
    };
    let method = route.method;
    let input = method.input();
    let flags = flags_json(&method, leaf)?;
    let source = leaf.get_one::<String>(REQUEST_ID).map(|r| request::Source::parse(r));
    let requests = match (source, flags) {
        // Flags alone: they are the request (of a client stream too).
        (None, Some((object, given))) => Requests::Given(vec![
            json::to_message(Value::Object(object), &input).map_err(|e| flag_error(&e, &given, ""))?,
        ]),
        (source, flags) => match request::read(&method, source, settings.stdin_tty, settings.stderr_tty).await? {
            request::Input::StdinLines => Requests::StdinLines { overlay: flags.map(|(object, _)| object) },
            request::Input::Documents { values, origin } => {
                let many = values.len() > 1;
                let given = flags.as_ref().map(|(_, g)| g.as_slice()).unwrap_or_default();
                let mut messages = Vec::with_capacity(values.len());
                for (i, mut value) in values.into_iter().enumerate() {
                    if let (Value::Object(base), Some((object, _))) = (&mut value, &flags) {
                        overlay(base, object, &input);
                    }
                    let at = if many { format!("{origin} (document {})", i + 1) } else { origin.clone() };
                    messages.push(json::to_message(value, &input).map_err(|e| flag_error(&e, given, &at))?);
                }
                Requests::Given(messages)
            }
        },
    };
    let mut output = leaf.try_get_one::<Output>("micro::output").ok().flatten().copied().or(settings.output);
    if let Some(expression) = leaf.try_get_one::<String>("micro::jq").ok().flatten() {
        super::output::set_jq(expression)?;
        output = Some(if output == Some(Output::Raw) { Output::Raw } else { Output::Json });
    }
    let headers: Vec<String> =
        leaf.try_get_many::<String>("micro::header").ok().flatten().map(|v| v.cloned().collect()).unwrap_or_default();
    let invocation = Invocation {
        service: service.name.clone(),
        method,
        requests,
        metadata: super::call::parse_headers(&headers)?,
        timeout: leaf.try_get_one::<Duration>("micro::timeout").ok().flatten().copied(),
    };
    if let Some(tool) = leaf.try_get_one::<print::Print>("micro::print").ok().flatten() {
        return print::print(settings, &invocation, *tool);
    }
    let errors = proxy_error(settings, &invocation.method);
    invoke(settings, &conn, invocation, output, &errors).await
}

fn clap_error(e: clap::Error, cmd: &Command, argv: &[String]) -> CliError {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            // Help is data the user asked for: stdout, exit 0.
            println!("{}", text.trim_end());
            CliError::new(ExitStatus::Success, String::new())
        }
        ErrorKind::UnknownArgument => {
            let flag = e.get(clap::error::ContextKind::InvalidArg).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            // Find the endpoint command the user was in.
            let mut current = cmd;
            let mut path = vec![cmd.get_name().to_string()];
            for word in argv.iter().skip(1).take_while(|w| !w.starts_with('-')) {
                match current.find_subcommand(word) {
                    Some(sub) => {
                        path.push(sub.get_name().to_string());
                        current = sub;
                    }
                    None => break,
                }
            }
            let flags: Vec<String> = current
                .get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                .filter(|f| f != "--help")
                .collect();
            let valid = if flags.is_empty() { "none".to_string() } else { flags.join(", ") };
            let name = flag.split('=').next().unwrap_or(&flag);
            let hint = super::suggest::did_you_mean(name, flags.iter().map(String::as_str));
            CliError::input(format!("Unknown flag {flag} for `micro {}`. Valid flags: {valid}{hint}", path.join(" ")))
        }
        ErrorKind::InvalidSubcommand => {
            let word = e.get(clap::error::ContextKind::InvalidSubcommand).map(|v| v.to_string()).unwrap_or_default();
            let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
            let hint = super::suggest::did_you_mean(&word, names.iter().copied());
            CliError::new(
                ExitStatus::UnknownMethod,
                format!(
                    "Endpoint {word} not found for service {}. Endpoints: {}{hint}",
                    cmd.get_name(),
                    names.join(", ")
                ),
            )
        }
        _ => {
            let text = e.render().to_string();
            let text = text.trim_end().trim_start_matches("error: ");
            CliError::input(text.to_string())
        }
    }
}

/// A failed RPC as the user sees it, for the target of the call (the proxy, or a server called directly).
pub type RpcError<'a> = &'a dyn Fn(&tonic::Status) -> CliError;

/// The errors of a call through the proxy.
pub fn proxy_error(settings: &Settings, method: &MethodDescriptor) -> impl Fn(&tonic::Status) -> CliError + use<> {
    let ctx = RpcContext { address: settings.proxy.clone(), endpoint: schema::endpoint_name(method) };
    move |status| from_status(status, &ctx)
}

/// Makes the call over `conn` and prints every response as it arrives; `rpc_error` says what a failed RPC means.
pub async fn invoke(
    settings: &Settings,
    conn: &Connection,
    invocation: Invocation,
    output: Option<Output>,
    rpc_error: RpcError<'_>,
) -> anyhow::Result<()> {
    let method = invocation.method.clone();
    let printer = Printer::new(output, Output::Json);
    let streaming_in = method.is_client_streaming();
    let timeout =
        invocation.timeout.or((!streaming_in && !method.is_server_streaming()).then_some(DEFAULT_UNARY_TIMEOUT));
    let service = (!invocation.service.is_empty()).then(|| invocation.service.clone());
    let options = CallOptions { metadata: invocation.metadata, timeout, service };

    let (bad_input_tx, mut bad_input_rx) = tokio::sync::mpsc::channel::<CliError>(1);
    let requests: futures::stream::BoxStream<'static, DynamicMessage> = match invocation.requests {
        Requests::Given(messages) => futures::stream::iter(messages).boxed(),
        Requests::StdinLines { overlay } => {
            if settings.stdin_tty {
                Printer::new(None, Output::Json).message(format!(
                    "Reading {} messages from stdin as JSON, one per line; end with Ctrl-D.",
                    method.input().name()
                ));
            }
            stdin_messages(method.input(), overlay, bad_input_tx).boxed()
        }
    };
    let mut responses = match call(conn, &method, requests, &options).await {
        Ok(Ok(s)) => s,
        Ok(Err(status)) => return Err(rpc_error(&status).into()),
        Err(e) => return Err(CliError::input(e.to_string()).into()),
    };
    // The deadline bounds the whole call, streams included, not only the wait for response headers.
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, responses.message()).await {
                Ok(next) => next,
                Err(_) => return Err(CliError::failure("Request timed out").into()),
            },
            None => responses.message().await,
        };
        match next {
            Ok(Some(message)) => printer.json(&message_to_json(&message))?,
            Ok(None) => break,
            Err(status) => return Err(rpc_error(&status).into()),
        }
    }
    if let Ok(e) = bad_input_rx.try_recv() {
        return Err(e.into());
    }
    Ok(())
}

/// Reads JSON messages from stdin, one per line, with the fields of `overlay` set on each; a bad line ends the stream
/// and is reported.
fn stdin_messages(
    descriptor: MessageDescriptor,
    overlay_fields: Option<Map<String, Value>>,
    bad_input: tokio::sync::mpsc::Sender<CliError>,
) -> impl futures::Stream<Item = DynamicMessage> + Send + 'static {
    let lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    futures::stream::unfold((lines, 0usize, false), move |(mut lines, n, done)| {
        let descriptor = descriptor.clone();
        let bad_input = bad_input.clone();
        let overlay_fields = overlay_fields.clone();
        async move {
            if done {
                return None;
            }
            let mut n = n;
            loop {
                n += 1;
                let line = match lines.next_line().await {
                    Ok(Some(l)) => l,
                    Ok(None) => return None,
                    Err(e) => {
                        let _ = bad_input.try_send(CliError::input(format!("reading stdin: {e}")));
                        return None;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = serde_json::from_str::<Value>(&line)
                    .map_err(|e| JsonError { path: String::new(), problem: Problem::Syntax(e.to_string()) })
                    .and_then(|mut value| {
                        if let (Value::Object(base), Some(fields)) = (&mut value, &overlay_fields) {
                            overlay(base, fields, &descriptor);
                        }
                        json::to_message(value, &descriptor)
                    });
                match parsed {
                    Ok(m) => return Some((m, (lines, n, false))),
                    Err(e) => {
                        let _ =
                            bad_input.try_send(CliError::input(format!("stdin line {n} is not a valid request: {e}")));
                        return None;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_integers_take_one_sign_and_never_overflow() {
        // Found by the property suite (docs/fuzzing.md, finding 1): a sign after `0x`, and a negation overflow.
        for raw in ["0x-5", "-0x-5", "0x+5", "-0x-80000000000000000000000000000000", "0x", "-0x"] {
            assert_eq!(parse_int::<i64>(raw), None, "{raw}");
        }
        assert_eq!(parse_int::<i64>("-0x10"), Some(-16));
        assert_eq!(parse_int::<i64>("0x7fffffffffffffff"), Some(i64::MAX));
        assert_eq!(parse_int::<i64>("-0x8000000000000000"), Some(i64::MIN));
        assert_eq!(parse_int::<u32>("-0x1"), None);
    }

    #[test]
    fn words() {
        assert_eq!(kebab("PingPong"), "ping-pong");
        assert_eq!(kebab("Call"), "call");
        assert_eq!(kebab("GetService"), "get-service");
        assert_eq!(lower_camel("GetService"), "getService");
    }

    #[test]
    fn scalar_conversions() {
        assert_eq!(scalar_json(&Kind::Int32, "n", "0x10").unwrap(), Value::from(16));
        assert_eq!(scalar_json(&Kind::Int64, "n", "-5").unwrap(), Value::String("-5".into()));
        assert!(scalar_json(&Kind::Int32, "n", "abc").unwrap_err().message.contains("expected int32"));
        assert_eq!(scalar_json(&Kind::Bool, "b", "").unwrap(), Value::Bool(true));
        assert_eq!(scalar_json(&Kind::Double, "d", "inf").unwrap(), Value::String("Infinity".into()));
        assert_eq!(scalar_json(&Kind::Bytes, "b", "hi").unwrap(), Value::String("aGk=".into()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").as_deref(), Some("5s"));
        assert_eq!(parse_duration("1m30s").as_deref(), Some("90s"));
        assert_eq!(parse_duration("250ms").as_deref(), Some("0.25s"));
        assert_eq!(parse_duration("1.5s").as_deref(), Some("1.5s"));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn services_fit_under_the_root_for_completion() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut root = crate::cli::command();
        for (name, grpc) in
            [("registry", vec!["registry.Registry"]), ("authsvc", vec!["auth.Auth", "auth.Accounts", "auth.Rules"])]
        {
            let service =
                Service { name: name.into(), endpoints: schema::endpoints(&schema.pool, grpc), ..Default::default() };
            root = root.subcommand(service_command(&service, &schema, true));
        }
        // Panics on duplicate flags between the root's global flags and the services' own.
        root.debug_assert();
    }

    #[test]
    fn registry_commands_and_flags() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = Service {
            name: "registry".into(),
            endpoints: schema::endpoints(&schema.pool, ["registry.Registry"]),
            ..Default::default()
        };
        let cmd = service_command(&service, &schema, false);
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        assert!(names.contains(&"get-service"), "{names:?}");
        let matches = cmd
            .clone()
            .try_get_matches_from([
                "registry",
                "getService",
                "--service",
                "x",
                "--options_domain=foo",
                "--options-ttl",
                "5",
            ])
            .unwrap();
        let (_, leaf) = matches.subcommand().unwrap();
        let method = schema::find_method(&schema.pool, "/registry.Registry/GetService").unwrap();
        let msg = request_from_matches(&method, leaf).unwrap().unwrap();
        let json = message_to_json(&msg);
        assert_eq!(json["service"], "x");
        assert_eq!(json["options"]["domain"], "foo");
        assert_eq!(json["options"]["ttl"], "5");
    }
}
