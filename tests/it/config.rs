//! The config service through the real CLI and library: get, set and delete by dot path, Micro's merge semantics,
//! strings that are not JSON, secrets (hidden, revealed, encrypted at rest), errors, access rules, and a restart.

use crate::support::{Dirs, Platform, block_on};
use micro::client::Client;
use micro::config::Config;

#[test]
fn set_get_delete_with_merge_semantics() {
    let p = Platform::start();
    let get = |key: &str| p.micro(["config", "get", key]).ok().stdout;
    let set = |key: &str, value: &str| {
        let run = p.micro(["config", "set", key, value]).ok();
        assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""), "no output: {}", run.snapshot());
    };

    // Values are JSON when they parse, strings otherwise; strings print without quotes.
    set("num", "42");
    set("flag", "true");
    set("quoted", "\"x\"");
    set("plain", "hello world");
    set("broken", "{not json");
    assert_eq!(get("num"), "42\n");
    assert_eq!(get("flag"), "true\n");
    assert_eq!(get("quoted"), "x\n");
    assert_eq!(get("plain"), "hello world\n");
    assert_eq!(get("broken"), "{not json\n");

    // An object merges leaf by leaf; a scalar replaces the subtree. Output is compact with sorted keys.
    set("key", r#"{"b":{"b1":1},"a":1}"#);
    set("key", r#"{"b":{"b2":2.2}}"#);
    set("key.b.b1", "2");
    assert_eq!(get("key"), "{\"a\":1,\"b\":{\"b1\":2,\"b2\":2.2}}\n");
    assert_eq!(get("key.b.b2"), "2.2\n");
    set("key.b", "flat");
    assert_eq!(get("key"), "{\"a\":1,\"b\":\"flat\"}\n");
    // Nested dot paths create what is missing.
    set("deep.er.est", "<html> & co");
    assert_eq!(get("deep"), "{\"er\":{\"est\":\"<html> & co\"}}\n", "HTML is not escaped");
    assert_eq!(
        p.micro(["config", "get", "deep.er", "-o", "json"]).ok().json(),
        serde_json::json!({"est": "<html> & co"})
    );
    assert_eq!(p.micro(["config", "get", "quoted", "-o", "raw"]).ok().stdout, "\"x\"\n");

    let run = p.micro(["config", "del", "key.a"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    assert_eq!(get("key"), "{\"b\":\"flat\"}\n");
    p.micro(["config", "delete", "key"]).ok();

    // Errors, as Micro words them.
    // Errors, in Micro's words, with the codes of the README's table: not found 6, bad input 128.
    for args in [&["config", "get", "key"][..], &["config", "get", "nothing.here"], &["config", "get", "num.sub"]] {
        let run = p.micro(args).code(6);
        assert_eq!(run.stderr, "Not found\n", "{}", run.snapshot());
    }
    for args in [&["config", "get", ""][..], &["config", "get"], &["config", "del"], &["config", "set", "", "1"]] {
        let run = p.micro(args).code(128);
        assert_eq!(run.stderr, "key cannot be blank\n", "{}", run.snapshot());
    }
    let run = p.micro(["config", "set", "lonely"]).code(128);
    assert!(run.stderr.contains("Value arg is required"), "{}", run.snapshot());
    let run = p.micro(["config", "set", "a..b", "1"]).code(128);
    assert!(run.stderr.contains("invalid key \"a..b\""), "{}", run.snapshot());
    // No arguments: a usage error.
    let run = p.micro(["config", "set"]).code(128);
    assert!(run.stderr.contains("Usage: micro config set"), "{}", run.snapshot());
}

#[test]
fn secrets_are_hidden_and_encrypted_at_rest() {
    let p = Platform::start();
    p.micro(["config", "set", "--secret", "db.password", "hunter2-\u{1F512}"]).ok();
    p.micro(["config", "set", "db.host", "localhost"]).ok();
    p.micro(["config", "set", "-s", "api", r#"{"token":"tok-s3cr3t-value","port":8443}"#]).ok();

    assert_eq!(p.micro(["config", "get", "db.password"]).ok().stdout, "[secret]\n");
    assert_eq!(p.micro(["config", "get", "db"]).ok().stdout, "{\"host\":\"localhost\",\"password\":\"[secret]\"}\n");
    assert_eq!(p.micro(["config", "get", "--secret", "db.password"]).ok().stdout, "hunter2-\u{1F512}\n");
    assert_eq!(p.micro(["config", "get", "-s", "api"]).ok().stdout, "{\"port\":8443,\"token\":\"tok-s3cr3t-value\"}\n");
    assert_eq!(p.micro(["config", "get", "api"]).ok().stdout, "{\"port\":\"[secret]\",\"token\":\"[secret]\"}\n");

    // No file in the data dir holds a secret in clear text.
    let data = p.path("data");
    let mut files = 0;
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for secret in ["hunter2", "tok-s3cr3t-value"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in {}", entry.display());
        }
        files += 1;
    }
    assert!(files >= 2, "the data dir has files");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("config.key")).expect("the key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn members_read_admins_write_and_namespaces_isolate() {
    let p = Platform::start();
    p.micro(["config", "set", "greeting", "hello"]).ok();
    p.micro(["config", "set", "--secret", "pw", "s3cret"]).ok();

    // A plain account of micro reads, but does not write or reveal secrets.
    p.micro(["auth", "create", "account", "bob", "--secret", "b-pw"]).ok();
    let bob = Dirs::new();
    p.cli_in(&bob, ["login", "--username", "bob", "--password-stdin"]).stdin("b-pw\n").run().ok();
    assert_eq!(p.cli_in(&bob, ["config", "get", "greeting"]).run().ok().stdout, "hello\n");
    assert_eq!(p.cli_in(&bob, ["config", "get", "pw"]).run().ok().stdout, "[secret]\n");
    p.cli_in(&bob, ["config", "get", "--secret", "pw"]).run().code(2);
    p.cli_in(&bob, ["config", "set", "greeting", "hacked"]).run().code(2);
    p.cli_in(&bob, ["config", "del", "greeting"]).run().code(2);
    p.cli_in(&Dirs::new(), ["config", "get", "greeting"]).run().code(2);

    // A tenant has its own config and cannot read micro's.
    p.micro(["auth", "create", "account", "tadmin", "--secret", "t-pw", "--scopes", "admin", "--namespace", "tenant"])
        .ok();
    let tenant = Dirs::new();
    p.cli_in(&tenant, ["login", "--username", "tadmin", "--password-stdin", "--namespace", "tenant"])
        .stdin("t-pw\n")
        .run()
        .ok();
    p.cli_in(&tenant, ["user", "namespace", "set", "tenant"]).run().ok();
    assert_eq!(p.cli_in(&tenant, ["config", "get", "greeting"]).run().code(6).stderr, "Not found\n");
    p.cli_in(&tenant, ["config", "set", "greeting", "hi from tenant"]).run().ok();
    assert_eq!(p.cli_in(&tenant, ["config", "get", "greeting"]).run().ok().stdout, "hi from tenant\n");
    let run = p.cli_in(&tenant, ["config", "get", "greeting", "--namespace", "micro"]).run().code(2);
    assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    assert_eq!(p.micro(["config", "get", "greeting"]).ok().stdout, "hello\n");
    // The micro admin administers the tenant's config too.
    assert_eq!(p.micro(["config", "get", "greeting", "--namespace", "tenant"]).ok().stdout, "hi from tenant\n");
}

#[test]
fn config_survives_a_restart_and_the_library_reads_it() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Db {
        host: String,
        port: u16,
    }
    let mut p = Platform::start();
    p.micro(["config", "set", "app.db", r#"{"host":"db.local","port":5432}"#]).ok();
    p.micro(["config", "set", "--secret", "app.db.password", "pa55"]).ok();
    p.restart_server(false);
    assert_eq!(p.micro(["config", "get", "app.db.host"]).ok().stdout, "db.local\n");
    assert_eq!(p.micro(["config", "get", "--secret", "app.db.password"]).ok().stdout, "pa55\n");

    block_on(async {
        let client = Client::new(&p.addr, "micro").expect("a client").with_token(p.token());
        let config = Config::from_client(&client);
        assert_eq!(config.scan::<Db>("app.db").await.unwrap(), Some(Db { host: "db.local".into(), port: 5432 }));
        assert_eq!(config.get_or("app.workers", 4u32).await.unwrap(), 4);
        assert_eq!(config.scan::<String>("app.db.password").await.unwrap().as_deref(), Some("[secret]"));
        assert_eq!(config.secret::<String>("app.db.password").await.unwrap().as_deref(), Some("pa55"));
        config.set("app.workers", &8).await.unwrap();
        assert_eq!(config.get_or("app.workers", 4u32).await.unwrap(), 8);
        config.set_secret("app.key", "k3y").await.unwrap();
        config.delete("app.db").await.unwrap();
        assert_eq!(config.scan::<Db>("app.db").await.unwrap(), None);
    });
    assert_eq!(p.micro(["config", "get", "app"]).ok().stdout, "{\"key\":\"[secret]\",\"workers\":8}\n");
}
