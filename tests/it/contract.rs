//! The CLI's contract (issue 14): typos suggested offline, every exit code of the README's table through real
//! commands, `micro` alone, `micro version`, `--jq`, JSON from every `-o json`, and the man pages.

use crate::support::{Cli, Dirs, Platform, closed_port, snapshot_settings};

/// A CLI pointed at a port where nothing listens.
fn offline(dirs: &Dirs, args: &[&str]) -> Cli {
    Cli::new(&format!("127.0.0.1:{}", closed_port()), dirs, args)
}

/// Snapshot filters for what changes from build to build: the commit and the build date.
fn build_filters() -> insta::Settings {
    let mut settings = snapshot_settings();
    settings.add_filter(r"commit [0-9a-f]{12}|commit unknown", "commit [COMMIT]");
    settings.add_filter(r#""commit": "([0-9a-f]{12}|unknown)""#, r#""commit": "[COMMIT]""#);
    settings.add_filter(r"\d{4}-\d{2}-\d{2}", "[DATE]");
    settings.add_filter(&regex_escape(env!("CARGO_PKG_VERSION")), "[VERSION]");
    settings
}

fn regex_escape(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\{c}") }).collect()
}

#[test]
fn typos_of_built_ins_are_caught_without_the_server() {
    let _s = snapshot_settings().bind_to_scope();
    let dirs = Dirs::new();
    let mut shots = Vec::new();
    for args in [&["sevices"][..], &["stauts"], &["lgos", "-f", "greeter"], &["Services"], &["store", "raed", "k"]] {
        let run = offline(&dirs, args).run().code(128);
        assert!(run.stderr.contains("did you mean") || run.stderr.contains("similar"), "{}", run.snapshot());
        assert!(!run.stderr.contains("Failed to connect"), "the server was asked: {}", run.snapshot());
        assert_eq!(run.stdout, "");
        shots.push(run.snapshot());
    }
    insta::assert_snapshot!("typos_offline", shots.join("\n"));
    // A word that is no typo of a built-in is a service: without a server, that is exit 4.
    offline(&dirs, &["helloworld"]).run().code(4);
}

#[test]
fn unknown_services_endpoints_and_flags_get_suggestions() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let cases: [(&[&str], i32, &str); 6] = [
        (&["helloword"], 128, "unknown command 'helloword'; did you mean 'helloworld'?"),
        (&["nosuch"], 128, "Unrecognized micro command: nosuch. Please refer to 'micro --help'"),
        (&["helloworld", "cal"], 5, "did you mean 'call'?"),
        (&["helloworld", "call", "--nme=Jane"], 128, "did you mean '--name'?"),
        (&["call", "helloworld", "Helloworld.Cal", "{}"], 5, "did you mean 'Helloworld.Call'?"),
        (&["stor", "list"], 128, "unknown command 'stor'; did you mean 'store'?"),
    ];
    let mut shots = Vec::new();
    for (args, code, message) in cases {
        let run = p.micro(args).code(code);
        assert!(run.stderr.contains(message), "{}", run.snapshot());
        shots.push(run.snapshot());
    }
    insta::assert_snapshot!("suggestions", shots.join("\n"));
}

