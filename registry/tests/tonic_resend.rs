//! `KeyedChannel` failover must not run a call twice behind the caller's back: by default it moves
//! on to the next ring member only when the failed attempt provably did not send the request
//! (connection refused, no endpoint for the instance); a call that reached an instance and then
//! lost its connection, had its stream reset, or timed out is returned to the caller, unless the
//! caller says its calls are idempotent. Real tonic servers on loopback, counting what they get.
#![cfg(all(feature = "tonic", feature = "memory"))]

#[path = "../examples/tonic_routing.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use example::who;
use registry::Directory;
use registry::engine::{Instance, SourceHandle};
use registry::tonic::{Channels, KEY_HEADER, RetryPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::http;

/// What a faulty server does with a call, after counting it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Has its connection closed (by the proxy in front of it) before answering.
    DropConnection,
    /// Drops the call's stream without answering: the client's stream is reset.
    ResetStream,
    /// Never answers.
    Hang,
}

/// A gRPC server (the example's `Who` service name) that counts the calls it receives and then
/// fails them as its [`Fault`] says.
#[derive(Clone)]
struct Faulty {
    calls: Arc<AtomicUsize>,
    fault: Fault,
    kill: broadcast::Sender<()>,
}

impl tonic::server::NamedService for Faulty {
    const NAME: &'static str = "registry.example.Who";
}

impl tower::Service<http::Request<Body>> for Faulty {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (fault, kill) = (self.fault, self.kill.clone());
        Box::pin(async move {
            match fault {
                Fault::DropConnection => {
                    let _ = kill.send(());
                    std::future::pending().await
                }
                // Ends the task serving the stream without a panic message: hyper drops the
                // stream, which resets it.
                Fault::ResetStream => std::panic::resume_unwind(Box::new("reset the stream")),
                Fault::Hang => std::future::pending().await,
            }
        })
    }
}

/// Starts a faulty server on loopback.
async fn serve_faulty(faulty: Faulty) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(faulty)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A TCP proxy to `upstream` that closes every connection it carries when `kill` fires.
async fn proxy(upstream: SocketAddr, kill: broadcast::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut killed = kill.subscribe();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    // Both sockets dropped: the client's connection ends mid-call.
                    _ = killed.recv() => {}
                }
            });
        }
    });
    addr
}

/// Two instances of "who", both faulty with `fault`, counting into one counter.
struct Pair {
    dir: Directory,
    _source: SourceHandle,
    calls: Arc<AtomicUsize>,
}

impl Pair {
    async fn new(fault: Fault) -> Pair {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut instances = Vec::new();
        for id in ["f1", "f2"] {
            // One kill switch per instance: a fault on one must not cut the other's connection.
            let (kill, _) = broadcast::channel(16);
            let faulty = Faulty {
                calls: calls.clone(),
                fault,
                kill: kill.clone(),
            };
            let mut addr = serve_faulty(faulty).await;
            if let Fault::DropConnection = fault {
                addr = proxy(addr, kill.clone()).await;
            }
            instances.push(Instance::new("who", id).addr(addr.to_string()));
        }
        let dir = Directory::new();
        let source = dir.source("test", 10).unwrap();
        source.publish("who", instances, 1);
        Pair {
            dir,
            _source: source,
            calls,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// One call through `keyed`, within 10 s.
async fn call(keyed: &registry::tonic::KeyedChannel) -> Result<who::WhoReply, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), who::call(keyed.clone(), "k"))
        .await
        .expect("the call ends in time")
}

