//! etcd under stress: a container stopped and restarted under live registrations, the leader of a
//! three-member cluster killed, and a server with TLS and authentication.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::engine::until_online;
use conformance_tests::pki::TestCa;
use conformance_tests::resilience::{self, Timings, docker, register_web, retry, until_fresh, web};
use conformance_tests::testbed::{self, EtcdOptions, ServerTls, start_or_skip};
use registry_core::{Backend, Bytes, ErrorKind};
use registry_etcd::EtcdBuilder;
use tokio::time::{Instant, sleep, timeout};

const TTL: Duration = Timings::SHORT.ttl;

async fn connect(endpoints: &[String]) -> Arc<dyn Backend> {
    let backend = EtcdBuilder::new()
        .endpoints(endpoints.iter().cloned())
        .namespace("resilience")
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {endpoints:?}: {e}"));
    Arc::new(backend)
}

/// An etcd on a host port of its own, kept across a stop and start.
async fn etcd_on_a_fixed_port() -> Option<(testbed::Etcd, u16)> {
    let port = testbed::free_port();
    let options = EtcdOptions {
        host_port: Some(port),
        ..EtcdOptions::default()
    };
    let etcd = start_or_skip("etcd", testbed::start_etcd(options)).await?;
    Some((etcd, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_a_container_stop_and_restart() {
    if testbed::ServerKind::Etcd.external_endpoints().is_some() {
        eprintln!(
            "note: restart test needs its own container; using one despite REGISTRY_TEST_ETCD_ENDPOINTS"
        );
    }
    let Some((etcd, _)) = etcd_on_a_fixed_port().await else {
        return;
    };
    let backend = connect(std::slice::from_ref(&etcd.endpoint)).await;
    let a = Timings::SHORT.registry(&backend);
    let b = Timings::SHORT.registry(&backend);
    let d = b.discover("web").await.unwrap();
    let reg = register_web(&a, d.directory(), &["w1"]).await.remove(0);

    let mut states = reg.watch_state();
    let seen = tokio::spawn(async move {
        let mut names = vec![states.borrow_and_update().name()];
        while states.changed().await.is_ok() {
            names.push(states.borrow_and_update().name());
            if names.ends_with(&["lost", "registered"]) {
                break;
            }
        }
        names
    });

    etcd.container.stop().await.expect("stop etcd");
    sleep(TTL * 3).await;
    assert_eq!(
        reg.state().name(),
        "lost",
        "down for 3 TTLs: {}",
        reg.state()
    );
    assert!(
        d.directory().is_stale("web"),
        "the other side's view is marked stale"
    );
    assert_eq!(d.directory().get("web").len(), 1, "and kept, not emptied");
    etcd.container.start().await.expect("start etcd");

    let names = timeout(Duration::from_secs(30), seen)
        .await
        .expect("registration came back within 30 s")
        .unwrap();
    assert!(names.ends_with(&["lost", "registered"]), "{names:?}");
    until_fresh(d.directory(), "web", 1, Duration::from_secs(15)).await;
    let kv = backend
        .get("registry/web/w1")
        .await
        .unwrap()
        .expect("key back in etcd");
    assert!(kv.lease.is_some());
}

/// Which of `endpoints` is the leader, asking each member.
async fn leader(endpoints: &[String]) -> Option<usize> {
    for (i, ep) in endpoints.iter().enumerate() {
        let Ok(b) = EtcdBuilder::new().endpoints([ep.clone()]).connect().await else {
            continue;
        };
        let Ok(status) = b.client().status().await else {
            continue;
        };
        let me = status.header().map(|h| h.member_id());
        if me == Some(status.leader()) {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_losing_its_leader() {
    let net = testbed::fresh_namespace("regtest");
    let names: Vec<String> = (1..=3).map(|i| format!("{net}-e{i}")).collect();
    let cluster = names
        .iter()
        .map(|n| format!("{n}=http://{n}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let starts = names.iter().map(|n| {
        testbed::start_etcd(EtcdOptions {
            name: Some(n.clone()),
            network: Some(net.clone()),
            initial_cluster: Some(cluster.clone()),
            ..EtcdOptions::default()
        })
    });
    let started: Result<Vec<_>, _> = futures::future::join_all(starts)
        .await
        .into_iter()
        .collect();
    let Some(members) = start_or_skip("etcd cluster", std::future::ready(started)).await else {
        return;
    };
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let writer = connect(&endpoints).await;
    let reader = connect(&endpoints).await;
    let a = Timings::SHORT.registry(&writer);
    let b = Timings::SHORT.registry(&reader);
    let d = b.discover("web").await.unwrap();
    let regs = register_web(&a, d.directory(), &["w0", "w1", "w2", "w3", "w4"]).await;

    let leader = leader(&endpoints).await.expect("a leader");
    eprintln!("killing leader {}", members[leader].name);
    let killed = Instant::now();
    // SIGKILL, not `docker stop`: on SIGTERM etcd hands leadership over gracefully, which is not
    // the crash this test is about.
    resilience::kill(&members[leader].container);
    assert!(
        !members[leader].container.is_running().await.unwrap(),
        "leader still running"
    );
    eprintln!("leader's container stopped after {:?}", killed.elapsed());

    // New registrations succeed within a few seconds (retrying through the election).
    let newcomer = timeout(Duration::from_secs(10), async {
        loop {
            match a.register(web("w5")).await {
                Ok(r) if r.state().is_registered() => return r,
                Ok(r) => {
                    r.registered().await.unwrap();
                    return r;
                }
                Err(e) => {
                    eprintln!("register during election: {e}");
                    sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await
    .expect("a new registration succeeded within 10 s of the leader's death");
    eprintln!("new registration after {:?}", killed.elapsed());

    // The directory watching through the survivors converges to the truth: nothing lost, nothing
    // phantom.
    let want = ["w0", "w1", "w2", "w3", "w4", "w5"];
    let took = until_online(d.directory(), "web", &want, Duration::from_secs(15)).await;
    eprintln!(
        "directory converged {:?} after the kill",
        killed.elapsed().min(took + killed.elapsed())
    );
    let truth: BTreeSet<String> = writer
        .list("registry/web")
        .await
        .unwrap_or_else(|e| panic!("list through the survivors: {e:?}"))
        .entries
        .into_iter()
        .map(|kv| kv.key.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(truth, want.iter().map(|s| s.to_string()).collect());
    let survivors: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, e)| e.clone())
        .collect();
    let new_leader = timeout(Duration::from_secs(10), async {
        loop {
            if let Some(i) = self::leader(&survivors).await {
                return i;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the survivors elected a leader");
    eprintln!(
        "new leader {} at {:?}",
        survivors[new_leader],
        killed.elapsed()
    );
    // And registrations stay alive on the surviving quorum for several TTLs.
    sleep(TTL * 3).await;
    assert_eq!(d.directory().get("web").len(), 6);
    for r in regs.iter().chain([&newcomer]) {
        assert!(r.state().is_registered(), "{}", r.state());
    }
}

/// Collects everything logged, to prove no secret is.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Single-threaded so that the thread-local log capture sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn tls_and_authentication() {
    const PASSWORD: &str = "correct-horse-battery-staple";
    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .finish(),
    );
    let ca = TestCa::new("registry test CA");
    let server = ca.server_cert(&["localhost", "127.0.0.1"]);
    let client = ca.client_cert("registry-client");
    let options = EtcdOptions {
        tls: Some(ServerTls {
            cert: server.cert,
            key: server.key,
        }),
        files: vec![("/certs/ca.pem".into(), ca.pem.clone().into_bytes())],
        // A trusted CA makes etcd require client certificates: mutual TLS.
        extra_args: vec!["--trusted-ca-file=/certs/ca.pem".into()],
        ..EtcdOptions::default()
    };
    let Some(etcd) = start_or_skip("etcd with TLS", testbed::start_etcd(options)).await else {
        return;
    };
    let tls = || {
        EtcdBuilder::new()
            .endpoints([etcd.endpoint.clone()])
            .ca_pem(ca.pem.clone())
            .client_cert_pem(client.cert.clone(), client.key.clone())
            .connect_timeout(Duration::from_secs(5))
    };

    // Without a client certificate the server refuses the connection.
    let no_cert = EtcdBuilder::new()
        .endpoints([etcd.endpoint.clone()])
        .ca_pem(ca.pem.clone())
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await;
    let e = no_cert.expect_err("connected without a client certificate");
    eprintln!("without a client certificate: {e}");
    // Usually the server's TLS alert arrives and says why; on a loaded machine the server may
    // close the connection before the client reads the alert, which leaves a broken pipe.
    match e.kind() {
        ErrorKind::PermissionDenied => {
            assert!(e.message().contains("TLS: "), "{e}");
            assert!(e.message().contains("client certificate"), "{e}");
        }
        ErrorKind::Unavailable => {}
        other => panic!("without a client certificate: {other:?}: {e}"),
    }

    // Without the CA the server's certificate is not trusted.
    let untrusted = EtcdBuilder::from_url(&format!("etcds://{}", etcd.endpoint))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await;
    let e = untrusted.expect_err("connected over TLS without trusting the CA");
    assert!(e.message().contains("TLS: "), "{e}");

    // Set up a root user and turn authentication on.
    let admin = tls()
        .connect()
        .await
        .expect("mutual TLS connect before auth is on");
    let mut c = admin.client();
    c.user_add("root", PASSWORD, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    // The right credentials work.
    let good = tls()
        .auth("root", PASSWORD)
        .connect()
        .await
        .expect("right credentials");
    good.put("k", Bytes::from_static(b"v"), None).await.unwrap();
    assert!(good.get("k").await.unwrap().is_some());
    let lease = good.grant(Duration::from_secs(5)).await.unwrap();
    good.keep_alive(&lease.id).await.unwrap();

    // Wrong credentials are PermissionDenied, at connect time.
    let e = tls()
        .auth("root", "wrong-password")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = tls().auth("nobody", PASSWORD).connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        !e.to_string().contains(PASSWORD),
        "error message shows the password: {e}"
    );
    // No credentials at all: refused on the first operation.
    let e = admin.put("k2", Bytes::new(), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // No password in Debug output or in anything logged.
    let builder = tls().auth("root", PASSWORD);
    assert!(!format!("{builder:?}").contains(PASSWORD));
    assert!(!format!("{good:?}").contains(PASSWORD));
    let url = format!("etcds://root:{PASSWORD}@{}", etcd.endpoint);
    assert!(!format!("{:?}", EtcdBuilder::from_url(&url).unwrap()).contains(PASSWORD));
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!logged.is_empty(), "the capture saw no logs at all");
    assert!(!logged.contains(PASSWORD), "a log line shows the password");
}

/// Every file under `dir`, as `(container path under into, bytes)` for a container to start with.
fn collect_files(dir: &std::path::Path, into: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let target = format!("{into}/{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            collect_files(&entry.path(), &target, out);
        } else {
            out.push((target, std::fs::read(entry.path()).unwrap()));
        }
    }
}

/// Waits until etcd answers reads (through `truth`, an etcd-client of its own) again.
async fn until_serving(truth: &etcd_client::Client) {
    retry("etcd to come back", 300, Duration::from_millis(100), || {
        let mut truth = truth.clone();
        async move { truth.get("probe", None).await }
    })
    .await;
}

/// etcd put back to an older copy of its data directory (a disk restored from a backup, a VM
/// snapshot rolled back): same cluster, but its revision is lower than what watchers saw, so a
/// watcher resuming from its last revision would wait for revisions that now mean other changes.
/// The watch must report the lost history (Compacted), the directory re-list, and every live
/// registration be back, as etcd itself (read with etcd-client) shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_an_older_data_directory_is_detected() {
    let Some((etcd, port)) = etcd_on_a_fixed_port().await else {
        return;
    };
    let endpoints = vec![etcd.endpoint.clone()];
    let backend = connect(&endpoints).await;
    let mut truth = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let a = Timings::SHORT.registry(&backend);
    let c = Timings::SHORT.registry(&backend);
    let b = Timings::SHORT.registry(&backend);
    let d = b.discover("web").await.unwrap();
    let _w0 = register_web(&a, d.directory(), &["w0"]).await;

    // The backup: the data directory, copied out while the server is stopped (`docker cp`: the
    // engine may run outside this process's root, so no bind mount).
    let backup = conformance_tests::pki::TempDir::new("etcd-backup");
    etcd.container.stop().await.expect("stop etcd");
    docker(&[
        "cp",
        &format!("{}:/data/etcd", etcd.container.id()),
        &backup.path().join("etcd").display().to_string(),
    ]);
    etcd.container.start().await.expect("start etcd");
    until_serving(&truth).await;

    // Life goes on: another registration and plenty of history the backup does not have.
    let w1 = c.register(web("w1")).await.unwrap();
    for _ in 0..15 {
        c.register(web("churn"))
            .await
            .unwrap()
            .deregister()
            .await
            .unwrap();
    }
    until_online(d.directory(), "web", &["w0", "w1"], Duration::from_secs(10)).await;
    let seen = d.directory().snapshot("web").revision();
    let listed = backend.list("registry/web").await.unwrap().revision;

    // Restore the backup: a server started from it on the same address.
    let mut files = Vec::new();
    collect_files(&backup.path().join("etcd"), "/data/etcd", &mut files);
    etcd.container.rm().await.expect("remove etcd");
    let _restored = testbed::start_etcd(EtcdOptions {
        host_port: Some(port),
        files,
        ..EtcdOptions::default()
    })
    .await
    .expect("start etcd from the backup");
    until_serving(&truth).await;
    let now = truth.get("probe", None).await.unwrap();
    let now = now.header().map_or(0, |h| h.revision()) as u64;
    assert!(
        now + 10 < seen,
        "the restore went back from {seen} to {now}"
    );

    // A watch resuming from a revision handed out before the restore, after the server's
    // revision has passed it again with other changes: the revision now means something else.
    let mut outsider = truth.clone();
    for i in 0..(seen - now + 5) {
        outsider
            .put(format!("elsewhere/{i}"), "x", None)
            .await
            .unwrap();
    }
    let resumed = match backend.watch("registry/web", listed).await {
        Err(e) => e,
        Ok(mut s) => {
            use futures::StreamExt;
            match timeout(Duration::from_secs(3), s.next()).await {
                Ok(Some(Err(e))) => e,
                other => panic!("resumed from a replaced revision without a word: {other:?}"),
            }
        }
    };
    assert_eq!(resumed.kind(), ErrorKind::Compacted, "{resumed}");

    // A registration made after the restore reaches the watcher; everything is in etcd.
    let _w2 = retry(
        "register after the restore",
        20,
        Duration::from_millis(250),
        || c.register(web("w2")),
    )
    .await;
    until_online(
        d.directory(),
        "web",
        &["w0", "w1", "w2"],
        Duration::from_secs(15),
    )
    .await;
    let held = truth
        .get(
            "resilience/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let held: Vec<String> = held
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    for id in ["w0", "w1", "w2"] {
        assert!(
            held.iter().any(|k| k.ends_with(&format!("web/{id}"))),
            "{id} missing from etcd: {held:?}"
        );
    }
    assert!(w1.state().is_registered(), "{}", w1.state());
}
