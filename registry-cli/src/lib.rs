//! The library half of the `registry` command-line tool: the HTTP server of `registry serve`.

pub mod serve;
