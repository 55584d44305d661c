//! Key-value scenarios: put, get, delete, list, revisions, key and value limits.

use registry_core::{Bytes, ErrorKind};

use crate::Fixture;
use crate::support::*;

/// A put's value and revision come back from get.
pub async fn kv_put_get_roundtrip(f: Fixture) {
    let rev = put(&*f.backend, "svc/one", "10.0.0.1:80").await;
    assert!(rev > 0, "put returned revision 0");
    let kv = ok(f.backend.get("svc/one").await, "get").expect("key missing after put");
    assert_eq!(kv.key, "svc/one");
    assert_eq!(kv.value, b("10.0.0.1:80"));
    assert_eq!(
        kv.revision, rev,
        "get reports another revision than put returned"
    );
    assert_eq!(kv.lease, None);
}

/// Getting an absent key is `None`, not an error.
pub async fn kv_get_missing_is_none(f: Fixture) {
    assert!(ok(f.backend.get("absent").await, "get").is_none());
    assert!(ok(f.backend.get("absent/deeper/still").await, "get").is_none());
}

/// Every change gets a strictly greater revision.
pub async fn kv_revisions_strictly_increase(f: Fixture) {
    let mut last = 0;
    for i in 0..20 {
        let rev = put(&*f.backend, &format!("inc/{}", i % 3), &i.to_string()).await;
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
        if i % 5 == 4 {
            let del = ok(f.backend.delete(&format!("inc/{}", i % 3)).await, "delete")
                .expect("deleted key existed");
            assert!(del > last, "delete revision {del} after {last}");
            last = del;
        }
    }
}

/// Overwriting replaces the value and moves the revision forward.
pub async fn kv_overwrite_updates_value_and_revision(f: Fixture) {
    let r1 = put(&*f.backend, "ow", "first").await;
    let r2 = put(&*f.backend, "ow", "second").await;
    assert!(r2 > r1);
    let kv = ok(f.backend.get("ow").await, "get").expect("key");
    assert_eq!((kv.value, kv.revision), (b("second"), r2));
    assert_eq!(ok(f.backend.list("").await, "list").entries.len(), 1);
}

/// Delete returns the revision of the delete and removes the key; deleting an absent key is `None`.
pub async fn kv_delete_returns_revision(f: Fixture) {
    let put_rev = put(&*f.backend, "del/k", "v").await;
    let del_rev = ok(f.backend.delete("del/k").await, "delete").expect("delete of existing key");
    assert!(del_rev > put_rev);
    assert!(ok(f.backend.get("del/k").await, "get").is_none());
    assert_eq!(ok(f.backend.delete("del/k").await, "delete again"), None);
    assert_eq!(
        ok(f.backend.delete("del/never").await, "delete absent"),
        None
    );
    let listing = ok(f.backend.list("del").await, "list");
    assert!(listing.entries.is_empty());
    assert!(
        listing.revision >= del_rev,
        "listing revision {} predates the delete {del_rev}",
        listing.revision
    );
}

/// List returns entries in key order and a revision no older than the last change.
pub async fn kv_list_in_key_order_with_revision(f: Fixture) {
    let mut last = 0;
    for k in ["ls/m", "ls/a", "ls/z", "ls/b/1", "ls/b", "ls/A"] {
        last = put(&*f.backend, k, k).await;
    }
    let listing = ok(f.backend.list("ls").await, "list");
    let keys: Vec<_> = listing.entries.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["ls/A", "ls/a", "ls/b", "ls/b/1", "ls/m", "ls/z"]);
    for kv in &listing.entries {
        assert_eq!(kv.value, b(&kv.key), "value of {}", kv.key);
    }
    assert!(listing.revision >= last);
}

/// A prefix is a directory: `a/b` lists `a/b/...` but neither `a/bc` nor `a/b` itself.
pub async fn kv_list_prefix_is_a_directory(f: Fixture) {
    for k in ["a/b", "a/b/x", "a/b/y/z", "a/bc", "a/bc/x", "a/a"] {
        put(&*f.backend, k, "v").await;
    }
    for prefix in ["a/b", "a/b/"] {
        let keys: Vec<_> = ok(f.backend.list(prefix).await, "list")
            .entries
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["a/b/x", "a/b/y/z"], "list({prefix:?})");
    }
    let keys: Vec<_> = ok(f.backend.list("a").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["a/a", "a/b", "a/b/x", "a/b/y/z", "a/bc", "a/bc/x"]);
}

