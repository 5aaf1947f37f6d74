//! ROS 2 parameters at run time, served the way rclcpp and rclpy serve them: the six parameter
//! services under the node's name (`~/list_parameters`, `~/describe_parameters`,
//! `~/get_parameters`, `~/get_parameter_types`, `~/set_parameters`,
//! `~/set_parameters_atomically`) and `/parameter_events`, over any transport. So `ros2 param`,
//! rqt and rclpy's parameter clients work against the node. What a parameter means and what a
//! change does belong to the node behind [`ParameterHost`]; types, ranges and read-only
//! parameters are checked here, before the host sees a change.

use std::sync::{Arc, Mutex};

use super::args::{ArgsError, ParamValue};
use super::transport::{Qos, RawPublisher, ServiceHandler, Transport, TransportError};
use crate::msg::cdr;
use crate::msg::parameter_services::{
    DescribeResponse, GetResponse, ListRequest, ListResponse, NamesRequest, SetAtomicallyResponse, SetRequest,
    SetResponse, TypesResponse,
};
use crate::msg::{
    FloatingPointRange, IntegerRange, ListParametersResult, Parameter, ParameterDescriptor, ParameterEvent,
    ParameterValue, RosMessage, SetParametersResult, parameter_type as pt,
};

/// The range a number parameter must stay in (both ends included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamRange {
    /// For doubles.
    Float {
        /// Lowest.
        from: f64,
        /// Highest.
        to: f64,
    },
    /// For integers.
    Integer {
        /// Lowest.
        from: i64,
        /// Highest.
        to: i64,
    },
}

/// One parameter the node declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDescriptor {
    /// Dotted name.
    pub name: String,
    /// A `ParameterType` constant (`msg::parameter_type`).
    pub kind: u8,
    /// What it does.
    pub description: String,
    /// Constraints in words, beyond the range (empty: none).
    pub constraints: String,
    /// Fixed once the node runs: a set is refused with the reason.
    pub read_only: bool,
    /// The range of a number parameter.
    pub range: Option<ParamRange>,
}

/// Why a parameter change was refused: the reason ROS tools show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

impl From<ArgsError> for Rejected {
    fn from(e: ArgsError) -> Rejected {
        Rejected(e.0)
    }
}

/// The node behind the parameter services.
pub trait ParameterHost: Send + Sync {
    /// Every parameter the node declares, in the order to list them.
    fn descriptors(&self) -> Vec<ParamDescriptor>;
    /// A parameter's value now.
    fn value(&self, name: &str) -> Option<ParamValue>;
    /// Makes the changes take effect, all of them or none. Each change already has its
    /// declared type, is in range and names a parameter that is not read-only.
    fn apply(&self, changes: &[(String, ParamValue)]) -> Result<(), Rejected>;
}

/// The ROS type constant of a value.
pub fn type_of(v: &ParamValue) -> u8 {
    match v {
        ParamValue::Bool(_) => pt::BOOL,
        ParamValue::Int(_) => pt::INTEGER,
        ParamValue::Double(_) => pt::DOUBLE,
        ParamValue::String(_) => pt::STRING,
        ParamValue::BoolArray(_) => pt::BOOL_ARRAY,
        ParamValue::IntArray(_) => pt::INTEGER_ARRAY,
        ParamValue::DoubleArray(_) => pt::DOUBLE_ARRAY,
        ParamValue::StringArray(_) => pt::STRING_ARRAY,
    }
}

/// A value as `rcl_interfaces/msg/ParameterValue`.
pub fn to_msg(v: &ParamValue) -> ParameterValue {
    let mut m = ParameterValue { kind: type_of(v), ..ParameterValue::default() };
    match v {
        ParamValue::Bool(b) => m.bool_value = *b,
        ParamValue::Int(i) => m.integer_value = *i,
        ParamValue::Double(d) => m.double_value = *d,
        ParamValue::String(s) => m.string_value = s.clone(),
        ParamValue::BoolArray(a) => m.bool_array_value = a.clone(),
        ParamValue::IntArray(a) => m.integer_array_value = a.clone(),
        ParamValue::DoubleArray(a) => m.double_array_value = a.clone(),
        ParamValue::StringArray(a) => m.string_array_value = a.clone(),
    }
    m
}

