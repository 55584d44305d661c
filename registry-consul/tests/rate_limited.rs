//! A Consul agent that answers `429 Too Many Requests` under load: only a definite "no such
//! session" may count as a session gone, anything else is a temporary error, and no error text
//! carries the ACL token.
//!
//! The 429 comes from a small HTTP proxy in front of a real agent, which answers session reads
//! itself with that status (echoing the request's token in the body, as a careless proxy might)
//! and forwards every other request to the agent. What the agent holds is read from its own API.

use std::time::Duration;

use conformance_tests::consul_api;
use conformance_tests::testbed;
use registry_consul::ConsulBuilder;
use registry_core::{Backend, ErrorKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "0f1e2d3c-0000-4000-8000-00000000f00d";

/// A proxy to `upstream` that answers `GET /v1/session/info/...` with 429 and forwards the rest
/// (one request per connection: it asks the agent to close after answering).
async fn rate_limiting_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut head = String::new();
                let (mut len, mut token) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    match client.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-consul-token:") {
                        token = line["x-consul-token:".len()..].trim().to_owned();
                    }
                    if lower.starts_with("connection:") {
                        continue;
                    }
                    if line == "\r\n" {
                        head.push_str("Connection: close\r\n\r\n");
                        break;
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; len];
                if client.read_exact(&mut body).await.is_err() {
                    return;
                }
                let mut client = client.into_inner();
                if head.starts_with("GET /v1/session/info/") {
                    let text = format!("rate limit exceeded for token {token}");
                    let answer = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = client.write_all(answer.as_bytes()).await;
                    let _ = client.shutdown().await;
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if server.write_all(head.as_bytes()).await.is_err()
                    || server.write_all(&body).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy(&mut server, &mut client).await;
                let _ = client.shutdown().await;
            });
        }
    });
    addr
}

/// Whether the agent has the session (its own API, not through the backend).
async fn session_lives(endpoint: &str, id: &str) -> bool {
    let (status, body) =
        consul_api::http(endpoint, "GET", &format!("/v1/session/info/{id}"), "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array().is_some_and(|a| !a.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_session_read_is_unavailable_not_lease_not_found() {
    let Some(ep) = testbed::shared_consul() else {
        return;
    };
    let proxy = rate_limiting_proxy(ep.clone()).await;
    // The -dev agent has no ACLs: it ignores the token, which the proxy sees and echoes.
    let limited = ConsulBuilder::new()
        .address(proxy)
        .token(TOKEN)
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect through the proxy");
    let lease = limited.grant(Duration::from_secs(10)).await.unwrap();
    assert!(session_lives(&ep, lease.id.as_str()).await);

    let e = limited.revoke(&lease.id).await.unwrap_err();
    println!("revoke, the session read answered 429: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("429"), "{e}");
    let chain = format!("{e} {e:?}");
    assert!(!chain.contains(TOKEN), "the token in an error: {chain}");
    assert!(
        session_lives(&ep, lease.id.as_str()).await,
        "the session lives on, as the error says it may"
    );

    // A definite answer still means gone: Consul's empty list for a session it does not have.
    let direct = ConsulBuilder::new()
        .address(ep.clone())
        .connect()
        .await
        .unwrap();
    direct.revoke(&lease.id).await.unwrap();
    assert!(!session_lives(&ep, lease.id.as_str()).await);
    let e = direct.revoke(&lease.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LeaseNotFound, "{e}");
}
