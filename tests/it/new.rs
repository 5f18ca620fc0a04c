//! `micro new`: a scaffolded service builds, runs and answers.
//!
//! The build tests compile the new package with cargo into the target dir of the `micro` under test, so that the
//! crates micro was built with are reused. The first build compiles the service library once more, from the copy
//! `micro new` laid out (in [`library_dir`], shared by every test): cargo hashes a path dependency by its absolute
//! path. Every new package shares that build, so later builds compile only the new package.

use crate::support::{Cli, DEADLINE, Dirs, Platform, library_dir, micro_bin, snapshot_settings};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a cargo build of a new service may take (the first one compiles the `micro` library).
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// The files `micro new NAME` writes, in order.
fn expected_files(name: &str) -> Vec<String> {
    ["Cargo.toml", "Cargo.lock", "build.rs", &format!("proto/{name}.proto"), "src/main.rs", "src/handler.rs"]
        .into_iter()
        .chain(["README.md", ".gitignore"])
        .map(String::from)
        .collect()
}

/// `micro ARGS` without a server (`micro new` needs none).
fn micro(dirs: &Dirs, args: &[&str]) -> crate::support::Run {
    Cli::new("127.0.0.1:1", dirs, args).run()
}

/// The target dir and profile directory name (`debug`, `release`…) of the `micro` under test.
fn target() -> (PathBuf, String) {
    let bin_dir = micro_bin().parent().expect("the micro binary has a dir").to_path_buf();
    let profile = bin_dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_string();
    (bin_dir.parent().expect("the bin dir has a parent").to_path_buf(), profile)
}

/// The cargo profile name of a profile directory.
fn cargo_profile(dir: &str) -> &str {
    if dir == "debug" { "dev" } else { dir }
}

/// A child process killed and reaped on drop.
struct Guard(Child, PathBuf);

