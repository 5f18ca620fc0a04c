//! `micro describe SERVICE [ENDPOINT|MESSAGE]`: a service's schema in proto syntax, with its comments, as
//! `grpcurl describe` prints it.
//!
//! Without a second argument it prints the gRPC services the service registered; with one, an endpoint
//! (`Helloworld.Call`, `Call`, `/helloworld.Helloworld/Call`), a gRPC service (`Helloworld`), or a message or enum
//! by its short or full name (`CallRequest`, `helloworld.CallRequest`). `-o json|yaml|raw` prints the descriptor
//! instead (`ServiceDescriptorProto`, `MethodDescriptorProto`, `DescriptorProto`, `EnumDescriptorProto`), one
//! document per element. The schema comes from the registry, through the schema cache, as dynamic commands get it.

use super::dynamic;
use super::output::Printer;
use crate::exit::{CliError, ExitStatus};
use crate::settings::{Output, Settings};
use micro_client::describe::{Symbol, find_symbol};
use micro_core::proto::registry::Service;
use micro_core::schema::{self, Schema};
use prost_reflect::{FileDescriptor, ServiceDescriptor};

/// Arguments of `micro describe`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  micro describe helloworld                    the gRPC services of helloworld
  micro describe helloworld Helloworld.Call    one endpoint (or just `Call`)
  micro describe helloworld CallRequest        a message, with its fields and nested types
  micro describe helloworld CallRequest -o json    its descriptor (DescriptorProto) as JSON")]
pub struct Args {
    /// The service, e.g. `helloworld`.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub service: String,
    /// An endpoint (`Helloworld.Call`, `Call`), a gRPC service (`Helloworld`), or a message or enum
    /// (`CallRequest`, `helloworld.CallRequest`). Without it, the service's gRPC services.
    #[arg(value_name = "ENDPOINT|MESSAGE", add = clap_complete::ArgValueCandidates::new(super::completion::symbol_candidates))]
    pub symbol: Option<String>,
}

/// Runs `micro describe`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let (service, schema) = dynamic::resolve(settings, &conn, &args.service, false).await?;
    let Some(schema) = schema else {
        return Err(CliError::input(format!(
            "Service \"{}\" registered no schema, so there is nothing to describe; `micro get service {}` shows its \
             endpoints",
            service.name, service.name
        ))
        .into());
    };
    let symbols = match &args.symbol {
        None => grpc_services(&service, &schema).into_iter().map(Symbol::Service).collect(),
        Some(name) => vec![find(&service, &schema, name)?],
    };
    if symbols.is_empty() {
        return Err(CliError::new(
            ExitStatus::NotFound,
            format!("Service \"{}\" registered no endpoints in its schema", service.name),
        )
        .into());
    }
    let printer = Printer::new(settings.output, Output::Table);
    for symbol in &symbols {
        match printer.format() {
            Output::Table => printer.line(symbol.describe().trim_end())?,
            _ => printer.json(&symbol.to_json())?,
        }
    }
    Ok(())
}

/// The gRPC services whose methods the service registered as endpoints, sorted by name.
fn grpc_services(service: &Service, schema: &Schema) -> Vec<ServiceDescriptor> {
    let mut out: Vec<ServiceDescriptor> = Vec::new();
    for endpoint in &service.endpoints {
        if let Some(method) = schema::find_method(&schema.pool, &endpoint.method) {
            let grpc = method.parent_service().clone();
            if !out.contains(&grpc) {
                out.push(grpc);
            }
        }
    }
    out.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    out
}

/// The files that define the service's gRPC services: where its own messages are.
fn own_files(services: &[ServiceDescriptor]) -> Vec<FileDescriptor> {
    let mut files: Vec<FileDescriptor> = Vec::new();
    for s in services {
        let file = s.parent_file();
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// A name relative to its package: `Rich.Inner` for `rich.v1.Rich.Inner`.
fn local_name<'a>(full_name: &'a str, package: &str) -> &'a str {
    if package.is_empty() {
        return full_name;
    }
    full_name.strip_prefix(package).and_then(|n| n.strip_prefix('.')).unwrap_or(full_name)
}

