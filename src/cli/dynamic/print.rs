//! `--print grpcurl|curl`: print a command that makes the same call, for a POSIX shell, instead of making it.
//!
//! The grpcurl command goes through the proxy (the env's address; `-plaintext` unless it is TLS, then `-cacert`
//! with the env's CA when one is configured), with the `micro-namespace` header when the namespace is not the
//! default. The curl command goes through the HTTP API gateway: `MICRO_API` when set, else the proxy's host on port
//! 8080 (the gateway's default), over https when the proxy is TLS. Both send the request as JSON (`-d`), the
//! metadata given with `--header`/`--metadata`, and the deadline given with `--timeout` (`-max-time`,
//! `--max-time`). The token is never printed: the command reads it with `$(micro user token)`. A client stream
//! that reads stdin prints a command that reads stdin too.
//!
//! The CA, and a client certificate and key, are files on the command line: the file of `MICRO_CA_CERT` (or
//! `MICRO_CLIENT_CERT`, `MICRO_CLIENT_KEY`) when it holds what micro uses, else a copy that micro keeps in its cache
//! dir (`print/`, readable by the user only), since an env stores their contents rather than their paths.

use super::{Invocation, Requests};
use crate::exit::CliError;
use crate::settings::Settings;
use micro_client::tls::Target;
use micro_core::env;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::path::PathBuf;

/// The tool whose command `--print` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// grpcurl, through the proxy.
    Grpcurl,
    /// curl, through the HTTP API gateway.
    Curl,
}

/// The HTTP API gateway's port when `MICRO_API` does not say where it is: the port `micro server` listens on by
/// default.
pub const DEFAULT_API_PORT: u16 = 8080;

/// Quotes `word` for a POSIX shell: as it is when it holds only characters no shell treats specially, else in single
/// quotes (a single quote inside becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command that makes `call` with `tool` (stdout: it is the data asked for).
pub fn print(settings: &Settings, call: &Invocation, tool: Print) -> anyhow::Result<()> {
    let line = command(settings, call, tool)?;
    crate::cli::output::Printer::new(None, crate::settings::Output::Raw).line(line)?;
    Ok(())
}

/// The command that makes `call` with `tool`.
pub fn command(settings: &Settings, call: &Invocation, tool: Print) -> Result<String, CliError> {
    let proxy = Target::parse(&settings.proxy)
        .map_err(|reason| CliError::input(format!("invalid proxy address {:?}: {reason}", settings.proxy)))?;
    let token = token_command(settings);
    let namespace = (settings.namespace != micro_core::DEFAULT_NAMESPACE).then_some(settings.namespace.as_str());
    let documents = match &call.requests {
        Requests::Given(messages) => Some(messages.iter().map(compact_json).collect::<Vec<_>>()),
        Requests::StdinLines { .. } => None,
    };
    let mut words: Vec<String> = Vec::new();
    let mut push = |w: &str| words.push(w.to_string());
    match tool {
        Print::Grpcurl => {
            push("grpcurl");
            if proxy.tls {
                tls_words(settings, &mut words, ["-insecure", "-cacert", "-cert", "-key"])?;
            } else {
                words.push("-plaintext".into());
            }
            words.push("-H".into());
            words.push(format!("\"authorization: Bearer $({token})\""));
            if let Some(ns) = namespace {
                words.extend(["-H".into(), quote(&format!("{}: {ns}", micro_core::metadata::NAMESPACE_HEADER))]);
            }
            for (k, v) in &call.metadata {
                words.extend(["-H".into(), quote(&format!("{k}: {v}"))]);
            }
            if let Some(t) = call.timeout {
                words.extend(["-max-time".into(), seconds(t)]);
            }
            words.push("-d".into());
            words.push(match &documents {
                Some(docs) => quote(&docs.join(" ")),
                None => "@".into(),
            });
            words.push(quote(&proxy.authority));
            let method = &call.method;
            words.push(quote(&format!("{}/{}", method.parent_service().full_name(), method.name())));
            Ok(words.join(" "))
        }
        Print::Curl => {
            let streaming_in = call.method.is_client_streaming();
            let mut prefix = String::new();
            push("curl");
            if call.method.is_server_streaming() {
                // Print each message as it arrives.
                words.push("-N".into());
            }
            let api = api_var();
            if api_is_tls(&proxy, api.as_deref()) {
                tls_words(settings, &mut words, ["-k", "--cacert", "--cert", "--key"])?;
            }
            if let Some(t) = call.timeout {
                words.extend(["--max-time".into(), seconds(t)]);
            }
            words.push(quote(&format!(
                "{}{}",
                api_base(&proxy, api.as_deref())?,
                api_path(&call.service, &call.method)
            )));
            let content_type = if streaming_in { "application/x-ndjson" } else { "application/json" };
            words.extend(["-H".into(), quote(&format!("Content-Type: {content_type}"))]);
            words.push("-H".into());
            words.push(format!("\"Authorization: Bearer $({token})\""));
            if let Some(ns) = namespace {
                words.extend(["-H".into(), quote(&format!("Micro-Namespace: {ns}"))]);
            }
            for (k, v) in &call.metadata {
                words.extend(["-H".into(), quote(&format!("{k}: {v}"))]);
            }
            match &documents {
                Some(docs) if !streaming_in => words.extend(["-d".into(), quote(&docs.join(""))]),
                Some(docs) => {
                    // NDJSON: one document per line, which a quoted word cannot hold on one line.
                    let lines: Vec<String> = docs.iter().map(|d| quote(d)).collect();
                    prefix = format!("printf '%s\\n' {} | ", lines.join(" "));
                    words.extend(["--data-binary".into(), "@-".into()]);
                }
                None => words.extend(["--data-binary".into(), "@-".into()]),
            }
            Ok(prefix + &words.join(" "))
        }
    }
}

