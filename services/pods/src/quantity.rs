//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`), read exactly
//! (no floating point) and rounded up the way the kubelet's `Value()` and
//! `MilliValue()` round.

/// A quantity's value as a whole number of `unit`s, rounded up. CPU is
/// read with [`Unit::Milli`] (millicores), memory with [`Unit::One`]
/// (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    One,
    Milli,
}

/// Parses `text` and returns its value in `unit`s, or the reason it is not
/// a quantity Kelson can use (negative values are refused: no resource
/// Kelson maps can be negative).
pub fn parse(text: &str, unit: Unit) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a quantity (a number with an optional suffix such as m, k, M, Gi or e3)");
    let (number, suffix) = split_suffix(text);
    let (negative, number) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (mut pow10, pow2) = scale(suffix).ok_or_else(bad)?;
    if unit == Unit::Milli {
        pow10 += 3;
    }
    // Leading zeros carry no value and would only eat into u128's digits.
    let digits: String = format!("{whole}{fraction}").trim_start_matches('0').to_owned();
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(format!("{text:?} is negative"));
    }
    let too_large = || format!("{text:?} is too large");
    if digits.len() > 38 {
        return Err(too_large());
    }
    let mantissa: u128 = digits.parse().map_err(|_| bad())?;
    pow10 -= i32::try_from(fraction.len()).map_err(|_| bad())?;
    let value = mantissa.checked_mul(1u128.checked_shl(pow2).ok_or_else(too_large)?).ok_or_else(too_large)?;
    let value = if pow10 >= 0 {
        10u128.checked_pow(pow10.unsigned_abs()).and_then(|p| value.checked_mul(p)).ok_or_else(too_large)?
    } else {
        match 10u128.checked_pow(pow10.unsigned_abs()) {
            Some(divisor) => value.div_ceil(divisor),
            // Smaller than one unit, but not zero: rounds up to one.
            None => 1,
        }
    };
    u64::try_from(value).map_err(|_| too_large())
}

/// Splits `1.5Gi` into `1.5` and `Gi`; an exponent (`2e3`) is a suffix.
fn split_suffix(text: &str) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map_or(text.len(), |(i, _)| i);
    text.split_at(end)
}

/// A suffix as powers of ten and of two.
fn scale(suffix: &str) -> Option<(i32, u32)> {
    let decimal = |p| Some((p, 0));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            exponent.parse().ok().map(|p| (p, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reads_in_millicores() {
        for (text, millis) in [
            ("100m", 100),
            ("250m", 250),
            ("1", 1000),
            ("0.5", 500),
            ("1.5", 1500),
            ("2", 2000),
            ("1e-3", 1),
            ("1u", 1),
            ("0", 0),
            ("+3", 3000),
            (".25", 250),
        ] {
            assert_eq!(parse(text, Unit::Milli), Ok(millis), "{text}");
        }
    }

    #[test]
    fn memory_reads_in_bytes_rounding_up() {
        for (text, bytes) in [
            ("100Mi", 100 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Ki", 125_952),
            ("1k", 1000),
            ("100m", 1),
            ("0.5", 1),
            ("2E3", 2000),
        ] {
            assert_eq!(parse(text, Unit::One), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_negative_and_huge_values_are_refused() {
        for text in ["", "m", "abc", "1.2.3", "10Zi", "1e", "1ee3", "1 Gi", "Gi", "1e1234", "--1"] {
            let err = parse(text, Unit::One).unwrap_err();
            assert!(err.contains("is not a quantity"), "{text}: {err}");
        }
        assert_eq!(parse("-1", Unit::One), Err("\"-1\" is negative".to_owned()));
        assert_eq!(parse("-0", Unit::One), Ok(0));
        assert_eq!(parse("20Ei", Unit::One), Err("\"20Ei\" is too large".to_owned()));
        assert_eq!(parse("1e30", Unit::Milli), Err("\"1e30\" is too large".to_owned()));
    }
}
