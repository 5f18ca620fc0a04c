//! Direct calls, `micro call --address HOST:PORT METHOD [JSON]`: a gRPC server called without the proxy and the
//! registry, its types from `--proto` files (compiled at run time), a `--protoset`, or its reflection (v1 from the
//! micro proxy, v1alpha from a service node); TLS; and the errors: nothing listening, an unknown method, a proto
//! that does not compile, no reflection and no proto.

use crate::support::{Cli, DEADLINE, Dirs, Platform, closed_port, snapshot_settings};
use micro_client::tls::testing::{Ca, health_server};
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The address of the first node of `service`, from the registry.
fn node(p: &Platform, service: &str) -> String {
    let get = p.micro(["get", "service", service, "-o", "json"]).ok();
    get.json()[0]["nodes"][0]["address"].as_str().expect("a node address").to_string()
}

/// A file of the repository, as an absolute path.
fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

/// The `micro` CLI with no micro server at all (its env points at a closed port).
fn cli(dirs: &Dirs, args: &[&str]) -> Cli {
    Cli::new(&format!("127.0.0.1:{}", closed_port()), dirs, args)
}

/// Writes a FileDescriptorSet of `files` (compiled with protox from `include`, imports included) to `to`.
fn protoset(include: &str, files: &[&str], to: &Path) {
    let set = protox::Compiler::new([include])
        .unwrap()
        .include_imports(true)
        .open_files(files)
        .unwrap()
        .file_descriptor_set();
    std::fs::write(to, set.encode_to_vec()).unwrap();
}