/// Finds an endpoint, gRPC service, message or enum of `service` by the name the user gave.
fn find(service: &Service, schema: &Schema, name: &str) -> Result<Symbol, CliError> {
    let pool = &schema.pool;
    let services = grpc_services(service, schema);
    let methods: Vec<_> =
        service.endpoints.iter().filter_map(|e| schema::find_method(pool, &e.method).map(|m| (e, m))).collect();
    let wanted = name.trim_start_matches(['/', '.']);

    // An endpoint: its Micro name, its gRPC path, or the method's name alone when only one has it.
    let endpoint = methods
        .iter()
        .find(|(e, _)| e.name == name)
        .or_else(|| methods.iter().find(|(e, _)| e.name.eq_ignore_ascii_case(name)))
        .or_else(|| {
            methods.iter().find(|(e, _)| {
                let path = e.method.trim_start_matches('/');
                path == wanted || path.replacen('/', ".", 1) == wanted
            })
        });
    if let Some((_, m)) = endpoint {
        return Ok(Symbol::Method(m.clone()));
    }
    let by_method: Vec<_> = methods.iter().filter(|(_, m)| m.name().eq_ignore_ascii_case(name)).collect();
    if let [(_, m)] = by_method.as_slice() {
        return Ok(Symbol::Method(m.clone()));
    }
    if by_method.len() > 1 {
        let names: Vec<&str> = by_method.iter().map(|(e, _)| e.name.as_str()).collect();
        return Err(CliError::input(format!("\"{name}\" is ambiguous: it could be {}", names.join(" or "))));
    }

    // One of its gRPC services, by short or full name.
    if let Some(s) = services.iter().find(|s| s.full_name() == wanted || s.name() == wanted) {
        return Ok(Symbol::Service(s.clone()));
    }

    // A message or enum: its full name anywhere in the schema, else its name within a package, preferring the
    // service's own files.
    if let Some(symbol @ (Symbol::Message(_) | Symbol::Enum(_))) = find_symbol(pool, wanted) {
        return Ok(symbol);
    }
    let files = own_files(&services);
    let types: Vec<(Symbol, FileDescriptor)> = pool
        .all_messages()
        .filter(|m| !m.is_map_entry())
        .map(|m| (m.parent_file(), Symbol::Message(m)))
        .chain(pool.all_enums().map(|e| (e.parent_file(), Symbol::Enum(e))))
        .map(|(f, s)| (s, f))
        .collect();
    let matching: Vec<&(Symbol, FileDescriptor)> =
        types.iter().filter(|(s, f)| local_name(s.full_name(), f.package_name()) == wanted).collect();
    let own: Vec<&&(Symbol, FileDescriptor)> = matching.iter().filter(|(_, f)| files.contains(f)).collect();
    match (own.as_slice(), matching.as_slice()) {
        ([(s, _)], _) | ([], [(s, _)]) => return Ok(s.clone()),
        ([], []) => {}
        (_, many) => {
            let names: Vec<&str> = many.iter().map(|(s, _)| s.full_name()).collect();
            return Err(CliError::input(format!(
                "\"{name}\" is ambiguous: it could be {}. Give the full name",
                names.join(" or ")
            )));
        }
    }

    // Nothing: say what there is.
    let endpoints: Vec<&str> = methods.iter().map(|(e, _)| e.name.as_str()).collect();
    let mut messages = Vec::new();
    let mut enums = Vec::new();
    for (symbol, file) in types.iter().filter(|(_, f)| files.contains(f)) {
        let local = local_name(symbol.full_name(), file.package_name()).to_string();
        match symbol {
            Symbol::Enum(_) => enums.push(local),
            _ => messages.push(local),
        }
    }
    let list = |items: &[String]| if items.is_empty() { "none".to_string() } else { items.join(", ") };
    let mut message = format!(
        "\"{name}\" is not an endpoint, message or enum of service {}. Endpoints: {}. Messages: {}",
        service.name,
        if endpoints.is_empty() { "none".to_string() } else { endpoints.join(", ") },
        list(&messages)
    );
    if !enums.is_empty() {
        message.push_str(&format!(". Enums: {}", enums.join(", ")));
    }
    Err(CliError::new(ExitStatus::NotFound, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (Service, Schema) {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = Service {
            name: "registry".into(),
            endpoints: schema::endpoints(&schema.pool, ["registry.Registry"]),
            ..Default::default()
        };
        (service, schema)
    }

    fn name_of(found: Result<Symbol, CliError>) -> String {
        match found {
            Ok(s) => format!("{} is {}", s.full_name(), s.what()),
            Err(e) => format!("{}: {}", e.status.code(), e.message),
        }
    }

    #[test]
    fn endpoints_services_and_messages_by_any_name() {
        let (service, schema) = registry();
        for (name, expected) in [
            ("Registry.GetService", "registry.Registry.GetService is a method"),
            ("registry.getservice", "registry.Registry.GetService is a method"),
            ("GetService", "registry.Registry.GetService is a method"),
            ("/registry.Registry/GetService", "registry.Registry.GetService is a method"),
            ("registry.Registry.GetService", "registry.Registry.GetService is a method"),
            ("Registry", "registry.Registry is a service"),
            ("registry.Registry", "registry.Registry is a service"),
            ("GetRequest", "registry.GetRequest is a message"),
            ("registry.GetRequest", "registry.GetRequest is a message"),
            (".registry.GetRequest", "registry.GetRequest is a message"),
            ("EventType", "registry.EventType is an enum"),
            // Anything in the schema by its full name, even from another package.
            ("auth.Account", "auth.Account is a message"),
        ] {
            assert_eq!(name_of(find(&service, &schema, name)), expected, "{name}");
        }
    }

    #[test]
    fn an_unknown_name_lists_what_there_is() {
        let (service, schema) = registry();
        let e = find(&service, &schema, "Nope").unwrap_err();
        assert_eq!(e.status, ExitStatus::NotFound);
        assert!(
            e.message.starts_with(
                "\"Nope\" is not an endpoint, message or enum of service registry. Endpoints: Registry.Deregister, \
                 Registry.GetSchema, Registry.GetService,"
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("Messages: ") && e.message.contains("GetRequest"), "{}", e.message);
        assert!(e.message.contains("Enums: EventType"), "{}", e.message);
    }

    #[test]
    fn the_services_of_a_registered_service() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = Service {
            name: "auth".into(),
            endpoints: schema::endpoints(&schema.pool, ["auth.Auth", "auth.Rules", "auth.Accounts"]),
            ..Default::default()
        };
        let names: Vec<String> = grpc_services(&service, &schema).iter().map(|s| s.full_name().to_string()).collect();
        assert_eq!(names, ["auth.Accounts", "auth.Auth", "auth.Rules"]);
        assert_eq!(local_name("rich.v1.Rich.Inner", "rich.v1"), "Rich.Inner");
        assert_eq!(local_name("Top", ""), "Top");
    }
}
