//! The ADS protocol as the server speaks it, driven by the generated Envoy client (envoy-types):
//! answers and their versions, ACKs, NACKs (counted), stale nonces ignored, a change pushed, the
//! wildcard, the limits and the token. The real gRPC clients (grpcio, grpc-js-xds) are in
//! registry-cli/tests/xds.rs.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use registry_engine::{Directory, Discovery, Instance, Registration, Registry};
use registry_memory::MemoryBackend;
use registry_xds::{Kind, XdsOptions, XdsServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

struct Bed {
    registry: Registry,
    discovery: Discovery,
    server: XdsServer,
    addr: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn bed(options: XdsOptions) -> Bed {
    let registry = Registry::new(Arc::new(MemoryBackend::new())).unwrap();
    let discovery = registry.discover_all().await.unwrap();
    let server = XdsServer::new(discovery.directory().clone(), options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Bed {
        registry,
        discovery,
        server,
        addr,
        _stop: stop,
    }
}

impl Bed {
    fn dir(&self) -> &Directory {
        self.discovery.directory()
    }

    async fn register(&self, id: &str, addr: &str, weight: u32) -> Registration {
        let r = self
            .registry
            .register(Instance::new("echo", id).addr(addr).weight(weight))
            .await
            .unwrap();
        // In the directory before the test looks.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.dir().all("echo").iter().any(|i| i.id == id) {
            assert!(tokio::time::Instant::now() < deadline, "{id} not listed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r
    }

    async fn stream(&self) -> Stream {
        self.stream_with(None).await.unwrap()
    }

    async fn stream_with(&self, token: Option<&str>) -> Result<Stream, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(self.addr.clone())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let answers = client.stream_aggregated_resources(req).await?.into_inner();
        Ok(Stream { tx, answers })
    }
}

struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    answers: Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn ask(&self, kind: Kind, names: &[&str], version: &str, nonce: &str) {
        self.send(kind, names, version, nonce, None).await;
    }

    async fn send(
        &self,
        kind: Kind,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        self.tx
            .send(DiscoveryRequest {
                type_url: kind.type_url(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail: error.map(|m| RpcStatus {
                    code: 3,
                    message: m.to_owned(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn answer(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.answers.message())
            .await
            .expect("an answer within 10 s")
            .expect("no error")
            .expect("the stream is open")
    }

    /// Whether an answer comes within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.answers.message())
            .await
            .is_err()
    }
}

fn cla(answer: &DiscoveryResponse) -> Vec<ClusterLoadAssignment> {
    answer
        .resources
        .iter()
        .map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).unwrap())
        .collect()
}

/// Each endpoint's `ip:port`, its health status and its locality's weight.
fn endpoints(c: &ClusterLoadAssignment) -> Vec<(String, i32, u32)> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut out = Vec::new();
    for loc in &c.endpoints {
        for e in &loc.lb_endpoints {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("an endpoint")
            };
            let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
            else {
                panic!("a socket address")
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("a port")
            };
            out.push((
                format!("{}:{port}", sa.address),
                e.health_status,
                loc.load_balancing_weight.as_ref().unwrap().value,
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_acks_nacks_and_pushes() {
    let bed = bed(XdsOptions::default()).await;
    let _a = bed.register("a", "10.0.0.1:50051", 100).await;
    let _b = bed.register("b", "grpc://10.0.0.2:50051/", 300).await;
    // No IP address: left out, counted.
    let _n = bed.register("n", "echo.internal:50051", 100).await;
    let mut s = bed.stream().await;

    // The listener of a named service.
    s.ask(Kind::Listener, &["echo"], "", "").await;
    let lds = s.answer().await;
    assert_eq!(lds.type_url, Kind::Listener.type_url());
    assert_eq!(lds.resources.len(), 1);
    let l = Listener::decode(lds.resources[0].value.as_slice()).unwrap();
    assert_eq!(l.name, "echo");
    assert!(l.api_listener.is_some());
    // ACK: nothing more is sent.
    s.ask(Kind::Listener, &["echo"], &lds.version_info, &lds.nonce)
        .await;

    // Endpoints, weighted, the address-less instance left out.
    s.ask(Kind::Endpoints, &["echo"], "", "").await;
    let eds = s.answer().await;
    let c = &cla(&eds)[0];
    assert_eq!(c.cluster_name, "echo");
    assert_eq!(
        endpoints(c),
        [
            ("10.0.0.1:50051".to_owned(), 1, 100),
            ("10.0.0.2:50051".to_owned(), 1, 300)
        ],
        "HEALTHY (1), locality weights from the instances'"
    );
    s.ask(Kind::Endpoints, &["echo"], &eds.version_info, &eds.nonce)
        .await;
    assert!(s.quiet_for(Duration::from_millis(300)).await);

    // A change is pushed: a new instance, with a new version and nonce.
    let _c = bed.register("c", "10.0.0.3:50051", 100).await;
    let pushed = s.answer().await;
    assert_eq!(pushed.type_url, Kind::Endpoints.type_url());
    assert_ne!(pushed.version_info, eds.version_info);
    assert_ne!(pushed.nonce, eds.nonce);
    assert_eq!(endpoints(&cla(&pushed)[0]).len(), 3);

    // A NACK is counted (and the server does not send the rejected answer again).
    s.send(
        Kind::Endpoints,
        &["echo"],
        &eds.version_info,
        &pushed.nonce,
        Some("a reason the client gives"),
    )
    .await;
    assert!(s.quiet_for(Duration::from_millis(300)).await);
    let stats = bed.server.stats().snapshot();
    assert_eq!(stats.nacks[Kind::Endpoints as usize], 1, "{stats:?}");
    assert_eq!(stats.acks[Kind::Endpoints as usize], 1, "{stats:?}");
    assert_eq!(stats.acks[Kind::Listener as usize], 1, "{stats:?}");
    assert!(stats.skipped_endpoints >= 1, "{stats:?}");

    // A stale request (an older nonce) changing the names is ignored; the current one is not.
    s.ask(
        Kind::Endpoints,
        &["echo", "other"],
        &eds.version_info,
        &eds.nonce,
    )
    .await;
    assert!(s.quiet_for(Duration::from_millis(300)).await);
    s.ask(
        Kind::Endpoints,
        &["echo", "other"],
        &pushed.version_info,
        &pushed.nonce,
    )
    .await;
    let both = s.answer().await;
    let names: Vec<String> = cla(&both).into_iter().map(|c| c.cluster_name).collect();
    assert_eq!(
        names,
        ["echo", "other"],
        "a service with no instance: no endpoint"
    );
    assert_eq!(bed.server.stats().snapshot().streams, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_offline_and_unknown_types() {
    let bed = bed(XdsOptions::default()).await;
    let a = bed.register("a", "10.0.0.1:1", 100).await;
    let mut s = bed.stream().await;
    // A type this server does not serve: no answer (gRPC clients ask only for the four).
    s.ask_url("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")
        .await;
    assert!(s.quiet_for(Duration::from_millis(300)).await);
    // CDS with no name: every service.
    s.ask(Kind::Cluster, &[], "", "").await;
    let cds = s.answer().await;
    assert_eq!(cds.resources.len(), 1);
    s.ask(Kind::Cluster, &[], &cds.version_info, &cds.nonce)
        .await;
    s.ask(Kind::Endpoints, &["echo"], "", "").await;
    let eds = s.answer().await;
    s.ask(Kind::Endpoints, &["echo"], &eds.version_info, &eds.nonce)
        .await;
    // Offline: DRAINING (3).
    a.update(|i| i.state = registry_engine::InstanceState::Offline)
        .await
        .unwrap();
    let drained = s.answer().await;
    assert_eq!(drained.type_url, Kind::Endpoints.type_url());
    assert_eq!(
        endpoints(&cla(&drained)[0]),
        [("10.0.0.1:1".to_owned(), 3, 100)]
    );
    s.ask(
        Kind::Endpoints,
        &["echo"],
        &drained.version_info,
        &drained.nonce,
    )
    .await;
    // A new service reaches the wildcard subscription.
    let _other = bed
        .registry
        .register(Instance::new("pay", "p").addr("10.0.1.1:1"))
        .await
        .unwrap();
    let cds2 = s.answer().await;
    assert_eq!(cds2.type_url, Kind::Cluster.type_url());
    assert_eq!(cds2.resources.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_token() {
    let bed = bed(XdsOptions {
        max_streams: 1,
        max_names: 3,
        token: Some("s3cret".into()),
        ..XdsOptions::default()
    })
    .await;
    // No token, a wrong one: refused.
    for t in [None, Some("wrong")] {
        let e = bed.stream_with(t).await.err().expect("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(!e.message().contains("s3cret"));
    }
    let mut s = bed.stream_with(Some("s3cret")).await.unwrap();
    s.ask(Kind::Endpoints, &["a"], "", "").await;
    s.answer().await;
    // A second stream is over the limit.
    let e = bed
        .stream_with(Some("s3cret"))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // Too many names: the stream ends with INVALID_ARGUMENT.
    s.ask(Kind::Endpoints, &["a", "b", "c", "d"], "", "").await;
    let end = tokio::time::timeout(WAIT, s.answers.message())
        .await
        .unwrap()
        .expect_err("the stream ends with an error");
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    let stats = bed.server.stats().snapshot();
    assert_eq!(stats.streams_refused, 3, "{stats:?}");
    assert!(!format!("{:?}", bed.server).contains("s3cret"));
}

impl Stream {
    async fn ask_url(&self, type_url: &str) {
        self.tx
            .send(DiscoveryRequest {
                type_url: type_url.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// Incremental xDS: only what changed is sent, names that cannot be served come back removed,
/// a reconnecting client that has the current version gets nothing again, NACKs are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_only_what_changed() {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    };
    let bed = bed(XdsOptions::default()).await;
    let _a = bed.register("a", "10.0.0.1:1", 100).await;

    async fn open(
        bed: &Bed,
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let mut client = AggregatedDiscoveryServiceClient::connect(bed.addr.clone())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let answers = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, answers)
    }
    async fn next(answers: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, answers.message())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .unwrap()
    }
    let eds = Kind::Endpoints.type_url();
    let (tx, mut answers) = open(&bed).await;
    tx.send(DeltaDiscoveryRequest {
        type_url: eds.clone(),
        resource_names_subscribe: vec!["echo".into(), "not a service!".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut answers).await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["echo"]);
    assert_eq!(first.removed_resources, ["not a service!"]);
    let version = first.resources[0].version.clone();
    tx.send(DeltaDiscoveryRequest {
        type_url: eds.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Another service changes: nothing is sent. This one changes: it alone, a new version.
    let _pay = bed
        .registry
        .register(Instance::new("pay", "p").addr("10.0.1.1:1"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), answers.message())
            .await
            .is_err()
    );
    let _b = bed.register("b", "10.0.0.2:1", 300).await;
    let pushed = next(&mut answers).await;
    assert_eq!(pushed.resources.len(), 1);
    assert_ne!(pushed.resources[0].version, version);
    assert!(pushed.removed_resources.is_empty());
    let c = ClusterLoadAssignment::decode(
        pushed.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(endpoints(&c).len(), 2);
    // A NACK of it is counted.
    tx.send(DeltaDiscoveryRequest {
        type_url: eds.clone(),
        response_nonce: pushed.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = bed.server.stats().snapshot();
    assert_eq!(stats.acks[Kind::Endpoints as usize], 1, "{stats:?}");
    assert_eq!(stats.nacks[Kind::Endpoints as usize], 1, "{stats:?}");

    // Reconnecting with the current version: the first answer carries nothing new.
    let current = pushed.resources[0].version.clone();
    let (tx2, mut answers2) = open(&bed).await;
    tx2.send(DeltaDiscoveryRequest {
        type_url: eds.clone(),
        resource_names_subscribe: vec!["echo".into()],
        initial_resource_versions: [("echo".to_owned(), current)].into_iter().collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let again = next(&mut answers2).await;
    assert!(again.resources.is_empty(), "{:?}", again.resources);
    assert!(again.removed_resources.is_empty());
    drop((tx, tx2));
}
