//! The vocabulary both sides share: the instance document, the name rules and the key layout.

pub(crate) mod instance;
pub(crate) mod layout;
pub(crate) mod names;
