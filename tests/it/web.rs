//! The web dashboard in a real browser: headless Chromium, driven over WebDriver (chromedriver and the `fantoccini`
//! client), against a real `micro server` and its dashboard (`--web-address`), as a person would use it: log in,
//! open a service, call it from its form, watch a stream and a log arrive, and be turned away from what an account
//! must not see.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`); `.ci/run`
//! installs them. Without them these tests are skipped, except in CI (`CI` set), where they fail.
//!
//! Every page a test visits is saved as a PNG in `target/web-screenshots/` (the target dir of the `micro` binary
//! under test), named `<test tag>-<page>.png`, at 1280×800 and, for the services list and a service's page, at a
//! phone's 390×844 too (`-phone`). A test that fails saves the page it was on as `<test tag>-failed.png`.
//!
//! Every wait polls the page for what it waits for, up to [`WAIT`]; nothing sleeps for a fixed time and assumes.

use crate::support::{self, ADMIN, Platform};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The longest a test waits for something to appear on a page.
const WAIT: Duration = Duration::from_secs(10);
/// The viewport of a desktop browser.
const DESKTOP: (u32, u32) = (1280, 800);
/// The viewport of a phone.
const PHONE: (u32, u32) = (390, 844);
/// The pages every logged-in user's `<nav>` links to (admins also get `/auth`).
const NAV: &[&str] = &["/services", "/runtime", "/store", "/config", "/events", "/registry"];
/// A service of the runtime that prints a numbered line every half second, and needs neither a build nor gRPC.
const TICKER: &str = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done";

/// One browser at a time: each test's Chromium gets the machine's cores for itself while the rest of the suite
/// runs, so that the waits of [`WAIT`] measure the dashboard and not a crowd of browsers.
static TURN: Mutex<()> = Mutex::new(());

#[test]
fn a_user_logs_in_opens_helloworld_and_calls_call_from_its_form() {
    if !browser_installed() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    let b = Browser::open(&p, "call");

    // An anonymous visitor is sent to the login form, and sees nothing else.
    b.goto("/services");
    b.wait_for("form#login");
    assert_eq!(b.location().path, "/login", "an anonymous /services did not end on the login page");
    assert_eq!(b.count("nav"), 0, "the login page of an anonymous visitor has a <nav>");
    let password = b.wait_for("form#login input[name='password']");
    assert_eq!(b.cmd("read the password input's type", password.attr("type")).as_deref(), Some("password"));
    b.shot("login");

    b.login(ADMIN.0, ADMIN.1);
    b.wait_path("/services");
    b.wait_for("table#services tr[data-service='helloworld']");
    b.shot("services");
    b.shot_phone("services");

    b.click("table#services tr[data-service='helloworld'] a[href='/services/helloworld']");
    b.wait_path("/services/helloworld");
    let call = "section.endpoint[data-endpoint='Helloworld.Call']";
    b.type_into(&format!("{call} form.call input[name='name']"), "Jane");
    b.click(&format!("{call} form.call button[type='submit']"));
    let answer = b.wait_text(&format!("{call} pre.answer"), "the answer says Hello Jane", |t| t.contains("Hello Jane"));
    let status = b.wait_text(&format!("{call} output.status"), "the status is OK", |t| t.trim().starts_with("OK"));
    let json: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("the answer of Helloworld.Call is not one JSON document ({e}):\n{answer}"));
    assert_eq!(json["msg"], "Hello Jane", "{answer}");
    assert_eq!(b.count(&format!("{call} p.error")), 0, "a successful call shows an error; status {status:?}");
    b.shot("service-helloworld");
    b.shot_phone("service-helloworld");
}

