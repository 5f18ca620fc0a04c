//! `micro completion SHELL`: prints a completion script, and the completion of micro's words that the scripts and
//! `micro cli` share.
//!
//! The scripts register micro's dynamic completer (`COMPLETE=<shell> micro -- WORDS`, clap_complete's engine), so
//! what completes is the clap tree of [`completion_command`]: the built-ins, plus every service of the schema cache
//! as a command with its endpoints and flags. Argument values complete through the candidates attached to the
//! arguments (`#[arg(add = ArgValueCandidates::new(…))]`):
//!
//! - service names ([`service_candidates`]) after `call`, `stream`, `health`, `kill`, `logs`, `update`, `stats` and
//!   `get service`, and endpoint names after a service ([`endpoint_candidates`]), from the schema cache: local files
//!   only, so completing is instant and never touches the network;
//! - env names after `-e`/`--env`, `env set` and `env del` ([`env_candidates`]), from the config file;
//! - store tables after `--table` ([`table_candidates`]): no cache holds them, so they are asked from the server
//!   (`Store.Tables`), for [`TABLES_TIMEOUT`] at most; nothing is offered when it does not answer in time.
//!
//! Which env, namespace and database the candidates come from is read from the words typed so far (`-e prod`,
//! `--namespace`, `--database`), then the environment and the config file, as a command resolves its settings.
//! The scripts are checked in under `completions/`.

use crate::settings::{Dirs, GlobalArgs, Settings};
use clap::FromArgMatches;
use clap_complete::engine::{CompletionCandidate, PathCompleter, ValueCompleter};
use clap_complete::env::Shells;
use micro_client::schema_cache::SchemaCache;
use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::time::Duration;

/// Arguments of `micro completion`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_parser = ["bash", "zsh", "fish", "elvish", "powershell"])]
    pub shell: String,
}

/// The completion script for `shell`, calling the binary `micro`.
pub fn script(shell: &str) -> std::io::Result<Vec<u8>> {
    let shells = Shells::builtins();
    let completer = shells.completer(shell).ok_or_else(|| std::io::Error::other(format!("unknown shell {shell}")))?;
    let mut buf = Vec::new();
    completer.write_registration("COMPLETE", "micro", "micro", "micro", &mut buf)?;
    Ok(buf)
}

/// Runs `micro completion`.
pub fn exec(args: Args) -> anyhow::Result<()> {
    let bytes = script(&args.shell)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

/// How long completing `--table` waits for the server's list of tables.
pub const TABLES_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    /// The words `micro cli` completes ([`complete_words`]); unset, they are the shell's (see [`words`]).
    static LINE: RefCell<Option<Vec<OsString>>> = const { RefCell::new(None) };
}

/// The words being completed, `micro` first: the REPL's line, or what the shell passed after `--`
/// (`COMPLETE=bash micro -- micro call hel`).
fn words() -> Vec<OsString> {
    LINE.with(|line| line.borrow().clone())
        .unwrap_or_else(|| std::env::args_os().skip_while(|a| a != "--").skip(1).collect())
}

/// What the words typed so far select: the settings (env, proxy, namespace) and the innermost command's arguments.
struct Typed {
    /// The settings, when they resolve (an unknown env does not).
    settings: Option<Settings>,
    /// The innermost built-in command and its matches, e.g. `call` with `service = helloworld`.
    leaf: Option<(clap::Command, clap::ArgMatches)>,
}

impl Typed {
    /// Parses [`words`] with the built-in tree, ignoring errors (a missing argument, a half-typed flag).
    fn current() -> Typed {
        let words = words();
        let mut root = super::command().ignore_errors(true);
        // Built, so that positional arguments know their index.
        root.build();
        let binary = [OsString::from("micro")];
        let matches = root
            .clone()
            .try_get_matches_from(&words)
            .or_else(|_| root.clone().try_get_matches_from(words.first().map_or(&binary[..], std::slice::from_ref)));
        let Ok(matches) = matches else { return Typed { settings: None, leaf: None } };
        let settings = GlobalArgs::from_arg_matches(&matches).ok().and_then(|g| Settings::resolve(&g, None).ok());
        let mut leaf = None;
        let (mut cmd, mut m) = (&root, &matches);
        while let Some((name, sub)) = m.subcommand() {
            let Some(next) = cmd.find_subcommand(name) else { break };
            (cmd, m) = (next, sub);
            leaf = Some((cmd.clone(), m.clone()));
        }
        Typed { settings, leaf }
    }

    /// The value typed for the innermost command's argument `id`, if it has one.
    fn value(&self, id: &str) -> Option<String> {
        let (_, m) = self.leaf.as_ref()?;
        let mut raw = m.try_get_raw(id).ok()??;
        raw.next().map(|v| v.to_string_lossy().into_owned())
    }

