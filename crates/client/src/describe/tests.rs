//! The printer against grpcurl's own output for the same protos (grpcurl 1.8.6, `describe`), and the JSON of
//! descriptors.

use super::*;

/// A schema compiled with protox, with source info (comments), from `(file name, source)` pairs.
fn compile(files: &[(&str, &str)]) -> DescriptorPool {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    protox::Compiler::new([dir.path()])
        .unwrap()
        .include_imports(true)
        .include_source_info(true)
        .open_files(names)
        .unwrap()
        .descriptor_pool()
}

fn describe(pool: &DescriptorPool, name: &str) -> String {
    find_symbol(pool, name).unwrap_or_else(|| panic!("{name} not found")).describe()
}

/// The helloworld example's proto, as the example registers it.
const HELLOWORLD: &str = include_str!("../../../../examples/helloworld/proto/helloworld.proto");

/// Every kind of element: nested types, a oneof, maps, proto3 `optional`, options, reserved numbers and names.
const RICH: &str = r#"// Leading file comment.
syntax = "proto3";

package rich.v1;

import "google/protobuf/timestamp.proto";

// Kinds of things.
enum Kind {
  KIND_UNSPECIFIED = 0; // trailing on value
  KIND_A = 1;
}

// A rich message.
// Second line of the comment.
message Rich {
  // A nested message.
  message Inner {
    // Deep value.
    int32 deep = 1;
    repeated Inner children = 2;
  }
  // A nested enum.
  enum Mode {
    MODE_UNSPECIFIED = 0;
    MODE_FAST = 1;
  }
  string name = 1; // trailing comment of name
  // The choice.
  oneof choice {
    // Text choice.
    string text = 2;
    int64 number = 3;
    Inner inner = 4;
  }
  map<string, Inner> inners = 5;
  map<int32, Kind> kinds = 6;
  optional int32 maybe = 7;
  Mode mode = 8;
  google.protobuf.Timestamp at = 9;
  repeated bytes blobs = 10 [deprecated = true];
  reserved 20, 21 to 25;
  reserved "old";
  uint64 big = 11 [json_name = "BIG"];
}

// Things happen.
service Things {
  // Do it.
  rpc Do(Rich) returns (Rich.Inner) {
    option deprecated = true;
  }
  rpc Watch(stream Rich) returns (stream Rich);
}
"#;

/// proto2: labels, defaults, groups, extension ranges and extensions, enum aliases and reserved values.
const TWO: &str = r#"syntax = "proto2";
package two;

/* Block comment
   over lines. */
message Old {
  option deprecated = true;
  //   indented comment
  //
  // after blank
  optional int32 a = 1 [default = 5];
  required string b = 2 [default = "x\"y"];
  repeated int32 c = 3 [packed = true];
  extensions 100 to 199, 300 to max;
  optional E e = 4 [default = E_B];
  optional group G = 5 { optional int32 g = 1; }
}
enum E {
  option allow_alias = true;
  E_A = 1;
  E_B = 2;
  E_C = 2 [deprecated = true];
  reserved 10 to 20;
  reserved "GONE";
}
message Empty {}
extend Old {
  optional int32 ext = 100;
}
service S {
  rpc Nop(Empty) returns (Empty);
  option deprecated = true;
}
"#;

#[test]
fn helloworld_service_and_method_as_grpcurl_prints_them() {
    let pool = compile(&[("helloworld.proto", HELLOWORLD)]);
    assert_eq!(
        describe(&pool, "helloworld.Helloworld"),
        "\
helloworld.Helloworld is a service:
// Helloworld greets people, counts and plays ping-pong.
service Helloworld {
  // Call answers with a greeting.
  rpc Call ( .helloworld.CallRequest ) returns ( .helloworld.CallResponse );
  // PingPong answers every ping with a pong of the same stroke.
  rpc PingPong ( stream .helloworld.Ping ) returns ( stream .helloworld.Pong );
  // Stream sends `count` messages back.
  rpc Stream ( .helloworld.StreamRequest ) returns ( stream .helloworld.StreamResponse );
}
"
    );
    assert_eq!(
        describe(&pool, "helloworld.Helloworld.Call"),
        "\
helloworld.Helloworld.Call is a method:
// Call answers with a greeting.
rpc Call ( .helloworld.CallRequest ) returns ( .helloworld.CallResponse );
"
    );
    assert_eq!(
        describe(&pool, ".helloworld.CallRequest"),
        "\
helloworld.CallRequest is a message:
// The request of Call.
message CallRequest {
  // The name to greet.
  string name = 1;
}
"
    );
}

