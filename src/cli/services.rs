//! `micro services`: the services in the registry, one name per line (sorted, deduplicated).

use super::output::Printer;
use crate::exit::{RpcContext, from_status};
use crate::settings::{Output, Settings};

/// Flags of `micro services`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro services\n  \
    micro services -o json --jq '.[].name'\n  \
    micro services | grep hello")]
pub struct Args {}

/// Runs `micro services`.
pub async fn exec(settings: &Settings, _args: Args) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let ctx = RpcContext { address: settings.proxy.clone(), endpoint: "Registry.ListServices".into() };
    let services = conn.list_services().await.map_err(|s| from_status(&s, &ctx))?;
    let printer = Printer::new(settings.output, Output::Table);
    match printer.format() {
        Output::Table => {
            let mut names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            for name in names {
                printer.line(name)?;
            }
        }
        _ => {
            let records: Vec<serde_json::Value> = services.iter().map(get::record_json).collect();
            printer.json(&serde_json::Value::Array(records))?;
        }
    }
    Ok(())
}

use super::get;
