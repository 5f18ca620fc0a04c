//! Embeds the service library's source in the `micro` binary, so that `micro new` can lay it out once per version
//! under the user's data dir and generated services build wherever they are, with or without a checkout of micro;
//! and the build's identity for `micro version`: `MICRO_BUILD_COMMIT` (the checkout's commit, `unknown` without
//! git or outside a checkout, as in a source tarball) and `MICRO_BUILD_DATE` (`YYYY-MM-DD`, from
//! `SOURCE_DATE_EPOCH` when set, for reproducible builds, else the day this script ran).
//!
//! The embedded tree is the library and what it stands on: `crates/core`, `crates/client`, `crates/micro` (their
//! manifests, build scripts and sources), `proto/micro`, micro's `Cargo.lock`, and a workspace manifest made from
//! this one's `[workspace…]` sections with those three crates as its members. Its id (a hash of every path and
//! byte) names the directory it is laid out in, so a changed library never overwrites one that services use.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// The library's crates, and the protos the bottom one compiles.
const ROOTS: &[&str] = &["crates/core", "crates/client", "crates/micro", "proto/micro"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    build_info(&root);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in ROOTS {
        println!("cargo:rerun-if-changed={dir}");
        collect(&root, &root.join(dir), &mut files)?;
    }
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    files.push(("Cargo.lock".into(), root.join("Cargo.lock")));
    files.sort();

    let out = PathBuf::from(env::var("OUT_DIR")?);
    let manifest = workspace_manifest(&fs::read_to_string(root.join("Cargo.toml"))?)?;
    fs::write(out.join("library-Cargo.toml"), &manifest)?;
    files.push(("Cargo.toml".into(), out.join("library-Cargo.toml")));

    let mut hasher = DefaultHasher::new();
    let mut code = String::from("/// The library's files: (path in the layout, contents).\n");
    code.push_str("pub(crate) const FILES: &[(&str, &[u8])] = &[\n");
    for (path, file) in &files {
        hasher.write(path.as_bytes());
        hasher.write(&fs::read(file)?);
        writeln!(code, "    ({path:?}, include_bytes!({:?})),", file.display().to_string())?;
    }
    code.push_str("];\n");
    writeln!(
        code,
        "/// A hash of every path and byte of [`FILES`].\npub(crate) const ID: &str = \"{:016x}\";",
        hasher.finish()
    )?;
    fs::write(out.join("library.rs"), code)?;
    Ok(())
}

/// Sets `MICRO_BUILD_COMMIT` and `MICRO_BUILD_DATE` for the crate, and asks for a rerun when the commit moves.
fn build_info(root: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    // Only this checkout's own repository counts: a tarball unpacked inside another repository is not its commit.
    let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let ours = top.is_some_and(|top| fs::canonicalize(top).ok() == fs::canonicalize(root).ok());
    let commit = if ours { git(&["rev-parse", "--short=12", "HEAD"]) } else { None };
    if commit.is_some() {
        // HEAD (a branch switch), the branch's ref (a commit) and packed refs: each moves the commit.
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
        }
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]);
        if let (Some(common), Some(branch)) = (common, git(&["symbolic-ref", "-q", "HEAD"])) {
            println!("cargo:rerun-if-changed={common}/{branch}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    println!("cargo:rustc-env=MICRO_BUILD_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let seconds = env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    println!("cargo:rustc-env=MICRO_BUILD_DATE={}", civil_date(seconds / 86_400));
}

/// The `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Every file under `dir`, by its path relative to `root` (with `/`), leaving out editor and build leftovers.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<(), Box<dyn std::error::Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || name == "target" || name.ends_with('~') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files)?;
        } else {
            let relative =
                path.strip_prefix(root)?.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            files.push((relative.join("/"), path));
        }
    }
    Ok(())
}

/// The workspace manifest of the layout: this manifest's `[workspace]`, `[workspace.package]` and
/// `[workspace.dependencies]` sections, with the library's crates as the members.
fn workspace_manifest(manifest: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::from(
        "# The micro service library, laid out by `micro new` for services to depend on. Do not edit: a new micro\n\
         # lays out its own library next to this one.\n",
    );
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = line.starts_with("[workspace");
            if keep {
                out.push('\n');
            }
        }
        if !keep {
            continue;
        }
        if line.trim_start().starts_with("members") {
            out.push_str("members = [\"crates/core\", \"crates/client\", \"crates/micro\"]\n");
        } else if !line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.contains("[workspace]") {
        return Err("Cargo.toml has no [workspace] section".into());
    }
    Ok(out)
}
