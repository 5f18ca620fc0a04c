//! `micro config`: get, set and delete config values by dot path.
//!
//! As in Micro: the config of the current namespace is one JSON document; `set KEY VALUE` parses VALUE as JSON
//! when it is valid JSON (`42`, `true`, `{"a":1}`, `"x"`) and stores it as a string otherwise, and prints
//! nothing; setting an object merges it leaf by leaf, setting anything else replaces the subtree. `get KEY` prints
//! a string without quotes and anything else as compact JSON with sorted keys; secret leaves (`set --secret`)
//! print as `[secret]` unless `get --secret`. A missing key is `Not found` (exit 6); a blank key is
//! `key cannot be blank` (exit 128); `-o json` prints the value as a JSON document. Dot paths (`key.subkey`) address nested values. Reading needs an account of
//! the namespace; changing it and reading secrets need an administrator.

use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::Settings;
use clap::Subcommand;
use micro_core::proto::config::{
    DeleteRequest, GetRequest, Options, SetRequest, Value as ValueMsg, config_client::ConfigClient,
};
use serde_json::Value;

/// Arguments of `micro config`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro config set db.host 10.0.0.5\n  \
    micro config get db\n  \
    micro config set --secret db.password s3cret\n  \
    micro config del db.host")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `micro config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the value at KEY (a dot path).
    Get {
        /// The key.
        #[arg(value_name = "KEY")]
        key: Option<String>,
        /// Show secret values instead of `[secret]`.
        #[arg(short, long)]
        secret: bool,
    },
    /// Set KEY to VALUE (JSON, or else a string); an object merges into what is there.
    #[command(allow_negative_numbers = true)]
    Set {
        /// The key, then the value (words are joined with spaces).
        #[arg(value_name = "KEY VALUE", required = true)]
        args: Vec<String>,
        /// Encrypt the value at rest; it reads back as `[secret]` unless `get --secret`.
        #[arg(short, long)]
        secret: bool,
    },
    /// Delete the value at KEY.
    #[command(visible_alias = "delete")]
    Del {
        /// The key.
        #[arg(value_name = "KEY")]
        key: Option<String>,
    },
}

/// What `config set` sends for VALUE: the JSON text itself if VALUE is valid JSON, else VALUE as a JSON string.
pub fn value_json(value: &str) -> String {
    match serde_json::from_str::<Value>(value) {
        Ok(v) => v.to_string(),
        Err(_) => Value::String(value.to_string()).to_string(),
    }
}

/// How `config get` prints a value: a string without quotes, anything else as compact JSON (keys already sorted
/// by the server).
pub fn display(data: &str) -> String {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => data.to_string(),
    }
}

fn key_of(key: Option<&str>) -> Result<String, CliError> {
    key.filter(|k| !k.trim().is_empty()).map(str::to_string).ok_or_else(|| CliError::input("key cannot be blank"))
}

/// Maps an RPC error: `not found` is Micro's `Not found` (exit 6); auth and connection errors as everywhere; other
/// errors of the config service are its message, exit 128 for a refused value (a bad path), else 1.
fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str) -> CliError {
    if status.code() == tonic::Code::NotFound && crate::exit::detail(status.message()) == "not found" {
        return CliError::missing("Not found");
    }
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, "")
}

/// Runs `micro config`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let printer = super::output::Printer::new(settings.output, crate::settings::Output::Table);
    match args.command {
        ConfigCommand::Get { key, secret } => {
            let path = key_of(key.as_deref())?;
            let conn = settings.connect_authed().await?;
            let req = conn.request(GetRequest {
                namespace: settings.namespace.clone(),
                path,
                options: Some(Options { secret }),
            });
            let value = ConfigClient::new(conn.channel())
                .get(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Config.Get"))?
                .into_inner()
                .value
                .unwrap_or_default();
            if value.data.is_empty() || value.data == "null" {
                return Err(CliError::missing("Not found").into());
            }
            match (printer.format(), serde_json::from_str::<Value>(&value.data)) {
                (crate::settings::Output::Table, _) | (_, Err(_)) => printer.line(display(&value.data))?,
                (_, Ok(json)) => printer.json(&json)?,
            }
        }
        ConfigCommand::Set { args, secret } => {
            let path = key_of(args.first().map(String::as_str))?;
            if args.len() < 2 {
                return Err(CliError::input("Value arg is required: micro config set KEY VALUE").into());
            }
            let data = value_json(&args[1..].join(" "));
            let conn = settings.connect_authed().await?;
            let req = conn.request(SetRequest {
                namespace: settings.namespace.clone(),
                path,
                value: Some(ValueMsg { data, format: "json".into() }),
                options: Some(Options { secret }),
            });
            ConfigClient::new(conn.channel()).set(req).await.map_err(|s| rpc_error(settings, &s, "Config.Set"))?;
        }
        ConfigCommand::Del { key } => {
            let path = key_of(key.as_deref())?;
            let conn = settings.connect_authed().await?;
            let req = conn.request(DeleteRequest { namespace: settings.namespace.clone(), path });
            ConfigClient::new(conn.channel())
                .delete(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Config.Delete"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_or_strings() {
        assert_eq!(value_json("42"), "42");
        assert_eq!(value_json("true"), "true");
        assert_eq!(value_json(r#"{"a": 1}"#), r#"{"a":1}"#);
        assert_eq!(value_json(r#""x""#), r#""x""#);
        assert_eq!(value_json("hello world"), r#""hello world""#);
        assert_eq!(value_json("{not json"), r#""{not json""#);
    }

    #[test]
    fn display_as_micro() {
        assert_eq!(display(r#""x""#), "x");
        assert_eq!(display(r#"{"a":1,"b":{"b1":2,"b2":2.2}}"#), r#"{"a":1,"b":{"b1":2,"b2":2.2}}"#);
        assert_eq!(display("<a>&"), "<a>&");
        assert_eq!(display(r#""<b>""#), "<b>");
        assert!(key_of(Some("  ")).is_err());
        assert_eq!(key_of(None).unwrap_err().message, "key cannot be blank");
    }
}
