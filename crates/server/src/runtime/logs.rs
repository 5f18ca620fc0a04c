//! Log files: what services write, captured with timestamps into one file per service, rotated by size; read back
//! from the end (a tail seeks backwards, it never reads the whole file) and followed as they grow.
//!
//! A service's log line is `<RFC 3339 time> <stream> <text>`, where the stream is `stdout`, `stderr` or `runtime`
//! (the runtime's own notes: started, exited, restarting), with `#<n>` appended for the n-th instance when a service
//! runs several. The server's own log (`micro logs server`) is the `tracing` output, whose lines also begin with
//! their time. When a file passes [`LOG_MAX_BYTES`] it is renamed to `<name>.1` (replacing the previous one) and a
//! new file begins; reads look into that previous file when the current one has too few lines.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The size at which a log file is rotated.
pub const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The longest line kept; longer output is split into lines of this size.
pub const MAX_LINE: usize = 64 * 1024;
/// How many lines a tail returns when not told.
pub const DEFAULT_TAIL: usize = 15;
/// How much a backwards read takes at once.
const CHUNK: u64 = 64 * 1024;

/// The server's own log file in `data_dir` (read by `micro logs server`).
pub fn server_log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("server.log")
}

/// The previous (rotated) file of a log.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".1");
    path.with_file_name(name)
}

