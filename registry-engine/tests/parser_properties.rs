//! Properties of what the engine parses from outside the process: service names, instance ids
//! and namespaces, and the instance documents other processes write into the backend. Random and
//! near-valid inputs must never panic, and what is accepted must make sense.

use std::collections::BTreeMap;

use proptest::prelude::*;
use registry_core::ErrorKind;
use registry_engine::{
    Instance, InstanceState, MAX_ID_LEN, MAX_SERVICE_LEN, MAX_WEIGHT, validate_id,
    validate_namespace, validate_service,
};

// ---- names ----

/// Names as people and programs write them: any text, near-valid names, names with separators.
fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9._:@-]{0,80}",
        "[a-z]{1,8}(/[a-z]{0,8}){0,4}/?",
        "[.:@_-][a-z0-9]{0,8}",
        "\\PC{0,30}",
    ]
}

proptest! {
    /// Service names, instance ids and namespaces: never a panic, and an accepted name can never
    /// leave its prefix (no `/` in a name, no leading `.`), within its length limit.
    #[test]
    fn names_accepted_are_safe_path_segments(name in name_text()) {
        let charset = |s: &str, extra: &[char]| {
            s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(&c))
        };
        if validate_service(&name).is_ok() {
            prop_assert!(name.len() <= MAX_SERVICE_LEN && charset(&name, &[]));
        }
        if validate_id(&name).is_ok() {
            prop_assert!(name.len() <= MAX_ID_LEN && charset(&name, &[':', '@']));
        }
        if validate_namespace(&name).is_ok() {
            prop_assert!(name.split('/').all(|seg| !seg.is_empty() && charset(seg, &[])));
        }
    }
}

// ---- instance documents ----

fn service_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

fn instance_id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._:@-]{0,30}"
}

fn valid_instance() -> impl Strategy<Value = Instance> {
    (
        service_name(),
        instance_id(),
        prop::collection::vec("\\PC{1,40}", 1..4),
        prop::collection::btree_map(".{0,10}", ".{0,20}", 0..4),
        prop::option::of(".{0,12}"),
        1..=MAX_WEIGHT,
        any::<bool>(),
    )
        .prop_map(|(service, id, addrs, metadata, version, weight, online)| {
            let mut i = Instance::new(service, id).weight(weight);
            i.addrs = addrs;
            i.metadata = metadata;
            i.version = version;
            i.state = if online {
                InstanceState::Online
            } else {
                InstanceState::Offline
            };
            i
        })
}

/// Arbitrary JSON values, small and deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid document with some fields replaced by arbitrary JSON or removed.
fn near_valid_document() -> impl Strategy<Value = (Instance, Vec<u8>)> {
    (
        valid_instance(),
        prop::collection::btree_map(
            prop::sample::select(vec![
                "v", "service", "id", "addrs", "meta", "version", "weight", "state", "extra",
            ]),
            prop::option::of(json_value()),
            0..4,
        ),
    )
        .prop_map(|(inst, changes)| {
            let mut doc: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(&inst.encode()).unwrap();
            for (field, value) in changes {
                match value {
                    Some(v) => doc.insert(field.to_owned(), v),
                    None => doc.remove(field),
                };
            }
            (inst, serde_json::to_vec(&doc).unwrap())
        })
}

/// What every answer of `Instance::decode` must satisfy.
fn check_decoded(
    service: &str,
    id: &str,
    bytes: &[u8],
    r: registry_core::Result<Instance>,
) -> Result<(), TestCaseError> {
    match r {
        Ok(inst) => {
            prop_assert_eq!(&inst.service, service);
            prop_assert_eq!(&inst.id, id);
            prop_assert!(inst.validate().is_ok(), "{inst:?} decoded but is invalid");
            let again = Instance::decode(service, id, &inst.encode());
            prop_assert_eq!(again.as_ref().ok(), Some(&inst), "re-encoding changed it");
        }
        Err(e) => prop_assert_eq!(
            e.kind(),
            ErrorKind::Decode,
            "{}: {}",
            String::from_utf8_lossy(bytes),
            e
        ),
    }
    Ok(())
}

proptest! {
    #[test]
    fn instance_decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decoded("web", "a", &bytes, Instance::decode("web", "a", &bytes))?;
    }

    #[test]
    fn instance_decode_never_panics_on_arbitrary_json(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        check_decoded("web", "a", &bytes, Instance::decode("web", "a", &bytes))?;
    }

    #[test]
    fn instance_decode_checks_near_valid_documents((inst, bytes) in near_valid_document()) {
        let r = Instance::decode(&inst.service, &inst.id, &bytes);
        check_decoded(&inst.service, &inst.id, &bytes, r)?;
    }

    #[test]
    fn valid_instances_round_trip(inst in valid_instance()) {
        prop_assert!(inst.validate().is_ok());
        let bytes = inst.encode();
        prop_assert_eq!(Instance::decode(&inst.service, &inst.id, &bytes).ok(), Some(inst.clone()));
        // Truncated documents are decode errors, never panics.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let r = Instance::decode(&inst.service, &inst.id, &bytes[..cut]);
            prop_assert_eq!(r.map_err(|e| e.kind()).err(), Some(ErrorKind::Decode));
        }
    }
}
