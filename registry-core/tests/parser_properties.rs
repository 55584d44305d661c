//! Properties of everything in registry-core that parses text from outside the process: the
//! duration syntax of URLs, environment variables and flags, and the key rules. Random and
//! near-valid inputs must never panic, and what is accepted must make sense. (The engine's names
//! and instance documents: registry-engine's tests/parser_properties.rs.)

use std::time::Duration;

use proptest::prelude::*;
use registry_core::config::{DurationError, MAX_DURATION, parse_duration, try_parse_duration};
use registry_core::key::{
    key_matches, normalize_prefix, prefix_range_end, validate_key, validate_prefix,
};
use registry_core::{Capabilities, ErrorKind};

// ---- durations ----

/// Numbers as people and programs write them, well-formed or not.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:e}")),
        (0.0f64..1e6).prop_map(|x| x.to_string()),
        (-1e6f64..0.0).prop_map(|x| x.to_string()),
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("infinity".to_owned()),
        Just("1e309".to_owned()),
        Just("-0".to_owned()),
        Just(".5".to_owned()),
        Just("5.".to_owned()),
        Just("+7".to_owned()),
        Just("1_000".to_owned()),
        Just("0x10".to_owned()),
        Just(String::new()),
        "[-+.eE0-9]{0,12}",
    ]
}

fn unit_text() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", "ms", "s", "m", "h", " s", "ms ", "d", "us", "ns", "sec", "M", "S", "mss", "sm",
    ])
}

/// What a duration whose text parsed must satisfy.
fn check_accepted(text: &str, d: Duration) -> Result<(), TestCaseError> {
    prop_assert!(d <= MAX_DURATION, "{text:?} -> {d:?} is above the bound");
    prop_assert_eq!(parse_duration(text), Some(d));
    Ok(())
}

proptest! {
    #[test]
    fn parse_duration_never_panics_on_arbitrary_text(text in any::<String>()) {
        match try_parse_duration(&text) {
            Ok(d) => check_accepted(&text, d)?,
            Err(_) => prop_assert_eq!(parse_duration(&text), None),
        }
    }

    #[test]
    fn parse_duration_never_panics_on_near_valid_text(
        lead in prop::sample::select(vec!["", " ", "-", "+", "\t"]),
        number in number_text(),
        unit in unit_text(),
    ) {
        let text = format!("{lead}{number}{unit}");
        match try_parse_duration(&text) {
            Ok(d) => check_accepted(&text, d)?,
            Err(DurationError::TooLarge) => {
                // Only numbers that really are that large, or overflow f64, are "too large".
                if let Ok(x) = number.parse::<f64>() {
                    prop_assert!(x.abs() > 1.0, "{text:?}");
                }
            }
            Err(_) => {}
        }
    }

    /// Whole milliseconds, seconds, minutes and hours convert exactly, up to the bound and not
    /// beyond.
    #[test]
    fn whole_durations_round_trip_exactly_within_the_bound(
        n in prop_oneof![0u64..10_000, any::<u64>(), 0u64..=MAX_DURATION.as_secs() * 1000],
        unit in prop::sample::select(vec![("ms", 1u128), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]),
    ) {
        let (suffix, ms_per_unit) = unit;
        let text = format!("{n}{suffix}");
        let ms = u128::from(n) * ms_per_unit;
        if ms <= MAX_DURATION.as_millis() {
            let want = Duration::from_millis(u64::try_from(ms).unwrap());
            prop_assert_eq!(try_parse_duration(&text), Ok(want));
        } else {
            prop_assert_eq!(try_parse_duration(&text), Err(DurationError::TooLarge));
        }
    }

    /// Any duration within the bound, written with a decimal fraction of seconds, comes back
    /// within a microsecond (f64 has 15 significant digits; the bound has 9 before the point).
    #[test]
    fn fractional_seconds_round_trip_within_a_microsecond(
        secs in 0..=MAX_DURATION.as_secs() - 1,
        nanos in 0u32..1_000_000_000,
    ) {
        let d = Duration::new(secs, nanos);
        let text = format!("{secs}.{nanos:09}s");
        let back = try_parse_duration(&text).unwrap();
        let diff = back.abs_diff(d);
        prop_assert!(diff <= Duration::from_micros(1), "{text} -> {back:?}, diff {diff:?}");
        prop_assert!(back <= MAX_DURATION);
    }

    #[test]
    fn negative_numbers_are_negative_and_non_numbers_not_finite(x in any::<f64>()) {
        let r = try_parse_duration(&format!("{x}s"));
        if x.is_nan() {
            prop_assert_eq!(r, Err(DurationError::NotFinite));
        } else if x.is_infinite() {
            prop_assert_eq!(r, Err(DurationError::NotFinite));
        } else if x < 0.0 {
            prop_assert_eq!(r, Err(DurationError::Negative));
        } else if x > MAX_DURATION.as_secs_f64() + 1.0 {
            prop_assert_eq!(r, Err(DurationError::TooLarge));
        } else if x < MAX_DURATION.as_secs_f64() - 1.0 {
            prop_assert!(r.is_ok(), "{x}: {r:?}");
        }
    }
}

// ---- keys ----

fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z/]{0,20}",
        "[a-z0-9/._-]{1,40}",
        "[\\x00-\\x7f]{0,12}",
        "\\PC{0,30}",
        ".{0,40}",
        "[a-z]{1,8}(/[a-z]{0,8}){0,4}/?",
    ]
}

proptest! {
    /// The key rules exactly: non-empty, at most `max_key_len` bytes, no ASCII control character;
    /// every refusal is InvalidInput.
    #[test]
    fn key_validation_is_exactly_the_documented_rule(key in key_text(), max in 1usize..64) {
        let caps = Capabilities::default().with_max_key_len(max);
        let expected = !key.is_empty() && key.len() <= max && !key.chars().any(|c| c.is_ascii_control());
        match validate_key(&key, &caps) {
            Ok(()) => prop_assert!(expected, "{key:?} accepted"),
            Err(e) => {
                prop_assert!(!expected, "{key:?} refused: {e}");
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
            }
        }
        // A prefix is empty or a valid key.
        prop_assert_eq!(
            validate_prefix(&key, &caps).is_ok(),
            key.is_empty() || expected
        );
    }

    /// A normalised prefix is empty or ends in `/`, and matching is "starts with it".
    #[test]
    fn prefixes_name_directories(prefix in key_text(), key in key_text()) {
        let p = normalize_prefix(&prefix);
        prop_assert!(p.is_empty() || p.ends_with('/'));
        prop_assert!(p.starts_with(prefix.as_str()));
        prop_assert_eq!(key_matches(&p, &key), key.starts_with(&*p));
        let under = format!("{p}{key}");
        prop_assert!(key_matches(&p, &under));
    }

    /// The range end is above every string with the prefix, and `None` only when no bound exists.
    #[test]
    fn prefix_range_end_bounds_every_extension(
        prefix in prop::collection::vec(prop_oneof![any::<u8>(), Just(0xffu8)], 0..12),
        suffix in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        match prefix_range_end(&prefix) {
            Some(end) => {
                prop_assert!(prefix < end);
                let mut extended = prefix.clone();
                extended.extend_from_slice(&suffix);
                prop_assert!(extended < end);
            }
            None => prop_assert!(prefix.iter().all(|&b| b == 0xff)),
        }
    }
}
