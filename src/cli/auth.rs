//! `micro auth`: accounts and access rules of a namespace — list, create, delete, and change an account's secret.
//!
//! Every subcommand acts in the current namespace (`--namespace` to pick another) with the logged-in account's
//! token, and follows Micro's messages (`Rule created`, `Account created: {…}`, `Invalid access: …`); with `-o json`
//! each prints JSON instead (the account, the rule, `{"id","deleted"}`). Rules are listed by priority, highest
//! first, then by id. A missing subcommand, argument or bad value is bad input (128); no such account or rule 6.

use super::output::Printer;
use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::{Output, Settings};
use clap::Subcommand;
use micro_core::proto::auth::{
    Access, Account, ChangeSecretRequest, CreateRequest, DeleteAccountRequest, DeleteRequest, GenerateRequest,
    ListAccountsRequest, ListRequest, Options, Resource, Rule,
};
use serde_json::{Value, json};

/// Arguments of `micro auth`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro auth list accounts\n  \
    micro auth create account alice --secret s3cret --scopes admin\n  \
    micro auth create rule public-hello --resource 'service:helloworld:*'\n  \
    micro auth list rules -o json --jq '.[].id'")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: AuthCommand,
}

/// `micro auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// List accounts or rules.
    #[command(subcommand)]
    List(ListCommand),
    /// Create an account or a rule.
    #[command(subcommand)]
    Create(CreateCommand),
    /// Delete an account or a rule.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Update an account.
    #[command(subcommand)]
    Update(UpdateCommand),
}

/// `micro auth list` subcommands.
#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// List the accounts of the namespace.
    Accounts,
    /// List the rules of the namespace, highest priority first.
    Rules,
}

/// `micro auth create` subcommands.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create an account: `micro auth create account ID [--secret S] [--scopes a,b]`.
    ///
    /// With `--namespace NS` the account is created in NS, with your token for NS, or else with the token of the
    /// env's own namespace (so a `micro` admin can create a tenant's first admin).
    Account(CreateAccountArgs),
    /// Create a rule: `micro auth create rule ID --resource type:name:endpoint [--scope S]`.
    Rule(CreateRuleArgs),
}

/// Flags of `micro auth create account`.
#[derive(Debug, clap::Args)]
pub struct CreateAccountArgs {
    /// The account's id.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Its secret (password); a random one is generated and shown when not given.
    #[arg(long)]
    pub secret: Option<String>,
    /// Its scopes, comma separated (e.g. `admin`).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Its display name (login works with it too); the id by default.
    #[arg(long)]
    pub name: Option<String>,
    /// Its type.
    #[arg(long = "type", value_enum, default_value_t = AccountType::User)]
    pub account_type: AccountType,
}

/// The type of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccountType {
    /// A person.
    User,
    /// A service.
    Service,
}

/// Flags of `micro auth create rule`.
#[derive(Debug, clap::Args)]
pub struct CreateRuleArgs {
    /// The rule's id.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// What the rule applies to, `type:name:endpoint`, each part possibly `*` (e.g. `service:helloworld:*`).
    #[arg(long, value_name = "TYPE:NAME:ENDPOINT")]
    pub resource: Option<String>,
    /// Who it applies to: none = everyone (public), `*` = any account, else accounts with this scope.
    #[arg(long)]
    pub scope: Option<String>,
    /// `granted` or `denied`.
    #[arg(long, default_value = "granted")]
    pub access: String,
    /// Rules are evaluated by priority, highest first; at equal priority a deny wins.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
}

/// `micro auth delete` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete an account.
    Account {
        /// The account's id.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },
    /// Delete a rule.
    Rule {
        /// The rule's id.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },
}

/// `micro auth update` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Change an account's secret.
    Secret(UpdateSecretArgs),
}

/// Flags of `micro auth update secret`.
#[derive(Debug, clap::Args)]
pub struct UpdateSecretArgs {
    /// The account's id.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// The current secret (admins may leave it out).
    #[arg(long, visible_alias = "old_secret", value_name = "SECRET")]
    pub old_secret: Option<String>,
    /// The new secret.
    #[arg(long, visible_alias = "new_secret", value_name = "SECRET")]
    pub new_secret: Option<String>,
}

