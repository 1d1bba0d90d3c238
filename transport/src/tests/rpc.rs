use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{any_port, endpoint, pair, pair_with, serve_test_methods, Echo, Fail, Sleep, WhoAmI};
use crate::frame::read_frame;
use crate::wire::decode;
use crate::{ClusterCa, Endpoint, RpcError, TransportConfig, TransportError};

#[tokio::test]
async fn typed_call_round_trips_and_server_sees_caller_node_id() {
    let p = pair();
    let reply =
        p.a.call::<Echo>(p.b.local_addr(), &"hello".to_string())
            .await;
    assert_eq!(reply.unwrap(), "hello");
    let seen = p.a.call::<WhoAmI>(p.b.local_addr(), &()).await.unwrap();
    assert_eq!(seen, Some(1));
    let seen = p.b.call::<WhoAmI>(p.a.local_addr(), &()).await.unwrap();
    assert_eq!(seen, Some(2));
    assert_eq!(p.a.node_id(), 1);
}

#[tokio::test]
async fn concurrent_calls_share_one_connection() {
    let p = pair();
    let addr = p.b.local_addr();
    let calls = (0..50).map(|i| {
        let a = p.a.clone();
        async move { a.call::<Echo>(addr, &format!("m{i}")).await }
    });
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), format!("m{i}"));
    }
    let first = p.a.raw_connection(addr).await.unwrap();
    let second = p.a.raw_connection(addr).await.unwrap();
    assert_eq!(first.stable_id(), second.stable_id());
}

#[tokio::test]
async fn remote_handler_error_surfaces_as_remote() {
    let p = pair();
    let err =
        p.a.call::<Fail>(p.b.local_addr(), &"disk full".to_string())
            .await;
    assert_eq!(err, Err(RpcError::Remote("disk full".into())));
}

#[tokio::test]
async fn unknown_method_is_reported() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let bare = endpoint(&ca, 2, TransportConfig::default());
    let err = a.call::<Echo>(bare.local_addr(), &"x".into()).await;
    assert_eq!(err, Err(RpcError::UnknownMethod("test.echo".into())));
}

