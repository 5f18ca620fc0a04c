//! Errors and their exit codes (src/exit.rs): every case is snapshotted with its exit code, stdout and stderr.

use crate::support::{Cli, Dirs, Platform, closed_port, snapshot_settings};

#[test]
fn unknown_service_is_an_unrecognized_command() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["nosuch"]).code(128);
    assert!(run.stderr.contains("Unrecognized micro command: nosuch"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    insta::assert_snapshot!("unknown_command", run.snapshot());
}

#[test]
fn micro_call_of_an_unknown_service_is_not_found() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["call", "nosuch", "X.Y"]).code(4);
    assert!(run.stderr.contains("Service \"nosuch\" not found"), "{}", run.stderr);
    insta::assert_snapshot!("call_unknown_service", run.snapshot());
}

#[test]
fn unknown_endpoint() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["call", "helloworld", "Helloworld.Nope"]).code(5);
    assert!(run.stderr.contains("Helloworld.Nope"), "{}", run.stderr);
    insta::assert_snapshot!("call_unknown_endpoint", run.snapshot());
    let run = p.micro(["helloworld", "nope"]).code(5);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    insta::assert_snapshot!("dynamic_unknown_endpoint", run.snapshot());
}

#[test]
fn bad_flag_value_names_the_field_and_type() {
    let p = Platform::with(&["echo"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["echo", "echo", "--count=abc"]).code(128);
    assert!(run.stderr.contains("--count") && run.stderr.contains("int32"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    insta::assert_snapshot!("bad_int32", run.snapshot());
    let run = p.micro(["echo", "echo", "--color=BLUE"]).code(128);
    assert!(run.stderr.contains("--color") && run.stderr.contains("GREEN"), "{}", run.stderr);
    insta::assert_snapshot!("bad_enum", run.snapshot());
    let run = p.micro(["echo", "echo", "--when=yesterday"]).code(128);
    assert!(run.stderr.contains("--when") && run.stderr.contains("RFC 3339"), "{}", run.stderr);
    insta::assert_snapshot!("bad_timestamp", run.snapshot());
    let run = p.micro(["echo", "echo", "--wait=soon"]).code(128);
    assert!(run.stderr.contains("--wait") && run.stderr.contains("duration"), "{}", run.stderr);
    insta::assert_snapshot!("bad_duration", run.snapshot());
    let run = p.micro(["echo", "echo", "--enabled=maybe"]).code(128);
    assert!(run.stderr.contains("--enabled") && run.stderr.contains("bool"), "{}", run.stderr);
    let run = p.micro(["echo", "echo", "--small=-1"]).code(128);
    assert!(run.stderr.contains("--small") && run.stderr.contains("uint32"), "{}", run.stderr);
    let run = p.micro(["echo", "echo", "--labels=novalue"]).code(128);
    assert!(run.stderr.contains("--labels") && run.stderr.contains("KEY=VALUE"), "{}", run.stderr);
    let run = p.micro(["echo", "echo", "--numbers=1,x"]).code(128);
    assert!(run.stderr.contains("--numbers") && run.stderr.contains("int32"), "{}", run.stderr);
    let run = p.micro(["echo", "echo", "--options-level=high"]).code(128);
    assert!(run.stderr.contains("--options-level") && run.stderr.contains("int32"), "{}", run.stderr);
}

#[test]
fn bytes_from_a_missing_file() {
    let p = Platform::with(&["echo"]);
    let missing = p.path("missing.bin");
    let run = p.micro(["echo", "echo", &format!("--data=@{}", missing.display())]).code(128);
    assert!(run.stderr.contains("--data") && run.stderr.contains("missing.bin"), "{}", run.stderr);
}

#[test]
fn unknown_flag_lists_the_valid_flags() {
    let p = Platform::with(&["echo", "helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["echo", "echo", "--nope=1"]).code(128);
    assert!(run.stderr.contains("--nope"), "{}", run.stderr);
    for flag in ["--text", "--options-surname", "--user-email", "--when"] {
        assert!(run.stderr.contains(flag), "{flag} is not listed:\n{}", run.stderr);
    }
    insta::assert_snapshot!("unknown_flag", run.snapshot());
    // The bare form (an implied `call`) too.
    let run = p.micro(["helloworld", "--nmae=Jane"]).code(128);
    assert!(run.stderr.contains("--nmae") && run.stderr.contains("--name"), "{}", run.stderr);
    insta::assert_snapshot!("unknown_flag_bare", run.snapshot());
}

#[test]
fn bad_json_is_invalid_input() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"#]).code(128);
    insta::assert_snapshot!("bad_json", run.snapshot());
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"nmae":"x"}"#]).code(128);
    assert!(run.stderr.contains("nmae"), "{}", run.stderr);
    let run = p.cli(["helloworld", "ping-pong"]).stdin("{\"stroke\":1}\nnot json\n").run().code(128);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);
}

#[test]
fn a_service_error_is_127_with_its_message() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["helloworld", "stream", "--count=-1"]).code(127);
    assert!(run.stderr.contains("count must be between 0 and"), "{}", run.stderr);
    insta::assert_snapshot!("service_error", run.snapshot());
}