#[test]
fn a_server_stream_renders_its_messages_as_they_arrive() {
    if !browser_installed() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    let b = Browser::open(&p, "stream");
    b.goto("/login");
    b.login(ADMIN.0, ADMIN.1);
    b.wait_path("/services");

    b.goto("/services/helloworld");
    let stream = "section.endpoint[data-endpoint='Helloworld.Stream']";
    let count = b.wait_for(&format!("{stream} form.call input[name='count']"));
    assert_eq!(b.cmd("read the count input's type", count.attr("type")).as_deref(), Some("number"));
    b.type_into(&format!("{stream} form.call input[name='count']"), "3");
    b.click(&format!("{stream} form.call button[type='submit']"));

    // One JSON object per message, appended to the same answer: three of them, in order, not one array.
    let answer = format!("{stream} pre.answer");
    let counts = b.poll("the three messages of the stream are in the answer", WAIT, |b| {
        let text = b.text(&answer)?;
        let docs = json_docs(&text)?;
        let counts: Vec<i64> = docs.iter().map(|d| int(&d["count"])).collect::<Option<_>>()?;
        (counts.len() >= 3).then_some(counts)
    });
    assert_eq!(counts, [0, 1, 2], "the stream's messages: {:?}", b.text(&answer));
    b.wait_text(&format!("{stream} output.status"), "the stream's status is OK", |t| t.trim().starts_with("OK"));
    assert_eq!(b.count(&format!("{stream} p.error")), 0, "a successful stream shows an error");
    b.shot("service-helloworld-stream");
}

#[test]
fn the_logs_page_receives_a_new_line() {
    if !browser_installed() {
        return;
    }
    let p = Platform::start();
    let _ticker = run_ticker(&p);
    let b = Browser::open(&p, "logs");
    b.goto("/login");
    b.login(ADMIN.0, ADMIN.1);
    b.wait_path("/services");

    b.goto("/runtime");
    b.click("table#runtime tr[data-service='ticker'] a[href='/runtime/ticker']");
    b.wait_path("/runtime/ticker");
    // A mark on this page's window: gone if the page were loaded again, so the new lines below came over the
    // page's own event stream.
    b.js("window.microWebTest = 'this page'; return null;", vec![]);
    let (lines, first) = b.poll("a tick line in the logs", WAIT, |b| ticks(b).filter(|(_, last)| *last > 0));
    let (more, later) =
        b.poll("a newer tick line in the logs", WAIT, |b| ticks(b).filter(|(n, last)| *n > lines && *last > first));
    assert!(more > lines && later > first, "{more} lines (tick {later}) after {lines} (tick {first})");
    assert_eq!(
        b.js("return window.microWebTest || null;", vec![]),
        json!("this page"),
        "the logs page was loaded again instead of receiving the new line"
    );
    b.shot("runtime-ticker");
}

#[test]
fn anonymous_visitors_and_non_admins_cannot_reach_what_they_must_not() {
    if !browser_installed() {
        return;
    }
    let p = Platform::start();
    p.micro(["auth", "create", "account", "bob", "--secret", "bobsecret"]).ok();
    let b = Browser::open(&p, "access");

    // Anonymous: every page is the login form, which says where it came from.
    for page in ["/auth", "/runtime"] {
        b.goto(page);
        b.wait_for("form#login");
        let at = b.location();
        assert_eq!(at.path, "/login", "an anonymous {page} did not end on the login page");
        let next = at.param("next").unwrap_or_else(|| panic!("the login page for {page} has no `next`: {at:?}"));
        assert!(next.ends_with(page), "the login page for {page} goes next to {next:?}");
        assert_eq!(b.count("nav"), 0, "the login page for {page} has a <nav>");
        assert_eq!(b.count("table#accounts, table#runtime"), 0, "an anonymous {page} shows the page itself");
    }

    // A wrong password: the form again, with the error in it.
    b.goto("/login");
    b.login(ADMIN.0, "not-the-password");
    let error = b.wait_text("form#login p.error[role='alert']", "the login error", |t| !t.trim().is_empty());
    assert_eq!(b.location().path, "/login", "a failed login left the login page; error {error:?}");
    assert_eq!(b.count("nav"), 0, "a failed login shows a <nav>");
    b.shot("login-failed");

    // A non-admin: no Auth link, and /auth is refused with 403.
    b.login("bob", "bobsecret");
    b.wait_path("/services");
    b.wait_for("form#logout");
    let links = b.nav_links();
    for page in NAV {
        assert!(links.iter().any(|l| l == page), "bob's <nav> has no link to {page}: {links:?}");
    }
    assert!(!links.iter().any(|l| l == "/auth"), "bob's <nav> links to /auth: {links:?}");
    b.shot("services-non-admin");

    b.goto("/auth");
    let refused = b.wait_text("p.error[role='alert']", "the admins-only error", |t| !t.trim().is_empty());
    assert!(refused.to_lowercase().contains("admin"), "the error on /auth does not say admins only: {refused:?}");
    assert_eq!(b.response_status(), Some(403), "/auth for a non-admin; error {refused:?}");
    assert_eq!(b.count("table#accounts, table#rules"), 0, "/auth shows the accounts or rules to a non-admin");
    b.shot("auth-non-admin");

    // Logging out ends the session: /services is the login form again.
    b.click("form#logout button[type='submit']");
    b.poll("the logout has left the logged-in page", WAIT, |b| (b.count("form#logout") == 0).then_some(()));
    b.goto("/services");
    b.wait_for("form#login");
    assert_eq!(b.location().path, "/login", "/services after the logout is not the login page");
    assert_eq!(b.count("nav"), 0, "the login page after the logout has a <nav>");
    assert_eq!(b.count("table#services"), 0, "/services after the logout lists the services");
    b.shot("logged-out");
}

