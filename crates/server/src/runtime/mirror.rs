//! The stable source directory of a service's builds: each deployment's tree is mirrored into
//! `src/<namespace>/<name>@<version>`, and cargo builds there.
//!
//! Cargo decides what to rebuild by the paths and modification times of the sources. A fresh directory per
//! upload made every path new, so every path dependency (micro itself, for a service in micro's workspace) was
//! compiled again on each `micro update`. The mirror keeps one directory per service: a file whose bytes did not
//! change is left alone (its modification time too), a changed or new file is written (and so is newer than the
//! last build), and what the new tree no longer has is removed. An update with no change rebuilds nothing.

use std::io;
use std::path::Path;

/// What a mirror changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mirrored {
    /// Files written (new or changed) and symlinks made.
    pub written: usize,
    /// Files, symlinks and directories removed.
    pub removed: usize,
    /// Files left as they were.
    pub unchanged: usize,
}

/// Makes `to` hold exactly what `from` holds (regular files, directories and symlinks; anything else is skipped),
/// rewriting only what differs.
pub fn mirror(from: &Path, to: &Path) -> io::Result<Mirrored> {
    let mut stats = Mirrored::default();
    std::fs::create_dir_all(to)?;
    copy_dir(from, to, &mut stats)?;
    prune(from, to, &mut stats)?;
    Ok(stats)
}

fn copy_dir(from: &Path, to: &Path, stats: &mut Mirrored) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        let existing = std::fs::symlink_metadata(&dst).ok();
        if kind.is_symlink() {
            let target = std::fs::read_link(&src)?;
            if existing.as_ref().is_some_and(|m| m.file_type().is_symlink())
                && std::fs::read_link(&dst).ok().as_ref() == Some(&target)
            {
                stats.unchanged += 1;
                continue;
            }
            remove_any(&dst)?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&target, &dst)?;
            stats.written += 1;
        } else if kind.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&dst)?;
            }
            std::fs::create_dir_all(&dst)?;
            copy_dir(&src, &dst, stats)?;
        } else if kind.is_file() {
            if existing.as_ref().is_some_and(|m| m.is_file()) && same_bytes(&src, &dst)? {
                stats.unchanged += 1;
                continue;
            }
            if existing.is_some() {
                remove_any(&dst)?;
            }
            std::fs::copy(&src, &dst)?;
            stats.written += 1;
        }
    }
    Ok(())
}

/// Removes from `to` what `from` does not have.
fn prune(from: &Path, to: &Path, stats: &mut Mirrored) -> io::Result<()> {
    for entry in std::fs::read_dir(to)? {
        let entry = entry?;
        let (src, dst) = (from.join(entry.file_name()), entry.path());
        let Ok(source) = std::fs::symlink_metadata(&src) else {
            remove_any(&dst)?;
            stats.removed += 1;
            continue;
        };
        if source.is_dir() && entry.file_type()?.is_dir() {
            prune(&src, &dst, stats)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether two files hold the same bytes (compared by size first).
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (io::BufReader::new(std::fs::File::open(a)?), io::BufReader::new(std::fs::File::open(b)?));
    let (mut bx, mut by) = ([0u8; 8192], [0u8; 8192]);
    loop {
        let n = x.read(&mut bx)?;
        if n == 0 {
            return Ok(true);
        }
        y.read_exact(&mut by[..n])?;
        if bx[..n] != by[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn mtime(p: &Path) -> SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn only_changes_are_written_and_what_is_gone_is_removed() {
        let (a, b, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let to = to.path().join("svc");
        for dir in [a.path(), b.path()] {
            std::fs::create_dir_all(dir.join("src/deep")).unwrap();
            std::fs::write(dir.join("Cargo.toml"), "[package]").unwrap();
            std::fs::write(dir.join("src/deep/lib.rs"), "// same").unwrap();
        }
        std::fs::write(a.path().join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(a.path().join("old.txt"), "old").unwrap();
        std::fs::create_dir_all(a.path().join("gone/inner")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("Cargo.toml", a.path().join("link")).unwrap();
        let first = mirror(a.path(), &to).unwrap();
        assert_eq!(first, Mirrored { written: 5, removed: 0, unchanged: 0 });
        let kept = mtime(&to.join("src/deep/lib.rs"));

        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(b.path().join("src/main.rs"), "fn main() { println!(); }").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("src", b.path().join("link")).unwrap();
        let second = mirror(b.path(), &to).unwrap();
        // main.rs and the link changed; old.txt and gone/ are removed; Cargo.toml and lib.rs are left alone.
        assert_eq!(second, Mirrored { written: 2, removed: 2, unchanged: 2 });
        assert_eq!(mtime(&to.join("src/deep/lib.rs")), kept);
        assert_eq!(std::fs::read_to_string(to.join("src/main.rs")).unwrap(), "fn main() { println!(); }");
        assert!(!to.join("old.txt").exists() && !to.join("gone").exists());
        assert_eq!(std::fs::read_link(to.join("link")).unwrap(), Path::new("src"));

        // The same tree again changes nothing.
        assert_eq!(mirror(b.path(), &to).unwrap(), Mirrored { written: 0, removed: 0, unchanged: 4 });
    }

    #[test]
    fn a_file_and_a_directory_may_swap() {
        let (a, b, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(a.path().join("x"), "file").unwrap();
        std::fs::create_dir_all(b.path().join("x")).unwrap();
        std::fs::write(b.path().join("x/y"), "inner").unwrap();
        mirror(a.path(), to.path()).unwrap();
        mirror(b.path(), to.path()).unwrap();
        assert_eq!(std::fs::read_to_string(to.path().join("x/y")).unwrap(), "inner");
        mirror(a.path(), to.path()).unwrap();
        assert_eq!(std::fs::read_to_string(to.path().join("x")).unwrap(), "file");
    }
}
