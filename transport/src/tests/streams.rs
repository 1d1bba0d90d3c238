use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{endpoint, pair, Echo};
use crate::{ClusterCa, RpcError, TransportConfig};

#[tokio::test]
async fn datagrams_arrive_with_the_sender_node_id() {
    let p = pair();
    let mut inbox = p.b.datagrams();
    p.a.send_datagram(p.b.local_addr(), Bytes::from_static(b"heartbeat"))
        .await
        .unwrap();
    let (peer, payload) = tokio::time::timeout(Duration::from_secs(2), inbox.recv())
        .await
        .expect("datagram in time")
        .expect("queue open");
    assert_eq!(&payload[..], b"heartbeat");
    assert_eq!(peer.node_id, Some(1));
    // Replies over A's connection from B's side also arrive (B -> A uses B's own pool).
    let mut a_inbox = p.a.datagrams();
    p.b.send_datagram(p.a.local_addr(), Bytes::from_static(b"load"))
        .await
        .unwrap();
    let (peer, payload) = tokio::time::timeout(Duration::from_secs(2), a_inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&payload[..], peer.node_id), (&b"load"[..], Some(2)));
    // The queue can be taken once; a second taker gets a closed receiver.
    assert!(p.b.datagrams().recv().await.is_none());
}

#[tokio::test]
async fn oversized_datagram_is_an_error() {
    let p = pair();
    let err =
        p.a.send_datagram(p.b.local_addr(), Bytes::from(vec![0u8; 64 * 1024]))
            .await;
    assert!(
        matches!(err, Err(RpcError::FrameTooLarge { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn udp_garbage_leaves_the_endpoint_working() {
    let p = pair();
    let addr = p.b.local_addr();
    assert_eq!(
        p.a.call::<Echo>(addr, &"before".into()).await.unwrap(),
        "before"
    );
    let junk = std::net::UdpSocket::bind(super::any_port()).unwrap();
    for i in 0..200usize {
        let len = 1 + (i * 37) % 1400;
        let mut packet: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        // Half of them look like QUIC long-header packets.
        if i % 2 == 0 {
            packet[0] = 0xc0 | (packet[0] & 0x0f);
        }
        junk.send_to(&packet, addr).unwrap();
    }
    assert_eq!(
        p.a.call::<Echo>(addr, &"after".into()).await.unwrap(),
        "after"
    );
    // New connections are still accepted.
    let fresh = endpoint(&p.ca, 3, TransportConfig::default());
    assert_eq!(
        fresh.call::<Echo>(addr, &"new".into()).await.unwrap(),
        "new"
    );
}

#[tokio::test]
async fn unknown_stream_name_is_reported() {
    let p = pair();
    let err = p.a.open_stream(p.b.local_addr(), "nope").await.err();
    assert_eq!(err, Some(RpcError::UnknownMethod("nope".into())));
}

#[tokio::test]
async fn open_stream_moves_64_mib() {
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: usize = 64;
    let ca = ClusterCa::generate("bulk").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let b = endpoint(&ca, 2, TransportConfig::default());
    b.register_stream("bulk", |peer, mut send, mut recv| async move {
        assert_eq!(peer.node_id, Some(1));
        let mut total = 0u64;
        let mut checksum = 0u64;
        while let Ok(Some(chunk)) = recv.recv_bytes().await {
            total += chunk.len() as u64;
            checksum = checksum.wrapping_add(chunk.iter().map(|&b| b as u64).sum::<u64>());
        }
        let _ = send.send(&(total, checksum)).await;
        let _ = send.finish().await;
    });
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let expected_checksum = chunk.iter().map(|&b| b as u64).sum::<u64>() * CHUNKS as u64;

    let started = Instant::now();
    let (mut send, mut recv) = a.open_stream(b.local_addr(), "bulk").await.unwrap();
    for _ in 0..CHUNKS {
        send.send_bytes(&chunk).await.unwrap();
    }
    send.finish().await.unwrap();
    let (total, checksum): (u64, u64) = recv.recv().await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(total, (CHUNK * CHUNKS) as u64);
    assert_eq!(checksum, expected_checksum);
    assert_eq!(recv.recv::<(u64, u64)>().await.unwrap(), None);
    println!(
        "open_stream: {} MiB in {:.3} s = {:.0} MiB/s",
        CHUNKS,
        elapsed.as_secs_f64(),
        CHUNKS as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn stream_frame_over_limit_closes_that_stream_only() {
    let ca = ClusterCa::generate("bulk").unwrap();
    let a = endpoint(&ca, 1, TransportConfig::default());
    let b = endpoint(
        &ca,
        2,
        TransportConfig {
            max_frame_bytes: 1024,
            ..TransportConfig::default()
        },
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    b.register_stream("sink", move |_peer, _send, mut recv| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(recv.recv_bytes().await).await;
        }
    });
    super::serve_test_methods(&b);
    let (mut send, _recv) = a.open_stream(b.local_addr(), "sink").await.unwrap();
    send.send_bytes(&[0u8; 4096]).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        Err(RpcError::FrameTooLarge {
            size: 4096,
            max: 1024
        })
    );
    assert_eq!(
        a.call::<Echo>(b.local_addr(), &"fine".into())
            .await
            .unwrap(),
        "fine"
    );
}

/// Callers race `recv` against other events in `select!` (lease changes, client gone): a receive
/// dropped midway must lose no bytes, or the stream desynchronises and frames vanish.
#[tokio::test]
async fn a_cancelled_receive_loses_no_bytes() {
    const FRAMES: u64 = 400;
    let p = pair();
    p.b.register_stream("numbers", |_peer, mut send, _recv| async move {
        for i in 0..FRAMES {
            // Large enough to span several packets, so cancellations land inside frames.
            let payload = vec![(i % 251) as u8; 20_000 + (i as usize * 37) % 5_000];
            if send.send(&(i, payload)).await.is_err() {
                return;
            }
        }
        let _ = send.finish().await;
    });
    let (_send, mut recv) = p.a.open_stream(p.b.local_addr(), "numbers").await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_micros(50));
    let mut expected = 0u64;
    let mut cancelled = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled at frame {expected}"
        );
        tokio::select! {
            biased;
            _ = tick.tick() => { cancelled += 1; continue; }
            frame = recv.recv::<(u64, Vec<u8>)>() => match frame.unwrap() {
                Some((i, payload)) => {
                    assert_eq!(i, expected, "frames arrived out of order or were lost");
                    assert!(payload.iter().all(|&b| b == (i % 251) as u8));
                    expected += 1;
                }
                None => break,
            },
        }
    }
    assert_eq!(expected, FRAMES);
    assert!(cancelled > 0, "the test never cancelled a receive");
}
