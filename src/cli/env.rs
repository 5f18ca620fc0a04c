//! `micro env`: list, get, set, add and delete envs (named micro servers).
//!
//! `micro env add NAME https://host:port --ca-cert FILE [--client-cert FILE --client-key FILE]` stores the contents of
//! the files with the env (in `config.json`, mode 0600), so the env keeps working when they move; add it again to
//! change them. `--plaintext` lets passwords and tokens go to a non-loopback `http://` address, and says so loudly.

use crate::exit::CliError;
use crate::settings::{EnvEntry, LOCAL_ENV, Settings};
use clap::Subcommand;
use micro_client::tls::{ClientTls, Target};

/// Arguments of `micro env`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro env\n  \
    micro env add prod https://micro.example.com:8443 --ca-cert ca.pem\n  \
    micro env set prod\n  \
    micro -e prod services")]
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
        #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::env_candidates))]
        name: String,
    },
    /// Add an env (or replace one). With `--ca-cert`, `--client-cert` and `--client-key` (global flags), the files'
    /// contents are stored with it.
    Add {
        /// The env's name.
        name: String,
        /// Its proxy address: `https://host:port` (TLS) or `host:port` (plaintext).
        address: String,
        /// A description.
        #[arg(long, default_value = "")]
        description: String,
        /// Allow passwords and tokens to go to this plaintext, non-loopback address. Anyone on the network path can
        /// read them: use it on trusted networks only.
        #[arg(long)]
        plaintext: bool,
    },
    /// Delete an env.
    Del {
        /// The env.
        #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::env_candidates))]
        name: String,
    },
}

/// The env to store for `micro env add`: the address checked, and the TLS files only for a TLS address.
pub fn new_entry(address: String, description: String, plaintext: bool, tls: &ClientTls) -> Result<EnvEntry, CliError> {
    let target = Target::parse(&address)
        .map_err(|reason| CliError::input(format!("invalid proxy address {address:?}: {reason}")))?;
    let has_tls_files = tls.ca_pem.is_some() || tls.identity.is_some();
    if target.tls && plaintext {
        return Err(CliError::input(format!(
            "--plaintext is for http:// addresses; {address} is TLS (https:// or port 443)"
        )));
    }
    if !target.tls && has_tls_files {
        return Err(CliError::input(format!(
            "--ca-cert, --client-cert and --client-key (or MICRO_CA_CERT, MICRO_CLIENT_CERT, MICRO_CLIENT_KEY) are for \
             TLS addresses; {address} is plaintext: use https://{}",
            target.authority
        )));
    }
    let (client_cert, client_key) = tls.identity.clone().unzip();
    Ok(EnvEntry {
        proxy_address: address,
        description,
        ca_cert: tls.ca_pem.clone(),
        client_cert,
        client_key,
        plaintext,
    })
}

/// What `micro env add … --plaintext` says, once, for a non-loopback address.
pub fn plaintext_warning(name: &str, address: &str) -> String {
    format!(
        "WARNING: env {name} sends passwords and tokens IN PLAINTEXT to {address}. Anyone on the network path can \
         read them and act as you. Use this only on a network you trust; prefer a server with TLS and an https:// \
         address."
    )
}

fn missing(name: &str) -> CliError {
    CliError::input(format!("Environment '{name}' does not exist"))
}

/// An env as `-o json` prints it (`micro env`, `micro env get`).
fn env_json(name: &str, e: &EnvEntry, settings: &Settings) -> serde_json::Value {
    serde_json::json!({
        "name": name, "proxy_address": e.proxy_address,
        "description": e.description, "current": name == settings.env,
        "security": e.security(), "ca_cert": e.ca_cert.is_some(),
        "client_cert": e.client_cert.is_some(), "plaintext": e.plaintext,
    })
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
                    vec![format!("{mark} {name}"), e.proxy_address.clone(), e.security(), e.description.clone()]
                })
                .collect();
            printer.table(&["  ENV", "PROXY", "SECURITY", "DESCRIPTION"], &rows, || {
                serde_json::json!(envs.iter().map(|(name, e)| env_json(name, e, settings)).collect::<Vec<_>>())
            })?;
        }
        EnvCommand::Get => match printer.format() {
            crate::settings::Output::Table => printer.line(&settings.env)?,
            _ => {
                let entry = config.all_envs().remove(&settings.env).unwrap_or_default();
                printer.json(&env_json(&settings.env, &entry, settings))?
            }
        },
        EnvCommand::Set { name } => {
            if !config.all_envs().contains_key(&name) {
                return Err(missing(&name).into());
            }
            config.env = Some(name);
            dirs.save(&config)?;
        }
        EnvCommand::Add { name, address, description, plaintext } => {
            if name == LOCAL_ENV {
                return Err(CliError::input("Environment 'local' is built in and cannot be replaced").into());
            }
            if name.trim().is_empty() || address.trim().is_empty() {
                return Err(CliError::input("An env needs a name and an address: micro env add NAME HOST:PORT").into());
            }
            let entry = new_entry(address, description, plaintext, &settings.tls_flags)?;
            if entry.plaintext && !Target::parse(&entry.proxy_address).is_ok_and(|t| t.is_loopback()) {
                printer.message(plaintext_warning(&name, &entry.proxy_address));
            }
            config.envs.insert(name, entry);
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

#[cfg(test)]
mod tests {
    use super::*;
    use micro_client::tls::testing::Ca;

    #[test]
    fn added_envs_store_tls_files_only_for_tls_addresses() {
        let ca = Ca::new();
        let (cert, key) = ca.leaf(&["client"], false);
        let tls = ClientTls { ca_pem: Some(ca.pem()), identity: Some((cert.clone(), key.clone())), skip_verify: false };
        let entry = new_entry("https://micro.example.com".into(), String::new(), false, &tls).unwrap();
        assert_eq!(entry.ca_cert, Some(ca.pem()));
        assert_eq!((entry.client_cert, entry.client_key), (Some(cert), Some(key)));
        let e = new_entry("10.0.0.5:8081".into(), String::new(), false, &tls).unwrap_err();
        assert!(e.message.contains("use https://10.0.0.5:8081"), "{}", e.message);
        let e = new_entry("https://x:1".into(), String::new(), true, &ClientTls::default()).unwrap_err();
        assert!(e.message.contains("--plaintext is for http:// addresses"), "{}", e.message);
        let e = new_entry("gopher://x:1".into(), String::new(), false, &ClientTls::default()).unwrap_err();
        assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput);
        let entry = new_entry("http://10.0.0.5:8081".into(), String::new(), true, &ClientTls::default()).unwrap();
        assert_eq!(entry.security(), "plaintext (allowed)");
        assert!(plaintext_warning("lan", "http://10.0.0.5:8081").contains("IN PLAINTEXT to http://10.0.0.5:8081"));
    }

    #[test]
    fn the_security_column_says_how_an_env_is_reached() {
        let ca = Ca::new();
        let with_ca = EnvEntry { ca_cert: Some(ca.pem()), ..EnvEntry::new("https://x:1", "") };
        assert_eq!(with_ca.security(), "TLS (own CA)");
        assert_eq!(EnvEntry::new("x:443", "").security(), "TLS");
        assert_eq!(EnvEntry::new("127.0.0.1:8081", "").security(), "plaintext");
    }
}