/// A `ParameterValue` as a value; `None` for NOT_SET; an error for types skillgraft has no
/// parameter of.
pub fn from_msg(m: &ParameterValue) -> Result<Option<ParamValue>, Rejected> {
    Ok(Some(match m.kind {
        pt::NOT_SET => return Ok(None),
        pt::BOOL => ParamValue::Bool(m.bool_value),
        pt::INTEGER => ParamValue::Int(m.integer_value),
        pt::DOUBLE => ParamValue::Double(m.double_value),
        pt::STRING => ParamValue::String(m.string_value.clone()),
        pt::BOOL_ARRAY => ParamValue::BoolArray(m.bool_array_value.clone()),
        pt::INTEGER_ARRAY => ParamValue::IntArray(m.integer_array_value.clone()),
        pt::DOUBLE_ARRAY => ParamValue::DoubleArray(m.double_array_value.clone()),
        pt::STRING_ARRAY => ParamValue::StringArray(m.string_array_value.clone()),
        pt::BYTE_ARRAY => return Err(Rejected("byte arrays are not the type of any skillgraft parameter".into())),
        other => return Err(Rejected(format!("parameter type {other} is not a ROS 2 parameter type"))),
    }))
}

fn type_name(kind: u8) -> &'static str {
    match kind {
        pt::BOOL => "bool",
        pt::INTEGER => "integer",
        pt::DOUBLE => "double",
        pt::STRING => "string",
        pt::BYTE_ARRAY => "byte array",
        pt::BOOL_ARRAY => "bool array",
        pt::INTEGER_ARRAY => "integer array",
        pt::DOUBLE_ARRAY => "double array",
        pt::STRING_ARRAY => "string array",
        _ => "not set",
    }
}

/// Checks one requested change against its descriptor and gives the value to apply. Integers
/// are taken for doubles (`ros2 param set /skillgraft blend_s 1` sends an integer).
pub fn check(desc: &ParamDescriptor, requested: ParamValue) -> Result<ParamValue, Rejected> {
    let name = &desc.name;
    if desc.read_only {
        return Err(Rejected(format!(
            "parameter `{name}` is read-only: it is fixed when the node starts; restart the node with -p {name}:=VALUE"
        )));
    }
    let value = match (desc.kind, requested) {
        (pt::DOUBLE, ParamValue::Int(i)) => ParamValue::Double(i as f64),
        (pt::DOUBLE_ARRAY, ParamValue::IntArray(a)) => {
            ParamValue::DoubleArray(a.into_iter().map(|i| i as f64).collect())
        }
        (pt::DOUBLE_ARRAY | pt::INTEGER_ARRAY | pt::STRING_ARRAY | pt::BOOL_ARRAY, ParamValue::StringArray(a))
            if a.is_empty() =>
        {
            return Err(Rejected(format!("parameter `{name}` needs a {}, not an empty list", type_name(desc.kind))));
        }
        (_, v) => v,
    };
    if type_of(&value) != desc.kind {
        return Err(Rejected(format!(
            "parameter `{name}` is a {}; got a {} ({value})",
            type_name(desc.kind),
            type_name(type_of(&value))
        )));
    }
    match (desc.range, &value) {
        (Some(ParamRange::Float { from, to }), ParamValue::Double(d)) if !(from..=to).contains(d) => {
            Err(Rejected(format!("parameter `{name}` is {d}; it must be within [{from}, {to}]")))
        }
        (Some(ParamRange::Integer { from, to }), ParamValue::Int(i)) if !(from..=to).contains(i) => {
            Err(Rejected(format!("parameter `{name}` is {i}; it must be within [{from}, {to}]")))
        }
        _ => Ok(value),
    }
}

