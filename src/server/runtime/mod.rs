//! The runtime service: a process manager that builds, runs, supervises and logs services.

use super::{CoreContext, ServerError};

/// Starts the runtime service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let _ = (ctx, routes);
    Ok(())
}
