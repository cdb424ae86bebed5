//! What the `bench-*` programs share: reading their settings, medians, and
//! reading figures off a guest's console.

use anyhow::{Context, Result};
use std::str::FromStr;

/// The whole number in environment variable `name`, or `default` when it
/// is not set; a value that does not parse is an error naming it.
pub fn env_number<T: FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(text) => text.trim().parse().with_context(|| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The value of `key=value` among a log line's whitespace-separated words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The first console line at or after byte `from` that contains `needle`:
/// where the needle is, and the line's kernel timestamp in seconds (the
/// `[   12.345678]` it starts with).
pub fn console_stamp(console: &str, from: usize, needle: &str) -> Option<(usize, f64)> {
    let at = from + console.get(from..)?.find(needle)?;
    let line_start = console[..at].rfind('\n').map_or(0, |i| i + 1);
    let inside = console[line_start..].strip_prefix('[')?.split(']').next()?.trim();
    Some((at, inside.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn fields_and_stamps_come_off_console_lines() {
        let console = "[    1.000000] boot\n[   12.345678] kelson: stage done stage=config elapsed_ms=211\n";
        let line = console.lines().nth(1).unwrap();
        assert_eq!(field(line, "elapsed_ms"), Some("211"));
        assert_eq!(field(line, "stage"), Some("config"));
        let (at, stamp) = console_stamp(console, 0, "stage=config").unwrap();
        assert_eq!(stamp, 12.345678);
        assert!(console_stamp(console, at + 1, "stage=config").is_none());
    }
}
