//! A bare HTTP/2 forwarder: the reference point for what any extra gRPC hop costs on this machine.
//!
//! It is the proxy without micro: the same tonic server stack (accepting with `TCP_NODELAY`), a fallback service
//! that hands every request unchanged to one cached tonic channel to helloworld, and nothing else: no registry
//! lookup, no auth, no routing. The gap between it and direct calls is the price of a hop; the gap between the
//! proxy and it is micro's own overhead.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

/// Forwards every request on `listener` to `target` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let channel: Channel = Endpoint::from_shared(format!("http://{target}"))?.tcp_nodelay(true).connect_lazy();
    let forward = tower::service_fn(move |req: http::Request<axum::body::Body>| {
        let channel = channel.clone();
        async move {
            let (parts, body) = req.into_parts();
            let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
            Ok::<_, Infallible>(match channel.oneshot(req).await {
                Ok(rsp) => rsp.map(axum::body::Body::new),
                Err(e) => tonic::Status::unavailable(format!("forwarding failed: {e}")).into_http(),
            })
        }
    });
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(forward));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, shutdown).await
}
