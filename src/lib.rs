//! skillgraft: a robot skill-transfer runtime for edge devices.
//!
//! A skill is an ONNX policy exported from another robot plus a manifest that maps it onto this
//! robot's topics. This crate loads skills, splits each policy into a frozen backbone and an
//! adaptable head, runs it, and writes adapted heads back into plain ONNX files.

#![warn(missing_docs)]

pub mod adapt;
pub mod alloc;
pub mod bridge;
pub mod control;
pub mod file;
pub mod fleet;
pub mod model;
pub mod msg;
pub mod node;
pub mod observe;
pub mod record;
pub mod rng;
pub mod ros;
pub mod sim;
pub mod skill;
pub mod stats;