/// The empty prefix lists everything in the namespace (and nothing outside it).
pub async fn kv_list_empty_prefix_lists_namespace(f: Fixture) {
    assert!(
        ok(f.backend.list("").await, "list").entries.is_empty(),
        "a fresh namespace is not empty: it leaks keys of other namespaces"
    );
    for k in ["x", "y/z", "zz/top"] {
        put(&*f.backend, k, "v").await;
    }
    let keys: Vec<_> = ok(f.backend.list("").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["x", "y/z", "zz/top"]);
}

/// Unicode, spaces, URL-special characters and runs of slashes are ordinary key bytes.
pub async fn kv_unicode_and_slash_heavy_keys(f: Fixture) {
    let keys = [
        "u/ключ/服务",
        "u/🦀/x y",
        "u//a///b/",
        "u/a%2Fb?c=d#e&f",
        "u/.././..",
        "u/tab\u{a0}nbsp",
        "u/\u{10FFFF}",
    ];
    for (i, k) in keys.iter().enumerate() {
        let rev = ok(
            f.backend.put(k, b(&i.to_string()), None).await,
            &format!("put {k:?}"),
        );
        let kv = ok(f.backend.get(k).await, "get").unwrap_or_else(|| panic!("{k:?} missing"));
        assert_eq!(
            (kv.key.as_str(), kv.value, kv.revision),
            (*k, b(&i.to_string()), rev)
        );
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    let listed: Vec<_> = ok(f.backend.list("u").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(listed, sorted);
    let nested: Vec<_> = ok(f.backend.list("u//a").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(nested, ["u//a///b/"], "list(\"u//a\")");
    for k in keys {
        assert!(
            ok(f.backend.delete(k).await, "delete").is_some(),
            "delete {k:?}"
        );
    }
}

/// A value of exactly the declared maximum is stored intact; one byte more is `InvalidInput` and
/// writes nothing.
pub async fn kv_value_at_max_size_accepted_one_over_rejected(f: Fixture) {
    let max = f.backend.capabilities().max_value_len;
    let value: Bytes = (0..max).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    ok(
        f.backend.put("big", value.clone(), None).await,
        "put at max size",
    );
    let kv = ok(f.backend.get("big").await, "get").expect("big value");
    assert_eq!(kv.value.len(), max);
    assert!(kv.value == value, "big value corrupted");
    let over: Bytes = vec![7u8; max + 1].into();
    assert_kind(
        f.backend.put("big2", over, None).await,
        ErrorKind::InvalidInput,
        "put one byte over",
    );
    assert!(ok(f.backend.get("big2").await, "get").is_none());
}

/// A key of exactly the maximum length works; one byte longer is `InvalidInput`.
pub async fn kv_key_length_limit(f: Fixture) {
    let max = f.backend.capabilities().max_key_len;
    let key = format!("l/{}", "k".repeat(max - 2));
    ok(
        f.backend.put(&key, b("v"), None).await,
        "put max-length key",
    );
    assert!(ok(f.backend.get(&key).await, "get").is_some());
    let long = format!("{key}k");
    assert_kind(
        f.backend.put(&long, b("v"), None).await,
        ErrorKind::InvalidInput,
        "put over-long key",
    );
}

/// Empty keys and keys with control characters are `InvalidInput` for every operation.
pub async fn kv_invalid_keys_rejected(f: Fixture) {
    for k in ["", "a\0b", "a\nb", "tab\there"] {
        assert_kind(
            f.backend.put(k, b("v"), None).await,
            ErrorKind::InvalidInput,
            &format!("put {k:?}"),
        );
        assert_kind(
            f.backend.get(k).await,
            ErrorKind::InvalidInput,
            &format!("get {k:?}"),
        );
        assert_kind(
            f.backend.delete(k).await,
            ErrorKind::InvalidInput,
            &format!("delete {k:?}"),
        );
    }
    assert_kind(
        f.backend.list("a\0").await,
        ErrorKind::InvalidInput,
        "list with NUL",
    );
    assert!(ok(f.backend.list("").await, "list").entries.is_empty());
}

/// Empty values and every byte value survive a round trip.
pub async fn kv_empty_and_binary_values_roundtrip(f: Fixture) {
    ok(
        f.backend.put("bin/empty", Bytes::new(), None).await,
        "put empty",
    );
    let kv = ok(f.backend.get("bin/empty").await, "get").expect("empty value key missing");
    assert!(kv.value.is_empty());
    let all: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    ok(
        f.backend.put("bin/all", all.clone(), None).await,
        "put binary",
    );
    assert_eq!(
        ok(f.backend.get("bin/all").await, "get")
            .expect("binary")
            .value,
        all
    );
}
