//! Direct calls: `micro call --address HOST:PORT METHOD [JSON]` calls any gRPC server, not through the micro proxy,
//! and with no registry.
//!
//! The method's types come from `--proto` files (compiled at run time with protox, imports resolved from
//! `--import-path` directories, else from each file's own directory), from `--protoset` files (a serialized
//! `FileDescriptorSet`, as `protoc -o` and `buf build -o` write), or else from the server's gRPC reflection (v1,
//! then v1alpha). The method is `pkg.Service/Method`, `/pkg.Service/Method`, `pkg.Service.Method`, or
//! `Service.Method` / `Method` when only one service has it. Requests, responses, metadata, deadlines and output
//! formats work as in calls through the proxy, and so do requests from `@FILE`, `@-` and a piped stdin, JSON errors
//! that name the field, `-H/--header`, `--timeout` and the 64 MiB message limit (the call itself is
//! [`dynamic::invoke`]'s). `--print grpcurl` prints the grpcurl command against the address. The connection is plaintext unless `--tls` (or an `https://`
//! address) is given; `--ca-cert` adds a CA to trust and `--client-cert`/`--client-key` present a certificate.

use super::call;
use super::dynamic::print::{self, Print, quote};
use super::dynamic::{self, Invocation, Requests, request};
use super::output::Printer;
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{Output, Settings};
use micro_client::Connection;
use micro_client::diagnose::{Finding, probe};
use micro_client::reflection::{ReflectionError, reflect};
use micro_client::tls::Target;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// The deadline of the reflection conversation when `--timeout` is not given (calls default as through the proxy).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The heading of the direct-call flags in `micro call --help`.
const HEADING: &str = "Direct calls, without the proxy or the registry";

/// The flags of a direct call, flattened into `micro call` and `micro stream`. With `--address`, the first
/// positional argument is the method and the rest is the JSON request, so the endpoint argument is not required.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(mut_args(for_direct_calls))]
pub struct DirectArgs {
    /// Call the gRPC server at HOST:PORT directly: `micro call --address HOST:PORT pkg.Service/Method [JSON]`.
    /// Its types come from --proto, --protoset, or the server's reflection.
    #[arg(long, value_name = "HOST:PORT", help_heading = HEADING)]
    pub address: Option<String>,
    /// A .proto file that defines the method (repeatable), compiled at run time.
    #[arg(long, value_name = "FILE", requires = "address", help_heading = HEADING)]
    pub proto: Vec<PathBuf>,
    /// A directory where imports of --proto files are found (repeatable); by default each file's own directory.
    #[arg(long = "import-path", value_name = "DIR", requires = "proto", help_heading = HEADING)]
    pub import_path: Vec<PathBuf>,
    /// A FileDescriptorSet file (`protoc -o FILE`, `buf build -o FILE`) that defines the method (repeatable).
    #[arg(long, value_name = "FILE", requires = "address", conflicts_with = "proto", help_heading = HEADING)]
    pub protoset: Vec<PathBuf>,
    /// Use TLS (--ca-cert adds a CA to trust). An https:// address uses TLS too.
    #[arg(long, requires = "address", help_heading = HEADING)]
    pub tls: bool,
}

/// Adapts the positional arguments of `micro call` to direct calls: with `--address`, the first one (SERVICE) is
/// the method and ENDPOINT is not required (it is the first word of the request, if any). Arguments keep their
/// place, so positional indexes do not change.
fn for_direct_calls(arg: clap::Arg) -> clap::Arg {
    match arg.get_id().as_str() {
        "service" => {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let help = help.trim_end_matches('.');
            arg.help(format!("{help}; with --address, the method (e.g. `helloworld.Helloworld/Call`)"))
        }
        "endpoint" => arg.required(false).required_unless_present("address").default_value_if(
            "address",
            clap::builder::ArgPredicate::IsPresent,
            "",
        ),
        _ => arg,
    }
}

