//! `micro new NAME`: scaffold a new Rust service, ready for `micro run`.
//!
//! The new package (in directory NAME; the service is named after its last component) holds a proto with Micro's
//! template endpoints (`Call`, `Stream`, `PingPong`), a `build.rs` that compiles it with protox, a handler, a
//! `main.rs` that runs it as a [`micro::Service`], a README and a `.gitignore`. It depends on the service library
//! `micro` by an absolute path: the library embedded in this binary, laid out once per version under the user's
//! data dir ([`library`]), so the package builds wherever it is and whether or not a checkout of micro exists; or,
//! for developing micro itself, the `crates/micro` of a checkout (`--micro-path`, or [`MICRO_SOURCE`]). The
//! package is a workspace of its own and pins the dependency versions micro uses; micro's `Cargo.lock` is copied
//! in, so the package builds offline from the crates micro itself was built with.
//!
//! Like Micro, it prints `Creating service NAME`, the tree of files and the next steps (to stdout: they are the
//! command's output); with `-o json` it prints `{name, path, files}` instead. A name that is not a valid service
//! and package name is invalid input (exit 128); an existing NAME is refused (exit 1), and nothing is written.

use super::output::Printer;
use crate::exit::CliError;
use crate::settings::{Output, Settings};
use micro_core::env::MICRO_SOURCE;
use serde_json::json;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Flags of `micro new`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro new greeter\n  \
    micro new services/foo-bar --build\n  \
    micro new greeter && micro run ./greeter")]
pub struct Args {
    /// The directory to create; its last component is the service's name (lower case letters, digits, `-` and
    /// `_`, starting with a letter), e.g. `greeter` or `services/foo-bar`.
    #[arg(value_name = "NAME")]
    pub name: PathBuf,
    /// A checkout of micro whose service library (`crates/micro`) the service depends on, instead of the library
    /// embedded in this `micro` (for developing micro itself).
    #[arg(long, value_name = "DIR", env = MICRO_SOURCE)]
    pub micro_path: Option<PathBuf>,
    /// Build the new service now, as `micro run` will (same profile, and micro's build dir shared by every
    /// service), so that its dependencies are compiled before the first `micro run`. `./install.sh` does this once.
    #[arg(long)]
    pub build: bool,
}

mod library;

/// The template files, embedded in the binary.
mod template {
    pub const CARGO_TOML: &str = include_str!("new/template/Cargo.toml.tmpl");
    pub const BUILD_RS: &str = include_str!("new/template/build.rs.tmpl");
    pub const PROTO: &str = include_str!("new/template/service.proto.tmpl");
    pub const MAIN_RS: &str = include_str!("new/template/main.rs.tmpl");
    pub const HANDLER_RS: &str = include_str!("new/template/handler.rs.tmpl");
    pub const README_MD: &str = include_str!("new/template/README.md.tmpl");
    pub const GITIGNORE: &str = include_str!("new/template/gitignore.tmpl");
}

/// The messages of the template proto: a service may not share a name with one of them.
const MESSAGES: &[&str] = &["Message", "Request", "Response", "StreamingRequest", "StreamingResponse", "Ping", "Pong"];

/// Crates the new package depends on: its name may not be one of them.
const DEPENDENCIES: &[&str] =
    &["micro", "prost", "tokio", "tokio-stream", "tonic", "tonic-prost", "tracing", "protox", "tonic-prost-build"];

/// Names cargo refuses for a package (besides Rust keywords), or that clash with the standard library.
const CARGO_RESERVED: &[&str] =
    &["test", "std", "core", "alloc", "proc_macro", "proc-macro", "build", "deps", "examples", "incremental"];

/// Core services of the micro server that are not CLI commands: their names are taken in the registry.
const CORE_SERVICES: &[&str] = micro_server::CORE_NAMES;