#[test]
fn every_page_renders_and_is_saved_as_a_screenshot() {
    if !browser_installed() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    let _ticker = run_ticker(&p);
    let b = Browser::open(&p, "page");

    b.goto("/login");
    b.wait_for("form#login");
    b.shot("login");
    b.login(ADMIN.0, ADMIN.1);
    b.wait_path("/services");

    // Each page: (path, screenshot name, the elements it must have, whether to shoot it at a phone's width too).
    let pages: &[(&str, &str, &[&str], bool)] = &[
        (
            "/services",
            "services",
            &["table#services tr[data-service='helloworld'] a[href='/services/helloworld']"],
            true,
        ),
        (
            "/services/helloworld",
            "service-helloworld",
            &[
                "section.endpoint[data-endpoint='Helloworld.Call'] form.call input[name='name']",
                "section.endpoint[data-endpoint='Helloworld.Call'] form.call button[type='submit']",
                "section.endpoint[data-endpoint='Helloworld.Stream'] form.call input[name='count'][type='number']",
                "section.endpoint[data-endpoint='Helloworld.PingPong']",
            ],
            true,
        ),
        ("/runtime", "runtime", &["table#runtime tr[data-service='ticker'] a[href='/runtime/ticker']"], false),
        ("/runtime/ticker", "runtime-ticker", &["pre#logs"], false),
        ("/store", "store", &["#store"], false),
        ("/config", "config", &["#config"], false),
        ("/events", "events", &["#events"], false),
        ("/registry", "registry", &["ol#registry-feed"], false),
        ("/auth", "auth", &["table#accounts", "table#rules"], false),
    ];
    for (path, name, elements, phone) in pages {
        b.goto(path);
        for element in *elements {
            b.wait_for(element);
        }
        assert_eq!(b.location().path, *path, "{path} went elsewhere");
        assert_eq!(b.response_status(), Some(200), "{path}");
        assert_eq!(b.count("form#logout button[type='submit']"), 1, "{path} has no logout button");
        let links = b.nav_links();
        for page in NAV.iter().chain(&["/auth"]) {
            assert!(links.iter().any(|l| l == page), "the admin's <nav> on {path} has no link to {page}: {links:?}");
        }
        b.shot(name);
        if *phone {
            b.shot_phone(name);
        }
    }
    // The admin's accounts table lists the admin.
    assert!(b.text("table#accounts").is_some_and(|t| t.contains(ADMIN.0)), "{:?}", b.text("table#accounts"));

    // The registry's feed gets an item when a service registers while the page is open.
    b.goto("/registry");
    b.wait_for("ol#registry-feed");
    let _echo = p.spawn_service("echo", &[]);
    let item = "the registration of echo in the registry's feed";
    b.poll(item, WAIT, |b| {
        let items =
            b.try_js("return Array.from(document.querySelectorAll('ol#registry-feed > li'), li => li.innerText);")?;
        items.as_array()?.iter().any(|i| i.as_str().is_some_and(|t| t.contains("echo"))).then_some(())
    });
    b.shot("registry-feed");
}

