use super::*;
use proptest::prelude::*;

fn inst(k: u32, v: u32) -> Arc<Instance> {
    inst_of(0, k, v)
}

/// Instance `k`'s id under a naming scheme: 0, `i00042` (all alike but for the digits); 1,
/// ids of different lengths and prefixes, 40-byte ids sharing 33 bytes, non-ASCII ones, and
/// each one also with a NUL byte appended (equal to it in every eight-byte window).
fn id_of(scheme: u8, k: u32) -> String {
    if scheme == 0 {
        return format!("i{k:05}");
    }
    let b = k / 2;
    let base = match b % 5 {
        0 => format!("i{b:05}"),
        1 => format!("i{b}"),
        2 => format!("{b}"),
        3 => format!("zone-a/rack-{:02}/a-long-shared-host-name-{b:05}", b % 7),
        _ => format!("é{b:05}"),
    };
    if k % 2 == 1 { base + "\0" } else { base }
}

fn inst_of(scheme: u8, k: u32, v: u32) -> Arc<Instance> {
    Arc::new(Instance::new("svc", id_of(scheme, k)).addr(format!("10.0.0.1:{v}")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Every operation agrees with a sorted `Vec` doing the same, through splits, merges and
    /// the tree growing and shrinking, and old versions are left as they were.
    #[test]
    fn agrees_with_a_sorted_vec(
        scheme in 0u8..2,
        start in 0u32..3000,
        ops in prop::collection::vec((0u32..4000, any::<bool>(), 0u32..1000), 1..600),
    ) {
        let mut model: Vec<Arc<Instance>> = (0..start).map(|k| inst_of(scheme, k, 0)).collect();
        model.sort_by(|a, b| a.id.cmp(&b.id));
        let mut seq = Seq::from_sorted(model.clone());
        seq.check();
        let mut versions = vec![(seq.clone(), model.clone())];
        for (n, (k, put, v)) in ops.into_iter().enumerate() {
            let new = put.then(|| inst_of(scheme, k, v));
            let id = id_of(scheme, k);
            let at = model.binary_search_by(|m| m.id.as_str().cmp(&id));
            let expect = match (at, &new) {
                (Ok(i), Some(new)) => Some(Some(std::mem::replace(&mut model[i], new.clone()))),
                (Ok(i), None) => Some(Some(model.remove(i))),
                (Err(i), Some(new)) => { model.insert(i, new.clone()); Some(None) }
                (Err(_), None) => None,
            };
            let got = if n % 2 == 0 {
                seq.replace(&id, new.as_ref())
            } else {
                // `set` is `replace` reduced to whether anything changed.
                let changed = seq.set(&id, new.as_ref());
                prop_assert_eq!(changed, expect.is_some());
                expect.clone()
            };
            let same = |a: &Option<Option<Arc<Instance>>>, b: &Option<Option<Arc<Instance>>>| match (a, b) {
                (Some(Some(a)), Some(Some(b))) => Arc::ptr_eq(a, b),
                (Some(None), Some(None)) | (None, None) => true,
                _ => false,
            };
            prop_assert!(same(&got, &expect), "replace returned what was there");
            if n % 50 == 0 {
                versions.push((seq.clone(), model.clone()));
            }
        }
        seq.check();
        versions.push((seq, model));
        for (seq, model) in &versions {
            seq.check();
            prop_assert_eq!(seq.len(), model.len());
            prop_assert!(seq.iter().zip(model).all(|(a, b)| Arc::ptr_eq(a, b)));
            prop_assert!(seq.iter().rev().zip(model.iter().rev()).all(|(a, b)| Arc::ptr_eq(a, b)));
            for (i, m) in model.iter().enumerate().step_by(7) {
                prop_assert!(Arc::ptr_eq(seq.get(i).unwrap(), m));
                prop_assert!(Arc::ptr_eq(seq.find(&m.id).unwrap(), m));
                // Ids near this one, present or not.
                let short: String = m.id.chars().take(3).collect();
                for q in [format!("{}x", m.id), format!("{}\0", m.id), short] {
                    let want = model.binary_search_by(|x| x.id.as_str().cmp(&q)).ok().map(|i| &model[i]);
                    prop_assert!(match (seq.find(&q), want) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }, "find({:?})", q);
                }
            }
            prop_assert!(seq.get(model.len()).is_none());
            prop_assert!(seq.find("i99999x").is_none() && seq.find("").is_none());
            prop_assert_eq!(seq.first().map(|i| &i.id), model.first().map(|i| &i.id));
            prop_assert_eq!(seq.last().map(|i| &i.id), model.last().map(|i| &i.id));
        }
        // The diff of any two versions is the naive merge of their sorted lists.
        for (older, newer) in versions.iter().zip(versions.iter().skip(1)).chain([(&versions[0], versions.last().unwrap())]) {
            let got: Vec<(String, Option<String>, Option<String>)> = older.0.diff(&newer.0)
                .into_iter()
                .map(|(id, o, n)| (id.to_owned(), o.map(|i| i.addrs[0].clone()), n.map(|i| i.addrs[0].clone())))
                .collect();
            prop_assert_eq!(got, naive_diff(&older.1, &newer.1));
        }
    }
}

fn naive_diff(
    a: &[Arc<Instance>],
    b: &[Arc<Instance>],
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.id.cmp(&y.id),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push((a[i].id.clone(), Some(a[i].addrs[0].clone()), None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((b[j].id.clone(), None, Some(b[j].addrs[0].clone())));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if a[i] != b[j] {
                    out.push((
                        a[i].id.clone(),
                        Some(a[i].addrs[0].clone()),
                        Some(b[j].addrs[0].clone()),
                    ));
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[test]
fn a_diff_after_a_few_changes_skips_what_both_versions_share() {
    let old = Seq::from_sorted((0..100_000).map(|k| inst(k, 0)).collect());
    let mut new = old.clone();
    for k in [10, 50_000, 99_999] {
        new.set(&format!("i{k:05}"), Some(&inst(k, 1)));
    }
    new.set("i50000x", Some(&inst(0, 0)));
    OPENED.with(|o| o.set(0));
    let d = old.diff(&new);
    assert_eq!(d.len(), 4);
    // 100,000 instances packed 12 to a node are 5 levels: each of the 4 changed paths opens
    // at most its 5 nodes on each side (26 here), not the other 8,000 leaves.
    let opened = OPENED.with(|o| o.get());
    assert!(opened <= 4 * 5 * 2, "opened {opened} nodes");
}

#[test]
fn removing_everything_leaves_an_empty_leaf() {
    let mut seq = Seq::from_sorted((0..5000).map(|k| inst(k, 0)).collect());
    for k in (0..5000).rev().step_by(2).chain((0..5000).step_by(2)) {
        assert!(seq.set(&format!("i{k:05}"), None));
    }
    seq.check();
    assert_eq!(seq.len(), 0);
    assert!(matches!(&*seq.root, Node::Leaf(l) if l.items.is_empty()));
}
