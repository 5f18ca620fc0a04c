//! The network edge of `micro server` (issue 10, findings 6 and 9), replayed through the real binary and real
//! sockets.
//!
//! Finding 6: the API gateway reflected any `Origin` with `Access-Control-Allow-Credentials: true`, read `text/plain`
//! bodies as JSON, and trusted the `micro-token` cookie from any site, so a cross-site "simple" POST wrote to the
//! store. Finding 9: 1,200 half-open connections (partial HTTP/1 requests, bare HTTP/2 prefaces) were held for 35 s
//! and none were closed.

use crate::support::{Platform, channel, curl, runtime};
use micro_core::proto::registry::{WatchRequest, registry_client::RegistryClient};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A foreign web site.
const EVIL: &str = "https://evil.example";
/// A web app the server is configured to trust.
const APP: &str = "https://app.example";

/// The store's write endpoint through the gateway, and a request that writes `key` = "pwned".
fn write_request(key: &str) -> (&'static str, String) {
    // "pwned" in base64, as the proto3 JSON mapping writes bytes.
    ("/store/write", format!(r#"{{"record":{{"key":"{key}","value":"cHduZWQ="}}}}"#))
}

/// Asserts that the admin's CLI reads no record `key` from the store.
#[track_caller]
fn assert_not_written(p: &Platform, key: &str) {
    let run = p.micro(["store", "read", key]);
    assert_eq!((run.code, run.stderr.as_str()), (6, "Not found\n"), "{key} was written: {}", run.stdout);
}

/// Asserts that the admin's CLI reads `key` = "pwned" from the store.
#[track_caller]
fn assert_written(p: &Platform, key: &str) {
    assert_eq!(p.micro(["store", "read", key]).ok().stdout.trim(), "pwned", "{key}");
}

#[test]
fn cross_origin_requests_get_no_cors_credentials_by_default() {
    let p = Platform::start();
    let url = format!("{}/store/list", p.api_url());
    // The preflight of a credentialed cross-site fetch: no CORS headers, so the browser stops there.
    let rsp = curl([
        "-X",
        "OPTIONS",
        "-H",
        &format!("Origin: {EVIL}"),
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type",
        &url,
    ]);
    assert!(rsp.status == 200 || rsp.status == 204, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-origin"), None, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), None, "{rsp}");
    // An actual answer (with the token, so the call succeeds) carries none either: no reflected origin.
    let auth = format!("Authorization: Bearer {}", p.token());
    let rsp =
        curl(["-H", &auth, "-H", &format!("Origin: {EVIL}"), "-H", "Content-Type: application/json", "-d", "{}", &url])
            .status(200);
    assert_eq!(rsp.header("access-control-allow-origin"), None, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), None, "{rsp}");
    assert!(!format!("{:?}", rsp.headers).contains("evil.example"), "{rsp}");
}

#[test]
fn a_cross_site_text_plain_post_with_the_cookie_writes_nothing() {
    let p = Platform::start();
    let cookie = format!("micro-token={}", p.token());
    let (path, body) = write_request("csrf-plain");
    let url = format!("{}{path}", p.api_url());
    // What a browser sends for `fetch(url, {method: "POST", mode: "no-cors", credentials: "include", body})` from
    // another site: a "simple" request, with no preflight.
    let attack = curl([
        "-b",
        &cookie,
        "-H",
        "Content-Type: text/plain;charset=UTF-8",
        "-H",
        &format!("Origin: {EVIL}"),
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-d",
        &body,
        &url,
    ]);
    assert_eq!(attack.status, 403, "{attack}");
    // An old browser that sends neither Origin nor Sec-Fetch-Site: the cookie is not trusted without them.
    let old = curl(["-b", &cookie, "-H", "Content-Type: text/plain", "-d", &body, &url]);
    assert_eq!(old.status, 403, "{old}");
    // Even from the gateway's own origin, text/plain is not JSON: a 415 that names the type to send.
    let own = format!("Origin: {}", p.api_url());
    let plain = curl(["-b", &cookie, "-H", &own, "-H", "Content-Type: text/plain", "-d", &body, &url]);
    assert_eq!(plain.status, 415, "{plain}");
    assert!(plain.json()["detail"].as_str().is_some_and(|d| d.contains("application/json")), "{plain}");
    assert_not_written(&p, "csrf-plain");

    // The same write as JSON from the gateway's own origin works, so the refusals above are not an accident.
    let ok = curl(["-b", &cookie, "-H", &own, "-H", "Content-Type: application/json", "-d", &body, &url]);
    assert_eq!(ok.status, 200, "{ok}");
    assert_written(&p, "csrf-plain");
}

#[test]
fn a_cookie_call_from_a_foreign_origin_is_refused_and_the_authorization_header_works() {
    let p = Platform::start();
    let cookie = format!("micro-token={}", p.token());
    let (path, body) = write_request("csrf-json");
    let url = format!("{}{path}", p.api_url());
    let json = "Content-Type: application/json";
    let evil = format!("Origin: {EVIL}");
    let rsp = curl(["-b", &cookie, "-H", json, "-H", &evil, "-d", &body, &url]);
    assert_eq!(rsp.status, 403, "{rsp}");
    let detail = rsp.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains(EVIL) && detail.contains("Authorization"), "a clear message: {rsp}");
    // A GET is a call too: `<img src=…/store/write?record.key=…>` on another site.
    let get = format!("{}{path}?record.key=csrf-get&record.value=cHduZWQ%3D", p.api_url());
    let rsp = curl(["-b", &cookie, "-H", "Sec-Fetch-Site: cross-site", &get]);
    assert_eq!(rsp.status, 403, "{rsp}");
    assert_not_written(&p, "csrf-json");
    assert_not_written(&p, "csrf-get");

    // The same calls with the token in an Authorization header (which no web page can add without CORS) work.
    let auth = format!("Authorization: Bearer {}", p.token());
    curl(["-H", &auth, "-H", json, "-H", &evil, "-d", &body, &url]).status(200);
    assert_written(&p, "csrf-json");
    curl(["-H", &auth, "-H", "Sec-Fetch-Site: cross-site", &get]).status(200);
    assert_written(&p, "csrf-get");
}

#[test]
fn a_configured_origin_still_gets_credentials() {
    let p = Platform::start_env(&[("MICRO_API_CORS_ORIGINS", APP)]);
    let cookie = format!("micro-token={}", p.token());
    let (path, body) = write_request("from-app");
    let url = format!("{}{path}", p.api_url());
    let preflight = |origin: &str| {
        curl(["-X", "OPTIONS", "-H", &format!("Origin: {origin}"), "-H", "Access-Control-Request-Method: POST", &url])
    };
    let rsp = preflight(APP);
    assert_eq!(rsp.header("access-control-allow-origin"), Some(APP), "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), Some("true"), "{rsp}");
    let rsp = preflight(EVIL);
    assert_eq!(rsp.header("access-control-allow-origin"), None, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), None, "{rsp}");
    // The app's page may call with the cookie; another site may not.
    let json = "Content-Type: application/json";
    let rsp = curl(["-b", &cookie, "-H", json, "-H", &format!("Origin: {APP}"), "-d", &body, &url]).status(200);
    assert_eq!(rsp.header("access-control-allow-origin"), Some(APP), "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), Some("true"), "{rsp}");
    assert_written(&p, "from-app");
    let (_, body) = write_request("from-evil");
    let rsp = curl(["-b", &cookie, "-H", json, "-H", &format!("Origin: {EVIL}"), "-d", &body, &url]);
    assert_eq!(rsp.status, 403, "{rsp}");
    assert_not_written(&p, "from-evil");
}

/// Opens `count` connections to `address`, each sending `prefix` (and nothing more).
fn half_open(address: &str, count: usize, prefix: &[u8]) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut tcp = TcpStream::connect(address).unwrap_or_else(|e| panic!("connection {i} to {address}: {e}"));
            tcp.write_all(prefix).unwrap_or_else(|e| panic!("connection {i} to {address}: {e}"));
            tcp
        })
        .collect()
}