/// Rust keywords (strict and reserved, all editions): cargo refuses them as package names.
const RUST_KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for", "if", "impl", "in",
    "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "async", "await", "dyn", "abstract", "become", "box", "do",
    "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// The names of one new service, as each place spells them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The service's registry name, the package's and the binary's: `foo-bar`.
    pub name: String,
    /// The Rust crate name: `foo_bar`.
    pub krate: String,
    /// The proto package: the name without `-`, `foobar`.
    pub package: String,
    /// The proto service: each word capitalized, separators dropped, `FooBar`.
    pub service: String,
    /// The Rust name tonic gives the service trait (prost's upper camel case of [`Names::service`]).
    pub service_rs: String,
    /// The module tonic generates the server in: `foo_bar_server`.
    pub server_mod: String,
}

impl Names {
    /// Checks `name` and derives every spelling from it.
    pub fn new(name: &str) -> Result<Names, CliError> {
        validate(name)?;
        let service: String = name.split(['-', '_']).map(capitalize).collect();
        let service_rs = upper_camel(&service);
        let server_mod = format!("{}_server", naive_snake_case(&service_rs));
        Ok(Names {
            name: name.to_string(),
            krate: name.replace('-', "_"),
            package: name.replace('-', ""),
            service,
            service_rs,
            server_mod,
        })
    }
}

/// Why `name` cannot name a service, if it cannot.
fn validate(name: &str) -> Result<(), CliError> {
    let invalid = |why: String| {
        CliError::input(format!("Invalid service name {name:?}: {why}. Pick another name, e.g. `micro new greeter`"))
    };
    if name.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        return Err(invalid(format!(
            "{c:?} is not allowed; use lower case letters, digits, `-` and `_` (the name is a cargo package name, a \
             registry name and a command of the micro CLI)"
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("it must start with a letter".into()));
    }
    if name.ends_with(['-', '_']) {
        return Err(invalid("it must end with a letter or a digit".into()));
    }
    if name.contains("--") || name.contains("__") || name.contains("-_") || name.contains("_-") {
        return Err(invalid("separators (`-`, `_`) may not follow each other".into()));
    }
    let krate = name.replace('-', "_");
    if RUST_KEYWORDS.contains(&krate.as_str()) || CARGO_RESERVED.contains(&name) {
        return Err(invalid("it is reserved by Rust or cargo".into()));
    }
    if DEPENDENCIES.iter().any(|d| d.replace('-', "_") == krate) {
        return Err(invalid("the new service depends on a crate of that name".into()));
    }
    if is_builtin_command(name) {
        return Err(invalid(format!(
            "`micro {name}` is a built-in command, so the service could not be called by its name"
        )));
    }
    if CORE_SERVICES.contains(&name) {
        return Err(invalid("a core service of the micro server has that name".into()));
    }
    let service: String = name.split(['-', '_']).map(capitalize).collect();
    if MESSAGES.contains(&service.as_str()) {
        return Err(invalid(format!("its proto service `{service}` would clash with the message of that name")));
    }
    Ok(())
}

/// Whether `name` is a built-in command (or an alias of one) of the micro CLI.
fn is_builtin_command(name: &str) -> bool {
    super::command().get_subcommands().any(|c| c.get_name() == name || c.get_all_aliases().any(|a| a == name))
        || name == "help"
}

/// `foo` → `Foo`.
fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// prost's name for a proto service: heck's upper camel case (words split at case changes, each word capitalized
/// and the rest lower-cased), for the ASCII letters and digits of a service name.
fn upper_camel(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    // The case of the last cased character of the current word: None, Some(false) lower, Some(true) upper.
    let mut mode: Option<bool> = None;
    for (i, &c) in chars.iter().enumerate() {
        let Some(&next) = chars.get(i + 1) else {
            word.push(c);
            break;
        };
        let next_mode = if c.is_ascii_lowercase() {
            Some(false)
        } else if c.is_ascii_uppercase() {
            Some(true)
        } else {
            mode
        };
        if next_mode == Some(false) && next.is_ascii_uppercase() {
            word.push(c);
            words.push(std::mem::take(&mut word));
            mode = None;
        } else if mode == Some(true) && c.is_ascii_uppercase() && next.is_ascii_lowercase() {
            words.push(std::mem::take(&mut word));
            word.push(c);
            mode = None;
        } else {
            word.push(c);
            mode = next_mode;
        }
    }
    words.push(word);
    words.iter().filter(|w| !w.is_empty()).map(|w| capitalize(&w.to_ascii_lowercase())).collect()
}

/// tonic's module name for a service: `FooBar` → `foo_bar`.
fn naive_snake_case(name: &str) -> String {
    let mut s = String::new();
    let mut it = name.chars().peekable();
    while let Some(c) = it.next() {
        s.push(c.to_ascii_lowercase());
        if it.peek().is_some_and(|n| n.is_ascii_uppercase()) {
            s.push('_');
        }
    }
    s
}

/// Whether `dir` is a checkout of micro: its `crates/micro/Cargo.toml` is the manifest of the package `micro`.
fn is_micro_source(dir: &Path) -> bool {
    let Ok(manifest) = std::fs::read_to_string(dir.join("crates/micro/Cargo.toml")) else { return false };
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return value.trim() == "\"micro\"";
        }
    }
    false
}

