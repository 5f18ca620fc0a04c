//! The events section of the building-blocks benchmark.

use crate::Bench;

/// Runs the events measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    let _ = bench;
    println!("events: not measured yet");
    Ok(())
}
