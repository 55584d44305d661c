//! The worker on the wire, against a fake broker (a ROUTER socket of our own): frame layout,
//! SMI UP/HEARTBEAT/DOWN, and malformed frames dropped without harm. No Node needed.

use std::time::Duration;

use bytes::Bytes;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zss::{Message, Reply, ServiceConfig, Value};

async fn recv(router: &mut RouterSocket) -> Vec<Bytes> {
    tokio::time::timeout(Duration::from_secs(5), router.recv())
        .await
        .expect("a message within 5 s")
        .expect("receive")
        .into_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_smi_and_malformed_input() {
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.expect("bind");
    let config = ServiceConfig::new("wire")
        .broker(endpoint.to_string())
        .heartbeat(Duration::from_millis(200))
        .verb("hello", |p, _m| async move { Ok(Reply::ok(p)) });
    let worker = config.run();

    // UP: routing id, then the eight frames, frame 0 being the same identity.
    let up = recv(&mut router).await;
    assert_eq!(up.len(), 9, "{up:?}");
    assert_eq!(up[0], up[1], "the DEALER's routing identity equals frame 0");
    assert_eq!(&up[1][..], worker.identity().as_bytes());
    assert!(worker.identity().starts_with("WIRE#"));
    let m = Message::parse(&up[1..]).expect("UP parses");
    assert_eq!(
        (m.address.sid.as_str(), m.address.verb.as_str()),
        ("SMI", "UP")
    );
    assert_eq!(m.payload, Value::from("WIRE"));
    let routing = up[0].clone();

    // Garbage of every shape, then a real request: the worker drops the former, answers the latter.
    let send = |frames: Vec<Bytes>| ZmqMessage::try_from(frames).unwrap();
    for bad in [
        vec![routing.clone(), Bytes::from_static(b"garbage")],
        vec![
            routing.clone(),
            Bytes::new(),
            Bytes::from_static(b"ZSS:0.0"),
            Bytes::from_static(b"REQ"),
            Bytes::from_static(b"r"),
            Bytes::from_static(&[0xc1]),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
        ],
        vec![
            routing.clone(),
            Bytes::new(),
            Bytes::from_static(b"HTTP/1.1"),
            Bytes::from_static(b"GET"),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
            Bytes::new(),
        ],
    ] {
        router.send(send(bad)).await.expect("send garbage");
    }
    let mut req = Message::request(
        zss::Address::new("wire", "hello"),
        Value::map::<&str>([]),
        Value::from("x".repeat(200)),
    );
    req.identity = Some("client#1".into());
    let mut frames = vec![routing.clone()];
    frames.extend(req.to_frames());
    router.send(send(frames)).await.expect("send request");
    let reply = loop {
        let f = recv(&mut router).await;
        let m = Message::parse(&f[1..]).expect("worker output parses");
        if m.address.sid != "SMI" {
            break m;
        }
        assert_eq!(m.address.verb, "HEARTBEAT");
    };
    assert_eq!(
        reply.identity.as_deref(),
        Some("client#1"),
        "the reply goes back to the client"
    );
    assert_eq!(reply.rid, req.rid);
    assert_eq!(reply.status, Some(200));
    assert_eq!(reply.payload, Value::from("x".repeat(200)));
    assert!(matches!(
        reply.header("response-time"),
        Some(Value::Float(_))
    ));

    // DOWN, answered: stop() reports the acknowledgement.
    let stopping = tokio::spawn(worker.stop());
    let down = loop {
        let f = recv(&mut router).await;
        let m = Message::parse(&f[1..]).unwrap();
        if m.address.verb == "DOWN" {
            break m;
        }
    };
    let mut ack = down.clone();
    ack.kind = zss::message::Kind::Reply;
    ack.status = Some(200);
    let mut frames = vec![routing];
    frames.extend(ack.to_frames());
    router.send(send(frames)).await.unwrap();
    assert!(stopping.await.unwrap(), "DOWN acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_bounded_when_the_broker_never_answers() {
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.expect("bind");
    let worker = ServiceConfig::new("mute")
        .broker(endpoint.to_string())
        .stop_timeout(Duration::from_millis(300))
        .run();
    let _up = recv(&mut router).await;
    let t0 = std::time::Instant::now();
    assert!(!worker.stop().await, "no acknowledgement");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
