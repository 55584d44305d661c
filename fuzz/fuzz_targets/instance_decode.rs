//! Instance documents as other processes (or an attacker with write access to the namespace) may
//! store them: `Instance::decode` must never panic, and what it accepts must be a valid instance
//! stored where it says, which re-encodes to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_engine::Instance;

fn check(service: &str, id: &str, data: &[u8]) {
    if let Ok(inst) = Instance::decode(service, id, data) {
        assert_eq!((inst.service.as_str(), inst.id.as_str()), (service, id));
        assert!(
            inst.validate().is_ok(),
            "decoded an invalid instance: {inst:?}"
        );
        let again =
            Instance::decode(service, id, &inst.encode()).expect("re-encoded instance decodes");
        assert_eq!(again, inst);
    }
}

fuzz_target!(|data: &[u8]| {
    // Stored at a fixed key, as a discovery of `web` reads it...
    check("web", "web-1", data);
    // ...and at the key the document itself names, so that documents get past the identity check
    // to the field validation.
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(data) {
        if let (Some(serde_json::Value::String(s)), Some(serde_json::Value::String(i))) =
            (doc.get("service"), doc.get("id"))
        {
            check(s, i, data);
        }
    }
});
