//! ROS 2 command-line arguments and parameter files, read the way rcl reads them: `--ros-args`
//! blocks with `-p name:=value`, `-r from:=to` (including `__node` and `__ns`), `--params-file`,
//! and the parameter YAML layout `node: {ros__parameters: {...}}` with `/**` wildcards. Topic
//! names are expanded (`~`, relative names) and remapped here, so every transport sees the same
//! resolved names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// A parameter value, with the types ROS 2 parameters have.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// bool.
    Bool(bool),
    /// integer.
    Int(i64),
    /// double.
    Double(f64),
    /// string.
    String(String),
    /// bool array.
    BoolArray(Vec<bool>),
    /// integer array.
    IntArray(Vec<i64>),
    /// double array.
    DoubleArray(Vec<f64>),
    /// string array.
    StringArray(Vec<String>),
}

impl ParamValue {
    /// The ROS 2 type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool",
            ParamValue::Int(_) => "integer",
            ParamValue::Double(_) => "double",
            ParamValue::String(_) => "string",
            ParamValue::BoolArray(_) => "bool array",
            ParamValue::IntArray(_) => "integer array",
            ParamValue::DoubleArray(_) => "double array",
            ParamValue::StringArray(_) => "string array",
        }
    }

    fn from_yaml(y: &Yaml) -> Result<ParamValue, String> {
        let scalar = |y: &Yaml| -> Result<ParamValue, String> {
            match y {
                Yaml::Boolean(b) => Ok(ParamValue::Bool(*b)),
                Yaml::Integer(i) => Ok(ParamValue::Int(*i)),
                Yaml::Real(_) => y.as_f64().map(ParamValue::Double).ok_or_else(|| format!("{y:?} is not a number")),
                Yaml::String(s) => Ok(ParamValue::String(s.clone())),
                other => Err(format!("{other:?} is not a parameter value")),
            }
        };
        match y {
            Yaml::Array(items) if items.is_empty() => Ok(ParamValue::StringArray(vec![])),
            Yaml::Array(items) => {
                let values = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
                let all_numbers = values.iter().all(|v| matches!(v, ParamValue::Int(_) | ParamValue::Double(_)));
                let any_double = values.iter().any(|v| matches!(v, ParamValue::Double(_)));
                Ok(match &values[0] {
                    ParamValue::Bool(_) if values.iter().all(|v| matches!(v, ParamValue::Bool(_))) => {
                        ParamValue::BoolArray(values.iter().map(|v| matches!(v, ParamValue::Bool(true))).collect())
                    }
                    ParamValue::Int(_) | ParamValue::Double(_) if all_numbers && any_double => ParamValue::DoubleArray(
                        values
                            .iter()
                            .map(|v| match v {
                                ParamValue::Int(i) => *i as f64,
                                ParamValue::Double(d) => *d,
                                _ => unreachable!("checked all_numbers"),
                            })
                            .collect(),
                    ),
                    ParamValue::Int(_) if all_numbers => ParamValue::IntArray(
                        values.iter().map(|v| if let ParamValue::Int(i) = v { *i } else { 0 }).collect(),
                    ),
                    ParamValue::String(_) if values.iter().all(|v| matches!(v, ParamValue::String(_))) => {
                        ParamValue::StringArray(
                            values
                                .iter()
                                .map(|v| if let ParamValue::String(s) = v { s.clone() } else { String::new() })
                                .collect(),
                        )
                    }
                    _ => return Err("an array must hold values of one type".into()),
                })
            }
            other => scalar(other),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Double(v) => write!(f, "{v}"),
            ParamValue::String(v) => write!(f, "{v:?}"),
            ParamValue::BoolArray(v) => write!(f, "{v:?}"),
            ParamValue::IntArray(v) => write!(f, "{v:?}"),
            ParamValue::DoubleArray(v) => write!(f, "{v:?}"),
            ParamValue::StringArray(v) => write!(f, "{v:?}"),
        }
    }
}

/// A bad argument, parameter file or parameter: what, where, and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

/// Where a parameter's value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The value.
    pub value: ParamValue,
    /// `-p` or the parameter file.
    pub source: String,
}

/// The node's identity, remapping rules and parameters from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct RosArgs {
    /// Node name.
    pub node: String,
    /// Node namespace, absolute.
    pub namespace: String,
    /// Remapping rules (`from`, `to`), as given.
    pub remaps: Vec<(String, String)>,
    /// Parameters by dotted name.
    pub params: BTreeMap<String, Param>,
    /// `--log-level`, when given.
    pub log_level: Option<String>,
}

