//! Percentiles and formatting.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

pub(crate) fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        n: v.len(),
        p50: pick(0.5),
        p90: pick(0.9),
        p99: pick(0.99),
        max: *v.last().unwrap_or(&Duration::ZERO),
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 1.0 {
        format!("{m:.2} ms")
    } else {
        format!("{:.1} µs", m * 1000.0)
    }
}

pub(crate) fn json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "n": s.n,
        "p50_ms": s.p50.as_secs_f64() * 1000.0,
        "p90_ms": s.p90.as_secs_f64() * 1000.0,
        "p99_ms": s.p99.as_secs_f64() * 1000.0,
        "max_ms": s.max.as_secs_f64() * 1000.0,
    })
}

/// [`summarize`], with one zero for no samples at all.
pub(crate) fn summarize_or_zero(v: Vec<Duration>) -> Summary {
    if v.is_empty() {
        summarize(vec![Duration::ZERO])
    } else {
        summarize(v)
    }
}
