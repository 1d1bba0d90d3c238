use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{any_port, endpoint, pair, serve_test_methods, Echo, WhoAmI};
use crate::tls;
use crate::{
    call_join, ClusterCa, Endpoint, Fingerprint, JoinToken, Method, NodeCsr, NodeIdentity, NodeKey,
    PeerInfo, RpcError, TransportConfig,
};

const JOIN_DEADLINE: Duration = Duration::from_secs(3);

/// A join method: the cluster signs the joiner's CSR if the secret matches.
struct Admit;
#[derive(Serialize, Deserialize)]
struct AdmitRequest {
    secret: String,
    csr: NodeCsr,
}
#[derive(Serialize, Deserialize)]
struct Admission {
    node_id: u64,
    cert_der: Vec<u8>,
    ca_cert_der: Vec<u8>,
    caller_node_id: Option<u64>,
}
impl Method for Admit {
    const NAME: &'static str = "test.admit";
    type Request = AdmitRequest;
    type Response = Admission;
}

fn serve_admission(endpoint: &Endpoint, ca: Arc<ClusterCa>, token: &JoinToken) {
    let expected_hash = token.secret_hash();
    endpoint.register_join::<Admit, _, _>(move |peer: PeerInfo, req: AdmitRequest| {
        let ca = ca.clone();
        let expected_hash = expected_hash.clone();
        async move {
            let presented = JoinToken {
                ca_fingerprint: ca.fingerprint(),
                secret: req.secret,
            };
            if presented.secret_hash() != expected_hash {
                return Err(RpcError::NotAuthorized("wrong join secret".into()));
            }
            let node_id = 77;
            let cert_der = ca
                .sign_node(node_id, &req.csr)
                .map_err(|e| RpcError::Remote(e.to_string()))?;
            Ok(Admission {
                node_id,
                cert_der,
                ca_cert_der: ca.cert_der(),
                caller_node_id: peer.node_id,
            })
        }
    });
}

#[tokio::test]
async fn joiner_gets_a_certificate_and_becomes_a_member() {
    let ca = Arc::new(ClusterCa::generate("join").unwrap());
    let seed = endpoint(&ca, 1, TransportConfig::default());
    serve_test_methods(&seed);
    let token = JoinToken::new(ca.fingerprint());
    serve_admission(&seed, ca.clone(), &token);
    // The joiner only has the token's text.
    let token: JoinToken = token.to_string().parse().unwrap();

    let key = NodeKey::generate().unwrap();
    let request = AdmitRequest {
        secret: token.secret.clone(),
        csr: key.csr(0).unwrap(),
    };
    let admission = call_join::<Admit>(seed.local_addr(), &token, &request, JOIN_DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        admission.caller_node_id, None,
        "join connections carry no node id"
    );
    assert_eq!(
        Fingerprint::of_der(&admission.ca_cert_der),
        token.ca_fingerprint
    );
    let identity = key
        .into_identity(admission.node_id, admission.cert_der, admission.ca_cert_der)
        .unwrap();
    let joined = Endpoint::bind(any_port(), identity, TransportConfig::default()).unwrap();
    let seen = joined.call::<WhoAmI>(seed.local_addr(), &()).await.unwrap();
    assert_eq!(seen, Some(77));
}

#[tokio::test]
async fn join_handler_errors_reach_the_joiner() {
    let ca = Arc::new(ClusterCa::generate("join").unwrap());
    let seed = endpoint(&ca, 1, TransportConfig::default());
    let token = JoinToken::new(ca.fingerprint());
    serve_admission(&seed, ca.clone(), &token);
    let request = AdmitRequest {
        secret: "wrong-secret-of-enough-length".into(),
        csr: NodeKey::generate().unwrap().csr(0).unwrap(),
    };
    let err = call_join::<Admit>(seed.local_addr(), &token, &request, JOIN_DEADLINE).await;
    assert!(
        matches!(err, Err(RpcError::NotAuthorized(_))),
        "{:?}",
        err.err()
    );
}

