use super::*;

fn inst(id: &str, zone: &str, version: &str) -> Instance {
    Instance::new("svc", id)
        .addr("x:1")
        .meta(ZONE_KEY, zone)
        .version(version)
}

/// A selector every instance passes routes exactly like the directory; a narrower one routes
/// on the ring of its members, so keys owned by selected members do not move.
#[test]
fn find_on_a_selection_is_the_ring_of_the_selected_members() {
    let dir = Directory::with_vnodes(64);
    let src = dir.source("s", 1).unwrap();
    let all: Vec<Instance> = (0..20)
        .map(|i| {
            inst(
                &format!("m{i:02}"),
                if i % 2 == 0 { "a" } else { "b" },
                "1.0.0",
            )
        })
        .collect();
    src.publish("svc", all.clone(), 0);
    let everyone = Selector::new().on(&dir, "svc");
    let zone_a = Selector::new().zone("a").on(&dir, "svc");
    let expected_a = Ring::with_vnodes(
        all.iter()
            .filter(|i| i.metadata[ZONE_KEY] == "a")
            .cloned()
            .map(Arc::new),
        64,
    );
    for k in 0..2000u32 {
        let key = k.to_le_bytes();
        assert_eq!(everyone.find(key), dir.find("svc", key));
        assert_eq!(everyone.find_n(3, key), dir.find_n(3, "svc", key));
        let want: Vec<_> = expected_a.find_n(2, &key).into_iter().cloned().collect();
        assert_eq!(zone_a.find_n(2, key), want);
        assert_eq!(zone_a.find(key).as_ref(), want.first());
    }
}

#[test]
fn the_cache_follows_membership_changes() {
    let dir = Directory::new();
    let src = dir.source("s", 1).unwrap();
    src.publish(
        "svc",
        [inst("a1", "a", "1.0.0"), inst("b1", "b", "1.0.0")],
        0,
    );
    let pref = Selector::new().prefer_zone("a").on(&dir, "svc");
    assert_eq!(pref.find("k").unwrap().id, "a1");
    src.publish(
        "svc",
        [inst("b1", "b", "1.0.0"), inst("b2", "b", "1.0.0")],
        0,
    );
    let ids: Vec<_> = pref.get().iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, ["b1", "b2"], "no a left: fall back to every zone");
    assert!(pref.find("k").unwrap().id.starts_with('b'));
    src.publish(
        "svc",
        [inst("a2", "a", "1.0.0"), inst("b1", "b", "1.0.0")],
        0,
    );
    assert_eq!(pref.find("k").unwrap().id, "a2");
}

#[tokio::test]
async fn changes_follow_the_zone_fallback() {
    use futures::StreamExt;
    let dir = Directory::new();
    let src = dir.source("s", 1).unwrap();
    src.publish(
        "svc",
        [inst("a1", "a", "1.0.0"), inst("b1", "b", "1.0.0")],
        0,
    );
    let mut ch = Selector::new().prefer_zone("a").on(&dir, "svc").changes();
    assert!(matches!(ch.next().await, Some(Change::Insert(id, _)) if id == "a1"));
    src.publish("svc", [inst("b1", "b", "1.0.0")], 0);
    assert!(matches!(ch.next().await, Some(Change::Remove(id)) if id == "a1"));
    assert!(matches!(ch.next().await, Some(Change::Insert(id, _)) if id == "b1"));
}
