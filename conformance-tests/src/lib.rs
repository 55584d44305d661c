//! One conformance suite for every backend of the service registry.
//!
//! Scenarios are plain async functions over a [`Fixture`] (a backend scoped to a fresh namespace,
//! plus optional hooks). [`conformance_suite!`] expands them into one `#[tokio::test]` per scenario,
//! named after the scenario, so a backend crate runs the whole suite with one line and
//! `cargo test -p service-registry-memory lease_` runs only the lease scenarios:
//!
//! ```ignore
//! async fn fixture(_scenario: &str) -> Option<conformance_tests::Fixture> {
//!     Some(conformance_tests::Fixture::new(std::sync::Arc::new(registry_memory::MemoryBackend::new())))
//! }
//! conformance_tests::conformance_suite!(fixture);
//! ```
//!
//! Scenarios read the backend's [`Capabilities`](registry_core::Capabilities) (minimum TTL, expiry
//! slack, maximum sizes, exact or coalesced history) instead of hard-coding timings, and never skip
//! a promise: a backend that cannot compact must declare that it keeps no history.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use registry_core::{Backend, Result, Revision};

#[cfg(feature = "testbed")]
pub mod consul_api;
pub mod engine;
pub mod forward;
#[cfg(feature = "testbed")]
pub mod pki;
#[cfg(feature = "testbed")]
pub mod resilience;
pub mod scenarios;
pub mod support;
#[cfg(feature = "testbed")]
pub mod testbed;
#[cfg(feature = "testbed")]
pub mod tls;

/// The backend under test and what the suite may do to it besides the contract.
#[derive(Clone)]
pub struct Fixture {
    /// The backend, scoped to a namespace no other scenario uses.
    pub backend: Arc<dyn Backend>,
    compactor: Option<Compactor>,
}

type Compactor = Arc<dyn Fn(Revision) -> BoxFuture<'static, Result<()>> + Send + Sync>;

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("backend", &self.backend)
            .field("compactor", &self.compactor.is_some())
            .finish()
    }
}

impl Fixture {
    /// A fixture for `backend`, which must be scoped to a fresh namespace.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Fixture {
            backend,
            compactor: None,
        }
    }

    /// Declares how to discard the backend's history up to a revision (etcd's compaction, a stream
    /// trim), so the `Compacted` scenario can run.
    pub fn with_compactor<F>(mut self, compact: F) -> Self
    where
        F: Fn(Revision) -> BoxFuture<'static, Result<()>> + Send + Sync + 'static,
    {
        self.compactor = Some(Arc::new(compact));
        self
    }

    /// Compacts history up to `revision`; `None` when the fixture has no compactor.
    pub async fn compact(&self, revision: Revision) -> Option<Result<()>> {
        match &self.compactor {
            Some(c) => Some(c(revision).await),
            None => None,
        }
    }
}

/// Whether tests that need a server must fail (rather than skip) when it cannot be had:
/// `REGISTRY_TEST_REQUIRED=1`, as set by the README's test command and CI.
pub fn server_required() -> bool {
    matches!(
        std::env::var("REGISTRY_TEST_REQUIRED").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Expands `$crate::__scenario_tests!($factory; names...)` (mode `tests`) or
/// `$crate::__scenario_names!(; names...)` (mode `names`) with every scenario name. The list of
/// scenarios lives here only.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_scenarios {
    (tests $factory:path) => {
        $crate::__with_scenarios!(@expand __scenario_tests ($factory));
    };
    (names) => {
        $crate::__with_scenarios!(@expand __scenario_names ())
    };
    (@expand $callback:ident ($($args:tt)*)) => {
        $crate::$callback! { $($args)* ;
            lease_grant_reports_granted_ttl,
            lease_grant_out_of_range,
            lease_keep_alive_keeps_keys,
            lease_keep_alive_reports_remaining_ttl,
            lease_expiry_deletes_keys_within_slack,
            lease_keep_alive_after_expiry_is_lease_not_found,
            lease_keep_alive_racing_expiry,
            lease_revoke_deletes_keys_at_once,
            lease_revoke_unknown_is_lease_not_found,
            lease_put_with_revoked_lease_fails,
            lease_expiry_of_100_keys_produces_100_deletes,
            lease_revoke_emits_delete_events,
            lease_expiry_is_per_lease,
            lease_put_without_lease_detaches_key,
            lease_put_moves_key_between_leases,
            kv_put_get_roundtrip,
            kv_get_missing_is_none,
            kv_revisions_strictly_increase,
            kv_overwrite_updates_value_and_revision,
            kv_delete_returns_revision,
            kv_list_in_key_order_with_revision,
            kv_list_prefix_is_a_directory,
            kv_list_empty_prefix_lists_namespace,
            kv_unicode_and_slash_heavy_keys,
            kv_value_at_max_size_accepted_one_over_rejected,
            kv_key_length_limit,
            kv_invalid_keys_rejected,
            kv_empty_and_binary_values_roundtrip,
            watch_delivers_puts_and_deletes_in_order,
            watch_from_zero_replays_history,
            watch_from_current_revision_sees_only_new,
            watch_prefix_does_not_match_sibling,
            watch_empty_prefix_sees_everything,
            watch_overlapping_watchers,
            watch_slow_reader_gets_every_event,
            watch_concurrent_writers_consistent_order,
            watch_resume_has_no_gap_or_duplicate,
            watch_resume_converges_with_deletes,
            watch_reports_compacted,
            watch_list_then_watch_misses_nothing,
            watch_many_watchers_see_the_same_events,
            cond_put_absent_creates_once,
            cond_put_revision_is_compare_and_swap,
            cond_put_lease_is_write_if_owner,
            cond_delete_absent_changes_nothing,
            cond_delete_revision_is_compare_and_delete,
            cond_delete_lease_is_delete_if_owner,
            cond_lease_condition_fails_once_revoked,
            cond_lease_condition_fails_once_expired,
            cond_condition_comes_before_the_lease,
            cond_applied_writes_watch_like_unconditional,
            cond_failed_writes_change_nothing,
            cond_writes_validate_like_put,
            cond_concurrent_writers_have_one_winner,
            cond_put_many_each_write_alone,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_tests {
    ($factory:path ; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                match $factory(stringify!($name)).await {
                    Some(fixture) => $crate::scenarios::$name(fixture).await,
                    None => eprintln!("skipped {}: backend unavailable (see above)", stringify!($name)),
                }
            }
        )*
        /// Every scenario name, for the test that checks the suite is complete.
        #[allow(dead_code)]
        const CONFORMANCE_SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_names {
    (; $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
}

/// Every scenario name, in suite order.
pub const SCENARIOS: &[&str] = __with_scenarios!(names);

/// Expands into one `#[tokio::test]` per scenario, each calling `$factory(scenario_name).await` for
/// a fresh [`Fixture`] (`None` skips, after the factory has printed why; factories must panic instead when
/// [`server_required`] is true). The calling crate needs `tokio` with the `macros` and
/// `rt-multi-thread` features among its dev-dependencies.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::__with_scenarios!(tests $factory);
    };
}