#[tokio::test]
async fn client_without_certificate_reaches_join_methods_only() {
    let p = pair();
    let token = JoinToken::new(p.ca.fingerprint());
    let err = call_join::<Echo>(p.b.local_addr(), &token, &"sneak".into(), JOIN_DEADLINE).await;
    match err {
        Err(RpcError::NotAuthorized(message)) => assert!(message.contains("test.echo")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        p.b_calls.load(Ordering::SeqCst),
        0,
        "member handler never ran"
    );
}

#[tokio::test]
async fn join_with_wrong_fingerprint_fails() {
    let ca = Arc::new(ClusterCa::generate("join").unwrap());
    let seed = endpoint(&ca, 1, TransportConfig::default());
    let token = JoinToken::new(ca.fingerprint());
    serve_admission(&seed, ca.clone(), &token);
    let forged = JoinToken {
        ca_fingerprint: ClusterCa::generate("evil").unwrap().fingerprint(),
        secret: token.secret.clone(),
    };
    let request = AdmitRequest {
        secret: token.secret.clone(),
        csr: NodeKey::generate().unwrap().csr(0).unwrap(),
    };
    let err = call_join::<Admit>(seed.local_addr(), &forged, &request, JOIN_DEADLINE).await;
    assert!(matches!(err, Err(RpcError::Connect(_))), "{:?}", err.err());
}

#[tokio::test]
async fn endpoint_from_another_ca_is_refused_both_ways() {
    let p = pair();
    let stranger = endpoint(
        &ClusterCa::generate("other").unwrap(),
        9,
        TransportConfig::default(),
    );
    serve_test_methods(&stranger);
    let err = stranger.call::<Echo>(p.b.local_addr(), &"hi".into()).await;
    assert!(err.is_err(), "stranger was served: {err:?}");
    let err = p.a.call::<Echo>(stranger.local_addr(), &"hi".into()).await;
    assert!(matches!(err, Err(RpcError::Connect(_))), "{err:?}");
    assert_eq!(p.b_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let p = pair();
    // Trusts the cluster CA (so it accepts B's certificate) but presents a foreign cert.
    let foreign = ClusterCa::generate("other")
        .unwrap()
        .issue_identity(1)
        .unwrap();
    let impostor = NodeIdentity {
        ca_cert_der: p.ca.cert_der(),
        ..foreign
    };
    let impostor = Endpoint::bind(any_port(), impostor, TransportConfig::default()).unwrap();
    let err = impostor.call::<Echo>(p.b.local_addr(), &"hi".into()).await;
    assert!(err.is_err(), "impostor was served: {err:?}");
    assert_eq!(p.b_calls.load(Ordering::SeqCst), 0);
    // The server is unharmed.
    assert_eq!(
        p.a.call::<Echo>(p.b.local_addr(), &"ok".into())
            .await
            .unwrap(),
        "ok"
    );
}

#[tokio::test]
async fn member_protocol_without_client_certificate_is_closed_at_once() {
    let p = pair();
    let mut client = quinn::Endpoint::client(any_port()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        tls::certless_member_client_config(&p.ca.cert_der()),
    )));
    let conn = client
        .connect(p.b.local_addr(), "stator.cluster")
        .unwrap()
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed())
        .await
        .expect("server closes the connection");
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, crate::wire::close::NOT_AUTHORIZED)
        }
        other => panic!("{other}"),
    }
    assert_eq!(p.b_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn join_connections_get_no_raw_streams_and_their_datagrams_are_ignored() {
    let p = pair();
    p.b.register_stream("bulk", |_peer, _send, _recv| async {});
    let mut inbox = p.b.datagrams();
    let mut client = quinn::Endpoint::client(any_port()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        tls::join_client_config(p.ca.fingerprint()).unwrap(),
    )));
    let conn = client
        .connect(p.b.local_addr(), "stator.cluster")
        .unwrap()
        .await
        .unwrap();

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let opening = crate::wire::encode(&crate::wire::StreamOpen::Stream {
        name: "bulk".into(),
    })
    .unwrap();
    crate::frame::write_frame(&mut send, &opening, 1 << 20)
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        crate::frame::read_frame(&mut recv, 1 << 20),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let answer: Result<(), RpcError> = crate::wire::decode(&answer).unwrap();
    assert!(
        matches!(answer, Err(RpcError::NotAuthorized(_))),
        "{answer:?}"
    );

    conn.send_datagram(bytes::Bytes::from_static(b"fake heartbeat"))
        .unwrap();
    let received = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
    assert!(
        received.is_err(),
        "a joiner's datagram was delivered: {received:?}"
    );
}
