//! The seed's PING service: verbs LIST and GET, three workers started from one configuration,
//! behind a running ZSS broker (default backend tcp://127.0.0.1:7776).
//!
//! ```text
//! cargo run -p zss --example ping -- [BROKER_BACKEND] [--for SECS]
//! ```

#![allow(dead_code)] // `config` is also used by the interoperability tests.

use std::time::Duration;

use zss::{Reply, ServiceConfig, ServiceError, Value};

/// PING: LIST answers the known pings, GET one of them by id (404 for an unknown id).
pub(crate) fn config(broker: &str) -> ServiceConfig {
    ServiceConfig::new("ping")
        .broker(broker)
        .verb("list", |_payload, _msg| async {
            Ok(Reply::ok(Value::Array(vec![
                Value::from("pong-1"),
                Value::from("pong-2"),
            ])))
        })
        .verb("get", |payload, msg| async move {
            match payload.get("id").and_then(Value::as_str) {
                Some(id @ ("pong-1" | "pong-2")) => Ok(Reply::ok(Value::map([
                    ("id", Value::from(id)),
                    ("client", Value::from(msg.client().unwrap_or("?"))),
                ]))),
                Some(_) => Err(ServiceError::new(404)),
                None => Err(ServiceError::with_messages(
                    400,
                    "Which ping?",
                    "GET needs a payload {id}",
                )),
            }
        })
}

#[tokio::main]
async fn main() {
    let mut broker = zss::worker::DEFAULT_BROKER.to_owned();
    let mut run_for = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--for" {
            run_for = args
                .next()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs);
        } else {
            broker = a;
        }
    }
    let config = config(&broker);
    let workers: Vec<_> = (0..3).map(|_| config.run()).collect();
    for w in &workers {
        println!("worker {} serving PING on {broker}", w.identity());
    }
    match run_for {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    for w in workers {
        let acked = w.stop().await;
        println!(
            "stopped ({})",
            if acked {
                "DOWN acknowledged"
            } else {
                "no answer to DOWN"
            }
        );
    }
}
