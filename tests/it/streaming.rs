//! Streaming through the CLI: server streams print one document per message; client and bidi streams read JSON
//! lines from stdin.

use crate::support::Platform;
use serde_json::{Value, json};

fn counts(docs: &[Value]) -> Vec<Value> {
    docs.iter().map(|d| d["count"].clone()).collect()
}

#[test]
fn micro_stream_prints_one_document_per_message() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["stream", "helloworld", "Helloworld.Stream", r#"{"count":3}"#]).ok();
    let docs = run.json_docs();
    assert_eq!(docs.len(), 3, "{}", run.stdout);
    assert_eq!(counts(&docs), vec![json!("0"), json!("1"), json!("2")]);
    // Each document is indented JSON of its own.
    assert_eq!(run.stdout.matches("{\n\t\"count\"").count(), 3, "{}", run.stdout);
}

#[test]
fn a_dynamic_server_stream() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["helloworld", "stream", "--count=4", "-o", "raw"]).ok();
    assert_eq!(run.stdout, "{\"count\":\"0\"}\n{\"count\":\"1\"}\n{\"count\":\"2\"}\n{\"count\":\"3\"}\n");
    // An empty stream prints nothing and succeeds.
    let run = p.micro(["helloworld", "stream", "--count=0"]).ok();
    assert_eq!(run.stdout, "");
}

#[test]
fn bidi_reads_json_lines_from_stdin() {
    let p = Platform::with(&["helloworld"]);
    let run = p.cli(["helloworld", "ping-pong"]).stdin("{\"stroke\":1}\n\n{\"stroke\":2}\n{\"stroke\":3}\n").run().ok();
    let strokes: Vec<Value> = run.json_docs().iter().map(|d| d["stroke"].clone()).collect();
    assert_eq!(strokes, vec![json!("1"), json!("2"), json!("3")]);
    // The same through `micro stream` without a JSON argument, and the camelCase command word.
    let run = p.cli(["stream", "helloworld", "Helloworld.PingPong"]).stdin("{\"stroke\":7}\n").run().ok();
    assert_eq!(run.json(), json!({"stroke": "7"}));
    let run = p.cli(["helloworld", "pingPong"]).stdin("{\"stroke\":8}\n").run().ok();
    assert_eq!(run.json(), json!({"stroke": "8"}));
}

#[test]
fn bidi_with_a_flag_sends_one_message() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["helloworld", "ping-pong", "--stroke=5"]).ok();
    assert_eq!(run.json(), json!({"stroke": "5"}));
}

#[test]
fn bidi_with_empty_stdin_prints_nothing() {
    let p = Platform::with(&["helloworld"]);
    let run = p.cli(["helloworld", "ping-pong"]).stdin("").run().ok();
    assert_eq!(run.stdout, "");
}

#[test]
fn client_stream_reads_json_lines_from_stdin() {
    let p = Platform::with(&["echo"]);
    let run = p.cli(["echo", "collect"]).stdin("{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":\"c\"}\n").run().ok();
    assert_eq!(run.json(), json!({"count": 3, "texts": ["a", "b", "c"]}));
    let run = p.cli(["call", "echo", "Echo.Collect"]).stdin("{\"text\":\"x\"}\n").run().ok();
    assert_eq!(run.json(), json!({"count": 1, "texts": ["x"]}));
    // No input: an empty stream, answered once.
    let run = p.cli(["echo", "collect"]).stdin("").run().ok();
    assert_eq!(run.json(), json!({"count": 0, "texts": []}));
}

#[test]
fn the_deadline_bounds_a_whole_stream() {
    let p = Platform::with(&["helloworld"]);
    // A bidi stream whose stdin stays open, as on a terminal: only the deadline can end it.
    let run = p
        .cli(["stream", "helloworld", "Helloworld.PingPong", "--timeout", "500ms", "-o", "raw"])
        .stdin("{\"stroke\":1}\n")
        .hold_stdin()
        .run();
    let run = run.code(1);
    assert_eq!(run.stdout, "{\"stroke\":\"1\"}\n", "the pong before the deadline is printed");
    assert!(run.stderr.contains("Request timed out"), "{}", run.stderr);
}
