//! Redis under Sentinel with passwords: the master and its replica ask for one, and so do the
//! sentinels (a different one). `redis+sentinel://` with both finds the master and works; a wrong
//! sentinel password is `PermissionDenied`, not a hang or a vague error. (Failover itself, with
//! real processes and the independent truth reader, is the fault suite's `sentinel-failover`.)

use std::time::Duration;

use conformance_tests::testbed::{self, RedisOptions, SentinelOptions, start_or_skip};
use registry_core::{Backend, Bytes, ErrorKind};
use registry_redis::RedisBuilder;

const DATA_PASSWORD: &str = "data-pw-3f9a";
const SENTINEL_PASSWORD: &str = "sentinel-pw-71c2";
const MASTER: &str = "auth-master";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_passwords_finds_the_master_and_refuses_a_wrong_one() {
    let auth = vec!["--requirepass".to_owned(), DATA_PASSWORD.to_owned()];
    let Some(master) = start_or_skip(
        "redis",
        testbed::start_redis(RedisOptions {
            extra_args: auth.clone(),
            ..RedisOptions::default()
        }),
    )
    .await
    else {
        return;
    };
    let ip = testbed::container_ip(master.container.id())
        .expect("the master's address")
        .to_string();
    let Some(sentinel) = start_or_skip(
        "redis sentinel",
        testbed::start_redis_sentinel(SentinelOptions {
            host_port: None,
            master_name: MASTER.into(),
            master: format!("{ip}:6379"),
            quorum: 1,
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            extra_conf: vec![
                format!("sentinel auth-pass {MASTER} {DATA_PASSWORD}"),
                format!("requirepass {SENTINEL_PASSWORD}"),
            ],
            tls: None,
        }),
    )
    .await
    else {
        return;
    };
    let url = |sentinel_pw: &str| {
        format!(
            "redis+sentinel://:{DATA_PASSWORD}@{}/{MASTER}?namespace=sentinel-auth&sentinel_password={sentinel_pw}",
            sentinel.endpoint
        )
    };
    let b = RedisBuilder::from_url(&url(SENTINEL_PASSWORD))
        .unwrap()
        .connect_timeout(Duration::from_secs(3));
    let backend = b.connect().await.expect("connect through the sentinel");
    let rev = backend
        .put("k/a", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let got = backend.get("k/a").await.unwrap().expect("written");
    assert_eq!((got.value.as_ref(), got.revision), (&b"1"[..], rev));
    // The write is on the master the sentinel names, read with the redis crate.
    let client = redis::Client::open(format!("redis://:{DATA_PASSWORD}@{ip}:6379")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg("{sentinel-auth}:kv")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(held, ["k/a"]);

    let e = RedisBuilder::from_url(&url("wrong"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains(SENTINEL_PASSWORD) && !text.contains(DATA_PASSWORD),
        "no password in the error: {text}"
    );
}

/// `rediss+sentinel://`: the sentinel and the master serve TLS only, with certificates from a CA
/// made by the test (the master's names its container address, which the sentinel hands out, so
/// it is swapped in with `CONFIG SET` once that address is known); with `ca=` the client finds the
/// master through the sentinel and writes there, over TLS both ways. Without the CA, connecting
/// fails with an error that says TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_finds_the_master_with_the_ca_file() {
    use conformance_tests::pki::{TempDir, TestCa};
    use conformance_tests::testbed::ServerTls;
    let ca = TestCa::new("sentinel-tls-ca");
    let loopback = ca.server_cert(&["127.0.0.1", "localhost"]);
    let Some(master) = start_or_skip(
        "redis (TLS)",
        testbed::start_redis(RedisOptions {
            tls: Some(ServerTls {
                cert: loopback.cert.clone(),
                key: loopback.key.clone(),
            }),
            ..RedisOptions::default()
        }),
    )
    .await
    else {
        return;
    };
    let ip = testbed::container_ip(master.container.id())
        .expect("the master's address")
        .to_string();
    // The certificate the sentinel will meet at the master's container address.
    let named = ca.server_cert(&[ip.as_str(), "127.0.0.1"]);
    let dir = TempDir::new("sentinel-tls");
    let ca_file = dir.write("ca.pem", &ca.pem);
    for (name, text) in [("ip.pem", &named.cert), ("ip-key.pem", &named.key)] {
        let path = dir.write(name, text);
        let copied = std::process::Command::new("docker")
            .arg("cp")
            .arg(&path)
            .arg(format!("{}:/certs/{name}", master.container.id()))
            .status()
            .expect("docker cp");
        assert!(copied.success());
    }
    let (host, port) = master.endpoint.rsplit_once(':').unwrap();
    let admin = redis::Client::build_with_tls(
        redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port: port.parse().unwrap(),
            insecure: false,
            tls_params: None,
        })
        .unwrap(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem.clone().into_bytes()),
        },
    )
    .unwrap();
    let mut con = admin.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("tls-cert-file")
        .arg("/certs/ip.pem")
        .arg("tls-key-file")
        .arg("/certs/ip-key.pem")
        .query_async(&mut con)
        .await
        .unwrap();
    let sentinel_cert = ca.server_cert(&["127.0.0.1", "localhost"]);
    let Some(sentinel) = start_or_skip(
        "redis sentinel (TLS)",
        testbed::start_redis_sentinel(SentinelOptions {
            host_port: None,
            master_name: MASTER.into(),
            master: format!("{ip}:6379"),
            quorum: 1,
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            extra_conf: Vec::new(),
            tls: Some((
                ServerTls {
                    cert: sentinel_cert.cert,
                    key: sentinel_cert.key,
                },
                ca.pem.clone(),
            )),
        }),
    )
    .await
    else {
        return;
    };
    let url = |ca: Option<&std::path::Path>| {
        let ca = ca.map_or(String::new(), |p| format!("&ca={}", p.display()));
        format!(
            "rediss+sentinel://{}/{MASTER}?namespace=sentinel-tls{ca}",
            sentinel.endpoint
        )
    };
    let backend = RedisBuilder::from_url(&url(Some(&ca_file)))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("connect through the TLS sentinel to the TLS master");
    let rev = backend
        .put("k/tls", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    assert_eq!(backend.get("k/tls").await.unwrap().unwrap().revision, rev);
    let held: Vec<String> = redis::cmd("HKEYS")
        .arg("{sentinel-tls}:kv")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        held,
        ["k/tls"],
        "written on the master, read over TLS by the redis crate"
    );

    let e = RedisBuilder::from_url(&url(None))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("TLS") || text.contains("certificate"),
        "without the CA: {text}"
    );
}