/// Runs a direct call: `args.direct.address` is set.
pub async fn exec(settings: &Settings, args: call::Args) -> anyhow::Result<()> {
    let direct = args.direct.clone();
    let address = direct.address.clone().unwrap_or_default();
    let target = target(&address, direct.tls)?;
    // The TLS flags alone: the env's CA and client certificate belong to its proxy, not to this server.
    let conn = Connection::with_tls(&target.url(), "", &settings.tls_flags)
        .map_err(|e| CliError::input(format!("Invalid --address: {e}")))?;
    let mut pairs = call::parse_metadata(&args.metadata)?;
    pairs.extend(call::parse_headers(&args.header)?);
    let metadata = metadata(&pairs)?;

    let pool = if !direct.protoset.is_empty() {
        protoset_pool(&direct.protoset)?
    } else if !direct.proto.is_empty() {
        proto_pool(&direct.proto, &direct.import_path)?
    } else {
        let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
        match reflect(conn.channel(), &metadata, timeout).await {
            Ok(reflected) => reflected.pool,
            Err(ReflectionError::Unsupported) => {
                return Err(CliError::input(format!(
                    "The server at {} does not offer gRPC reflection, so micro cannot know the types of {}: pass \
                     --proto FILE (with --import-path DIR for its imports) or --protoset FILE",
                    target.authority, args.service
                ))
                .into());
            }
            Err(ReflectionError::Rpc(status)) => return Err(rpc_error(&status, &target, "gRPC reflection").into()),
            Err(e @ ReflectionError::Answer(_)) => {
                return Err(CliError::failure(format!("Cannot use the reflection of {}: {e}", target.authority)).into());
            }
        }
    };
    let method = find_method(&pool, &args.service)?;

    // With --address the endpoint argument holds the first word of the request.
    let words: Vec<String> =
        std::iter::once(args.endpoint.clone()).filter(|w| !w.is_empty()).chain(args.request.iter().cloned()).collect();
    let requests = request::for_call(&method, call::source(&words)?, settings.stdin_tty, settings.stderr_tty).await?;
    let invocation = Invocation { service: String::new(), method, requests, metadata: pairs, timeout: args.timeout };
    if let Some(tool) = args.print {
        let line = print_command(&invocation, &target, &direct, tool)?;
        Printer::new(None, Output::Raw).line(line)?;
        return Ok(());
    }
    let endpoint = micro_core::schema::endpoint_name(&invocation.method);
    let errors = |status: &tonic::Status| rpc_error(status, &target, &endpoint);
    dynamic::invoke(settings, &conn, invocation, settings.output, &errors).await
}

/// The grpcurl command that makes a direct call: against the server's address, with the `--proto`,
/// `--import-path` and `--protoset` files given. curl has no gRPC, so `--print curl` is refused.
fn print_command(call: &Invocation, target: &Target, direct: &DirectArgs, tool: Print) -> Result<String, CliError> {
    if tool == Print::Curl {
        return Err(CliError::input(
            "--print curl goes through micro's HTTP API gateway, which a direct call (--address) does not use: \
             use --print grpcurl, or leave out --address",
        ));
    }
    let mut words = vec!["grpcurl".to_string()];
    if !target.tls {
        words.push("-plaintext".into());
    }
    let files = |flag: &str, paths: &[PathBuf]| {
        paths.iter().flat_map(|p| [flag.to_string(), quote(&p.display().to_string())]).collect::<Vec<_>>()
    };
    words.extend(files("-import-path", &direct.import_path));
    words.extend(files("-proto", &direct.proto));
    words.extend(files("-protoset", &direct.protoset));
    for (k, v) in &call.metadata {
        words.extend(["-H".into(), quote(&format!("{k}: {v}"))]);
    }
    if let Some(t) = call.timeout {
        words.extend(["-max-time".into(), print::seconds(t)]);
    }
    words.push("-d".into());
    words.push(match &call.requests {
        Requests::Given(messages) => quote(&messages.iter().map(print::compact_json).collect::<Vec<_>>().join(" ")),
        Requests::StdinLines { .. } => "@".into(),
    });
    words.push(quote(&target.authority));
    words.push(quote(&path(&call.method)));
    Ok(words.join(" "))
}

