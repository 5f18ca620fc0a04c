//! Serving gRPC: the listener with its limits and timeouts ([`conn`]), TLS when given, and a graceful shutdown that
//! drains open calls for [`DRAIN_TIMEOUT`]. Services built with the library and `micro server` serve the same way.

pub use crate::conn;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long open connections may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `routes` on `incoming` until `shutdown`, over TLS with `tls` when given (ALPN `h2`; the handshake runs in
/// each connection, bounded by the handshake timeout of [`conn`]); then runs `on_shutdown`, lets connections drain
/// for at most [`DRAIN_TIMEOUT`], and returns. Connections are limited and time out as [`conn`] describes.
pub async fn serve_grpc<S>(
    routes: S,
    incoming: tokio_stream::wrappers::TcpListenerStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    // The connection limit and the handshake and idle timeouts (`conn`); the listener also sets TCP_NODELAY on
    // every connection (`Server::tcp_nodelay` does not apply to a listener we pass in). Live peers answer the
    // keepalive pings, so their connections, and long streams on them, never look idle.
    let limits = conn::Limits::from_env();
    let incoming = conn::Listener::new(incoming.into_inner(), limits, conn::Mode::Pinged).with_tls(tls).into_stream();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .serve_with_incoming_shutdown(routes, incoming, async move {
            shutdown.await;
            let _ = begun_tx.send(());
            on_shutdown.await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served,
        _ = async {
            if begun_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them");
            Ok(())
        }
    }
}
