//! Times as people and tools write them: RFC 3339, ms since the epoch, or
//! an age (`15m`, `2h`, `7d`).

use chrono::{DateTime, SecondsFormat, Utc};

/// A time bound in ms since the epoch: RFC 3339 (`2026-11-26T10:00:00Z`),
/// ms since the epoch, or an age before `now_ms` such as `15m`, `2h`, `7d`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().map_err(|_| "time out of range".to_owned());
    }
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("`{text}` is not a time (RFC 3339, ms, or an age like 15m)"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` is not a time (RFC 3339, ms, or an age like 15m, 2h, 7d)"
            ));
        }
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)))
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}
