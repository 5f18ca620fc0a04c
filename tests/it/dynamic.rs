//! Dynamic service commands: `micro <service> [endpoint] [--flags]`, `micro call`, and their help text.

use crate::support::{Platform, snapshot_settings};
use serde_json::{Value, json};

#[test]
fn helloworld_call_with_a_flag() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["helloworld", "call", "--name=Jane"]).ok();
    assert_eq!(run.json(), json!({"msg": "Hello Jane"}));
    insta::assert_snapshot!("helloworld_call", run.snapshot());
}

#[test]
fn a_bare_service_name_means_call() {
    let p = Platform::with(&["helloworld"]);
    let explicit = p.micro(["helloworld", "call", "--name=Jane"]).ok();
    let bare = p.micro(["helloworld", "--name=Jane"]).ok();
    assert_eq!(bare.json(), json!({"msg": "Hello Jane"}));
    assert_eq!(bare.stdout, explicit.stdout);
    // The space-separated form and no flag at all.
    assert_eq!(p.micro(["helloworld", "--name", "Jane"]).ok().stdout, explicit.stdout);
    assert_eq!(p.micro(["helloworld"]).ok().json(), json!({"msg": "Hello "}));
}

#[test]
fn micro_call_with_json() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"John"}"#]).ok();
    assert_eq!(run.json(), json!({"msg": "Hello John"}));
    // Output is indented like Micro's, with tabs.
    assert_eq!(run.stdout, "{\n\t\"msg\": \"Hello John\"\n}\n");
    // The gRPC path names the endpoint too.
    let run = p.micro(["call", "helloworld", "/helloworld.Helloworld/Call", r#"{"name":"Ann"}"#]).ok();
    assert_eq!(run.json(), json!({"msg": "Hello Ann"}));
    // Raw output: one compact document per line.
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"Raw"}"#, "-o", "raw"]).ok();
    assert_eq!(run.stdout, "{\"msg\":\"Hello Raw\"}\n");
}

#[test]
fn the_core_registry_is_callable_through_the_proxy() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["call", "registry", "Registry.ListServices", "{}"]).ok();
    let reply = run.json();
    let names: Vec<&str> =
        reply["services"].as_array().expect("services").iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"helloworld") && names.contains(&"registry"), "{names:?}");
}

#[test]
fn help_of_a_service_and_of_an_endpoint() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let service = p.micro(["helloworld", "--help"]).ok();
    for word in ["call", "stream", "ping-pong"] {
        assert!(service.stdout.contains(word), "{word} missing:\n{}", service.stdout);
    }
    insta::assert_snapshot!("helloworld_help", service.snapshot());
    let endpoint = p.micro(["helloworld", "call", "--help"]).ok();
    assert!(endpoint.stdout.contains("--name"), "{}", endpoint.stdout);
    assert!(endpoint.stdout.contains("The name to greet."), "the proto comment is the help:\n{}", endpoint.stdout);
    insta::assert_snapshot!("helloworld_call_help", endpoint.snapshot());
}

