//! `micro cli`: the interactive prompt, driven through stdin as a script drives it (no terminal, so no prompt), and
//! on a terminal (a tmux pane) as a person uses it.

use crate::support::Platform;
use crate::tmux::Tmux;

#[test]
fn a_piped_session_runs_each_line_and_exits_with_the_last_failure() {
    let p = Platform::start();
    let script = "services\n\
                  store write greeting \"hello world\"\n\
                  micro store read greeting\n\
                  # a comment, then a command that fails\n\
                  store read missing\n";
    let run = p.cli(["cli"]).stdin(script).run().code(6);
    assert!(run.stdout.starts_with("auth\nbroker\n"), "{}", run.snapshot());
    assert!(run.stdout.ends_with("\nhello world\n"), "{}", run.snapshot());
    assert_eq!(run.stderr, "Not found\n", "{}", run.snapshot());

    // `exit` ends the session before the lines after it; all succeeded, so it exits 0.
    let run = p.cli(["cli"]).stdin("store read greeting\nexit\nstore read missing\n").run().ok();
    assert_eq!(run.stdout, "hello world\n");

    // The session's global flags apply to every command, and a bad line is refused without ending it.
    let run =
        p.cli(["--output", "json", "cli"]).stdin("store read 'greeting\ncli\nstore read greeting\n").run().code(128);
    assert_eq!(run.stderr, "the line has an unclosed quote\nthis is the micro cli already\n", "{}", run.snapshot());
    assert_eq!(run.json()[0]["key"], "greeting", "{}", run.snapshot());
}

/// On a terminal (a tmux pane): Tab completes commands, services, endpoints and flags from the schema cache; each
/// line is kept in the history file and comes back in the next session (Up, Ctrl-R); a typo fails that command
/// only, and leaving the session exits 0.
#[test]
fn a_terminal_session_completes_keeps_its_history_and_exits_0_after_a_typo() {
    if !crate::tmux::available() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    // The schema cache gets helloworld (completion reads only the cache).
    p.micro(["helloworld", "--help"]).ok();
    let history = p.path("state").join("history");
    let history_var = history.display().to_string();
    let env = [("MICRO_HISTORY_FILE", history_var.as_str())];

    let t = Tmux::micro(&p, "first", &env, &["cli"]);
    t.wait_line("micro>");
    // A command word, then a service's endpoint command and flag, as the shell completion gives them.
    t.text("hell");
    t.keys(&["Tab"]);
    t.wait_line("micro> helloworld");
    t.text("ca");
    t.keys(&["Tab"]);
    t.wait_line("micro> helloworld call");
    // `--na` is `--name` or `--namespace`: Tab completes what they share, a second Tab lists both.
    t.text("--na");
    t.keys(&["Tab"]);
    t.wait_line("micro> helloworld call --name");
    t.keys(&["Tab"]);
    t.wait("both flags are listed", |s| s.contains("--name") && s.contains("--namespace") && s.lines().count() >= 3);
    t.text(" Jane");
    t.keys(&["Enter"]);
    t.wait("the call answers", |s| s.contains("Hello Jane"));
    t.wait_line("micro>");
    // A built-in, a service after it, and the service's endpoints.
    t.text("call hel");
    t.keys(&["Tab"]);
    t.wait_line("micro> call helloworld");
    t.text("Helloworld.C");
    t.keys(&["Tab"]);
    t.wait_line("micro> call helloworld Helloworld.Call");
    t.text(r#"'{"name": "Bob"}'"#);
    t.keys(&["Enter"]);
    t.wait("the call answers", |s| s.contains("Hello Bob"));
    t.wait_line("micro>");
    // A typo fails that command and the session goes on.
    t.text("sevices");
    t.keys(&["Enter"]);
    t.wait("the typo is reported", |s| s.contains("unknown command 'sevices'; did you mean 'services'?"));
    t.wait_line("micro>");
    t.text("exit");
    t.keys(&["Enter"]);
    assert_eq!(t.exit_status(), 0, "{}", t.screen());
    drop(t);

    let kept = std::fs::read_to_string(&history).expect("the history file");
    let lines: Vec<&str> = kept.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        ["helloworld call --name Jane", r#"call helloworld Helloworld.Call '{"name": "Bob"}'"#, "sevices"],
        "{kept}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&history).expect("the history file").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the history is private: {mode:o}");
    }

    // The next session has the history: Up shows the previous lines, Ctrl-R finds one.
    let t = Tmux::micro(&p, "second", &env, &["cli"]);
    t.wait_line("micro>");
    t.keys(&["Up"]);
    t.wait_line("micro> sevices");
    t.keys(&["Up"]);
    t.wait_line(r#"micro> call helloworld Helloworld.Call '{"name": "Bob"}'"#);
    t.keys(&["C-u", "C-r"]);
    t.text("Jane");
    t.wait_line("(reverse-i-search)`Jane': helloworld call --name Jane");
    t.keys(&["Enter"]);
    t.wait("the found line runs", |s| s.contains("Hello Jane"));
    // Keys go to the line editor once it shows its prompt again (before, the terminal is not raw yet).
    t.wait_line("micro>");
    // Ctrl-C at the prompt says how to leave, and does not.
    t.keys(&["C-c"]);
    t.wait("the hint", |s| s.contains("(exit, quit or Ctrl-D leaves)"));
    t.wait("the prompt again", |s| s.ends_with("(exit, quit or Ctrl-D leaves)\nmicro>"));
    t.keys(&["C-d"]);
    assert_eq!(t.exit_status(), 0, "{}", t.screen());
}
