//! The `micro` command line: built-in commands, one module each, and dynamic service commands built at run time.
//!
//! [`command`] is the clap tree of built-ins (also used by completion); [`exec`] runs a parsed command. A word that
//! is not a built-in command is a service name: [`dynamic`] builds its subcommands and flags from the service's
//! protobuf schema.

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
pub mod mcp;
pub mod new;
pub mod output;
pub mod run;
pub mod server;
pub mod services;
pub mod stats;
pub mod status;
pub mod store;
pub mod user;

use crate::exit::{CliError, ExitStatus};
use crate::settings::{GlobalArgs, Output, Settings};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;

/// The `micro` command line.
#[derive(Debug, Parser)]
#[command(
    name = "micro",
    version = micro_core::VERSION,
    about = "A framework for cloud native development",
    long_about = "A framework for cloud native development.\n\nEvery service in the registry is a command too: `micro helloworld call --name=Jane`.\nUse `micro [command] --help` to see command specific help.",
    allow_external_subcommands = true,
    disable_help_subcommand = true,
    after_help = "Services are commands as well: run `micro services` to list them and `micro <service> --help` to see their endpoints."
)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Output format.
    #[arg(short = 'o', long, global = true, env = micro_core::env::MICRO_OUTPUT, value_enum)]
    pub output: Option<Output>,
    /// The command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

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
    Call(call::Args),
    /// Call a streaming endpoint: one JSON document per response message.
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
    /// Serve every registered endpoint as a Model Context Protocol tool for AI agents.
    Mcp(mcp::Args),
    /// Print a shell completion script.
    Completion(completion::Args),
    /// Run the interactive CLI: a `micro> ` prompt that runs each line as a micro command.
    Cli(interactive::Args),
    /// A service name: `micro <service> [endpoint] [--flags]`.
    #[command(external_subcommand)]
    Service(Vec<OsString>),
}

/// The clap tree of built-in commands.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs a parsed command line.
pub async fn exec(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        return Err(
            CliError::new(ExitStatus::Failure, "No command provided to micro. Please refer to 'micro --help'").into()
        );
    };
    if let Command::Server(args) = command {
        return server::exec(args).await;
    }
    let settings = Settings::resolve(&cli.global, cli.output)?;
    match command {
        Command::Server(_) => unreachable!("handled above"),
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
        Command::Completion(args) => completion::exec(args),
        Command::Cli(args) => interactive::exec(&cli.global, cli.output, args).await,
        Command::Service(args) => dynamic::exec(&settings, args).await,
    }
}