#[test]
fn proto_files_call_every_kind_of_method_on_a_node() {
    let p = Platform::with(&["helloworld", "echo"]);
    let hello = node(&p, "helloworld");
    let proto = repo("examples/helloworld/proto/helloworld.proto");
    let include = repo("examples/helloworld/proto");

    // Unary, with the proto named in its import path (as protoc and grpcurl take it) or by its own path.
    let call =
        p.micro(["call", "--address", &hello, "--proto", "helloworld.proto", "--import-path", &include, "Call"]).ok();
    assert_eq!(call.stdout, "{\n\t\"msg\": \"Hello \"\n}\n", "{}", call.snapshot());
    let call = p
        .micro(["call", "--address", &hello, "--proto", &proto, "helloworld.Helloworld/Call", r#"{"name":"Ann"}"#])
        .ok();
    assert_eq!(call.json()["msg"], "Hello Ann");
    // The JSON may come in several words, as in calls through the proxy.
    let call =
        p.micro(["call", "--address", &hello, "--proto", &proto, "Call", r#"{"name":"#, r#""Bo"}"#, "-o", "raw"]);
    assert_eq!(call.ok().stdout, "{\"msg\":\"Hello Bo\"}\n");

    // A server stream.
    let stream = p
        .micro(["stream", "--address", &hello, "--proto", &proto, "Helloworld.Stream", r#"{"count":3}"#, "-o", "raw"])
        .ok();
    assert_eq!(stream.stdout, "{\"count\":\"0\"}\n{\"count\":\"1\"}\n{\"count\":\"2\"}\n");

    // A bidi stream reads stdin.
    let pings = p
        .cli(["call", "--address", &hello, "--proto", &proto, "/helloworld.Helloworld/PingPong", "-o", "raw"])
        .stdin("{\"stroke\":1}\n{\"stroke\":2}\n")
        .run()
        .ok();
    assert_eq!(pings.stdout, "{\"stroke\":\"1\"}\n{\"stroke\":\"2\"}\n");

    // A client stream, from a proto that imports well-known types.
    let echo = node(&p, "echo");
    let collect = p
        .cli(["call", "--address", &echo, "--proto", &repo("examples/echo/proto/echo.proto"), "Echo.Collect"])
        .stdin("{\"text\":\"a\",\"when\":\"2024-01-01T00:00:00Z\"}\n{\"text\":\"b\"}\n")
        .run()
        .ok();
    assert_eq!(collect.json()["texts"], serde_json::json!(["a", "b"]));
}

#[test]
fn a_protoset_describes_the_method() {
    let p = Platform::with(&["helloworld"]);
    let hello = node(&p, "helloworld");
    let set = p.path("helloworld.protoset");
    protoset(&repo("examples/helloworld/proto"), &["helloworld.proto"], &set);
    let set = set.display().to_string();
    let call = p.micro(["call", "--address", &hello, "--protoset", &set, "Helloworld.Call", r#"{"name":"Set"}"#]).ok();
    assert_eq!(call.json()["msg"], "Hello Set");
    let stream =
        p.micro(["stream", "--address", &hello, "--protoset", &set, "Stream", r#"{"count":2}"#, "-o", "raw"]).ok();
    assert_eq!(stream.stdout.lines().count(), 2, "{}", stream.snapshot());

    // A file that is no descriptor set.
    let bad = p.path("bad.protoset");
    std::fs::write(&bad, b"\xff\xff\xff").unwrap();
    let run = p.micro(["call", "--address", &hello, "--protoset", &bad.display().to_string(), "Call"]).code(128);
    assert!(run.stderr.contains("is not a usable FileDescriptorSet"), "{}", run.stderr);
}

#[test]
fn reflection_v1_of_the_proxy_and_v1alpha_of_a_node() {
    let p = Platform::with(&["helloworld", "echo"]);
    // A micro service node offers reflection v1alpha only: the client falls back to it.
    let hello = node(&p, "helloworld");
    let call = p.micro(["call", "--address", &hello, "helloworld.Helloworld/Call", r#"{"name":"Alpha"}"#]).ok();
    assert_eq!(call.json()["msg"], "Hello Alpha");
    let pings =
        p.cli(["stream", "--address", &hello, "Helloworld.PingPong", "-o", "raw"]).stdin("{\"stroke\":7}\n").run().ok();
    assert_eq!(pings.stdout, "{\"stroke\":\"7\"}\n");

    // The micro proxy offers v1, for every registered service. Its calls need the token: metadata carries it.
    let call = p.micro(["call", "--address", &p.addr, "helloworld.Helloworld/Call", r#"{"name":"V1"}"#]).code(2);
    assert!(call.stderr.contains("Not authorized"), "{}", call.snapshot());
    let bearer = format!("authorization=Bearer {}", p.token());
    let call =
        p.micro(["call", "--address", &p.addr, "-m", &bearer, "helloworld.Helloworld/Call", r#"{"name":"V1"}"#]).ok();
    assert_eq!(call.json()["msg"], "Hello V1");
    let echo = p.micro(["call", "--address", &p.addr, "-m", &bearer, "Echo.Echo", r#"{"color":"GREEN"}"#]).ok();
    assert_eq!(echo.json()["color"], "GREEN");

    // A deadline that the call cannot meet, and one that the reflection conversation cannot meet.
    let proto = repo("examples/helloworld/proto/helloworld.proto");
    let late = p.micro(["call", "--address", &hello, "--proto", &proto, "--timeout", "1ns", "Call"]).code(1);
    assert!(late.stderr.contains("Request timed out"), "{}", late.snapshot());
    let late = p.micro(["call", "--address", &hello, "--timeout", "1ns", "Helloworld.Call"]).code(1);
    assert!(late.stderr.contains("Request timed out"), "{}", late.snapshot());
}

#[test]
fn reflection_of_a_python_grpcio_server() {
    // grpcio's reflection is v1alpha only, and another implementation than micro's.
    let port = closed_port();
    let server = repo("tests/it/fixtures/pygreeter/server.py");
    let child = Command::new("python3")
        .arg(&server)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs (the greeter needs grpcio and grpcio-reflection)");
    let _child = KillOnDrop(child);
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "the Python greeter did not listen on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dirs = Dirs::new();
    let call = cli(&dirs, &["call", "--address", &address, "greeter.Greeter/SayHello", r#"{"name":"Py"}"#]).run().ok();
    assert_eq!(call.json()["message"], "Hello, Py");
    let call = cli(&dirs, &["call", "--address", &address, "SayHello", r#"{"name":"Thon"}"#, "-o", "raw"]).run().ok();
    assert_eq!(call.stdout, "{\"message\":\"Hello, Thon\"}\n");
    let run = cli(&dirs, &["call", "--address", &address, "Greeter.Bye"]).run().code(5);
    assert!(run.stderr.contains("Methods: greeter.Greeter/SayHello"), "{}", run.stderr);
}

/// A child process killed when the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_with_the_servers_ca() {
    let ca = Ca::new();
    let server = health_server(Some(ca.leaf(&["127.0.0.1"], false)));
    let dirs = Dirs::new();
    let ca_file = dirs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let set = dirs.path().join("health.protoset");
    std::fs::write(&set, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let (ca_file, set) = (ca_file.display().to_string(), set.display().to_string());

    let check = ["call", "--address", &server, "--protoset", &set, "grpc.health.v1.Health/Check"];
    let ok = cli(&dirs, &[&check[..], &["--tls", "--ca-cert", &ca_file]].concat()).run().ok();
    assert_eq!(ok.json()["status"], "SERVING");
    // An https:// address is TLS too.
    let https = format!("https://{server}");
    let ok = cli(&dirs, &["call", "--address", &https, "--protoset", &set, "Check", "--ca-cert", &ca_file]).run().ok();
    assert_eq!(ok.json()["status"], "SERVING");

    // Plaintext to a TLS server, and TLS without its CA.
    let run = cli(&dirs, &check).run().code(4);
    assert!(run.stderr.contains("the server speaks TLS: add --tls"), "{}", run.snapshot());
    let run = cli(&dirs, &[&check[..], &["--tls"]].concat()).run().code(4);
    assert!(run.stderr.contains("TLS failed") && run.stderr.contains("--ca-cert"), "{}", run.snapshot());
}

#[test]
fn errors_say_what_to_do() {
    let _s = snapshot_settings().bind_to_scope();
    let dirs = Dirs::new();

    // Nothing listens at the address.
    let closed = format!("127.0.0.1:{}", closed_port());
    let run = cli(&dirs, &["call", "--address", &closed, "helloworld.Helloworld/Call"]).run().code(4);
    insta::assert_snapshot!("unreachable", run.snapshot());

    // A server without reflection, and no proto.
    let health = health_server(None);
    let run = cli(&dirs, &["call", "--address", &health, "grpc.health.v1.Health/Check"]).run().code(128);
    assert!(run.stderr.contains("--proto FILE") && run.stderr.contains("--protoset FILE"), "{}", run.stderr);
    insta::assert_snapshot!("no_reflection", run.snapshot());
    // …works with its protoset.
    let set = dirs.path().join("health.protoset");
    std::fs::write(&set, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let set = set.display().to_string();
    let ok = cli(&dirs, &["call", "--address", &health, "--protoset", &set, "Health.Check"]).run().ok();
    assert_eq!(ok.json()["status"], "SERVING");

    // An unknown method lists the methods there are.
    let run = cli(&dirs, &["call", "--address", &health, "--protoset", &set, "Health.Nope"]).run().code(5);
    insta::assert_snapshot!("unknown_method", run.snapshot());
    let run = cli(&dirs, &["call", "--address", &health, "--protoset", &set, "a/b/c"]).run().code(3);
    assert!(run.stderr.contains("Expecting pkg.Service/Method"), "{}", run.stderr);

    // A proto that does not compile: protox's message, with the file, line and column.
    let broken = dirs.path().join("broken.proto");
    std::fs::write(&broken, "syntax = \"proto3\";\n\nmessage A {\n  string a = 1\n}\n").unwrap();
    let run = cli(&dirs, &["call", "--address", &health, "--proto", &broken.display().to_string(), "A.B"]).run();
    let run = run.code(128);
    assert!(run.stderr.contains("broken.proto:5:1"), "{}", run.stderr);
    insta::assert_snapshot!("proto_does_not_compile", run.snapshot());
    // A proto that is not there.
    let missing = PathBuf::from(dirs.path()).join("missing.proto");
    let run = cli(&dirs, &["call", "--address", &health, "--proto", &missing.display().to_string(), "A.B"]).run();
    assert!(run.code(128).stderr.contains("no such file"));

    // Bad request JSON, as in calls through the proxy.
    let run = cli(&dirs, &["call", "--address", &health, "--protoset", &set, "Health.Check", r#"{"service":1}"#]).run();
    assert!(run.code(128).stderr.contains("Error creating request"));

    // --proto without --address is a usage error; `micro call SERVICE` without its endpoint still is one.
    let run = cli(&dirs, &["call", "--proto", "x.proto", "helloworld", "Helloworld.Call"]).run();
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--address"), "{}", run.stderr);
    let run = cli(&dirs, &["call", "helloworld"]).run();
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("<ENDPOINT>"), "{}", run.stderr);
}

#[test]
fn requests_from_files_and_pipes_json_errors_and_print() {
    let dirs = Dirs::new();
    let health = health_server(None);
    let set = dirs.path().join("health.protoset");
    std::fs::write(&set, tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap();
    let set = set.display().to_string();
    let direct = |args: &[&str]| {
        let mut all = vec!["call", "--address", &health, "--protoset", &set, "grpc.health.v1.Health/Check"];
        all.extend_from_slice(args);
        cli(&dirs, &all)
    };

    // @FILE: the file is the request (an unknown service is NOT_FOUND: the request was sent as written).
    let file = dirs.path().join("check.json");
    std::fs::write(&file, r#"{"service": ""}"#).unwrap();
    let ok = direct(&[&format!("@{}", file.display())]).run().ok();
    assert_eq!(ok.json()["status"], "SERVING");
    std::fs::write(&file, r#"{"service": "nope"}"#).unwrap();
    let run = direct(&[&format!("@{}", file.display())]).run();
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("service not registered"), "{}", run.snapshot());

    // A piped stdin is the request, never dropped; `@-` reads it too.
    let run = direct(&[]).stdin(r#"{"service": "nope"}"#).run();
    assert!(run.code != 0 && run.stderr.contains("service not registered"), "{}", run.snapshot());
    let ok = direct(&["@-"]).stdin(r#"{"service": ""}"#).run().ok();
    assert_eq!(ok.json()["status"], "SERVING");

    // A JSON error names the field, and the file it came from.
    let run = direct(&[r#"{"service": 1}"#]).run().code(128);
    assert!(run.stderr.contains("Error creating request: service: expected string"), "{}", run.snapshot());
    std::fs::write(&file, r#"{"servce": ""}"#).unwrap();
    let run = direct(&[&format!("@{}", file.display())]).run().code(128);
    assert!(run.stderr.contains(&format!("from {}", file.display())), "{}", run.snapshot());
    assert!(run.stderr.contains(r#"unknown field "servce""#), "{}", run.snapshot());

    // -H and --timeout are taken; --print grpcurl prints the command against the address, --print curl is refused.
    direct(&["-H", "x-trace: 1", "--timeout", "5s", "{}"]).run().ok();
    let printed = direct(&["-H", "x-trace: 1", "--timeout", "5s", "--print", "grpcurl", "{}"]).run().ok();
    assert_eq!(
        printed.stdout,
        format!(
            "grpcurl -plaintext -protoset {set} -H 'x-trace: 1' -max-time 5 -d '{{}}' {health} \
             grpc.health.v1.Health/Check\n"
        )
    );
    let run = direct(&["--print", "curl", "{}"]).run().code(128);
    assert!(run.stderr.contains("--print grpcurl"), "{}", run.snapshot());
}
