//! Passive outlier detection, shared by the balanced and the keyed channel: an instance that
//! refuses a connection or gives no answer within the per-attempt timeout is ejected at once, one
//! whose calls fail otherwise (connection lost, `UNAVAILABLE`) several times in a row too: calls
//! skip it (a keyed call goes to the next ring member) until its ejection ends, then it is tried
//! again; an answer brings it back, another failure ejects it for twice as long (up to a
//! maximum). As Envoy's outlier detection,
//! Curator's DownInstancePolicy and Finagle's failure accrual do, before the instance's lease ends
//! and the directory drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When an instance is ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject an instance (0 turns outlier detection off). A refused
    /// connection or a timed-out attempt ejects it at once: the process is gone or hung.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection that follows a failed retry doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    /// 3 failures in a row (or one refusal or timeout); ejected for 1 s, then 2, 4, ... up to
    /// 30 s.
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

impl OutlierPolicy {
    /// No outlier detection: every instance the directory lists gets calls.
    pub fn off() -> Self {
        OutlierPolicy {
            consecutive_failures: 0,
            ..OutlierPolicy::default()
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The address the state is about: an instance back on another address is a new endpoint.
    addr: String,
    failures: u32,
    /// Ejections in a row (the back-off's exponent); reset by an answer.
    ejections: u32,
    until: Option<Instant>,
}

/// The outlier state of one channel's instances, by id (and address).
#[derive(Clone, Debug, Default)]
pub(crate) struct Outliers {
    policy: OutlierPolicy,
    states: Arc<Mutex<HashMap<String, State>>>,
}

/// What an attempt's outcome says about its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It answered (whatever the status, `UNAVAILABLE` excepted).
    Answered,
    /// Connection lost, or `UNAVAILABLE`.
    Failed,
    /// Connection refused (or not made), or no answer within the per-attempt timeout.
    Down,
}

impl Outliers {
    pub(crate) fn new(policy: OutlierPolicy) -> Outliers {
        Outliers {
            policy,
            states: Arc::default(),
        }
    }

    pub(crate) fn policy(&self) -> OutlierPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` at `addr` is ejected now (`None`: at whatever address it was ejected).
    pub(crate) fn is_ejected(&self, id: &str, addr: Option<&str>, now: Instant) -> bool {
        if self.policy.consecutive_failures == 0 {
            return false;
        }
        self.lock()
            .get(id)
            .filter(|s| addr.is_none_or(|a| a == s.addr))
            .and_then(|s| s.until)
            .is_some_and(|until| now < until)
    }

    /// Records an attempt's outcome on `id` at `addr`.
    pub(crate) fn record(&self, id: &str, addr: &str, outcome: Outcome) {
        let threshold = self.policy.consecutive_failures;
        if threshold == 0 {
            return;
        }
        let mut states = self.lock();
        match outcome {
            Outcome::Answered => {
                // Nothing to keep for an instance that answers.
                if states
                    .get(id)
                    .is_some_and(|s| s.failures > 0 || s.ejections > 0)
                {
                    states.remove(id);
                }
            }
            Outcome::Failed | Outcome::Down => {
                let now = Instant::now();
                let s = states.entry(id.to_owned()).or_default();
                if s.addr != addr {
                    *s = State {
                        addr: addr.to_owned(),
                        ..State::default()
                    };
                }
                s.failures += if outcome == Outcome::Down {
                    threshold
                } else {
                    1
                };
                // Once ejected and let back in, one failure ejects it again, for longer.
                let again = s.ejections > 0 && s.until.is_some_and(|u| now >= u);
                if (s.failures >= threshold || again) && s.until.is_none_or(|u| now >= u) {
                    let factor = 1u32 << s.ejections.min(16);
                    let length = self
                        .policy
                        .base_ejection
                        .saturating_mul(factor)
                        .min(self.policy.max_ejection);
                    s.until = Some(now + length);
                    s.ejections += 1;
                    s.failures = 0;
                    tracing::info!(
                        instance = %id,
                        ejection = ?length,
                        "tonic: instance ejected after failed calls; calls skip it until then"
                    );
                }
            }
        }
    }

    /// Forgets every instance not in `live` (ids that came and went must not grow the map).
    pub(crate) fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| live(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_after_consecutive_failures_then_back_with_back_off() {
        let o = Outliers::new(OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(250),
        });
        o.record("a", "x:1", Outcome::Failed);
        assert!(!o.is_ejected("a", Some("x:1"), Instant::now()));
        // An answer in between resets the count.
        o.record("a", "x:1", Outcome::Answered);
        o.record("a", "x:1", Outcome::Failed);
        assert!(!o.is_ejected("a", Some("x:1"), Instant::now()));
        o.record("a", "x:1", Outcome::Failed);
        assert!(o.is_ejected("a", Some("x:1"), Instant::now()));
        assert!(!o.is_ejected("b", Some("x:1"), Instant::now()));
        // Its ejection ends; one more failure ejects it again, for twice as long (200 ms).
        std::thread::sleep(Duration::from_millis(120));
        assert!(!o.is_ejected("a", Some("x:1"), Instant::now()));
        o.record("a", "x:1", Outcome::Failed);
        let now = Instant::now();
        assert!(o.is_ejected("a", Some("x:1"), now + Duration::from_millis(110)));
        assert!(!o.is_ejected("a", Some("x:1"), now + Duration::from_millis(260)));
        // An answer after it brings it back for good: one failure is not enough then.
        std::thread::sleep(Duration::from_millis(220));
        o.record("a", "x:1", Outcome::Answered);
        o.record("a", "x:1", Outcome::Failed);
        assert!(!o.is_ejected("a", Some("x:1"), Instant::now()));
        o.retain(|id| id != "a");
        assert!(o.lock().is_empty());
    }

    #[test]
    fn an_instance_on_another_address_is_a_new_endpoint() {
        let o = Outliers::new(OutlierPolicy::default());
        o.record("a", "x:1", Outcome::Down);
        assert!(o.is_ejected("a", None, Instant::now()));
        assert!(!o.is_ejected("a", Some("x:2"), Instant::now()));
        o.record("a", "x:2", Outcome::Failed);
        assert!(!o.is_ejected("a", Some("x:2"), Instant::now()));
    }

    #[test]
    fn a_refusal_or_a_timeout_ejects_at_once() {
        let o = Outliers::new(OutlierPolicy::default());
        o.record("a", "x:1", Outcome::Down);
        assert!(o.is_ejected("a", Some("x:1"), Instant::now()));
    }

    #[test]
    fn off_never_ejects() {
        let o = Outliers::new(OutlierPolicy::off());
        for _ in 0..10 {
            o.record("a", "x:1", Outcome::Failed);
            o.record("a", "x:1", Outcome::Down);
        }
        assert!(!o.is_ejected("a", Some("x:1"), Instant::now()));
    }
}