    /// The value typed for the innermost command's first positional argument: the service of `call SERVICE …`.
    fn first_positional(&self) -> Option<String> {
        let (cmd, _) = self.leaf.as_ref()?;
        let first = cmd.get_positionals().find(|a| a.get_index() == Some(1))?;
        self.value(first.get_id().as_str())
    }

    /// The schema cache of the typed env and namespace.
    fn cache(&self) -> Option<SchemaCache> {
        self.settings.as_ref().map(Settings::schema_cache)
    }
}

/// The first line of a comment, as a candidate's help.
fn help(text: Option<String>) -> Option<clap::builder::StyledStr> {
    text.and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()).map(|l| l.to_string().into()))
}

/// The services of the schema cache of the typed env and namespace, each with its comment as help. For the
/// service argument of `call`, `stream`, `health`, `describe`…: `#[arg(add = ArgValueCandidates::new(service_candidates))]`.
pub fn service_candidates() -> Vec<CompletionCandidate> {
    let Some(cache) = Typed::current().cache() else { return Vec::new() };
    cache
        .services()
        .into_iter()
        .map(|service| {
            let about = service.schema.as_ref().and_then(|s| cache.schema(&s.hash)).and_then(|schema| {
                schema
                    .pool
                    .services()
                    .find(|s| service.endpoints.iter().any(|e| e.method.starts_with(&format!("/{}/", s.full_name()))))
                    .and_then(|s| micro_core::schema::service_comment(&s))
            });
            CompletionCandidate::new(&service.name).help(help(about))
        })
        .collect()
}

/// The endpoints (`Helloworld.Call`) of the service typed as the innermost command's first positional argument
/// (`micro call helloworld <TAB>`), from the schema cache, each with its comment as help.
pub fn endpoint_candidates() -> Vec<CompletionCandidate> {
    let typed = Typed::current();
    let (Some(name), Some(cache)) = (typed.first_positional(), typed.cache()) else { return Vec::new() };
    let Some(service) = cache.service(&name) else { return Vec::new() };
    let schema = service.schema.as_ref().and_then(|s| cache.schema(&s.hash));
    service
        .endpoints
        .iter()
        .map(|ep| {
            let comment = schema
                .as_ref()
                .and_then(|s| micro_core::schema::find_method(&s.pool, &ep.method))
                .and_then(|m| micro_core::schema::method_comment(&m));
            CompletionCandidate::new(&ep.name).help(help(comment))
        })
        .collect()
}

/// [`endpoint_candidates`] and the names of the messages the service's schema declares (`CallRequest`), for an
/// argument that takes either (`micro describe SERVICE [ENDPOINT|MESSAGE]`).
pub fn symbol_candidates() -> Vec<CompletionCandidate> {
    let mut out = endpoint_candidates();
    let typed = Typed::current();
    let (Some(name), Some(cache)) = (typed.first_positional(), typed.cache()) else { return out };
    let Some(service) = cache.service(&name) else { return out };
    let Some(schema) = service.schema.as_ref().and_then(|s| cache.schema(&s.hash)) else { return out };
    let mut messages: Vec<String> = schema
        .pool
        .services()
        .filter(|s| service.endpoints.iter().any(|e| e.method.starts_with(&format!("/{}/", s.full_name()))))
        .flat_map(|s| s.parent_file().messages().collect::<Vec<_>>())
        .map(|m| m.name().to_string())
        .collect();
    messages.sort();
    messages.dedup();
    out.extend(messages.into_iter().map(CompletionCandidate::new));
    out
}

/// [`service_candidates`] and `server` (the server's own log), for `micro logs`.
pub fn log_candidates() -> Vec<CompletionCandidate> {
    let mut out = service_candidates();
    out.push(CompletionCandidate::new("server").help(Some("the server's own log".into())));
    out
}

/// The services of [`service_candidates`] that start with `current`, then directories: `micro update SOURCE|NAME`.
pub fn source_or_service_candidates(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let mut out: Vec<CompletionCandidate> =
        service_candidates().into_iter().filter(|c| c.get_value().to_string_lossy().starts_with(&*typed)).collect();
    if !typed.is_empty() {
        out.extend(PathCompleter::dir().complete(current));
    }
    out
}

/// The envs of the config file (`local` included), each with its description or address as help.
pub fn env_candidates() -> Vec<CompletionCandidate> {
    let Ok(config) = Dirs::resolve().and_then(|dirs| dirs.load()) else { return Vec::new() };
    config
        .all_envs()
        .into_iter()
        .map(|(name, env)| {
            let about = if env.description.is_empty() { env.proxy_address } else { env.description };
            CompletionCandidate::new(name).help(Some(about.into()))
        })
        .collect()
}

