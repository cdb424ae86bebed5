//! RFC 3339 timestamps in UTC, as Kubernetes writes them: whole seconds in
//! statuses, nanoseconds (trailing zeros trimmed, like Go's RFC3339Nano)
//! in CRI log lines; and read back, from CRI log lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2024-03-01T12:00:05Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, _) = since_epoch(t);
    format!("{}Z", date_time(secs))
}

/// `2024-03-01T12:00:05.123456789Z`; `…:05.5Z` for half a second and
/// `…:05Z` on a whole second.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let (secs, nanos) = since_epoch(t);
    let mut text = date_time(secs);
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Times before 1970 do not occur on a node with a working clock; they
/// are written as the epoch rather than refused.
fn since_epoch(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn date_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a Gregorian date. Counted from 0000-03-01 in
/// 400-year eras, so that the leap day is the last day of its year and
/// every era has the same shape.
fn civil_date(days: u64) -> (u64, u64, u64) {
    const DAYS_0000_03_01_TO_1970: u64 = 719_468;
    const ERA: u64 = 146_097;
    let z = days + DAYS_0000_03_01_TO_1970;
    let era = z / ERA;
    let day_of_era = z % ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / (ERA - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, five months every 153 days.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp
/// (`2024-03-01T12:00:05.123456789Z`, or with an offset such as
/// `+02:00`, as a runtime on local time writes it); `None` if `text` is
/// not one or lies before 1970. Fractions beyond milliseconds are dropped.
pub fn parse_rfc3339_unix_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators_fit = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !separators_fit {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (place, digit) in fraction[..digits.min(3)].iter().enumerate() {
            millis += i64::from(digit - b'0') * [100, 10, 1][place];
        }
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let secs = two(*h1, *h2)? * 3600 + two(*m1, *m2)? * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// A Gregorian date to days since 1970-01-01: the inverse of
/// [`civil_date`], with years counted from March in 400-year eras.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let march_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * march_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn known_instants_format_as_kubernetes_writes_them() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(1_700_000_000, 999_999_999)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00Z", "a 400-year leap day");
        assert_eq!(rfc3339(at(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00Z", "2100 is not a leap year");
        assert_eq!(rfc3339(at(1_709_251_199, 0)), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(at(1_735_689_599, 0)), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn nanoseconds_are_trimmed_like_gos_rfc3339nano() {
        assert_eq!(rfc3339_nanos(at(1_475_713_029, 669_794_202)), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(rfc3339_nanos(at(1_475_713_029, 500_000_000)), "2016-10-06T00:17:09.5Z");
        assert_eq!(rfc3339_nanos(at(1_475_713_029, 1_000)), "2016-10-06T00:17:09.000001Z");
        assert_eq!(rfc3339_nanos(at(1_475_713_029, 0)), "2016-10-06T00:17:09Z");
    }

    #[test]
    fn timestamps_read_back_to_the_millisecond() {
        for (secs, nanos) in [(0, 0), (951_782_400, 0), (1_475_713_029, 669_794_202), (4_107_542_400, 5_000_000)] {
            let ms = secs * 1000 + u64::from(nanos / 1_000_000);
            assert_eq!(parse_rfc3339_unix_ms(&rfc3339_nanos(at(secs, nanos))), Some(ms), "{secs}.{nanos}");
        }
        assert_eq!(parse_rfc3339_unix_ms("2016-10-06T02:17:09.5+02:00"), Some(1_475_713_029_500));
        assert_eq!(parse_rfc3339_unix_ms("2016-10-05T23:17:09-01:00"), Some(1_475_713_029_000));
    }

    #[test]
    fn what_is_not_a_timestamp_reads_as_none() {
        for text in [
            "",
            "stdout",
            "2016-10-06T00:17:09",
            "2016-13-06T00:17:09Z",
            "2016-10-06T00:17:09.Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_unix_ms(text), None, "{text:?}");
        }
    }
}
