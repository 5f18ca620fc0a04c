//! The config service: one JSON document per namespace, addressed by dot paths, with secrets encrypted at rest.

use super::{CoreContext, ServerError};

/// Starts the config service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let _ = (ctx, routes);
    Ok(())
}
