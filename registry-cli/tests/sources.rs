//! `--source` from outside: `registry serve` over a real etcd with Consul's catalog, DNS SRV
//! records (Consul's DNS interface) and a static file beside it. The API shows every source's
//! instances with their labels, and `/readyz` waits for all of them; `list` and `watch` show the
//! sources too.

use std::process::Stdio;
use std::time::{Duration, Instant};

use conformance_tests::consul_api::register_service;
use conformance_tests::pki::TempDir;
use conformance_tests::testbed::{self, ConsulOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn get(addr: &str, path: &str) -> (u16, Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Each instance's id and source label in one service's answer.
fn labelled(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or("").to_owned(),
                        i["source"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_list_and_watch_show_every_source_with_its_label() {
    let Some(etcd) = testbed::shared_etcd() else {
        return;
    };
    let consul = match testbed::start_consul(ConsulOptions::default()).await {
        Ok(c) => c,
        Err(reason) => return testbed::unavailable::<()>("consul", &reason).unwrap_or(()),
    };
    let url = format!("etcd://{etcd}");
    let ns = testbed::fresh_namespace("sources");
    let global = ["--backend", url.as_str(), "--namespace", ns.as_str()];

    // The backend: one instance of web, registered by the CLI.
    let mut reg = registry()
        .args(global)
        .args(["register", "web", "--id", "w1", "--addr", "10.1.0.1:80"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Consul's catalog: pay/p1, and dnsweb/d1, which its DNS interface also serves.
    for (name, id, addr) in [("pay", "p1", "10.2.0.1"), ("dnsweb", "d1", "10.3.0.1")] {
        register_service(&consul.endpoint, name, id, addr, 8080).await;
    }
    // A static file: db/primary.
    let dir = TempDir::new("sources");
    let file = dir.write(
        "static.json",
        r#"[{"service":"db","id":"primary","addrs":["10.4.0.1:5432"]}]"#,
    );
    let dns = consul
        .bridge_dns()
        .expect("Consul's DNS interface on the bridge");
    let specs = [
        "--source".to_owned(),
        format!("consul-catalog={}", consul.endpoint),
        "--source".to_owned(),
        format!("dns:dnsweb=dnsweb.service.consul.@{dns}"),
        "--source".to_owned(),
        format!("static:{}", file.display()),
    ];

    let mut serve = registry()
        .args(global)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(&specs)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("serve starts within 30 s")
        .unwrap()
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let want = [
        ("db", vec![("primary".to_owned(), "static".to_owned())]),
        ("web", vec![("w1".to_owned(), "backend".to_owned())]),
        ("pay", vec![("p1".to_owned(), "consul-catalog".to_owned())]),
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let (ready, body) = get(&addr, "/readyz").await;
        let mut seen = Vec::new();
        for (service, _) in &want {
            seen.push(labelled(
                &get(&addr, &format!("/v1/services/{service}")).await.1,
            ));
        }
        let dnsweb = labelled(&get(&addr, "/v1/services/dnsweb").await.1);
        let sources: Vec<&str> = dnsweb.iter().map(|(_, s)| s.as_str()).collect();
        let done = ready == 200
            && want.iter().zip(&seen).all(|((_, w), s)| w == s)
            && sources.contains(&"dns")
            && sources.contains(&"consul-catalog");
        if done {
            assert_eq!(body["ready"], true, "{body}");
            let listed: Vec<&str> = body["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["source"].as_str().unwrap())
                .collect();
            assert_eq!(
                listed,
                ["backend", "static", "dns", "consul-catalog"],
                "{body}"
            );
            eprintln!(
                "every source served after {:.1?}: dnsweb {dnsweb:?}",
                deadline.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every source served within 30 s: readyz {ready} {body}; {seen:?}; dnsweb {dnsweb:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // `list` and `watch` show the sources as well.
    let out = registry()
        .args(global)
        .args(["list", "--json"])
        .args(&specs)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort();
    for id in ["d1", "p1", "primary", "w1"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let mut watch = registry()
        .args(global)
        .args(["watch", "db", "--json"])
        .args(&specs[4..])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("watch prints within 20 s")
        .unwrap()
        .unwrap();
    assert!(first.contains("primary"), "{first}");
    watch.kill().await.unwrap();
    serve.kill().await.unwrap();
    reg.kill().await.unwrap();
}