#[test]
fn server_down_is_a_connection_error() {
    let dirs = Dirs::new();
    let addr = format!("127.0.0.1:{}", closed_port());
    let _s = snapshot_settings().bind_to_scope();
    let run = Cli::new(&addr, &dirs, ["services"]).run().code(4);
    assert!(run.stderr.contains(&format!("Failed to connect to micro server at {addr}")), "{}", run.stderr);
    insta::assert_snapshot!("server_down_services", run.snapshot());
    let run = Cli::new(&addr, &dirs, ["helloworld", "--name=Jane"]).run().code(4);
    assert!(run.stderr.contains(&format!("Failed to connect to micro server at {addr}")), "{}", run.stderr);
    insta::assert_snapshot!("server_down_dynamic", run.snapshot());
    let run = Cli::new(&addr, &dirs, ["call", "helloworld", "Helloworld.Call", "{}"]).run().code(4);
    assert!(run.stderr.contains("Failed to connect to micro server"), "{}", run.stderr);
}

#[test]
fn an_unknown_env_is_invalid_input() {
    let p = Platform::start();
    let run = p.cli(["services"]).env("MICRO_ENV", "nowhere").env_remove("MICRO_PROXY").run().code(128);
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);
}

#[test]
fn a_request_that_times_out_exits_1() {
    let p = Platform::with(&["echo"]);
    // Collect answers only when its input ends; stdin stays open, so only the deadline can end the call.
    let run =
        p.cli(["call", "echo", "Echo.Collect", "--timeout", "300ms"]).stdin("{\"text\":\"a\"}\n").hold_stdin().run();
    let run = run.code(1);
    assert!(run.stderr.contains("Request timed out"), "{}", run.stderr);
}

/// A distributed backend the server cannot use (`--store`, `--broker`, `--registry`) stops it at start with a
/// message that says why: in a build without the backend's cargo feature, how to get one; with it, that the engine
/// cannot be reached. An unknown engine is a usage error that lists the choices.
#[test]
fn a_backend_that_cannot_be_used_stops_the_server_with_a_clear_message() {
    struct Case {
        flag: &'static str,
        unreachable: &'static str,
        built: bool,
        cannot_connect: &'static str,
        not_built: &'static str,
        unknown: &'static str,
        choices: &'static str,
    }
    let cases = [
        Case {
            flag: "--store",
            unreachable: "postgres://micro@127.0.0.1:1/none",
            built: cfg!(feature = "postgres"),
            cannot_connect: "cannot connect to PostgreSQL at postgres://micro@127.0.0.1:1/none",
            not_built: "built without PostgreSQL support; rebuild it with `cargo build --release --features postgres`",
            unknown: "mysql://db",
            choices: "unknown store \"mysql://db\": use redb (the default) or a postgres://",
        },
        Case {
            flag: "--broker",
            unreachable: "nats://127.0.0.1:1",
            built: cfg!(feature = "nats"),
            cannot_connect: "cannot connect to NATS at nats://127.0.0.1:1",
            not_built: "built without NATS support; rebuild it with `cargo build --release --features nats`",
            unknown: "kafka://db",
            choices: "unknown broker \"kafka://db\": use memory (the default) or a nats://",
        },
        Case {
            flag: "--registry",
            unreachable: "etcd://127.0.0.1:1",
            built: cfg!(feature = "etcd"),
            cannot_connect: "cannot connect to etcd at etcd://127.0.0.1:1",
            not_built: "built without etcd support; rebuild it with `cargo build --release --features etcd`",
            unknown: "consul://x",
            choices: "unknown registry \"consul://x\": use memory (the default) or an etcd://",
        },
    ];
    for case in cases {
        let (code, stderr) = crate::support::server_that_stops(&[case.flag, case.unreachable]);
        assert_eq!(code, Some(1), "{} {}: {stderr}", case.flag, case.unreachable);
        let expected = if case.built { case.cannot_connect } else { case.not_built };
        assert!(stderr.contains(expected), "{} {}: {stderr}", case.flag, case.unreachable);
        let (code, stderr) = crate::support::server_that_stops(&[case.flag, case.unknown]);
        assert_eq!(code, Some(128), "a usage error: {} {}: {stderr}", case.flag, case.unknown);
        assert!(stderr.contains(case.choices), "{} {}: {stderr}", case.flag, case.unknown);
    }
}
