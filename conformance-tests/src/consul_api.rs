//! Consul's own interfaces, for tests that read the truth past our client: its HTTP API over a
//! plain HTTP/1.0 connection (no client crate of ours in between), and its CLI inside the
//! agent's container.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::testbed::Consul;

/// One request to a Consul agent's HTTP API at `endpoint` (`host:port`): the status and the
/// body. Panics when nothing answers within 10 s or the answer is not HTTP (a test cannot go on
/// without the truth).
pub async fn http(endpoint: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    request(endpoint, method, path, body, None).await
}

/// Registers service instance `id` of `service` at `addr:port` with the agent at `endpoint`
/// through its own API (`PUT /v1/agent/service/register`), as another Consul user would.
pub async fn register_service(endpoint: &str, service: &str, id: &str, addr: &str, port: u16) {
    let body = serde_json::json!({"ID": id, "Name": service, "Address": addr, "Port": port});
    let (status, text) = http(
        endpoint,
        "PUT",
        "/v1/agent/service/register",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "register {id} with Consul: {text}");
}

/// [`http`] with an ACL token (`X-Consul-Token`).
pub async fn http_as(
    token: &str,
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    request(endpoint, method, path, body, Some(token)).await
}

async fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(endpoint)
        .await
        .unwrap_or_else(|e| panic!("connect to consul at {endpoint}: {e}"));
    let token = token.map_or(String::new(), |t| format!("X-Consul-Token: {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {endpoint}\r\n{token}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer from {endpoint} within 10 s"))
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {head:?}"));
    (status, body.to_owned())
}

/// [`http`] for a test without a runtime of its own.
pub fn http_blocking(endpoint: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request")
        .block_on(http(endpoint, method, path, body))
}

/// Waits (at most 30 s) until the agent at `endpoint` accepts `token`: an agent with ACLs
/// bootstraps them a moment after it starts.
pub async fn until_token_accepted(endpoint: &str, token: &str) {
    let accepted = async {
        while http_as(token, endpoint, "GET", "/v1/acl/token/self", "")
            .await
            .0
            != 200
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), accepted)
        .await
        .unwrap_or_else(|_| panic!("the agent at {endpoint} did not accept the token within 30 s"));
}

impl Consul {
    /// Creates the ACL policy `name` with `rules` and a token `secret` that holds it, with the
    /// `root` token, as an operator would.
    pub fn acl_token(&self, root: &str, secret: &str, name: &str, rules: &str) {
        self.cli(
            root,
            &["acl", "policy", "create", "-name", name, "-rules", rules],
        );
        self.cli(
            root,
            &[
                "acl",
                "token",
                "create",
                "-secret",
                secret,
                "-policy-name",
                name,
            ],
        );
    }

    /// Runs the `consul` command inside the agent's container with `token`, as an operator would
    /// (ACL policies and tokens, `consul catalog services`): its output. Panics when it fails.
    pub fn cli(&self, token: &str, args: &[&str]) -> String {
        let out = std::process::Command::new("docker")
            .args([
                "exec",
                "-e",
                &format!("CONSUL_HTTP_TOKEN={token}"),
                self.container.id(),
                "consul",
            ])
            .args(args)
            .output()
            .expect("docker exec");
        assert!(
            out.status.success(),
            "consul {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
