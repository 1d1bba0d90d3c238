//! The metric names and labels operators' dashboards rely on.

use super::metrics_capture::{run_recorded, Captured};
use super::{pair, Echo, Fail};

#[test]
fn calls_are_counted_per_peer_method_and_error_kind() {
    let captured = Captured::default();
    run_recorded(&captured, async {
        let p = pair();
        let addr = p.b.local_addr();
        p.a.call::<Echo>(addr, &"x".repeat(1000)).await.unwrap();
        p.a.call::<Fail>(addr, &"no".into()).await.unwrap_err();
        let connections = f64::from_bits(captured.value("stator_transport_connections{}"));
        assert_eq!(connections, 2.0, "A's outgoing and B's incoming connection");
    });
    // A sent to node 2 and B to node 1: the peer label is the node id.
    assert!(captured.value("stator_transport_bytes_sent_total{peer=2}") > 1000);
    assert!(captured.value("stator_transport_bytes_received_total{peer=1}") > 1000);
    assert!(captured.value("stator_transport_bytes_sent_total{peer=1}") > 0);
    assert_eq!(
        captured.value("stator_transport_streams_total{direction=outbound}"),
        2
    );
    assert_eq!(
        captured.value("stator_transport_streams_total{direction=inbound}"),
        2
    );
    assert_eq!(
        captured.samples("stator_transport_rpc_seconds{method=test.echo}"),
        1
    );
    assert_eq!(
        captured.samples("stator_transport_rpc_seconds{method=test.fail}"),
        1
    );
    assert_eq!(
        captured.value("stator_transport_rpc_errors_total{kind=remote,method=test.fail}"),
        1
    );
    assert_eq!(
        captured.value("stator_transport_rpc_errors_total{kind=remote,method=test.echo}"),
        0
    );
}
