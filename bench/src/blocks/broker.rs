//! The broker section of the building-blocks benchmark: messages per second through one streaming publish
//! (`Broker.PublishStream`) to one subscriber (`Broker.Subscribe`), both through the proxy, each on its own HTTP/2
//! connection. What counts is what the subscriber receives; delivery is at most once, so messages the subscriber
//! could not take in time are dropped, and reported. Reference: NATS does about 1.4 M msg/s here; the target is at
//! least 100 k msg/s.

use crate::Bench;
use micro_core::proto::broker::{Message, PublishRequest, SubscribeRequest, broker_client::BrokerClient};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Messages per round.
const MESSAGES: u64 = 500_000;
/// Body size, as `nats bench`'s default.
const BODY: usize = 128;
/// Rounds.
const ROUNDS: usize = 3;
/// The subscriber is done once nothing arrived for this long after the publisher finished.
const IDLE: Duration = Duration::from_millis(500);

struct Round {
    sent: u64,
    received: u64,
    elapsed: Duration,
    publish: Duration,
}

async fn round(bench: &Bench, topic: &str) -> anyhow::Result<Round> {
    // Separate connections, as separate processes would have.
    let sub_conn = bench.connection()?;
    let pub_conn = bench.connection()?;
    let mut stream = BrokerClient::new(sub_conn.channel())
        .subscribe(sub_conn.request(SubscribeRequest { topic: topic.into(), queue: String::new() }))
        .await?
        .into_inner();
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    let counter = {
        let (received, last) = (received.clone(), last.clone());
        tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {
                received.fetch_add(1, Ordering::Relaxed);
                *last.lock().unwrap() = Instant::now();
            }
        })
    };

    let body = vec![b'x'; BODY];
    let topic = topic.to_string();
    let requests = tokio_stream::iter(0..MESSAGES).map(move |_| PublishRequest {
        topic: topic.clone(),
        message: Some(Message { header: Default::default(), body: body.clone() }),
    });
    let start = Instant::now();
    let sent =
        BrokerClient::new(pub_conn.channel()).publish_stream(pub_conn.request(requests)).await?.into_inner().count;
    let publish = start.elapsed();
    loop {
        let before = received.load(Ordering::Relaxed);
        if before >= sent {
            break;
        }
        tokio::time::sleep(IDLE).await;
        if received.load(Ordering::Relaxed) == before {
            break;
        }
    }
    counter.abort();
    let received = received.load(Ordering::Relaxed);
    let elapsed = last.lock().unwrap().duration_since(start);
    Ok(Round { sent, received, elapsed, publish })
}

/// Runs the broker measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    println!();
    println!("broker: streaming publish to one subscriber, {MESSAGES} messages of {BODY} bytes per round");
    println!("  round        sent    received     dropped   received msg/s   publish msg/s");
    let mut best = 0.0f64;
    for i in 0..ROUNDS {
        let r = round(bench, &format!("bench-{i}")).await?;
        let rate = r.received as f64 / r.elapsed.as_secs_f64().max(1e-9);
        let publish_rate = r.sent as f64 / r.publish.as_secs_f64().max(1e-9);
        best = best.max(rate);
        println!(
            "  {:>5}  {:>10}  {:>10}  {:>10}  {:>15}  {:>14}",
            i + 1,
            r.sent,
            r.received,
            r.sent - r.received.min(r.sent),
            crate::stats::thousands(rate),
            crate::stats::thousands(publish_rate),
        );
    }
    println!(
        "  best: {} msg/s received (target ≥ 100,000; NATS ≈ 1,400,000 msg/s on this machine: {:.1} %)",
        crate::stats::thousands(best),
        best / 1_400_000.0 * 100.0
    );
    Ok(())
}