impl RosArgs {
    /// Reads `--ros-args` blocks from `args` (anything outside them is refused), plus parameter
    /// files given separately (`run --params-file`), which `--ros-args --params-file` add to.
    pub fn parse(args: &[String], params_files: &[PathBuf], default_node: &str) -> Result<RosArgs, ArgsError> {
        let mut remaps = Vec::new();
        let mut cli_params: Vec<(String, String)> = Vec::new();
        let mut files: Vec<PathBuf> = params_files.to_vec();
        let mut log_level = None;
        let mut in_ros = false;
        let mut it = args.iter();
        let need = |flag: &str, v: Option<&String>| -> Result<String, ArgsError> {
            v.cloned().ok_or_else(|| ArgsError(format!("`{flag}` needs a value after it")))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--ros-args" => in_ros = true,
                "--" if in_ros => in_ros = false,
                _ if !in_ros => {
                    return Err(ArgsError(format!(
                        "unexpected argument `{a}`; ROS arguments go after `--ros-args` (e.g. --ros-args -p rate_hz:=100.0)"
                    )));
                }
                "-p" | "--param" => cli_params.push(split_assignment(a, &need(a, it.next())?)?),
                "-r" | "--remap" => remaps.push(split_assignment(a, &need(a, it.next())?)?),
                "--params-file" => files.push(PathBuf::from(need(a, it.next())?)),
                "--log-level" => log_level = Some(need(a, it.next())?),
                "-e" | "--enclave" => {
                    need(a, it.next())?;
                    tracing::warn!("--enclave is ignored: skillgraft does not use SROS2 enclaves");
                }
                "--enable-rosout-logs"
                | "--disable-rosout-logs"
                | "--enable-stdout-logs"
                | "--disable-stdout-logs"
                | "--enable-external-lib-logs"
                | "--disable-external-lib-logs" => {}
                other => {
                    return Err(ArgsError(format!(
                        "unknown ROS argument `{other}`; skillgraft takes -p NAME:=VALUE, -r FROM:=TO, --params-file FILE and --log-level LEVEL"
                    )));
                }
            }
        }
        let mut node = default_node.to_string();
        let mut namespace = "/".to_string();
        let mut rules = Vec::new();
        for (from, to) in remaps {
            let (target, from) = match from.split_once(':') {
                Some((n, f)) if !f.is_empty() && !n.is_empty() => (Some(n.to_string()), f.to_string()),
                _ => (None, from),
            };
            if target.as_deref().is_some_and(|t| t != default_node) {
                continue;
            }
            match from.as_str() {
                "__node" | "__name" => {
                    check_token(&to).map_err(|e| ArgsError(format!("-r __node:={to}: {e}")))?;
                    node = to;
                }
                "__ns" => {
                    let ns = if to.starts_with('/') { to.clone() } else { format!("/{to}") };
                    if ns != "/" {
                        crate::msg::names::check_topic(&ns).map_err(|e| ArgsError(format!("-r __ns:={to}: {e}")))?;
                    }
                    namespace = ns.trim_end_matches('/').to_string();
                    if namespace.is_empty() {
                        namespace = "/".into();
                    }
                }
                _ => rules.push((from, to)),
            }
        }
        let mut params = BTreeMap::new();
        let fqn = fully_qualified(&namespace, &node);
        for file in &files {
            for (name, value) in read_params_file(file, &fqn)? {
                params.insert(name, Param { value, source: file.display().to_string() });
            }
        }
        for (name, text) in cli_params {
            let value = parse_value(&text).map_err(|e| ArgsError(format!("-p {name}:={text}: {e}")))?;
            params.insert(name, Param { value, source: "-p".into() });
        }
        Ok(RosArgs { node, namespace, remaps: rules, params, log_level })
    }

    /// The node's fully qualified name, e.g. `/arm/skillgraft`.
    pub fn fully_qualified_name(&self) -> String {
        fully_qualified(&self.namespace, &self.node)
    }

    /// Expands a topic name (`~/x`, relative `x`) in the node's namespace and applies the first
    /// matching remapping rule.
    pub fn resolve_topic(&self, name: &str) -> Result<String, ArgsError> {
        crate::msg::names::check_topic(name).map_err(|e| ArgsError(e.to_string()))?;
        let expanded = expand(name, &self.namespace, &self.node);
        for (from, to) in &self.remaps {
            if expand(from, &self.namespace, &self.node) == expanded {
                crate::msg::names::check_topic(to).map_err(|e| ArgsError(format!("remapping {from}:={to}: {e}")))?;
                return Ok(expand(to, &self.namespace, &self.node));
            }
        }
        Ok(expanded)
    }

    /// The name to hand a middleware that applies these remapping rules itself (rcl does, from
    /// the process's arguments): `resolved` when no rule matches it, else the source of the rule
    /// that leads to it. Handing rcl the resolved name would remap it twice when rules chain
    /// (`-r a:=b -r b:=c`) or swap (`-r a:=b -r b:=a`).
    pub fn unremapped(&self, resolved: &str) -> Result<String, ArgsError> {
        let remap = |expanded: &str| -> String {
            self.remaps
                .iter()
                .find(|(from, _)| expand(from, &self.namespace, &self.node) == expanded)
                .map_or_else(|| expanded.to_string(), |(_, to)| expand(to, &self.namespace, &self.node))
        };
        if remap(resolved) == resolved {
            return Ok(resolved.to_string());
        }
        self.remaps
            .iter()
            .map(|(from, _)| expand(from, &self.namespace, &self.node))
            .find(|source| remap(source) == resolved)
            .ok_or_else(|| {
                ArgsError(format!(
                    "{resolved} cannot be opened: a remapping rule sends it to {} and no rule leads to it; name the topic before remapping",
                    remap(resolved)
                ))
            })
    }

    /// A parameter, when given; the error names it, where it came from, and the type wanted.
    pub fn get<T: FromParam>(&self, name: &str) -> Result<Option<T>, ArgsError> {
        match self.params.get(name) {
            None => Ok(None),
            Some(p) => T::from_param(&p.value).map(Some).ok_or_else(|| {
                ArgsError(format!(
                    "parameter `{name}` (from {}) is a {} ({}); it must be a {}",
                    p.source,
                    p.value.type_name(),
                    p.value,
                    T::TYPE
                ))
            }),
        }
    }
}

