//! The HTTP API gateway of `micro server` (`--api-address`), driven with `curl`: routing to helloworld, auth,
//! Micro's error JSON, Server-Sent Events and NDJSON streams, CORS, `GET /` and `/openapi.json`.

use crate::support::{Dirs, Http, Platform, curl};
use serde_json::{Value, json};

/// `Authorization: Bearer TOKEN`, as a curl header flag.
fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// `curl -H 'Authorization: Bearer <admin token>' ARGS… URL`.
fn authed(p: &Platform, args: &[&str], path: &str) -> Http {
    let auth = bearer(p.token());
    let url = format!("{}{path}", p.api_url());
    curl(["-H", auth.as_str()].iter().chain(args).chain([&url.as_str()]))
}

/// Asserts a Micro error: exactly `id`, `code`, `detail` and `status`, with `code` the HTTP status.
#[track_caller]
fn assert_error(rsp: &Http, code: u16) -> Value {
    assert_eq!(rsp.status, code, "{rsp}");
    assert!(rsp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{rsp}");
    let e = rsp.json();
    let mut keys: Vec<&str> = e.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "detail", "id", "status"], "{rsp}");
    assert_eq!(e["code"], code, "{rsp}");
    assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{rsp}");
    assert!(e["status"].as_str().is_some_and(|s| !s.is_empty()), "{rsp}");
    e
}

/// An int64 of proto3 JSON: a number or a decimal string.
fn int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an int64: {v}")),
        Value::String(s) => s.parse().unwrap_or_else(|e| panic!("not an int64 ({e}): {v}")),
        _ => panic!("not an int64: {v}"),
    }
}