/// A log file that is appended to line by line and rotated by size. Safe to share between threads.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    max: u64,
    open: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    /// A log at `path` (created, with its directory, on the first write), rotated at `max` bytes.
    pub fn new(path: PathBuf, max: u64) -> Self {
        Self { path, max, open: Mutex::new(None) }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` (whole lines) in one write, rotating the file first if it would pass the limit.
    pub fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, size)) = open.as_ref()
            && *size > 0
            && size + bytes.len() as u64 > self.max
        {
            *open = None;
            std::fs::rename(&self.path, rotated(&self.path))?;
        }
        if open.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            let size = file.metadata()?.len();
            *open = Some((file, size));
        }
        let (file, size) = open.as_mut().expect("opened above");
        file.write_all(bytes)?;
        *size += bytes.len() as u64;
        Ok(())
    }

    /// Appends one line of `stream`, stamped with the current time.
    pub fn line(&self, stream: &str, text: &str) {
        let line = format_line(SystemTime::now(), stream, text);
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write a service log");
        }
    }
}

/// A writer for `tracing_subscriber` that appends to a [`LogFile`].
#[derive(Clone, Debug)]
pub struct LogWriter(pub std::sync::Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `<time> <stream> <text>\n`, with the time in RFC 3339 to the microsecond.
pub fn format_line(at: SystemTime, stream: &str, text: &str) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    format!("{} {stream} {text}\n", humantime::format_rfc3339_micros(at))
}

/// One parsed log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// When it was written, if the line says.
    pub time: Option<SystemTime>,
    /// The stream (`stdout`, `stderr`, `runtime`…); empty for a line of the server's log.
    pub stream: String,
    /// The text.
    pub text: String,
}

impl Line {
    /// Unix seconds of the line's time (0 when unknown).
    pub fn unix(&self) -> i64 {
        self.time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs() as i64).unwrap_or_default()
    }
}

/// The time at the start of a line, if it starts with one.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let first = line.split(' ').next()?;
    if first.len() < 20 || !first.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    humantime::parse_rfc3339_weak(first).ok()
}

/// Parses a service log line (`<time> <stream> <text>`).
pub fn parse_service_line(line: &str) -> Line {
    let mut parts = line.splitn(3, ' ');
    let (first, stream, text) = (parts.next(), parts.next(), parts.next());
    match (first.and_then(|f| humantime::parse_rfc3339_weak(f).ok()), stream) {
        (Some(time), Some(stream)) => {
            Line { time: Some(time), stream: stream.to_string(), text: text.unwrap_or_default().to_string() }
        }
        _ => Line { time: None, stream: String::new(), text: line.to_string() },
    }
}

/// Parses a line of the server's log: the whole line is the text.
pub fn parse_server_line(line: &str) -> Line {
    Line { time: line_time(line), stream: String::new(), text: line.to_string() }
}

/// What a tail returns.
#[derive(Clone, Copy, Debug)]
pub struct TailOptions {
    /// At most this many of the last lines (`None`: every line since `since`).
    pub count: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
}

/// Where a tail stopped reading the newest file: a [`Follower`] continues from there.
#[derive(Clone, Debug, Default)]
pub struct Position {
    /// The length of the newest file when it was read.
    pub offset: u64,
}

/// The last lines of a log (its current file, then its rotated one) that pass `keep`, oldest first. Reads backwards
/// from the end in chunks, so its cost is the size of what it returns, not of the file.
pub fn tail(
    path: &Path,
    options: TailOptions,
    keep: &dyn Fn(&str) -> bool,
) -> std::io::Result<(Vec<String>, Position)> {
    let mut out: Vec<String> = Vec::new();
    let mut position = Position::default();
    let enough = |out: &Vec<String>| options.count.is_some_and(|n| out.len() >= n);
    for (i, file) in [path.to_path_buf(), rotated(path)].iter().enumerate() {
        let mut f = match File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let (done, complete) = read_backwards(&mut f, len, &mut |line| {
            if enough(&out) {
                return false;
            }
            if let Some(since) = options.since
                && line_time(line).is_some_and(|t| t < since)
            {
                return false;
            }
            if keep(line) {
                out.push(line.to_string());
            }
            !enough(&out)
        })?;
        if i == 0 {
            position.offset = complete;
        }
        if done {
            break;
        }
    }
    out.reverse();
    Ok((out, position))
}

/// Calls `each` with the complete lines of `f` (of length `len`) from the last to the first, until it returns
/// false. A last line without its newline is still being written and is left out. Returns whether `each` stopped it
/// (false: the start of the file was reached), and where the complete lines end.
fn read_backwards(f: &mut File, len: u64, each: &mut dyn FnMut(&str) -> bool) -> std::io::Result<(bool, u64)> {
    // `buf` holds the file's bytes from `buf_start` up to the end of the line being looked at.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = len;
    let mut load = |buf: &mut Vec<u8>, buf_start: &mut u64| -> std::io::Result<bool> {
        if *buf_start == 0 {
            return Ok(false);
        }
        let start = buf_start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (*buf_start - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(buf);
        *buf = chunk;
        *buf_start = start;
        Ok(true)
    };
    // The newline that ends the last complete line.
    let mut end = loop {
        if let Some(p) = buf.iter().rposition(|&b| b == b'\n') {
            break p;
        }
        if !load(&mut buf, &mut buf_start)? {
            return Ok((false, 0));
        }
    };
    let complete = buf_start + end as u64 + 1;
    buf.truncate(end);
    loop {
        match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(p) => {
                let line = String::from_utf8_lossy(&buf[p + 1..end]);
                if !each(line.trim_end_matches('\r')) {
                    return Ok((true, complete));
                }
                buf.truncate(p);
                end = p;
            }
            None if buf_start == 0 => {
                let line = String::from_utf8_lossy(&buf[..end]);
                return Ok((!each(line.trim_end_matches('\r')), complete));
            }
            None => {
                let before = buf.len();
                load(&mut buf, &mut buf_start)?;
                end += buf.len() - before;
            }
        }
    }
}

/// Follows a log file from a position: new complete lines as they are written, across rotations.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<(File, u64)>,
    offset: u64,
    partial: Vec<u8>,
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

impl Follower {
    /// Follows `path` from `offset` (a [`Position`] of a tail), or from the start of a file that appears later.
    pub fn new(path: PathBuf, offset: u64) -> Self {
        Self { path, file: None, offset, partial: Vec::new() }
    }

    /// The lines written since the last poll.
    pub fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => {
                    let ino = inode(&f.metadata()?);
                    let len = f.metadata()?.len();
                    if len < self.offset {
                        self.offset = 0;
                    }
                    self.file = Some((f, ino));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lines),
                Err(e) => return Err(e),
            }
        }
        self.read_new(&mut lines)?;
        // Rotated: the path is a new file. What was left in the old one was read above; continue in the new one.
        let current = std::fs::metadata(&self.path).ok().map(|m| inode(&m));
        if let Some((_, ino)) = &self.file
            && current.is_some_and(|c| c != *ino)
        {
            self.file = None;
            self.offset = 0;
            self.partial.clear();
            return self.poll().map(|more| {
                lines.extend(more);
                lines
            });
        }
        Ok(lines)
    }

    fn read_new(&mut self, lines: &mut Vec<String>) -> std::io::Result<()> {
        let Some((file, _)) = self.file.as_mut() else { return Ok(()) };
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated: start again.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset).min(8 << 20) as usize);
        file.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(p) = self.partial.iter().rposition(|&b| b == b'\n') {
            let rest = self.partial.split_off(p + 1);
            for line in self.partial.split(|&b| b == b'\n') {
                if !line.is_empty() || !lines.is_empty() {
                    lines.push(String::from_utf8_lossy(line).trim_end_matches('\r').to_string());
                }
            }
            // split() yields an empty piece after the final newline.
            if lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            self.partial = rest;
        }
        Ok(())
    }
}

/// How often a follower looks for new lines.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    #[test]
    fn tail_returns_the_last_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let lines: Vec<String> = (0..10_000).map(|i| format!("line {i} {}", "x".repeat(i % 50))).collect();
        write(&path, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let (got, pos) = tail(&path, TailOptions { count: Some(3), since: None }, &|_| true).unwrap();
        assert_eq!(got, lines[9997..].to_vec());
        assert_eq!(pos.offset, std::fs::metadata(&path).unwrap().len());
        let (all, _) = tail(&path, TailOptions { count: None, since: None }, &|_| true).unwrap();
        assert_eq!(all, lines);
        let (odd, _) = tail(&path, TailOptions { count: Some(2), since: None }, &|l| l.contains('7')).unwrap();
        assert_eq!(odd, vec![format!("line 9987 {}", "x".repeat(37)), format!("line 9997 {}", "x".repeat(47))]);
    }

    #[test]
    fn tail_skips_an_unfinished_line_and_reads_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        write(&rotated(&path), &["old 1", "old 2"]);
        std::fs::write(&path, "new 1\nnew 2\npartial").unwrap();
        let (got, pos) = tail(&path, TailOptions { count: Some(3), since: None }, &|_| true).unwrap();
        assert_eq!(got, vec!["old 2", "new 1", "new 2"]);
        assert_eq!(pos.offset, 12);
        let (none, _) =
            tail(&dir.path().join("missing.log"), TailOptions { count: Some(3), since: None }, &|_| true).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn tail_since_stops_at_older_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut text = String::new();
        for i in 0..5 {
            text.push_str(&format_line(t0 + Duration::from_secs(600 * i), "stdout", &format!("m{i}")));
        }
        std::fs::write(&path, text).unwrap();
        let since = t0 + Duration::from_secs(1200);
        let (got, _) = tail(&path, TailOptions { count: None, since: Some(since) }, &|_| true).unwrap();
        let texts: Vec<String> = got.iter().map(|l| parse_service_line(l).text).collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
    }

    #[test]
    fn lines_round_trip() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let line = format_line(at, "stderr", "hello world\n");
        assert_eq!(line, "2023-11-14T22:13:20.123456Z stderr hello world\n");
        let parsed = parse_service_line(line.trim_end());
        assert_eq!(parsed.time, Some(at));
        assert_eq!((parsed.stream.as_str(), parsed.text.as_str()), ("stderr", "hello world"));
        assert_eq!(parsed.unix(), 1_700_000_000);
        let server = parse_server_line("2023-11-14T22:13:20.123456Z  INFO micro_server: up");
        assert_eq!(server.time, Some(at));
        assert_eq!(parse_server_line("no time").time, None);
    }

    #[test]
    fn log_files_rotate_and_followers_keep_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let log = LogFile::new(path.clone(), 64);
        let mut follower = Follower::new(path.clone(), 0);
        assert!(follower.poll().unwrap().is_empty());
        log.append(b"first line of 30 bytes......\n").unwrap();
        assert_eq!(follower.poll().unwrap(), vec!["first line of 30 bytes......"]);
        log.append(b"second line of 30 bytes.....\n").unwrap();
        log.append(b"third line rotates the file\n").unwrap();
        assert!(rotated(&path).exists());
        assert_eq!(follower.poll().unwrap(), vec!["second line of 30 bytes.....", "third line rotates the file"]);
        log.append(b"fourth").unwrap();
        assert!(follower.poll().unwrap().is_empty());
        log.append(b" line\n").unwrap();
        assert_eq!(follower.poll().unwrap(), vec!["fourth line"]);
    }
}
