//! The service library's source, embedded in the `micro` binary by `build.rs`, and its layout on disk.
//!
//! `micro new` lays the library out once per version under [`MICRO_LIBRARY_DIR`] (default: `lib` in the user's
//! data dir), in a directory named `<version>-<id>`, where the id is a hash of the embedded files. New services
//! depend on `<that dir>/crates/micro` by path: it never moves, a newer micro lays out a directory of its own
//! beside it, and no checkout of micro is needed to build them. The directory is written under a temporary name
//! and renamed into place, so a reader never sees half of it.

use crate::exit::CliError;
use micro_core::env::{self, MICRO_LIBRARY_DIR};
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/library.rs"));
}

/// The file in a laid-out library that records its id; written last, before the rename.
const MARKER: &str = ".micro-library";

/// The directory name of this binary's library: `<version>-<id>`.
pub(crate) fn name() -> String {
    format!("{}-{}", micro_core::VERSION, embedded::ID)
}

/// micro's `Cargo.lock`, which new services start from so that they build with the crates micro was built with.
pub(crate) fn lock() -> Option<String> {
    embedded::FILES
        .iter()
        .find(|(path, _)| *path == "Cargo.lock")
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into())
}

/// Where libraries are laid out: [`MICRO_LIBRARY_DIR`], else `lib` in the platform's data dir for micro.
pub(crate) fn base_dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = env::var(MICRO_LIBRARY_DIR) {
        return std::path::absolute(&dir).map_err(|e| CliError::input(format!("{MICRO_LIBRARY_DIR}={dir}: {e}")));
    }
    directories::ProjectDirs::from("dev", "micro", "micro").map(|p| p.data_local_dir().join("lib")).ok_or_else(|| {
        CliError::failure(format!(
            "cannot find a home directory for micro's service library; set {MICRO_LIBRARY_DIR} to a directory"
        ))
    })
}

/// Lays the library out under `base` unless it is there already; returns its directory (the workspace root; the
/// library crate is its `crates/micro`).
pub(crate) fn lay_out(base: &Path) -> Result<PathBuf, CliError> {
    let dir = base.join(name());
    if is_complete(&dir) {
        return Ok(dir);
    }
    let io = |what: &Path, e: std::io::Error| {
        CliError::failure(format!("cannot lay out micro's service library in {}: {e}", what.display()))
    };
    std::fs::create_dir_all(base).map_err(|e| io(base, e))?;
    let tmp = base.join(format!(".{}.{}.tmp", name(), uuid_like()));
    let written = (|| {
        for (path, bytes) in embedded::FILES {
            let file = tmp.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bytes)?;
        }
        std::fs::write(tmp.join(MARKER), embedded::ID)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&tmp, e));
    }
    if dir.exists() && !is_complete(&dir) {
        // Not ours (no marker): a leftover of an interrupted copy by hand, or edited. Replace it.
        let _ = std::fs::remove_dir_all(&dir);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another `micro new` laid it out at the same time.
        Err(_) if is_complete(&dir) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(&dir, e))
        }
    }
}

fn is_complete(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|id| id == embedded::ID)
}

/// A name unique to this process and moment, for the temporary directory.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_library_is_a_workspace_of_the_three_crates() {
        let paths: Vec<&str> = embedded::FILES.iter().map(|(p, _)| *p).collect();
        for needed in [
            "Cargo.toml",
            "Cargo.lock",
            "crates/core/Cargo.toml",
            "crates/core/build.rs",
            "crates/core/src/lib.rs",
            "crates/client/src/lib.rs",
            "crates/micro/Cargo.toml",
            "crates/micro/src/lib.rs",
            "proto/micro/registry/registry.proto",
        ] {
            assert!(paths.contains(&needed), "{needed} is not embedded");
        }
        assert!(!paths.iter().any(|p| p.starts_with("crates/server") || p.starts_with("src/")), "{paths:?}");
        let manifest =
            embedded::FILES.iter().find(|(p, _)| *p == "Cargo.toml").map(|(_, b)| String::from_utf8_lossy(b));
        let manifest = manifest.expect("a workspace manifest");
        assert!(manifest.contains("members = [\"crates/core\", \"crates/client\", \"crates/micro\"]"), "{manifest}");
        assert!(manifest.contains("[workspace.dependencies]") && !manifest.contains("[package]"), "{manifest}");
    }

    #[test]
    fn lays_out_once_and_completely() {
        let base = tempfile::tempdir().unwrap();
        let dir = lay_out(base.path()).unwrap();
        assert_eq!(dir, base.path().join(name()));
        assert!(dir.join("crates/micro/src/lib.rs").is_file());
        let marker = dir.join(MARKER);
        let written = std::fs::metadata(&marker).unwrap().modified().unwrap();
        // A second time finds it and writes nothing.
        assert_eq!(lay_out(base.path()).unwrap(), dir);
        assert_eq!(std::fs::metadata(&marker).unwrap().modified().unwrap(), written);
        // No temporary directory is left behind.
        let names: Vec<String> =
            std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, [name()]);
        // An incomplete directory (no marker) is replaced.
        std::fs::remove_file(&marker).unwrap();
        std::fs::remove_file(dir.join("crates/micro/src/lib.rs")).unwrap();
        lay_out(base.path()).unwrap();
        assert!(dir.join("crates/micro/src/lib.rs").is_file());
    }
}
