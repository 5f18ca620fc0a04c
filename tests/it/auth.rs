//! Auth through the real CLI: login and logout, token refresh, expired, tampered and foreign tokens, rules (priority,
//! deny-wins, public access), namespace isolation, password changes, accounts by id or name, and admin RPCs without
//! a login. Every [`Platform`] starts logged in as the default admin (`p.micro`); other users run the CLI with their
//! own config dir (`p.cli_in(&dirs, …)`), so their token stores are separate.

use crate::support::{ADMIN, Dirs, Platform, Run, snapshot_settings};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs() as i64
}

/// `micro login --username USER --password-stdin [--namespace NS]` in `dirs`, with `password` on stdin.
fn login(p: &Platform, dirs: &Dirs, user: &str, password: &str, namespace: Option<&str>) -> Run {
    let mut args = vec!["login", "--username", user, "--password-stdin"];
    if let Some(ns) = namespace {
        args.extend(["--namespace", ns]);
    }
    p.cli_in(dirs, args).stdin(&format!("{password}\n")).run()
}

/// Logs in, asserting success.
#[track_caller]
fn logged_in(p: &Platform, dirs: &Dirs, user: &str, password: &str, namespace: Option<&str>) {
    let run = login(p, dirs, user, password, namespace).ok();
    assert_eq!(run.stdout, "Successfully logged in.\n", "{}", run.snapshot());
}

/// Creates an account in the `micro` namespace as the admin.
#[track_caller]
fn create_account(p: &Platform, id: &str, extra: &[&str]) {
    let mut args = vec!["auth", "create", "account", id];
    args.extend_from_slice(extra);
    let run = p.micro(args).ok();
    assert!(run.stdout.starts_with("Account created: {"), "{}", run.snapshot());
}

/// The token stored in a `tokens.json` for env `local` and `namespace`.
fn stored(tokens_file: &std::path::Path, namespace: &str) -> Option<Value> {
    let text = std::fs::read_to_string(tokens_file).ok()?;
    let file: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("tokens.json is not JSON ({e}):\n{text}"));
    file["envs"]["local"].get(namespace).cloned()
}

/// An int64 of proto3 JSON: a number or a decimal string.
fn int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an int64: {v}")),
        Value::String(s) => s.parse().unwrap_or_else(|e| panic!("not an int64 ({e}): {v}")),
        _ => panic!("not an int64: {v}"),
    }
}

