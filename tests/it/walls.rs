//! The walls between the crates: each layer reaches only down, and a service links the service library alone.
//!
//! `cargo tree` (offline, from the lock file) lists what each package links; these tests fail when a dependency
//! crosses a wall, e.g. when the service library starts to pull the server, the CLI or their heavy crates.

use std::collections::BTreeSet;
use std::process::Command;

/// The most packages a service may link (issue 12: 233 before the split).
const MAX_SERVICE_PACKAGES: usize = 150;

/// Crates of the server and the CLI that a service must never link.
const NOT_IN_A_SERVICE: &[&str] = &[
    "micro-cli",
    "micro-server",
    "clap",
    "axum",
    "redb",
    "argon2",
    "nix",
    "dialoguer",
    "comfy-table",
    "indicatif",
    "tokio-postgres",
    "async-nats",
    "jsonwebtoken",
    "rcgen",
];

/// The unique packages `package` links (normal dependencies only: no build scripts' or tests' dependencies).
fn linked(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", package])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn a_service_links_the_library_alone() {
    let packages = linked("helloworld");
    let crossing: Vec<&&str> = NOT_IN_A_SERVICE.iter().filter(|c| packages.contains(**c)).collect();
    assert!(crossing.is_empty(), "helloworld links {crossing:?}");
    assert!(packages.contains("micro") && packages.contains("micro-core"), "{packages:?}");
    assert!(
        packages.len() <= MAX_SERVICE_PACKAGES,
        "helloworld links {} packages, more than {MAX_SERVICE_PACKAGES}: {packages:?}",
        packages.len()
    );
}

#[test]
fn each_layer_reaches_only_down() {
    let layers = [
        ("micro-core", &["micro-client", "micro", "micro-server", "micro-cli"][..]),
        ("micro-client", &["micro", "micro-server", "micro-cli"][..]),
        ("micro", &["micro-server", "micro-cli"][..]),
        ("micro-server", &["micro-cli"][..]),
    ];
    for (package, above) in layers {
        let packages = linked(package);
        for up in above {
            assert!(!packages.contains(*up), "{package} links {up}, a layer above it");
        }
    }
    let cli = linked("micro-cli");
    for below in ["micro-core", "micro-client", "micro", "micro-server"] {
        assert!(cli.contains(below), "the CLI links {below}");
    }
}