#[tokio::test]
async fn caller_deadline_fires() {
    let p = pair();
    let started = Instant::now();
    let err =
        p.a.call_timeout::<Sleep>(p.b.local_addr(), &2_000, Duration::from_millis(200))
            .await;
    assert_eq!(err, Err(RpcError::Timeout));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_handler_deadline_fires() {
    let p = pair_with(TransportConfig {
        rpc_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    });
    let started = Instant::now();
    let err =
        p.a.call_timeout::<Sleep>(p.b.local_addr(), &10_000, Duration::from_secs(5))
            .await;
    assert_eq!(err, Err(RpcError::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "server gave up after {elapsed:?}"
    );
}

#[tokio::test]
async fn server_request_read_deadline_fires() {
    let p = pair_with(TransportConfig {
        rpc_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    });
    let conn = p.a.raw_connection(p.b.local_addr()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Half a length prefix, then silence.
    send.write_all(&[0, 0]).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut recv, 1 << 20))
        .await
        .expect("server answered before its deadline")
        .unwrap()
        .unwrap();
    let response: Result<(), RpcError> = decode(&frame).unwrap();
    assert_eq!(response, Err(RpcError::Timeout));
}

#[tokio::test]
async fn connect_deadline_fires_for_a_silent_address() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(
        &ca,
        1,
        TransportConfig {
            connect_timeout: Duration::from_millis(300),
            ..TransportConfig::default()
        },
    );
    let silent = std::net::UdpSocket::bind(any_port()).unwrap();
    let started = Instant::now();
    let err = a
        .call::<Echo>(silent.local_addr().unwrap(), &"x".into())
        .await;
    assert!(matches!(err, Err(RpcError::Connect(_))), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Sends `bytes` as the whole content of a new stream and returns the server's answer.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Result<(), RpcError> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The server may stop the stream before we finish writing; its answer still arrives.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let frame = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut recv, 1 << 20))
        .await
        .expect("answer in time")
        .expect("readable answer")
        .expect("an answer frame");
    decode::<Result<(), RpcError>>(&frame).unwrap()
}

#[tokio::test]
async fn bad_frames_close_only_their_stream() {
    let max = 1024 * 1024;
    let p = pair_with(TransportConfig {
        max_frame_bytes: max,
        ..TransportConfig::default()
    });
    let addr = p.b.local_addr();
    let conn = p.a.raw_connection(addr).await.unwrap();

    let oversized = (2 * max as u32).to_be_bytes();
    assert_eq!(
        raw_request(&conn, &oversized).await,
        Err(RpcError::FrameTooLarge { size: 2 * max, max })
    );
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 8]);
    assert!(matches!(
        raw_request(&conn, &garbage).await,
        Err(RpcError::Decode(_))
    ));
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([0u8; 10]);
    match raw_request(&conn, &truncated).await {
        Err(RpcError::Decode(message)) => assert!(message.contains("truncated"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Through the public API: A allows 16 MiB, B only 1 MiB.
    let big = "x".repeat(2 * max);
    match p.a.call::<Echo>(addr, &big).await {
        Err(RpcError::FrameTooLarge { max: limit, .. }) => assert_eq!(limit, max),
        other => panic!("{other:?}"),
    }

    // The connection and the endpoint keep serving.
    assert_eq!(conn.close_reason(), None);
    assert_eq!(
        p.a.call::<Echo>(addr, &"still here".into()).await.unwrap(),
        "still here"
    );
    let again = p.a.raw_connection(addr).await.unwrap();
    assert_eq!(again.stable_id(), conn.stable_id());
}

#[tokio::test]
async fn caller_refuses_to_send_oversized_requests() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(
        &ca,
        1,
        TransportConfig {
            max_frame_bytes: 1000,
            ..TransportConfig::default()
        },
    );
    let b = endpoint(&ca, 2, TransportConfig::default());
    let calls = serve_test_methods(&b);
    let err = a.call::<Echo>(b.local_addr(), &"y".repeat(2000)).await;
    assert!(
        matches!(err, Err(RpcError::FrameTooLarge { max: 1000, .. })),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pooled_connection_is_reestablished_after_the_peer_restarts() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let b = endpoint(&ca, 2, TransportConfig::default());
    serve_test_methods(&b);
    let addr = b.local_addr();
    assert_eq!(a.call::<Echo>(addr, &"one".into()).await.unwrap(), "one");
    let before = a.raw_connection(addr).await.unwrap();
    b.close();
    drop(b);
    // The old socket is released once quinn has drained the closed connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        match Endpoint::bind(
            addr,
            ca.issue_identity(2).unwrap(),
            TransportConfig::default(),
        ) {
            Ok(endpoint) => break endpoint,
            Err(TransportError::AddrInUse(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("rebind: {e}"),
        }
    };
    serve_test_methods(&restarted);
    assert!(
        before.close_reason().is_some(),
        "A saw the old connection close"
    );
    assert_eq!(a.call::<Echo>(addr, &"two".into()).await.unwrap(), "two");
    let after = a.raw_connection(addr).await.unwrap();
    assert_ne!(after.stable_id(), before.stable_id());
}

#[tokio::test]
async fn binding_a_used_port_names_the_address() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let err = Endpoint::bind(
        a.local_addr(),
        ca.issue_identity(2).unwrap(),
        TransportConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TransportError::AddrInUse(addr) if addr == a.local_addr()));
    assert!(err.to_string().contains("already in use"), "{err}");
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let ca = ClusterCa::generate("t").unwrap();
    let cfg = TransportConfig {
        keep_alive: Duration::from_secs(20),
        ..TransportConfig::default()
    };
    let err = Endpoint::bind(any_port(), ca.issue_identity(1).unwrap(), cfg).unwrap_err();
    assert!(matches!(err, TransportError::InvalidConfig(_)), "{err}");
}

#[test]
fn binding_outside_a_runtime_is_an_error_not_a_panic() {
    let ca = ClusterCa::generate("t").unwrap();
    let err = Endpoint::bind(
        any_port(),
        ca.issue_identity(1).unwrap(),
        TransportConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TransportError::NoRuntime));
}

#[tokio::test]
async fn closed_endpoint_stops_serving_and_calling() {
    let p = pair();
    let addr = p.b.local_addr();
    assert_eq!(p.a.call::<Echo>(addr, &"up".into()).await.unwrap(), "up");
    p.b.close();
    let started = Instant::now();
    let err = p.a.call::<Echo>(addr, &"down".into()).await;
    assert!(err.is_err(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    p.a.close();
    let err = p.a.call::<Echo>(addr, &"again".into()).await;
    assert!(matches!(err, Err(RpcError::Connect(_))), "{err:?}");
}
