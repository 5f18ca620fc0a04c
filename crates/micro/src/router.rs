//! The service's gRPC router: each request goes to the added service named by the first segment of its path
//! (`/helloworld.Helloworld/Call` → `helloworld.Helloworld`); any other path is answered `UNIMPLEMENTED`.
//! It does what tonic's `Routes` does without pulling axum into every service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// A gRPC service as the router holds it: requests in, responses out, never failing (errors are statuses).
pub type GrpcService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Routes requests to services by their protobuf service name. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<HashMap<String, GrpcService>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("services", &self.routes.keys().collect::<Vec<_>>()).finish()
    }
}

impl Router {
    /// Adds a tonic service (a generated `…Server`) under its name; a later service of the same name replaces it.
    pub fn add_service<S>(&mut self, svc: S)
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Arc::make_mut(&mut self.routes).insert(S::NAME.to_string(), BoxCloneSyncService::new(svc));
    }

    /// The names of the services added.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

impl tower::Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let name = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
        match self.routes.get(name) {
            Some(svc) => Box::pin(svc.clone().oneshot(req)),
            None => {
                let status = tonic::Status::unimplemented(format!("this service does not serve {name:?}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_services_are_unimplemented() {
        let mut router = Router::default();
        let mut health = tonic_health::server::health_reporter().1;
        let _ = &mut health;
        router.add_service(health);
        assert_eq!(router.services().collect::<Vec<_>>(), ["grpc.health.v1.Health"]);
        let req = http::Request::builder().uri("/nope.Nope/Call").body(Body::empty()).expect("a request");
        let response = router.clone().oneshot(req).await.expect("infallible");
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("nope.Nope"), "{}", status.message());
    }
}
