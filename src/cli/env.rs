//! `micro env`: list, get, set, add and delete envs (named micro servers).

use crate::exit::CliError;
use crate::settings::{EnvEntry, LOCAL_ENV, Settings};
use clap::Subcommand;

/// Arguments of `micro env`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do; lists the envs when absent.
    #[command(subcommand)]
    pub command: Option<EnvCommand>,
}

/// `micro env` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// List envs; the current one is marked with `*`.
    List,
    /// Print the current env.
    Get,
    /// Make NAME the current env.
    Set {
        /// The env.
        name: String,
    },
    /// Add an env (or replace one).
    Add {
        /// The env's name.
        name: String,
        /// Its proxy address, `host:port`.
        address: String,
        /// A description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete an env.
    Del {
        /// The env.
        name: String,
    },
}

fn missing(name: &str) -> CliError {
    CliError::input(format!("Environment '{name}' does not exist"))
}

/// Runs `micro env`.
pub fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let dirs = &settings.dirs;
    let mut config = dirs.load()?;
    let printer = super::output::Printer::new(settings.output, crate::settings::Output::Table);
    match args.command.unwrap_or(EnvCommand::List) {
        EnvCommand::List => {
            let envs = config.all_envs();
            let rows: Vec<Vec<String>> = envs
                .iter()
                .map(|(name, e)| {
                    let mark = if *name == settings.env { "*" } else { " " };
                    vec![format!("{mark} {name}"), e.proxy_address.clone(), e.description.clone()]
                })
                .collect();
            printer.table(&["  ENV", "PROXY", "DESCRIPTION"], &rows, || {
                serde_json::json!(
                    envs.iter()
                        .map(|(name, e)| serde_json::json!({
                            "name": name, "proxy_address": e.proxy_address,
                            "description": e.description, "current": *name == settings.env,
                        }))
                        .collect::<Vec<_>>()
                )
            })?;
        }
        EnvCommand::Get => printer.line(&settings.env)?,
        EnvCommand::Set { name } => {
            if !config.all_envs().contains_key(&name) {
                return Err(missing(&name).into());
            }
            config.env = Some(name);
            dirs.save(&config)?;
        }
        EnvCommand::Add { name, address, description } => {
            if name == LOCAL_ENV {
                return Err(CliError::input("Environment 'local' is built in and cannot be replaced").into());
            }
            if name.trim().is_empty() || address.trim().is_empty() {
                return Err(CliError::input("An env needs a name and an address: micro env add NAME HOST:PORT").into());
            }
            crate::client::Connection::new(&address, crate::DEFAULT_NAMESPACE)
                .map_err(|e| CliError::input(e.to_string()))?;
            config.envs.insert(name, EnvEntry { proxy_address: address, description });
            dirs.save(&config)?;
        }
        EnvCommand::Del { name } => {
            if name == LOCAL_ENV {
                return Err(CliError::input("Environment 'local' is built in and cannot be deleted").into());
            }
            if !config.envs.contains_key(&name) {
                return Err(missing(&name).into());
            }
            if config.current() == name {
                return Err(CliError::input(format!(
                    "Environment '{name}' is your current environment. Before deleting it, please change your current environment."
                ))
                .into());
            }
            config.envs.remove(&name);
            dirs.save(&config)?;
        }
    }
    Ok(())
}
