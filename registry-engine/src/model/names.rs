//! The name rules: service names, instance ids and namespaces are path segments of backend keys,
//! so they can never escape their prefix.

use registry_core::error::{Error, Result};

/// The longest service name, in bytes.
pub const MAX_SERVICE_LEN: usize = 64;
/// The longest instance id, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn name_ok(name: &str, max: usize, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(&c)
        })
}

/// Checks a service name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (so it
/// can never contain `/` or `..` at its start and escape its prefix).
pub fn validate_service(name: &str) -> Result<()> {
    if name_ok(name, MAX_SERVICE_LEN, &[]) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid service name {name:?}: use 1 to {MAX_SERVICE_LEN} of A-Z a-z 0-9 . _ -, \
             starting with a letter or digit"
        )))
    }
}

/// Checks an instance id: 1 to 128 of `A-Z a-z 0-9 . _ - : @`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<()> {
    if name_ok(id, MAX_ID_LEN, &[':', '@']) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid instance id {id:?}: use 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ - : @, \
             starting with a letter or digit"
        )))
    }
}

/// Checks a namespace: one or more `/`-separated segments, each a valid service name.
pub fn validate_namespace(ns: &str) -> Result<()> {
    if !ns.is_empty() && ns.split('/').all(|seg| name_ok(seg, MAX_SERVICE_LEN, &[])) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid namespace {ns:?}: use /-separated segments of A-Z a-z 0-9 . _ -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_their_prefix() {
        for bad in [
            "",
            "a/b",
            "..",
            "../x",
            ".hidden",
            "a b",
            "ünï",
            &"x".repeat(65),
        ] {
            assert!(validate_service(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "a.b_c-d", "9lives"] {
            assert!(validate_service(good).is_ok(), "{good:?}");
        }
        assert!(validate_id("node@host:8080").is_ok());
        assert!(validate_id("a/b").is_err());
        assert!(validate_namespace("registry/prod").is_ok());
        assert!(validate_namespace("registry//prod").is_err());
        assert!(validate_namespace("/registry").is_err());
    }
}
