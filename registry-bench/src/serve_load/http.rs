//! The HTTP client the JSON requests and the metrics reads go through, and a GET with it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

pub(super) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

pub(super) fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

pub(super) async fn get(c: &Client, uri: &str) -> Result<(u16, Bytes), String> {
    let resp = c
        .get(uri.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
