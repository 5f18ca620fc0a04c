//! How busy the machine was during a measurement, from `/proc/stat` and `/proc/self/stat` (Linux only).
//!
//! Figures from a shared 2-core machine are only as good as its quiet: a compiler running next to the benchmark, or
//! a hypervisor that steals time from the VM, moves every number. Each phase therefore prints the share of CPU time
//! that was busy, the part of it that the benchmark itself (and its child processes) used, and the steal time, so
//! that a noisy run can be recognised as one.

use std::time::Instant;

/// CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    at: Instant,
    /// Jiffies of all CPUs: busy (user, nice, system, irq, softirq), idle (idle, iowait), steal.
    busy: u64,
    idle: u64,
    steal: u64,
    /// Jiffies of this process and its waited-for children (user + system).
    ours: u64,
}

impl Snapshot {
    /// Reads the counters; `None` where `/proc` is unavailable.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> =
            stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest: Vec<u64> =
            own.rsplit_once(')')?.1.split_whitespace().skip(11).take(4).filter_map(|v| v.parse().ok()).collect();
        Some(Self {
            at: Instant::now(),
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
            ours: rest.iter().sum(),
        })
    }

    /// What happened between `self` and `later`, in words: `busy 78% (bench 70%), steal 20%`.
    pub fn describe_until(&self, later: &Snapshot) -> String {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        let total = busy + idle + steal;
        if total <= 0.0 || later.at <= self.at {
            return "no CPU figures".into();
        }
        let pct = |v: f64| 100.0 * v / total;
        format!(
            "machine busy {:.0}% (this benchmark {:.0}%, others {:.0}%), hypervisor steal {:.0}%",
            pct(busy),
            pct(ours.min(busy)),
            pct((busy - ours).max(0.0)),
            pct(steal)
        )
    }
}

/// Prints how busy the machine was since `start` (when both readings exist).
pub fn report(start: Option<Snapshot>) {
    if let (Some(start), Some(end)) = (start, Snapshot::now()) {
        println!("  ({})", start.describe_until(&end));
    }
}
