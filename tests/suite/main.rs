//! The integration tests, one binary: each file is a module named after what it drives, all of
//! them on the one harness in tests/common. `cargo test --test suite fleet::` runs one module;
//! `cargo test --test suite -- --exact control_node::NAME` one test. Apart, by need: control_alloc
//! (it counts the whole process's allocations), ros2_interop (also built over rcl by
//! tools/test.sh) and the CUDA tests (cuda, cuda_kernels: only with the `cuda` feature).

#[path = "../common/mod.rs"]
mod common;

mod adapt;
mod adapt_node;
mod bad_input;
mod bridge;
mod bundle;
mod camera;
mod channel;
mod cli;
mod control_node;
mod dds_interop;
mod dds_transport;
mod deb;
mod demo;
mod fleet;
mod head_forms;
mod launch;
mod layers;
mod model;
mod record_files;
mod record_node;
mod ros_messages;
mod run_errors;
mod store;
mod tick_alloc;
mod transfer;
mod vision;

/// The allocator the `skillgraft` binary installs: the node tests see the control tick served
/// from its pool, as on a robot.
#[global_allocator]
static A: skillgraft::alloc::TickAllocator = skillgraft::alloc::TickAllocator;
