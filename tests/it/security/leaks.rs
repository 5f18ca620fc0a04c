//! Finding 10 of the attack run: what one tenant could learn about another, and the rights of the runtime's
//! service accounts.

use crate::support::{Dirs, Platform};

/// Logs in `dirs` as `id` of namespace `ns`.
fn login(p: &Platform, dirs: &Dirs, id: &str, secret: &str, ns: &str) {
    let run = p.cli_in(dirs, ["login", "--username", id, "--password-stdin", "--namespace", ns]).stdin(secret).run();
    assert_eq!(run.code, 0, "{}", run.snapshot());
}

#[test]
fn runtime_logs_of_another_namespace_are_denied_whether_the_service_exists_or_not() {
    let p = Platform::start();
    let dir = p.path("sleeper");
    std::fs::create_dir_all(&dir).unwrap();
    p.micro(["run", "--command", "sleep 60", &dir.to_string_lossy()]).ok();
    p.micro(["auth", "create", "account", "mallory", "--secret", "m", "--scopes", "admin", "--namespace", "foo"]).ok();
    let mallory = Dirs::new();
    login(&p, &mallory, "mallory", "m", "foo");
    // An admin of `foo` asks for `micro`'s logs: an existing service and a missing one get the same answer.
    let existing = p.cli_in(&mallory, ["logs", "sleeper", "--namespace", "micro"]).run();
    let missing = p.cli_in(&mallory, ["logs", "no-such-service", "--namespace", "micro"]).run();
    assert_eq!(existing.code, missing.code, "{}\n{}", existing.snapshot(), missing.snapshot());
    assert_eq!(existing.code, 2, "{}", existing.snapshot());
    p.micro(["kill", "sleeper"]).ok();
}

#[test]
fn a_runtime_service_account_administers_nothing() {
    let p = Platform::start();
    let dir = p.path("probe");
    std::fs::create_dir_all(&dir).unwrap();
    // The service prints its own credentials' scopes by logging in with them and listing accounts (an admin
    // action): it must be refused.
    let script = r#"echo "id=$MICRO_AUTH_ID"; sleep 60"#;
    p.micro(["run", "--command", script, &dir.to_string_lossy()]).ok();
    let mut id = String::new();
    p.wait_until("the probe logs its account", |p| {
        let logs = p.micro(["logs", "probe"]).stdout;
        id = logs.lines().find_map(|l| l.split("id=").nth(1)).unwrap_or_default().trim().to_string();
        !id.is_empty()
    });
    let accounts = p.micro(["auth", "list", "accounts", "-o", "json"]).ok().json();
    let account = accounts
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("no account {id} in {accounts}"))
        .clone();
    assert_eq!(account["scopes"], serde_json::json!(["service:probe"]), "{account}");
    p.micro(["kill", "probe"]).ok();
}
