//! Virtual time: microseconds since the start of a run, and the durations scenarios
//! write ("250ms", "1.5s", "10m", "2h").
//!
//! The core counts milliseconds since the Unix epoch ([`Timestamp`]); the simulator
//! counts microseconds from an arbitrary but fixed epoch, so that one-way underlay
//! latencies below a millisecond still order packets, and maps between the two with
//! [`SimTime::to_timestamp`]. smoltcp gets its own `Instant` built from virtual time,
//! never from its `Instant::now()`.

use std::fmt;
use std::time::Duration;

use weft_core::Timestamp;

/// Where virtual time 0 lies on the core's clock: 2023-11-14, so that lease expiries in
/// traces look like real ones.
pub const EPOCH_MILLIS: u64 = 1_700_000_000_000;

/// A point in virtual time: microseconds since the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SimTime(pub u64);

impl SimTime {
    /// The start of every run.
    pub const ZERO: SimTime = SimTime(0);

    /// `d` after the start.
    pub fn from_duration(d: Duration) -> SimTime {
        SimTime(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// Time since the start.
    pub fn as_duration(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// The core's timestamp for this instant on a clock `offset_ms` away from the store's.
    pub fn to_timestamp(self, offset_ms: i64) -> Timestamp {
        let ms = (EPOCH_MILLIS + self.0 / 1000).saturating_add_signed(offset_ms);
        Timestamp::from_millis(ms)
    }

    /// The first virtual instant at which a clock `offset_ms` away reads `t` or later.
    pub fn from_timestamp(t: Timestamp, offset_ms: i64) -> SimTime {
        let local = t.as_millis().saturating_add_signed(-offset_ms);
        SimTime(local.saturating_sub(EPOCH_MILLIS).saturating_mul(1000))
    }

    /// smoltcp's view of this instant.
    pub fn to_smoltcp(self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    /// The virtual instant smoltcp means by `i` (clamped at the start).
    pub fn from_smoltcp(i: smoltcp::time::Instant) -> SimTime {
        SimTime(u64::try_from(i.total_micros()).unwrap_or(0))
    }
}

impl std::ops::Add<Duration> for SimTime {
    type Output = SimTime;
    fn add(self, d: Duration) -> SimTime {
        SimTime(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for SimTime {
    /// Seconds with millisecond precision, right-aligned: `  12.345s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 / 1000;
        write!(f, "{:>6}.{:03}s", ms / 1000, ms % 1000)
    }
}

/// Parses a duration as scenarios write it: a number (decimals allowed) followed by one
/// of `us`, `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit (want e.g. 250ms, 1.5s, 10m, 2h, 1d)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (want e.g. 250ms, 1.5s, 10m, 2h, 1d)"))?;
    let micros_per_unit: f64 = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        "d" => 86400e6,
        _ => {
            return Err(format!(
                "{unit:?} in {text:?} is not a unit (want us, ms, s, m, h or d)"
            ))
        }
    };
    let micros = (value * micros_per_unit).round();
    if !(0.0..1e18).contains(&micros) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_micros(micros as u64))
}

/// Formats a duration the way scenarios write it, choosing the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    for (unit, per) in [
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1000),
    ] {
        if us >= per && us % per == 0 {
            return format!("{}{unit}", us / per);
        }
    }
    if us >= 1_000_000 {
        return format!("{:.3}s", us as f64 / 1e6);
    }
    if us >= 1000 {
        return format!("{:.3}ms", us as f64 / 1000.0);
    }
    format!("{us}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.500ms");
    }

    #[test]
    fn timestamps_round_trip_with_an_offset() {
        let t = SimTime(5_000_000);
        assert_eq!(t.to_timestamp(0).as_millis(), EPOCH_MILLIS + 5000);
        assert_eq!(t.to_timestamp(-2000).as_millis(), EPOCH_MILLIS + 3000);
        assert_eq!(SimTime::from_timestamp(t.to_timestamp(-2000), -2000), t);
        assert_eq!(format!("{t}"), "     5.000s");
    }
}