/// With `fault` on the owner's side after the request was sent: the call reaches one server
/// only by default, and both once declared idempotent.
async fn sent_once_unless_idempotent(fault: Fault) {
    let pair = Pair::new(fault).await;
    let keyed = Channels::new(&pair.dir, "who").keyed_by_header(KEY_HEADER);
    let err = call(&keyed).await.unwrap_err();
    assert_eq!(
        pair.calls(),
        1,
        "sent twice by default; the caller got {err:?}"
    );

    // Declared idempotent: the next ring member gets the call too. New channels, so that the
    // owner's attempt is sent: on the first call's channel it may meet the connection the fault
    // just closed, which is a request not sent (and moves on even without the policy).
    let idempotent = Channels::new(&pair.dir, "who")
        .keyed_by_header(KEY_HEADER)
        .retry_policy(RetryPolicy::Idempotent);
    call(&idempotent).await.unwrap_err();
    assert_eq!(pair.calls(), 3, "idempotent: both instances tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_does_not_resend_a_call_whose_connection_dropped_after_it_was_sent() {
    sent_once_unless_idempotent(Fault::DropConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_does_not_resend_a_call_whose_stream_was_reset() {
    sent_once_unless_idempotent(Fault::ResetStream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_does_not_resend_a_call_whose_attempt_timed_out() {
    let pair = Pair::new(Fault::Hang).await;
    // Outlier detection off: a timed-out owner would be ejected, and the second call would not
    // try it at all.
    let keyed = Channels::new(&pair.dir, "who")
        .keyed_by_header(KEY_HEADER)
        .timeout(Duration::from_millis(200))
        .outliers(registry::tonic::OutlierPolicy::off());
    let err = call(&keyed).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(pair.calls(), 1, "sent twice by default");

    let err = call(&keyed.retry_policy(RetryPolicy::Idempotent))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(pair.calls(), 3, "idempotent: both instances tried");
}

/// Connection refused (nothing listens at the owner's address) and an instance without a usable
/// endpoint: the request never left, so the call goes on to the next ring member by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_fails_over_by_default_when_the_request_was_not_sent() {
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = who::serve("w").await.unwrap();
    let dir = Directory::new();
    let source = dir.source("test", 10).unwrap();
    source.publish(
        "who",
        [
            Instance::new("who", "refused").addr(free.to_string()),
            Instance::new("who", "no-endpoint").addr("not a uri"),
            Instance::new("who", "w").addr(server.addr.to_string()),
        ],
        1,
    );
    let keyed = Channels::new(&dir, "who").keyed_by_header(KEY_HEADER);
    let mut tried = [0, 0];
    for i in 0..60 {
        let key = format!("k{i}");
        let ring: Vec<String> = dir
            .find_n(2, "who", &key)
            .iter()
            .map(|i| i.id.clone())
            .collect();
        // Keys owned by a broken instance whose next ring member is the working one.
        if ring[1] != "w" {
            continue;
        }
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert_eq!(reply.server, "w", "{key}: {ring:?}");
        tried[usize::from(ring[0] == "refused")] += 1;
    }
    assert!(
        tried[0] > 0 && tried[1] > 0,
        "keys per broken owner: {tried:?}"
    );

    // The refusing owner is ejected: its keys go to the next member even without failover.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| dir.find("who", k).unwrap().id == "refused")
        .unwrap();
    assert!(keyed.is_ejected("refused"));
    let reply = who::call(keyed.clone().attempts(1), &key).await.unwrap();
    assert_ne!(reply.server, "refused");
    // Without failover and outlier detection the caller sees the refused connection.
    let plain = Channels::new(&dir, "who")
        .keyed_by_header(KEY_HEADER)
        .outliers(registry::tonic::OutlierPolicy::off())
        .attempts(1);
    let err = who::call(plain, &key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    server.stop().await;
}

/// The owner stops (its server closes its connections, then refuses new ones) just before a
/// call: the client's connection may still look open when the call is handed to it, and is found
/// closed before the request is written (hyper cancels it unsent). Not sent, so it fails over
/// by default. The race is narrow: many rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_fails_over_by_default_when_the_owner_closed_its_connection_before_sending() {
    let next = who::serve("next").await.unwrap();
    let dir = Directory::new();
    let source = dir.source("test", 10).unwrap();
    let keyed = Channels::new(&dir, "who").keyed_by_header(KEY_HEADER);
    let next_inst = Instance::new("who", "next").addr(next.addr.to_string());
    source.publish(
        "who",
        [
            Instance::new("who", "owner").addr("127.0.0.1:1"),
            next_inst.clone(),
        ],
        1,
    );
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| dir.find("who", k).unwrap().id == "owner")
        .unwrap();
    for round in 0..40 {
        let owner = who::serve("owner").await.unwrap();
        // A new address: a new channel for the owner.
        source.publish(
            "who",
            [
                Instance::new("who", "owner").addr(owner.addr.to_string()),
                next_inst.clone(),
            ],
            round + 2,
        );
        let reply = call_key(&keyed, &key).await.unwrap();
        assert_eq!(reply.server, "owner", "round {round}");
        owner.stop().await;
        match call_key(&keyed, &key).await {
            Ok(reply) => assert_eq!(reply.server, "next", "round {round}"),
            Err(e) => panic!("round {round}: {e:?}"),
        }
    }
    next.stop().await;
}

/// One call for `key` through `keyed`, within 10 s.
async fn call_key(
    keyed: &registry::tonic::KeyedChannel,
    key: &str,
) -> Result<who::WhoReply, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), who::call(keyed.clone(), key))
        .await
        .expect("the call ends in time")
}