#[test]
fn root_answers_the_version() {
    let p = Platform::start();
    let rsp = curl([format!("{}/", p.api_url())]).status(200);
    assert!(rsp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{rsp}");
    assert_eq!(rsp.json()["version"], env!("CARGO_PKG_VERSION"), "{rsp}");
    let version = p.micro(["--version"]).ok().stdout;
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

#[test]
fn helloworld_through_the_gateway() {
    let p = Platform::with(&["helloworld"]);
    let rsp = authed(&p, &["-d", r#"{"name":"Jane"}"#], "/helloworld").status(200);
    assert_eq!(rsp.json(), json!({"msg": "Hello Jane"}), "{rsp}");
    assert!(rsp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{rsp}");

    // GET with the request in the query, and the endpoint named in the path.
    let rsp = authed(&p, &[], "/helloworld/call?name=Q").status(200);
    assert_eq!(rsp.json(), json!({"msg": "Hello Q"}), "{rsp}");
    // The body wins over the query.
    let rsp = authed(&p, &["-d", r#"{"name":"Body"}"#], "/helloworld/call?name=Query").status(200);
    assert_eq!(rsp.json()["msg"], "Hello Body", "{rsp}");
    // The service and endpoint spelled out; the JSON content type; unknown fields are ignored.
    let rsp = authed(
        &p,
        &["-H", "Content-Type: application/json", "-d", r#"{"name":"Full","nope":1}"#],
        "/helloworld/Helloworld/Call",
    )
    .status(200);
    assert_eq!(rsp.json()["msg"], "Hello Full", "{rsp}");

    // The token in a `micro-token` cookie works as well, from the gateway's own origin and with a JSON body.
    let cookie = format!("micro-token={}", p.token());
    let own = format!("Origin: {}", p.api_url());
    let json = "Content-Type: application/json";
    let url = format!("{}/helloworld", p.api_url());
    let rsp = curl(["-b", &cookie, "-H", &own, "-H", json, "-d", r#"{"name":"Cookie"}"#, &url]);
    assert_eq!(rsp.status(200).json()["msg"], "Hello Cookie");
    // Without proof of its origin, or labelled as a form, it is refused (see tests/it/security/edge.rs).
    assert_error(&curl(["-b", &cookie, "-H", json, "-d", r#"{"name":"Cookie"}"#, &url]), 403);
    assert_error(&curl(["-b", &cookie, "-H", &own, "-d", r#"{"name":"Cookie"}"#, &url]), 415);
}

#[test]
fn gateway_errors_are_micro_errors() {
    let p = Platform::with(&["helloworld"]);
    let url = |path: &str| format!("{}{path}", p.api_url());

    // No token: 401, and the service is not reached.
    let json = "Content-Type: application/json";
    let rsp = curl(["-H", json, "-d", r#"{"name":"Jane"}"#, &url("/helloworld")]);
    let e = assert_error(&rsp, 401);
    assert_eq!(e["status"], "Unauthorized");
    assert!(!rsp.body.contains("Hello Jane"), "{rsp}");
    // A bad token: 401 too.
    let mut tampered = p.token().to_string();
    tampered.push('x');
    let rsp = curl(["-H", &bearer(&tampered), "-d", "{}", &url("/helloworld")]);
    assert_error(&rsp, 401);
    let rsp = curl(["-H", "Authorization: Bearer not-a-jwt", "-d", "{}", &url("/helloworld")]);
    assert_error(&rsp, 401);

    // An unknown service: 404 for an account of the namespace; a caller without one learns nothing (401, as for a
    // service that exists).
    assert_error(&curl(["-H", json, "-d", "{}", &url("/nosuch")]), 401);
    assert_error(&curl(["-H", &bearer(&tampered), "-d", "{}", &url("/nosuch")]), 401);
    let e = assert_error(&authed(&p, &["-d", "{}"], "/nosuch"), 404);
    assert!(e["detail"].as_str().unwrap().contains("nosuch"), "{e}");
    assert_eq!(e["status"], "Not Found");
    // An unknown endpoint of a known service.
    assert_error(&authed(&p, &["-d", "{}"], "/helloworld/nope"), 404);

    // A field of the wrong type names the field.
    let e = assert_error(&authed(&p, &["-d", r#"{"name": 5}"#], "/helloworld"), 400);
    assert!(e["detail"].as_str().unwrap().contains("name"), "{e}");
    assert_eq!(e["status"], "Bad Request");
    let e = assert_error(&authed(&p, &["-d", r#"{"count": "many"}"#], "/helloworld/stream"), 400);
    assert!(e["detail"].as_str().unwrap().contains("count"), "{e}");
    // Invalid JSON, and JSON that is not an object.
    let e = assert_error(&authed(&p, &["-d", r#"{"name":"#], "/helloworld"), 400);
    assert!(e["detail"].as_str().unwrap().contains("JSON"), "{e}");
    assert_error(&authed(&p, &["-d", "[1,2]"], "/helloworld"), 400);

    // An account without the admin scope is forbidden what only admins may do: 403.
    p.micro(["auth", "create", "account", "bob", "--secret", "b-pw"]).ok();
    let req = json!({"id": "bob", "secret": "b-pw"}).to_string();
    let run = p.cli_in(&Dirs::new(), ["call", "auth", "Auth.Token", &req, "-o", "raw"]).run().ok();
    let bob = run.json()["token"]["access_token"].as_str().expect("a token").to_string();
    let rsp = curl(["-H", &bearer(&bob), "-d", "{}", &url("/auth/accounts/list")]);
    let e = assert_error(&rsp, 403);
    assert_eq!(e["status"], "Forbidden");
    // bob may call helloworld; the admin may list accounts.
    let rsp = curl(["-H", &bearer(&bob), "-d", r#"{"name":"bob"}"#, &url("/helloworld")]).status(200);
    assert_eq!(rsp.json()["msg"], "Hello bob");
    let rsp = authed(&p, &["-d", "{}"], "/auth/accounts/list").status(200);
    let list = rsp.json();
    let ids: Vec<&str> =
        list["accounts"].as_array().map_or(vec![], |a| a.iter().filter_map(|a| a["id"].as_str()).collect());
    assert!(ids.contains(&"admin") && ids.contains(&"bob"), "{rsp}");
    assert!(!rsp.body.contains("b-pw"), "secrets are never returned: {rsp}");
}

#[test]
fn server_streams_as_sse_or_ndjson() {
    let p = Platform::with(&["helloworld"]);

    let rsp = authed(&p, &["-N", "-H", "Accept: text/event-stream"], "/helloworld/stream?count=3").status(200);
    assert!(rsp.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")), "{rsp}");
    let events: Vec<Value> = rsp
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or_else(|e| panic!("bad event data ({e}): {d}\n{rsp}")))
        .collect();
    let counts: Vec<i64> = events.iter().map(|e| int(&e["count"])).collect();
    assert_eq!(counts, [0, 1, 2], "{rsp}");
    assert!(!rsp.body.contains("event: error"), "{rsp}");

    let rsp = authed(&p, &["-d", r#"{"count":3}"#], "/helloworld/stream").status(200);
    assert!(rsp.header("content-type").is_some_and(|c| c.contains("ndjson")), "{rsp}");
    let lines: Vec<&str> = rsp.body.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{rsp}");
    let counts: Vec<i64> =
        lines.iter().map(|l| int(&serde_json::from_str::<Value>(l).expect("a JSON line")["count"])).collect();
    assert_eq!(counts, [0, 1, 2], "{rsp}");

    // A stream that is refused before it starts is a plain error.
    let rsp = curl(["-N", "-H", "Accept: text/event-stream", &format!("{}/helloworld/stream?count=3", p.api_url())]);
    assert_error(&rsp, 401);
}

#[test]
fn cors_preflight_and_headers() {
    let origin = "https://app.example.com";
    let mut p = Platform::start_env(&[("MICRO_API_CORS_ORIGINS", origin)]);
    p.start_service("helloworld");
    let preflight = |origin: &str| {
        curl([
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: Authorization, Content-Type",
            &format!("{}/helloworld", p.api_url()),
        ])
    };
    let rsp = preflight(origin);
    assert!(rsp.status == 200 || rsp.status == 204, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-origin"), Some(origin), "{rsp}");
    assert_eq!(rsp.header("access-control-allow-credentials"), Some("true"), "{rsp}");
    let methods = rsp.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST") && methods.contains("GET"), "{rsp}");
    let headers = rsp.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"), "{rsp}");
    assert!(!rsp.body.contains("Unauthorized"), "a preflight needs no token: {rsp}");
    // Origins that are not configured get no CORS headers (the default, with none configured, for every origin).
    let rsp = preflight("https://other.example");
    assert_eq!(rsp.header("access-control-allow-origin"), None, "{rsp}");

    // Actual answers carry the headers too, errors included.
    let json = "Content-Type: application/json";
    let from = format!("Origin: {origin}");
    let rsp = authed(&p, &["-H", &from, "-H", json, "-d", r#"{"name":"c"}"#], "/helloworld").status(200);
    assert_eq!(rsp.header("access-control-allow-origin"), Some(origin), "{rsp}");
    let rsp = curl(["-H", &from, "-H", json, "-d", "{}", &format!("{}/helloworld", p.api_url())]);
    assert_eq!(rsp.status, 401, "{rsp}");
    assert_eq!(rsp.header("access-control-allow-origin"), Some(origin), "{rsp}");
}

#[test]
fn openapi_describes_helloworld() {
    let p = Platform::with(&["helloworld"]);
    for rsp in [authed(&p, &[], "/openapi.json"), curl([format!("{}/openapi.json", p.api_url())])] {
        let doc = rsp.status(200).json();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc:#}");
        let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("no paths: {doc:#}"));
        let hello: Vec<&String> = paths.keys().filter(|k| k.starts_with("/helloworld")).collect();
        assert!(!hello.is_empty(), "no helloworld path in {:?}", paths.keys().collect::<Vec<_>>());
        let call = &paths.get("/helloworld/call").unwrap_or_else(|| panic!("{hello:?}"));
        assert!(call.get("post").is_some(), "{call:#}");
        assert!(paths.keys().any(|k| k.starts_with("/registry")), "core services are described too");
    }
    // Every helloworld path of the document answers (an empty request is valid for each).
    let doc = authed(&p, &[], "/openapi.json").json();
    for path in doc["paths"].as_object().unwrap().keys().filter(|k| k.starts_with("/helloworld")) {
        let rsp = authed(&p, &["-d", "{}"], path);
        assert_eq!(rsp.status, 200, "{path} from /openapi.json:\n{rsp}");
    }
}

#[test]
fn the_gateway_applies_namespaces_and_token_expiry() {
    let p = Platform::with(&["helloworld"]);
    let url = |path: &str| format!("{}{path}", p.api_url());
    p.micro(["auth", "create", "account", "tadmin", "--secret", "t-pw", "--scopes", "admin", "--namespace", "tenant"])
        .ok();
    let req = json!({"id": "tadmin", "secret": "t-pw", "options": {"namespace": "tenant"}}).to_string();
    let run = p.cli_in(&Dirs::new(), ["call", "auth", "Auth.Token", &req, "-o", "raw"]).run().ok();
    let tenant = run.json()["token"]["access_token"].as_str().expect("a token").to_string();

    // The token's issuer picks the namespace: tenant has no helloworld.
    let rsp = curl(["-H", &bearer(&tenant), "-d", "{}", &url("/helloworld")]);
    assert_error(&rsp, 404);
    // Asking for micro's explicitly is forbidden to an account of tenant.
    let rsp = curl(["-H", &bearer(&tenant), "-H", "Micro-Namespace: micro", "-d", "{}", &url("/helloworld")]);
    assert_error(&rsp, 403);
    let rsp = curl(["-H", &bearer(&tenant), "-H", "Micro-Namespace: micro", "-d", "{}", &url("/auth/accounts/list")]);
    assert_error(&rsp, 403);
    // Anonymous callers cannot read tenant's services.
    let rsp = curl(["-H", "Micro-Namespace: tenant", &url("/openapi.json")]);
    assert_error(&rsp, 401);
    // An account of tenant probing micro for a service that does not exist is refused, not told "not found".
    let rsp = curl(["-H", &bearer(&tenant), "-H", "Micro-Namespace: micro", "-d", "{}", &url("/nosuch")]);
    assert_error(&rsp, 403);
    // The micro admin may name any namespace.
    let rsp = authed(&p, &["-H", "Micro-Namespace: micro", "-d", r#"{"name":"ns"}"#], "/helloworld").status(200);
    assert_eq!(rsp.json()["msg"], "Hello ns");

    // An expired token is refused.
    let req = json!({"id": "admin", "secret": "micro", "token_expiry": 1}).to_string();
    let run = p.cli_in(&Dirs::new(), ["call", "auth", "Auth.Token", &req, "-o", "raw"]).run().ok();
    let token = run.json()["token"].clone();
    let expiry = int(&token["expiry"]);
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(expiry - now() < 5, "the wait below is bounded: {token}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while now() <= expiry {
        assert!(std::time::Instant::now() < deadline, "the clock did not pass {expiry}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rsp = curl(["-H", &bearer(token["access_token"].as_str().unwrap()), "-d", "{}", &url("/helloworld")]);
    let e = assert_error(&rsp, 401);
    assert!(e["detail"].as_str().unwrap().contains("expired"), "{e}");
}

#[test]
fn a_tenant_admin_reaches_core_services_through_the_gateway() {
    let p = Platform::start();
    p.micro(["auth", "create", "account", "tadmin", "--secret", "t-pw", "--scopes", "admin", "--namespace", "tenant"])
        .ok();
    let req = json!({"id": "tadmin", "secret": "t-pw", "options": {"namespace": "tenant"}}).to_string();
    let run = p.cli_in(&Dirs::new(), ["call", "auth", "Auth.Token", &req, "-o", "raw"]).run().ok();
    let tenant = run.json()["token"]["access_token"].as_str().expect("a token").to_string();
    // Through the proxy it works…
    let run =
        p.cli_in(&Dirs::new(), ["auth", "list", "accounts", "--namespace", "tenant"]).env("MICRO_AUTH_TOKEN", &tenant);
    assert!(run.run().ok().stdout.contains("tadmin"));
    // …and through the gateway it should too.
    let rsp = curl(["-H", &bearer(&tenant), "-d", "{}", &format!("{}/auth/accounts/list", p.api_url())]).status(200);
    let ids: Vec<Value> =
        rsp.json()["accounts"].as_array().expect("accounts").iter().map(|a| a["id"].clone()).collect();
    assert_eq!(ids, ["tadmin"], "{rsp}");
}
