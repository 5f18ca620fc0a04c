//! `micro login`: exchange an account's id (or name) and password for a token pair, and save it for the current
//! env and namespace.
//!
//! On a terminal, whatever was not given is prompted for (the password without echo). Without one, micro never
//! prompts: a missing credential is an error that says which flag or variable to use, and `--password-stdin` reads
//! the password from a pipe, for CI.

use super::output::Printer;
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{Output, Settings, store_error};
use micro_client::tokens::StoredToken;
use micro_core::env;
use micro_core::proto::auth::{InspectRequest, Options, TokenRequest};
use std::io::BufRead;

/// Flags of `micro login`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro login\n  \
    micro login --username admin --password-stdin <<< \"$PASSWORD\"\n  \
    micro -e prod login --username alice")]
pub struct Args {
    /// The account's id or name; prompted for on a terminal.
    #[arg(long, visible_alias = "email", env = env::MICRO_USERNAME, value_name = "ID")]
    pub username: Option<String>,
    /// The password; prompted for on a terminal. Visible to other processes: prefer --password-stdin.
    #[arg(long, env = env::MICRO_PASSWORD, hide_env_values = true, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Read the password from stdin (its first line).
    #[arg(long)]
    pub password_stdin: bool,
}

/// Asks for a line of text on the terminal (`<prompt>: `).
pub fn prompt_text(prompt: &str) -> Result<String, CliError> {
    dialoguer::Input::<String>::new()
        .with_prompt(prompt)
        .interact_text_on(&prompt_term()?)
        .map_err(|e| CliError::failure(format!("cannot read from the terminal: {e}")))
}

/// Asks for a secret on the terminal (`<prompt>: `), without echo. Empty answers are asked again.
pub fn prompt_secret(prompt: &str) -> Result<String, CliError> {
    dialoguer::Password::new()
        .with_prompt(prompt)
        .report(false)
        .interact_on(&prompt_term()?)
        .map_err(|e| CliError::failure(format!("cannot read from the terminal: {e}")))
}

/// The terminal to prompt on: stderr, or stdout when only stderr is redirected.
fn prompt_term() -> Result<dialoguer::console::Term, CliError> {
    use dialoguer::console::Term;
    [Term::stderr(), Term::stdout()]
        .into_iter()
        .find(Term::is_term)
        .ok_or_else(|| CliError::input("cannot prompt: neither stderr nor stdout is a terminal"))
}

/// Reads the first line of stdin, without its line ending.
pub fn read_stdin_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::input(format!("cannot read the password from stdin: {e}")))?;
    Ok(strip_line_ending(&line).to_string())
}

/// `line` without one trailing `\n` or `\r\n`.
pub fn strip_line_ending(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The text of a gRPC error for the user: the `detail` of a Micro error JSON, else the message itself.
pub fn server_detail(status: &tonic::Status) -> String {
    crate::exit::detail(status.message())
}

/// Maps an error of a call that checked credentials: a refusal shows the server's own message (`Invalid
/// credentials`) with exit 2; anything else as every other call.
pub fn credential_error(status: &tonic::Status, settings: &Settings, endpoint: &str) -> CliError {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::ResourceExhausted => {
            let detail = server_detail(status);
            let detail = if detail.is_empty() { "Not authorized to perform this request".into() } else { detail };
            CliError::new(ExitStatus::Unauthorized, detail)
        }
        _ => from_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }),
    }
}

/// Runs `micro login`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let tty = settings.stdin_tty;
    let username = match args.username.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if tty && !args.password_stdin => prompt_text("Enter username")?,
        None => {
            let why = if args.password_stdin {
                "--password-stdin reads stdin, so micro cannot prompt for it"
            } else {
                "stdin is not a terminal, so micro cannot prompt for it"
            };
            return Err(CliError::input(format!(
                "No username given and {why}: pass --username (or set {})",
                env::MICRO_USERNAME
            ))
            .into());
        }
    };
    let password = if args.password_stdin {
        read_stdin_line()?
    } else {
        match args.password.filter(|p| !p.is_empty()) {
            Some(p) => p,
            None if tty => prompt_secret("Enter password")?,
            None => {
                return Err(CliError::input(format!(
                    "No password given and stdin is not a terminal, so micro cannot prompt for it: pipe it in with \
                     --password-stdin, pass --password, or set {}",
                    env::MICRO_PASSWORD
                ))
                .into());
            }
        }
    };
    if password.is_empty() {
        return Err(CliError::input("The password is empty").into());
    }

    log_in(settings, username, password).await?;
    let printer = Printer::new(settings.output, Output::Table);
    match printer.format() {
        Output::Table => printer.line("Successfully logged in.")?,
        _ => {
            let account = settings.stored_token()?.map(|(_, token)| token.account_id);
            printer.json(&serde_json::json!({
                "account": account, "env": settings.env, "namespace": settings.namespace,
            }))?
        }
    }
    Ok(())
}

/// Logs in to the current env and namespace as `username` and saves the token: a failed login leaves the saved
/// token alone.
pub(crate) async fn log_in(settings: &Settings, username: String, password: String) -> anyhow::Result<()> {
    let conn = settings.connect()?;
    let options = || Some(Options { namespace: settings.namespace.clone() });
    let req =
        conn.request(TokenRequest { id: username.clone(), secret: password, options: options(), ..Default::default() });
    let token = conn
        .auth()
        .token(req)
        .await
        .map_err(|s| credential_error(&s, settings, "Auth.Token"))?
        .into_inner()
        .token
        .filter(|t| !t.access_token.is_empty())
        .ok_or_else(|| CliError::failure("The server answered the login with no token"))?;

    // The username may be the account's name: the store keeps its id.
    let authed = conn.clone().with_token(Some(&token.access_token));
    let inspect = authed.request(InspectRequest { token: token.access_token.clone(), options: options() });
    let account_id = match authed.auth().inspect(inspect).await {
        Ok(resp) => resp.into_inner().account.map(|a| a.id).filter(|id| !id.is_empty()).unwrap_or(username),
        Err(_) => username,
    };
    settings
        .tokens()
        .put(
            &settings.env,
            &settings.namespace,
            StoredToken {
                account_id,
                access_token: token.access_token,
                refresh_token: token.refresh_token,
                created: token.created,
                expiry: token.expiry,
            },
        )
        .map_err(store_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_stripped_once() {
        assert_eq!(strip_line_ending("secret\n"), "secret");
        assert_eq!(strip_line_ending("secret\r\n"), "secret");
        assert_eq!(strip_line_ending("secret"), "secret");
        assert_eq!(strip_line_ending("sec ret \n\n"), "sec ret \n");
    }

    #[test]
    fn details_of_micro_errors() {
        let s = tonic::Status::unauthenticated("Invalid credentials");
        assert_eq!(server_detail(&s), "Invalid credentials");
        let s = tonic::Status::unauthenticated(r#"{"id":"auth","code":401,"detail":"Invalid credentials"}"#);
        assert_eq!(server_detail(&s), "Invalid credentials");
    }
}
