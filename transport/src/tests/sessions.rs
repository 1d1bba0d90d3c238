//! RPC sessions: calls reuse a stream per (peer, method), and nothing a failed or abandoned
//! call left behind reaches a later call.

use std::time::Duration;

use super::metrics_capture::{run_recorded, Captured};
use super::{endpoint, pair, serve_test_methods, Echo, Fail};
use crate::frame::{read_frame, write_frame};
use crate::wire::{decode, encode, StreamOpen};
use crate::{Method, RpcError, TransportConfig};

/// Echoes the text after sleeping the given number of milliseconds.
struct DelayedEcho;
impl Method for DelayedEcho {
    const NAME: &'static str = "test.delayed_echo";
    type Request = (u64, String);
    type Response = String;
}

fn serve_delayed_echo(endpoint: &crate::Endpoint) {
    endpoint.register::<DelayedEcho, _, _>(|_peer, (millis, text)| async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(text)
    });
}

fn outbound_streams(captured: &Captured) -> u64 {
    captured.value("stator_transport_streams_total{direction=outbound}")
}

#[test]
fn sequential_calls_share_one_stream_per_method() {
    let captured = Captured::default();
    run_recorded(&captured, async {
        let p = pair();
        let addr = p.b.local_addr();
        for i in 0..50 {
            let text = format!("call {i}");
            assert_eq!(p.a.call::<Echo>(addr, &text).await.unwrap(), text);
        }
        assert_eq!(outbound_streams(&captured), 1);
        // A handler's error does not end the session.
        for _ in 0..3 {
            assert_eq!(
                p.a.call::<Fail>(addr, &"no".into()).await,
                Err(RpcError::Remote("no".into()))
            );
        }
        assert_eq!(outbound_streams(&captured), 2);
        assert_eq!(
            p.a.call::<Echo>(addr, &"again".into()).await.unwrap(),
            "again"
        );
        assert_eq!(outbound_streams(&captured), 2);
        assert_eq!(
            captured.samples("stator_transport_rpc_seconds{method=test.echo}"),
            51
        );
    });
}

#[tokio::test]
async fn an_abandoned_call_never_hands_its_answer_to_the_next_call() {
    let p = pair();
    serve_delayed_echo(&p.b);
    let addr = p.b.local_addr();
    assert_eq!(
        p.a.call::<DelayedEcho>(addr, &(0, "warm".into()))
            .await
            .unwrap(),
        "warm"
    );
    let late =
        p.a.call_timeout::<DelayedEcho>(addr, &(300, "late".into()), Duration::from_millis(50))
            .await;
    assert_eq!(late, Err(RpcError::Timeout));
    // The late answer arrives while these run; none of them may read it.
    for i in 0..20 {
        let text = format!("now {i}");
        assert_eq!(
            p.a.call::<DelayedEcho>(addr, &(i % 3 * 10, text.clone()))
                .await
                .unwrap(),
            text
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.a.call::<DelayedEcho>(addr, &(0, "after".into()))
            .await
            .unwrap(),
        "after"
    );
}

#[tokio::test]
async fn concurrent_calls_of_one_method_each_get_their_own_answer() {
    let p = pair();
    serve_delayed_echo(&p.b);
    let addr = p.b.local_addr();
    for round in 0..3 {
        let calls = (0..32u64).map(|i| {
            let a = p.a.clone();
            async move {
                let text = format!("r{round} c{i}");
                let back = a.call::<DelayedEcho>(addr, &(i % 5, text.clone())).await;
                (text, back)
            }
        });
        for (sent, back) in futures::future::join_all(calls).await {
            assert_eq!(back.unwrap(), sent);
        }
    }
}

#[tokio::test]
async fn a_refused_session_is_not_reused() {
    let p = pair();
    let addr = p.b.local_addr();
    for _ in 0..3 {
        assert_eq!(
            p.a.call::<DelayedEcho>(addr, &(0, "x".into())).await,
            Err(RpcError::UnknownMethod(DelayedEcho::NAME.into()))
        );
    }
}

#[test]
fn sessions_idle_past_the_client_limit_are_not_reused() {
    let captured = Captured::default();
    run_recorded(&captured, async {
        let p = pair();
        let addr = p.b.local_addr();
        p.a.call::<Echo>(addr, &"first".into()).await.unwrap();
        tokio::time::sleep(crate::endpoint::CLIENT_IDLE_LIMIT + Duration::from_millis(100)).await;
        assert_eq!(
            p.a.call::<Echo>(addr, &"second".into()).await.unwrap(),
            "second"
        );
        assert_eq!(outbound_streams(&captured), 2);
    });
}

#[tokio::test]
async fn sessions_of_peers_no_longer_called_are_let_go() {
    let p = pair();
    let c = endpoint(&p.ca, 3, TransportConfig::default());
    serve_test_methods(&c);
    p.a.call::<Echo>(p.b.local_addr(), &"b".into())
        .await
        .unwrap();
    p.a.call::<Echo>(c.local_addr(), &"c".into()).await.unwrap();
    assert_eq!(p.a.idle_session_kinds(), 2);
    c.close();
    tokio::time::sleep(crate::endpoint::CLIENT_IDLE_LIMIT + Duration::from_millis(100)).await;
    // Any later call sweeps what nobody will reuse: only B's session is kept.
    p.a.call::<Echo>(p.b.local_addr(), &"b".into())
        .await
        .unwrap();
    assert_eq!(p.a.idle_session_kinds(), 1);
}

#[tokio::test]
async fn a_bad_frame_ends_only_its_session() {
    let max = 1024 * 1024;
    let p = pair();
    let addr = p.b.local_addr();
    let conn = p.a.raw_connection(addr).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let opening = encode(&StreamOpen::Session {
        method: Echo::NAME.into(),
    })
    .unwrap();
    write_frame(&mut send, &opening, max).await.unwrap();
    for text in ["one", "two"] {
        write_frame(&mut send, &encode(&text.to_string()).unwrap(), max)
            .await
            .unwrap();
        let frame = read_frame(&mut recv, max).await.unwrap().unwrap();
        let answer: Result<Vec<u8>, RpcError> = decode(&frame).unwrap();
        assert_eq!(decode::<String>(&answer.unwrap()).unwrap(), text);
    }
    // A request the handler cannot decode is that request's error; the session goes on.
    write_frame(&mut send, &[0xff; 3], max).await.unwrap();
    let frame = read_frame(&mut recv, max).await.unwrap().unwrap();
    let answer: Result<Vec<u8>, RpcError> = decode(&frame).unwrap();
    assert!(matches!(answer, Err(RpcError::Decode(_))), "{answer:?}");
    // An oversized frame ends the session with an error frame.
    let _ = send.write_all(&(64u32 << 20).to_be_bytes()).await;
    let frame = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut recv, max))
        .await
        .expect("answer in time")
        .unwrap()
        .unwrap();
    let answer: Result<(), RpcError> = decode(&frame).unwrap();
    assert!(
        matches!(answer, Err(RpcError::FrameTooLarge { .. })),
        "{answer:?}"
    );
    // The connection and the endpoint keep serving.
    assert_eq!(conn.close_reason(), None);
    assert_eq!(
        p.a.call::<Echo>(addr, &"still".into()).await.unwrap(),
        "still"
    );
}