#[test]
fn every_exit_code_of_the_table() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let dirs = Dirs::new();
    let runs = vec![
        (0, p.micro(["services"])),
        (1, p.cli_in(&dirs, ["user"]).run()),
        (2, p.cli_in(&dirs, ["store", "list"]).run()),
        (4, p.micro(["call", "nosuch", "X.Y", "{}"])),
        (4, offline(&dirs, &["services"]).run()),
        (5, p.micro(["helloworld", "nope"])),
        (6, p.micro(["store", "read", "missing"])),
        (6, p.micro(["config", "get", "missing"])),
        (6, p.micro(["auth", "delete", "rule", "nosuch"])),
        (6, p.micro(["status", "nosuch"])),
        (127, p.micro(["helloworld", "stream", "--count=-1"])),
        (128, p.micro(["-o", "xml", "services"])),
        (128, p.micro(["call", "--timeout", "abc", "helloworld", "Helloworld.Call", "{}"])),
        (128, p.micro(["store", "read", ""])),
        (128, p.micro(["store", "write", "", "v"])),
        (128, p.micro(["auth", "list"])),
        (128, p.micro(["auth"])),
        (128, p.micro(["config", "set"])),
        (128, p.micro(["auth", "create", "rule", "r", "--resource", "nonsense"])),
        (128, p.cli(["-e", "nowhere", "services"]).env_remove("MICRO_PROXY").run()),
        (128, p.micro(["services", "--jq", ".["])),
    ];
    let mut table = String::new();
    for (code, run) in runs {
        let first = run.stderr.lines().next().unwrap_or_default().to_string();
        assert_eq!(run.code, code, "{}", run.snapshot());
        table.push_str(&format!("{code:>3}  {}\n     {first}\n", run.line));
    }
    insta::assert_snapshot!("exit_codes", table);
}

#[test]
fn micro_alone_prints_the_help_to_stderr_and_fails() {
    let dirs = Dirs::new();
    let run = offline(&dirs, &[]).run().code(128);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("Usage: micro [OPTIONS] [COMMAND]"), "{}", run.stderr);
    let codes = &run.stderr[run.stderr.find("Exit codes:").expect("the exit codes are in the help")..];
    insta::assert_snapshot!("help_exit_codes", codes);
    // The same help, on stdout, with --help (exit 0); global options once, under their own heading.
    let help = offline(&dirs, &["--help"]).run().ok();
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("Global options:"), "{}", help.stdout);
    let store = offline(&dirs, &["store", "--help"]).run().ok();
    assert_eq!(store.stdout.matches("--namespace").count(), 1, "{}", store.stdout);
    assert!(store.stdout.contains("Examples:\n  micro store"), "{}", store.stdout);
    assert!(!store.stdout.contains("=]"), "an empty [env: X=] line: {}", store.stdout);
}

#[test]
fn version_with_and_without_a_server() {
    let _s = build_filters().bind_to_scope();
    let dirs = Dirs::new();
    let down = offline(&dirs, &["version", "-o", "json"]).run().ok();
    let doc = down.json();
    assert_eq!(doc["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["server"]["version"].is_null(), "{doc}");
    assert!(doc["server"]["error"].as_str().unwrap_or_default().contains("nothing is listening"), "{doc}");
    let text = offline(&dirs, &["version"]).run().ok();
    assert!(
        text.stdout.starts_with("client  micro ") && text.stdout.contains("server  not reachable"),
        "{}",
        text.stdout
    );

    let p = Platform::start();
    let up = p.micro(["version", "-o", "json"]).ok();
    let doc = up.json();
    assert_eq!(doc["server"]["version"], env!("CARGO_PKG_VERSION"), "{doc}");
    assert_eq!(doc["client"], down.json()["client"]);
    insta::assert_snapshot!("version_json", up.stdout);
    insta::assert_snapshot!("version_text", p.micro(["version"]).ok().stdout);
    let long = p.micro(["--version"]).ok();
    assert_eq!(
        long.stdout,
        format!("micro {}\n", text.stdout.lines().next().unwrap().trim_start_matches("client  micro "))
    );
}

#[test]
fn jq_selects_from_every_json_output() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let names = p.micro(["services", "--jq", ".[].name"]).ok();
    assert!(names.stdout.lines().any(|l| l == "helloworld"), "strings print raw: {}", names.stdout);
    let msg = p.micro(["helloworld", "--name", "Jane", "--jq", ".msg"]).ok();
    assert_eq!(msg.stdout, "Hello Jane\n");
    let call = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"Jo"}"#, "--jq", "{greeting: .msg}"]).ok();
    assert_eq!(call.stdout, "{\n\t\"greeting\": \"Hello Jo\"\n}\n");
    p.micro(["store", "write", "k1", "one"]).ok();
    p.micro(["store", "write", "k2", "two"]).ok();
    // A table command prints JSON under --jq; -o raw keeps each result on one line.
    assert_eq!(p.micro(["store", "list", "--jq", "length"]).ok().stdout, "2\n");
    assert_eq!(p.micro(["-o", "raw", "store", "list", "--jq", "."]).ok().stdout, "[\"k1\",\"k2\"]\n");
    let streamed = p.micro(["helloworld", "stream", "--count", "2", "--jq", ".count"]).ok();
    assert_eq!(streamed.stdout.lines().count(), 2, "{}", streamed.snapshot());

    let bad = p.micro(["services", "--jq", ".[] | "]).code(128);
    let wrong = p.micro(["services", "--jq", ".name"]).code(128);
    assert!(wrong.stderr.contains("cannot index"), "{}", wrong.snapshot());
    insta::assert_snapshot!("jq_errors", format!("{}\n{}", bad.snapshot(), wrong.snapshot()));
}

