//! Shell completion of values: services, endpoints, envs and store tables, through the dynamic completer the
//! scripts call (`COMPLETE=<shell> micro -- WORDS`, with the variables each script sets), and through a real bash
//! in a tmux pane.

use crate::support::{Platform, micro_bin};
use crate::tmux::Tmux;
use std::time::{Duration, Instant};

/// What `shell`'s script gets back for `words` (`micro` first, the word being completed last): one candidate per
/// line, with its help after a tab (fish) or a colon (zsh) when the shell shows help.
fn complete(p: &Platform, shell: &str, words: &[&str]) -> Vec<String> {
    let mut args = vec!["--"];
    args.extend(words);
    let index = (words.len() - 1).to_string();
    let run = p
        .cli(args)
        .env("COMPLETE", shell)
        .env("_CLAP_COMPLETE_INDEX", &index)
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .run()
        .ok();
    run.stdout.lines().map(str::to_string).collect()
}

/// The values bash gets for `words`, without the flags it also offers for an empty word.
fn values(p: &Platform, words: &[&str]) -> Vec<String> {
    complete(p, "bash", words).into_iter().filter(|c| !c.starts_with('-')).collect()
}

#[test]
fn services_endpoints_envs_and_tables_complete() {
    let p = Platform::with(&["helloworld"]);
    // Services complete from the schema cache only: nothing before helloworld is cached.
    assert_eq!(values(&p, &["micro", "call", "hel"]), Vec::<String>::new());
    p.micro(["helloworld", "--help"]).ok();
    p.micro(["env", "add", "prod", "127.0.0.1:1"]).ok();
    p.micro(["store", "write", "--table", "shop", "apple", "red"]).ok();

    for command in
        [&["call"][..], &["stream"], &["health"], &["kill"], &["logs"], &["update"], &["stats"], &["get", "service"]]
    {
        let mut words = vec!["micro"];
        words.extend(command);
        words.push("hel");
        assert_eq!(values(&p, &words), ["helloworld"], "{words:?}");
    }
    assert!(values(&p, &["micro", "logs", ""]).contains(&"server".to_string()));

    // Endpoints after the service, also behind flags.
    assert_eq!(
        values(&p, &["micro", "call", "helloworld", ""]),
        ["Helloworld.Call", "Helloworld.PingPong", "Helloworld.Stream"]
    );
    assert_eq!(values(&p, &["micro", "stream", "helloworld", "Helloworld.S"]), ["Helloworld.Stream"]);
    assert_eq!(
        values(&p, &["micro", "call", "--timeout", "5s", "helloworld", "Helloworld.P"]),
        ["Helloworld.PingPong"]
    );
    assert_eq!(values(&p, &["micro", "call", "nosuchservice", ""]), Vec::<String>::new());

    // Envs from the config file.
    assert_eq!(values(&p, &["micro", "-e", ""]), ["local", "prod"]);
    assert_eq!(values(&p, &["micro", "--env", "p"]), ["prod"]);
    assert_eq!(complete(&p, "bash", &["micro", "--env=p"]), ["--env=prod"]);
    assert_eq!(values(&p, &["micro", "env", "set", ""]), ["local", "prod"]);
    assert_eq!(values(&p, &["micro", "env", "del", "l"]), ["local"]);
    // `-e prod` selects that env's cache, where nothing is cached.
    assert_eq!(values(&p, &["micro", "-e", "prod", "call", "hel"]), Vec::<String>::new());

    // Store tables from the server, of the typed database.
    assert_eq!(values(&p, &["micro", "store", "read", "--table", "s"]), ["shop"]);
    assert_eq!(values(&p, &["micro", "store", "list", "--database", "micro", "--table", ""]), ["shop"]);
    assert_eq!(values(&p, &["micro", "store", "snapshot", "--table", "sh"]), ["shop"]);
    assert_eq!(values(&p, &["micro", "store", "read", "--database", "other", "--table", ""]), Vec::<String>::new());
}

/// zsh and fish show each candidate's help: a service's and an endpoint's proto comments, an env's description.
#[test]
fn zsh_and_fish_get_help_with_each_value() {
    let p = Platform::with(&["helloworld"]);
    p.micro(["helloworld", "--help"]).ok();
    let fish = complete(&p, "fish", &["micro", "call", "helloworld", "Hel"]);
    let zsh = complete(&p, "zsh", &["micro", "call", "hel"]);
    let envs = complete(&p, "fish", &["micro", "env", "set", "l"]);
    insta::assert_snapshot!(
        "zsh_and_fish_help",
        format!(
            "$ COMPLETE=fish micro -- micro call helloworld Hel\n{}\n$ COMPLETE=zsh micro -- micro call hel\n{}\n\
             $ COMPLETE=fish micro -- micro env set l\n{}\n",
            fish.join("\n"),
            zsh.join("\n"),
            envs.join("\n")
        )
    );
}

/// With the server down, services and endpoints still complete (local files only), and `--table` gives up within
/// its timeout.
#[test]
fn completion_works_offline_and_tables_give_up_quickly() {
    let mut p = Platform::with(&["helloworld"]);
    p.micro(["helloworld", "--help"]).ok();
    p.kill_server();
    assert_eq!(values(&p, &["micro", "call", "hel"]), ["helloworld"]);
    assert_eq!(values(&p, &["micro", "call", "helloworld", "Helloworld.C"]), ["Helloworld.Call"]);
    let started = Instant::now();
    assert_eq!(values(&p, &["micro", "store", "read", "--table", ""]), Vec::<String>::new());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// A real bash with the script of `micro completion bash` loaded: Tab completes a service, then its endpoint.
#[test]
fn bash_completes_a_service_and_its_endpoint() {
    if !crate::tmux::available() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    p.micro(["helloworld", "--help"]).ok();
    let bin = micro_bin();
    let path =
        format!("{}:{}", bin.parent().expect("the binary's dir").display(), std::env::var("PATH").unwrap_or_default());
    let env = [("PATH", path.as_str()), ("PS1", "$ "), ("INPUTRC", "/dev/null")];
    let t = Tmux::start(&p, "bash", &env, std::path::Path::new("bash"), &["--norc", "--noprofile"]);
    t.wait_line("$");
    t.text("source <(micro completion bash)");
    t.keys(&["Enter"]);
    // Keys typed before bash reads them again would be echoed by the terminal: wait for its next prompt.
    t.wait("the script is loaded", |s| s.lines().filter(|l| l.starts_with('$')).count() == 2 && s.ends_with("\n$"));
    t.text("micro call hel");
    t.keys(&["Tab"]);
    t.wait_line("$ micro call helloworld");
    t.text("Helloworld.P");
    t.keys(&["Tab"]);
    t.wait_line("$ micro call helloworld Helloworld.PingPong");
    t.keys(&["C-u"]);
    t.text("micro store read --ta");
    t.keys(&["Tab"]);
    t.wait_line("$ micro store read --table");
}
