//! From the action vector to the message the manifest names (Float64MultiArray,
//! Float32MultiArray, a JointState command, a Twist, or a single-point JointTrajectory): the
//! action's field map composes it, then it is stamped and encoded.

use crate::msg::cdr::CdrError;
use crate::msg::{Duration, Time};
use crate::observe::{AnyMessage, Extractor};
use crate::skill::manifest::ActionOutput;

/// Builds and encodes action messages.
pub struct ActionEncoder {
    fields: Extractor,
    period: Duration,
}

impl ActionEncoder {
    /// The encoder for a (validated) manifest action; `period_s` is the control period, used as
    /// a trajectory point's time from start.
    pub fn new(action: &ActionOutput, period_s: f64) -> ActionEncoder {
        let sec = period_s.floor();
        let period = Duration { sec: sec as i32, nanosec: ((period_s - sec) * 1e9).round() as u32 };
        ActionEncoder { fields: Extractor::for_action(action), period }
    }

    /// The ROS type of the messages.
    pub fn type_name(&self) -> &str {
        &self.fields.type_name
    }

    /// Puts `values` where the fields say, stamps the message, and encodes it into `out`
    /// (cleared first).
    pub fn encode(&mut self, values: &[f64], stamp: Time, out: &mut Vec<u8>) -> Result<(), CdrError> {
        out.clear();
        let mut msg = self.fields.compose(values);
        match &mut msg {
            AnyMessage::JointState(m) => m.header.stamp = stamp,
            AnyMessage::JointTrajectory(m) => {
                m.header.stamp = stamp;
                m.points[0].time_from_start = self.period;
            }
            _ => {}
        }
        msg.encode_into(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::cdr;
    use crate::msg::*;
    use crate::skill::manifest::SafeAction;

    fn action(msg_type: &str, fields: &[&str], joints: &[&str]) -> ActionOutput {
        ActionOutput {
            topic: "/cmd".into(),
            msg_type: msg_type.into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
            joints: joints.iter().map(|s| s.to_string()).collect(),
            mean: vec![],
            std: vec![],
            lower: vec![],
            upper: vec![],
            max_delta: vec![],
            safe: SafeAction::Zero,
        }
    }

    #[test]
    fn each_action_type_carries_the_values_where_the_fields_say() {
        let mut buf = Vec::new();
        let stamp = Time { sec: 5, nanosec: 6 };
        let mut e = ActionEncoder::new(&action(Float64MultiArray::TYPE, &["data[2..4]", "data[0]"], &[]), 0.02);
        e.encode(&[1.0, 2.0, 3.0], stamp, &mut buf).unwrap();
        let m: Float64MultiArray = cdr::decode(&buf, Float64MultiArray::TYPE).unwrap();
        assert_eq!(m.data, vec![3.0, 0.0, 1.0, 2.0]);

        let mut e = ActionEncoder::new(&action(JointState::TYPE, &["velocity"], &["a", "b"]), 0.02);
        e.encode(&[0.5, -0.5], stamp, &mut buf).unwrap();
        let m: JointState = cdr::decode(&buf, JointState::TYPE).unwrap();
        assert_eq!(
            (m.name, m.velocity, m.position, m.header.stamp),
            (vec!["a".into(), "b".into()], vec![0.5, -0.5], vec![], stamp)
        );

        let mut e = ActionEncoder::new(&action(Twist::TYPE, &["linear.x", "angular.z"], &[]), 0.02);
        e.encode(&[0.3, -0.7], stamp, &mut buf).unwrap();
        let m: Twist = cdr::decode(&buf, Twist::TYPE).unwrap();
        assert_eq!((m.linear.x, m.angular.z), (0.3, -0.7));

        let mut e = ActionEncoder::new(&action(JointTrajectory::TYPE, &["positions"], &["a", "b"]), 0.02);
        e.encode(&[1.5, 2.5], stamp, &mut buf).unwrap();
        let m: JointTrajectory = cdr::decode(&buf, JointTrajectory::TYPE).unwrap();
        assert_eq!(m.points.len(), 1);
        assert_eq!(m.points[0].positions, vec![1.5, 2.5]);
        assert_eq!(m.points[0].time_from_start, Duration { sec: 0, nanosec: 20_000_000 });
        assert_eq!(m.header.stamp, stamp);

        let mut e = ActionEncoder::new(&action(Float32MultiArray::TYPE, &["data[0..2]"], &[]), 0.02);
        e.encode(&[0.25, 4.0], stamp, &mut buf).unwrap();
        assert_eq!(cdr::decode::<Float32MultiArray>(&buf, Float32MultiArray::TYPE).unwrap().data, vec![0.25, 4.0]);
    }
}
