//! The network edge of `micro server` (and of every service built with the library): a listener that caps how many
//! connections are open at once and closes connections that hold a slot without using it.
//!
//! An attack run held 1,200 half-open connections (partial HTTP/1 request lines, bare HTTP/2 prefaces) for 35 s and
//! none were closed. [`Listener`] wraps a `TcpListener` for every gRPC server ([`crate::serve::serve_grpc`]: the
//! proxy of `micro server`, and services) and for the server's HTTP API gateway:
//!
//! - **a connection limit.** At most [`Limits::max_connections`] connections are served at once (a semaphore,
//!   [`MAX_CONNECTIONS`] by default). A connection beyond the limit is accepted and closed at once, so that its
//!   client fails fast instead of waiting in the kernel's backlog.
//! - **a handshake timeout.** A connection that sends nothing within [`Limits::handshake`] ([`HANDSHAKE_TIMEOUT`])
//!   is closed.
//! - **an idle timeout**, which depends on how the server uses the connection ([`Mode`]):
//!   - [`Mode::Pinged`] (the gRPC proxy, which is HTTP/2 only): the server sends HTTP/2 keepalive pings every
//!     [`Limits::keepalive_interval`], and every live peer answers them, so a connection that reads nothing for
//!     [`Limits::idle`] ([`IDLE_TIMEOUT`]) is dead or hostile and is closed. Long-lived streams (a registry watch,
//!     `micro logs -f`) stay open: their peers answer the pings.
//!   - [`Mode::Requests`] (the gateway, HTTP/1 and HTTP/2): the server tells the connection when a request starts
//!     and when its response ends ([`Activity::begin`], [`Tracked`]). With no request in flight, the head of the
//!     next request must be complete within [`Limits::handshake`] of its first byte (the header-read timeout, which
//!     also closes a bare HTTP/2 preface), and a connection that sends nothing for [`Limits::idle`] is closed. While
//!     a request is in flight nothing is timed here, so a Server-Sent Events stream that is quiet for hours stays
//!     open; the gateway bounds a slow request body itself.
//! - **a write-stall timeout.** A write that makes no progress for [`Limits::idle`] (a peer that stopped reading)
//!   fails, and the connection closes.
//!
//! - **TLS, when configured** ([`Listener::with_tls`]). The TLS handshake runs inside the connection
//!   ([`Conn`]'s first reads and writes), so in the connection's own task and never in the accept loop: a slow or
//!   silent client holds up nobody else. It must finish within [`Limits::handshake`] of the accept, whatever bytes
//!   trickle in, or the connection is closed. The timeouts above then apply to the decrypted stream: TLS records
//!   that carry no application data (a trickled partial record, for example) do not count as activity. The peer's
//!   address is still what [`tonic::transport::server::Connected`] reports, so the proxy sees it as before.
//!
//! The limits are constants; for tests they can be shortened with `MICRO_HANDSHAKE_TIMEOUT`, `MICRO_IDLE_TIMEOUT`
//! and `MICRO_MAX_CONNECTIONS` ([`Limits::from_env`]).

use futures::task::AtomicWaker;
use micro_core::env;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most connections one listener serves at once, by default.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a new connection may take to send its first byte, and (on the gateway) how long the head of a request
/// may take to arrive once it has begun, by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may read nothing (gRPC) or stay without a request (gateway), by default; also how long a
/// write may make no progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the gRPC server pings an HTTP/2 peer, at most. Shorter than [`IDLE_TIMEOUT`], so that a live peer's
/// answers keep its connection open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long the gRPC server waits for the answer to a ping before it closes the connection, at most.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits of a [`Listener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most connections served at once.
    pub max_connections: usize,
    /// How long a connection may take to send its first byte; on the gateway also how long a request's head may
    /// take once its first byte has arrived.
    pub handshake: Duration,
    /// How long a connection may stay idle (see [`Mode`]), and a write may make no progress.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: MAX_CONNECTIONS, handshake: HANDSHAKE_TIMEOUT, idle: IDLE_TIMEOUT }
    }
}