#[test]
fn actions_write_through_their_forms_and_errors_show_beside_them() {
    if !browser_installed() {
        return;
    }
    let p = Platform::with(&["helloworld"]);
    p.micro(["auth", "create", "account", "bob", "--secret", "bobsecret"]).ok();
    let b = Browser::open(&p, "actions");
    b.goto("/login");
    b.login(ADMIN.0, ADMIN.1);
    b.wait_path("/services");

    // A record written from the store's form is listed, and reads back.
    b.goto("/store");
    b.type_into("form[data-action='store-write'] input[name='key']", "greeting");
    b.type_into("form[data-action='store-write'] textarea[name='value']", "hello from the dashboard");
    b.click("form[data-action='store-write'] button[type='submit']");
    b.click("ul#store-keys a[href*='key=greeting']");
    let value = b.wait_text("section.record pre.answer", "the record's value", |t| !t.trim().is_empty());
    assert_eq!(value.trim(), "hello from the dashboard");
    assert_eq!(p.micro(["store", "read", "greeting"]).ok().stdout.trim(), "hello from the dashboard");
    b.shot("store-record");

    // A config value set from its form is listed (and a secret is masked).
    b.goto("/config");
    b.type_into("form[data-action='config-set'] input[name='path']", "db.password");
    b.type_into("form[data-action='config-set'] textarea[name='value']", "hunter2");
    b.click("form[data-action='config-set'] input[name='secret']");
    b.click("form[data-action='config-set'] button[type='submit']");
    let shown =
        b.wait_text("table#config-values tr[data-path='db.password'] td", "the secret's row", |t| !t.is_empty());
    assert!(!shown.contains("hunter2") && shown.contains("secret"), "the secret is shown as {shown:?}");
    b.shot("config-secret");

    // An events topic's tail receives an event published while the page is open.
    b.goto("/events?topic=orders");
    b.wait_text("#tail-status", "the tail is live", |t| t.contains("live"));
    p.micro(["events", "publish", "orders", r#"{"order":42}"#]).ok();
    b.wait_text("ol#events-feed li", "the published event in the tail", |t| t.contains("42"));
    b.shot("events-tail");

    // A bad value: the server's message beside the endpoint's form, and no OK.
    b.goto("/services/helloworld");
    let stream = "section.endpoint[data-endpoint='Helloworld.Stream']";
    b.click(&format!("{stream} fieldset.mode input[value='json']"));
    b.type_into(&format!("{stream} textarea.json"), r#"{"count": "lots"}"#);
    b.click(&format!("{stream} form.call button[type='submit']"));
    let error = b.wait_text(&format!("{stream} p.error[role='alert']"), "the bad value's error", |t| !t.is_empty());
    assert!(error.contains("count"), "the error does not name the field: {error:?}");
    let status = b.text(&format!("{stream} output.status")).unwrap_or_default();
    assert!(!status.starts_with("OK"), "a refused call says {status:?}");
    b.shot("service-bad-value");

    // "Copy as" gives the same call as a grpcurl command.
    let call = "section.endpoint[data-endpoint='Helloworld.Call']";
    b.type_into(&format!("{call} form.call input[name='name']"), "Jane");
    b.click(&format!("{call} details.copy summary"));
    b.click(&format!("{call} button[data-copy='grpcurl']"));
    let command = b.wait_text(&format!("{call} pre.command"), "the grpcurl command", |t| t.contains("grpcurl"));
    assert!(command.contains("helloworld.Helloworld/Call") && command.contains(r#"{"name":"Jane"}"#), "{command}");

    // A non-admin's denied write: the server's message in the form it came from.
    b.click("form#logout button[type='submit']");
    b.wait_for("form#login");
    b.login("bob", "bobsecret");
    b.wait_path("/services");
    b.goto("/config");
    b.type_into("form[data-action='config-set'] input[name='path']", "x");
    b.type_into("form[data-action='config-set'] textarea[name='value']", "1");
    b.click("form[data-action='config-set'] button[type='submit']");
    let denied =
        b.wait_text("form[data-action='config-set'] p.error[role='alert']", "the denied write", |t| !t.is_empty());
    assert!(denied.to_lowercase().contains("admin"), "the denial does not say why: {denied:?}");
    b.shot("config-denied");
}

/// Whether Chromium and chromedriver are installed; fails the test in CI when they are not.
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    let hint = format!(
        "{} missing: the web dashboard's browser tests need Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{hint} (CI runs every browser test)");
    }
    eprintln!("skipped: {hint}");
    false
}

/// Runs the [`TICKER`] as the runtime's service `ticker`, killed when the guard drops.
fn run_ticker(p: &Platform) -> Kill<'_> {
    let dir = p.path("ticker");
    std::fs::create_dir_all(&dir).expect("create the ticker's dir");
    p.micro(["run", "--command", TICKER, &dir.to_string_lossy()]).ok();
    Kill(p, "ticker")
}

/// Kills a service of the runtime when dropped, also when the test fails.
struct Kill<'a>(&'a Platform, &'static str);

impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.micro(["kill", self.1]);
    }
}

