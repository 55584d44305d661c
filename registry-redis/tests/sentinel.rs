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
    let ip = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            master.container.id(),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("docker inspect");
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