/// Types a parameter can be read as.
pub trait FromParam: Sized {
    /// The ROS 2 type name, for messages.
    const TYPE: &'static str;
    /// The value, if it has this type.
    fn from_param(v: &ParamValue) -> Option<Self>;
}

impl FromParam for f64 {
    const TYPE: &'static str = "double";
    fn from_param(v: &ParamValue) -> Option<f64> {
        match v {
            ParamValue::Double(d) => Some(*d),
            ParamValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromParam for i64 {
    const TYPE: &'static str = "integer";
    fn from_param(v: &ParamValue) -> Option<i64> {
        if let ParamValue::Int(i) = v { Some(*i) } else { None }
    }
}

impl FromParam for bool {
    const TYPE: &'static str = "bool";
    fn from_param(v: &ParamValue) -> Option<bool> {
        if let ParamValue::Bool(b) = v { Some(*b) } else { None }
    }
}

impl FromParam for String {
    const TYPE: &'static str = "string";
    fn from_param(v: &ParamValue) -> Option<String> {
        if let ParamValue::String(s) = v { Some(s.clone()) } else { None }
    }
}

impl FromParam for Vec<f64> {
    const TYPE: &'static str = "double array";
    fn from_param(v: &ParamValue) -> Option<Vec<f64>> {
        match v {
            ParamValue::DoubleArray(d) => Some(d.clone()),
            ParamValue::IntArray(i) => Some(i.iter().map(|&x| x as f64).collect()),
            _ => None,
        }
    }
}

impl FromParam for Vec<String> {
    const TYPE: &'static str = "string array";
    fn from_param(v: &ParamValue) -> Option<Vec<String>> {
        match v {
            ParamValue::StringArray(s) => Some(s.clone()),
            ParamValue::String(s) => Some(vec![s.clone()]),
            _ => None,
        }
    }
}

fn fully_qualified(namespace: &str, node: &str) -> String {
    if namespace == "/" { format!("/{node}") } else { format!("{namespace}/{node}") }
}

fn expand(name: &str, namespace: &str, node: &str) -> String {
    let ns = if namespace == "/" { "" } else { namespace };
    if let Some(rest) = name.strip_prefix("~/") {
        format!("{ns}/{node}/{rest}")
    } else if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn check_token(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid node name; use letters, digits and `_`"))
    }
}

fn split_assignment(flag: &str, text: &str) -> Result<(String, String), ArgsError> {
    text.split_once(":=")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .filter(|(a, _)| !a.is_empty())
        .ok_or_else(|| ArgsError(format!("`{flag} {text}` is not an assignment; write {flag} NAME:=VALUE")))
}

/// A `-p` value, read as YAML the way rcl reads it (`1` integer, `1.0` double, `[1.0, 2.0]`).
fn parse_value(text: &str) -> Result<ParamValue, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.first() {
        Some(y) => ParamValue::from_yaml(y),
        None => Ok(ParamValue::String(String::new())),
    }
}

/// Whether a node-name pattern of a parameter file (`/**`, `/arm/*`, `skillgraft`) matches.
fn node_matches(pattern: &str, fqn: &str) -> bool {
    let pattern = if pattern.starts_with('/') { pattern.to_string() } else { format!("/{pattern}") };
    let p: Vec<&str> = pattern.split('/').skip(1).collect();
    let n: Vec<&str> = fqn.split('/').skip(1).collect();
    fn go(p: &[&str], n: &[&str]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(&p, &n)
}

/// The parameters a file gives this node, flattened to dotted names.
pub fn read_params_file(path: &Path, fqn: &str) -> Result<Vec<(String, ParamValue)>, ArgsError> {
    let at = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| ArgsError(format!("cannot read parameter file {at}: {e}")))?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| ArgsError(format!("{at}: not valid YAML: {e}")))?;
    let Some(Yaml::Hash(top)) = docs.first() else {
        return Err(ArgsError(format!("{at}: expected `NODE_NAME: {{ros__parameters: {{...}}}}` at the top")));
    };
    let mut out = Vec::new();
    for (key, section) in top {
        let Some(pattern) = key.as_str() else {
            return Err(ArgsError(format!("{at}: top-level key {key:?} is not a node name")));
        };
        if !node_matches(pattern, fqn) {
            continue;
        }
        let params = match section {
            Yaml::Hash(h) => h.get(&Yaml::String("ros__parameters".into())),
            _ => None,
        };
        let Some(Yaml::Hash(params)) = params else {
            return Err(ArgsError(format!(
                "{at}: `{pattern}` has no `ros__parameters` map; write `{pattern}:\\n  ros__parameters:\\n    name: value`"
            )));
        };
        flatten(params, "", &mut out).map_err(|e| ArgsError(format!("{at}: {e}")))?;
    }
    Ok(out)
}

fn flatten(h: &yaml_rust2::yaml::Hash, prefix: &str, out: &mut Vec<(String, ParamValue)>) -> Result<(), String> {
    for (k, v) in h {
        let key = k.as_str().ok_or_else(|| format!("parameter name {k:?} is not a string"))?;
        let name = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        match v {
            Yaml::Hash(inner) => flatten(inner, &name, out)?,
            other => {
                out.push((name.clone(), ParamValue::from_yaml(other).map_err(|e| format!("parameter `{name}`: {e}"))?))
            }
        }
    }
    Ok(())
}

/// The DDS domain from `ROS_DOMAIN_ID` (0 when unset).
pub fn domain_id() -> Result<u16, ArgsError> {
    match std::env::var("ROS_DOMAIN_ID") {
        Err(_) => Ok(0),
        Ok(s) if s.trim().is_empty() => Ok(0),
        Ok(s) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|d| *d <= 232)
            .ok_or_else(|| ArgsError(format!("ROS_DOMAIN_ID={s:?} is not a domain id; use a number from 0 to 232"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<RosArgs, ArgsError> {
        RosArgs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[], "skillgraft")
    }

    #[test]
    fn names_are_expanded_and_remapped() {
        let a = args(&[
            "--ros-args",
            "-r",
            "__ns:=/arm",
            "-r",
            "__node:=pilot",
            "-r",
            "joint_states:=/hw/joint_states",
            "-r",
            "other:~/x:=/y",
        ])
        .unwrap();
        assert_eq!(a.fully_qualified_name(), "/arm/pilot");
        assert_eq!(a.resolve_topic("joint_states").unwrap(), "/hw/joint_states");
        assert_eq!(a.resolve_topic("/arm/joint_states").unwrap(), "/hw/joint_states");
        assert_eq!(a.resolve_topic("~/action").unwrap(), "/arm/pilot/action");
        assert_eq!(a.resolve_topic("~/x").unwrap(), "/arm/pilot/x", "a rule for another node does not apply");
        assert_eq!(a.resolve_topic("/target").unwrap(), "/target");
        let root = args(&[]).unwrap();
        assert_eq!(root.resolve_topic("~/estop").unwrap(), "/skillgraft/estop");
        assert_eq!(root.resolve_topic("estop").unwrap(), "/estop");
    }

    #[test]
    fn names_for_rcl_are_remapped_once_by_rcl() {
        let a = args(&["--ros-args", "-r", "left:=right", "-r", "right:=left", "-r", "a:=b", "-r", "b:=c"]).unwrap();
        for declared in ["left", "right", "a", "b", "c", "other", "~/x"] {
            let resolved = a.resolve_topic(declared).unwrap();
            let for_rcl = a.unremapped(&resolved).unwrap();
            assert_eq!(a.resolve_topic(&for_rcl).unwrap(), resolved, "{declared}: rcl's one remapping lands on it");
        }
        assert_eq!(a.resolve_topic("left").unwrap(), "/right");
        assert_eq!(a.unremapped("/right").unwrap(), "/left", "swapped names are handed over unswapped");
        assert_eq!(a.resolve_topic("a").unwrap(), "/b", "one rule per name");
        assert_eq!(a.unremapped("/b").unwrap(), "/a", "a chain is not followed twice");
        assert_eq!(a.unremapped("/c").unwrap(), "/c");
        let e = a.unremapped("/a").unwrap_err().0;
        assert!(e.contains("sends it to /b"), "{e}");
    }

    #[test]
    fn cli_parameters_are_typed_like_yaml() {
        let a = args(&[
            "--ros-args",
            "-p",
            "rate_hz:=100",
            "-p",
            "blend_s:=0.25",
            "-p",
            "action.lower:=[-1, -2.5]",
            "-p",
            "estop_topic:=/stop",
            "--",
            "--ros-args",
            "-p",
            "flag:=true",
        ])
        .unwrap();
        assert_eq!(a.get::<f64>("rate_hz").unwrap(), Some(100.0));
        assert_eq!(a.get::<f64>("blend_s").unwrap(), Some(0.25));
        assert_eq!(a.get::<Vec<f64>>("action.lower").unwrap(), Some(vec![-1.0, -2.5]));
        assert_eq!(a.get::<String>("estop_topic").unwrap().as_deref(), Some("/stop"));
        assert_eq!(a.get::<bool>("flag").unwrap(), Some(true));
        let err = a.get::<f64>("estop_topic").unwrap_err().to_string();
        assert!(err.contains("`estop_topic` (from -p) is a string") && err.contains("must be a double"), "{err}");
    }

    #[test]
    fn bad_arguments_say_what_to_write() {
        assert!(args(&["-p", "x:=1"]).unwrap_err().0.contains("go after `--ros-args`"));
        assert!(args(&["--ros-args", "-p", "x=1"]).unwrap_err().0.contains("NAME:=VALUE"));
        assert!(args(&["--ros-args", "-p"]).unwrap_err().0.contains("needs a value"));
        assert!(args(&["--ros-args", "--frobnicate"]).unwrap_err().0.contains("unknown ROS argument"));
        assert!(args(&["--ros-args", "-r", "__node:=9x"]).unwrap_err().0.contains("not a valid node name"));
        assert!(args(&["--ros-args", "-p", "a:=[1, true]"]).unwrap_err().0.contains("one type"));
    }

    #[test]
    fn parameter_files_follow_the_ros2_layout() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("params.yaml");
        std::fs::write(
            &f,
            "/**:\n  ros__parameters:\n    rate_hz: 50.0\n    blend_s: 1.0\n/arm/pilot:\n  ros__parameters:\n    rate_hz: 200.0\n    action:\n      max_delta: [0.1, 0.2]\nother_node:\n  ros__parameters:\n    rate_hz: 1.0\n",
        )
        .unwrap();
        let list: Vec<String> = ["--ros-args", "-r", "__ns:=/arm", "-r", "__node:=pilot", "-p", "blend_s:=0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = RosArgs::parse(&list, std::slice::from_ref(&f), "skillgraft").unwrap();
        assert_eq!(a.get::<f64>("rate_hz").unwrap(), Some(200.0));
        assert_eq!(a.get::<f64>("blend_s").unwrap(), Some(0.1), "-p wins over files");
        assert_eq!(a.get::<Vec<f64>>("action.max_delta").unwrap(), Some(vec![0.1, 0.2]));
        std::fs::write(&f, "skillgraft:\n  rate_hz: 5\n").unwrap();
        let err = RosArgs::parse(&[], std::slice::from_ref(&f), "skillgraft").unwrap_err().0;
        assert!(err.contains("no `ros__parameters` map"), "{err}");
        std::fs::write(&f, "skillgraft: [unclosed\n").unwrap();
        assert!(RosArgs::parse(&[], std::slice::from_ref(&f), "skillgraft").unwrap_err().0.contains("not valid YAML"));
    }

    #[test]
    fn node_patterns() {
        assert!(node_matches("/**", "/a/b"));
        assert!(node_matches("skillgraft", "/skillgraft"));
        assert!(node_matches("/a/*", "/a/b"));
        assert!(!node_matches("/a/*", "/a/b/c"));
        assert!(node_matches("/**/b", "/x/y/b"));
        assert!(!node_matches("/c", "/a/b"));
    }
}
