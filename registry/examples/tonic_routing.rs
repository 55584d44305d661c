//! gRPC over the directory with tonic: three real tonic servers on loopback register through the
//! library; a client calls them through a balanced channel (any instance, by weight) and through a keyed
//! transport (each key's ring owner, failing over to the next ring member).
//!
//! ```text
//! cargo run -p service-registry --features tonic --example tonic_routing
//! ```
//!
//! The gRPC service is written by hand with tonic's generic client and server and prost's derive
//! (what tonic-build would generate from a one-method `.proto`), so nothing needs `protoc`.

use std::collections::BTreeMap;
use std::time::Duration;

use registry::engine::{Instance, Registry};
use registry::tonic::Channels;
use tonic::Code;

/// The example's gRPC service: `Who(WhoRequest) -> WhoReply`, answering with the server's id.
pub mod who {
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use tonic::body::Body;
    use tonic::codegen::http;
    use tonic::{Request, Response, Status};
    use tonic_prost::ProstCodec;

    /// The one method's path.
    pub const PATH: &str = "/registry.example.Who/Who";

    /// `message WhoRequest { string key = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WhoRequest {
        /// The key the call is about.
        #[prost(string, tag = "1")]
        pub key: String,
    }

    /// `message WhoReply { string server = 1; string key = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WhoReply {
        /// The id of the server that answered.
        #[prost(string, tag = "1")]
        pub server: String,
        /// The request's key.
        #[prost(string, tag = "2")]
        pub key: String,
    }

    /// How a server answers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// With its id.
        Serve,
        /// With status `UNAVAILABLE` (an overloaded or draining server).
        Unavailable,
        /// With its id, after a delay.
        Slow(Duration),
    }

    /// The server side: a tower service over HTTP requests, as tonic-build generates.
    #[derive(Clone)]
    pub struct WhoServer {
        id: String,
        mode: Arc<Mutex<Mode>>,
    }

    impl tonic::server::NamedService for WhoServer {
        const NAME: &'static str = "registry.example.Who";
    }

    impl tower::Service<http::Request<Body>> for WhoServer {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future =
            Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let (id, mode) = (self.id.clone(), self.mode.clone());
            Box::pin(async move {
                if req.uri().path() != PATH {
                    return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
                }
                let handler = tower::service_fn(move |req: Request<WhoRequest>| {
                    let (id, mode) = (id.clone(), *mode.lock().unwrap());
                    async move {
                        match mode {
                            Mode::Unavailable => {
                                return Err(Status::unavailable(format!("{id} is unavailable")));
                            }
                            Mode::Slow(d) => tokio::time::sleep(d).await,
                            Mode::Serve => {}
                        }
                        let key = req.into_inner().key;
                        Ok(Response::new(WhoReply { server: id, key }))
                    }
                });
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<WhoReply, WhoRequest>::default());
                Ok(grpc.unary(handler, req).await)
            })
        }
    }

    /// A running server on loopback.
    pub struct Running {
        /// Its id.
        pub id: String,
        /// Where it listens.
        pub addr: SocketAddr,
        mode: Arc<Mutex<Mode>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        /// Changes how it answers from now on.
        pub fn set_mode(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        /// Stops it: it no longer accepts connections (its registration, if any, stays).
        pub async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let _ = (&mut self.task).await;
        }
    }

    /// Starts server `id` on 127.0.0.1 (a free port).
    pub async fn serve(id: &str) -> std::io::Result<Running> {
        serve_with(id, None).await
    }

    /// Starts server `id` on 127.0.0.1, over TLS if `tls` says so.
    pub async fn serve_with(
        id: &str,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> std::io::Result<Running> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(std::io::Error::other)?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let svc = WhoServer {
            id: id.to_owned(),
            mode: mode.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Running {
            id: id.to_owned(),
            addr,
            mode,
            stop: Some(stop),
            task,
        })
    }

    /// Calls `Who` through any tonic transport, with the routing key in the request's metadata
    /// as well as in its message.
    pub async fn call<T>(transport: T, key: &str) -> Result<WhoReply, Status>
    where
        T: tonic::client::GrpcService<Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
    {
        let mut grpc = tonic::client::Grpc::new(transport);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
        let mut request = Request::new(WhoRequest {
            key: key.to_owned(),
        });
        registry::tonic::set_key(&mut request, key)?;
        let path = http::uri::PathAndQuery::from_static(PATH);
        let reply = grpc
            .unary(request, path, ProstCodec::<WhoRequest, WhoReply>::default())
            .await?;
        Ok(reply.into_inner())
    }
}

