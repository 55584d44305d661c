//! Small helpers for backend configuration shared by every backend crate.

use std::time::Duration;

/// Parses a duration as the URLs and environment variables of every backend write it: `500ms`,
/// `2s`, `1.5s`, `2m`, or a plain number of seconds. `None` for anything else (or a negative value).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse::<u64>().ok().map(Duration::from_millis);
    }
    if let Some(m) = t.strip_suffix('m') {
        return m
            .trim()
            .parse::<u64>()
            .ok()
            .map(|m| Duration::from_secs(m * 60));
    }
    t.strip_suffix('s')
        .unwrap_or(t)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        for bad in ["", "soon", "-1s", "1h", "NaNs"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
