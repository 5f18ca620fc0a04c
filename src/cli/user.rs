//! `micro user`: who is logged in, their token, the current namespace, the user's own settings, and changing the
//! password.
//!
//! `micro user` prints the account's name as the server sees it (`Auth.Inspect` of the current token);
//! `user token` prints the access token (refreshed first if it is about to expire), for scripts such as
//! `curl -H "Authorization: Bearer $(micro user token)"`; `user namespace [set NS]` reads or saves the env's
//! namespace; `user config` is a string map in the config file; `user set password` calls
//! `Accounts.ChangeSecret`. With `-o json` each prints a JSON object instead: the account, `{"token"}`,
//! `{"namespace"}`, the settings, `{"key","value"}`.

use super::login::{credential_error, prompt_secret};
use super::output::Printer;
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{ConfigFile, Output, Settings};
use anyhow::Context as _;
use clap::Subcommand;
use micro_core::proto::auth::{Account, ChangeSecretRequest, InspectRequest, Options};
use serde_json::json;

/// Arguments of `micro user`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro user\n  \
    curl http://127.0.0.1:8080/helloworld/call -H \"Authorization: Bearer $(micro user token)\" -d '{}'\n  \
    micro user namespace set foo\n  \
    micro user set password")]
pub struct Args {
    /// What to do; prints the logged-in account's name when absent.
    #[command(subcommand)]
    pub command: Option<UserCommand>,
}

/// `micro user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Print the current access token.
    Token,
    /// Print the current namespace, or save one for the env.
    Namespace(NamespaceArgs),
    /// Get, set or delete a setting; prints a summary when no subcommand is given.
    Config(ConfigArgs),
    /// Change a setting of your account.
    Set(SetArgs),
}

/// Arguments of `micro user namespace`.
#[derive(Debug, clap::Args)]
pub struct NamespaceArgs {
    /// `set NS` saves NS as the namespace of the current env.
    #[command(subcommand)]
    pub command: Option<NamespaceCommand>,
}

/// `micro user namespace` subcommands.
#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Use NS in the current env from now on.
    Set {
        /// The namespace.
        namespace: Option<String>,
    },
}

/// Arguments of `micro user config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<ConfigCommand>,
}

/// `micro user config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the value of KEY (an empty line when unset).
    Get {
        /// The key.
        key: Option<String>,
    },
    /// Set KEY to VALUE.
    Set {
        /// The key.
        key: Option<String>,
        /// The value.
        value: Option<String>,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: Option<String>,
    },
}

/// Arguments of `micro user set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// What to change.
    #[command(subcommand)]
    pub command: SetCommand,
}

/// `micro user set` subcommands.
#[derive(Debug, Subcommand)]
pub enum SetCommand {
    /// Change your password; prompted for on a terminal.
    Password(PasswordArgs),
}

/// Flags of `micro user set password`.
#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// The account; the logged-in one by default.
    #[arg(long, visible_alias = "username", value_name = "ID")]
    pub email: Option<String>,
    /// The current password.
    #[arg(long, value_name = "PASSWORD")]
    pub old_password: Option<String>,
    /// The new password.
    #[arg(long, value_name = "PASSWORD")]
    pub new_password: Option<String>,
}

fn not_logged_in() -> CliError {
    CliError::failure("You are not logged in")
}

/// The account of the current token, as the server sees it. Not logged in, or a token the server refuses, is
/// `You are not logged in`.
pub async fn current_account(settings: &Settings) -> Result<Account, CliError> {
    let token = settings.access_token().await?.ok_or_else(not_logged_in)?;
    let conn = settings.connect()?.with_token(Some(&token));
    let req = conn.request(InspectRequest { token, options: None });
    match conn.auth().inspect(req).await {
        Ok(resp) => resp.into_inner().account.ok_or_else(not_logged_in),
        Err(s) if s.code() == tonic::Code::Unauthenticated => Err(not_logged_in()),
        Err(s) => {
            Err(from_status(&s, &RpcContext { address: settings.proxy.clone(), endpoint: "Auth.Inspect".into() }))
        }
    }
}

