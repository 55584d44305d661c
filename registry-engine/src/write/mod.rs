//! The write side: registrations and the keeper that holds their lease.

pub(crate) mod keeper;