impl Limits {
    /// The default limits, each shortened or raised by its environment variable when set (`MICRO_HANDSHAKE_TIMEOUT`,
    /// `MICRO_IDLE_TIMEOUT`, `MICRO_MAX_CONNECTIONS`). A value that cannot be read, or zero, is reported and the
    /// default is kept.
    pub fn from_env() -> Self {
        let defaults = Self::default();
        let duration = |name: &str, default: Duration| match env::duration(name, default) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                tracing::warn!("{name} must be longer than zero; using {default:?}");
                default
            }
            Err(e) => {
                tracing::warn!("{e}; using {default:?}");
                default
            }
        };
        let max_connections = match env::var(env::MICRO_MAX_CONNECTIONS).map(|v| v.trim().parse::<usize>()) {
            None => defaults.max_connections,
            Some(Ok(n)) if n > 0 && n <= Semaphore::MAX_PERMITS => n,
            Some(_) => {
                tracing::warn!(
                    "{} is not a number of connections greater than zero; using {MAX_CONNECTIONS}",
                    env::MICRO_MAX_CONNECTIONS
                );
                defaults.max_connections
            }
        };
        Self {
            max_connections,
            handshake: duration(env::MICRO_HANDSHAKE_TIMEOUT, defaults.handshake),
            idle: duration(env::MICRO_IDLE_TIMEOUT, defaults.idle),
        }
    }

    /// How often an HTTP/2 server pings its peers: [`KEEPALIVE_INTERVAL`], or a third of the idle timeout when that
    /// is shorter, so that at least two answers arrive within it.
    pub fn keepalive_interval(&self) -> Duration {
        KEEPALIVE_INTERVAL.min(self.idle / 3).max(Duration::from_millis(1))
    }

    /// How long an HTTP/2 server waits for the answer to a ping: [`KEEPALIVE_TIMEOUT`], or a third of the idle
    /// timeout when that is shorter.
    pub fn keepalive_timeout(&self) -> Duration {
        KEEPALIVE_TIMEOUT.min(self.idle / 3).max(Duration::from_millis(1))
    }
}

/// How a server uses its connections, which decides when one is idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The server pings its peers (HTTP/2 keepalive): a connection that reads nothing for the idle timeout is
    /// closed.
    Pinged,
    /// The server reports its requests ([`Activity::begin`]): without a request in flight, a request's head must
    /// arrive within the handshake timeout of its first byte, and a connection that sends nothing for the idle
    /// timeout is closed.
    Requests,
}

/// A listener with a connection limit, whose connections ([`Conn`]) time out as [`Mode`] says.
pub struct Listener {
    tcp: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    mode: Mode,
    /// When the last refusal (at the limit) was logged, so that a flood is logged once in a while.
    refused_logged: Option<Instant>,
    /// The TLS acceptor, when connections are TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listener {
    /// Wraps `tcp`.
    pub fn new(tcp: TcpListener, limits: Limits, mode: Mode) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
        Self { tcp, permits, limits, mode, refused_logged: None, tls: None }
    }

    /// Serves TLS with `config` (when given) on every connection: the handshake runs in the connection, bounded by
    /// [`Limits::handshake`], and a client that speaks anything else is closed.
    pub fn with_tls(mut self, config: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = config.map(tokio_rustls::TlsAcceptor::from);
        self
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection within the limit. Connections beyond it are closed as they arrive; errors of `accept`
    /// (too many open files, for example) are logged and retried after a pause.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // As axum and hyper do: errors such as EMFILE persist for a while, so do not spin on them.
                    tracing::debug!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                let now = Instant::now();
                if self.refused_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    self.refused_logged = Some(now);
                    tracing::warn!(
                        %peer,
                        limit = self.limits.max_connections,
                        "too many open connections; closing new ones until some close"
                    );
                }
                drop(tcp);
                continue;
            };
            // Nagle's algorithm would hold back small writes (gRPC trailers, short answers) for a delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::trace!(error = %e, "cannot set TCP_NODELAY");
            }
            let conn = Conn::new(tcp, peer, permit, self.limits, self.mode, self.tls.as_ref());
            return (conn, peer);
        }
    }

    /// The connections, as the stream of results that tonic's `serve_with_incoming*` takes.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Conn, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (conn, _) = listener.accept().await;
            Some((Ok(conn), listener))
        })
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (Conn, SocketAddr)> + Send {
        Listener::accept(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Listener::local_addr(self)
    }
}