/// Parses `type:name:endpoint`.
pub fn parse_resource(text: &str) -> Result<Resource, CliError> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts[..] {
        [kind, name, endpoint] if !kind.is_empty() && !name.is_empty() && !endpoint.is_empty() => {
            Ok(Resource { r#type: kind.to_string(), name: name.to_string(), endpoint: endpoint.to_string() })
        }
        _ => Err(CliError::input("Invalid resource, must be in the format type:name:endpoint")),
    }
}

/// Parses `granted` or `denied`.
pub fn parse_access(text: &str) -> Result<Access, CliError> {
    match text.to_ascii_lowercase().as_str() {
        "granted" => Ok(Access::Granted),
        "denied" => Ok(Access::Denied),
        _ => Err(CliError::input(format!("Invalid access: {text}, must be granted or denied"))),
    }
}

/// Sorts rules by priority, highest first, then by id.
pub fn sort_rules(rules: &mut [Rule]) {
    rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
}

fn resource_text(r: Option<&Resource>) -> String {
    r.map(|r| format!("{}:{}:{}", r.r#type, r.name, r.endpoint)).unwrap_or_default()
}

fn access_name(rule: &Rule) -> &'static str {
    Access::try_from(rule.access).unwrap_or(Access::Unknown).as_str_name()
}

fn rule_json(rule: &Rule) -> Value {
    let r = rule.resource.clone().unwrap_or_default();
    json!({
        "id": rule.id,
        "scope": rule.scope,
        "resource": {"type": r.r#type, "name": r.name, "endpoint": r.endpoint},
        "access": access_name(rule),
        "priority": rule.priority,
    })
}

/// An account as JSON, with its secret only when it has one (at creation).
fn account_json(account: &Account) -> Value {
    let mut v = json!({
        "id": account.id,
        "type": account.r#type,
        "issuer": account.issuer,
        "metadata": account.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "scopes": account.scopes,
    });
    if !account.secret.is_empty() {
        v["secret"] = json!(account.secret);
    }
    v["name"] = json!(account.name);
    v
}

fn metadata_text(account: &Account) -> String {
    if account.metadata.is_empty() {
        return "n/a".into();
    }
    let mut pairs: Vec<_> = account.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

/// One ID argument: Micro's messages when there is none or more than one.
fn one_id(mut ids: Vec<String>, none: &str, many: &str) -> Result<String, CliError> {
    match ids.len() {
        0 => Err(CliError::input(none)),
        1 if !ids[0].is_empty() => Ok(ids.remove(0)),
        1 => Err(CliError::input(none)),
        _ => Err(CliError::input(many)),
    }
}

/// Maps an RPC error: auth and connection errors as everywhere; an error the auth service answered with is
/// `<prefix>: <detail>` as in Micro, with the exit code of its gRPC code ([`from_core_status`]: no such account
/// or rule is 6, a refused value 128, anything else 1).
fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str, prefix: &str) -> CliError {
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, prefix)
}

/// Runs `micro auth`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    let options = || Some(Options { namespace: settings.namespace.clone() });
    match args.command {
        AuthCommand::List(ListCommand::Accounts) => {
            let conn = settings.connect_authed().await?;
            let req = conn.request(ListAccountsRequest { options: options() });
            let mut accounts = conn
                .accounts()
                .list(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Accounts.List", "Error listing accounts"))?
                .into_inner()
                .accounts;
            accounts.sort_by(|a, b| a.id.cmp(&b.id));
            let rows: Vec<Vec<String>> = accounts
                .iter()
                .map(|a| {
                    let scopes = if a.scopes.is_empty() { "n/a".into() } else { a.scopes.join(", ") };
                    vec![a.id.clone(), a.name.clone(), scopes, metadata_text(a)]
                })
                .collect();
            printer.table(&["ID", "NAME", "SCOPES", "METADATA"], &rows, || {
                Value::Array(accounts.iter().map(account_json).collect())
            })?;
        }
        AuthCommand::List(ListCommand::Rules) => {
            let conn = settings.connect_authed().await?;
            let req = conn.request(ListRequest { options: options() });
            let mut rules = conn
                .rules()
                .list(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Rules.List", "Error listing rules"))?
                .into_inner()
                .rules;
            sort_rules(&mut rules);
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    let scope = if r.scope.is_empty() { "<public>".to_string() } else { r.scope.clone() };
                    vec![
                        r.id.clone(),
                        scope,
                        access_name(r).to_string(),
                        resource_text(r.resource.as_ref()),
                        r.priority.to_string(),
                    ]
                })
                .collect();
            printer.table(&["ID", "SCOPE", "ACCESS", "RESOURCE", "PRIORITY"], &rows, || {
                Value::Array(rules.iter().map(rule_json).collect())
            })?;
        }
        AuthCommand::Create(CreateCommand::Account(a)) => {
            let id = one_id(a.ids, "Missing argument: ID", "Too many arguments, expected one argument: ID")?;
            let conn = settings.connect_authed().await?;
            let secret = a.secret.unwrap_or_default();
            let req = conn.request(GenerateRequest {
                id,
                scopes: a.scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                secret: secret.clone(),
                r#type: match a.account_type {
                    AccountType::User => "user".into(),
                    AccountType::Service => "service".into(),
                },
                options: options(),
                name: a.name.unwrap_or_default(),
                ..Default::default()
            });
            let mut account = conn
                .auth()
                .generate(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Auth.Generate", "Error creating account"))?
                .into_inner()
                .account
                .ok_or_else(|| CliError::failure("Error creating account: the server returned no account"))?;
            if account.secret.is_empty() {
                account.secret = secret;
            }
            let json = account_json(&account);
            match printer.format() {
                Output::Table => printer.line(format!("Account created: {json}"))?,
                _ => printer.json(&json)?,
            }
        }
        AuthCommand::Create(CreateCommand::Rule(r)) => {
            let id = one_id(r.ids, "Missing argument: ID", "Too many arguments, expected one argument: ID")?;
            let access = parse_access(&r.access)?;
            let resource = parse_resource(r.resource.as_deref().unwrap_or_default())?;
            let conn = settings.connect_authed().await?;
            let rule = Rule {
                id,
                scope: r.scope.unwrap_or_default(),
                resource: Some(resource),
                access: access as i32,
                priority: r.priority,
            };
            let rule_copy = rule.clone();
            let req = conn.request(CreateRequest { rule: Some(rule), options: options() });
            conn.rules().create(req).await.map_err(|s| rpc_error(settings, &s, "Rules.Create", "Error"))?;
            match printer.format() {
                Output::Table => printer.line("Rule created")?,
                _ => printer.json(&rule_json(&rule_copy))?,
            }
        }
        AuthCommand::Delete(DeleteCommand::Account { ids }) => {
            let id = one_id(ids, "Missing argument: ID", "Too many arguments, expected one argument: ID")?;
            let conn = settings.connect_authed().await?;
            let req = conn.request(DeleteAccountRequest { id: id.clone(), options: options() });
            conn.accounts()
                .delete(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Accounts.Delete", "Error deleting account"))?;
            if printer.format() != Output::Table {
                printer.json(&json!({ "id": id, "deleted": true }))?;
            }
        }
        AuthCommand::Delete(DeleteCommand::Rule { ids }) => {
            let id = one_id(ids, "Expected one argument: ID", "Expected one argument: ID")?;
            let conn = settings.connect_authed().await?;
            let req = conn.request(DeleteRequest { id: id.clone(), options: options() });
            conn.rules().delete(req).await.map_err(|s| rpc_error(settings, &s, "Rules.Delete", "Error"))?;
            match printer.format() {
                Output::Table => printer.line("Rule deleted")?,
                _ => printer.json(&json!({ "id": id, "deleted": true }))?,
            }
        }
        AuthCommand::Update(UpdateCommand::Secret(u)) => {
            let id = one_id(u.ids, "Missing argument: ID", "Too many arguments, expected one argument: ID")?;
            let new_secret =
                u.new_secret.filter(|s| !s.is_empty()).ok_or_else(|| CliError::input("Missing flag: --new-secret"))?;
            let conn = settings.connect_authed().await?;
            let req = conn.request(ChangeSecretRequest {
                id: id.clone(),
                old_secret: u.old_secret.unwrap_or_default(),
                new_secret,
                options: options(),
            });
            conn.accounts().change_secret(req).await.map_err(|s| {
                if s.code() == tonic::Code::Unauthenticated && conn.has_token() {
                    // With a token, UNAUTHENTICATED here is the old secret being wrong: say what the server said.
                    super::login::credential_error(&s, settings, "Accounts.ChangeSecret")
                } else {
                    rpc_error(settings, &s, "Accounts.ChangeSecret", "Error updating account")
                }
            })?;
            match printer.format() {
                Output::Table => printer.line("Account updated")?,
                _ => printer.json(&json!({ "id": id, "updated": true }))?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, priority: i32) -> Rule {
        Rule { id: id.into(), priority, ..Default::default() }
    }

    #[test]
    fn rules_sort_by_priority_then_id() {
        // Micro sorted by `resource + rune(priority)`, which put 10 before 9 only by accident of the rune table.
        let mut rules = vec![rule("b", 0), rule("z", 10), rule("a", 0), rule("m", 9), rule("neg", -5), rule("c", 10)];
        sort_rules(&mut rules);
        let order: Vec<(&str, i32)> = rules.iter().map(|r| (r.id.as_str(), r.priority)).collect();
        assert_eq!(order, [("c", 10), ("z", 10), ("m", 9), ("a", 0), ("b", 0), ("neg", -5)]);
    }

    #[test]
    fn resources_are_type_name_endpoint() {
        let r = parse_resource("service:helloworld:Helloworld.Call").unwrap();
        assert_eq!(
            (r.r#type.as_str(), r.name.as_str(), r.endpoint.as_str()),
            ("service", "helloworld", "Helloworld.Call")
        );
        let r = parse_resource("*:*:*").unwrap();
        assert_eq!((r.r#type.as_str(), r.name.as_str(), r.endpoint.as_str()), ("*", "*", "*"));
        for bad in ["", "service", "service:helloworld", "a:b:c:d", "service::x", ":a:b", "a:b:"] {
            let e = parse_resource(bad).unwrap_err();
            assert_eq!(e.message, "Invalid resource, must be in the format type:name:endpoint", "{bad}");
            assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput);
        }
    }

    #[test]
    fn access_values() {
        assert_eq!(parse_access("granted").unwrap(), Access::Granted);
        assert_eq!(parse_access("DENIED").unwrap(), Access::Denied);
        assert_eq!(parse_access("maybe").unwrap_err().message, "Invalid access: maybe, must be granted or denied");
    }

    #[test]
    fn id_arguments() {
        assert_eq!(one_id(vec!["x".into()], "none", "many").unwrap(), "x");
        assert_eq!(one_id(vec![], "none", "many").unwrap_err().message, "none");
        assert_eq!(one_id(vec!["".into()], "none", "many").unwrap_err().message, "none");
        assert_eq!(one_id(vec!["a".into(), "b".into()], "none", "many").unwrap_err().message, "many");
    }

    #[test]
    fn account_json_has_micros_keys() {
        let mut a = Account {
            id: "bob".into(),
            r#type: "user".into(),
            issuer: "micro".into(),
            name: "bob".into(),
            ..Default::default()
        };
        a.metadata.insert("created".into(), "1".into());
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert!(!keys(&account_json(&a)).contains(&"secret".to_string()));
        a.secret = "s3cret".into();
        let v = account_json(&a);
        assert_eq!(v["secret"], "s3cret");
        assert_eq!(v["metadata"]["created"], "1");
        assert_eq!(metadata_text(&a), "created=1");
    }
}
