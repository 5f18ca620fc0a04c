//! The `micro` command line: built-in commands, one module each, and dynamic service commands built at run time.
//!
//! [`command`] is the clap tree of built-ins (also used by completion and the man pages); [`parse`] reads the
//! command line with it and [`exec`] runs the parsed command. A word that is not a built-in command is a service
//! name: [`dynamic`] builds its subcommands and flags from the service's protobuf schema, unless the word is a typo
//! of a built-in ([`suggest`]), which is reported without asking the server.

pub mod auth;
pub mod broker;
pub mod call;
pub mod completion;
pub mod config;
pub mod describe;
pub mod direct;
pub mod dynamic;
pub mod env;
pub mod events;
pub mod get;
pub mod health;
pub mod interactive;
pub mod kill;
pub mod login;
pub mod logout;
pub mod logs;
pub mod man;
pub mod mcp;
pub mod new;
pub mod output;
pub mod run;
pub mod server;
pub mod services;
pub mod stats;
pub mod status;
pub mod store;
pub mod suggest;
pub mod tasks;
pub mod user;
pub mod version;

use crate::exit::CliError;
use crate::settings::{GlobalArgs, Output, Settings};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;

/// The help's closing lines, after the commands and options (`micro -h`).
const AFTER_HELP: &str = "\
Services are commands as well: run `micro services` to list them and `micro <service> --help` to see their endpoints.
`micro --help` shows every global option (TLS among them) and the exit codes.

Examples:
  micro services
  micro helloworld --name Jane
  micro call helloworld Helloworld.Call '{\"name\": \"Jane\"}'
  micro store list -o json --jq '.[]'";

/// The `micro` command line.
#[derive(Debug, Parser)]
#[command(
    name = "micro",
    version = micro_core::VERSION,
    long_version = version::LONG_VERSION,
    about = "A framework for cloud native development",
    long_about = "A framework for cloud native development.\n\nEvery service in the registry is a command too: `micro helloworld call --name=Jane`.\nUse `micro [command] --help` to see command specific help.",
    allow_external_subcommands = true,
    disable_help_subcommand = true,
    after_help = AFTER_HELP,
)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Output format.
    #[arg(short = 'o', long, global = true, env = micro_core::env::MICRO_OUTPUT, value_enum, help_heading = GLOBAL)]
    pub output: Option<Output>,
    /// Select from the JSON output with a jq expression.
    ///
    /// As `gh --jq`: each result prints on its own, strings raw (as `jq -r`), anything else as JSON. Implies
    /// `-o json` (`-o raw` prints each result on one line). A bad expression exits with 128.
    #[arg(long, global = true, value_name = "EXPR", help_heading = GLOBAL)]
    pub jq: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The heading of the options every command takes.
pub const GLOBAL: &str = "Global options";

