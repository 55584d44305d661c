//! Small helpers for backend configuration shared by every backend crate: the duration syntax of
//! URLs, environment variables and the CLI, and the bounds every configured duration must respect.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// The longest duration accepted anywhere a duration is configured (timeouts, intervals, TTLs,
/// delays): ten years of 365 days.
///
/// Far longer than any TTL, timeout or interval a deployment means, and short enough that
/// `Instant::now() + d` (and the sum of a few such durations) cannot overflow on any platform the
/// standard library supports (tokio caps its own sleeps at 30 years for the same reason).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why a text is not an acceptable duration (see [`try_parse_duration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a number with an optional unit.
    Malformed,
    /// A negative number.
    Negative,
    /// `NaN` or an infinity.
    NotFinite,
    /// Longer than [`MAX_DURATION`].
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Malformed => f.write_str(
                "is not a duration; use e.g. 500ms, 15s, 1.5s, 2m, 1h or a number of seconds",
            ),
            DurationError::Negative => f.write_str("is negative; a duration must be 0 or more"),
            DurationError::NotFinite => f.write_str("is not a finite number"),
            DurationError::TooLarge => write!(
                f,
                "is too large; the maximum is {}s (10 years)",
                MAX_DURATION.as_secs()
            ),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration as the URLs and environment variables of every backend write it: `500ms`,
/// `2s`, `1.5s`, `2m`, `1h`, or a plain number of seconds. `None` for anything else, and for a
/// negative, `NaN`, infinite or too large (over [`MAX_DURATION`]) value; [`try_parse_duration`]
/// says which.
pub fn parse_duration(text: &str) -> Option<Duration> {
    try_parse_duration(text).ok()
}

/// [`parse_duration`], telling why a text is refused.
///
/// Whole numbers are converted exactly; fractions (`1.5s`, `0.25m`) are rounded to the nearest
/// nanosecond. Every accepted duration is at most [`MAX_DURATION`].
pub fn try_parse_duration(text: &str) -> std::result::Result<Duration, DurationError> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let t = text.trim();
    let (number, unit_nanos): (&str, u128) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, NANOS_PER_SEC)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60 * NANOS_PER_SEC)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600 * NANOS_PER_SEC)
    } else {
        (t, NANOS_PER_SEC)
    };
    let number = number.trim();
    let max_nanos = MAX_DURATION.as_nanos();
    if let Ok(n) = number.parse::<u64>() {
        // u64::MAX hours is about 6.6e31 ns: no overflow in u128.
        let nanos = u128::from(n) * unit_nanos;
        if nanos > max_nanos {
            return Err(DurationError::TooLarge);
        }
        return Ok(duration_from_nanos(nanos));
    }
    // Only plain decimal numbers: no `inf`/`nan` words accepted as numbers, no hex, no `_`.
    if number.is_empty()
        || !number
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return match number.to_ascii_lowercase().trim_start_matches(['+', '-']) {
            "nan" => Err(DurationError::NotFinite),
            "inf" | "infinity" => Err(DurationError::NotFinite),
            _ => Err(DurationError::Malformed),
        };
    }
    let x: f64 = number.parse().map_err(|_| DurationError::Malformed)?;
    if x.is_nan() || x.is_infinite() {
        // A decimal literal too large for f64 parses as infinity: it is a (very) large number.
        return Err(if x.is_nan() {
            DurationError::NotFinite
        } else if x < 0.0 {
            DurationError::Negative
        } else {
            DurationError::TooLarge
        });
    }
    if x < 0.0 {
        return Err(DurationError::Negative);
    }
    // Finite and non-negative times a positive unit: at worst +infinity, never NaN.
    let nanos = x * unit_nanos as f64;
    if nanos > max_nanos as f64 {
        return Err(DurationError::TooLarge);
    }
    // In range, finite and non-negative: the cast cannot saturate in a way that matters, and the
    // final check keeps the result within the bound whatever the rounding.
    let nanos = (nanos.round() as u128).min(max_nanos);
    Ok(duration_from_nanos(nanos))
}

fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

/// Checks a configured duration that is used as a timeout or an interval: it must be positive
/// (a zero interval would spin, a zero timeout fail every call) and at most [`MAX_DURATION`].
/// `what` names it in the [`InvalidInput`](crate::ErrorKind::InvalidInput) error.
pub fn check_duration(what: &str, d: Duration) -> Result<Duration> {
    if d.is_zero() {
        return Err(Error::invalid(format!("{what} must be positive, not 0")));
    }
    check_max_duration(what, d)
}

/// Checks that a configured duration (zero allowed, as for a delay) is at most [`MAX_DURATION`],
/// naming it as `what` in the [`InvalidInput`](crate::ErrorKind::InvalidInput) error.
pub fn check_max_duration(what: &str, d: Duration) -> Result<Duration> {
    if d > MAX_DURATION {
        return Err(Error::invalid(format!(
            "{what} {d:?} is too large; the maximum is {}s (10 years)",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(d)
}

/// Caps a duration read from a server (a TTL, a wait) at [`MAX_DURATION`], so that deadlines
/// computed from it cannot overflow.
pub fn clamp_duration(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

pub use crate::percent::percent_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 0.1s "), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in [
            "", "soon", "-1s", "1d", "NaNs", "s", "ms", "0x10s", "1_000ms",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    /// These panicked in `Duration::from_secs_f64` or overflowed `m * 60` before durations were
    /// bounded.
    #[test]
    fn huge_nan_and_infinite_durations_are_refused_not_panics() {
        use DurationError::*;
        for (text, why) in [
            ("1e300s", TooLarge),
            ("1e300", TooLarge),
            ("1e400s", TooLarge),
            ("18446744073709551615m", TooLarge),
            ("18446744073709551615s", TooLarge),
            ("18446744073709551615ms", TooLarge),
            ("307445734561825861m", TooLarge),
            ("99999999999999999999999s", TooLarge),
            ("1e10m", TooLarge),
            ("1e20ms", TooLarge),
            ("NaN", NotFinite),
            ("nans", NotFinite),
            ("infs", NotFinite),
            ("-inf", NotFinite),
            ("-1", Negative),
            ("-0.5s", Negative),
            ("-1e400s", Negative),
            ("soon", Malformed),
        ] {
            assert_eq!(try_parse_duration(text), Err(why), "{text}");
        }
        assert_eq!(try_parse_duration("315360000s"), Ok(MAX_DURATION));
        assert_eq!(
            try_parse_duration("315360001s"),
            Err(DurationError::TooLarge)
        );
        assert!(DurationError::TooLarge.to_string().contains("too large"));
    }

    #[test]
    fn configured_durations_are_checked() {
        assert!(check_duration("poll interval", Duration::from_millis(1)).is_ok());
        let zero = check_duration("poll interval", Duration::ZERO).unwrap_err();
        assert_eq!(zero.kind(), crate::ErrorKind::InvalidInput);
        assert!(zero.message().contains("poll interval"), "{zero}");
        let big = check_duration("timeout", Duration::MAX).unwrap_err();
        assert!(big.message().contains("too large"), "{big}");
        assert!(check_max_duration("delay", Duration::ZERO).is_ok());
        assert_eq!(clamp_duration(Duration::MAX), MAX_DURATION);
    }
}
