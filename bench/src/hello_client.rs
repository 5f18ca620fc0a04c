//! `hello-client`: the minimal compiled tonic client that `micro helloworld call` is timed against.
//!
//! It is what a user would write by hand with the generated client: connect to one address (the micro proxy),
//! call `helloworld.Helloworld/Call` once and print the reply. The proxy requires an account for service calls, so
//! it sends `authorization: Bearer $MICRO_AUTH_TOKEN` when that variable is set (`micro user token` prints one).
//! Usage: `hello-client HOST:PORT [NAME]`.

use helloworld::pb::{CallRequest, helloworld_client::HelloworldClient};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        eprintln!("usage: hello-client HOST:PORT [NAME]");
        return ExitCode::from(2);
    };
    let name = args.next().unwrap_or_else(|| "x".to_string());
    let mut client = match HelloworldClient::connect(format!("http://{address}")).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hello-client: cannot connect to {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut request = tonic::Request::new(CallRequest { name });
    if let Some(token) = std::env::var("MICRO_AUTH_TOKEN").ok().filter(|t| !t.is_empty()) {
        match format!("Bearer {token}").parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => {
                eprintln!("hello-client: MICRO_AUTH_TOKEN is not a valid header value");
                return ExitCode::from(2);
            }
        }
    }
    match client.call(request).await {
        Ok(reply) => {
            println!("{}", reply.into_inner().msg);
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!("hello-client: {status}");
            ExitCode::FAILURE
        }
    }
}
