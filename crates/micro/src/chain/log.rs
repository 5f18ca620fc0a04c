//! The request log: one line per call.

use super::{Call, Outcome};
use std::time::Duration;

/// Logs `call`'s line: endpoint, account, code, duration (target `micro::chain`; info, or warn for a server fault).
pub(crate) fn line(call: &Call, outcome: &Outcome, elapsed: Duration) {
    let account = call.account.as_ref().map_or("-", |a| a.id.as_str());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let code = outcome.code;
    match code {
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => tracing::warn!(
            target: "micro::chain", endpoint = %call.endpoint, account, code = ?code, duration_ms,
            error = %outcome.message, "call"
        ),
        _ => tracing::info!(
            target: "micro::chain", endpoint = %call.endpoint, account, code = ?code, duration_ms, "call"
        ),
    }
}
