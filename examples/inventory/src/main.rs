//! Runs the inventory service: it registers with the micro server at `MICRO_PROXY` (default 127.0.0.1:8081),
//! queues a `collect` task per region every 2 s and runs them, as the service account in MICRO_AUTH_ID /
//! MICRO_AUTH_SECRET when the runtime started it.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    micro::init_logging();
    let client = match micro::client::Client::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inventory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match inventory::service(&client).run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inventory: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
