//! The write side: registrations, their states and options, and the keeper that holds their
//! lease.

pub(crate) mod keeper;
pub(crate) mod observer;
pub(crate) mod options;
pub(crate) mod registration;
pub(crate) mod state;
pub(crate) mod stats;
