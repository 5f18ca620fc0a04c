//! The events section of the building-blocks benchmark: publish-to-consume latency (one event at a time: publish,
//! then wait for a live consumer of the topic to receive it; every publish is durable, fsynced, when it returns),
//! and publish throughput with 64 concurrent publishers, where group commit shares each transaction.

use crate::Bench;
use crate::stats::{Samples, ms, thousands};
use micro::client::Client;
use micro::events::{ConsumeOptions, Events};
use std::time::{Duration, Instant};

/// Sequential publish → consume samples.
const LATENCY_SAMPLES: usize = 500;
/// Concurrent publishers, and events each publishes.
const PUBLISHERS: usize = 64;
const PER_PUBLISHER: usize = 50;

/// Runs the events measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    let client = Client::new(&bench.proxy, micro_core::DEFAULT_NAMESPACE)?.with_token(&bench.token);
    let events = Events::from_client(&client);
    let consumer_client = Client::new(&bench.proxy, micro_core::DEFAULT_NAMESPACE)?.with_token(&bench.token);
    let mut consumer =
        Events::from_client(&consumer_client).consume("latency", ConsumeOptions::group("bench").auto_ack()).await?;

    let mut end_to_end = Vec::with_capacity(LATENCY_SAMPLES);
    let mut publish = Vec::with_capacity(LATENCY_SAMPLES);
    let payload = vec![b'x'; 128];
    for _ in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        events.publish("latency", payload.clone(), Default::default()).await?;
        publish.push(start.elapsed());
        match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(_))) => end_to_end.push(start.elapsed()),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("the consumer ended"),
            Err(_) => anyhow::bail!("an event did not arrive within 10 s"),
        }
    }
    let e2e = Samples::new(end_to_end);
    let publish = Samples::new(publish);
    println!();
    println!("events: {LATENCY_SAMPLES} events of 128 bytes, one at a time, to a live consumer (auto-ack)");
    println!("                        p50       p99       max");
    println!(
        "  publish (durable) {:>7.2} ms {:>7.2} ms {:>7.2} ms",
        ms(publish.median()),
        ms(publish.percentile(99.0)),
        ms(publish.max())
    );
    println!(
        "  publish → consume {:>7.2} ms {:>7.2} ms {:>7.2} ms",
        ms(e2e.median()),
        ms(e2e.percentile(99.0)),
        ms(e2e.max())
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let events = events.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_PUBLISHER {
                events.publish("throughput", payload.clone(), Default::default()).await?;
            }
            Ok::<_, micro::events::EventsError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = PUBLISHERS * PER_PUBLISHER;
    let elapsed = start.elapsed();
    println!(
        "  {PUBLISHERS} concurrent publishers: {total} durable events in {:.2} s = {} events/s (group commit)",
        elapsed.as_secs_f64(),
        thousands(total as f64 / elapsed.as_secs_f64())
    );
    Ok(())
}