#[test]
fn nested_types_oneofs_maps_options_and_reserved_as_grpcurl_prints_them() {
    let pool = compile(&[("rich.proto", RICH)]);
    assert_eq!(
        describe(&pool, "rich.v1.Rich"),
        "\
rich.v1.Rich is a message:
// A rich message.
// Second line of the comment.
message Rich {
  string name = 1;
  // The choice.
  oneof choice {
    // Text choice.
    string text = 2;
    int64 number = 3;
    .rich.v1.Rich.Inner inner = 4;
  }
  map<string, .rich.v1.Rich.Inner> inners = 5;
  map<int32, .rich.v1.Kind> kinds = 6;
  optional int32 maybe = 7;
  .rich.v1.Rich.Mode mode = 8;
  .google.protobuf.Timestamp at = 9;
  repeated bytes blobs = 10 [deprecated = true];
  uint64 big = 11 [json_name = \"BIG\"];
  // A nested message.
  message Inner {
    // Deep value.
    int32 deep = 1;
    repeated .rich.v1.Rich.Inner children = 2;
  }
  // A nested enum.
  enum Mode {
    MODE_UNSPECIFIED = 0;
    MODE_FAST = 1;
  }
  reserved 20, 21 to 25;
  reserved \"old\";
}
"
    );
    assert_eq!(
        describe(&pool, "rich.v1.Things"),
        "\
rich.v1.Things is a service:
// Things happen.
service Things {
  // Do it.
  rpc Do ( .rich.v1.Rich ) returns ( .rich.v1.Rich.Inner ) {
    option deprecated = true;
  }
  rpc Watch ( stream .rich.v1.Rich ) returns ( stream .rich.v1.Rich );
}
"
    );
    assert_eq!(
        describe(&pool, "rich.v1.Kind"),
        "\
rich.v1.Kind is an enum:
// Kinds of things.
enum Kind {
  KIND_UNSPECIFIED = 0;
  KIND_A = 1;
}
"
    );
    assert_eq!(
        describe(&pool, "rich.v1.Rich.Inner"),
        "\
rich.v1.Rich.Inner is a message:
// A nested message.
message Inner {
  // Deep value.
  int32 deep = 1;
  repeated .rich.v1.Rich.Inner children = 2;
}
"
    );
}

#[test]
fn proto2_labels_defaults_groups_and_extensions() {
    let pool = compile(&[("two.proto", TWO)]);
    // grpcurl prints the string default unescaped (`"x\y"`); this prints it as it must be written.
    assert_eq!(
        describe(&pool, "two.Old"),
        "\
two.Old is a message:
// Block comment
// over lines.
message Old {
  option deprecated = true;
  //   indented comment
  //
  // after blank
  optional int32 a = 1 [default = 5];
  required string b = 2 [default = \"x\\\"y\"];
  repeated int32 c = 3 [packed = true];
  optional .two.E e = 4 [default = E_B];
  optional group G = 5 {
    optional int32 g = 1;
  }
  extensions 100 to 199, 300 to max;
}
"
    );
    assert_eq!(
        describe(&pool, "two.E"),
        "\
two.E is an enum:
enum E {
  option allow_alias = true;
  E_A = 1;
  E_B = 2;
  E_C = 2 [deprecated = true];
  reserved 10 to 20;
  reserved \"GONE\";
}
"
    );
    assert_eq!(describe(&pool, "two.Empty"), "two.Empty is a message:\nmessage Empty {\n}\n");
    assert_eq!(
        describe(&pool, "two.S"),
        "\
two.S is a service:
service S {
  option deprecated = true;
  rpc Nop ( .two.Empty ) returns ( .two.Empty );
}
"
    );
}

#[test]
fn the_core_protos_print_and_every_element_is_found() {
    let schema = micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
    let text = describe(&schema.pool, "registry.Service");
    assert!(text.starts_with("registry.Service is a message:\n// A service: one name and version, with its nodes.\n"));
    assert!(text.contains("  map<string, string> metadata = 3;\n"), "{text}");
    assert!(text.contains("  repeated .registry.Endpoint endpoints = 4;\n"), "{text}");
    // A comment of two lines keeps both.
    assert!(
        text.contains("  // The service's protobuf schema. Records returned by the registry carry only the hash;\n  // `GetSchema` returns the descriptors.\n"),
        "{text}"
    );
    for service in schema.pool.services() {
        let text = Symbol::Service(service.clone()).to_proto();
        assert_eq!(text.matches("  rpc ").count(), service.methods().len(), "{text}");
        for m in service.methods() {
            assert_eq!(find_symbol(&schema.pool, m.full_name()), Some(Symbol::Method(m.clone())));
        }
    }
    assert_eq!(find_symbol(&schema.pool, "registry.Nope"), None);
    assert_eq!(find_symbol(&schema.pool, "nope"), None);
}

#[test]
fn json_is_the_descriptor_with_proto_field_names() {
    let pool = compile(&[("rich.proto", RICH)]);
    let json = find_symbol(&pool, "rich.v1.Things.Do").unwrap().to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "Do",
            "input_type": ".rich.v1.Rich",
            "output_type": ".rich.v1.Rich.Inner",
            "options": {"deprecated": true}
        })
    );
    let json = find_symbol(&pool, "rich.v1.Rich").unwrap().to_json();
    assert_eq!(json["name"], "Rich");
    let name = &json["field"][0];
    assert_eq!(
        (&name["name"], &name["number"], &name["label"], &name["type"]),
        (&"name".into(), &1.into(), &"LABEL_OPTIONAL".into(), &"TYPE_STRING".into())
    );
    assert_eq!(json["oneof_decl"][0]["name"], "choice");
    assert_eq!(json["nested_type"][0]["name"], "Inner");
    assert_eq!(json["reserved_name"], serde_json::json!(["old"]));
    let service = find_symbol(&pool, "rich.v1.Things").unwrap().to_json();
    assert_eq!(service["method"][1]["client_streaming"], true);
}

#[test]
fn strings_are_escaped() {
    assert_eq!(quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
    assert_eq!(escape_bytes(b"\x01\xff"), r#""\001\377""#);
    assert_eq!(default_json_name("user_email_2"), "userEmail2");
    assert_eq!(range(5, 5), "5");
    assert_eq!(range(5, MAX_FIELD_NUMBER), "5 to max");
}
