//! `micro cli`: an interactive prompt, `micro> `, that runs each line as a `micro` command.
//!
//! As in Micro, every line runs as a child `micro` process with the session's global flags, so a command that
//! fails (or a Ctrl-C that stops `logs -f`) does not end the session. Unlike Micro, a line is split as a shell
//! splits it (quotes and backslashes work), not on single spaces. On a terminal the prompt goes to stderr and the
//! commands share the terminal; without one, lines are read from stdin with no prompt and the commands get no
//! stdin, so a script can pipe commands in. `exit`, `quit` or the end of input leaves. The session exits with the
//! status of the last command that failed, or 0.

use crate::exit::{CliError, ExitStatus};
use crate::settings::{GlobalArgs, Output};
use clap::ValueEnum;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Arguments of `micro cli` (none: the global flags apply to every command of the session).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// What one line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Nothing (an empty line or a comment).
    Nothing,
    /// Leave the session.
    Exit,
    /// Run `micro` with these arguments.
    Run(Vec<String>),
    /// A line that cannot run, with the reason.
    Refused(String),
}

/// Parses one line of input.
fn parse(line: &str) -> Line {
    let words = match shell_words::split(line) {
        Ok(words) => words,
        Err(_) => return Line::Refused("the line has an unclosed quote".into()),
    };
    let mut words = words.as_slice();
    // `micro services` works as well as `services`.
    if words.first().is_some_and(|w| w == "micro") {
        words = &words[1..];
    }
    match words.first().map(String::as_str) {
        None => Line::Nothing,
        Some(w) if w.starts_with('#') => Line::Nothing,
        Some("exit" | "quit") => Line::Exit,
        Some("help") => Line::Run(vec!["-h".into()]),
        Some("cli") => Line::Refused("this is the micro cli already".into()),
        Some(_) => Line::Run(words.to_vec()),
    }
}

/// The session's global flags, as arguments for each command.
fn global_flags(global: &GlobalArgs, output: Option<Output>) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, value) in [("--env", &global.env), ("--namespace", &global.namespace), ("--proxy", &global.proxy)] {
        if let Some(value) = value {
            out.extend([flag.to_string(), value.clone()]);
        }
    }
    for (flag, value) in
        [("--ca-cert", &global.ca_cert), ("--client-cert", &global.client_cert), ("--client-key", &global.client_key)]
    {
        if let Some(value) = value {
            out.extend([flag.to_string(), value.display().to_string()]);
        }
    }
    if global.insecure_skip_verify {
        out.push("--insecure-skip-verify".to_string());
    }
    if let Some(name) = output.and_then(|o| o.to_possible_value()) {
        out.extend(["--output".to_string(), name.get_name().to_string()]);
    }
    out
}

/// Runs the session.
pub async fn exec(global: &GlobalArgs, output: Option<Output>, _args: Args) -> anyhow::Result<()> {
    let micro = std::env::current_exe()
        .map_err(|e| CliError::new(ExitStatus::Failure, format!("cannot find the micro binary: {e}")))?;
    let flags = global_flags(global, output);
    let interactive = std::io::stdin().is_terminal();
    let prompt = interactive && std::io::stderr().is_terminal();

    // Ctrl-C belongs to the command that runs (it shares the terminal); at the prompt it only says how to leave.
    let running = Arc::new(AtomicBool::new(false));
    {
        let running = running.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if prompt && !running.load(Ordering::Acquire) {
                    eprint!("\n(exit, quit or Ctrl-D leaves)\nmicro> ");
                }
            }
        });
    }

    let last_failure = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        let mut last_failure = None;
        let mut line = String::new();
        loop {
            if prompt {
                eprint!("micro> ");
                let _ = std::io::stderr().flush();
            }
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) => {
                    if prompt {
                        eprintln!();
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("cannot read a command: {e}");
                    last_failure = Some(ExitStatus::Failure);
                    break;
                }
            }
            let args = match parse(&line) {
                Line::Nothing => continue,
                Line::Exit => break,
                Line::Refused(why) => {
                    eprintln!("{why}");
                    last_failure = Some(ExitStatus::InvalidInput);
                    continue;
                }
                Line::Run(args) => args,
            };
            let mut command = std::process::Command::new(&micro);
            command.args(&flags).args(&args);
            if !interactive {
                command.stdin(std::process::Stdio::null());
            }
            running.store(true, Ordering::Release);
            let status = command.status();
            running.store(false, Ordering::Release);
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    last_failure = Some(
                        status
                            .code()
                            .and_then(|c| u8::try_from(c).ok())
                            .and_then(ExitStatus::from_code)
                            .unwrap_or(ExitStatus::Failure),
                    );
                }
                Err(e) => {
                    eprintln!("cannot run {}: {e}", micro.display());
                    last_failure = Some(ExitStatus::Failure);
                }
            }
        }
        last_failure
    })
    .await?;
    match last_failure {
        // Each command printed its own error.
        Some(status) => Err(CliError::new(status, "").into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_as_a_shell_splits_them() {
        assert_eq!(parse("  \n"), Line::Nothing);
        assert_eq!(parse("# a comment"), Line::Nothing);
        assert_eq!(parse("quit"), Line::Exit);
        assert_eq!(parse("micro exit"), Line::Exit);
        assert_eq!(parse("services"), Line::Run(vec!["services".into()]));
        assert_eq!(
            parse(r#"micro store write greeting "hello world""#),
            Line::Run(vec!["store".into(), "write".into(), "greeting".into(), "hello world".into()])
        );
        assert_eq!(
            parse(r#"call helloworld Helloworld.Call '{"name": "Jane"}'"#),
            Line::Run(vec!["call".into(), "helloworld".into(), "Helloworld.Call".into(), r#"{"name": "Jane"}"#.into()])
        );
        assert_eq!(parse("help"), Line::Run(vec!["-h".into()]));
        assert!(matches!(parse("cli"), Line::Refused(_)));
        assert!(matches!(parse("store read \"open"), Line::Refused(_)));
    }

    #[test]
    fn global_flags_pass_to_every_command() {
        let global = GlobalArgs { env: Some("prod".into()), proxy: Some("127.0.0.1:1".into()), ..Default::default() };
        assert_eq!(
            global_flags(&global, Some(Output::Json)),
            ["--env", "prod", "--proxy", "127.0.0.1:1", "--output", "json"]
        );
        assert!(global_flags(&GlobalArgs::default(), None).is_empty());
    }
}
