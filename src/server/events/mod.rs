//! The events service: durable streams with consumer groups, acknowledgements and redelivery.

use super::{CoreContext, ServerError};

/// Starts the events service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let _ = (ctx, routes);
    Ok(())
}
