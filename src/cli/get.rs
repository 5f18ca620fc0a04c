//! `micro get service NAME`: a service's versions, nodes and endpoints with their request and response fields.

use super::output::{Printer, message_to_json};
use crate::exit::{RpcContext, from_status};
use crate::settings::{Output, Settings};
use clap::Subcommand;
use micro_core::proto::registry::{Service, Value};
use prost::Message;
use std::fmt::Write as _;

/// Arguments of `micro get`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro get service helloworld\n  \
    micro get service helloworld -o json --jq '.[].nodes[].address'")]
pub struct Args {
    /// What to get.
    #[command(subcommand)]
    pub command: GetCommand,
}

/// `micro get` subcommands.
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Get a service from the registry.
    Service {
        /// The service name.
        #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
        name: String,
    },
}

/// A registry record as JSON (proto field names, defaults included), as `-o json` prints it.
pub fn record_json(service: &Service) -> serde_json::Value {
    static POOL: std::sync::OnceLock<Option<prost_reflect::DescriptorPool>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| prost_reflect::DescriptorPool::decode(micro_core::proto::FILE_DESCRIPTOR_SET).ok());
    let desc = pool.as_ref().and_then(|p| p.get_message_by_name("registry.Service"));
    let mut record = service.clone();
    if let Some(s) = record.schema.as_mut() {
        s.descriptor_set = Default::default();
    }
    match desc.and_then(|d| prost_reflect::DynamicMessage::decode(d, record.encode_to_vec().as_slice()).ok()) {
        Some(m) => message_to_json(&m),
        None => serde_json::json!({ "name": service.name, "version": service.version }),
    }
}

fn fields(value: &Value, depth: usize, out: &mut String) {
    for v in &value.values {
        let pad = "\t".repeat(depth);
        if v.values.is_empty() {
            let _ = writeln!(out, "{pad}{} {}", v.name, v.r#type);
        } else {
            let _ = writeln!(out, "{pad}{} {} {{", v.name, v.r#type);
            fields(v, depth + 1, out);
            let _ = writeln!(out, "{pad}}}");
        }
    }
}

fn block(value: Option<&Value>) -> String {
    match value {
        Some(v) if !v.values.is_empty() => {
            let mut out = String::from("{\n");
            fields(v, 1, &mut out);
            out.push('}');
            out
        }
        _ => "{}".into(),
    }
}

/// Micro's text rendering of a service's versions.
pub fn render(name: &str, services: &[Service]) -> String {
    let mut out = format!("service  {name}\n");
    for s in services {
        if !s.version.is_empty() {
            let _ = write!(out, "\nversion {}\n", s.version);
        }
        out.push_str("\nID\tAddress\tMetadata\n");
        for n in &s.nodes {
            let mut md: Vec<_> = n.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            md.sort();
            let _ = writeln!(out, "{}\t{}\t{}", n.id, n.address, md.join(","));
        }
    }
    if let Some(first) = services.first() {
        for ep in &first.endpoints {
            let _ = write!(out, "\nEndpoint: {}\n", ep.name);
            let mut md: Vec<_> = ep.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            md.sort();
            if !md.is_empty() {
                let _ = writeln!(out, "Metadata: {}", md.join(","));
            }
            let _ =
                write!(out, "Request: {}\n\nResponse: {}\n", block(ep.request.as_ref()), block(ep.response.as_ref()));
        }
    }
    out
}

/// Runs `micro get`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let GetCommand::Service { name } = args.command;
    let conn = settings.connect_authed().await?;
    let ctx = RpcContext { address: settings.proxy.clone(), endpoint: "Registry.GetService".into() };
    let services = conn.get_service(&name).await.map_err(|s| from_status(&s, &ctx))?;
    let printer = Printer::new(settings.output, Output::Table);
    match printer.format() {
        Output::Table => {
            let text = render(&name, &services);
            printer.line(text.trim_end())?;
        }
        _ => printer.json(&serde_json::Value::Array(services.iter().map(record_json).collect()))?,
    }
    Ok(())
}
