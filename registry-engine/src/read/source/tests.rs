use super::*;
use crate::{BACKEND_PRECEDENCE, BACKEND_SOURCE};

fn inst(service: &str, id: &str) -> Instance {
    Instance::new(service, id).addr("10.0.0.1:80")
}

#[test]
fn invalid_and_foreign_instances_are_skipped_and_counted() {
    let dir = Directory::new();
    let s = dir.source("file", 5).unwrap();
    let skipped = s.publish(
        "web",
        [
            inst("web", "ok"),
            inst("api", "elsewhere"),
            Instance::new("web", "no-address"),
            inst("web", "bad id!"),
        ],
        0,
    );
    assert_eq!(skipped, 3);
    let snap = dir.snapshot("web");
    let ids: Vec<&str> = snap.all().keys().collect();
    assert_eq!(ids, ["ok"]);
}

#[test]
fn an_older_revision_of_a_source_is_ignored() {
    let dir = Directory::new();
    let s = dir.source("dns", 5).unwrap();
    s.publish("web", [inst("web", "a")], 7);
    s.publish("web", [inst("web", "b")], 6);
    assert!(dir.snapshot("web").all().contains_key("a"));
    s.publish("web", [inst("web", "c")], 8);
    assert!(dir.snapshot("web").all().contains_key("c"));
}

#[test]
fn staleness_is_per_source_and_keeps_every_instance() {
    let dir = Directory::new();
    let one = dir.source("one", 1).unwrap();
    let two = dir.source("two", 2).unwrap();
    one.publish("web", [inst("web", "a")], 0);
    two.publish("web", [inst("web", "b")], 0);
    one.set_stale("web", true);
    let first = dir.snapshot("web").stale_since().expect("stale");
    std::thread::sleep(std::time::Duration::from_millis(5));
    two.set_stale("web", true);
    let snap = dir.snapshot("web");
    assert_eq!(snap.stale_since(), Some(first), "the earliest");
    assert_eq!(snap.online().len(), 2);
    one.set_stale("web", false);
    assert!(dir.snapshot("web").is_stale(), "two is still stale");
    two.publish("web", [inst("web", "b")], 0);
    let snap = dir.snapshot("web");
    assert!(!snap.is_stale());
    assert_eq!(snap.online().len(), 2);
}

#[test]
fn names_and_precedences_are_unique() {
    let dir = Directory::new();
    dir.source("a", 1).unwrap();
    assert!(dir.source("a", 2).is_err());
    assert!(dir.source("b", 1).is_err());
    assert!(dir.source("c", BACKEND_PRECEDENCE).is_err());
    assert!(dir.source(BACKEND_SOURCE, 3).is_err());
    assert!(dir.source("", 3).is_err());
    dir.source("b", 2).unwrap();
}

#[test]
fn a_static_file_is_read_or_refused_with_its_name() {
    let path = std::env::temp_dir().join(format!("static-source-{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"[{"service":"db","id":"primary","addrs":["10.0.0.5:5432"],"meta":{"role":"rw"}},
            {"service":"db","id":"replica","addrs":["10.0.0.6:5432"],"weight":50}]"#,
    )
    .unwrap();
    let s = StaticSource::from_file(&path).unwrap();
    let dir = Directory::new();
    s.install(&dir, "static", -1).unwrap();
    let snap = dir.snapshot("db");
    assert_eq!(snap.online().len(), 2);
    assert_eq!(snap.all()["primary"].metadata["role"], "rw");
    assert_eq!(snap.all()["replica"].weight, 50);
    std::fs::write(&path, "{not json").unwrap();
    let e = StaticSource::from_file(&path).unwrap_err();
    assert!(e.to_string().contains("static-source-"), "{e}");
    std::fs::remove_file(&path).unwrap();
    assert!(StaticSource::from_file(&path).is_err());
}

/// Random publications and withdrawals by three sources listing overlapping ids: each
/// incremental merge is checked against a full one (in `merge_after`) and each view's
/// changes against a full diff (in the directory's `update`); here, the shown instance of
/// each id must be the one of the highest precedence that lists it.
#[test]
fn incremental_merges_of_several_sources_equal_full_merges() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    // (source 0..3, ids to list as bits of a u64 over 40 ids, tag, withdraw)
    let steps = proptest::collection::vec((0usize..3, any::<u64>(), 0u8..3, any::<bool>()), 1..40);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&steps, |steps| {
            let dir = Directory::new();
            let handles = [dir.source("a", 10).unwrap(), dir.source("b", -10).unwrap()];
            let mut listed: [BTreeMap<String, Instance>; 3] = Default::default();
            for (src, bits, tag, withdraw) in steps {
                let view: BTreeMap<String, Instance> = if withdraw && src < 2 {
                    BTreeMap::new()
                } else {
                    (0..40)
                        .filter(|b| bits >> b & 1 == 1)
                        .map(|b| {
                            let id = format!("i{b:02}");
                            let i = inst("web", &id).meta("tag", format!("{src}-{tag}"));
                            (id, i)
                        })
                        .collect()
                };
                match src {
                    2 => dir.publish(
                        "web",
                        view.values()
                            .cloned()
                            .map(Arc::new)
                            .collect::<InstanceMap>(),
                        1,
                        true,
                    ),
                    s if withdraw => handles[s].withdraw("web"),
                    s => {
                        handles[s].publish("web", view.values().cloned(), 0);
                    }
                }
                listed[src] = view;
                let snap = dir.snapshot("web");
                // Precedence: a (10) > backend (0) > b (-10).
                for id in (0..40).map(|b| format!("i{b:02}")) {
                    let want = [0, 2, 1].into_iter().find_map(|s| listed[s].get(&id));
                    prop_assert_eq!(snap.all().get(&id).map(|i| &**i), want, "{}", id);
                }
            }
            Ok(())
        })
        .unwrap();
}
