//! `micro describe`: a registered service's schema in proto syntax (as `grpcurl describe` prints it, compared with
//! grpcurl itself when it is installed), its descriptors as JSON, and the errors for names that are not there.

use crate::support::{Platform, snapshot_settings};
use std::process::Command;

#[test]
fn services_endpoints_and_messages_in_proto_syntax() {
    let p = Platform::with(&["helloworld", "echo"]);
    let _s = snapshot_settings().bind_to_scope();

    let service = p.micro(["describe", "helloworld"]).ok();
    insta::assert_snapshot!("helloworld", service.snapshot());
    let method = p.micro(["describe", "helloworld", "Helloworld.Call"]).ok();
    insta::assert_snapshot!("helloworld_call", method.snapshot());
    // The method's name alone, or its gRPC path, is the same endpoint.
    for name in ["Call", "/helloworld.Helloworld/Call", "helloworld.Helloworld.Call"] {
        assert_eq!(p.micro(["describe", "helloworld", name]).ok().stdout, method.stdout, "{name}");
    }
    let message = p.micro(["describe", "helloworld", "CallRequest"]).ok();
    insta::assert_snapshot!("helloworld_call_request", message.snapshot());
    assert_eq!(p.micro(["describe", "helloworld", "helloworld.CallRequest"]).ok().stdout, message.stdout);
    // Every kind of field: enums, repeated fields, maps, nested messages, well-known types.
    let everything = p.micro(["describe", "echo", "Everything"]).ok();
    insta::assert_snapshot!("echo_everything", everything.snapshot());
    let color = p.micro(["describe", "echo", "Color"]).ok();
    insta::assert_snapshot!("echo_color", color.snapshot());

    // grpcurl, asked through the proxy's reflection, prints the same.
    for (service, symbol, ours) in [
        ("helloworld", "helloworld.Helloworld", &service),
        ("helloworld", "helloworld.Helloworld.Call", &method),
        ("helloworld", "helloworld.CallRequest", &message),
        ("echo", "echo.Everything", &everything),
        ("echo", "echo.Color", &color),
    ] {
        if let Some(theirs) = grpcurl(&["-plaintext", &p.addr, "describe", symbol]) {
            assert_eq!(ours.stdout, theirs, "`micro describe {service}` and `grpcurl describe {symbol}` differ");
        }
    }
}

#[test]
fn json_is_the_descriptor() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let message = p.micro(["describe", "helloworld", "CallRequest", "-o", "json"]).ok();
    insta::assert_snapshot!("helloworld_call_request_json", message.snapshot());
    let json = message.json();
    assert_eq!(json["name"], "CallRequest");
    assert_eq!(json["field"][0]["type"], "TYPE_STRING");

    let method = p.micro(["describe", "helloworld", "Stream", "-o", "json"]).ok().json();
    assert_eq!(method["input_type"], ".helloworld.StreamRequest");
    assert_eq!(method["server_streaming"], true);

    let service = p.micro(["describe", "helloworld", "-o", "raw"]).ok();
    let docs = service.json_docs();
    assert_eq!(docs.len(), 1, "{}", service.stdout);
    let methods: Vec<&str> =
        docs[0]["method"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(methods, ["Call", "Stream", "PingPong"]);
}

#[test]
fn core_services_describe_too() {
    let p = Platform::start();
    let auth = p.micro(["describe", "auth"]).ok();
    // The auth service serves three gRPC services, each printed.
    for service in ["auth.Accounts is a service:", "auth.Auth is a service:", "auth.Rules is a service:"] {
        assert!(auth.stdout.contains(service), "{service}\n{}", auth.snapshot());
    }
    let get = p.micro(["describe", "registry", "GetService"]).ok();
    assert_eq!(
        get.stdout,
        "registry.Registry.GetService is a method:\n// Get every version of one service.\n\
         rpc GetService ( .registry.GetRequest ) returns ( .registry.GetResponse );\n"
    );
}

#[test]
fn unknown_names_list_what_there_is() {
    let p = Platform::with(&["helloworld"]);
    let _s = snapshot_settings().bind_to_scope();
    let run = p.micro(["describe", "helloworld", "Nope"]).code(4);
    assert!(
        run.stderr.contains("Endpoints: Helloworld.Call, Helloworld.PingPong, Helloworld.Stream"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Messages: CallRequest, CallResponse,"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    insta::assert_snapshot!("unknown_name", run.snapshot());
    let run = p.micro(["describe", "nosuch"]).code(4);
    insta::assert_snapshot!("unknown_service", run.snapshot());
    // A missing service is a usage error (its exit code is the one of every usage error).
    let run = p.micro(["describe"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("<SERVICE>"), "{}", run.stderr);
}

/// What `grpcurl ARGS` prints, or `None` (with a note) when grpcurl is not installed.
fn grpcurl(args: &[&str]) -> Option<String> {
    match Command::new("grpcurl").args(args).output() {
        Ok(out) => {
            assert!(out.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            eprintln!("grpcurl is not installed ({e}): micro describe is not compared with it");
            None
        }
    }
}