/// The service library to depend on, and the `Cargo.lock` to start from: the `crates/micro` of the checkout
/// `given` (`--micro-path`/`MICRO_SOURCE`), else the embedded library, laid out under the user's data dir.
fn micro_library(given: Option<&Path>) -> Result<(PathBuf, Option<String>), CliError> {
    let Some(dir) = given else {
        let root = library::lay_out(&library::base_dir()?)?;
        return Ok((root.join("crates/micro"), library::lock()));
    };
    let absolute = std::fs::canonicalize(dir)
        .map_err(|e| CliError::input(format!("--micro-path (or {MICRO_SOURCE}) {}: {e}", dir.display())))?;
    if !is_micro_source(&absolute) {
        return Err(CliError::input(format!(
            "--micro-path (or {MICRO_SOURCE}) {} is not a checkout of micro: it has no crates/micro/Cargo.toml of the \
             package `micro`. Pass the directory of a checkout of micro, or leave it out to use the library built \
             into this micro",
            dir.display()
        )));
    }
    let lock = std::fs::read_to_string(absolute.join("Cargo.lock")).ok();
    Ok((absolute.join("crates/micro"), lock))
}

/// `s` as the content of a TOML basic string.
fn toml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{key}}` placeholders.
fn render(template: &str, names: &Names, micro_path: &str) -> String {
    template
        .replace("{{name}}", &names.name)
        .replace("{{crate}}", &names.krate)
        .replace("{{package}}", &names.package)
        .replace("{{service_rs}}", &names.service_rs)
        .replace("{{service}}", &names.service)
        .replace("{{server_mod}}", &names.server_mod)
        .replace("{{micro_path}}", micro_path)
}

/// The files of a new service, relative to its directory, with their contents.
pub fn files(names: &Names, micro_path: &Path, lock: Option<String>) -> Vec<(String, String)> {
    let micro_path = toml_escape(&micro_path.to_string_lossy());
    let r = |t: &str| render(t, names, &micro_path);
    let mut files = vec![("Cargo.toml".to_string(), r(template::CARGO_TOML))];
    if let Some(lock) = lock {
        files.push(("Cargo.lock".to_string(), lock));
    }
    files.extend([
        ("build.rs".to_string(), r(template::BUILD_RS)),
        (format!("proto/{}.proto", names.name), r(template::PROTO)),
        ("src/main.rs".to_string(), r(template::MAIN_RS)),
        ("src/handler.rs".to_string(), r(template::HANDLER_RS)),
        ("README.md".to_string(), r(template::README_MD)),
        (".gitignore".to_string(), r(template::GITIGNORE)),
    ]);
    files
}

/// The files as a tree, like Micro's (treeprint): `root`, then one line per directory and file.
pub fn tree(root: &str, files: &[String]) -> String {
    // Directories in the order their first file appears, each with its files.
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for file in files {
        let (dir, name) = match file.rsplit_once('/') {
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => (String::new(), file.clone()),
        };
        if dir.is_empty() {
            entries.push((name, Vec::new()));
        } else if let Some((_, children)) = entries.iter_mut().find(|(d, c)| *d == dir && !c.is_empty()) {
            children.push(name);
        } else {
            entries.push((dir, vec![name]));
        }
    }
    let mut out = format!("{root}\n");
    for (i, (name, children)) in entries.iter().enumerate() {
        let last = i + 1 == entries.len();
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(name);
        out.push('\n');
        for (j, child) in children.iter().enumerate() {
            out.push_str(if last { "    " } else { "│   " });
            out.push_str(if j + 1 == children.len() { "└── " } else { "├── " });
            out.push_str(child);
            out.push('\n');
        }
    }
    out
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./@+=:,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes `files` into the new directory `dir`, which must not exist. On failure, removes what it created.
fn write_package(dir: &Path, display: &str, files: &[(String, String)]) -> Result<(), CliError> {
    if dir.symlink_metadata().is_ok() {
        return Err(CliError::failure(format!("{display} already exists")));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", parent.display())))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CliError::failure(format!("{display} already exists")));
        }
        Err(e) => return Err(CliError::failure(format!("cannot create {display}: {e}"))),
    }
    let write_all = || -> Result<(), CliError> {
        for (path, content) in files {
            let file = dir.join(path);
            let io = |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", file.display()));
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&file, content).map_err(io)?;
        }
        Ok(())
    };
    write_all().inspect_err(|_| {
        // The directory is ours (it did not exist): leave nothing half-made behind.
        let _ = std::fs::remove_dir_all(dir);
    })
}

/// Runs `micro new`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let given = args.name.to_string_lossy().into_owned();
    let name = match args.name.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => {
            return Err(CliError::input(format!(
                "Invalid service name {given:?}: NAME must end with the new directory's name, e.g. `micro new greeter`"
            ))
            .into());
        }
    };
    let names = Names::new(&name)?;
    if args.name.symlink_metadata().is_ok() {
        return Err(CliError::failure(format!("{given} already exists")).into());
    }
    let (library, lock) = micro_library(args.micro_path.as_deref())?;
    let files = files(&names, &library, lock);
    let dir = std::path::absolute(&args.name)
        .map_err(|e| CliError::failure(format!("cannot resolve the path {given}: {e}")))?;
    write_package(&dir, &given, &files)?;

    let paths: Vec<String> = files.into_iter().map(|(path, _)| path).collect();
    let printer = Printer::new(settings.output, Output::Table);
    if args.build {
        build(&printer, &dir, &names.name)?;
    }
    if printer.format() != Output::Table {
        printer.json(&json!({ "name": names.name, "path": dir.to_string_lossy(), "files": paths }))?;
        return Ok(());
    }
    let text = format!(
        "Creating service {name}\n\n{tree}\nRun it (with `micro server` running):\n\ncd {cd}\nmicro run .\n\nCall \
         it:\n\nmicro {name} call --name=Alice\n",
        name = names.name,
        tree = tree(&given, &paths),
        cd = shell_word(&given),
    );
    printer.line(text.trim_end())?;
    Ok(())
}

/// Builds the package in `dir` the way the runtime will (its profile, micro's shared build dir), with cargo's own
/// progress on stderr.
fn build(printer: &Printer, dir: &Path, name: &str) -> Result<(), CliError> {
    let settings =
        micro_server::runtime::builder::BuildSettings::from_env(dir.join("target")).map_err(CliError::input)?;
    printer.message(format!(
        "Building {name} with cargo (profile {}{})",
        settings.profile,
        settings.build_dir.as_ref().map(|d| format!(", build dir {}", d.display())).unwrap_or_default()
    ));
    let started = std::time::Instant::now();
    let mut cmd = settings.cargo_build();
    cmd.args(["--bin", name]).current_dir(dir).stdin(std::process::Stdio::null());
    // Build output is not the command's output: keep stdout for data.
    cmd.stdout(std::process::Stdio::from(
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::failure(format!("cannot pass stderr to cargo: {e}")))?,
    ));
    let status = cmd
        .status()
        .map_err(|e| CliError::failure(format!("cannot run cargo (is a Rust toolchain installed?): {e}")))?;
    if !status.success() {
        return Err(CliError::failure(format!(
            "the build of {name} failed (cargo {status}; its errors are above). The package is in {}",
            dir.display()
        )));
    }
    printer.message(format!("Built {name} in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_dashed_service() {
        let n = Names::new("foo-bar").unwrap();
        assert_eq!(
            (n.name.as_str(), n.krate.as_str(), n.package.as_str(), n.service.as_str()),
            ("foo-bar", "foo_bar", "foobar", "FooBar")
        );
        assert_eq!((n.service_rs.as_str(), n.server_mod.as_str()), ("FooBar", "foo_bar_server"));
        let n = Names::new("greeter").unwrap();
        assert_eq!((n.service.as_str(), n.server_mod.as_str()), ("Greeter", "greeter_server"));
        let n = Names::new("foo_bar2").unwrap();
        assert_eq!((n.package.as_str(), n.service.as_str(), n.krate.as_str()), ("foo_bar2", "FooBar2", "foo_bar2"));
    }

    #[test]
    fn rust_names_follow_prost_and_tonic() {
        // prost (heck) joins single letters into one word: `AB` is `Ab` in Rust.
        let n = Names::new("a-b").unwrap();
        assert_eq!((n.service.as_str(), n.service_rs.as_str(), n.server_mod.as_str()), ("AB", "Ab", "ab_server"));
        let n = Names::new("x-ray-2go").unwrap();
        assert_eq!(
            (n.service.as_str(), n.service_rs.as_str(), n.server_mod.as_str()),
            ("XRay2go", "XRay2go", "x_ray2go_server")
        );
        assert_eq!(upper_camel("HTTPServer"), "HttpServer");
        assert_eq!(upper_camel("FooBar"), "FooBar");
        assert_eq!(naive_snake_case("HttpServer"), "http_server");
    }

    #[test]
    fn invalid_names() {
        for name in [
            "",
            "Greeter",
            "2fast",
            "-x",
            "x-",
            "a--b",
            "foo.bar",
            "foo bar",
            "é",
            "fn",
            "test",
            "micro",
            "tokio",
            "tokio_stream",
            "run",
            "store",
            "registry",
            "services",
            "ping",
            "request",
            "help",
        ] {
            let e = Names::new(name).unwrap_err();
            assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput, "{name}: {}", e.message);
            assert!(e.message.starts_with(&format!("Invalid service name {name:?}: ")), "{}", e.message);
        }
    }

    #[test]
    fn templates_render_completely() {
        let names = Names::new("foo-bar").unwrap();
        for (path, content) in files(&names, Path::new("/src/mi\"cro"), None) {
            assert!(!content.contains("{{"), "{path} has an unfilled placeholder:\n{content}");
        }
        let toml = render(template::CARGO_TOML, &names, &toml_escape("/src/mi\"cro"));
        assert!(toml.contains("micro = { path = \"/src/mi\\\"cro\" }"), "{toml}");
        assert!(toml.contains("name = \"foo-bar\""), "{toml}");
    }

    /// The new package pins the versions micro itself uses (so it builds offline from the same crates).
    #[test]
    fn template_pins_micros_versions() {
        let root = include_str!("../../Cargo.toml");
        for dep in ["tonic", "tonic-prost", "tonic-prost-build", "prost", "protox", "tokio-stream"] {
            let line = root.lines().find(|l| l.starts_with(&format!("{dep} = "))).expect(dep);
            assert!(template::CARGO_TOML.contains(line), "the template does not pin `{line}`");
        }
        let tokio = root.lines().find(|l| l.starts_with("tokio = ")).expect("tokio");
        assert!(template::CARGO_TOML.contains(tokio), "the template does not pin `{tokio}`");
    }

    #[test]
    fn tree_like_treeprint() {
        let files: Vec<String> =
            ["Cargo.toml", "proto/x.proto", "src/main.rs", "src/handler.rs", ".gitignore"].map(String::from).into();
        assert_eq!(
            tree("x", &files),
            "x\n├── Cargo.toml\n├── proto\n│   └── x.proto\n├── src\n│   ├── main.rs\n│   └── handler.rs\n└── \
             .gitignore\n"
        );
    }

    #[test]
    fn finds_micro_source() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(is_micro_source(here));
        assert!(!is_micro_source(&here.join("examples/helloworld")));
        let (library, lock) = micro_library(Some(here)).unwrap();
        assert_eq!(library, std::fs::canonicalize(here).unwrap().join("crates/micro"));
        assert!(lock.is_some_and(|l| l.contains("name = \"micro-core\"")));
        let e = micro_library(Some(&here.join("examples"))).unwrap_err();
        assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput);
    }
}
