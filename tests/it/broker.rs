//! The broker service through the real CLI and library: fan-out, queue groups, publishing from stdin, namespace
//! isolation, bad input, and subscriptions that end when the server stops.

use crate::support::{DEADLINE, Dirs, Platform, micro_bin};
use micro::broker::Broker;
use micro::client::Client;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A `micro` command that runs until it exits or is killed (a subscriber, a consumer), with its stdout lines
/// delivered as they come. Killed on drop.
pub struct Background {
    line: String,
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    /// Starts `micro ARGS` as the CLI user whose directories are under `root` (`p.path("")` for the admin,
    /// `dirs.path()` for another user).
    pub fn spawn(p: &Platform, root: &Path, args: &[&str]) -> Background {
        let mut cmd = Command::new(micro_bin());
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("MICRO_") || k == "RUST_LOG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", root.join("home"))
            .env("MICRO_CONFIG_DIR", root.join("config"))
            .env("MICRO_CACHE_DIR", root.join("cache"))
            .env("MICRO_PROXY", &p.addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = format!("micro {}", args.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Background { line, child, stdout, stderr }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until its stderr contains `text`.
    #[track_caller]
    pub fn wait_stderr(&mut self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stderr().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("`{}` exited ({status}) before printing {text:?}:\n{}", self.line, self.stderr());
            }
            assert!(Instant::now() < deadline, "`{}` did not print {text:?}:\n{}", self.line, self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next stdout line, if one comes within `wait`.
    pub fn next_line(&self, wait: Duration) -> Option<String> {
        self.stdout.recv_timeout(wait).ok()
    }

    /// The next `n` stdout lines, as JSON.
    #[track_caller]
    pub fn docs(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let line = self.next_line(DEADLINE).unwrap_or_else(|| {
                    panic!("`{}` printed {i} of {n} lines in time; stderr:\n{}", self.line, self.stderr())
                });
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits for it to exit; returns the exit code and the stdout lines not read yet.
    #[track_caller]
    pub fn wait(mut self) -> (i32, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "`{}` did not exit in time:\n{}", self.line, self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = Vec::new();
        while let Ok(l) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            rest.push(l);
        }
        (status.code().unwrap_or(-1), rest)
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber of the admin's CLI, waiting until it is subscribed.
fn subscriber(p: &Platform, args: &[&str]) -> Background {
    let mut all = vec!["broker", "subscribe"];
    all.extend_from_slice(args);
    let mut sub = Background::spawn(p, &p.path(""), &all);
    sub.wait_stderr("Subscribed to");
    sub
}

/// A library client as the admin (inside a runtime: the channel needs one).
fn broker(p: &Platform) -> Broker {
    Broker::from_client(&Client::new(&p.addr, "micro").unwrap().with_token(p.token()))
}

fn bodies(docs: &[Value]) -> Vec<String> {
    docs.iter().map(|d| d["body"].as_str().expect("a text body").to_string()).collect()
}

#[test]
fn every_subscriber_gets_every_message() {
    let p = Platform::start();
    let a = subscriber(&p, &["orders", "--count", "3"]);
    let b = subscriber(&p, &["orders"]);
    p.micro(["broker", "publish", "orders", "one", "--header", "k=v"]).ok();
    p.micro(["broker", "publish", "orders", "two"]).ok();
    p.micro(["broker", "publish", "other", "not for us"]).ok();
    p.micro(["broker", "publish", "orders", "three"]).ok();
    let docs = a.docs(3);
    assert_eq!(docs[0], json!({"topic": "orders", "header": {"k": "v"}, "body": "one"}));
    assert_eq!(bodies(&docs), ["one", "two", "three"]);
    assert_eq!(bodies(&b.docs(3)), ["one", "two", "three"]);
    // --count ends the first subscriber, successfully, with nothing more printed.
    assert_eq!(a.wait(), (0, vec![]));
    // Ctrl-C ends the other.
    b.interrupt();
    assert_eq!(b.wait(), (0, vec![]));
}

#[test]
fn a_queue_group_shares_the_messages() {
    let p = Platform::start();
    let q1 = subscriber(&p, &["jobs", "--queue", "workers"]);
    let q2 = subscriber(&p, &["jobs", "--queue", "workers"]);
    let all = subscriber(&p, &["jobs"]);
    let input: String = (1..=10).map(|i| format!("job {i}\n")).collect();
    p.cli(["broker", "publish", "jobs", "-"]).stdin(&input).run().ok();

    // Everyone outside the group gets all ten; the group gets each exactly once, across its members.
    assert_eq!(bodies(&all.docs(10)).len(), 10);
    let mut seen: Vec<String> = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < 10 && Instant::now() < deadline {
        if let Some(l) = q1.next_line(Duration::from_millis(20)) {
            seen.push(l);
            n1 += 1;
        }
        if let Some(l) = q2.next_line(Duration::from_millis(20)) {
            seen.push(l);
            n2 += 1;
        }
    }
    assert!(q1.next_line(Duration::from_millis(300)).is_none() && q2.next_line(Duration::from_millis(10)).is_none());
    let unique: BTreeSet<String> =
        seen.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["body"].to_string()).collect();
    assert_eq!((seen.len(), unique.len()), (10, 10), "{seen:?}");
    assert!(n1 > 0 && n2 > 0, "both members get work: {n1} and {n2}");
}

#[test]
fn publish_reads_lines_from_stdin() {
    let p = Platform::start();
    let sub = subscriber(&p, &["lines", "--count", "3", "-o", "json"]);
    p.cli(["broker", "publish", "lines", "-", "-H", "src=stdin"]).stdin("a\n\nb\r\nc").run().ok();
    let docs = sub.docs(3);
    assert_eq!(bodies(&docs), ["a", "b", "c"]);
    assert!(docs.iter().all(|d| d["header"] == json!({"src": "stdin"})), "{docs:?}");
    assert_eq!(sub.wait().0, 0);
}

#[test]
fn binary_bodies_print_as_base64() {
    let p = Platform::start();
    let sub = subscriber(&p, &["bin", "--count", "1"]);
    crate::support::block_on(async {
        let broker = broker(&p);
        broker.publish("bin", vec![0xff, 0x00, 0x01]).await.unwrap();
    });
    assert_eq!(sub.docs(1), [json!({"topic": "bin", "header": {}, "body_base64": "/wAB"})]);
}

#[test]
fn topics_are_per_namespace() {
    let p = Platform::start();
    // The micro admin listens in namespace `tenant`: messages published in `micro` do not reach it.
    let sub = subscriber(&p, &["news", "--namespace", "tenant"]);
    p.micro(["broker", "publish", "news", "in micro"]).ok();
    p.micro(["broker", "publish", "news", "in tenant", "--namespace", "tenant"]).ok();
    assert_eq!(bodies(&sub.docs(1)), ["in tenant"]);
    assert!(sub.next_line(Duration::from_millis(300)).is_none());

    // An account of `tenant` cannot use `micro`'s topics, and nobody without an account can use any.
    p.micro(["auth", "create", "account", "tadmin", "--secret", "t-pw", "--namespace", "tenant"]).ok();
    let tenant = Dirs::new();
    p.cli_in(&tenant, ["login", "--username", "tadmin", "--password-stdin", "--namespace", "tenant"])
        .stdin("t-pw\n")
        .run()
        .ok();
    p.cli_in(&tenant, ["user", "namespace", "set", "tenant"]).run().ok();
    let run = p.cli_in(&tenant, ["broker", "publish", "news", "x", "--namespace", "micro"]).run().code(2);
    assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    p.cli_in(&tenant, ["broker", "subscribe", "news", "--namespace", "micro"]).run().code(2);
    p.cli_in(&tenant, ["broker", "publish", "news", "from tadmin", "--namespace", "tenant"]).run().ok();
    assert_eq!(bodies(&sub.docs(1)), ["from tadmin"]);
    let run = p.cli_in(&Dirs::new(), ["broker", "publish", "news", "x"]).run().code(2);
    assert!(run.stderr.contains("Not authorized"), "{}", run.snapshot());
}

#[test]
fn bad_input_is_reported() {
    let p = Platform::start();
    let run = p.micro(["broker", "publish"]).code(128);
    assert_eq!(run.stderr, "Missing topic\n");
    let run = p.micro(["broker", "subscribe"]).code(128);
    assert_eq!(run.stderr, "Missing topic\n");
    let run = p.micro(["broker", "publish", "t"]).code(128);
    assert!(run.stderr.starts_with("Missing message"), "{}", run.snapshot());
    let run = p.micro(["broker", "publish", "t", "x", "--header", "novalue"]).code(128);
    assert!(run.stderr.contains("KEY=VALUE"), "{}", run.snapshot());
    let big = "x".repeat((1 << 20) + 1);
    let run = p.cli(["broker", "publish", "t", "-"]).stdin(&big).run().code(128);
    assert_eq!(run.stderr, "message is 1048577 bytes; the broker takes at most 1048576 bytes (1 MiB)\n");

    // The server checks too, whatever the client: the library gets a clear error.
    crate::support::block_on(async {
        let broker = broker(&p);
        let e = broker.publish("t", vec![0u8; (1 << 20) + 1]).await.unwrap_err();
        assert!(e.to_string().contains("at most 1048576 bytes"), "{e}");
        let e = broker.publish("", "x").await.unwrap_err();
        assert_eq!(e.to_string(), "broker: Missing topic");
        let e = broker.subscribe_stream("", None).await.err().expect("an error");
        assert_eq!(e.to_string(), "broker: Missing topic");
    });
}

#[test]
fn the_library_subscribes_with_a_handler() {
    let p = Platform::start();
    crate::support::block_on(async {
        let broker = broker(&p);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let a = {
            let tx = tx.clone();
            broker
                .subscribe("lib", None, move |m| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(("a", String::from_utf8(m.body).unwrap()));
                    }
                })
                .await
                .unwrap()
        };
        let mut b = Box::pin(broker.subscribe_stream("lib", Some("q")).await.unwrap());
        broker.publish_with("lib", [("k".to_string(), "v".to_string())].into(), "hello").await.unwrap();
        let messages = futures::stream::iter((0..1000).map(|i| {
            (
                "lib".to_string(),
                micro_core::proto::broker::Message { header: Default::default(), body: format!("m{i}").into_bytes() },
            )
        }));
        assert_eq!(broker.publish_all(messages).await.unwrap(), 1000);
        use futures::StreamExt;
        let first = b.next().await.unwrap().unwrap();
        assert_eq!(
            (first.header.get("k").map(String::as_str), first.body.as_slice()),
            (Some("v"), b"hello".as_slice())
        );
        for i in 0..1000 {
            assert_eq!(b.next().await.unwrap().unwrap().body, format!("m{i}").into_bytes());
        }
        assert_eq!(rx.recv().await.unwrap(), ("a", "hello".to_string()));
        for i in 0..1000 {
            assert_eq!(rx.recv().await.unwrap().1, format!("m{i}"));
        }
        a.abort();
    });
}

#[test]
fn subscribers_end_when_the_server_stops() {
    let mut p = Platform::start();
    let sub = subscriber(&p, &["t"]);
    let started = Instant::now();
    p.restart_server(false);
    let (code, rest) = sub.wait();
    assert_eq!((code, rest), (0, vec![]));
    assert!(started.elapsed() < Duration::from_secs(20), "the server drained slowly: {:?}", started.elapsed());
}