/// Runs `micro user`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    match args.command {
        None => {
            let account = current_account(settings).await?;
            match printer.format() {
                Output::Table => printer.line(if account.name.is_empty() { &account.id } else { &account.name })?,
                _ => printer.json(&json!({
                    "id": account.id,
                    "name": account.name,
                    "type": account.r#type,
                    "issuer": account.issuer,
                    "scopes": account.scopes,
                    "metadata": account.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
                }))?,
            }
        }
        Some(UserCommand::Token) => {
            let token = settings.access_token().await?.ok_or_else(not_logged_in)?;
            match printer.format() {
                Output::Table => printer.line(token)?,
                _ => printer.json(&json!({ "token": token }))?,
            }
        }
        Some(UserCommand::Namespace(NamespaceArgs { command: None })) => match printer.format() {
            Output::Table => printer.line(&settings.namespace)?,
            _ => printer.json(&json!({ "namespace": settings.namespace }))?,
        },
        Some(UserCommand::Namespace(NamespaceArgs { command: Some(NamespaceCommand::Set { namespace }) })) => {
            let namespace = namespace
                .filter(|ns| !ns.trim().is_empty())
                .ok_or_else(|| CliError::input("No namespace specified"))?;
            let mut config = settings.dirs.load()?;
            config.namespaces.insert(settings.env.clone(), namespace);
            settings.dirs.save(&config)?;
        }
        Some(UserCommand::Config(ConfigArgs { command })) => config(settings, &printer, command)?,
        Some(UserCommand::Set(SetArgs { command: SetCommand::Password(args) })) => {
            set_password(settings, args).await?;
        }
    }
    Ok(())
}

/// The config key that Micro's `user config` used for the namespace of `env`: `namespaces.<env>.current`.
fn namespace_key(key: &str) -> Option<&str> {
    key.strip_prefix("namespaces.")?.strip_suffix(".current").filter(|env| !env.is_empty())
}

/// The value of `key` (Micro's key for an env's namespace reads the saved namespace).
fn config_get<'a>(config: &'a ConfigFile, key: &str) -> Option<&'a str> {
    match namespace_key(key) {
        Some(env) => config.namespace(env),
        None => config.user_config.get(key).map(String::as_str),
    }
}

/// Sets `key` to `value`, or deletes it when `value` is `None`.
fn config_put(config: &mut ConfigFile, key: &str, value: Option<String>) {
    let (map, key) = match namespace_key(key) {
        Some(env) => (&mut config.namespaces, env),
        None => (&mut config.user_config, key),
    };
    match value {
        Some(v) => map.insert(key.to_string(), v),
        None => map.remove(key),
    };
}

fn config(settings: &Settings, printer: &Printer, command: Option<ConfigCommand>) -> anyhow::Result<()> {
    let dirs = &settings.dirs;
    let mut config = dirs.load()?;
    let key =
        |k: Option<String>| k.filter(|k| !k.trim().is_empty()).ok_or_else(|| CliError::input("key cannot be blank"));
    match command {
        None => {
            let user = settings.stored_token()?.map(|(_, t)| t.account_id);
            let git_base = config
                .user_config
                .get(&format!("git.{}.baseurl", settings.env))
                .or_else(|| config.user_config.get("git.baseurl"));
            let credentials =
                config.user_config.keys().any(|k| k == "git.credentials" || k.starts_with("git.credentials."));
            if printer.format() != Output::Table {
                printer.json(&json!({
                    "user": user,
                    "namespace": settings.namespace,
                    "environment": settings.env,
                    "git.credentials": credentials.then_some("[hidden]"),
                    "git.baseurl": git_base,
                }))?;
                return Ok(());
            }
            let lines = [
                format!("user: {}", user.as_deref().unwrap_or("n/a")),
                format!("namespace: {}", settings.namespace),
                format!("environment: {}", settings.env),
                format!("git.credentials: {}", if credentials { "[hidden]" } else { "n/a" }),
                format!("git.baseurl: {}", git_base.map_or("n/a", String::as_str)),
            ];
            for line in lines {
                printer.line(line)?;
            }
        }
        Some(ConfigCommand::Get { key: k }) => {
            let k = key(k)?;
            match printer.format() {
                Output::Table => printer.line(config_get(&config, &k).unwrap_or(""))?,
                _ => printer.json(&json!({ "key": k, "value": config_get(&config, &k) }))?,
            }
        }
        Some(ConfigCommand::Set { key: k, value }) => {
            let k = key(k)?;
            config_put(&mut config, &k, Some(value.unwrap_or_default()));
            dirs.save(&config)?;
        }
        Some(ConfigCommand::Delete { key: k }) => {
            let k = key(k)?;
            config_put(&mut config, &k, None);
            dirs.save(&config)?;
        }
    }
    Ok(())
}

