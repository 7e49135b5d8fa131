//! First light: the rogue-pod tutorial on one node.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use netward_e2e::{Lab, PROBE, root};
use netward_proxy::lab::probe::Outcome;

#[test]
fn rogue_pod_is_denied_frontend_allowed() {
    if !root() {
        return;
    }
    let cluster = std::fs::read_to_string("../examples/rogue-pod/00-cluster.yaml").unwrap();
    let policy = std::fs::read_to_string("../examples/rogue-pod/10-backend-policy.yaml").unwrap();
    let lab = Lab::single_node(&[("00.yaml", &cluster), ("10.yaml", &policy)]);
    let nw = lab.start_netward(0, &[]);
    let (ok, body) = lab.http_get(
        "netpol-test/frontend",
        "netpol-test/backend",
        80,
        false,
        PROBE,
    );
    assert_eq!(ok, Outcome::Ok, "{}", nw.log());
    assert!(body.contains("hello from netpol-test/backend"), "{body}");
    let (denied, took) = lab.connect(
        "netpol-test/rogue-pod",
        "netpol-test/backend",
        80,
        false,
        PROBE,
    );
    assert_eq!(denied, Outcome::Timeout, "{}", nw.log());
    assert!(took >= PROBE, "{took:?}");
    eprintln!("{}", nw.log());
}