impl Guard {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion within `deadline`, with stdout and stderr in files next to `log`; returns
/// (exit code, stdout, stderr).
fn run_bounded(mut cmd: Command, log: &Path, deadline: Duration) -> (i32, String, String) {
    let out_path = log.with_extension("out");
    let out = std::fs::File::create(&out_path).expect("create a stdout file");
    let err = std::fs::File::create(log).expect("create a stderr file");
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("spawn");
    let mut guard = Guard(child, log.to_path_buf());
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < end, "{cmd:?} did not finish within {deadline:?}:\n{}", guard.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    (status.code().unwrap_or(-1), stdout, guard.log())
}

/// `cargo build --offline` of the package in `dir`, into the target dir of the `micro` under test; returns the
/// path of its binary `name`.
fn cargo_build(dir: &Path, name: &str) -> PathBuf {
    let (target_dir, profile) = target();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(dir)
        .args(["build", "--offline", "--color", "never", "--profile", cargo_profile(&profile)])
        .env("CARGO_TARGET_DIR", &target_dir);
    let started = Instant::now();
    let (code, _, stderr) = run_bounded(cmd, &dir.with_extension("build.log"), BUILD_DEADLINE);
    assert_eq!(code, 0, "cargo build of {} failed:\n{stderr}", dir.display());
    eprintln!("built {name} in {:?}", started.elapsed());
    // The package's own code compiles without warnings, and cargo has nothing to say about its manifest or its
    // workspace (micro's own warnings, if any, are for micro's CI to catch).
    assert!(!stderr.contains(&format!("warning: `{name}`")), "{name} has warnings:\n{stderr}");
    assert!(!stderr.contains("manifest") && !stderr.contains("workspace"), "cargo warned building {name}:\n{stderr}");
    target_dir.join(&profile).join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Starts the service binary `bin` against the platform and waits until `name` is registered.
fn spawn_service(p: &Platform, bin: &Path, name: &str) -> Guard {
    let log = p.path(&format!("{name}.log"));
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MICRO_") || k == "RUST_LOG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", p.path("home")).env("MICRO_PROXY", &p.addr).env("MICRO_LOG_LEVEL", "info");
    let err = std::fs::File::create(&log).expect("create a log file");
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().expect("start the service");
    let mut guard = Guard(child, log);
    let end = Instant::now() + DEADLINE;
    while !p.service_names().iter().any(|s| s == name) {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            panic!("{name} exited ({status}) before registering:\n{}", guard.log());
        }
        assert!(Instant::now() < end, "{name} did not register in time:\n{}", guard.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// Asserts that the service `name` answers its three endpoints through the CLI.
fn assert_answers(p: &Platform, name: &str) {
    let call = p.micro([name, "call", "--name=Ann"]).ok();
    assert_eq!(call.stdout, "{\n\t\"msg\": \"Hello Ann\"\n}\n", "{}", call.snapshot());
    let stream = p.micro([name, "stream", "--count=3"]).ok();
    let docs = stream.json_docs();
    assert_eq!(docs.len(), 3, "{}", stream.snapshot());
    assert_eq!(docs[2]["count"].to_string().trim_matches('"'), "2", "{}", stream.snapshot());
    // The proto's comments are the help text.
    let help = p.micro([name, "--help"]).ok();
    assert!(help.stdout.contains("Call answers with a greeting"), "{}", help.snapshot());
}

#[test]
fn prints_the_tree_and_writes_the_files() {
    let _s = snapshot_settings().bind_to_scope();
    let dirs = Dirs::new();
    let dir = dirs.path().join("greeter");
    let run = micro(&dirs, &["new", &dir.to_string_lossy()]).ok();
    insta::assert_snapshot!("new_greeter", run.snapshot());
    for file in expected_files("greeter") {
        assert!(dir.join(&file).is_file(), "{file} is missing");
    }
    let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let library = laid_out_library(&dir);
    assert!(library.join("crates/micro/src/lib.rs").is_file(), "{toml}");
    assert!(toml.contains("\n[workspace]\n"), "{toml}");
    assert!(!toml.contains(".workspace"), "{toml}");
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(main.contains("micro::Service::new(\"greeter\")"), "{main}");
    assert_eq!(std::fs::read_to_string(dir.join(".gitignore")).unwrap(), "/target\n");
}

/// The library the package in `package` depends on: `micro = { path = "<library_dir>/<version>-<id>/crates/micro" }`
/// in its Cargo.toml, checked to be one `micro new` laid out in [`library_dir`] (for the version under test).
fn laid_out_library(package: &Path) -> PathBuf {
    let toml = std::fs::read_to_string(package.join("Cargo.toml")).unwrap();
    let line = toml.lines().find(|l| l.starts_with("micro = { path = \"")).expect("a path dependency on micro");
    let path = line.trim_start_matches("micro = { path = \"").trim_end_matches("\" }");
    let library = Path::new(path).parent().and_then(Path::parent).expect("…/crates/micro").to_path_buf();
    assert!(path.ends_with("/crates/micro"), "{line}");
    assert_eq!(library.parent(), Some(library_dir().as_path()), "{line}");
    let name = library.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))), "{name}");
    assert!(library.join(".micro-library").is_file(), "{} is not complete", library.display());
    library
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

/// A generated service depends on nothing in micro's checkout: neither the package nor the library it depends on
/// names the checkout, and cargo finds every path package of its graph in the package or the laid-out library. So
/// it builds (see `new_service_builds_offline_and_answers`) after the checkout moves or is deleted.
#[test]
fn a_new_service_does_not_depend_on_the_checkout() {
    let dirs = Dirs::new();
    let dir = dirs.path().join("greeter");
    micro(&dirs, &["new", &dir.to_string_lossy()]).ok();
    let library = laid_out_library(&dir);
    let checkout = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap().to_string_lossy().into_owned();
    // (The tests lay the library out in the checkout's target dir, so look for the checkout's sources.)
    let sources = [format!("{checkout}/crates"), format!("{checkout}/proto"), format!("\"{checkout}\"")];
    for file in files_under(&dir).into_iter().chain(files_under(&library)) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for source in &sources {
            assert!(!text.contains(source.as_str()), "{} names the checkout: {source}", file.display());
        }
    }
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let local: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"].is_null())
        .map(|p| p["manifest_path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(local.len(), 4, "greeter, micro, micro-client, micro-core: {local:?}");
    let library = library.to_string_lossy().into_owned();
    for manifest in &local {
        assert!(manifest.starts_with(&*dir.to_string_lossy()) || manifest.starts_with(&library), "{manifest}");
    }
}

#[test]
fn dashed_names_and_json_output() {
    let dirs = Dirs::new();
    let dir = dirs.path().join("svc").join("foo-bar");
    let run = micro(&dirs, &["new", &dir.to_string_lossy(), "-o", "json"]).ok();
    assert_eq!(
        run.json(),
        json!({"name": "foo-bar", "path": dir.to_string_lossy(), "files": expected_files("foo-bar")}),
        "{}",
        run.snapshot()
    );
    assert_eq!(run.stderr, "");
    let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(toml.contains("name = \"foo-bar\""), "{toml}");
    let proto = std::fs::read_to_string(dir.join("proto/foo-bar.proto")).unwrap();
    assert!(proto.contains("package foobar;") && proto.contains("service FooBar {"), "{proto}");
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(main.contains("micro::Service::new(\"foo-bar\")"), "{main}");
    assert!(main.contains("use pb::foo_bar_server::FooBarServer;"), "{main}");
    let build = std::fs::read_to_string(dir.join("build.rs")).unwrap();
    assert!(build.contains(".open_files([\"foo-bar.proto\"])?"), "{build}");
    let handler = std::fs::read_to_string(dir.join("src/handler.rs")).unwrap();
    assert!(handler.contains("impl crate::pb::foo_bar_server::FooBar for Handler {"), "{handler}");
}

#[test]
fn refuses_an_existing_directory() {
    let dirs = Dirs::new();
    let dir = dirs.path().join("greeter");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine.txt"), "keep me").unwrap();
    let path = dir.to_string_lossy().into_owned();
    let run = micro(&dirs, &["new", &path]).code(1);
    assert_eq!(run.stderr, format!("{path} already exists\n"));
    assert_eq!(run.stdout, "");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["mine.txt"]);
    assert_eq!(std::fs::read_to_string(dir.join("mine.txt")).unwrap(), "keep me");
}

#[test]
fn refuses_invalid_names() {
    let _s = snapshot_settings().bind_to_scope();
    let dirs = Dirs::new();
    for (name, why) in [
        ("Greeter", "'G' is not allowed"),
        ("2fast", "it must start with a letter"),
        ("my.svc", "'.' is not allowed"),
        ("micro", "the new service depends on a crate of that name"),
        ("fn", "it is reserved by Rust or cargo"),
        ("store", "`micro store` is a built-in command"),
        ("registry", "a core service of the micro server has that name"),
    ] {
        let path = dirs.path().join(name);
        let run = micro(&dirs, &["new", &path.to_string_lossy()]).code(128);
        assert!(run.stderr.starts_with(&format!("Invalid service name {name:?}: {why}")), "{}", run.snapshot());
        assert!(!path.exists(), "{name} was created");
    }
    let run = micro(&dirs, &["new", "Greeter"]).code(128);
    insta::assert_snapshot!("new_invalid_name", run.snapshot());
    let run = micro(&dirs, &["new", &format!("{}/..", dirs.path().display())]).code(128);
    assert!(run.stderr.contains("NAME must end with the new directory's name"), "{}", run.snapshot());
    let run = micro(&dirs, &["new"]).code(128);
    assert!(run.stderr.contains("<NAME>"), "{}", run.snapshot());
}

#[test]
fn refuses_a_bad_micro_path() {
    let dirs = Dirs::new();
    let dir = dirs.path().join("greeter");
    let run = micro(&dirs, &["new", &dir.to_string_lossy(), "--micro-path", &dirs.path().to_string_lossy()]).code(128);
    assert!(run.stderr.contains("is not a checkout of micro"), "{}", run.snapshot());
    assert!(!dir.exists());
    let run = Cli::new("127.0.0.1:1", &dirs, ["new", &dir.to_string_lossy()])
        .env("MICRO_SOURCE", &dirs.path().join("nope").to_string_lossy())
        .run()
        .code(128);
    assert!(run.stderr.contains("MICRO_SOURCE"), "{}", run.snapshot());
    assert!(!dir.exists());
}

/// The scaffold builds offline (with the copied Cargo.lock), registers and answers: `micro foo-bar call`.
#[test]
fn new_service_builds_offline_and_answers() {
    let p = Platform::start();
    let dir = p.path("foo-bar");
    p.micro(["new", &dir.to_string_lossy()]).ok();
    let bin = cargo_build(&dir, "foo-bar");
    let _service = spawn_service(&p, &bin, "foo-bar");
    assert_answers(&p, "foo-bar");
}

/// `micro new greeter` then `micro run ./greeter`: the runtime builds it and the service answers.
#[test]
fn new_then_micro_run() {
    let (target_dir, profile) = target();
    let target_dir = target_dir.to_string_lossy().into_owned();
    let p = Platform::start_env(&[
        ("MICRO_RUNTIME_CARGO_PROFILE", cargo_profile(&profile)),
        ("MICRO_RUNTIME_TARGET_DIR", &target_dir),
        ("MICRO_BUILD_DIR", &target_dir),
    ]);
    let dir = p.path("greeter");
    p.micro(["new", &dir.to_string_lossy()]).ok();
    // `micro run` waits for the build, which may take longer than the harness's deadline for one CLI run.
    let mut cmd = Command::new(micro_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MICRO_") || k == "RUST_LOG") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("run")
        .arg(&dir)
        .env("HOME", p.path("home"))
        .env("MICRO_CONFIG_DIR", p.path("config"))
        .env("MICRO_CACHE_DIR", p.path("cache"))
        .env("MICRO_PROXY", &p.addr);
    let (code, stdout, stderr) = run_bounded(cmd, &p.path("run.log"), BUILD_DEADLINE);
    assert_eq!(code, 0, "micro run failed:\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    p.wait_until("greeter is registered", |p| p.service_names().iter().any(|s| s == "greeter"));
    assert_answers(&p, "greeter");
}

/// `micro new NAME --build` builds the new package as the runtime will (its profile, the shared build dir), so that
/// the first `micro run` finds its dependencies compiled: the binary is there, and the command says how long it took.
#[test]
fn new_with_build_compiles_the_service() {
    let (target_dir, profile) = target();
    let dirs = Dirs::new();
    let dir = dirs.path().join("built");
    // A build may take longer than the harness's deadline for one CLI run.
    let mut cmd = Command::new(micro_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("MICRO_") || k == "RUST_LOG") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["new", &dir.to_string_lossy(), "--build"])
        .env("HOME", dirs.path().join("home"))
        .env("MICRO_CONFIG_DIR", dirs.path().join("config"))
        .env("MICRO_CACHE_DIR", dirs.path().join("cache"))
        .env("MICRO_LIBRARY_DIR", library_dir())
        .env("MICRO_RUNTIME_CARGO_PROFILE", cargo_profile(&profile))
        .env("MICRO_BUILD_DIR", &target_dir);
    let (code, stdout, stderr) = run_bounded(cmd, &dirs.path().join("build.log"), BUILD_DEADLINE);
    let shown = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert_eq!(code, 0, "{shown}");
    assert!(stdout.starts_with("Creating service built"), "{shown}");
    assert!(stderr.contains("Building built with cargo (profile"), "{shown}");
    assert!(stderr.contains("Built built in "), "{shown}");
    let bin = dir.join("target").join(&profile).join(format!("built{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} is missing:\n{shown}", bin.display());
}