/// The request as compact JSON with proto field names, default values left out.
pub fn compact_json(message: &DynamicMessage) -> String {
    let options = SerializeOptions::new().use_proto_field_name(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".into())
}

/// A deadline in seconds, as grpcurl's `-max-time` and curl's `--max-time` take it: `2`, `0.5`.
pub fn seconds(d: std::time::Duration) -> String {
    d.as_secs_f64().to_string()
}

/// `micro user token` for the env and namespace of this call, so that the printed command reads the same token.
fn token_command(settings: &Settings) -> String {
    let mut words = vec!["micro".to_string()];
    if settings.dirs.load().is_ok_and(|c| c.current() != settings.env) {
        words.extend(["-e".into(), quote(&settings.env)]);
    }
    if settings.namespace != settings.home_namespace {
        words.extend(["--namespace".into(), quote(&settings.namespace)]);
    }
    words.extend(["user".into(), "token".into()]);
    words.join(" ")
}

/// The TLS flags of a tool, `[skip verify, CA file, client cert file, client key file]`, for the CLI's TLS settings.
fn tls_words(settings: &Settings, words: &mut Vec<String>, flags: [&str; 4]) -> Result<(), CliError> {
    let tls = &settings.tls;
    if tls.skip_verify {
        words.push(flags[0].into());
    } else if let Some(ca) = &tls.ca_pem {
        let path = pem_file(settings, ca, env::MICRO_CA_CERT, "ca")?;
        words.extend([flags[1].into(), quote(&path.display().to_string())]);
    }
    if let Some((cert, key)) = &tls.identity {
        let cert = pem_file(settings, cert, env::MICRO_CLIENT_CERT, "client-cert")?;
        let key = pem_file(settings, key, env::MICRO_CLIENT_KEY, "client-key")?;
        words.extend([flags[2].into(), quote(&cert.display().to_string())]);
        words.extend([flags[3].into(), quote(&key.display().to_string())]);
    }
    Ok(())
}

/// A file that holds `pem`: the one `var` names when it holds exactly that, else a private copy in the cache dir.
fn pem_file(settings: &Settings, pem: &str, var: &str, what: &str) -> Result<PathBuf, CliError> {
    if let Some(path) = env::var(var)
        && std::fs::read_to_string(&path).is_ok_and(|text| text == pem)
    {
        return Ok(std::path::absolute(&path).unwrap_or_else(|_| PathBuf::from(path)));
    }
    let dir = settings.dirs.cache.join("print");
    let name: String =
        settings.env.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let path = dir.join(format!("{name}-{what}.pem"));
    let io = |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", path.display()));
    micro_core::fs::create_private_dir(&dir).map_err(io)?;
    if std::fs::read_to_string(&path).map_or(true, |text| text != pem) {
        micro_core::fs::write_private_atomically(&path, pem.as_bytes()).map_err(io)?;
    }
    Ok(std::path::absolute(&path).unwrap_or(path))
}

/// `MICRO_API`, as a URL without a trailing slash, if set.
fn api_var() -> Option<String> {
    env::var(env::MICRO_API).map(|v| v.trim().trim_end_matches('/').to_string()).filter(|v| !v.is_empty())
}

/// Whether the gateway is reached over TLS: `api`'s scheme (`MICRO_API`), else as the proxy is.
fn api_is_tls(proxy: &Target, api: Option<&str>) -> bool {
    match api {
        Some(api) if api.starts_with("https://") => true,
        Some(api) if api.starts_with("http://") => false,
        _ => proxy.tls,
    }
}

/// The gateway's base URL: `api`, from `MICRO_API` (a URL, or `host:port` reached as the proxy is), else the proxy's host on
/// [`DEFAULT_API_PORT`].
fn api_base(proxy: &Target, api: Option<&str>) -> Result<String, CliError> {
    let scheme = if api_is_tls(proxy, api) { "https" } else { "http" };
    match api {
        Some(api) if api.starts_with("http://") || api.starts_with("https://") => Ok(api.to_string()),
        Some(api) if api.contains(':') => Ok(format!("{scheme}://{api}")),
        Some(api) => Err(CliError::input(format!(
            "{} {api:?} is not the API gateway's address: give http(s)://HOST:PORT or HOST:PORT",
            env::MICRO_API
        ))),
        None => {
            let host = if proxy.host.contains(':') { format!("[{}]", proxy.host) } else { proxy.host.clone() };
            Ok(format!("{scheme}://{host}:{DEFAULT_API_PORT}"))
        }
    }
}

/// The gateway's path of an endpoint: `/helloworld/call` when the handler is named like the service, else
/// `/SERVICE/HANDLER/METHOD` (kebab case), as the gateway's resolver reads them.
pub fn api_path(service: &str, method: &prost_reflect::MethodDescriptor) -> String {
    let handler = method.parent_service().name();
    let simple = service.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let words = |s: &str| s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect::<String>();
    let segment = |s: &str| percent(&super::kebab(s));
    if simple && words(service) == words(handler) {
        format!("/{}/{}", percent(service), segment(method.name()))
    } else {
        format!("/{}/{}/{}", percent(service), segment(handler), segment(method.name()))
    }
}

/// Percent-encodes what may not stand in a URL path segment as it is.
fn percent(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_a_posix_shell() {
        assert_eq!(quote("helloworld.Helloworld/Call"), "helloworld.Helloworld/Call");
        assert_eq!(quote("127.0.0.1:8081"), "127.0.0.1:8081");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("{\"name\":\"Jane\"}"), "'{\"name\":\"Jane\"}'");
        assert_eq!(quote("it's $HOME"), r"'it'\''s $HOME'");
        // What a shell makes of the quoted word is the word.
        for word in ["it's", "a b", "$(rm -rf x)", "`x`", "\\", "'", "''", "\n", "é"] {
            let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(word))).output();
            let out = out.expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{word:?}");
        }
    }

    #[test]
    fn the_gateway_is_on_the_proxy_s_host_by_default() {
        let proxy = Target::parse("127.0.0.1:8081").unwrap();
        assert_eq!(api_base(&proxy, None).unwrap(), "http://127.0.0.1:8080");
        let proxy = Target::parse("https://micro.example.com").unwrap();
        assert_eq!(api_base(&proxy, None).unwrap(), "https://micro.example.com:8080");
        let proxy = Target::parse("[::1]:8081").unwrap();
        assert_eq!(api_base(&proxy, None).unwrap(), "http://[::1]:8080");
        assert_eq!(api_base(&proxy, Some("https://api.example.com")).unwrap(), "https://api.example.com");
        assert_eq!(api_base(&proxy, Some("10.0.0.5:9000")).unwrap(), "http://10.0.0.5:9000");
        assert!(api_base(&proxy, Some("nowhere")).is_err());
    }

    #[test]
    fn gateway_paths() {
        let schema = micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let method = micro_core::schema::find_method(&schema.pool, "/registry.Registry/ListServices").unwrap();
        assert_eq!(api_path("registry", &method), "/registry/list-services");
        assert_eq!(api_path("v1.reg", &method), "/v1.reg/registry/list-services");
        assert_eq!(api_path("other", &method), "/other/registry/list-services");
    }
}