/// The server's address, with `https://` when `--tls` is given.
fn target(address: &str, tls: bool) -> Result<Target, CliError> {
    let with_scheme = match (tls, address.contains("://")) {
        (true, false) => format!("https://{address}"),
        (true, true) if !address.starts_with("https://") => {
            return Err(CliError::input(format!("--tls and {address} disagree: give host:port or https://host:port")));
        }
        _ => address.to_string(),
    };
    let target = Target::parse(&with_scheme)
        .map_err(|reason| CliError::input(format!("Invalid --address {address:?}: {reason}")))?;
    Ok(target)
}

/// The metadata of the call (and of the reflection conversation).
fn metadata(pairs: &[(String, String)]) -> Result<MetadataMap, CliError> {
    let mut map = MetadataMap::new();
    for (k, v) in pairs {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| CliError::input(format!("Invalid metadata {k:?}: {e}")))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|e| CliError::input(format!("Invalid metadata value for {k:?}: {e}")))?;
        map.append(key, value);
    }
    Ok(map)
}

/// The descriptors of `--protoset` files.
fn protoset_pool(files: &[PathBuf]) -> Result<DescriptorPool, CliError> {
    let mut pool = DescriptorPool::new();
    for file in files {
        let bytes = std::fs::read(file)
            .map_err(|e| CliError::input(format!("Cannot read --protoset {}: {e}", file.display())))?;
        pool.decode_file_descriptor_set(bytes.as_slice()).map_err(|e| {
            CliError::input(format!(
                "--protoset {} is not a usable FileDescriptorSet ({e:?}); write one with `protoc -o FILE \
                 --include_imports` or `buf build -o FILE`",
                file.display()
            ))
        })?;
    }
    Ok(pool)
}

/// The descriptors of `--proto` files, compiled with protox. Imports are found in `import_paths`, else in the
/// directories of the files themselves.
fn proto_pool(files: &[PathBuf], import_paths: &[PathBuf]) -> Result<DescriptorPool, CliError> {
    let mut includes: Vec<PathBuf> = import_paths.to_vec();
    if includes.is_empty() {
        for file in files {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            if !includes.contains(&dir) {
                includes.push(dir);
            }
        }
    }
    for file in files {
        if !file.is_file() && !includes.iter().any(|dir| dir.join(file).is_file()) {
            return Err(CliError::input(format!("Cannot read --proto {}: no such file", file.display())));
        }
    }
    let compiled = protox::Compiler::new(&includes).and_then(|mut c| {
        c.include_imports(true).open_files(files)?;
        Ok(c.descriptor_pool())
    });
    // protox's Debug form names the file, line and column: `broken.proto:3:14: expected ';', but found '}'`.
    compiled.map_err(|e| CliError::input(format!("Cannot compile the --proto files: {e:?}")))
}

/// Finds a method by `pkg.Service/Method`, `/pkg.Service/Method`, `pkg.Service.Method`, or `Service.Method`,
/// `Service/Method` or `Method` when only one service has it.
pub(crate) fn find_method(pool: &DescriptorPool, name: &str) -> Result<MethodDescriptor, CliError> {
    let wanted = name.trim().trim_start_matches('/');
    let (service, method) = match wanted.split_once('/') {
        Some((s, m)) => (Some(s), m),
        None => match wanted.rsplit_once('.') {
            Some((s, m)) => (Some(s), m),
            None => (None, wanted),
        },
    };
    if method.is_empty() || method.contains('/') || service.is_some_and(str::is_empty) {
        return Err(CliError::new(
            ExitStatus::MalformedMethod,
            format!("Method name \"{name}\" invalid format. Expecting pkg.Service/Method"),
        ));
    }
    let all: Vec<MethodDescriptor> = pool.services().flat_map(|s| s.methods().collect::<Vec<_>>()).collect();
    let service_matches = |m: &MethodDescriptor| {
        service.is_none_or(|s| m.parent_service().full_name() == s || m.parent_service().name() == s)
    };
    let mut found: Vec<&MethodDescriptor> = all.iter().filter(|m| m.name() == method && service_matches(m)).collect();
    if found.is_empty() {
        found = all.iter().filter(|m| m.name().eq_ignore_ascii_case(method) && service_matches(m)).collect();
    }
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let names: Vec<String> = all
                .iter()
                .filter(|m| !m.parent_service().full_name().starts_with("grpc.reflection."))
                .map(path)
                .collect();
            let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            Err(CliError::new(ExitStatus::UnknownMethod, format!("Method \"{name}\" not found. Methods: {known}")))
        }
        many => {
            let names: Vec<String> = many.iter().map(|m| path(m)).collect();
            Err(CliError::input(format!(
                "Method \"{name}\" is ambiguous: it could be {}. Give the full name",
                names.join(" or ")
            )))
        }
    }
}