/// The ROS descriptor of a declared parameter.
fn describe(d: &ParamDescriptor) -> ParameterDescriptor {
    let (floating_point_range, integer_range) = match d.range {
        Some(ParamRange::Float { from, to }) => {
            (vec![FloatingPointRange { from_value: from, to_value: to, step: 0.0 }], vec![])
        }
        Some(ParamRange::Integer { from, to }) => {
            (vec![], vec![IntegerRange { from_value: from, to_value: to, step: 0 }])
        }
        None => (vec![], vec![]),
    };
    ParameterDescriptor {
        name: d.name.clone(),
        kind: d.kind,
        description: d.description.clone(),
        additional_constraints: d.constraints.clone(),
        read_only: d.read_only,
        dynamic_typing: false,
        floating_point_range,
        integer_range,
    }
}

/// `list_parameters` as rclcpp answers it: names under the prefixes (all when none), at most
/// `depth` levels of `.` below them (0: any), and the prefixes of the names listed.
pub fn list(names: &[String], prefixes: &[String], depth: u64) -> ListParametersResult {
    let mut result = ListParametersResult::default();
    let within = |rest: &str| depth == 0 || (rest.matches('.').count() as u64) < depth;
    for name in names {
        let listed = if prefixes.is_empty() {
            within(name)
        } else {
            prefixes.iter().any(|p| name == p || (name.starts_with(&format!("{p}.")) && within(&name[p.len()..])))
        };
        if !listed {
            continue;
        }
        result.names.push(name.clone());
        if let Some((prefix, _)) = name.rsplit_once('.')
            && !result.prefixes.iter().any(|p| p == prefix)
        {
            result.prefixes.push(prefix.to_string());
        }
    }
    result
}

/// The node's parameter services and `/parameter_events`.
pub struct ParameterServer {
    host: Arc<dyn ParameterHost>,
    node: String,
    events: Mutex<Box<dyn RawPublisher>>,
}

impl ParameterServer {
    fn descriptor(&self, name: &str) -> Option<ParamDescriptor> {
        self.host.descriptors().into_iter().find(|d| d.name == name)
    }

    fn checked(&self, p: &Parameter) -> Result<(String, ParamValue), Rejected> {
        let desc = self.descriptor(&p.name).ok_or_else(|| {
            Rejected(format!("skillgraft has no parameter `{}`; `ros2 param list {}` lists them", p.name, self.node))
        })?;
        let value = from_msg(&p.value)?
            .ok_or_else(|| Rejected(format!("parameter `{}` cannot be unset: give it a value", p.name)))?;
        Ok((p.name.clone(), check(&desc, value)?))
    }

    /// `set_parameters`: each change on its own, in order.
    pub fn set(&self, params: &[Parameter]) -> Vec<SetParametersResult> {
        params
            .iter()
            .map(|p| {
                match self.checked(p).and_then(|change| {
                    self.host.apply(std::slice::from_ref(&change))?;
                    Ok(change)
                }) {
                    Ok(change) => {
                        self.changed(&[change]);
                        SetParametersResult { successful: true, reason: String::new() }
                    }
                    Err(e) => SetParametersResult { successful: false, reason: e.0 },
                }
            })
            .collect()
    }

