//! Key and prefix rules shared by every backend.
//!
//! A key is a non-empty UTF-8 string of at most [`Capabilities::max_key_len`] bytes containing no
//! ASCII control character (NUL, newline, ...). Slashes separate path segments but carry no other
//! meaning: `a//b/` is a valid key.
//!
//! A prefix names a directory. The empty prefix matches every key in the namespace; a prefix ending
//! in `/` matches keys that start with it; any other prefix `p` is read as `p/`. So `a/b` matches
//! `a/b/x` but neither `a/bc` nor `a/b` itself.

use std::borrow::Cow;

use crate::backend::Capabilities;
use crate::error::{Error, Result};

/// Checks `key` against the key rules and the backend's maximum key length.
pub fn validate_key(key: &str, caps: &Capabilities) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key must not be empty"));
    }
    if key.len() > caps.max_key_len {
        return Err(Error::invalid(format!(
            "key is {} bytes, the maximum is {}",
            key.len(),
            caps.max_key_len
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_ascii_control()) {
        return Err(Error::invalid(format!(
            "key contains the control character {:?}",
            c
        )));
    }
    Ok(())
}

/// Checks a value's size against the backend's maximum value size.
pub fn validate_value(value: &[u8], caps: &Capabilities) -> Result<()> {
    if value.len() > caps.max_value_len {
        return Err(Error::invalid(format!(
            "value is {} bytes, the maximum is {}",
            value.len(),
            caps.max_value_len
        )));
    }
    Ok(())
}

/// What every write checks before it reaches the server (`put` and `put_if` of every backend): the
/// key against the key rules and the value against the maximum value size, so that a backend
/// refuses the same writes with the same [`InvalidInput`](crate::ErrorKind::InvalidInput) errors.
pub fn validate_put(key: &str, value: &[u8], caps: &Capabilities) -> Result<()> {
    validate_key(key, caps)?;
    validate_value(value, caps)
}

/// Checks a prefix: empty, or a valid key optionally ending in `/`.
pub fn validate_prefix(prefix: &str, caps: &Capabilities) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix, caps)
}

/// The prefix in its normal form: empty, or ending in `/`.
pub fn normalize_prefix(prefix: &str) -> Cow<'_, str> {
    if prefix.is_empty() || prefix.ends_with('/') {
        Cow::Borrowed(prefix)
    } else {
        Cow::Owned(format!("{prefix}/"))
    }
}

/// Whether `key` lies under `normalized_prefix` (the output of [`normalize_prefix`]).
pub fn key_matches(normalized_prefix: &str, key: &str) -> bool {
    key.starts_with(normalized_prefix)
}

/// The smallest string greater than every string starting with `prefix`, for range queries; `None`
/// when no such bound exists (empty prefix, or all bytes `0xff`).
pub fn prefix_range_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_a_directory() {
        let p = normalize_prefix("a/b");
        assert!(key_matches(&p, "a/b/x"));
        assert!(!key_matches(&p, "a/bc"));
        assert!(!key_matches(&p, "a/b"));
        assert_eq!(normalize_prefix("a/b/"), "a/b/");
        assert!(key_matches(&normalize_prefix(""), "anything"));
    }

    #[test]
    fn key_rules() {
        let caps = Capabilities::default().with_max_key_len(8);
        assert!(validate_key("a//b/", &caps).is_ok());
        assert!(validate_key("", &caps).is_err());
        assert!(validate_key("a\0b", &caps).is_err());
        assert!(validate_key("a\nb", &caps).is_err());
        assert!(validate_key("123456789", &caps).is_err());
        assert!(validate_key("12345678", &caps).is_ok());
    }

    #[test]
    fn range_end() {
        assert_eq!(prefix_range_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_range_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_range_end(b"\xff"), None);
        assert_eq!(prefix_range_end(b""), None);
    }
}
