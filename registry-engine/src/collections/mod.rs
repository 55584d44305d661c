//! The data structures the directory is made of: a persistent B+tree with positions
//! ([`tree`]), the instance lists and maps built on it ([`instances`]), and the consistent-hash
//! ring ([`ring`]).

pub(crate) mod instances;
pub(crate) mod ring;
pub(crate) mod tree;
