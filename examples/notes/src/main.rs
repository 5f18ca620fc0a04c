//! Runs the notes service: it registers with the micro server at `MICRO_PROXY` (default 127.0.0.1:8081) and uses
//! the store, config, broker and events through it, as the service account in MICRO_AUTH_ID / MICRO_AUTH_SECRET
//! when the runtime started it.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    micro::init_logging();
    let client = match micro::client::Client::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("notes: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let handler = notes::Handler::new(&client);
    handler.spawn_workers();
    match notes::service(handler).run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
