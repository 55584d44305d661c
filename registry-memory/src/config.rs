//! [`MemoryBuilder`]: history size and declared capabilities of a [`MemoryBackend`].

use std::time::Duration;

use registry_core::url::BackendUrl;
use registry_core::{Capabilities, Error, Result};

use crate::backend::MemoryBackend;

/// The right form of a memory URL, for messages.
const URL_HELP: &str =
    "expected memory://, memory://NAME or memory://?history=1000&max_value=BYTES";

/// Default number of retained history events.
pub const DEFAULT_HISTORY: usize = 100_000;

/// The most writes [`Backend::put_if_many`](registry_core::Backend::put_if_many) applies under
/// one hold of the store's lock: about a millisecond of holding it at most, long enough to spare
/// a thousand lock round trips and wake-ups of the watchers, short enough that no other call waits
/// long behind it.
const BATCH_WRITES: usize = 1024;

impl MemoryBackend {
    /// A new, empty store with default capabilities and a history of 100,000 events.
    pub fn new() -> Self {
        MemoryBuilder::new().build()
    }

    /// A builder for history size and declared limits.
    pub fn builder() -> MemoryBuilder {
        MemoryBuilder::new()
    }
}

/// Builds a [`MemoryBackend`].
///
/// ```
/// use registry_memory::MemoryBackend;
/// // A small history makes the `Compacted` path easy to reach in tests.
/// let backend = MemoryBackend::builder().history_limit(16).build();
/// # drop(backend);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryBuilder {
    history_limit: usize,
    caps: Capabilities,
}

impl Default for MemoryBuilder {
    fn default() -> Self {
        MemoryBuilder::new()
    }
}

impl MemoryBuilder {
    /// Defaults: 100,000 retained events; batches of up to 1,024 writes under one lock; minimum TTL 10 ms; expiry slack 50 ms; 1 KiB keys; 1 MiB
    /// values.
    pub fn new() -> Self {
        MemoryBuilder {
            history_limit: DEFAULT_HISTORY,
            caps: Capabilities::default()
                .with_min_ttl(Duration::from_millis(10))
                .with_max_ttl(Duration::from_secs(7 * 86_400))
                .with_ttl_granularity(Duration::from_millis(1))
                .with_expiry_slack(Duration::from_millis(50))
                .with_max_key_len(1024)
                .with_max_value_len(1024 * 1024)
                .with_exact_history(true)
                .with_watch_delay(Duration::from_millis(500))
                .with_batch_writes(BATCH_WRITES),
        }
    }

    /// Reads `memory://` URLs; the query may set `history=N` and `max_value=N` (bytes). See
    /// [`from_backend_url`](Self::from_backend_url).
    pub fn from_url(url: &str) -> Result<Self> {
        MemoryBuilder::from_backend_url(&BackendUrl::parse_expecting(url, URL_HELP)?)
    }

    /// Reads a parsed `memory://` URL: `memory://` or `memory://NAME` (the name is the caller's
    /// business: `registry::connect` shares one store per name), and the options `history=N` and
    /// `max_value=N` (bytes).
    pub fn from_backend_url(url: &BackendUrl) -> Result<Self> {
        if url.scheme() != "memory" {
            return Err(Error::invalid(format!(
                "`{url}` is not a memory URL; {URL_HELP}"
            )));
        }
        if url.hosts().len() > 1 || url.hosts().any(|h| h.port().is_some()) {
            return Err(Error::invalid(format!(
                "`{url}`: a memory URL names one store at most, without a port; {URL_HELP}"
            )));
        }
        let mut b = MemoryBuilder::new();
        for (k, v) in url.query_pairs() {
            // The name first: the value of an unknown option may be a secret, never to be quoted.
            let set = match k {
                "history" => MemoryBuilder::history_limit,
                "max_value" => MemoryBuilder::max_value_len,
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown memory URL option `{k}` (known: history, max_value)"
                    )));
                }
            };
            let n: usize = v.parse().map_err(|_| {
                Error::invalid(format!("memory URL option `{k}` needs a number, got `{v}`"))
            })?;
            b = set(b, n);
        }
        Ok(b)
    }

    /// How many events the history retains before the oldest revisions are compacted away.
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events.max(1);
        self
    }

    /// The largest value accepted.
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.caps.max_value_len = bytes;
        self
    }

    /// The most writes one `put_if_many` applies under one hold of the lock (default 1,024; at
    /// least 1). 1 makes the store behave as a backend without a batch call of its own, as
    /// etcd's and Consul's: callers then write one key per call.
    pub fn batch_writes(mut self, writes: usize) -> Self {
        self.caps = self.caps.with_batch_writes(writes);
        self
    }

    /// The shortest TTL granted (shorter requests are raised to it; at most the maximum TTL).
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.caps.min_ttl = ttl;
        self
    }

    /// Replaces the declared capabilities wholesale. The maximum TTL is capped at
    /// [`MAX_DURATION`](registry_core::config::MAX_DURATION), and the minimum TTL and the
    /// granularity at the maximum TTL, so that no lease deadline can overflow.
    pub fn capabilities(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// Creates the (empty) store.
    pub fn build(self) -> MemoryBackend {
        MemoryBackend::from_parts(self.caps, self.history_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        assert!(MemoryBuilder::from_url("memory://").is_ok());
        let b = MemoryBuilder::from_url("memory://?history=5&max_value=10").unwrap();
        assert_eq!(b.history_limit, 5);
        assert_eq!(b.caps.max_value_len, 10);
        assert!(MemoryBuilder::from_url("memory://?colour=red").is_err());
        assert!(MemoryBuilder::from_url("memory://?history=x").is_err());
        assert!(MemoryBuilder::from_url("etcd://x").is_err());
        assert!(MemoryBuilder::from_url("MEMORY://demo?history=7").is_ok());
        for bad in ["memory://a,b", "memory://a:1", "memory://a b", "redis://h"] {
            let e = MemoryBuilder::from_url(bad).unwrap_err();
            assert!(e.message().contains("memory://NAME"), "{bad}: {e}");
        }
    }
}
