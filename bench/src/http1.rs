//! A minimal HTTP/1.1 client for the benchmarks: one kept-alive connection, requests written in one segment with
//! TCP_NODELAY, answers read with `Content-Length`, chunks or to the close, and what each cost on the wire (head
//! and body bytes), so a benchmark can report exact transfer sizes.

use anyhow::{Context, bail, ensure};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest a request may take, from writing it to the end of its answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer head (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// The largest answer body.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One HTTP/1.1 connection, kept alive between requests.
pub(crate) struct Conn {
    io: BufReader<TcpStream>,
    /// The `Host` header: the address connected to.
    host: String,
    /// Whether the server has closed the connection (an answer read to its end, or `Connection: close`).
    pub(crate) closed: bool,
}

/// One answer, with what it cost on the wire.
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Header names in lower case, with their values.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, decoded from its chunks when chunked.
    pub(crate) body: Vec<u8>,
    /// Bytes of the status line and headers, the blank line included.
    pub(crate) head: usize,
    /// Bytes of the body as sent, chunk framing included.
    pub(crate) body_wire: usize,
    /// How the body was framed: `Content-Length`, `chunked`, `to close` or `no body`.
    pub(crate) framing: &'static str,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The start of the body, for error messages.
    pub(crate) fn excerpt(&self) -> String {
        self.text().chars().take(400).collect()
    }
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { io: BufReader::new(stream), host: addr.to_string(), closed: false })
    }

    /// Sends a request with `headers` (besides `Host` and, with a body, `Content-Length`) and reads its answer,
    /// within [`REQUEST_TIMEOUT`].
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        ensure!(!self.closed, "{method} {path}: the server has closed this connection");
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, headers, body))
            .await
            .with_context(|| format!("{method} {path}: no complete answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path} to {}", self.host))
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.io.get_mut().write_all(&bytes).await?;

        let mut line = Vec::new();
        let mut head = self.line(&mut line).await?;
        let status_line = String::from_utf8_lossy(&line).trim_end().to_string();
        let status: u16 = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
            [version, code, ..] if version.starts_with("HTTP/1.") => code.parse()?,
            _ => bail!("not an HTTP/1 status line: {status_line:?}"),
        };
        let mut fields = Vec::new();
        loop {
            head += self.line(&mut line).await?;
            ensure!(head <= MAX_HEAD, "the answer's head is longer than {MAX_HEAD} bytes");
            let text = std::str::from_utf8(&line)?.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                break;
            }
            let (name, value) = text.split_once(':').with_context(|| format!("a malformed header: {text:?}"))?;
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        ensure!(!(100..200).contains(&status), "an interim answer ({status}) this client does not expect");
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_ascii_lowercase());
        if field("connection").is_some_and(|v| v.contains("close")) {
            self.closed = true;
        }
        let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length = field("content-length").map(|v| v.parse::<usize>()).transpose()?;
        let (mut body, mut body_wire) = (Vec::new(), 0);
        let bodiless = method == "HEAD" || status == 204 || status == 304;
        if bodiless {
        } else if chunked {
            loop {
                body_wire += self.line(&mut line).await?;
                let size = std::str::from_utf8(&line)?.trim().split(';').next().unwrap_or_default().trim();
                let size =
                    usize::from_str_radix(size, 16).with_context(|| format!("a malformed chunk size {size:?}"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        body_wire += self.line(&mut line).await?;
                        if line.trim_ascii().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                ensure!(body.len() + size <= MAX_BODY, "the body is longer than {MAX_BODY} bytes");
                let at = body.len();
                body.resize(at + size, 0);
                self.io.read_exact(&mut body[at..]).await?;
                let mut crlf = [0u8; 2];
                self.io.read_exact(&mut crlf).await?;
                ensure!(crlf == *b"\r\n", "a chunk does not end with CRLF");
                body_wire += size + 2;
            }
        } else if let Some(length) = length {
            ensure!(length <= MAX_BODY, "the body is longer than {MAX_BODY} bytes");
            body.resize(length, 0);
            self.io.read_exact(&mut body).await?;
            body_wire = length;
        } else {
            // Neither length nor chunks: the body ends with the connection.
            (&mut self.io).take(MAX_BODY as u64 + 1).read_to_end(&mut body).await?;
            ensure!(body.len() <= MAX_BODY, "the body is longer than {MAX_BODY} bytes");
            body_wire = body.len();
            self.closed = true;
        }
        let framing = match (chunked, length) {
            _ if bodiless => "no body",
            (true, _) => "chunked",
            (false, Some(_)) => "Content-Length",
            (false, None) => "to close",
        };
        Ok(Answer { status, headers: fields, body, head, body_wire, framing })
    }

    /// Reads one line (at most [`MAX_HEAD`] bytes) into `buf`, and says how many bytes it took.
    async fn line(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
        buf.clear();
        let n = (&mut self.io).take(MAX_HEAD as u64).read_until(b'\n', buf).await?;
        ensure!(n > 0, "the server closed the connection");
        ensure!(buf.ends_with(b"\n"), "a line longer than {MAX_HEAD} bytes, or cut short");
        Ok(n)
    }
}
