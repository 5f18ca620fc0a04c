//! The broker section of the building-blocks benchmark.

use crate::Bench;

/// Runs the broker measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    let _ = bench;
    println!("broker: not measured yet");
    Ok(())
}