#[test]
fn help_of_every_flag_type() {
    let p = Platform::with(&["echo"]);
    let _s = snapshot_settings().bind_to_scope();
    let service = p.micro(["echo", "--help"]).ok();
    insta::assert_snapshot!("echo_help", service.snapshot());
    let run = p.micro(["echo", "echo", "--help"]).ok();
    for flag in [
        "--text <string>",
        "--count <int32>",
        "--big <int64>",
        "--small <uint32>",
        "--huge <uint64>",
        "--ratio <double>",
        "--score <float>",
        "--enabled",
        "--color <Color>",
        "--tags <[]string>",
        "--numbers <[]int32>",
        "--labels <map[string]string>",
        "--options-surname <string>",
        "--options-level <int32>",
        "--data <bytes>",
        "--when <Timestamp>",
        "--wait <Duration>",
        "--user-email <string>",
    ] {
        assert!(run.stdout.contains(flag), "{flag} missing:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("COLOR_UNSPECIFIED, RED, GREEN"), "enum values are listed:\n{}", run.stdout);
    assert!(run.stdout.contains("A snake_case field."), "comments are the help:\n{}", run.stdout);
    insta::assert_snapshot!("echo_echo_help", run.snapshot());
}

#[test]
fn help_works_from_the_schema_cache_when_the_server_is_down() {
    let mut p = Platform::with(&["helloworld"]);
    let online = p.micro(["helloworld", "call", "--help"]).ok();
    p.kill_server();
    // No server: a call fails, but help comes from the cache.
    p.micro(["helloworld", "--name=x"]).code(4);
    let offline = p.micro(["helloworld", "call", "--help"]).ok();
    assert_eq!(offline.stdout, online.stdout);
}

/// Every flag of echo's request, each of a different kind.
const EVERY_FLAG: &[&str] = &[
    "echo",
    "echo",
    "--text",
    "hello world",
    "--count=-3",
    "--big=9007199254740993",
    "--small=7",
    "--huge=18446744073709551615",
    "--ratio=2.5",
    "--score=0.5",
    "--enabled",
    "--color=GREEN",
    "--tags",
    "a",
    "--tags",
    "b",
    "--numbers=1,2,3",
    "--labels",
    "team=core",
    "--labels=tier=1",
    "--options-surname",
    "Smith",
    "--options-level=2",
    "--data=hi",
    "--when=2024-01-02T15:04:05Z",
    "--wait=5s",
    "--user-email=jane@example.com",
];

#[test]
fn echo_with_every_flag_type() {
    let p = Platform::with(&["echo"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(EVERY_FLAG).ok();
    assert_eq!(
        run.json(),
        json!({
            "text": "hello world",
            "count": -3,
            "big": "9007199254740993",
            "small": 7,
            "huge": "18446744073709551615",
            "ratio": 2.5,
            "score": 0.5,
            "enabled": true,
            "color": "GREEN",
            "tags": ["a", "b"],
            "numbers": [1, 2, 3],
            "labels": {"team": "core", "tier": "1"},
            "options": {"surname": "Smith", "level": 2},
            "data": "aGk=",
            "when": "2024-01-02T15:04:05Z",
            "wait": "5s",
            "user_email": "jane@example.com",
        })
    );
    insta::assert_snapshot!("echo_every_flag", run.snapshot());
}

/// Runs `micro echo echo ARGS` and returns the echoed request.
fn echo(p: &Platform, args: &[&str]) -> Value {
    let mut all = vec!["echo", "echo"];
    all.extend_from_slice(args);
    p.micro(all).ok().json()
}

#[test]
fn flag_spellings_and_forms_are_equivalent() {
    let p = Platform::with(&["echo"]);
    // Repeated fields: repeat the flag, or give a comma list.
    assert_eq!(echo(&p, &["--tags", "a", "--tags", "b"])["tags"], json!(["a", "b"]));
    assert_eq!(echo(&p, &["--tags", "a,b"])["tags"], json!(["a", "b"]));
    assert_eq!(echo(&p, &["--numbers", "4", "--numbers", "5,6"])["numbers"], json!([4, 5, 6]));
    // Nested messages: kebab-case or snake_case.
    assert_eq!(echo(&p, &["--options-surname", "x"])["options"]["surname"], "x");
    assert_eq!(echo(&p, &["--options_surname", "x"])["options"]["surname"], "x");
    // Snake_case fields: kebab-case or snake_case.
    assert_eq!(echo(&p, &["--user-email", "a@b"])["user_email"], "a@b");
    assert_eq!(echo(&p, &["--user_email", "a@b"])["user_email"], "a@b");
    // Maps.
    assert_eq!(echo(&p, &["--labels", "k=v", "--labels", "x=y=z"])["labels"], json!({"k": "v", "x": "y=z"}));
    // Enums by name, in any case, or by number.
    assert_eq!(echo(&p, &["--color=GREEN"])["color"], "GREEN");
    assert_eq!(echo(&p, &["--color=red"])["color"], "RED");
    assert_eq!(echo(&p, &["--color=2"])["color"], "GREEN");
    // Duration and Timestamp.
    assert_eq!(echo(&p, &["--wait", "1m30s"])["wait"], "90s");
    assert_eq!(echo(&p, &["--wait", "250ms"])["wait"], "0.250s");
    assert_eq!(echo(&p, &["--when", "2024-01-02T15:04:05Z"])["when"], "2024-01-02T15:04:05Z");
    // Integers in hex.
    assert_eq!(echo(&p, &["--count=0x10"])["count"], 16);
}

#[test]
fn bool_flags() {
    let p = Platform::with(&["echo"]);
    assert_eq!(echo(&p, &["--enabled"])["enabled"], true);
    assert_eq!(echo(&p, &["--enabled=true"])["enabled"], true);
    assert_eq!(echo(&p, &["--enabled=false"])["enabled"], false);
    assert_eq!(echo(&p, &["--text=x"])["enabled"], false, "defaults are printed");
    // A bool flag without a value does not swallow the next flag.
    let v = echo(&p, &["--enabled", "--text", "after"]);
    assert_eq!((v["enabled"].clone(), v["text"].clone()), (json!(true), json!("after")));
}

#[test]
fn bytes_from_a_file() {
    let p = Platform::with(&["echo"]);
    let file = p.path("payload.bin");
    std::fs::write(&file, [0u8, 1, 2, 0xff, b'\n']).expect("write the payload");
    let arg = format!("--data=@{}", file.display());
    assert_eq!(echo(&p, &[&arg])["data"], "AAEC/wo=");
    // Without @, the text itself.
    assert_eq!(echo(&p, &["--data", "hi"])["data"], "aGk=");
}

#[test]
fn output_uses_proto_names_and_emits_defaults() {
    let p = Platform::with(&["echo"]);
    let v = echo(&p, &["--text=x"]);
    let keys: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    for key in ["user_email", "count", "big", "tags", "labels", "enabled", "color"] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert_eq!(v["count"], 0);
    assert_eq!(v["big"], "0");
    assert_eq!(v["color"], "COLOR_UNSPECIFIED");
    assert_eq!(v["tags"], json!([]));
}

#[test]
fn json_input_accepts_snake_case_and_lower_camel_case() {
    let p = Platform::with(&["echo"]);
    let run = p.micro(["call", "echo", "Echo.Echo", r#"{"userEmail":"camel@x","options":{"surname":"s"}}"#]).ok();
    assert_eq!(run.json()["user_email"], "camel@x");
    let run = p.micro(["call", "echo", "Echo.Echo", r#"{"user_email":"snake@x"}"#]).ok();
    assert_eq!(run.json()["user_email"], "snake@x");
}

#[test]
fn yaml_output() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["helloworld", "--name=Jane", "-o", "yaml"]).ok();
    assert_eq!(run.stdout, "msg: Hello Jane\n");
}

#[test]
fn timestamps_with_an_offset() {
    let p = Platform::with(&["echo"]);
    assert_eq!(echo(&p, &["--when", "2024-01-02T17:04:05+02:00"])["when"], "2024-01-02T15:04:05Z");
}
