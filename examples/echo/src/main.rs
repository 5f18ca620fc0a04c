//! Runs the echo service: it registers with the micro server at `MICRO_PROXY` (default 127.0.0.1:8081).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    micro::init_logging();
    match echo::service().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