    /// `set_parameters_atomically`: all or none.
    pub fn set_atomically(&self, params: &[Parameter]) -> SetParametersResult {
        let applied = params
            .iter()
            .map(|p| self.checked(p))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|changes| self.host.apply(&changes).map(|()| changes));
        match applied {
            Ok(changes) => {
                self.changed(&changes);
                SetParametersResult { successful: true, reason: String::new() }
            }
            Err(e) => SetParametersResult { successful: false, reason: e.0 },
        }
    }

    fn event(&self, new: Vec<Parameter>, changed: Vec<Parameter>) {
        let event = ParameterEvent {
            stamp: super::transport::ros_now(),
            node: self.node.clone(),
            new_parameters: new,
            changed_parameters: changed,
            deleted_parameters: vec![],
        };
        let sent = cdr::encode(&event).map_err(|e| TransportError(e.to_string())).and_then(|bytes| {
            self.events.lock().map_err(|_| TransportError("the events lock is poisoned".into()))?.publish(&bytes)
        });
        if let Err(e) = sent {
            tracing::warn!("cannot publish on /parameter_events: {e}");
        }
    }

    fn changed(&self, changes: &[(String, ParamValue)]) {
        let changed =
            changes.iter().map(|(name, value)| Parameter { name: name.clone(), value: to_msg(value) }).collect();
        self.event(vec![], changed);
    }

    fn values(&self, names: &[String]) -> Vec<ParameterValue> {
        names.iter().map(|n| self.host.value(n).map(|v| to_msg(&v)).unwrap_or_default()).collect()
    }
}

