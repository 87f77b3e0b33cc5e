//! The console's words in one place, and the formatting of wire values.

use geosync_proto::v1;

/// The status line when read-only mode refuses an action.
pub const READONLY_REFUSED: &str = "read-only console: refused";
/// The status line when an action needs a conflict and none is selected.
pub const NO_CONFLICT_SELECTED: &str = "no conflict selected";
/// The status line when an action needs a queue item and none is selected.
pub const NO_ITEM_SELECTED: &str = "no queue item selected";
/// The status line when an action needs a region and none is selected.
pub const NO_REGION_SELECTED: &str = "no region selected";
/// The status line when an action needs a STRM job and none is selected.
pub const NO_STRM_JOB_SELECTED: &str = "no STRM job selected";
/// What a held-cleanup confirmation warns of.
pub const STRM_CONFIRM_WARNING: &str =
    "The job's outputs for files gone from its source are deleted for good.";
/// What the STRM view says of a region that runs no jobs.
pub const NO_STRM_JOBS: &str = "no STRM jobs (add [[strm.jobs]] to its configuration)";
/// Why merging is not offered.
pub const MERGE_DELETED: &str = "a version is a deletion; keep one side or both";
/// What a drop confirmation warns of.
pub const DROP_WARNING: &str = "The change will never reach the other regions.";
/// The answer keys of a confirmation.
pub const CONFIRM_KEYS: &str = "y: yes   n/Esc: no";
/// The command line's commands.
pub const COMMANDS: &str = "commands: view NAME, queue REGION, pause|resume|resync [REGION], \
     retry ID, drop ID, keep REGION, both, merge, bulk keep REGION|both|merge, filter TEXT, help, quit";
/// Shown while the coordinator is unreachable.
pub const DISCONNECTED: &str = "disconnected — retrying";
/// Shown before the first cluster view.
pub const CONNECTING: &str = "connecting…";
/// The title of the key table.
pub const HELP_TITLE: &str = " keys (? or Esc closes) ";

/// A region state as text.
pub fn region_state(state: i32) -> &'static str {
    match v1::RegionState::try_from(state) {
        Ok(v1::RegionState::Healthy) => "healthy",
        Ok(v1::RegionState::Degraded) => "degraded",
        Ok(v1::RegionState::Offline) => "offline",
        _ => "unknown",
    }
}

/// A queue item state as text.
pub fn item_state(state: i32) -> &'static str {
    match v1::QueueItemState::try_from(state) {
        Ok(v1::QueueItemState::Pending) => "pending",
        Ok(v1::QueueItemState::InFlight) => "in-flight",
        Ok(v1::QueueItemState::Retrying) => "retrying",
        Ok(v1::QueueItemState::Dead) => "dead",
        _ => "unknown",
    }
}

/// A change operation as text.
pub fn op_name(op: i32) -> &'static str {
    match v1::ChangeOp::try_from(op) {
        Ok(v1::ChangeOp::Create) => "create",
        Ok(v1::ChangeOp::Update) => "update",
        Ok(v1::ChangeOp::Metadata) => "metadata",
        Ok(v1::ChangeOp::Delete) => "delete",
        Ok(v1::ChangeOp::Rename) => "rename",
        _ => "unknown",
    }
}

/// A duration in milliseconds, short: `850ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago a moment was, or `-` when it is unknown (0).
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        "-".to_owned()
    } else {
        duration_ms(now_ms.saturating_sub(then_ms))
    }
}

/// A STRM run's counts, short: `scan 120 wrote 3 same 117 skip 0 del 0 fail 0`.
pub fn strm_counts(c: &crate::strm_api::Counts) -> String {
    format!(
        "scan {} wrote {} same {} skip {} del {} fail {}",
        c.scanned, c.written, c.unchanged, c.skipped, c.deleted, c.failed
    )
}

/// When a moment is relative to now: `in 3s`, `now`, `2s ago`.
pub fn when(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        "-".to_owned()
    } else if then_ms > now_ms {
        format!("in {}", duration_ms(then_ms - now_ms))
    } else if now_ms - then_ms < 1000 {
        "now".to_owned()
    } else {
        format!("{} ago", duration_ms(now_ms - then_ms))
    }
}

/// A signed clock drift in milliseconds: `+12ms`, `-1.5s`.
pub fn drift(ms: i64) -> String {
    if ms.unsigned_abs() < 1000 {
        format!("{ms:+}ms")
    } else {
        format!("{:+.1}s", ms as f64 / 1000.0)
    }
}

/// A size in bytes: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The first `n` hex digits of some bytes (`-` when empty).
pub fn short_hex(bytes: &[u8], n: usize) -> String {
    if bytes.is_empty() {
        return "-".to_owned();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.chars().take(n).collect()
}

/// An HLC stamp: `physical.logical@region`.
pub fn hlc(t: Option<&v1::Timestamp>) -> String {
    match t {
        Some(t) => format!("{}.{}@{}", t.physical_ms, t.logical, t.region),
        None => "-".to_owned(),
    }
}

/// A UTC wall-clock time of day, `HH:MM:SS`, for milliseconds since the epoch.
pub fn clock_time(ms: u64) -> String {
    let s = ms / 1000 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// A nanosecond mtime as a UTC date and time (`YYYY-MM-DD HH:MM:SS`).
pub fn mtime(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The smallest full scale of a sparkline, so that a lag of one or two
/// events does not draw full bars.
pub const SPARKLINE_MIN_SCALE: u64 = 8;

/// A sparkline of the samples scaled to their maximum (at least
/// [`SPARKLINE_MIN_SCALE`]), `width` characters wide (the newest samples,
/// right-aligned; zero is blank).
pub fn sparkline(samples: impl DoubleEndedIterator<Item = u64> + Clone, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut tail: Vec<u64> = samples.rev().take(width).collect();
    tail.reverse();
    let max = tail
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(SPARKLINE_MIN_SCALE);
    let mut out = " ".repeat(width.saturating_sub(tail.len()));
    for v in tail {
        // Eighths of the scale, rounded up: any non-zero sample shows.
        let level = (v.min(max) * 8).div_ceil(max).saturating_sub(1) as usize;
        out.push(if v == 0 { ' ' } else { BARS[level.min(7)] });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_read_right() {
        assert_eq!(mtime(0), "1970-01-01 00:00:00");
        assert_eq!(mtime(1_700_000_000_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(duration_ms(999), "999ms");
        assert_eq!(duration_ms(61_000), "1m01s");
        assert_eq!(drift(-1500), "-1.5s");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(when(10_000, 13_000), "in 3s");
        assert_eq!(sparkline([0, 1, 16].into_iter(), 5), "   ▁█");
        assert_eq!(
            sparkline([1, 2].into_iter(), 2),
            "▁▂",
            "small lags stay small"
        );
    }
}
