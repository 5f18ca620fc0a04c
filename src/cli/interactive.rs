//! `micro cli`: an interactive prompt, `micro> `, that runs each line as a `micro` command.
//!
//! As in Micro, every line runs as a child `micro` process with the session's global flags, so a command that
//! fails (or a Ctrl-C that stops `logs -f`) does not end the session. Unlike Micro, a line is split as a shell
//! splits it (quotes and backslashes work), not on single spaces. `exit`, `quit` or the end of input (Ctrl-D)
//! leaves.
//!
//! When stdin is a terminal, the prompt is a line editor (rustyline) on the terminal, never on stdout: line editing,
//! Tab completion of commands, services, endpoints, flags and values (the same candidates as the shell completion,
//! see [`super::completion::complete_words`]), and a history kept across sessions in [`history_file`] (Up, Ctrl-R;
//! a line that starts with a space, or that carries `--password`, is not kept). A command's failure is shown when it
//! happens, so leaving the session exits 0.
//!
//! Without a terminal, lines are read from stdin with no prompt, no history, and the commands get no stdin, so a
//! script can pipe commands in; the session then exits with the status of the last command that failed, or 0.

use crate::exit::{CliError, ExitStatus};
use crate::settings::{GlobalArgs, Output};
use clap::ValueEnum;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Behavior, CompletionType, Config, Editor};
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Arguments of `micro cli` (none: the global flags apply to every command of the session).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// The prompt.
const PROMPT: &str = "micro> ";

/// How many lines the history keeps.
const HISTORY_SIZE: usize = 1000;

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

/// The words that leave or ask for help, besides the commands.
const SESSION_WORDS: [&str; 3] = ["exit", "quit", "help"];

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

/// Where the history is kept: `MICRO_HISTORY_FILE`, else `history` in the platform's state dir for micro
/// (`$XDG_STATE_HOME/micro`, `~/.local/state/micro` on Linux), else in its local data dir (macOS, Windows, which
/// have no state dir).
pub fn history_file() -> Option<PathBuf> {
    if let Some(path) = micro_core::env::var(micro_core::env::MICRO_HISTORY_FILE) {
        return Some(PathBuf::from(path));
    }
    let project = directories::ProjectDirs::from("dev", "micro", "micro")?;
    let dir = project.state_dir().unwrap_or_else(|| project.data_local_dir());
    Some(dir.join("history"))
}

/// Whether a line goes into the history: not `exit`, and not a line that carries a password (`--password`; a line
/// that does not split is judged by its text).
fn keep_in_history(line: &str, parsed: &Line) -> bool {
    match parsed {
        Line::Nothing | Line::Exit => false,
        Line::Run(args) => !args.iter().any(|a| a == "--password" || a.starts_with("--password=")),
        Line::Refused(_) => !line.contains("--password"),
    }
}

/// Where the word under the cursor starts in `before` (the line up to the cursor): after the last blank outside
/// quotes.
fn word_start(before: &str) -> usize {
    let (mut start, mut single, mut double, mut escaped) = (0, false, false, false);
    for (i, c) in before.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            c if c.is_whitespace() && !single && !double => start = i + c.len_utf8(),
            _ => {}
        }
    }
    start
}

/// What to complete in `before` (the line up to the cursor): where the word under the cursor starts, the words to
/// complete (`micro`, the session's flags, the line's words, the word under the cursor last), and whether that word
/// is the line's first. `None` inside an unclosed quote.
fn completion_words(flags: &[String], before: &str) -> Option<(usize, Vec<OsString>, bool)> {
    let start = word_start(before);
    let mut typed = shell_words::split(&before[..start]).ok()?;
    let current = match shell_words::split(&before[start..]).ok()?.as_slice() {
        [] => String::new(),
        [word] => word.clone(),
        _ => return None,
    };
    if typed.first().is_some_and(|w| w == "micro") {
        typed.remove(0);
    }
    let first = typed.is_empty();
    let words = std::iter::once("micro".to_string())
        .chain(flags.iter().cloned())
        .chain(typed)
        .chain(std::iter::once(current))
        .map(OsString::from)
        .collect();
    Some((start, words, first))
}

/// The REPL's helper: Tab completes against the clap tree the shell completion uses.
struct Helper {
    /// The session's global flags, so that services complete from the session's env.
    flags: Vec<String>,
}

