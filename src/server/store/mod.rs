//! The store service: durable key-value records in redb, per database (namespace) and table, with group commit.

use super::{CoreContext, ServerError};

/// Starts the store service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let _ = (ctx, routes);
    Ok(())
}