/// The built-in commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the micro server.
    Server(server::Args),
    /// Get or set the micro environment (which server the CLI talks to).
    Env(env::Args),
    /// List services in the registry.
    Services(services::Args),
    /// Call a service endpoint with a JSON request.
    #[command(after_help = "Examples:\n  micro call helloworld Helloworld.Call '{\"name\": \"Jane\"}'\n  \
        micro call helloworld Helloworld.Call '{\"name\": \"Jane\"}' --jq .msg\n  \
        micro call --timeout 30s -m trace=1 helloworld Helloworld.Call '{}'")]
    Call(call::Args),
    /// Call a streaming endpoint: one JSON document per response message.
    #[command(after_help = "Examples:\n  micro stream helloworld Helloworld.Stream '{\"count\": 3}'\n  \
        micro stream -o raw helloworld Helloworld.Stream '{\"count\": 3}' --jq .count\n  \
        echo '{\"text\": \"a\"}' | micro stream echo Echo.Collect")]
    Stream(call::Args),
    /// Show a service's schema in proto syntax: its gRPC services, an endpoint, or a message with its fields.
    Describe(describe::Args),
    /// Get a resource from the registry.
    Get(get::Args),
    /// Check the health of each node of a service.
    Health(health::Args),
    /// Show each node's process statistics: started, uptime, memory, threads.
    Stats(stats::Args),
    /// Log in to the current env and namespace; the token is saved and refreshed automatically.
    Login(login::Args),
    /// Log out of the current env and namespace.
    Logout(logout::Args),
    /// Print the logged-in account; manage its token, namespace, settings and password.
    User(user::Args),
    /// Manage accounts and access rules.
    Auth(auth::Args),
    /// Build and run a service from a local directory, a git URL or a command.
    Run(run::Args),
    /// Rebuild and restart a service; the new version starts before the old one stops.
    Update(run::UpdateArgs),
    /// Stop a service and remove it from the runtime.
    Kill(kill::Args),
    /// Show the services the runtime manages.
    Status(status::Args),
    /// Print or follow a service's logs (`micro logs server` for the server's own).
    Logs(logs::Args),
    /// Create a new Rust service.
    New(new::Args),
    /// Read and write records in the store.
    Store(store::Args),
    /// Get, set and delete config values.
    Config(config::Args),
    /// Publish messages and subscribe to topics.
    Broker(broker::Args),
    /// Publish, consume and read durable events.
    Events(events::Args),
    /// Schedule calls and manage the task queue: schedules, tasks, retries.
    Tasks(tasks::Args),
    /// Serve every registered endpoint as a Model Context Protocol tool for AI agents.
    #[command(after_help = "Examples:\n  micro mcp serve\n  micro mcp serve --services helloworld --read-only\n  \
        micro mcp serve --address 127.0.0.1:8090 --rate 10/s")]
    Mcp(mcp::Args),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  micro completion bash > /etc/bash_completion.d/micro\n  \
        micro completion zsh > \"${fpath[1]}/_micro\"\n  micro completion fish > ~/.config/fish/completions/micro.fish")]
    Completion(completion::Args),
    /// Run the interactive CLI: a `micro> ` prompt that runs each line as a micro command.
    #[command(after_help = "Examples:\n  micro cli\n  micro -e prod cli\n  printf 'services\\nstatus\\n' | micro cli")]
    Cli(interactive::Args),
    /// Print the client's version, commit and build date, and the server's version.
    Version(version::Args),
    /// Write the man pages (`micro.1`, `micro-call.1`…) to a directory.
    #[command(hide = true)]
    Man(man::Args),
    /// A service name: `micro <service> [endpoint] [--flags]`.
    #[command(external_subcommand)]
    Service(Vec<OsString>),
}

/// The clap tree of built-in commands: the derived tree, with the exit codes closing `micro --help`, and the values
/// of environment variables hidden in every help (`[env: MICRO_ENV]`, not `[env: MICRO_ENV=]` or a secret).
pub fn command() -> clap::Command {
    fn hide_env_values(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.mut_args(|arg| if arg.get_env().is_some() { arg.hide_env_values(true) } else { arg });
        let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
        names.iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, hide_env_values))
    }
    hide_env_values(Cli::command()).after_long_help(format!("{AFTER_HELP}\n\n{}", crate::exit::TABLE))
}

/// Parses the command line with [`command`].
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// The help `micro` alone prints (to stderr, as it exits with the bad-input code): `micro --help`'s, in color on a
/// terminal.
pub fn no_command_help() -> String {
    let help = command().render_long_help();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) { help.ansi().to_string() } else { help.to_string() }
}