impl Helper {
    /// The completions of `before` (the line up to the cursor): where they start, and each value as it goes into the
    /// line (quoted when it must be, with a space after a complete word).
    fn candidates(&self, before: &str) -> (usize, Vec<String>) {
        let Some((start, words, first)) = completion_words(&self.flags, before) else { return (before.len(), vec![]) };
        let current = words.last().map(|w| w.to_string_lossy().into_owned()).unwrap_or_default();
        let mut values: Vec<String> = super::completion::complete_words(words)
            .into_iter()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_value().to_string_lossy().into_owned())
            .filter(|v| !(first && v == "cli"))
            .collect();
        if first {
            values.extend(SESSION_WORDS.iter().filter(|w| w.starts_with(&current)).map(|w| w.to_string()));
        }
        let mut seen = std::collections::HashSet::new();
        values.retain(|v| seen.insert(v.clone()));
        let values = values
            .into_iter()
            .map(|v| {
                let quoted = shell_words::quote(&v).into_owned();
                if v.ends_with('/') || v.ends_with('=') { quoted } else { quoted + " " }
            })
            .collect();
        (start, values)
    }
}

impl Completer for Helper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, values) = self.candidates(&line[..pos]);
        let pairs = values.into_iter().map(|v| Pair { display: v.trim_end().to_string(), replacement: v }).collect();
        Ok((start, pairs))
    }
}

impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

/// Runs each line as a child `micro`.
struct Runner {
    /// The `micro` binary.
    micro: PathBuf,
    /// The session's global flags.
    flags: Vec<String>,
    /// Whether a command runs now (Ctrl-C is then its own).
    running: Arc<AtomicBool>,
}

impl Runner {
    /// Runs `micro FLAGS ARGS`, with stdin (the terminal) when `stdin`, else none; its exit status.
    fn run(&self, args: &[String], stdin: bool) -> ExitStatus {
        let mut command = std::process::Command::new(&self.micro);
        command.args(&self.flags).args(args);
        if !stdin {
            command.stdin(std::process::Stdio::null());
        }
        self.running.store(true, Ordering::Release);
        let status = command.status();
        self.running.store(false, Ordering::Release);
        match status {
            Ok(status) if status.success() => ExitStatus::Success,
            Ok(status) => status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .and_then(ExitStatus::from_code)
                .unwrap_or(ExitStatus::Failure),
            Err(e) => {
                eprintln!("cannot run {}: {e}", self.micro.display());
                ExitStatus::Failure
            }
        }
    }
}

/// Runs the session.
pub async fn exec(global: &GlobalArgs, output: Option<Output>, _args: Args) -> anyhow::Result<()> {
    let micro = std::env::current_exe()
        .map_err(|e| CliError::new(ExitStatus::Failure, format!("cannot find the micro binary: {e}")))?;
    let runner = Runner { micro, flags: global_flags(global, output), running: Arc::new(AtomicBool::new(false)) };
    let terminal = std::io::stdin().is_terminal();

    // Ctrl-C belongs to the command that runs (it shares the terminal): the session only swallows it. At the line
    // editor the terminal is raw, so Ctrl-C is a key there, not a signal.
    tokio::spawn(async move { while tokio::signal::ctrl_c().await.is_ok() {} });

    let outcome =
        tokio::task::spawn_blocking(move || if terminal { edit_session(&runner) } else { piped_session(&runner) })
            .await?;
    match outcome? {
        // Each command printed its own error.
        Some(status) => Err(CliError::new(status, "").into()),
        None => Ok(()),
    }
}