#[test]
fn every_json_output_is_json() {
    let p = Platform::start();
    for args in [
        &["user", "-o", "json"][..],
        &["user", "token", "-o", "json"],
        &["user", "namespace", "-o", "json"],
        &["user", "config", "-o", "json"],
        &["user", "config", "get", "nothing", "-o", "json"],
        &["env", "get", "-o", "json"],
        &["env", "-o", "json"],
        &["services", "-o", "json"],
        &["status", "-o", "json"],
        &["auth", "list", "rules", "-o", "json"],
        &["auth", "create", "rule", "r1", "--resource", "service:x:*", "-o", "json"],
        &["auth", "delete", "rule", "r1", "-o", "json"],
        &["store", "databases", "-o", "json"],
        &["version", "-o", "json"],
    ] {
        let run = p.micro(args).ok();
        run.json();
    }
    assert_eq!(p.micro(["user", "-o", "json", "--jq", ".id"]).ok().stdout, "admin\n");
    assert_eq!(p.micro(["user", "token", "--jq", ".token"]).ok().stdout.trim(), p.token());
    // Logs in snake_case, like everything else.
    let logs = p.micro(["logs", "server", "-n", "5", "-o", "json"]).ok();
    let docs = logs.json_docs();
    assert!(!docs.is_empty(), "{}", logs.snapshot());
    for doc in docs {
        let keys: Vec<&String> = doc.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["timestamp", "message", "metadata"], "{doc}");
    }
}

#[test]
fn man_pages_are_generated_from_the_command_tree() {
    let dirs = Dirs::new();
    let out = dirs.path().join("man1");
    let run = offline(&dirs, &["man", "--out", &out.to_string_lossy()]).run().ok();
    assert!(run.stderr.starts_with("Wrote ") && run.stdout.is_empty(), "{}", run.snapshot());
    let mut pages: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    pages.sort();
    for page in ["micro.1", "micro-call.1", "micro-store-read.1", "micro-version.1", "micro-auth-list-rules.1"] {
        assert!(pages.contains(&page.to_string()), "{page} missing from {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.starts_with("micro-man")), "{pages:?}");
    let micro = std::fs::read_to_string(out.join("micro.1")).unwrap();
    assert!(micro.starts_with(".ie \\n(.g .ds Aq") || micro.contains(".TH micro 1"), "{micro}");
    assert!(micro.contains("Exit codes"), "the man page has the exit codes");
    // The hidden command is not in the help.
    assert!(!offline(&dirs, &["--help"]).run().ok().stdout.contains("  man "));
    // When man is installed, it renders the page.
    if std::process::Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let rendered = std::process::Command::new("man")
            .arg("-l")
            .arg(out.join("micro-call.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("micro-call") && text.contains("Examples"), "{text}");
    }
}
