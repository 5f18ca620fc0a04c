//! `micro man --out DIR` (hidden): writes a man page per command, made from the clap tree with clap_mangen:
//! `micro.1`, `micro-call.1`, `micro-store-read.1`… `install.sh` runs it into `$PREFIX/share/man/man1`, so
//! `man micro` and `man micro-call` work. Service commands are built at run time from the registry and have none.

use super::version::{BUILD_DATE, VERSION};
use crate::exit::CliError;
use std::path::{Path, PathBuf};

/// Arguments of `micro man`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  micro man --out ~/.local/share/man/man1\n  micro man --out /tmp/man && man -l /tmp/man/micro-call.1"
)]
pub struct Args {
    /// The directory to write the pages to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the page of `cmd` and of each of its visible subcommands into `dir`; returns the files written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, written)?;
        }
        let page =
            clap_mangen::Man::new(cmd).date(BUILD_DATE).source(format!("micro {VERSION}")).manual("micro manual");
        written.push(page.generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building names every subcommand's page after its path: `micro-store-read`.
    cmd.build();
    let mut written = Vec::new();
    walk(cmd, dir, &mut written)?;
    written.sort();
    Ok(written)
}

/// Runs `micro man`.
pub fn exec(args: Args) -> anyhow::Result<()> {
    let written = write_pages(super::command(), &args.out)
        .map_err(|e| CliError::failure(format!("cannot write the man pages to {}: {e}", args.out.display())))?;
    let printer = super::output::Printer::new(None, crate::settings::Output::Table);
    printer.message(format!("Wrote {} man pages to {}", written.len(), args.out.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(crate::cli::command(), dir.path()).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for page in ["micro.1", "micro-call.1", "micro-store-read.1", "micro-auth-list-rules.1", "micro-version.1"] {
            assert!(names.contains(&page.to_string()), "{page} is missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("micro-man")), "the hidden command has no page: {names:?}");
        let call = std::fs::read_to_string(dir.path().join("micro-call.1")).unwrap();
        assert!(call.contains(".TH micro-call 1") && call.contains("Examples"), "{call}");
    }
}