/// Sends `n` calls through `channel` and counts them by the server that answered.
async fn spread(channel: &registry::tonic::BalancedChannel, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for i in 0..n {
        let reply = who::call(channel.clone(), &format!("k{i}"))
            .await
            .expect("balanced call");
        *by.entry(reply.server).or_default() += 1;
    }
    by
}

/// The walk-through (also run by `tests/tonic.rs`).
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = registry::connect("memory://tonic-example").await?;

    // Three servers, each registered with its loopback address.
    let servers_side = Registry::new(backend.clone())?;
    let mut servers = Vec::new();
    let mut registrations = BTreeMap::new();
    for i in 1..=3 {
        let server = who::serve(&format!("who-{i}")).await?;
        let inst = Instance::new("who", &server.id).addr(server.addr.to_string());
        registrations.insert(server.id.clone(), servers_side.register(inst).await?);
        servers.push(server);
    }

    // The client follows the service.
    let client = Registry::new(backend)?;
    let discovery = client.discover("who").await?;
    let dir = discovery.directory();

    // Balanced: any instance.
    let balanced = Channels::new(dir, "who").balanced();
    println!("balanced, 30 calls: {:?}", spread(&balanced, 30).await);

    // Keyed: each key's owner, every time. `Who` is a read, safe to repeat: a call that may
    // have reached a failing owner (timed out, connection lost) may go to the next one too.
    let keyed = Channels::new(dir, "who")
        .keyed_by_header(registry::tonic::KEY_HEADER)
        .attempts(2)
        .timeout(Duration::from_millis(500))
        .retry_policy(registry::tonic::RetryPolicy::Idempotent);
    for key in ["alice", "bob", "carol", "dave"] {
        let owner = dir.find("who", key).expect("an owner").id.clone();
        for _ in 0..3 {
            let reply = who::call(keyed.clone(), key).await?;
            assert_eq!(reply.server, owner, "{key}'s calls reach its owner");
        }
        println!("keyed: {key} -> {owner} (3 calls)");
    }

    // The owner of "alice" answers UNAVAILABLE: her calls fail over to the next ring member.
    let ring = dir.find_n(2, "who", "alice");
    let (owner, next) = (ring[0].id.clone(), ring[1].id.clone());
    let owner_server = servers.iter().find(|s| s.id == owner).expect("a server");
    owner_server.set_mode(who::Mode::Unavailable);
    let reply = who::call(keyed.clone(), "alice").await?;
    println!("keyed: {owner} is UNAVAILABLE, alice -> {}", reply.server);
    assert_eq!(reply.server, next);

    // Too slow: the attempt times out and the call moves on too.
    owner_server.set_mode(who::Mode::Slow(Duration::from_secs(5)));
    let reply = who::call(keyed.clone(), "alice").await?;
    println!("keyed: {owner} is too slow, alice -> {}", reply.server);
    assert_eq!(reply.server, next);
    // The owner timed out: it is ejected (outlier detection), so alice's next calls go to the
    // next member at once, even with failover off, until the owner answers again.
    let reply = who::call(keyed.clone().attempts(1), "alice").await?;
    assert_eq!(reply.server, next);
    // With failover and outlier detection off, the caller sees the timeout.
    let plain = Channels::new(dir, "who")
        .keyed_by_header(registry::tonic::KEY_HEADER)
        .timeout(Duration::from_millis(300))
        .outliers(registry::tonic::OutlierPolicy::off())
        .attempts(1);
    let once = who::call(plain, "alice").await;
    assert_eq!(
        once.map_err(|s| s.code()).err(),
        Some(Code::DeadlineExceeded)
    );
    owner_server.set_mode(who::Mode::Serve);

    // Stopped while still registered: connection refused, failover.
    let idx = servers
        .iter()
        .position(|s| s.id == owner)
        .expect("a server");
    servers.remove(idx).stop().await;
    let reply = who::call(keyed.clone(), "alice").await?;
    println!("keyed: {owner} is down, alice -> {}", reply.server);
    assert_eq!(reply.server, next);

    // Deregistered: the balanced channel stops calling it.
    registrations
        .remove(&owner)
        .expect("registered")
        .deregister()
        .await?;
    while dir.get("who").iter().any(|i| i.id == owner) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The change reaches the balancer asynchronously (its server is down, so until then a call
    // may fail): wait for ten answers in a row from the others.
    let t0 = std::time::Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 10 {
        in_a_row = match who::call(balanced.clone(), "probe").await {
            Ok(reply) if reply.server != owner => in_a_row + 1,
            _ => 0,
        };
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{owner} still called"
        );
    }
    let after = spread(&balanced, 30).await;
    println!("balanced after {owner} left: {after:?}");
    assert!(!after.contains_key(&owner));

    for s in servers {
        s.stop().await;
    }
    Ok(())
}