/// The number of lines in the logs page's `pre#logs`, and the highest tick among them (0 for none).
fn ticks(b: &Browser) -> Option<(usize, u64)> {
    let lines = b.try_js("return Array.from(document.querySelectorAll('pre#logs > div.line'), l => l.textContent);")?;
    let lines = lines.as_array()?;
    let last = lines
        .iter()
        .filter_map(|l| l.as_str())
        .filter_map(|l| l.split("tick ").nth(1))
        .filter_map(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Some((lines.len(), last))
}

/// A text of JSON documents one after another (one per line, or each pretty-printed); `None` if any is incomplete.
fn json_docs(text: &str) -> Option<Vec<Value>> {
    serde_json::Deserializer::from_str(text).into_iter::<Value>().collect::<Result<_, _>>().ok()
}

/// An integer in proto JSON: an int64 is a string (`"2"`), a smaller integer a number.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// Where the screenshots go: `web-screenshots/` in the target dir of the `micro` binary under test (beside its
/// profile's dir, so `CARGO_TARGET_DIR` is honoured).
fn screenshots_dir() -> PathBuf {
    let bin = support::micro_bin();
    let profile_dir = bin.parent().expect("the micro binary has a dir");
    profile_dir.parent().unwrap_or(profile_dir).join("web-screenshots")
}

/// A chromedriver on a port of 127.0.0.1, in its own process group: dropping it kills the group, so no Chromium
/// outlives a test.
struct Chromedriver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver, logging to `dir/chromedriver.log`, and waits until it is ready for sessions.
    fn start(dir: &Path) -> Chromedriver {
        let log = dir.join("chromedriver.log");
        // The port is free when picked, but another process may take it before chromedriver binds it: try again.
        for _ in 0..3 {
            let port = support::closed_port();
            let out = std::fs::File::create(&log).expect("create chromedriver's log");
            let mut cmd = Command::new(CHROMEDRIVER);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("chromedriver's log"))
                .stderr(out)
                .process_group(0);
            let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
            let mut driver = Chromedriver { child, url: format!("http://127.0.0.1:{port}"), log: log.clone() };
            let deadline = Instant::now() + support::DEADLINE;
            loop {
                if driver_ready(port) {
                    return driver;
                }
                if driver.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "chromedriver did not get ready in time:\n{}", driver.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("chromedriver exited before getting ready on port {port}:\n{}", driver.log());
        }
        panic!("chromedriver did not start (3 tries):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// What chromedriver logged.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (`process_group(0)`); Chromium runs in the same group.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the chromedriver on `port` answers `GET /status` with `"ready": true`.
fn driver_ready(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.replace(' ', "").contains("\"ready\":true")
}

/// Where the browser is: the path of its URL and the query's parameters (decoded).
#[derive(Debug)]
struct Location {
    path: String,
    query: Vec<(String, String)>,
}

impl Location {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A headless Chromium with a fresh profile, on the dashboard of a platform. Its methods are synchronous: each
/// runs its WebDriver commands on the browser's own runtime and fails the test, with where the page was, when one
/// fails.
struct Browser {
    /// The test's tag, the prefix of its screenshots' names.
    tag: &'static str,
    /// The dashboard's base URL, `http://127.0.0.1:PORT`.
    base: String,
    // Field order is drop order: the session closes (in `drop`), then the runtime stops, chromedriver and its
    // Chromium are killed, the profile is removed, and the next test's browser may start.
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _driver: Chromedriver,
    _dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a Chromium session on the dashboard of `p`, with a desktop's viewport.
    fn open(p: &Platform, tag: &'static str) -> Browser {
        let base = p.web_url();
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new().prefix("micro-it-web-").tempdir().expect("create a temp dir");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).expect("create Chromium's profile dir");
        let driver = Chromedriver::start(dir.path());
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            // Without these, Chromium reaches for Google's services, which this machine's closed network refuses.
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            &format!("--user-data-dir={}", profile.display()),
        ]
        .map(String::from);
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let capabilities = capabilities.as_object().cloned().expect("capabilities are an object");
        let runtime = support::runtime();
        // chromedriver listens on plain HTTP: no TLS in the client.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities);
        let session =
            runtime.block_on(async { tokio::time::timeout(support::DEADLINE, builder.connect(&driver.url)).await });
        let client = match session {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver could not start Chromium ({CHROMIUM}): {e}\n{}", driver.log()),
            Err(_) => panic!("chromedriver did not start Chromium within {:?}:\n{}", support::DEADLINE, driver.log()),
        };
        let browser = Browser { tag, base, client: Some(client), runtime, _driver: driver, _dir: dir, _turn: turn };
        browser.viewport(DESKTOP);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs a WebDriver command (at most [`support::DEADLINE`]), failing the test with `what` and where the page
    /// was when it fails.
    #[track_caller]
    fn cmd<T>(&self, what: &str, command: impl Future<Output = Result<T, CmdError>>) -> T {
        match self.runtime.block_on(async { tokio::time::timeout(support::DEADLINE, command).await }) {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("cannot {what}: {e}\n{}", self.context()),
            Err(_) => panic!("cannot {what}: chromedriver did not answer within {:?}", support::DEADLINE),
        }
    }

    /// Opens `path` of the dashboard and waits until it has loaded.
    #[track_caller]
    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.cmd(&format!("open {url}"), self.client().goto(&url));
    }

    /// Where the browser is now.
    #[track_caller]
    fn location(&self) -> Location {
        let url = self.cmd("read the current URL", self.client().current_url());
        Location {
            path: url.path().to_string(),
            query: url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
        }
    }

    /// Waits until the browser is at `path` (after a form's submission or a link's click).
    #[track_caller]
    fn wait_path(&self, path: &str) {
        self.poll(&format!("the browser is at {path}"), WAIT, |b| {
            let url = b.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), b.client().current_url()).await.ok()?.ok()
            })?;
            (url.path() == path).then_some(())
        });
    }

    /// Runs `script` in the page and returns its value.
    #[track_caller]
    fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd("run a script in the page", self.client().execute(script, args))
    }

    /// Runs `script` in the page; `None` when it fails (e.g. while the page is being replaced).
    fn try_js(&self, script: &str) -> Option<Value> {
        self.runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), self.client().execute(script, vec![])).await
            })
            .ok()?
            .ok()
    }

    /// How many elements match `css` now.
    #[track_caller]
    fn count(&self, css: &str) -> usize {
        let n = self.js("return document.querySelectorAll(arguments[0]).length;", vec![json!(css)]);
        n.as_u64().unwrap_or_else(|| panic!("querySelectorAll({css:?}).length is {n}")) as usize
    }

    /// The rendered text of the first element that matches `css` now, if there is one.
    fn text(&self, css: &str) -> Option<String> {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        let value = self
            .runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), self.client().execute(script, vec![json!(css)])).await
            })
            .ok()?
            .ok()?;
        value.as_str().map(str::to_string)
    }

    /// Polls `ready` every 100 ms until it gives a value, failing the test after `limit`.
    #[track_caller]
    fn poll<T>(&self, what: &str, limit: Duration, mut ready: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = ready(self) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {limit:?} waiting until {what}\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until an element matches `css`, and returns it.
    #[track_caller]
    fn wait_for(&self, css: &str) -> Element {
        let found =
            self.runtime.block_on(async { self.client().wait().at_most(WAIT).for_element(Locator::Css(css)).await });
        found.unwrap_or_else(|e| panic!("no element {css} within {WAIT:?} ({e})\n{}", self.context()))
    }

    /// Waits until the text of the element that matches `css` passes `ready`, and returns it.
    #[track_caller]
    fn wait_text(&self, css: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        self.poll(&format!("{what} ({css})"), WAIT, |b| b.text(css).filter(|t| ready(t)))
    }

    /// Clears the input that matches `css` and types `text` into it, as a person would.
    #[track_caller]
    fn type_into(&self, css: &str, text: &str) {
        let input = self.wait_for(css);
        self.cmd(&format!("clear {css}"), input.clear());
        self.cmd(&format!("type into {css}"), input.send_keys(text));
    }

    /// Clicks the element that matches `css`.
    #[track_caller]
    fn click(&self, css: &str) {
        let element = self.wait_for(css);
        self.cmd(&format!("click {css}"), element.click());
    }

    /// Fills the login form on the page and submits it.
    #[track_caller]
    fn login(&self, username: &str, password: &str) {
        self.type_into("form#login input[name='username']", username);
        self.type_into("form#login input[name='password']", password);
        self.click("form#login button[type='submit']");
    }

    /// The paths the page's `<nav>` links to.
    #[track_caller]
    fn nav_links(&self) -> Vec<String> {
        let links = self.js(
            "return Array.from(document.querySelectorAll('nav a[href]'), a => new URL(a.href, location.href).pathname);",
            vec![],
        );
        links.as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_string)).collect()
    }

    /// The HTTP status of the page's own response (Chromium's navigation timing).
    #[track_caller]
    fn response_status(&self) -> Option<u64> {
        let script = "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : null;";
        self.js(script, vec![]).as_u64()
    }

    /// Sets the window so that the page's viewport is `width`×`height` (the window's frame takes some of it).
    #[track_caller]
    fn viewport(&self, (width, height): (u32, u32)) {
        let (mut outer_w, mut outer_h) = (width, height);
        for _ in 0..4 {
            self.cmd("resize the window", self.client().set_window_size(outer_w, outer_h));
            let inner = self.js("return [window.innerWidth, window.innerHeight];", vec![]);
            let (w, h) = (inner[0].as_i64().unwrap_or(0), inner[1].as_i64().unwrap_or(0));
            if (w, h) == (i64::from(width), i64::from(height)) {
                return;
            }
            outer_w = (i64::from(outer_w) + i64::from(width) - w).max(1) as u32;
            outer_h = (i64::from(outer_h) + i64::from(height) - h).max(1) as u32;
        }
        eprintln!("note: the viewport is not {width}×{height} after resizing the window");
    }

    /// Saves a screenshot of the page as `<tag>-<name>.png`.
    #[track_caller]
    fn shot(&self, name: &str) {
        let png = self.cmd(&format!("take the screenshot {name}"), self.client().screenshot());
        assert!(png.starts_with(b"\x89PNG"), "the screenshot {name} is not a PNG");
        save_png(&format!("{}-{name}", self.tag), &png);
    }

    /// Saves a screenshot of the page at a phone's width as `<tag>-<name>-phone.png`, then goes back to the
    /// desktop's viewport.
    #[track_caller]
    fn shot_phone(&self, name: &str) {
        self.viewport(PHONE);
        self.shot(&format!("{name}-phone"));
        self.viewport(DESKTOP);
    }

    /// Where the page is and what it says, for a failure's message (never fails itself).
    fn context(&self) -> String {
        let Some(client) = &self.client else { return String::new() };
        let url = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), client.current_url()).await })
            .ok()
            .and_then(Result::ok)
            .map_or_else(|| "?".to_string(), |u| u.to_string());
        let mut text = self
            .try_js("return document.body ? document.body.innerText : document.documentElement.outerHTML;")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if text.len() > 2000 {
            let mut end = 2000;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" […]");
        }
        format!("--- the browser is at {url}; the page says ---\n{text}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        if std::thread::panicking() {
            let png = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), client.screenshot()).await });
            if let Ok(Ok(png)) = png {
                let path = save_png(&format!("{}-failed", self.tag), &png);
                eprintln!("the page when the test failed: {}", path.display());
            }
        }
        let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
    }
}

/// Writes `png` to `<screenshots>/<name>.png` (through a temporary file renamed into place) and returns the path.
fn save_png(name: &str, png: &[u8]) -> PathBuf {
    let dir = screenshots_dir();
    let path = dir.join(format!("{name}.png"));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(path.with_extension("png.tmp"), png))
        .and_then(|()| std::fs::rename(path.with_extension("png.tmp"), &path));
    if let Err(e) = saved {
        eprintln!("cannot save the screenshot {}: {e}", path.display());
    }
    path
}