/// Serves the parameter services of the node `node` (its fully qualified name) on `transport`,
/// with names resolved by `resolve`, and announces every parameter on `/parameter_events`.
pub fn serve(
    transport: &dyn Transport,
    node: &str,
    resolve: &dyn Fn(&str) -> Result<String, ArgsError>,
    host: Arc<dyn ParameterHost>,
) -> Result<Arc<ParameterServer>, TransportError> {
    let name = |n: &str| resolve(n).map_err(|e| TransportError(e.to_string()));
    let events_qos = Qos { reliable: true, transient_local: false, depth: 1000 };
    let events = transport.publisher(&name("/parameter_events")?, ParameterEvent::TYPE, events_qos)?;
    let server = Arc::new(ParameterServer { host, node: node.to_string(), events: Mutex::new(events) });
    type Handle = fn(&ParameterServer, &[u8]) -> Result<Vec<u8>, cdr::CdrError>;
    let services: [(&str, &str, Handle); 6] = [
        ("~/list_parameters", "rcl_interfaces/srv/ListParameters", |s, req| {
            let r: ListRequest = cdr::decode(req, "rcl_interfaces/srv/ListParameters_Request")?;
            let names: Vec<String> = s.host.descriptors().into_iter().map(|d| d.name).collect();
            cdr::encode(&ListResponse { result: list(&names, &r.prefixes, r.depth) })
        }),
        ("~/describe_parameters", "rcl_interfaces/srv/DescribeParameters", |s, req| {
            let r: NamesRequest = cdr::decode(req, "rcl_interfaces/srv/DescribeParameters_Request")?;
            let descriptors = r
                .names
                .iter()
                .map(|n| {
                    s.descriptor(n)
                        .map(|d| describe(&d))
                        .unwrap_or_else(|| ParameterDescriptor { name: n.clone(), ..Default::default() })
                })
                .collect();
            cdr::encode(&DescribeResponse { descriptors })
        }),
        ("~/get_parameters", "rcl_interfaces/srv/GetParameters", |s, req| {
            let r: NamesRequest = cdr::decode(req, "rcl_interfaces/srv/GetParameters_Request")?;
            cdr::encode(&GetResponse { values: s.values(&r.names) })
        }),
        ("~/get_parameter_types", "rcl_interfaces/srv/GetParameterTypes", |s, req| {
            let r: NamesRequest = cdr::decode(req, "rcl_interfaces/srv/GetParameterTypes_Request")?;
            cdr::encode(&TypesResponse { types: s.values(&r.names).iter().map(|v| v.kind).collect() })
        }),
        ("~/set_parameters", "rcl_interfaces/srv/SetParameters", |s, req| {
            let r: SetRequest = cdr::decode(req, "rcl_interfaces/srv/SetParameters_Request")?;
            cdr::encode(&SetResponse { results: s.set(&r.parameters) })
        }),
        ("~/set_parameters_atomically", "rcl_interfaces/srv/SetParametersAtomically", |s, req| {
            let r: SetRequest = cdr::decode(req, "rcl_interfaces/srv/SetParametersAtomically_Request")?;
            cdr::encode(&SetAtomicallyResponse { result: s.set_atomically(&r.parameters) })
        }),
    ];
    for (service, type_name, handle) in services {
        let s = server.clone();
        let handler: ServiceHandler =
            Box::new(move |req| handle(&s, req).map_err(|e| TransportError(format!("{type_name}: {e}"))));
        transport.serve(&name(service)?, type_name, handler)?;
    }
    let new = server
        .host
        .descriptors()
        .iter()
        .filter_map(|d| server.host.value(&d.name).map(|v| Parameter { name: d.name.clone(), value: to_msg(&v) }))
        .collect();
    server.event(new, vec![]);
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, kind: u8, read_only: bool, range: Option<ParamRange>) -> ParamDescriptor {
        ParamDescriptor {
            name: name.into(),
            kind,
            description: String::new(),
            constraints: String::new(),
            read_only,
            range,
        }
    }

    #[test]
    fn values_round_trip_through_the_message() {
        for v in [
            ParamValue::Bool(true),
            ParamValue::Int(-3),
            ParamValue::Double(0.25),
            ParamValue::String("cpu".into()),
            ParamValue::DoubleArray(vec![1.0, -2.0]),
            ParamValue::StringArray(vec!["a.pub".into()]),
        ] {
            assert_eq!(from_msg(&to_msg(&v)).unwrap(), Some(v));
        }
        assert_eq!(from_msg(&ParameterValue::default()).unwrap(), None);
        assert!(from_msg(&ParameterValue { kind: pt::BYTE_ARRAY, ..Default::default() }).is_err());
    }

    #[test]
    fn checks_say_what_is_wrong() {
        let blend = desc("blend_s", pt::DOUBLE, false, Some(ParamRange::Float { from: 0.0, to: 10.0 }));
        assert_eq!(check(&blend, ParamValue::Int(2)).unwrap(), ParamValue::Double(2.0));
        let e = check(&blend, ParamValue::Double(11.0)).unwrap_err().0;
        assert!(e.contains("within [0, 10]"), "{e}");
        let e = check(&blend, ParamValue::String("x".into())).unwrap_err().0;
        assert!(e.contains("is a double; got a string"), "{e}");
        let rate = desc("rate_hz", pt::DOUBLE, true, None);
        let e = check(&rate, ParamValue::Double(50.0)).unwrap_err().0;
        assert!(e.contains("read-only") && e.contains("-p rate_hz:="), "{e}");
        let lower = desc("action.lower", pt::DOUBLE_ARRAY, false, None);
        assert_eq!(check(&lower, ParamValue::IntArray(vec![-1, 0])).unwrap(), ParamValue::DoubleArray(vec![-1.0, 0.0]));
    }

    #[test]
    fn listing_follows_prefixes_and_depth_like_rclcpp() {
        let names: Vec<String> =
            ["rate_hz", "action.lower", "action.upper", "a.b.c"].iter().map(|s| s.to_string()).collect();
        let all = list(&names, &[], 0);
        assert_eq!(all.names, names);
        assert_eq!(all.prefixes, vec!["action".to_string(), "a.b".to_string()]);
        assert_eq!(list(&names, &[], 1).names, vec!["rate_hz".to_string()]);
        let action = list(&names, &["action".into()], 0);
        assert_eq!(action.names, vec!["action.lower".to_string(), "action.upper".to_string()]);
        // As rclcpp counts: the separator after the prefix is one level.
        assert_eq!(list(&names, &["action".into()], 1).names, Vec::<String>::new());
        assert_eq!(list(&names, &["action".into()], 2).names.len(), 2);
        assert_eq!(list(&names, &["a".into()], 2).names, Vec::<String>::new());
        assert_eq!(list(&names, &["a".into()], 3).names, vec!["a.b.c".to_string()]);
    }
}
