//! Windows of a limit: rolling (`1s`..`30d`, counted as a sliding window over two fixed
//! buckets) or calendar (`day`, `month`, UTC). All times are Unix milliseconds.

/// Shortest rolling window.
pub const MIN_SECS: u64 = 1;
/// Longest rolling window: 30 days.
pub const MAX_SECS: u64 = 30 * 86_400;

/// The window of one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// A sliding window of this many milliseconds.
    Rolling(u64),
    /// The UTC calendar day.
    Day,
    /// The UTC calendar month.
    Month,
}

/// Where a moment falls in a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    /// Index of the current bucket (rolling: `now / window`; day: days since 1970; month:
    /// months since 1970).
    pub bucket: i64,
    /// Weight of the previous bucket in the sliding estimate (0 for calendar windows).
    pub prev_weight: f64,
    /// When the current bucket ends (Unix ms).
    pub bucket_end_ms: u64,
}

impl Window {
    /// Parse `30s`, `1m`, `2h`, `1d`, `day`, `month`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        match raw {
            "day" => return Ok(Window::Day),
            "month" => return Ok(Window::Month),
            _ => {}
        }
        let split = raw
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("window `{raw}` needs a unit (s, m, h, d)"))?;
        let (digits, unit) = raw.split_at(split);
        let n: u64 = digits.parse().map_err(|_| {
            format!(
                "window `{raw}` must be a whole number and a unit (`1m`, `1d`) or `day` / `month`"
            )
        })?;
        let secs = match unit {
            "s" => n,
            "m" => n.saturating_mul(60),
            "h" => n.saturating_mul(3600),
            "d" => n.saturating_mul(86_400),
            _ => {
                return Err(format!(
                    "window `{raw}`: unit must be s, m, h or d (or write `day` / `month`)"
                ));
            }
        };
        if !(MIN_SECS..=MAX_SECS).contains(&secs) {
            return Err(format!("window `{raw}` is outside 1s..30d"));
        }
        Ok(Window::Rolling(secs * 1000))
    }

    /// Where `now_ms` falls.
    pub fn position(self, now_ms: u64) -> Position {
        match self {
            Window::Rolling(len) => {
                let bucket = now_ms / len;
                let into = now_ms % len;
                Position {
                    bucket: bucket as i64,
                    prev_weight: 1.0 - into as f64 / len as f64,
                    bucket_end_ms: (bucket + 1) * len,
                }
            }
            Window::Day => {
                let day = now_ms / 86_400_000;
                Position {
                    bucket: day as i64,
                    prev_weight: 0.0,
                    bucket_end_ms: (day + 1) * 86_400_000,
                }
            }
            Window::Month => {
                let (y, m, _) = civil_from_days((now_ms / 86_400_000) as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Position {
                    bucket: (y - 1970) * 12 + (m as i64 - 1),
                    prev_weight: 0.0,
                    bucket_end_ms: (days_from_civil(ny, nm, 1).max(0) as u64) * 86_400_000,
                }
            }
        }
    }

    /// How long keys of one bucket must live: the bucket and the next one (which reads it as
    /// its previous bucket).
    pub fn ttl_ms(self) -> u64 {
        match self {
            Window::Rolling(len) => 2 * len + 1000,
            Window::Day => 2 * 86_400_000,
            Window::Month => 63 * 86_400_000,
        }
    }

    /// Milliseconds from `now_ms` until the sliding estimate `prev * w + cur` leaves room for
    /// `need` under `max` (a calendar window: until it resets).
    pub fn wait_ms(self, now_ms: u64, prev: u64, cur: u64, need: u64, max: u64) -> u64 {
        let pos = self.position(now_ms);
        let to_end = pos.bucket_end_ms.saturating_sub(now_ms);
        let Window::Rolling(len) = self else {
            return to_end;
        };
        let room = max.saturating_sub(need) as f64;
        let len_f = len as f64;
        // Within the current bucket: prev * (w - t/len) + cur <= room.
        if (cur as f64) <= room && prev > 0 {
            let t = (pos.prev_weight - (room - cur as f64) / prev as f64) * len_f;
            if t <= to_end as f64 {
                return t.max(0.0).ceil() as u64;
            }
        }
        // In the next bucket, `cur` becomes the previous bucket: cur * (1 - s/len) <= room.
        if cur == 0 || need > max {
            return to_end;
        }
        let s = (1.0 - room / cur as f64).max(0.0) * len_f;
        to_end + s.ceil() as u64
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day), Howard Hinnant's algorithm.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix ms → RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Now, in Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_within_bounds() {
        assert_eq!(Window::parse("1m"), Ok(Window::Rolling(60_000)));
        assert_eq!(Window::parse("30d"), Ok(Window::Rolling(30 * 86_400_000)));
        assert_eq!(Window::parse("month"), Ok(Window::Month));
        assert_eq!(Window::parse("day"), Ok(Window::Day));
        for bad in ["0s", "31d", "1w", "m", "", "1.5h", "-1m", "week"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calendar_months_and_days_reset_at_utc_boundaries() {
        // 2026-12-06T16:00:00Z
        let now = days_from_civil(2026, 12, 6) as u64 * 86_400_000 + 16 * 3_600_000;
        let month = Window::Month.position(now);
        assert_eq!(rfc3339(month.bucket_end_ms), "2027-01-01T00:00:00Z");
        assert_eq!(month.bucket, (2026 - 1970) * 12 + 11);
        let day = Window::Day.position(now);
        assert_eq!(rfc3339(day.bucket_end_ms), "2026-12-07T00:00:00Z");
        let feb = days_from_civil(2028, 2, 10) as u64 * 86_400_000;
        assert_eq!(
            rfc3339(Window::Month.position(feb).bucket_end_ms),
            "2028-03-01T00:00:00Z"
        );
    }

    #[test]
    fn sliding_waits_are_until_there_is_room() {
        let w = Window::Rolling(60_000);
        // At the start of a bucket with 5 of 5 used in it: wait for the bucket to end and
        // then for a fifth of it to roll out.
        let t = w.wait_ms(120_000, 0, 5, 1, 5);
        assert!((60_000..=72_001).contains(&t), "{t}");
        // A calendar window waits for its reset.
        assert_eq!(Window::Day.wait_ms(1000, 0, 9, 1, 5), 86_400_000 - 1000);
    }
}
