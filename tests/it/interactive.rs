//! `micro cli`: the interactive prompt, driven through stdin as a script drives it (no terminal, so no prompt).

use crate::support::Platform;

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
