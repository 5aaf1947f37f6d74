//! ROS 2 names: the rules a topic name must follow, checked before anything is subscribed.

/// A topic name that breaks the ROS 2 naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid ROS 2 topic name: {why}; write e.g. \"/joint_states\" or \"~/action\"")]
pub struct TopicNameError {
    /// The name given.
    pub name: String,
    /// The rule it breaks.
    pub why: &'static str,
}

/// Checks a topic name against the ROS 2 naming rules (absolute `/a/b`, relative `a/b`, or
/// private `~/a`); the error says what is wrong and shows a valid name.
pub fn check_topic(name: &str) -> Result<(), TopicNameError> {
    let fail = |why: &'static str| Err(TopicNameError { name: name.to_string(), why });
    let body = if let Some(rest) = name.strip_prefix("~/") {
        rest
    } else if let Some(rest) = name.strip_prefix('/') {
        rest
    } else {
        name
    };
    if body.is_empty() {
        return fail("it has no name after the prefix");
    }
    for token in body.split('/') {
        if token.is_empty() {
            return fail("it has an empty part (`//` or a trailing `/`)");
        }
        if token.starts_with(|c: char| c.is_ascii_digit()) {
            return fail("a part starts with a digit");
        }
        if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return fail("only letters, digits, `_` and `/` are allowed");
        }
        if token.contains("__") {
            return fail("`__` is reserved");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_topic;

    #[test]
    fn topic_names_follow_ros_rules() {
        for ok in ["/joint_states", "cmd", "~/action", "/arm_1/joint_states", "a/b_c"] {
            assert_eq!(check_topic(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/", "//a", "/a/", "/1a", "/a b", "~", "/a__b", "/a-b"] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
