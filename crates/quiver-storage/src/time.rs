//! Date and time text in the forms SQLite's date functions read and write.
//!
//! SQLite has no date type: applications keep ISO-8601 text (`2026-03-01 12:30:00`),
//! Unix seconds or Julian day numbers. These helpers convert between that text and
//! Arrow's units (days / microseconds since the Unix epoch) without allocation.

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
const NANOS_PER_SECOND: i64 = 1_000_000_000;
/// Julian day number of 1970-01-01T00:00:00 UTC.
const UNIX_EPOCH_JULIAN_DAY: f64 = 2_440_587.5;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[inline]
fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() {
        return None;
    }
    let mut value = 0u32;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some(value)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD` at the start of `bytes`; returns days since the epoch.
#[inline]
fn parse_date_prefix(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = i64::from(digits(&bytes[0..4])?);
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Parses `HH:MM[:SS[.fraction]]`; returns nanoseconds since midnight and the rest.
/// Digits of the fraction beyond nanoseconds are read and dropped.
#[inline]
fn parse_time_prefix(bytes: &[u8]) -> Option<(i64, &[u8])> {
    if bytes.len() < 5 || bytes[2] != b':' {
        return None;
    }
    let hour = i64::from(digits(&bytes[0..2])?);
    let minute = i64::from(digits(&bytes[3..5])?);
    let mut rest = &bytes[5..];
    let mut second = 0i64;
    let mut nanos = 0i64;
    if rest.first() == Some(&b':') {
        if rest.len() < 3 {
            return None;
        }
        second = i64::from(digits(&rest[1..3])?);
        rest = &rest[3..];
        if rest.first() == Some(&b'.') {
            let fraction_len = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if fraction_len == 0 {
                return None;
            }
            let fraction = &rest[1..1 + fraction_len];
            let mut scale = 100_000_000i64;
            for &digit in fraction.iter().take(9) {
                nanos += i64::from(digit - b'0') * scale;
                scale /= 10;
            }
            rest = &rest[1 + fraction_len..];
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some((
        (hour * 3600 + minute * 60 + second) * NANOS_PER_SECOND + nanos,
        rest,
    ))
}

/// Parses a zone suffix: empty, `Z`, `+HH:MM`, `-HH:MM`, `+HHMM`, `+HH`; returns the
/// offset east of UTC in microseconds.
fn parse_zone(bytes: &[u8]) -> Option<i64> {
    let bytes = bytes.strip_prefix(b" ").unwrap_or(bytes);
    match bytes {
        [] | [b'Z'] | [b'z'] => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (hours, minutes) = match rest {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            let offset = (i64::from(hours) * 3600 + i64::from(minutes) * 60) * MICROS_PER_SECOND;
            Some(if *sign == b'-' { -offset } else { offset })
        }
        _ => None,
    }
}

/// Parses ISO-8601 date or date-time text into microseconds since the epoch (UTC).
///
/// Accepts `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS[.ffffff]`, with `T` or a
/// space between date and time and an optional zone (`Z`, `±HH:MM`).
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    parse_timestamp_bytes(text.as_bytes())
}

/// [`parse_timestamp_micros`] on raw bytes (no UTF-8 check needed: only ASCII matches).
#[inline]
pub fn parse_timestamp_bytes(bytes: &[u8]) -> Option<i64> {
    parse_timestamp_parts(bytes).map(|(micros, _)| micros)
}

/// ISO-8601 date-time text (as [`parse_timestamp_micros`] reads it, with up to nine
/// fractional digits) as nanoseconds since the epoch (UTC); `None` beyond the years
/// 1677–2262 that nanoseconds hold.
#[inline]
pub fn parse_timestamp_nanos_bytes(bytes: &[u8]) -> Option<i64> {
    let (micros, nanos) = parse_timestamp_parts(bytes)?;
    micros.checked_mul(1_000)?.checked_add(nanos)
}

/// Microseconds since the epoch (rounded down) and the nanoseconds beyond them.
#[inline]
fn parse_timestamp_parts(bytes: &[u8]) -> Option<(i64, i64)> {
    let bytes = bytes.trim_ascii();
    let days = parse_date_prefix(bytes)?;
    let rest = &bytes[10..];
    if rest.is_empty() {
        return Some((days * MICROS_PER_DAY, 0));
    }
    let (separator, rest) = rest.split_first()?;
    if *separator != b' ' && *separator != b'T' && *separator != b't' {
        return None;
    }
    let (time_nanos, rest) = parse_time_prefix(rest)?;
    let offset = parse_zone(rest)?;
    Some((
        days * MICROS_PER_DAY + time_nanos / 1_000 - offset,
        time_nanos % 1_000,
    ))
}

/// Parses `YYYY-MM-DD` (a time part, if present, is ignored) into days since the epoch.
pub fn parse_date_days(text: &str) -> Option<i32> {
    parse_date_bytes(text.as_bytes())
}

/// [`parse_date_days`] on raw bytes.
#[inline]
pub fn parse_date_bytes(bytes: &[u8]) -> Option<i32> {
    let bytes = bytes.trim_ascii();
    let days = parse_date_prefix(bytes)?;
    let rest = &bytes[10..];
    if !rest.is_empty() && parse_timestamp_bytes(bytes).is_none() {
        return None;
    }
    i32::try_from(days).ok()
}

/// Parses `HH:MM[:SS[.ffffff]]` into microseconds since midnight (rounded down).
pub fn parse_time_micros(text: &str) -> Option<i64> {
    parse_time_nanos_bytes(text.as_bytes()).map(|nanos| nanos / 1_000)
}

/// Parses `HH:MM[:SS[.fffffffff]]` into nanoseconds since midnight.
#[inline]
pub fn parse_time_nanos_bytes(bytes: &[u8]) -> Option<i64> {
    let (nanos, rest) = parse_time_prefix(bytes.trim_ascii())?;
    rest.is_empty().then_some(nanos)
}

/// Converts a Julian day number (SQLite's REAL date form) to microseconds since the epoch.
pub fn julian_day_to_micros(julian_day: f64) -> Option<i64> {
    let micros = ((julian_day - UNIX_EPOCH_JULIAN_DAY) * MICROS_PER_DAY as f64).round();
    micros.is_finite().then_some(micros as i64)
}

/// Formats days since the epoch as `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let (year, month, day) = civil_from_days(i64::from(days));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Formats microseconds since the epoch as `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC), the form
/// SQLite's `datetime()` produces and compares correctly as text.
pub fn format_timestamp_micros(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let seconds = in_day / MICROS_PER_SECOND;
    let fraction = in_day % MICROS_PER_SECOND;
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if fraction == 0 {
        format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
    } else {
        format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{fraction:06}")
    }
}

/// Formats nanoseconds since the epoch like [`format_timestamp_micros`], with nine
/// fractional digits when the value has a part below the microsecond.
pub fn format_timestamp_nanos(nanos: i64) -> String {
    let (micros, below) = (nanos.div_euclid(1_000), nanos.rem_euclid(1_000));
    let mut text = format_timestamp_micros(micros);
    if below != 0 {
        if micros.rem_euclid(MICROS_PER_SECOND) == 0 {
            text.push_str(".000000");
        }
        text.push_str(&format!("{below:03}"));
    }
    text
}

/// Formats nanoseconds since midnight as `HH:MM:SS[.ffffff[fff]]`: six fractional
/// digits, nine when the value has a part below the microsecond, none when it is whole
/// seconds.
pub fn format_time_nanos(nanos: i64) -> String {
    let seconds = nanos / NANOS_PER_SECOND;
    let fraction = nanos % NANOS_PER_SECOND;
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if fraction == 0 {
        format!("{hour:02}:{minute:02}:{second:02}")
    } else if fraction % 1_000 == 0 {
        format!("{hour:02}:{minute:02}:{second:02}.{:06}", fraction / 1_000)
    } else {
        format!("{hour:02}:{minute:02}:{second:02}.{fraction:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for days in (-200_000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn parses_the_forms_sqlite_writes() {
        // Truth: SELECT (julianday(x) - 2440587.5) * 86400000000 in sqlite3.
        assert_eq!(
            parse_timestamp_micros("2026-01-01 00:00:00"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2026-01-01T00:00:00Z"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2026-01-01 01:00:00+01:00"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2026-01-01 00:00:00.25"),
            Some(1_767_225_600_250_000)
        );
        assert_eq!(
            parse_timestamp_micros("2026-01-01 00:00"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2026-01-01"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("1969-12-31 23:59:59"),
            Some(-1_000_000)
        );
        assert_eq!(parse_timestamp_micros("2026-02-30 00:00:00"), None);
        assert_eq!(parse_timestamp_micros("yesterday"), None);
        assert_eq!(parse_timestamp_micros("2026-01-01 25:00:00"), None);
        assert_eq!(parse_date_days("2024-02-29"), Some(19_782));
        assert_eq!(parse_date_days("2023-02-29"), None);
        assert_eq!(parse_time_micros("12:30:05.5"), Some(45_005_500_000));
    }

    #[test]
    fn formats_round_trip() {
        for micros in [
            0,
            1,
            -1,
            1_767_225_600_250_000,
            951_782_400_000_000,
            -86_400_000_001,
        ] {
            assert_eq!(
                parse_timestamp_micros(&format_timestamp_micros(micros)),
                Some(micros)
            );
        }
        assert_eq!(format_date(19_782), "2024-02-29");
        for nanos in [
            0,
            1,
            -1,
            999,
            1_767_225_600_250_000_001,
            -86_400_000_000_001,
        ] {
            let text = format_timestamp_nanos(nanos);
            assert_eq!(
                parse_timestamp_nanos_bytes(text.as_bytes()),
                Some(nanos),
                "{text}"
            );
        }
        assert_eq!(
            format_timestamp_nanos(1_500),
            "1970-01-01 00:00:00.000001500"
        );
        for nanos in [0, 1, 45_005_500_000_000, 86_399_999_999_999] {
            let text = format_time_nanos(nanos);
            assert_eq!(
                parse_time_nanos_bytes(text.as_bytes()),
                Some(nanos),
                "{text}"
            );
        }
        assert_eq!(format_time_nanos(45_005_500_000_000), "12:30:05.500000");
        assert_eq!(julian_day_to_micros(2_440_588.5), Some(86_400_000_000));
    }
}