/// The tables of the typed `--database` (else the namespace's), asked from the server with the saved token for
/// [`TABLES_TIMEOUT`] at most: empty when it does not answer in time.
pub fn table_candidates() -> Vec<CompletionCandidate> {
    let typed = Typed::current();
    let Some(settings) = typed.settings.clone() else { return Vec::new() };
    let database = typed.value("database").unwrap_or_default();
    let ask = async move {
        let conn = settings.connect_authed().await.ok()?;
        let req = conn.request(micro_core::proto::store::TablesRequest { database });
        super::store::client(&conn).tables(req).await.ok().map(|r| r.into_inner().tables)
    };
    // Its own thread and runtime: the shell's completer has none, and `micro cli` completes on a blocking thread
    // of its runtime, where a second one may not start.
    let tables = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async { tokio::time::timeout(TABLES_TIMEOUT, ask).await.ok().flatten() })
            })
            .join()
            .ok()
            .flatten()
    });
    tables.unwrap_or_default().into_iter().map(CompletionCandidate::new).collect()
}

/// The command tree for completion: the built-ins plus every service in the schema cache of the typed env, as
/// real subcommands with their endpoints and flags. It reads only local files, so completing is instant.
pub fn completion_command() -> clap::Command {
    let mut cmd = super::command();
    let Some(cache) = Typed::current().cache() else { return cmd };
    for service in cache.services() {
        if cmd.find_subcommand(&service.name).is_some() {
            continue;
        }
        let Some(schema) = service.schema.as_ref().and_then(|s| cache.schema(&s.hash)) else { continue };
        cmd = cmd.subcommand(super::dynamic::service_command(&service, &schema, true));
    }
    cmd
}

/// The candidates for the last of `words` (`micro` first, then the words typed, the one being completed last), as
/// the shell completion gives them: `micro cli` completes its lines with it.
pub fn complete_words(words: Vec<OsString>) -> Vec<CompletionCandidate> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LINE.with(|line| line.borrow_mut().take());
        }
    }
    if words.is_empty() {
        return Vec::new();
    }
    LINE.with(|line| *line.borrow_mut() = Some(words.clone()));
    let _reset = Reset;
    let mut cmd = completion_command();
    let index = words.len() - 1;
    let cwd = std::env::current_dir().ok();
    clap_complete::engine::complete(&mut cmd, words, index, cwd.as_deref()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts in `completions/` are what `micro completion SHELL` prints; regenerate them with
    /// `for s in bash zsh fish elvish powershell; do micro completion $s > …; done` when this fails.
    #[test]
    fn checked_in_scripts_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
        for (shell, file) in [
            ("bash", "micro.bash"),
            ("zsh", "_micro"),
            ("fish", "micro.fish"),
            ("elvish", "micro.elv"),
            ("powershell", "_micro.ps1"),
        ] {
            let expected = script(shell).unwrap();
            let actual = std::fs::read(dir.join(file)).unwrap_or_default();
            assert!(
                actual == expected,
                "completions/{file} is stale: run `micro completion {shell} > completions/{file}`"
            );
        }
    }

    #[test]
    fn the_completion_tree_is_valid() {
        // clap's debug assertions catch duplicate flags between the root and cached services.
        completion_command().debug_assert();
    }

    fn typed(words: &[&str]) -> Typed {
        LINE.with(|line| *line.borrow_mut() = Some(words.iter().map(OsString::from).collect()));
        let typed = Typed::current();
        LINE.with(|line| line.borrow_mut().take());
        typed
    }

    #[test]
    fn the_typed_words_name_the_service_and_database() {
        let t = typed(&["micro", "call", "helloworld", "Hel"]);
        assert_eq!(t.leaf.as_ref().map(|(c, _)| c.get_name().to_string()).as_deref(), Some("call"));
        assert_eq!(t.first_positional().as_deref(), Some("helloworld"));
        // Half-typed: the endpoint is missing, a flag is cut short.
        assert_eq!(typed(&["micro", "stream", "helloworld", ""]).first_positional().as_deref(), Some("helloworld"));
        assert_eq!(typed(&["micro", "call", "echo", "--ti"]).first_positional().as_deref(), Some("echo"));
        let t = typed(&["micro", "store", "read", "--database", "shop", "--table", ""]);
        assert_eq!(t.leaf.as_ref().map(|(c, _)| c.get_name().to_string()).as_deref(), Some("read"));
        assert_eq!(t.value("database").as_deref(), Some("shop"));
        assert_eq!(t.value("no-such-arg"), None);
        assert!(typed(&["micro"]).leaf.is_none());
    }
}
