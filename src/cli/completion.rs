//! `micro completion SHELL`: prints a completion script.
//!
//! The scripts register micro's dynamic completer (`COMPLETE=<shell> micro`), so service names, endpoints and
//! flags complete from the schema cache. The same scripts are checked in under `completions/`.

use clap_complete::env::Shells;
use std::io::Write;

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

/// The command tree for completion: the built-ins plus every service in the schema cache of the current env, as
/// real subcommands with their endpoints and flags. It reads only local files, so completing is instant.
pub fn completion_command() -> clap::Command {
    let mut cmd = super::command();
    let Ok(dirs) = crate::settings::Dirs::resolve() else { return cmd };
    let Ok(config) = dirs.load() else { return cmd };
    let env = micro_core::env::var(micro_core::env::MICRO_ENV).unwrap_or_else(|| config.current().to_string());
    let namespace = micro_core::env::var(micro_core::env::MICRO_NAMESPACE)
        .or_else(|| config.namespace(&env).map(str::to_string))
        .unwrap_or_else(|| micro_core::DEFAULT_NAMESPACE.into());
    let proxy = micro_core::env::var(micro_core::env::MICRO_PROXY)
        .or_else(|| config.all_envs().get(&env).map(|e| e.proxy_address.clone()))
        .unwrap_or_default();
    let cache = micro_client::schema_cache::SchemaCache::new(
        &crate::settings::Settings::cache_root(&dirs),
        &crate::settings::cache_key(&env, &proxy),
        &namespace,
    );
    for service in cache.services() {
        if cmd.find_subcommand(&service.name).is_some() {
            continue;
        }
        let Some(schema) = service.schema.as_ref().and_then(|s| cache.schema(&s.hash)) else { continue };
        cmd = cmd.subcommand(super::dynamic::service_command(&service, &schema, true));
    }
    cmd
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
}