/// What a connection has done, shared between the connection and the requests it carries.
pub struct Activity {
    mode: Mode,
    limits: Limits,
    state: Mutex<State>,
    /// The connection's reader, woken when the last request in flight ends so that it re-arms its timer.
    reader: AtomicWaker,
}

#[derive(Debug)]
struct State {
    /// When the connection was accepted, or its last request ended.
    idle_since: Instant,
    /// When the last byte was read.
    last_read: Option<Instant>,
    /// When the first byte read while no request was in flight arrived (a request's head, or HTTP/2 frames).
    head_started: Option<Instant>,
    /// Requests in flight (their responses not yet sent).
    in_flight: usize,
    /// Whether a request has begun on this connection.
    served: bool,
}

/// Why a connection was closed by its timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Nothing arrived after the connection was accepted.
    Handshake,
    /// A request's head (or a first request on HTTP/2) did not arrive in time.
    Header,
    /// Nothing arrived for the idle timeout.
    Idle,
}

impl Expiry {
    fn message(self) -> &'static str {
        match self {
            Expiry::Handshake => "the connection sent nothing within the handshake timeout",
            Expiry::Header => "the request's head did not arrive within the header timeout",
            Expiry::Idle => "the connection was idle for longer than the idle timeout",
        }
    }
}

impl Activity {
    fn new(mode: Mode, limits: Limits) -> Self {
        let state =
            State { idle_since: Instant::now(), last_read: None, head_started: None, in_flight: 0, served: false };
        Self { mode, limits, state: Mutex::new(state), reader: AtomicWaker::new() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records bytes read at `now`.
    fn read(&self, now: Instant) {
        let mut state = self.state();
        state.last_read = Some(now);
        if self.mode == Mode::Requests && state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(now);
        }
    }

    /// When the connection expires if nothing changes, and why; `None` while a request is in flight.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        let state = self.state();
        let limits = &self.limits;
        match self.mode {
            Mode::Pinged => Some(match state.last_read {
                None => (state.idle_since + limits.handshake, Expiry::Handshake),
                Some(t) => (t + limits.idle, Expiry::Idle),
            }),
            Mode::Requests if state.in_flight > 0 => None,
            Mode::Requests => Some(match (state.head_started, state.served) {
                (Some(t), _) => (t + limits.handshake, Expiry::Header),
                (None, false) => (state.idle_since + limits.handshake, Expiry::Handshake),
                (None, true) => (state.idle_since + limits.idle, Expiry::Idle),
            }),
        }
    }

    /// Marks the start of a request, whose head has fully arrived: until the returned guard is dropped (keep it in
    /// the response body, see [`Tracked`]), the connection is not idle.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.served = true;
        state.head_started = None;
        drop(state);
        InFlight(self.clone())
    }

    /// The number of requests in flight.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }
}