async fn set_password(settings: &Settings, args: PasswordArgs) -> anyhow::Result<()> {
    let tty = settings.stdin_tty;
    let (id, namespace, own) = match args.email.filter(|e| !e.is_empty()) {
        Some(id) => (id, settings.namespace.clone(), false),
        None => {
            let account = current_account(settings).await?;
            let ns = if account.issuer.is_empty() { settings.namespace.clone() } else { account.issuer };
            (account.id, ns, true)
        }
    };
    let missing = |what: &str, flag: &str| {
        CliError::input(format!(
            "No {what} given and stdin is not a terminal, so micro cannot prompt for it: pass --{flag}"
        ))
    };
    let old = match args.old_password {
        Some(p) => p,
        None if tty => prompt_secret("Enter current password")?,
        None => return Err(missing("current password", "old-password").into()),
    };
    let new = match args.new_password.filter(|p| !p.is_empty()) {
        Some(p) => p,
        None if tty => loop {
            let first = prompt_secret("Enter a new password")?;
            let second = prompt_secret("Verify your password")?;
            if first == second {
                break first;
            }
            eprintln!("Passwords do not match. Please try again.");
        },
        None => return Err(missing("new password", "new-password").into()),
    };
    let conn = settings.connect_authed().await?;
    let req = conn.request(ChangeSecretRequest {
        id: id.clone(),
        old_secret: old,
        new_secret: new.clone(),
        options: Some(Options { namespace: namespace.clone() }),
    });
    match conn.accounts().change_secret(req).await {
        // The change ended every token of the account, this CLI's too: log in again with the new password.
        Ok(_) if own && namespace == settings.namespace => {
            super::login::log_in(settings, id, new).await.context("the password changed, but logging in again failed")
        }
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::Unauthenticated && !conn.has_token() => Err(not_logged_in().into()),
        Err(s) => {
            let e = credential_error(&s, settings, "Accounts.ChangeSecret");
            Err(if e.status == ExitStatus::ServiceError { CliError::failure(e.message) } else { e }.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_and_micro_namespace_keys() {
        let mut config = ConfigFile::default();
        config_put(&mut config, "git.baseurl", Some("https://example.com".into()));
        assert_eq!(config_get(&config, "git.baseurl"), Some("https://example.com"));
        config_put(&mut config, "namespaces.local.current", Some("foo".into()));
        assert_eq!(config.namespace("local"), Some("foo"));
        assert_eq!(config_get(&config, "namespaces.local.current"), Some("foo"));
        assert!(!config.user_config.contains_key("namespaces.local.current"));
        config_put(&mut config, "namespaces.local.current", None);
        assert_eq!(config.namespace("local"), None);
        config_put(&mut config, "git.baseurl", None);
        assert_eq!(config_get(&config, "git.baseurl"), None);
        assert_eq!(namespace_key("namespaces..current"), None);
        assert_eq!(namespace_key("namespaces.local.all"), None);
    }
}