/// A session on a terminal: the line editor, with completion and history. Leaving it is a success (`None`): each
/// command's failure was shown when it happened.
fn edit_session(runner: &Runner) -> Result<Option<ExitStatus>, CliError> {
    let config = Config::builder()
        // The prompt and the line being edited go to the terminal, never to stdout, which may be redirected.
        .behavior(Behavior::PreferTerm)
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .history_ignore_space(true)
        .history_ignore_dups(true)
        .and_then(|c| c.max_history_size(HISTORY_SIZE))
        .map_err(|e| CliError::failure(format!("cannot start the line editor: {e}")))?
        .build();
    let mut editor: Editor<Helper, FileHistory> =
        Editor::with_config(config).map_err(|e| CliError::failure(format!("cannot start the line editor: {e}")))?;
    editor.set_helper(Some(Helper { flags: runner.flags.clone() }));
    let history = history_file();
    if let Some(path) = &history {
        match editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("cannot read the history {}: {e}", path.display()),
        }
    }
    let mut history_failed = false;
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(exit, quit or Ctrl-D leaves)");
                continue;
            }
            Err(ReadlineError::Eof) => {
                if std::io::stderr().is_terminal() {
                    eprintln!();
                }
                return Ok(None);
            }
            Err(e) => return Err(CliError::failure(format!("cannot read a command: {e}"))),
        };
        let parsed = parse(&line);
        if keep_in_history(&line, &parsed)
            && let Some(path) = &history
            && !history_failed
        {
            let _ = editor.add_history_entry(line.as_str());
            // Saved at once, so that it survives a killed session and other sessions get it.
            if let Err(e) = save_history(&mut editor, path) {
                eprintln!("cannot save the history to {}: {e}", path.display());
                history_failed = true;
            }
        }
        match parsed {
            Line::Nothing => {}
            Line::Exit => return Ok(None),
            Line::Refused(why) => eprintln!("{why}"),
            Line::Run(args) => {
                runner.run(&args, true);
            }
        }
    }
}

/// Appends the new lines to the history file, creating its directory (private: lines may name secrets).
fn save_history(editor: &mut Editor<Helper, FileHistory>, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        micro_core::fs::create_private_dir(dir).map_err(|e| e.to_string())?;
    }
    editor.append_history(path).map_err(|e| e.to_string())
}

/// A session without a terminal: lines from stdin, no prompt; the status of the last command that failed.
fn piped_session(runner: &Runner) -> Result<Option<ExitStatus>, CliError> {
    let stdin = std::io::stdin();
    let mut last_failure = None;
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => return Ok(last_failure),
            Ok(_) => {}
            Err(e) => {
                eprintln!("cannot read a command: {e}");
                return Ok(Some(ExitStatus::Failure));
            }
        }
        match parse(&line) {
            Line::Nothing => {}
            Line::Exit => return Ok(last_failure),
            Line::Refused(why) => {
                eprintln!("{why}");
                last_failure = Some(ExitStatus::InvalidInput);
            }
            Line::Run(args) => match runner.run(&args, false) {
                ExitStatus::Success => {}
                status => last_failure = Some(status),
            },
        }
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

    fn words(flags: &[&str], before: &str) -> Option<(usize, Vec<String>, bool)> {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        completion_words(&flags, before).map(|(start, words, first)| {
            (start, words.iter().map(|w| w.to_string_lossy().into_owned()).collect(), first)
        })
    }

    #[test]
    fn the_word_under_the_cursor_is_completed_with_the_session_flags() {
        assert_eq!(words(&[], ""), Some((0, vec!["micro".into(), "".into()], true)));
        assert_eq!(words(&[], "hel"), Some((0, vec!["micro".into(), "hel".into()], true)));
        assert_eq!(words(&[], "micro ser"), Some((6, vec!["micro".into(), "ser".into()], true)));
        assert_eq!(
            words(&["--env", "prod"], "call helloworld "),
            Some((16, ["micro", "--env", "prod", "call", "helloworld", ""].map(String::from).to_vec(), false))
        );
        // Quotes: a quoted word with a blank is one word; the word under the cursor starts after the last blank
        // outside quotes; inside an unclosed quote there is nothing to complete.
        assert_eq!(
            words(&[], r#"store write "a b" --ta"#),
            Some((18, ["micro", "store", "write", "a b", "--ta"].map(String::from).to_vec(), false))
        );
        assert_eq!(words(&[], "call helloworld Helloworld.Call '{\"name"), None);
    }

    #[test]
    fn history_keeps_what_is_worth_repeating() {
        assert!(keep_in_history("services", &parse("services")));
        assert!(keep_in_history("sevices", &parse("sevices")));
        assert!(!keep_in_history("exit", &parse("exit")));
        assert!(!keep_in_history("", &parse("")));
        assert!(!keep_in_history("login --password s3cret", &parse("login --password s3cret")));
        assert!(!keep_in_history("login --password=s3cret", &parse("login --password=s3cret")));
        assert!(!keep_in_history("login --password 's3cret", &parse("login --password 's3cret")));
        assert!(keep_in_history("login --password-stdin", &parse("login --password-stdin")));
    }
}
