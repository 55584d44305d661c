//! Counters that a task bumps and a handle reads, declared once: [`counters!`](crate::counters!)
//! writes the struct of atomics the task bumps and the plain snapshot struct users see, and the
//! code that copies one into the other.
//!
//! ```
//! use registry_core::counters::Bump;
//!
//! registry_core::counters! {
//!     /// What the poller did (live, shared by its tasks).
//!     struct Stats =>
//!     /// What the poller did, at one moment.
//!     pub struct PollCounts {
//!         /// Requests sent.
//!         requests,
//!         /// Requests that failed.
//!         failures,
//!     }
//! }
//!
//! let stats = Stats::default();
//! stats.requests.bump();
//! assert_eq!(stats.snapshot().requests, 1);
//! assert_eq!(stats.snapshot().failures, 0);
//! ```
//!
//! A field is an [`AtomicU64`] read as a `u64` unless it names its own types
//! (`field: Live => Snapshot`, where `Live` implements [`Counter`]). The live struct may carry
//! other fields (`struct Stats { tel: Telemetry } => ...`, each `Default` and `Debug`). The
//! snapshot struct is `Copy`, compares with `==`, and is `#[non_exhaustive]`, so fields can be
//! added in minor releases. Each field is read on its own: a snapshot is not one atomic moment of
//! all the counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Something a live counters struct holds and a snapshot copies out.
pub trait Counter {
    /// What a snapshot holds of it.
    type Snapshot;
    /// Its value now.
    fn snapshot(&self) -> Self::Snapshot;
}

impl Counter for AtomicU64 {
    type Snapshot = u64;

    fn snapshot(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Counting on an [`AtomicU64`] counter (relaxed: counters order nothing).
pub trait Bump {
    /// Adds one.
    fn bump(&self);
    /// Subtracts one (for gauges such as "followed now").
    fn drop_one(&self);
    /// Sets the value (for gauges such as "the last delay").
    fn put(&self, value: u64);
}

impl Bump for AtomicU64 {
    fn bump(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_one(&self) {
        self.fetch_sub(1, Ordering::Relaxed);
    }

    fn put(&self, value: u64) {
        self.store(value, Ordering::Relaxed);
    }
}

/// Declares a live counters struct and its snapshot struct; see the [module](mod@crate::counters).
#[macro_export]
macro_rules! counters {
    (
        $(#[$live_meta:meta])*
        $live_vis:vis struct $live:ident $({ $( $(#[$extra_meta:meta])* $extra:ident : $extra_ty:ty ),* $(,)? })? =>
        $(#[$snap_meta:meta])*
        $snap_vis:vis struct $snap:ident {
            $( $(#[$field_meta:meta])* $field:ident $(: $field_live:ty => $field_snap:ty)? ),* $(,)?
        }
    ) => {
        $(#[$live_meta])*
        #[derive(Debug, Default)]
        $live_vis struct $live {
            $($( $(#[$extra_meta])* pub(crate) $extra: $extra_ty, )*)?
            $( pub(crate) $field: $crate::counters!(@live $($field_live)?), )*
        }

        impl $live {
            /// The counters now.
            #[allow(dead_code)]
            pub(crate) fn snapshot(&self) -> $snap {
                $snap {
                    $( $field: $crate::counters::Counter::snapshot(&self.$field), )*
                }
            }
        }

        $(#[$snap_meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        $snap_vis struct $snap {
            $( $(#[$field_meta])* pub $field: $crate::counters!(@snap $($field_snap)?), )*
        }
    };
    (@live) => { ::std::sync::atomic::AtomicU64 };
    (@live $t:ty) => { $t };
    (@snap) => { u64 };
    (@snap $t:ty) => { $t };
}