/// Runs a parsed command line.
pub async fn exec(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        return Err(CliError::input("No command provided to micro. Please refer to 'micro --help'").into());
    };
    match command {
        Command::Server(args) => return server::exec(args).await,
        Command::Man(args) => return man::exec(args),
        _ => {}
    }
    // `--jq` selects from JSON: it implies JSON output (`-o raw` keeps each result on one line).
    let output = match (&cli.jq, cli.output) {
        (None, output) => output,
        (Some(expression), output) => {
            output::set_jq(expression)?;
            Some(if output == Some(Output::Raw) { Output::Raw } else { Output::Json })
        }
    };
    let settings = Settings::resolve(&cli.global, output)?;
    match command {
        Command::Server(_) | Command::Man(_) => unreachable!("handled above"),
        Command::Env(args) => env::exec(&settings, args),
        Command::Services(args) => services::exec(&settings, args).await,
        Command::Call(args) => call::exec(&settings, args).await,
        Command::Stream(args) => call::exec(&settings, args).await,
        Command::Describe(args) => describe::exec(&settings, args).await,
        Command::Get(args) => get::exec(&settings, args).await,
        Command::Health(args) => health::exec(&settings, args).await,
        Command::Stats(args) => stats::exec(&settings, args).await,
        Command::Login(args) => login::exec(&settings, args).await,
        Command::Logout(args) => logout::exec(&settings, args).await,
        Command::User(args) => user::exec(&settings, args).await,
        Command::Auth(args) => auth::exec(&settings, args).await,
        Command::Run(args) => run::exec(&settings, args).await,
        Command::Mcp(args) => mcp::exec(&settings, args).await,
        Command::Update(args) => run::exec_update(&settings, args).await,
        Command::Kill(args) => kill::exec(&settings, args).await,
        Command::Status(args) => status::exec(&settings, args).await,
        Command::Logs(args) => logs::exec(&settings, args).await,
        Command::New(args) => new::exec(&settings, args).await,
        Command::Store(args) => store::exec(&settings, args).await,
        Command::Config(args) => config::exec(&settings, args).await,
        Command::Broker(args) => broker::exec(&settings, args).await,
        Command::Events(args) => events::exec(&settings, args).await,
        Command::Tasks(args) => tasks::exec(&settings, args).await,
        Command::Completion(args) => completion::exec(args),
        Command::Cli(args) => interactive::exec(&cli.global, output, args).await,
        Command::Version(args) => version::exec(&settings, args).await,
        Command::Service(args) if args.first().is_some_and(|w| w == "help") => {
            // `micro help [COMMAND…]`, as in Micro: that command's help.
            let argv = std::iter::once(OsString::from("micro"))
                .chain(args.into_iter().skip(1))
                .chain([OsString::from("--help")]);
            match parse(argv) {
                Ok(cli) => Box::pin(exec(cli)).await,
                Err(e) => {
                    e.print()?;
                    let status = crate::exit::from_clap(e.kind());
                    if status == crate::exit::ExitStatus::Success {
                        Ok(())
                    } else {
                        Err(CliError::new(status, "").into())
                    }
                }
            }
        }
        Command::Service(args) => {
            // A typo of a built-in is reported here, offline, instead of asking the registry for a service.
            let word = args.first().and_then(|w| w.to_str()).unwrap_or_default();
            if let Some(typo) = suggest::builtin_typo(&settings, word) {
                return Err(typo.into());
            }
            dynamic::exec(&settings, args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitStatus;

    #[test]
    fn the_tree_is_valid_and_every_built_in_has_examples() {
        let cmd = command();
        cmd.clone().debug_assert();
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("Examples:\n  micro "), "`micro {}` has no Examples section", sub.get_name());
        }
        let long = cmd.get_after_long_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(long.contains("Exit codes:") && long.contains("128  bad input"), "{long}");
    }

    #[test]
    fn global_options_have_their_own_heading_and_no_env_values() {
        let mut cmd = command();
        let help = cmd.render_long_help().to_string();
        let heading = help.find("Global options:").expect("a Global options heading");
        assert!(help[heading..].contains("--namespace") && help[heading..].contains("--jq"), "{help}");
        assert!(!help.contains("=]"), "an env value is shown: {help}");
        let store = cmd.find_subcommand_mut("store").unwrap();
        let help = store.render_help().to_string();
        assert_eq!(help.matches("--namespace").count(), 1, "{help}");
    }

    #[test]
    fn clap_errors_parse() {
        let e = parse(["micro".into(), "-o".into(), "xml".into(), "services".into()]).unwrap_err();
        assert_eq!(crate::exit::from_clap(e.kind()), ExitStatus::InvalidInput);
        let e = parse(["micro".into(), "auth".into(), "list".into()]).unwrap_err();
        assert_eq!(crate::exit::from_clap(e.kind()), ExitStatus::InvalidInput, "{e}");
        assert!(parse(["micro".into()]).unwrap().command.is_none());
        assert!(no_command_help().contains("Exit codes:"));
    }
}
