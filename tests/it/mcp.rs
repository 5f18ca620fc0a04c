//! `micro mcp serve` driven by the official Python MCP SDK (tests/it/fixtures/mcp_client.py): tools listed from
//! the registry with their schemas, a unary call, a bad argument, server and bidi streams; over stdio with the
//! CLI's login, and over streamable HTTP where each caller brings its own token.

use crate::support::{DEADLINE, Platform, clean_env, closed_port, example_bin, library_dir, micro_bin};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cmd` with the platform's CLI environment: its proxy, and the admin's login in its config dir.
fn cli_env(p: &Platform, cmd: &mut Command) {
    clean_env(cmd);
    cmd.env("HOME", p.path("home"))
        .env("MICRO_CONFIG_DIR", p.path("config"))
        .env("MICRO_CACHE_DIR", p.path("cache"))
        .env("MICRO_LIBRARY_DIR", library_dir())
        .env("MICRO_PROXY", &p.addr);
}

/// Runs the Python client (tests/it/fixtures/mcp_client.py) with `args` and returns its report and stderr.
fn python_client(p: &Platform, args: &[&str]) -> (Value, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/mcp_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(args);
    cli_env(p, &mut cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().expect("python3 runs (the MCP client needs `pip install mcp`)");
    assert!(started.elapsed() < DEADLINE * 2, "the MCP client took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the MCP client failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (report, stderr)
}

/// Checks the report of the client's scenario (run with `--max-messages 5`).
fn check_scenario(r: &Value) {
    // Tools: helloworld's endpoints, no core service without --core.
    let tools = r["tools"].as_object().unwrap();
    let names: Vec<&String> = tools.keys().collect();
    assert!(tools.contains_key("helloworld_Helloworld_Call"), "{names:?}");
    assert!(tools.contains_key("helloworld_Helloworld_Stream"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("registry_") || n.starts_with("store_")), "{names:?}");
    let call = &tools["helloworld_Helloworld_Call"];
    assert_eq!(call["description"], "Call answers with a greeting.");
    assert_eq!(call["input"]["type"], "object");
    assert_eq!(call["input"]["properties"]["name"]["type"], "string");
    assert_eq!(call["input"]["properties"]["name"]["description"], "The name to greet.");
    assert_eq!(call["output"]["properties"]["msg"]["type"], "string");
    let stream = &tools["helloworld_Helloworld_Stream"];
    assert_eq!(stream["input"]["properties"]["count"]["type"], serde_json::json!(["string", "integer"]));
    assert_eq!(tools["helloworld_Helloworld_PingPong"]["input"]["required"], serde_json::json!(["messages"]));

    // A unary call: the answer as text and as structured content.
    assert_eq!(r["call"]["is_error"], false, "{}", r["call"]);
    assert_eq!(r["call"]["structured"]["msg"], "Hello Jane");
    assert_eq!(serde_json::from_str::<Value>(r["call"]["text"].as_str().unwrap()).unwrap()["msg"], "Hello Jane");

    // Bad arguments: tool errors naming the field.
    assert_eq!(r["bad"]["is_error"], true, "{}", r["bad"]);
    assert!(r["bad"]["text"].as_str().unwrap().starts_with("invalid argument \"name\""), "{}", r["bad"]);
    assert_eq!(r["unknown_field"]["is_error"], true);
    let text = r["unknown_field"]["text"].as_str().unwrap();
    assert!(text.contains("\"nmae\"") && text.contains("no such field"), "{text}");

    // A server stream: every message, each also reported as progress.
    assert_eq!(r["stream"]["is_error"], false, "{}", r["stream"]);
    let messages = r["stream"]["structured"]["messages"].as_array().unwrap();
    let counts: Vec<&str> = messages.iter().map(|m| m["count"].as_str().unwrap()).collect();
    assert_eq!(counts, ["0", "1", "2"]);
    assert_eq!(r["stream"]["structured"]["truncated"], false);
    let progress = r["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 3, "{progress:?}");
    assert_eq!(serde_json::from_str::<Value>(progress[2]["message"].as_str().unwrap()).unwrap()["count"], "2");
    // The cap: 5 of 50 messages, and the result says it was cut.
    assert_eq!(r["capped"]["structured"]["messages"].as_array().unwrap().len(), 5);
    assert_eq!(r["capped"]["structured"]["truncated"], true);

    // A bidi stream takes an array of messages.
    assert_eq!(r["pingpong"]["is_error"], false, "{}", r["pingpong"]);
    let pongs = r["pingpong"]["structured"]["messages"].as_array().unwrap();
    assert_eq!(pongs.iter().map(|m| m["stroke"].as_str().unwrap()).collect::<Vec<_>>(), ["1", "2"]);
}

#[test]
fn stdio_tools_calls_and_streams() {
    let p = Platform::with(&["helloworld"]);
    let micro = micro_bin().display().to_string();
    let (r, stderr) = python_client(&p, &["stdio", &micro, "--max-messages", "5"]);
    check_scenario(&r);

    // The audit log: one line per call, on stderr.
    assert!(stderr.contains("mcp call account=admin tool=helloworld_Helloworld_Call outcome=\"ok\""), "{stderr}");
    assert!(stderr.contains("tool=helloworld_Helloworld_Call outcome=\"error: invalid argument"), "{stderr}");
}

/// Starts `micro mcp serve --address` on a free port with `args`, as `p`'s CLI, once it listens: the process (its
/// stderr piped) and the URL of its endpoint.
fn serve_http(p: &Platform, args: &[&str]) -> (std::process::Child, String) {
    let address = format!("127.0.0.1:{}", closed_port());
    let mut cmd = Command::new(micro_bin());
    cmd.args(["mcp", "serve", "--address", &address]).args(args);
    cli_env(p, &mut cmd);
    let server = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "micro mcp serve did not listen on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://{address}/mcp"))
}

#[test]
fn http_callers_bring_their_own_token() {
    let p = Platform::with(&["helloworld"]);
    // A caller whose rules deny helloworld.
    p.micro(["auth", "create", "account", "viewer", "--secret", "s3cret", "--scopes", "viewer"]).ok();
    let deny = ["auth", "create", "rule", "no-hello", "--resource", "service:helloworld:*", "--scope", "viewer"];
    p.micro(deny.iter().chain(&["--access", "denied", "--priority", "100"])).ok();
    let body = serde_json::json!({ "id": "viewer", "secret": "s3cret" }).to_string();
    let token =
        p.micro(["call", "auth", "Auth.Token", &body, "-o", "raw"]).ok().json()["token"]["access_token"].clone();
    let viewer = token.as_str().expect("an access token").to_string();

    let (mut server, url) = serve_http(&p, &["--max-messages", "5"]);
    let (r, _) = python_client(&p, &["http", &url, p.token(), &viewer]);
    let _ = server.kill();
    let _ = server.wait();
    let mut log = String::new();
    server.stderr.take().unwrap().read_to_string(&mut log).unwrap();

    check_scenario(&r);
    assert_eq!(r["no_token_status"], 401, "{r}");
    assert_eq!(r["bad_token_status"], 401, "{r}");
    assert_eq!(r["denied"]["is_error"], true, "{}", r["denied"]);
    assert!(r["denied"]["text"].as_str().unwrap().starts_with("PermissionDenied"), "{}", r["denied"]);
    // The audit log names each caller.
    assert!(log.contains("account=admin tool=helloworld_Helloworld_Call outcome=\"ok\""), "{log}");
    assert!(log.contains("account=viewer tool=helloworld_Helloworld_Call outcome=\"error: PermissionDenied"), "{log}");
}

/// Checks a `watch` report: echo's tools appear with a `tools/list_changed` when it registers and go with another.
#[track_caller]
fn check_follows(r: &Value) {
    let has_echo = |list: &Value| list.as_array().unwrap().iter().any(|t| t.as_str().unwrap().starts_with("echo_"));
    assert!(!has_echo(&r["before"]), "{r}");
    assert_eq!(r["changed_on_register"], true, "{r}");
    assert!(has_echo(&r["after"]), "{r}");
    assert_eq!(r["changed_on_deregister"], true, "{r}");
    assert!(!has_echo(&r["last"]), "{r}");
}

#[test]
fn tools_follow_the_registry() {
    let p = Platform::with(&["helloworld"]);
    let micro = micro_bin().display().to_string();
    let echo = example_bin("echo").display().to_string();
    let (r, _) = python_client(&p, &["watch", &micro, &echo]);
    check_follows(&r);
}

#[test]
fn tools_follow_the_registry_over_http() {
    let p = Platform::with(&["helloworld"]);
    let (mut server, url) = serve_http(&p, &[]);
    let echo = example_bin("echo").display().to_string();
    let (r, _) = python_client(&p, &["watch-http", &url, p.token(), &echo]);
    let _ = server.kill();
    let _ = server.wait();
    check_follows(&r);
}

#[test]
fn read_only_and_rate_limits() {
    let p = Platform::with(&["helloworld"]);
    let micro = micro_bin().display().to_string();

    // --read-only: only Get*/List*/Read* (or NO_SIDE_EFFECTS) endpoints; here of the core services.
    let (r, _) = python_client(&p, &["probe", &micro, "--read-only", "--core"]);
    let tools: Vec<&str> = r["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tools.contains(&"registry_Registry_GetService"), "{tools:?}");
    assert!(tools.contains(&"registry_Registry_ListServices"), "{tools:?}");
    assert!(!tools.contains(&"registry_Registry_Register"), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("helloworld_")), "{tools:?}");
    let call = &r["calls"][0];
    assert!(call["exception"].as_str().is_some_and(|e| e.contains("unknown tool")), "{call}");

    // --rate 2/s: two calls pass, the next ones in the same second are refused, naming the limit.
    let (r, stderr) = python_client(&p, &["probe", &micro, "--rate", "2/s"]);
    assert!(stderr.contains("tool=helloworld_Helloworld_Call outcome=\"rate limited\""), "{stderr}");
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["is_error"], false, "{r}");
    assert_eq!(calls[1]["is_error"], false, "{r}");
    let limited: Vec<&Value> = calls.iter().filter(|c| c["is_error"] == true).collect();
    assert!(!limited.is_empty(), "{r}");
    assert!(limited[0]["text"].as_str().unwrap().starts_with("rate limit: at most 2 calls per 1s for admin"), "{r}");
}
