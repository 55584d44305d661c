//! The library half of the `registry` command-line tool: the HTTP server of `registry serve`,
//! and the directory sources of `--source`.

pub mod serve;
pub mod sources;