/// A request in flight on a connection ([`Activity::begin`]); its end when dropped.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        let idle = state.in_flight == 0;
        if idle {
            state.idle_since = Instant::now();
            state.head_started = None;
        }
        drop(state);
        if idle {
            // The reader may be parked without a timer (it was busy): let it arm one.
            self.0.reader.wake();
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

/// A response body that keeps its request [`InFlight`] until it has been sent (or dropped).
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// `body`, keeping `in_flight` until it ends.
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self { body, _in_flight: in_flight }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An accepted connection: a `TcpStream` that fails its reads once its deadline passes ([`Mode`]) and its writes
/// once they make no progress for the idle timeout. It holds one of the listener's slots until dropped.
pub struct Conn {
    io: Io,
    peer: SocketAddr,
    /// The TCP addresses, read at accept (a TLS stream does not expose them while it handshakes).
    info: tonic::transport::server::TcpConnectInfo,
    activity: Arc<Activity>,
    /// The read deadline, and the instant it is set to.
    read_timer: Pin<Box<Sleep>>,
    read_armed: Option<Instant>,
    /// Since when writes have been blocked, and the timer for it.
    write_blocked: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    write_armed: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        tcp: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        limits: Limits,
        mode: Mode,
        tls: Option<&tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        let info = tonic::transport::server::Connected::connect_info(&tcp);
        let io = match tls {
            None => Io::Plain(tcp),
            Some(acceptor) => Io::Handshaking(Box::new(Handshake {
                accept: acceptor.accept(tcp),
                deadline: Box::pin(tokio::time::sleep(limits.handshake)),
                peer,
            })),
        };
        Self {
            io,
            peer,
            info,
            activity: Arc::new(Activity::new(mode, limits)),
            read_timer: Box::pin(tokio::time::sleep_until(far)),
            read_armed: None,
            write_blocked: None,
            write_timer: Box::pin(tokio::time::sleep_until(far)),
            write_armed: None,
            _permit: permit,
        }
    }

    /// The connection's activity, through which a server reports its requests ([`Mode::Requests`]).
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn timed_out(&self, what: &str) -> io::Error {
        tracing::debug!(peer = %self.peer, "closing a connection: {what}");
        io::Error::new(io::ErrorKind::TimedOut, what.to_string())
    }

    /// Polls a write-side operation, failing it once writes have been blocked for the idle timeout.
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Io>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.io), cx) {
            Poll::Ready(result) => {
                self.write_blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let since = *self.write_blocked.get_or_insert_with(Instant::now);
                let deadline = since + self.activity.limits.idle;
                if self.write_armed != Some(deadline) {
                    self.write_timer.as_mut().reset(deadline);
                    self.write_armed = Some(deadline);
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(self.timed_out("the peer read nothing for the idle timeout"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.read(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.activity.reader.register(cx.waker());
                let Some((deadline, why)) = this.activity.deadline() else {
                    return Poll::Pending;
                };
                if this.read_armed != Some(deadline) {
                    this.read_timer.as_mut().reset(deadline);
                    this.read_armed = Some(deadline);
                }
                match this.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out(why.message()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_with(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    /// The TCP addresses, as for a plain `TcpStream`: the proxy reads the peer's address from them.
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// A TLS handshake in progress, with its deadline.
struct Handshake {
    accept: tokio_rustls::Accept<TcpStream>,
    deadline: Pin<Box<Sleep>>,
    peer: SocketAddr,
}

/// What a [`Conn`] reads and writes: the TCP stream, or TLS over it (first its handshake).
enum Io {
    Plain(TcpStream),
    Handshaking(Box<Handshake>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed or timed out: every operation fails.
    Failed,
}

impl Io {
    /// Drives a TLS handshake to its end: `Ready(Ok)` once the stream is usable (at once when plain).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Io::Handshaking(handshake) = self else {
            return match self {
                Io::Failed => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed"))),
                _ => Poll::Ready(Ok(())),
            };
        };
        let peer = handshake.peer;
        match Pin::new(&mut handshake.accept).poll(cx) {
            Poll::Ready(Ok(tls)) => {
                *self = Io::Tls(Box::new(tls));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                *self = Io::Failed;
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                Poll::Ready(Err(e))
            }
            Poll::Pending => match handshake.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *self = Io::Failed;
                    let what = "the TLS handshake did not finish within the handshake timeout";
                    tracing::debug!(%peer, "closing a connection: {what}");
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// What a usable [`Io`] is: the TCP stream or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

impl Io {
    /// The stream to read or write, once the handshake (if any) is over; the handshake's error otherwise.
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Pin<&mut dyn Stream>>> {
        std::task::ready!(self.poll_handshake(cx))?;
        Poll::Ready(match self {
            Io::Plain(tcp) => Ok(Pin::new(tcp as &mut dyn Stream)),
            Io::Tls(tls) => Ok(Pin::new(tls.as_mut() as &mut dyn Stream)),
            Io::Handshaking(_) | Io::Failed => Err(io::Error::new(io::ErrorKind::NotConnected, "no TLS session")),
        })
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.get_mut().poll_stream(cx))?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.get_mut().poll_stream(cx))?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.get_mut().poll_stream(cx))?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
            Io::Handshaking(_) | Io::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.get_mut().poll_stream(cx))?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            // Nothing was sent: dropping the connection closes it.
            Io::Handshaking(_) | Io::Failed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Waits (up to 5 s) until a connection of `ended` ends with a time-out, and checks that it took at least `min`
    /// (and less than 3 s) since `started`.
    async fn trickler_times_out(
        ended: &mut tokio::sync::mpsc::UnboundedReceiver<io::ErrorKind>,
        started: std::time::Instant,
        min: Duration,
    ) {
        let timed_out = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(end) = ended.recv().await {
                if end == io::ErrorKind::TimedOut {
                    return;
                }
            }
        });
        timed_out.await.expect("the trickling client is closed in time");
        let elapsed = started.elapsed();
        assert!(elapsed >= min && elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    fn limits(max_connections: usize, handshake_ms: u64, idle_ms: u64) -> Limits {
        Limits { max_connections, handshake: Duration::from_millis(handshake_ms), idle: Duration::from_millis(idle_ms) }
    }

    /// A server on 127.0.0.1 whose connections are read (and discarded) until they fail or end; every connection's
    /// activity is sent on the returned channel, and how it ended when it does.
    async fn server(
        limits: Limits,
        mode: Mode,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Arc<Activity>>,
        tokio::sync::mpsc::UnboundedReceiver<io::ErrorKind>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener = Listener::new(tcp, limits, mode);
        let (conns, conns_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await;
                let _ = conns.send(conn.activity());
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let kind = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) => break io::ErrorKind::UnexpectedEof,
                            Ok(_) => {}
                            Err(e) => break e.kind(),
                        }
                    };
                    let _ = ended.send(kind);
                });
            }
        });
        (address, conns_rx, ended_rx)
    }

    /// Whether the server closed `client` within `within`: its read ends (EOF or reset) rather than timing out.
    async fn closed_within(client: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(within, client.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
        let (address, mut conns, _) = server(limits(2, 10_000, 10_000), Mode::Pinged).await;
        let mut first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        conns.recv().await.unwrap();
        conns.recv().await.unwrap();
        let mut third = TcpStream::connect(address).await.unwrap();
        assert!(closed_within(&mut third, Duration::from_secs(5)).await, "the third connection is closed at once");
        assert!(!closed_within(&mut first, Duration::from_millis(200)).await, "the first stays open");
        assert!(!closed_within(&mut second, Duration::from_millis(10)).await, "the second stays open");
        // A slot freed by a closed connection serves a new one.
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fourth = TcpStream::connect(address).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conns.recv()).await.expect("the fourth is served").unwrap();
        assert!(!closed_within(&mut fourth, Duration::from_millis(200)).await);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        for mode in [Mode::Pinged, Mode::Requests] {
            let (address, _, mut ended) = server(limits(8, 600, 10_000), mode).await;
            let mut client = TcpStream::connect(address).await.unwrap();
            let started = std::time::Instant::now();
            assert!(!closed_within(&mut client, Duration::from_millis(300)).await, "{mode:?}: not before");
            assert!(closed_within(&mut client, Duration::from_secs(5)).await, "{mode:?}: closed");
            assert!(started.elapsed() >= Duration::from_millis(550), "{mode:?}: {:?}", started.elapsed());
            assert_eq!(ended.recv().await, Some(io::ErrorKind::TimedOut));
        }
    }

    #[tokio::test]
    async fn pinged_connections_stay_open_while_they_send_and_close_when_idle() {
        let (address, _, mut ended) = server(limits(8, 300, 600), Mode::Pinged).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        // A byte every 200 ms (a peer answering pings) for three idle timeouts.
        for _ in 0..9 {
            client.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!closed_within(&mut client, Duration::from_millis(100)).await, "still open");
        assert!(closed_within(&mut client, Duration::from_secs(5)).await, "closed once it stops");
        assert_eq!(ended.recv().await, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn a_request_head_must_arrive_in_time_even_when_bytes_trickle() {
        let (address, _, mut ended) = server(limits(8, 600, 10_000), Mode::Requests).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        // Slowloris: a byte every 100 ms, the head never completes (nothing calls `begin`).
        let started = std::time::Instant::now();
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // The quick client's connection ends when it is dropped (EOF); the trickling one times out.
        trickler_times_out(&mut ended, started, Duration::from_millis(550)).await;
        trickle.abort();
    }

    #[tokio::test]
    async fn requests_in_flight_keep_a_quiet_connection_open() {
        let (address, mut conns, mut ended) = server(limits(8, 300, 500), Mode::Requests).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        let activity = conns.recv().await.unwrap();
        client.write_all(b"GET /watch HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The server has read the head and answers with a stream: nothing more arrives for several timeouts.
        let request = activity.begin();
        assert_eq!(activity.in_flight(), 1);
        assert!(!closed_within(&mut client, Duration::from_millis(1500)).await, "a quiet stream is not cut");
        // Once the response ends, the idle timeout applies again (and wakes the parked reader).
        drop(request);
        assert_eq!(activity.in_flight(), 0);
        let started = std::time::Instant::now();
        assert!(closed_within(&mut client, Duration::from_secs(5)).await, "closed when idle");
        assert!(started.elapsed() >= Duration::from_millis(400), "after the idle timeout: {:?}", started.elapsed());
        assert_eq!(ended.recv().await, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener = Listener::new(tcp, limits(8, 10_000, 500), Mode::Requests);
        let _client = TcpStream::connect(address).await.unwrap();
        let (mut conn, _) = listener.accept().await;
        let _request = conn.activity().begin();
        // The client never reads: the socket buffers fill, then the write stalls and fails.
        let chunk = vec![0u8; 1 << 20];
        let written = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Err(e) = conn.write_all(&chunk).await {
                    return e.kind();
                }
            }
        })
        .await;
        assert_eq!(written, Ok(io::ErrorKind::TimedOut));
    }

    /// A TLS server configuration for `localhost` and a client configuration that trusts it.
    fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = made.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TLS echo server: each connection's handshake and echo run in a task of their own, as in the real servers;
    /// the peer address each connection reports is sent on the channel, and how each ended.
    async fn tls_echo(
        limits: Limits,
        config: Arc<rustls::ServerConfig>,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Option<SocketAddr>>,
        tokio::sync::mpsc::UnboundedReceiver<io::ErrorKind>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener = Listener::new(tcp, limits, Mode::Pinged).with_tls(Some(config));
        assert!(listener.is_tls());
        let (peers, peers_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await;
                let info = tonic::transport::server::Connected::connect_info(&conn);
                let _ = peers.send(info.remote_addr());
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let kind = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) => break io::ErrorKind::UnexpectedEof,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).await.is_err() || conn.flush().await.is_err() {
                                    break io::ErrorKind::BrokenPipe;
                                }
                            }
                            Err(e) => break e.kind(),
                        }
                    };
                    let _ = ended.send(kind);
                });
            }
        });
        (address, peers_rx, ended_rx)
    }

    async fn tls_client(
        address: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(address).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    }

    #[tokio::test]
    async fn tls_connections_carry_data_and_report_the_peer() {
        let (server, client) = tls_pair();
        let (address, mut peers, _) = tls_echo(limits(8, 2_000, 10_000), server).await;
        let mut tls = tls_client(address, client).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let local = tls.get_ref().0.local_addr().unwrap();
        assert_eq!(peers.recv().await.unwrap(), Some(local), "the peer's address, as for plain TCP");
    }

    #[tokio::test]
    async fn a_plaintext_client_gets_nothing_from_a_tls_listener() {
        let (server, _) = tls_pair();
        let (address, _, mut ended) = tls_echo(limits(8, 2_000, 10_000), server).await;
        let mut plain = TcpStream::connect(address).await.unwrap();
        plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await.expect("closed");
        assert!(!buf.windows(4).any(|w| w == b"PRI "), "nothing is echoed in clear: {buf:?}");
        let end = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.unwrap().unwrap();
        assert_ne!(end, io::ErrorKind::UnexpectedEof, "the handshake failed");
    }

    #[tokio::test]
    async fn a_tls_handshake_must_finish_within_the_handshake_timeout_and_blocks_no_one() {
        let (server, client) = tls_pair();
        // The idle timeout is long: only the handshake timeout can close the trickling client.
        let (address, _, mut ended) = tls_echo(limits(8, 800, 30_000), server).await;

        // A client that trickles the start of a ClientHello (a TLS record header, then a byte every 100 ms).
        let mut slow = TcpStream::connect(address).await.unwrap();
        let started = std::time::Instant::now();
        let trickle = tokio::spawn(async move {
            let _ = slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
            for _ in 0..100 {
                if slow.write_all(&[0x01]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slow
        });
        // Meanwhile another client is served at once: the handshake does not hold up the accept loop.
        let quick = tokio::time::timeout(Duration::from_millis(500), tls_client(address, client)).await;
        assert!(quick.is_ok_and(|c| c.is_ok()), "a second client completes its handshake");

        // The quick client's connection ends when it is dropped (EOF); the trickling one times out.
        trickler_times_out(&mut ended, started, Duration::from_millis(700)).await;
        trickle.abort();
    }

    #[test]
    fn keepalive_fits_in_the_idle_timeout() {
        let defaults = Limits::default();
        assert_eq!(defaults.keepalive_interval(), KEEPALIVE_INTERVAL);
        assert!(defaults.keepalive_interval() * 2 < defaults.idle);
        let short = limits(1, 100, 900);
        assert_eq!(short.keepalive_interval(), Duration::from_millis(300));
        assert_eq!(short.keepalive_timeout(), Duration::from_millis(300));
    }

    #[test]
    fn deadlines_follow_the_mode() {
        let l = limits(1, 1_000, 5_000);
        let pinged = Activity::new(Mode::Pinged, l);
        let (at, why) = pinged.deadline().unwrap();
        assert_eq!(why, Expiry::Handshake);
        let now = Instant::now();
        pinged.read(now);
        assert_eq!(pinged.deadline(), Some((now + l.idle, Expiry::Idle)));
        assert!(at < now + l.idle);

        let requests = Arc::new(Activity::new(Mode::Requests, l));
        assert_eq!(requests.deadline().map(|d| d.1), Some(Expiry::Handshake));
        let now = Instant::now();
        requests.read(now);
        assert_eq!(requests.deadline(), Some((now + l.handshake, Expiry::Header)));
        // More bytes of the same head do not move the deadline.
        requests.read(now + Duration::from_millis(500));
        assert_eq!(requests.deadline(), Some((now + l.handshake, Expiry::Header)));
        let request = requests.begin();
        assert_eq!(requests.deadline(), None);
        requests.read(Instant::now());
        assert_eq!(requests.deadline(), None, "bytes of a request's body change nothing");
        drop(request);
        assert_eq!(requests.deadline().map(|d| d.1), Some(Expiry::Idle));
    }
}
