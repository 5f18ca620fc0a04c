//! When a schedule fires: every so many milliseconds, every hour at a minute, or by a cron expression with seconds
//! (UTC). [`Timetable::parse`] checks a schedule's `when` and [`Timetable::next_after`] gives its next firing.
//!
//! Firings missed while no server ran are not replayed: the schedule fires once when a server is back (its
//! `next_ms` is in the past), and its next firing is computed from that moment on.

use chrono::{DateTime, TimeZone, Utc};
use micro_core::proto::tasks::schedule::When;
use std::str::FromStr;

/// The shortest interval `every_ms` may have.
pub const MIN_EVERY_MS: u64 = 100;
/// The longest interval (a year).
pub const MAX_EVERY_MS: u64 = 366 * 24 * 3600 * 1000;

/// A parsed timetable.
#[derive(Clone, Debug)]
pub enum Timetable {
    /// Every so many milliseconds.
    Every(u64),
    /// Every hour at this minute.
    HourlyAt(u32),
    /// A cron expression with seconds, in UTC.
    Cron(Box<cron::Schedule>),
}

impl Timetable {
    /// Reads a schedule's `when`; the error says what is wrong and how to write it.
    pub fn parse(when: Option<&When>) -> Result<Timetable, String> {
        match when {
            None => Err("the schedule has no timetable: give one of --every, --cron or --hourly-at".into()),
            Some(When::EveryMs(ms)) => {
                if *ms < MIN_EVERY_MS {
                    Err(format!(
                        "interval {ms}ms is too short: schedules fire at most every {MIN_EVERY_MS}ms (--every 100ms)"
                    ))
                } else if *ms > MAX_EVERY_MS {
                    Err(format!(
                        "interval {ms}ms is too long: at most a year (--every 366d); use --cron for rarer work"
                    ))
                } else {
                    Ok(Timetable::Every(*ms))
                }
            }
            Some(When::HourlyAt(minute)) => {
                if *minute > 59 {
                    Err(format!("hourly-at minute {minute} is out of range: give a minute from 0 to 59"))
                } else {
                    Ok(Timetable::HourlyAt(*minute))
                }
            }
            Some(When::Cron(text)) => parse_cron(text).map(|c| Timetable::Cron(Box::new(c))),
        }
    }

    /// The first firing strictly after `now_ms` (Unix milliseconds), `None` if it never fires again.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        match self {
            Timetable::Every(ms) => Some(now_ms.saturating_add(*ms as i64)),
            Timetable::HourlyAt(minute) => {
                const HOUR: i64 = 3_600_000;
                let offset = i64::from(*minute) * 60_000;
                let hour_start = now_ms.div_euclid(HOUR) * HOUR;
                let candidate = hour_start + offset;
                Some(if candidate > now_ms { candidate } else { candidate + HOUR })
            }
            Timetable::Cron(schedule) => {
                let now: DateTime<Utc> = Utc.timestamp_millis_opt(now_ms).single()?;
                schedule.after(&now).next().map(|t| t.timestamp_millis())
            }
        }
    }
}

/// Parses a cron expression with seconds: six or seven fields (`sec min hour day-of-month month day-of-week
/// [year]`), in UTC.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    if fields == 5 {
        return Err(format!(
            "cron expression {text:?} has 5 fields; micro's cron has seconds: add a seconds field first, \
             e.g. \"0 {}\" (sec min hour day-of-month month day-of-week)",
            text.trim()
        ));
    }
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "cron expression {text:?} has {fields} fields; give 6 or 7: sec min hour day-of-month month \
             day-of-week [year], e.g. \"0 */5 * * * *\""
        ));
    }
    let schedule = cron::Schedule::from_str(text.trim()).map_err(|e| {
        // The parser's message repeats the expression with a caret line above the reason: keep the reason.
        let message = e.to_string();
        let reason = message.lines().last().unwrap_or_default().trim().to_string();
        format!("cron expression {text:?} is invalid: {reason} Example: \"0 */5 * * * *\" (every 5 minutes)")
    })?;
    if schedule.after(&Utc::now()).next().is_none() {
        return Err(format!("cron expression {text:?} never fires again"));
    }
    Ok(schedule)
}

/// A short description of a timetable, for listings: `every 10s`, `hourly at :15`, `cron 0 */5 * * * *`.
pub fn describe(when: Option<&When>) -> String {
    match when {
        None => String::new(),
        Some(When::EveryMs(ms)) => format!("every {}", format_ms(*ms)),
        Some(When::HourlyAt(m)) => format!("hourly at :{m:02}"),
        Some(When::Cron(c)) => format!("cron {c}"),
    }
}

/// Milliseconds as a short duration: `500ms`, `10s`, `1m30s`, `2h`.
pub fn format_ms(ms: u64) -> String {
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_have_bounds() {
        assert!(matches!(Timetable::parse(Some(&When::EveryMs(1000))), Ok(Timetable::Every(1000))));
        let e = Timetable::parse(Some(&When::EveryMs(10))).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        assert!(Timetable::parse(None).unwrap_err().contains("--every"));
        assert_eq!(Timetable::Every(1000).next_after(5), Some(1005));
    }

    #[test]
    fn hourly_at_fires_at_the_minute_of_each_hour() {
        let t = Timetable::parse(Some(&When::HourlyAt(15))).unwrap();
        let hour = 3_600_000;
        assert_eq!(t.next_after(10 * hour), Some(10 * hour + 15 * 60_000));
        assert_eq!(t.next_after(10 * hour + 15 * 60_000), Some(11 * hour + 15 * 60_000));
        assert_eq!(t.next_after(10 * hour + 20 * 60_000), Some(11 * hour + 15 * 60_000));
        assert!(Timetable::parse(Some(&When::HourlyAt(60))).unwrap_err().contains("0 to 59"));
    }

    #[test]
    fn cron_has_seconds_and_refuses_five_fields() {
        let t = Timetable::parse(Some(&When::Cron("*/2 * * * * *".into()))).unwrap();
        assert_eq!(t.next_after(1_000), Some(2_000));
        assert_eq!(t.next_after(2_000), Some(4_000));
        let e = Timetable::parse(Some(&When::Cron("*/5 * * * *".into()))).unwrap_err();
        assert!(e.contains("add a seconds field first") && e.contains("\"0 */5 * * * *\""), "{e}");
        let e = Timetable::parse(Some(&When::Cron("0 61 * * * *".into()))).unwrap_err();
        assert!(e.contains("is invalid"), "{e}");
        let e = Timetable::parse(Some(&When::Cron("nope".into()))).unwrap_err();
        assert!(e.contains("has 1 fields"), "{e}");
    }

    #[test]
    fn descriptions() {
        assert_eq!(describe(Some(&When::EveryMs(10_000))), "every 10s");
        assert_eq!(describe(Some(&When::EveryMs(90_000))), "every 1m30s");
        assert_eq!(describe(Some(&When::EveryMs(500))), "every 500ms");
        assert_eq!(describe(Some(&When::HourlyAt(5))), "hourly at :05");
    }
}
