//! The firmware bridge: a framed serial protocol between skillgraft and motor-controller firmware.
//!
//! [`protocol`] (frames, messages, the streaming decoder) and [`device`] (the state machine
//! firmware links) are `no_std` and allocate nothing; build with `--no-default-features` for a
//! microcontroller. The `std` feature (on by default) adds the host side: [`serial`] ports and
//! pseudo-terminals, the [`link`] with reconnects and statistics, and a simulated controller
//! ([`sim`]).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod device;
#[cfg(feature = "std")]
pub mod link;
pub mod protocol;
#[cfg(feature = "std")]
pub mod serial;
#[cfg(feature = "std")]
pub mod sim;