/// `pkg.Service/Method`.
fn path(method: &MethodDescriptor) -> String {
    format!("{}/{}", method.parent_service().full_name(), method.name())
}

/// A failed RPC to the server at `target`, as the user sees it: a failure to reach it says what was found there
/// (exit 4); anything else maps as calls through the proxy do.
fn rpc_error(status: &tonic::Status, target: &Target, endpoint: &str) -> CliError {
    if let Some(message) = connect_failure(status, target) {
        return CliError::new(ExitStatus::NotFound, message);
    }
    if status.code() == tonic::Code::Unimplemented {
        return CliError::new(
            ExitStatus::UnknownMethod,
            format!("The server at {} does not implement {endpoint}", target.authority),
        );
    }
    from_status(status, &RpcContext { address: String::new(), endpoint: endpoint.to_string() })
}

/// What went wrong reaching the server, when the status says the call never got through.
fn connect_failure(status: &tonic::Status, target: &Target) -> Option<String> {
    use tonic::Code;
    let message = status.message();
    let failed = format!("Failed to connect to {}", target.authority);
    let http_answer = message.contains("mapped from HTTP status code")
        || message.contains("invalid compression flag")
        || message.contains("while receiving response with status");
    let transport = match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal => std::error::Error::source(status).is_some(),
        Code::Cancelled => std::error::Error::source(status).is_some() && !message.contains("Timeout expired"),
        _ => false,
    };
    if !http_answer && !transport {
        return None;
    }
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(format!("{failed}: nothing is listening there (connection refused)"));
                }
                std::io::ErrorKind::TimedOut => return Some(format!("{failed}: no answer in time")),
                _ => {}
            }
        }
        let text = e.to_string();
        if text.contains("certificate") || text.contains("peer sent") || text.contains("received fatal alert") {
            return Some(format!(
                "{failed}: TLS failed: {text}. Pass the server's CA with --ca-cert FILE, or a client certificate \
                 with --client-cert FILE --client-key FILE if it asks for one"
            ));
        }
        if text.contains("failed to lookup address") || text.contains("Name or service not known") {
            return Some(format!("{failed}: the host {} is not known (DNS)", target.host));
        }
        if text.contains("HTTP/2 was not negotiated") {
            return Some(format!("{failed}: the server speaks TLS but not HTTP/2, so it is no gRPC server"));
        }
        next = e.source();
    }
    Some(match probe(target) {
        Finding::Refused => format!("{failed}: nothing is listening there (connection refused)"),
        Finding::NoAnswer => format!("{failed}: no answer in time"),
        Finding::UnknownHost => format!("{failed}: the host {} is not known (DNS)", target.host),
        Finding::Tls | Finding::ClientCertRequired if !target.tls => {
            format!("{failed}: the server speaks TLS: add --tls")
        }
        Finding::H2c if target.tls => format!("{failed}: the server does not speak TLS: leave out --tls"),
        Finding::Http { status_line } => {
            format!("{failed}: an HTTP server that is not a gRPC server answered there ({status_line})")
        }
        Finding::Gateway { .. } => {
            format!("{failed}: that is micro's HTTP API gateway, not a gRPC server; its proxy is on another port")
        }
        _ => format!("{failed}: {}", message.chars().take(200).collect::<String>()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn core() -> DescriptorPool {
        micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap().pool
    }

    #[test]
    fn methods_by_every_spelling() {
        let pool = core();
        for name in [
            "registry.Registry/GetService",
            "/registry.Registry/GetService",
            "registry.Registry.GetService",
            "Registry.GetService",
            "Registry/GetService",
            "GetService",
            "registry.Registry/getservice",
        ] {
            let m = find_method(&pool, name).unwrap_or_else(|e| panic!("{name}: {}", e.message));
            assert_eq!(m.full_name(), "registry.Registry.GetService", "{name}");
        }
        let e = find_method(&pool, "Registry.Nope").unwrap_err();
        assert_eq!(e.status, ExitStatus::UnknownMethod);
        assert!(e.message.starts_with("Method \"Registry.Nope\" not found. Methods: "), "{}", e.message);
        assert!(e.message.contains("registry.Registry/GetService"), "{}", e.message);
        assert_eq!(find_method(&pool, "a/b/c").unwrap_err().status, ExitStatus::MalformedMethod);
        assert_eq!(find_method(&pool, "/").unwrap_err().status, ExitStatus::MalformedMethod);
    }

    #[test]
    fn an_ambiguous_method_asks_for_the_full_name() {
        // `Read` is a method of several core services (store.Store, events.Store, …).
        let pool = core();
        let readers: Vec<String> = pool
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .filter(|m| m.name() == "Read")
            .map(|m| path(&m))
            .collect();
        assert!(readers.len() > 1, "{readers:?}");
        let e = find_method(&pool, "Read").unwrap_err();
        assert_eq!(e.status, ExitStatus::InvalidInput);
        assert!(e.message.contains("is ambiguous") && e.message.contains(&readers[0]), "{}", e.message);
    }

    #[test]
    fn call_keeps_service_endpoint_and_takes_address_method() {
        // The normal form is unchanged: both positionals required without --address.
        let cli = crate::cli::Cli::try_parse_from(["micro", "call", "helloworld", "Helloworld.Call", "{}"]).unwrap();
        let Some(crate::cli::Command::Call(args)) = cli.command else { panic!("not a call") };
        assert_eq!((args.service.as_str(), args.endpoint.as_str()), ("helloworld", "Helloworld.Call"));
        assert!(args.direct.address.is_none());
        let e = crate::cli::Cli::try_parse_from(["micro", "call", "helloworld"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);

        // With --address, the method alone, or the method and JSON.
        let cli = crate::cli::Cli::try_parse_from(["micro", "call", "--address", "h:1", "pkg.S/M"]).unwrap();
        let Some(crate::cli::Command::Call(args)) = cli.command else { panic!("not a call") };
        assert_eq!((args.service.as_str(), args.endpoint.as_str()), ("pkg.S/M", ""));
        let cli = crate::cli::Cli::try_parse_from(["micro", "stream", "pkg.S/M", r#"{"a":"#, "1}", "--address", "h:1"])
            .unwrap();
        let Some(crate::cli::Command::Stream(args)) = cli.command else { panic!("not a stream") };
        assert_eq!(args.direct.address.as_deref(), Some("h:1"));
        assert_eq!((args.endpoint.as_str(), args.request.as_slice()), (r#"{"a":"#, &["1}".to_string()][..]));

        // --proto and --protoset need --address, and do not go together.
        for argv in [
            &["micro", "call", "--proto", "x.proto", "svc", "Ep"][..],
            &["micro", "call", "--address", "h:1", "--proto", "a.proto", "--protoset", "b.pb", "M"],
            &["micro", "call", "--address", "h:1", "--import-path", "dir", "M"],
        ] {
            assert!(crate::cli::Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn addresses_with_and_without_tls() {
        assert_eq!(target("127.0.0.1:5", false).unwrap().url(), "http://127.0.0.1:5");
        assert_eq!(target("127.0.0.1:5", true).unwrap().url(), "https://127.0.0.1:5");
        assert!(target("https://h:5", false).unwrap().tls);
        assert!(target("http://h:5", true).is_err());
        assert!(target("h:5/path", false).is_err());
    }

    #[test]
    fn a_proto_that_does_not_compile_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broken.proto");
        std::fs::write(&file, "syntax = \"proto3\";\nmessage A {\n  string a = 1\n}\n").unwrap();
        let e = proto_pool(&[file], &[]).unwrap_err();
        assert_eq!(e.status, ExitStatus::InvalidInput);
        assert!(e.message.starts_with("Cannot compile the --proto files: broken.proto:4:1: "), "{}", e.message);
    }
}
