//! The DDS transport over real RTPS on loopback, inside a private network namespace: two nodes
//! in one process exchange messages, latched values reach late joiners, bytes pass unchanged.

use crate::common;

use std::sync::mpsc;
use std::time::Duration;

use skillgraft::msg::cdr;
use skillgraft::msg::{Bool, JointState, RosMessage};
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};

fn node(name: &str) -> DdsTransport {
    DdsTransport::new(
        NodeIdentity { name: name.into(), namespace: "/".into() },
        &DdsConfig::local(common::dds_domain()).unwrap(),
    )
    .unwrap()
}

#[test]
fn two_nodes_exchange_messages_over_loopback() {
    if !common::isolated("two_nodes_exchange_messages_over_loopback") {
        return;
    }
    let a = node("talker");
    let b = node("listener");
    let (tx, rx) = mpsc::channel();
    b.subscribe("/joint_states", JointState::TYPE, Qos::SENSOR_DATA, Box::new(move |s| tx.send(s).unwrap())).unwrap();
    let mut p = a.publisher("/joint_states", JointState::TYPE, Qos::RELIABLE).unwrap();
    let msg = JointState { name: vec!["a".into(), "b".into()], position: vec![0.5, -0.25], ..Default::default() };
    let bytes = cdr::encode(&msg).unwrap();
    let sample = common::wait_for("a sample on /joint_states", || {
        p.publish(&bytes).unwrap();
        rx.recv_timeout(Duration::from_millis(100)).ok()
    });
    assert_eq!(sample.cdr, bytes, "the bytes arrive unchanged");
    assert_eq!(cdr::decode::<JointState>(&sample.cdr, JointState::TYPE).unwrap(), msg);
    assert!(a.backend().contains("localhost only"));
}

#[test]
fn latched_values_reach_late_joiners() {
    if !common::isolated("latched_values_reach_late_joiners") {
        return;
    }
    let a = node("estop_source");
    let mut p = a.publisher("/estop", Bool::TYPE, Qos::LATCHED).unwrap();
    p.publish(&cdr::encode(&Bool { data: true }).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b = node("late");
    let (tx, rx) = mpsc::channel();
    b.subscribe("/estop", Bool::TYPE, Qos::LATCHED, Box::new(move |s| tx.send(s).unwrap())).unwrap();
    let s = rx.recv_timeout(Duration::from_secs(20)).expect("the latched value arrives");
    assert!(cdr::decode::<Bool>(&s.cdr, Bool::TYPE).unwrap().data);
}
