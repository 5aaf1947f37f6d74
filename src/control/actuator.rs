//! From the action vector to the message the manifest names: Float64MultiArray,
//! Float32MultiArray, a JointState command, a Twist, or a single-point JointTrajectory.

use crate::ros::cdr::{self, CdrError};
use crate::ros::msg::*;
use crate::ros::schema::{self, Selector};
use crate::skill::manifest::ActionOutput;

enum Layout {
    F64Array(Float64MultiArray),
    F32Array(Float32MultiArray),
    JointState(JointState),
    Twist(Twist),
    JointTrajectory(JointTrajectory),
}

/// Builds and encodes action messages, reusing one message and its buffers.
pub struct ActionEncoder {
    layout: Layout,
    selectors: Vec<Selector>,
    joints: usize,
    period: Duration,
}

impl ActionEncoder {
    /// The encoder for a (validated) manifest action; `period_s` is the control period, used as
    /// a trajectory point's time from start.
    pub fn new(action: &ActionOutput, period_s: f64) -> ActionEncoder {
        let schema =
            schema::schema(&action.msg_type).expect("validated manifests name known types");
        let selectors: Vec<Selector> = action
            .fields
            .iter()
            .map(|f| {
                schema
                    .selector(f)
                    .expect("validated manifests have valid selectors")
            })
            .collect();
        let array_len = selectors
            .iter()
            .map(|s| {
                if let Selector::Slice { end, .. } = s {
                    *end
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        let joints: Vec<String> = action.joints.clone();
        let layout = match schema.name {
            Float32MultiArray::TYPE => Layout::F32Array(Float32MultiArray {
                data: vec![0.0; array_len],
                ..Default::default()
            }),
            JointState::TYPE => Layout::JointState(JointState {
                name: joints.clone(),
                ..Default::default()
            }),
            Twist::TYPE => Layout::Twist(Twist::default()),
            JointTrajectory::TYPE => Layout::JointTrajectory(JointTrajectory {
                joint_names: joints.clone(),
                points: vec![JointTrajectoryPoint::default()],
                ..Default::default()
            }),
            _ => Layout::F64Array(Float64MultiArray {
                data: vec![0.0; array_len],
                ..Default::default()
            }),
        };
        let sec = period_s.floor();
        let period = Duration {
            sec: sec as i32,
            nanosec: ((period_s - sec) * 1e9) as u32,
        };
        ActionEncoder {
            layout,
            selectors,
            joints: joints.len(),
            period,
        }
    }

    /// The ROS type of the messages.
    pub fn type_name(&self) -> &'static str {
        match self.layout {
            Layout::F64Array(_) => Float64MultiArray::TYPE,
            Layout::F32Array(_) => Float32MultiArray::TYPE,
            Layout::JointState(_) => JointState::TYPE,
            Layout::Twist(_) => Twist::TYPE,
            Layout::JointTrajectory(_) => JointTrajectory::TYPE,
        }
    }

    /// Writes `values` into the message, stamps it, and encodes it into `out` (cleared first).
    pub fn encode(
        &mut self,
        values: &[f64],
        stamp: Time,
        out: &mut Vec<u8>,
    ) -> Result<(), CdrError> {
        out.clear();
        let mut k = 0;
        let joints = self.joints;
        match &mut self.layout {
            Layout::F64Array(m) => {
                for sel in &self.selectors {
                    if let Selector::Slice { start, end, .. } = sel {
                        m.data[*start..*end].copy_from_slice(&values[k..k + end - start]);
                        k += end - start;
                    }
                }
                cdr::encode_into(m, out)
            }
            Layout::F32Array(m) => {
                for sel in &self.selectors {
                    if let Selector::Slice { start, end, .. } = sel {
                        for (d, &v) in m.data[*start..*end]
                            .iter_mut()
                            .zip(&values[k..k + end - start])
                        {
                            *d = v as f32;
                        }
                        k += end - start;
                    }
                }
                cdr::encode_into(m, out)
            }
            Layout::JointState(m) => {
                m.header.stamp = stamp;
                for sel in &self.selectors {
                    if let Selector::PerJoint(field) = sel {
                        let target = match field.as_str() {
                            "position" => &mut m.position,
                            "velocity" => &mut m.velocity,
                            _ => &mut m.effort,
                        };
                        target.clear();
                        target.extend_from_slice(&values[k..k + joints]);
                        k += joints;
                    }
                }
                cdr::encode_into(m, out)
            }
            Layout::Twist(m) => {
                for sel in &self.selectors {
                    if let Selector::Scalar(path) = sel {
                        let v = values[k];
                        k += 1;
                        let (part, axis) = path.split_once('.').unwrap_or(("linear", "x"));
                        let vec = if part == "angular" {
                            &mut m.angular
                        } else {
                            &mut m.linear
                        };
                        match axis {
                            "x" => vec.x = v,
                            "y" => vec.y = v,
                            _ => vec.z = v,
                        }
                    }
                }
                cdr::encode_into(m, out)
            }
            Layout::JointTrajectory(m) => {
                m.header.stamp = stamp;
                let p = &mut m.points[0];
                p.time_from_start = self.period;
                for sel in &self.selectors {
                    if let Selector::PerJoint(field) = sel {
                        let target = match field.as_str() {
                            "positions" => &mut p.positions,
                            "velocities" => &mut p.velocities,
                            "accelerations" => &mut p.accelerations,
                            _ => &mut p.effort,
                        };
                        target.clear();
                        target.extend_from_slice(&values[k..k + joints]);
                        k += joints;
                    }
                }
                cdr::encode_into(m, out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let mut e = ActionEncoder::new(
            &action(Float64MultiArray::TYPE, &["data[2..4]", "data[0]"], &[]),
            0.02,
        );
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

        let mut e = ActionEncoder::new(
            &action(JointTrajectory::TYPE, &["positions"], &["a", "b"]),
            0.02,
        );
        e.encode(&[1.5, 2.5], stamp, &mut buf).unwrap();
        let m: JointTrajectory = cdr::decode(&buf, JointTrajectory::TYPE).unwrap();
        assert_eq!(m.points.len(), 1);
        assert_eq!(m.points[0].positions, vec![1.5, 2.5]);
        assert_eq!(
            m.points[0].time_from_start,
            Duration {
                sec: 0,
                nanosec: 20_000_000
            }
        );

        let mut e =
            ActionEncoder::new(&action(Float32MultiArray::TYPE, &["data[0..2]"], &[]), 0.02);
        e.encode(&[0.25, 4.0], stamp, &mut buf).unwrap();
        assert_eq!(
            cdr::decode::<Float32MultiArray>(&buf, Float32MultiArray::TYPE)
                .unwrap()
                .data,
            vec![0.25, 4.0]
        );
    }
}