/// Waits until the server has closed every connection (a read ends with EOF or an error, whatever arrived
/// before), failing after `within`; returns how long it took.
fn wait_until_closed(what: &str, connections: Vec<TcpStream>, within: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + within;
    let waiters: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, mut tcp)| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(i);
                    }
                    tcp.set_read_timeout(Some(left)).expect("a read timeout");
                    match tcp.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            return Err(i);
                        }
                        Err(_) => return Ok(()),
                    }
                }
            })
        })
        .collect();
    let open: Vec<usize> = waiters.into_iter().filter_map(|w| w.join().expect("a waiter").err()).collect();
    assert!(open.is_empty(), "{what}: {} connections still open after {within:?}: {open:?}", open.len());
    started.elapsed()
}

/// The shortened timeouts of the tests below: 1 s to send the first byte (or a request's head), 2 s idle.
const SHORT_TIMEOUTS: &[(&str, &str)] = &[("MICRO_HANDSHAKE_TIMEOUT", "1s"), ("MICRO_IDLE_TIMEOUT", "2s")];

#[test]
fn half_open_connections_are_closed_within_the_timeouts() {
    let p = Platform::start_env(SHORT_TIMEOUTS);
    let (api, proxy) = (p.api(), p.addr.clone());
    const PARTIAL: &[u8] = b"POST /store/write HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le";
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let opened = Instant::now();
    let mut connections = Vec::new();
    for address in [&api, &proxy] {
        connections.extend(half_open(address, 100, PARTIAL));
        connections.extend(half_open(address, 100, PREFACE));
    }
    // A handful that send nothing at all.
    connections.extend(half_open(&api, 10, b""));
    connections.extend(half_open(&proxy, 10, b""));
    assert_eq!(connections.len(), 420);
    // Handshake (1 s) + idle (2 s) is the longest any of them may live; allow for a loaded machine.
    wait_until_closed("half-open connections", connections, Duration::from_secs(10));
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(900), "closed only once the handshake timeout passed: {took:?}");
    // The server still serves.
    assert!(p.micro(["services"]).ok().stdout.contains("store"));
    curl([format!("{}/", p.api_url())]).status(200);
}

