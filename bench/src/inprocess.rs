//! What the benchmarks that run `micro server` in their own process share: the `micro` binary built beside them,
//! the admin's password and login, helloworld started and waited for until it is registered, and how a finished
//! server task ended.

use anyhow::{Context, bail, ensure};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The admin's password of the benchmarks' fresh servers (set when the server creates the admin).
pub(crate) const ADMIN_PASSWORD: &str = "bench-admin";
/// How long a server or helloworld may take to start.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `micro` binary of the same build (`target/release/micro` beside `target/release/<bench>`).
pub(crate) fn micro_bin() -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(format!("micro{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("{} is missing: build it first with `cargo build --release --workspace`", bin.display());
    }
    Ok(bin)
}

/// How a finished task ended, in words.
pub(crate) fn outcome<E: std::fmt::Display>(joined: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match joined {
        Ok(Ok(())) => "without an error".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("it panicked: {e}"),
    }
}

/// An access token of the admin (`Auth.Token`, as `micro login` does), asked until the server answers or
/// [`START_TIMEOUT`] passes; fails early with the server's own error if `server` has stopped.
pub(crate) async fn admin_token<E: std::fmt::Display>(
    conn: &micro_client::Connection,
    server: &mut JoinHandle<Result<(), E>>,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if server.is_finished() {
            bail!("the micro server stopped: {}", outcome(server.await));
        }
        let req = conn.request(micro_core::proto::auth::TokenRequest {
            id: "admin".into(),
            secret: ADMIN_PASSWORD.into(),
            ..Default::default()
        });
        match conn.auth().token(req).await {
            Ok(rsp) => {
                let token = rsp.into_inner().token.context("no token")?.access_token;
                ensure!(!token.is_empty(), "the server answered the admin's login with an empty token");
                return Ok(token);
            }
            Err(status) if Instant::now() > deadline => bail!("cannot log in as the admin: {}", status.message()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Starts helloworld on the service library (it registers through `proxy` with the server's local credential) and
/// waits until the registry lists its node: its address. Fails early if `server` or helloworld stops.
pub(crate) async fn serve_helloworld<E: std::fmt::Display>(
    conn: &micro_client::Connection,
    proxy: SocketAddr,
    server: &mut JoinHandle<Result<(), E>>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut hello =
        tokio::spawn(helloworld::service().proxy(proxy.to_string()).serve(listener, std::future::pending()));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if server.is_finished() {
            bail!("the micro server stopped: {}", outcome(server.await));
        }
        if hello.is_finished() {
            bail!("helloworld stopped: {}", outcome((&mut hello).await));
        }
        let last = match conn.get_service("helloworld").await {
            Ok(services) if services.iter().flat_map(|s| &s.nodes).any(|n| n.address == address.to_string()) => {
                return Ok(address);
            }
            Ok(_) => "registered without our node".to_string(),
            Err(status) => status.message().to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "helloworld did not register within {START_TIMEOUT:?} (last answer: {last}); it needs the server's \
                 local credential, found through the locator in the default micro data dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
