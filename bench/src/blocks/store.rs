//! The store section of the building-blocks benchmark.

use crate::Bench;

/// Runs the store measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    let _ = bench;
    println!("store: not measured yet");
    Ok(())
}