#[test]
fn quiet_streams_outlive_the_idle_timeout() {
    let mut p = Platform::start_env(SHORT_TIMEOUTS);
    let rt = runtime();
    // A gRPC watch through the proxy: nothing happens on it for twice the idle timeout, yet it is not cut, because
    // the client answers the server's keepalive pings.
    let mut watch = rt.block_on(async {
        let mut client = RegistryClient::with_interceptor(channel(&p).await, p.bearer());
        let req = WatchRequest { service: "helloworld".into(), options: None };
        client.watch(req).await.expect("Registry.Watch through the proxy").into_inner()
    });
    // An SSE watch through the gateway, quiet as long.
    let mut sse = TcpStream::connect(p.api()).expect("connect to the gateway");
    let request = format!(
        "GET /registry/watch?service=helloworld HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        p.api(),
        p.token()
    );
    sse.write_all(request.as_bytes()).expect("send the watch");
    sse.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut buf = [0u8; 8192];
    let n = sse.read(&mut buf).expect("the watch's head");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));

    std::thread::sleep(Duration::from_secs(5));
    p.start_service("helloworld");
    let event = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), watch.message()).await.expect("an event in time")
    });
    let event = event.expect("the gRPC watch survived").expect("the gRPC watch did not end");
    assert_eq!(event.service.map(|s| s.name).as_deref(), Some("helloworld"));
    let mut text = String::new();
    while !text.contains("helloworld") {
        let n = sse.read(&mut buf).expect("the SSE watch survived");
        assert!(n > 0, "the SSE watch was closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    // A long handshake timeout, so that the connections held below stay open while the slots are counted.
    let p = Platform::start_env(&[("MICRO_MAX_CONNECTIONS", "8"), ("MICRO_HANDSHAKE_TIMEOUT", "60s")]);
    for (name, address) in [("gateway", p.api()), ("proxy", p.addr.clone())] {
        // Fill the slots (the server may hold some of its own) until a connection is closed as soon as it opens.
        let mut held = Vec::new();
        let refused = loop {
            assert!(held.len() <= 8, "{name}: {} connections open, beyond the limit of 8", held.len());
            let mut tcp = TcpStream::connect(&address).expect("the kernel accepts");
            tcp.set_read_timeout(Some(Duration::from_secs(1))).expect("a read timeout");
            let mut buf = [0u8; 64];
            match tcp.read(&mut buf) {
                Ok(0) => break true,
                Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break true;
                }
                _ => held.push(tcp),
            }
        };
        assert!(refused && !held.is_empty(), "{name}");
        // While they are held, requests fail; once they close, the server serves again.
        match name {
            "gateway" => assert_eq!(curl([format!("{}/", p.api_url())]).status, 0, "{name}"),
            _ => assert_ne!(p.micro(["services"]).code, 0, "{name}"),
        }
        drop(held);
        p.wait_until("the server serves again", |p| match name {
            "gateway" => curl([format!("{}/", p.api_url())]).status == 200,
            _ => p.micro(["services"]).code == 0,
        });
    }
}