/// `micro call auth Auth.Token REQUEST -o raw` (as whoever `cli` is), returning the token.
#[track_caller]
fn auth_token(run: Run) -> Value {
    let run = run.ok();
    let token = run.json()["token"].clone();
    assert!(token["access_token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{}", run.snapshot());
    token
}

/// `micro helloworld call --name=NAME` run with `MICRO_AUTH_TOKEN=token` by a user who is not logged in.
fn call_with_token(p: &Platform, anon: &Dirs, token: &str) -> Run {
    p.cli_in(anon, ["helloworld", "call", "--name=tok"]).env("MICRO_AUTH_TOKEN", token).run()
}

#[test]
fn login_and_logout() {
    let p = Platform::with(&["helloworld"]);
    // The harness logged in as the admin with `--password-stdin`.
    assert_eq!(p.micro(["user"]).ok().stdout, "admin\n");
    let token = stored(&p.tokens_file(), "micro").expect("a token saved for env local, namespace micro");
    assert_eq!(token["account_id"], "admin");
    assert_eq!(p.micro(["helloworld", "call", "--name=x"]).ok().json()["msg"], "Hello x");
    let refresh = token["refresh_token"].as_str().expect("a refresh token").to_string();

    let run = p.micro(["logout"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""), "logout prints nothing");
    assert_eq!(stored(&p.tokens_file(), "micro"), None, "the token is forgotten");
    // …and the server revoked its refresh token: a copy of the token store cannot log in again.
    let body = serde_json::json!({ "refresh_token": refresh }).to_string();
    let run = p.micro(["call", "auth", "Auth.Token", &body]).code(2);
    assert!(run.stderr.contains("invalid token provided"), "{}", run.snapshot());
    let run = p.micro(["helloworld", "call", "--name=x"]).code(2);
    assert!(run.stderr.contains("Not authorized"), "{}", run.snapshot());
    assert_eq!(run.stdout, "");
    let run = p.micro(["user"]).code(1);
    assert!(run.stderr.contains("You are not logged in"), "{}", run.snapshot());
    // Logging out again is harmless.
    p.micro(["logout"]).ok();

    let run = p.cli(["login", "--username", ADMIN.0, "--password-stdin"]).stdin("micro\n").run().ok();
    assert_eq!(run.stdout, "Successfully logged in.\n", "{}", run.snapshot());
    assert_eq!(p.micro(["helloworld", "call", "--name=again"]).ok().json()["msg"], "Hello again");

    // `--password` and the MICRO_USERNAME / MICRO_PASSWORD variables log in too.
    let other = Dirs::new();
    let run = p.cli_in(&other, ["login", "--username", "admin", "--password", "micro"]).run().ok();
    assert_eq!(run.stdout, "Successfully logged in.\n");
    p.cli_in(&other, ["logout"]).run().ok();
    let run = p.cli_in(&other, ["login"]).env("MICRO_USERNAME", "admin").env("MICRO_PASSWORD", "micro").run().ok();
    assert_eq!(run.stdout, "Successfully logged in.\n");
    assert_eq!(p.cli_in(&other, ["user"]).run().ok().stdout, "admin\n");
}

#[test]
fn wrong_or_missing_credentials() {
    let p = Platform::with(&["helloworld"]);
    let before = std::fs::read_to_string(p.tokens_file()).expect("the admin's tokens.json");

    let run = login(&p, &Dirs::new(), "admin", "wrong", None).code(2);
    assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
    assert_eq!(run.stdout, "");
    // A missing account gets the same answer as a wrong password.
    let run = login(&p, &Dirs::new(), "nobody", "micro", None).code(2);
    assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
    // A failed login leaves the saved token alone.
    let run = p.cli(["login", "--username", "admin", "--password-stdin"]).stdin("wrong\n").run().code(2);
    assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
    assert_eq!(std::fs::read_to_string(p.tokens_file()).unwrap(), before);
    p.micro(["helloworld", "call", "--name=still"]).ok();

    // Without a terminal micro never prompts: a missing credential is invalid input that names the flag.
    let anon = Dirs::new();
    let run = p.cli_in(&anon, ["login", "--username", "admin"]).run().code(128);
    assert!(run.stderr.contains("--password-stdin") && run.stderr.contains("MICRO_PASSWORD"), "{}", run.snapshot());
    let run = p.cli_in(&anon, ["login"]).run().code(128);
    assert!(run.stderr.contains("--username"), "{}", run.snapshot());
    let run = p.cli_in(&anon, ["login", "--password-stdin"]).stdin("micro\n").run().code(128);
    assert!(run.stderr.contains("--username"), "{}", run.snapshot());
    let run = p.cli_in(&anon, ["login", "--username", "admin", "--password-stdin"]).run().code(128);
    assert!(run.stderr.contains("empty"), "an empty stdin is no password:\n{}", run.snapshot());
    assert!(!anon.tokens_file().exists(), "nothing was saved");
}

#[test]
fn login_by_id_or_by_name() {
    let p = Platform::with(&["helloworld"]);
    create_account(&p, "u-42", &["--name", "alice", "--secret", "pw-alice"]);
    let alice = Dirs::new();

    logged_in(&p, &alice, "alice", "pw-alice", None);
    assert_eq!(p.cli_in(&alice, ["user"]).run().ok().stdout, "alice\n");
    let token = stored(&alice.tokens_file(), "micro").expect("a saved token");
    assert_eq!(token["account_id"], "u-42", "the store keeps the id, whatever name logged in");
    let run = p.cli_in(&alice, ["helloworld", "call", "--name=alice"]).run().ok();
    assert_eq!(run.json()["msg"], "Hello alice", "any account may call services");
    p.cli_in(&alice, ["logout"]).run().ok();

    logged_in(&p, &alice, "u-42", "pw-alice", None);
    assert_eq!(p.cli_in(&alice, ["user"]).run().ok().stdout, "alice\n");
    assert_eq!(stored(&alice.tokens_file(), "micro").expect("a saved token")["account_id"], "u-42");

    // The name is not a password for the id, nor the other way round.
    let run = login(&p, &Dirs::new(), "alice", "u-42", None).code(2);
    assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
}

#[test]
fn a_duplicate_account_is_refused() {
    let p = Platform::start();
    create_account(&p, "dup", &["--secret", "first"]);
    let run = p.micro(["auth", "create", "account", "dup", "--secret", "second"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("already exists"), "{}", run.snapshot());

    create_account(&p, "u-1", &["--name", "carol", "--secret", "c"]);
    // A new id with a name that is taken, or with the id of another account as its name.
    for args in [["u-2", "--name", "carol"], ["u-3", "--name", "dup"]] {
        let run = p.micro(["auth", "create", "account"].into_iter().chain(args).chain(["--secret", "x"]));
        assert_ne!(run.code, 0, "{}", run.snapshot());
        assert!(run.stderr.contains("already exists"), "{}", run.snapshot());
    }
    // The refused accounts do not exist, and the first `dup` keeps its secret.
    let list = p.micro(["auth", "list", "accounts", "-o", "json"]).ok().json();
    let mut ids: Vec<&str> = list.as_array().expect("an array").iter().filter_map(|a| a["id"].as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["admin", "dup", "u-1"]);
    logged_in(&p, &Dirs::new(), "dup", "first", None);
    login(&p, &Dirs::new(), "dup", "second", None).code(2);
}

#[test]
fn token_refresh_rotates_the_refresh_token() {
    let p = Platform::with(&["helloworld"]);
    let path = p.tokens_file();
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let old = file["envs"]["local"]["micro"].clone();
    let old_refresh = old["refresh_token"].as_str().expect("a refresh token").to_string();
    assert!(int(&old["expiry"]) > unix_now() + 300, "a login token lives longer than 5 minutes: {old}");
    // Let the access token expire within the refresh margin (a minute): the next command refreshes it first.
    file["envs"]["local"]["micro"]["expiry"] = (unix_now() + 10).into();
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();

    let run = p.micro(["helloworld", "call", "--name=fresh"]).ok();
    assert_eq!(run.json()["msg"], "Hello fresh");
    let new = stored(&path, "micro").expect("still logged in");
    let new_refresh = new["refresh_token"].as_str().expect("a refresh token").to_string();
    assert_ne!(new_refresh, old_refresh, "the refresh token rotated:\n{new}");
    assert!(int(&new["expiry"]) > unix_now() + 300, "a new access token was saved: {new}");
    assert_eq!(new["account_id"], "admin");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token store is private");
    }

    // The old refresh token was used up; the new one works.
    let body = |t: &str| serde_json::json!({ "refresh_token": t }).to_string();
    let run = p.micro(["call", "auth", "Auth.Token", &body(&old_refresh)]).code(2);
    assert!(run.stderr.contains("invalid token"), "{}", run.snapshot());
    let rotated = auth_token(p.micro(["call", "auth", "Auth.Token", &body(&new_refresh), "-o", "raw"]));
    assert_ne!(rotated["refresh_token"], new_refresh.as_str());
    // …and now `new_refresh` is used up too.
    p.micro(["call", "auth", "Auth.Token", &body(&new_refresh)]).code(2);
}

#[test]
fn a_refused_refresh_token_logs_out() {
    let p = Platform::with(&["helloworld"]);
    let path = p.tokens_file();
    let token = stored(&path, "micro").expect("logged in");
    // Use the refresh token up behind the CLI's back, then make the saved access token due for a refresh.
    let body = serde_json::json!({ "refresh_token": token["refresh_token"] }).to_string();
    auth_token(p.micro(["call", "auth", "Auth.Token", &body, "-o", "raw"]));
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file["envs"]["local"]["micro"]["expiry"] = (unix_now() + 10).into();
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();

    let run = p.micro(["helloworld", "call", "--name=x"]).code(2);
    assert!(run.stderr.contains("Not authorized"), "{}", run.snapshot());
    assert_eq!(stored(&path, "micro"), None, "the refused pair was dropped");
}

#[test]
fn expired_tampered_and_foreign_tokens_are_denied() {
    use base64::Engine;
    let p = Platform::with(&["helloworld"]);
    let anon = Dirs::new();
    // Not logged in, but with a good token in MICRO_AUTH_TOKEN: the call works.
    let run = call_with_token(&p, &anon, p.token()).ok();
    assert_eq!(run.json()["msg"], "Hello tok");
    call_with_token(&p, &anon, "").code(2);

    // Tampered: one character of the signature changed.
    let good = p.token().to_string();
    let sig_at = good.rfind('.').expect("a JWT") + 10;
    let mut bytes = good.clone().into_bytes();
    bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_ne!(tampered, good);
    let run = call_with_token(&p, &anon, &tampered).code(2);
    assert!(run.stderr.contains("signature"), "{}", run.snapshot());
    assert_eq!(run.stdout, "");

    // Forged claims: a later expiry and another subject under the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).expect("base64url claims")).unwrap();
    claims["exp"] = (int(&claims["exp"]) + 3600).into();
    claims["sub"] = "root".into();
    let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
    call_with_token(&p, &anon, &forged).code(2);

    // Garbage.
    call_with_token(&p, &anon, "not-a-jwt").code(2);

    // A token signed by another server's key (its own data dir): valid there, refused here.
    let q = Platform::start();
    let foreign = q.token().to_string();
    q.cli_in(&anon, ["auth", "list", "accounts"]).env("MICRO_AUTH_TOKEN", &foreign).run().ok();
    let run = call_with_token(&p, &anon, &foreign).code(2);
    assert!(run.stderr.contains("signature"), "{}", run.snapshot());
    drop(q);

    // Expired: a one-second token, used once the server's clock (this machine's) has passed its expiry.
    let req = r#"{"id":"admin","secret":"micro","token_expiry":1}"#;
    let short = auth_token(p.cli_in(&anon, ["call", "auth", "Auth.Token", req, "-o", "raw"]).run());
    let (created, expiry) = (int(&short["created"]), int(&short["expiry"]));
    assert!(expiry - created <= 1, "the token lives at most a second: {short}");
    assert!(expiry - unix_now() < 5, "the wait below is bounded: {short}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while unix_now() <= expiry {
        assert!(Instant::now() < deadline, "the clock did not pass {expiry}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = call_with_token(&p, &anon, short["access_token"].as_str().unwrap()).code(2);
    assert!(run.stderr.contains("expired"), "{}", run.snapshot());
}

#[test]
fn rule_priority_and_deny_wins() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    create_account(&p, "dev", &["--secret", "dev-pw"]);
    let dev = Dirs::new();
    logged_in(&p, &dev, "dev", "dev-pw", None);
    let dev_call = || p.cli_in(&dev, ["helloworld", "call", "--name=dev"]).run();
    assert_eq!(dev_call().ok().json()["msg"], "Hello dev");

    let rule = |args: &[&str]| {
        let run = p.micro(["auth", "create", "rule"].iter().chain(args)).ok();
        assert_eq!(run.stdout, "Rule created\n", "{}", run.snapshot());
    };
    rule(&[
        "deny-hello",
        "--resource",
        "service:helloworld:*",
        "--access",
        "denied",
        "--priority",
        "0",
        "--scope",
        "*",
    ]);
    let run = dev_call().code(2);
    assert!(run.stderr.contains("Forbidden"), "{}", run.snapshot());
    p.micro(["helloworld", "call", "--name=admin"]).code(2);
    p.cli_in(&dev, ["call", "helloworld", "Helloworld.Call", r#"{"name":"x"}"#]).run().code(2);
    // Only helloworld is denied.
    p.micro(["auth", "list", "accounts"]).ok();

    // A grant at the same priority: the deny still wins.
    rule(&[
        "grant-hello",
        "--resource",
        "service:helloworld:*",
        "--access",
        "granted",
        "--priority",
        "0",
        "--scope",
        "*",
    ]);
    dev_call().code(2);
    // A grant at a higher priority wins.
    rule(&["allow-hello", "--resource", "service:helloworld:Helloworld.*", "--priority", "1", "--scope", "*"]);
    assert_eq!(dev_call().ok().json()["msg"], "Hello dev");
    assert_eq!(p.micro(["helloworld", "call", "--name=admin"]).ok().json()["msg"], "Hello admin");

    let run = p.micro(["auth", "list", "rules"]).ok();
    insta::assert_snapshot!("rules_by_priority", run.stdout);
    let ids: Vec<&str> = run.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    let at = |id: &str| ids.iter().position(|i| *i == id).unwrap_or_else(|| panic!("{id} not listed:\n{}", run.stdout));
    assert!(at("system-login") < at("allow-hello"), "highest priority first: {ids:?}");
    assert!(at("allow-hello") < at("deny-hello") && at("allow-hello") < at("grant-hello"), "{ids:?}");
    let json = p.micro(["auth", "list", "rules", "-o", "json"]).ok().json();
    let deny = json.as_array().expect("an array").iter().find(|r| r["id"] == "deny-hello").expect("deny-hello");
    assert_eq!(deny["access"], "DENIED");
    assert_eq!(deny["priority"], 0);
    assert_eq!(deny["scope"], "*");
    assert_eq!(deny["resource"]["name"], "helloworld");
    // Any account may list the rules of its namespace; only admins change them.
    p.cli_in(&dev, ["auth", "list", "rules"]).run().ok();
    let run = p.cli_in(&dev, ["auth", "create", "rule", "mine", "--resource", "service:*:*", "--scope", "*"]).run();
    assert_eq!(run.code, 2, "{}", run.snapshot());
    p.cli_in(&dev, ["auth", "delete", "rule", "deny-hello"]).run().code(2);

    let run = p.micro(["auth", "delete", "rule", "allow-hello"]).ok();
    assert_eq!(run.stdout, "Rule deleted\n");
    dev_call().code(2);
    p.micro(["auth", "delete", "rule", "deny-hello"]).ok();
    assert_eq!(dev_call().ok().json()["msg"], "Hello dev", "the grant is left");
    let run = p.micro(["auth", "delete", "rule", "deny-hello"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("not found"), "{}", run.snapshot());
    // System rules cannot be deleted, nor shadowed by a rule of the same id.
    let run = p.micro(["auth", "delete", "rule", "system-login"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    let run = p.micro(["auth", "create", "rule", "system-x", "--resource", "service:*:*"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
}

#[test]
fn a_public_rule_lets_anonymous_callers_in() {
    let p = Platform::with(&["helloworld"]);
    let anon = Dirs::new();
    let anon_call = || p.cli_in(&anon, ["helloworld", "call", "--name=anon"]).run();
    let run = anon_call().code(2);
    assert!(run.stderr.contains("Not authorized"), "{}", run.snapshot());

    // No --scope: public.
    p.micro(["auth", "create", "rule", "public-hello", "--resource", "service:helloworld:Helloworld.Call"]).ok();
    let rules = p.micro(["auth", "list", "rules"]).ok().stdout;
    let row = rules.lines().find(|l| l.starts_with("public-hello ")).unwrap_or_else(|| panic!("{rules}"));
    assert!(row.contains("<public>") && row.contains("GRANTED"), "{row}");
    assert_eq!(anon_call().ok().json()["msg"], "Hello anon");
    // Only the endpoint the rule names.
    p.cli_in(&anon, ["helloworld", "stream", "--count=1"]).run().code(2);

    // An empty --scope is public too.
    let args = [
        "auth",
        "create",
        "rule",
        "public-stream",
        "--scope",
        "",
        "--resource",
        "service:helloworld:Helloworld.Stream",
    ];
    p.micro(args).ok();
    let run = p.cli_in(&anon, ["helloworld", "stream", "--count=2"]).run().ok();
    assert_eq!(run.json_docs().len(), 2, "{}", run.snapshot());
    let json = p.micro(["auth", "list", "rules", "-o", "json"]).ok().json();
    let scope = |id: &str| {
        json.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id}: {json:#}"))["scope"]
            .clone()
    };
    assert_eq!(scope("public-hello"), "");
    assert_eq!(scope("public-stream"), "");

    p.micro(["auth", "delete", "rule", "public-hello"]).ok();
    anon_call().code(2);
}

#[test]
fn core_admin_rpcs_need_a_login() {
    let p = Platform::start();
    let anon = Dirs::new();
    let anon_run = |args: &[&str]| p.cli_in(&anon, args).run();
    for args in [
        &["auth", "list", "accounts"][..],
        &["call", "auth", "Accounts.List"],
        &["call", "auth", "Accounts.List", r#"{"options":{"namespace":"micro"}}"#],
        &["auth", "list", "rules"],
        &["call", "auth", "Rules.List"],
        &["auth", "create", "account", "intruder", "--secret", "x", "--scopes", "admin"],
        &["call", "auth", "Auth.Generate", r#"{"id":"intruder","secret":"x","scopes":["admin"]}"#],
        &["auth", "create", "rule", "open", "--resource", "*:*:*"],
        &[
            "call",
            "auth",
            "Rules.Create",
            r#"{"rule":{"id":"open","resource":{"type":"*","name":"*","endpoint":"*"}}}"#,
        ],
        &["auth", "delete", "account", "admin"],
        &["auth", "update", "secret", "admin", "--new-secret", "x"],
    ] {
        let run = anon_run(args);
        assert_eq!(run.code, 2, "without a login:\n{}", run.snapshot());
    }
    // Registry reads in `micro` are public.
    let run = anon_run(&["services"]).ok();
    assert!(run.stdout.lines().any(|l| l == "registry"), "{}", run.snapshot());

    // Nothing was created, and the admin's password still works.
    let list = p.micro(["auth", "list", "accounts", "-o", "json"]).ok().json();
    let ids: Vec<&str> = list.as_array().expect("an array").iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["admin"]);
    let rules = p.micro(["auth", "list", "rules"]).ok().stdout;
    assert!(!rules.contains("open"), "{rules}");
    logged_in(&p, &Dirs::new(), "admin", "micro", None);

    // Logged in without the admin scope is no better.
    create_account(&p, "user", &["--secret", "pw"]);
    let user = Dirs::new();
    logged_in(&p, &user, "user", "pw", None);
    for args in [&["auth", "list", "accounts"][..], &["call", "auth", "Accounts.List"]] {
        let run = p.cli_in(&user, args).run().code(2);
        assert!(run.stderr.contains("not an administrator"), "{}", run.snapshot());
    }
    p.cli_in(&user, ["auth", "create", "account", "x", "--secret", "x", "--scopes", "admin"]).run().code(2);
    p.cli_in(&user, ["auth", "delete", "account", "admin"]).run().code(2);
}

#[test]
fn namespaces_are_isolated() {
    let p = Platform::with(&["helloworld"]);
    // The micro admin creates the first admin of `tenant`.
    let run = p
        .micro([
            "auth",
            "create",
            "account",
            "tadmin",
            "--secret",
            "t-pw",
            "--scopes",
            "admin",
            "--namespace",
            "tenant",
        ])
        .ok();
    assert!(run.stdout.contains(r#""issuer":"tenant""#), "{}", run.snapshot());
    let admins = p.micro(["auth", "list", "accounts", "--namespace", "tenant"]).ok().stdout;
    let ids: Vec<&str> = admins.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["tadmin"], "{admins}");

    let tenant = Dirs::new();
    // tadmin is not an account of `micro`.
    login(&p, &tenant, "tadmin", "t-pw", None).code(2);
    logged_in(&p, &tenant, "tadmin", "t-pw", Some("tenant"));
    assert!(stored(&tenant.tokens_file(), "tenant").is_some(), "saved for namespace tenant");
    p.cli_in(&tenant, ["user", "namespace", "set", "tenant"]).run().ok();
    assert_eq!(p.cli_in(&tenant, ["user", "namespace"]).run().ok().stdout, "tenant\n");
    assert_eq!(p.cli_in(&tenant, ["user"]).run().ok().stdout, "tadmin\n");
    let t = |args: &[&str]| p.cli_in(&tenant, args).run();

    // In its own namespace tadmin is an admin: it sees its accounts only, and an empty registry.
    let run = t(&["auth", "list", "accounts", "-o", "json"]).ok();
    let ids: Vec<Value> = run.json().as_array().expect("an array").iter().map(|a| a["id"].clone()).collect();
    assert_eq!(ids, ["tadmin"]);
    assert_eq!(t(&["services"]).ok().stdout, "");
    create_account_in(&p, &tenant, "tuser");

    // With `--namespace micro` the CLI sends tadmin's token (the only one it has): the server refuses it.
    let refused = |args: &[&str]| {
        let run = t(args).code(2);
        assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    };
    refused(&["auth", "list", "accounts", "--namespace", "micro"]);
    refused(&["auth", "list", "rules", "--namespace", "micro"]);
    refused(&["auth", "create", "account", "evil", "--secret", "x", "--scopes", "admin", "--namespace", "micro"]);
    refused(&["auth", "create", "rule", "open", "--resource", "*:*:*", "--namespace", "micro"]);
    refused(&["auth", "update", "secret", "admin", "--new-secret", "x", "--namespace", "micro"]);
    refused(&["call", "helloworld", "Helloworld.Call", r#"{"name":"t"}"#, "--namespace", "micro"]);
    // micro's registry is public to anonymous callers, but an account of another namespace is kept out of it.
    refused(&["services", "--namespace", "micro"]);
    p.cli_in(&Dirs::new(), ["services", "--namespace", "micro"]).run().ok();
    // The explicit token is refused the same way.
    let token = t(&["user", "token"]).ok().stdout.trim().to_string();
    let run = p
        .cli_in(&Dirs::new(), ["auth", "list", "accounts", "--namespace", "micro"])
        .env("MICRO_AUTH_TOKEN", &token)
        .run()
        .code(2);
    assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    // …and nothing changed in micro.
    let ids = p.micro(["auth", "list", "accounts", "-o", "json"]).ok().json();
    let ids: Vec<&str> = ids.as_array().unwrap().iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["admin"]);

    // A non-admin account of `micro` cannot read tenant's registry or accounts; anonymous callers neither.
    create_account(&p, "bob", &["--secret", "b-pw"]);
    let bob = Dirs::new();
    logged_in(&p, &bob, "bob", "b-pw", None);
    p.cli_in(&bob, ["services"]).run().ok();
    let run = p.cli_in(&bob, ["services", "--namespace", "tenant"]).run().code(2);
    assert!(run.stderr.contains("namespace tenant"), "{}", run.snapshot());
    p.cli_in(&bob, ["auth", "list", "accounts", "--namespace", "tenant"]).run().code(2);
    p.cli_in(&bob, ["auth", "list", "rules", "--namespace", "tenant"]).run().code(2);
    p.cli_in(&Dirs::new(), ["services", "--namespace", "tenant"]).run().code(2);
    // The micro admin administers every namespace.
    p.micro(["services", "--namespace", "tenant"]).ok();
}

/// Creates a plain account `id` (secret `pw`) in the namespace of the admin logged in with `dirs`.
#[track_caller]
fn create_account_in(p: &Platform, dirs: &Dirs, id: &str) {
    let run = p.cli_in(dirs, ["auth", "create", "account", id, "--secret", "pw"]).run().ok();
    assert!(run.stdout.starts_with("Account created: {"), "{}", run.snapshot());
}

#[test]
fn password_change() {
    let p = Platform::with(&["helloworld"]);
    let old_refresh = stored(&p.tokens_file(), "micro").expect("logged in")["refresh_token"].clone();

    let run = p.micro(["user", "set", "password", "--old-password", "wrong", "--new-password", "n3w"]).code(2);
    assert!(run.stderr.contains("not correct"), "{}", run.snapshot());
    let run = p.micro(["user", "set", "password", "--new-password", "n3w"]).code(128);
    assert!(run.stderr.contains("--old-password"), "{}", run.snapshot());
    logged_in(&p, &Dirs::new(), "admin", "micro", None);

    let run = p.micro(["user", "set", "password", "--old-password", "micro", "--new-password", "n3w"]).ok();
    assert_eq!(run.stdout, "");
    let run = login(&p, &Dirs::new(), "admin", "micro", None).code(2);
    assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
    logged_in(&p, &Dirs::new(), "admin", "n3w", None);
    // The change revoked the refresh tokens issued before it.
    let body = serde_json::json!({ "refresh_token": old_refresh }).to_string();
    p.micro(["call", "auth", "Auth.Token", &body]).code(2);

    // A user changes their own password, but not someone else's.
    create_account(&p, "bob", &["--secret", "b-old"]);
    let bob = Dirs::new();
    logged_in(&p, &bob, "bob", "b-old", None);
    let run = p
        .cli_in(
            &bob,
            ["user", "set", "password", "--email", "admin", "--old-password", "n3w", "--new-password", "pwned"],
        )
        .run();
    assert_eq!(run.code, 2, "{}", run.snapshot());
    logged_in(&p, &Dirs::new(), "admin", "n3w", None);
    p.cli_in(&bob, ["user", "set", "password", "--old-password", "b-old", "--new-password", "b-new"]).run().ok();
    login(&p, &Dirs::new(), "bob", "b-old", None).code(2);
    logged_in(&p, &Dirs::new(), "bob", "b-new", None);
}

#[test]
fn failed_logins_are_rate_limited() {
    let p = Platform::start();
    create_account(&p, "carl", &["--secret", "c-pw"]);
    create_account(&p, "dora", &["--secret", "d-pw"]);
    let mut last = None;
    for _ in 0..8 {
        let run = login(&p, &Dirs::new(), "carl", "wrong", None).code(2);
        if run.stderr.contains("Too many") {
            last = Some(run);
            break;
        }
        assert!(run.stderr.contains("Invalid credentials"), "{}", run.snapshot());
    }
    assert!(last.is_some(), "eight wrong passwords in a row were never refused as too many");
    // The right password from the loopback interface is never held back (so nobody can lock the admin out of
    // their own machine); other sources are (see `server::auth`'s unit tests), and other accounts are not.
    logged_in(&p, &Dirs::new(), "carl", "c-pw", None);
    logged_in(&p, &Dirs::new(), "dora", "d-pw", None);
    logged_in(&p, &Dirs::new(), "admin", "micro", None);
}

#[test]
fn a_deleted_or_reset_account_is_locked_out() {
    let p = Platform::with(&["helloworld"]);
    create_account(&p, "dan", &["--secret", "d-pw"]);
    create_account(&p, "eve", &["--secret", "e-pw"]);
    let (dan, eve) = (Dirs::new(), Dirs::new());
    logged_in(&p, &dan, "dan", "d-pw", None);
    logged_in(&p, &eve, "eve", "e-pw", None);
    p.cli_in(&dan, ["helloworld", "call", "--name=dan"]).run().ok();

    // Deleting an account makes its (still unexpired) token worthless.
    p.micro(["auth", "delete", "account", "dan"]).ok();
    let run = p.cli_in(&dan, ["helloworld", "call", "--name=dan"]).run().code(2);
    assert!(run.stderr.contains("no longer exists"), "{}", run.snapshot());
    login(&p, &Dirs::new(), "dan", "d-pw", None).code(2);
    let run = p.micro(["auth", "delete", "account", "dan"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    // The admin cannot delete itself.
    let run = p.micro(["auth", "delete", "account", "admin"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    p.micro(["auth", "list", "accounts"]).ok();

    // An admin resets a secret without the old one: the old secret and the old refresh token stop working.
    let refresh = stored(&eve.tokens_file(), "micro").expect("eve is logged in")["refresh_token"].clone();
    let run = p.micro(["auth", "update", "secret", "eve", "--new-secret", "e-new"]).ok();
    assert_eq!(run.stdout, "Account updated\n");
    login(&p, &Dirs::new(), "eve", "e-pw", None).code(2);
    logged_in(&p, &Dirs::new(), "eve", "e-new", None);
    let body = serde_json::json!({ "refresh_token": refresh }).to_string();
    p.micro(["call", "auth", "Auth.Token", &body]).code(2);
}

#[test]
fn the_server_warns_about_the_default_admin_password() {
    let p = Platform::start();
    let log = p.server_log();
    assert!(log.contains("default password"), "{log}");
    assert!(!log.contains("eyJ"), "no token is logged:\n{log}");
}
