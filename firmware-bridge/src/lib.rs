//! The firmware bridge: a framed serial protocol between skillgraft and motor-controller firmware.
//!
//! [`protocol`] (frames, messages, the streaming decoder) and [`device`] (the state machine
//! firmware links) are `no_std` and allocate nothing; build with `--no-default-features` for a
//! microcontroller. The `std` feature (on by default) adds the host side: [`serial`] ports and
//! pseudo-terminals, the [`link`] with reconnects and statistics, and a simulated controller
//! ([`sim`]).
//!
//! # Linking the device half into firmware
//!
//! Add the crate without its default features (`firmware-bridge = { path = "...",
//! default-features = false }`); it builds for any target with `core` (checked in CI for
//! `thumbv7em-none-eabihf`). Needs: no allocator, no clock (pass µs), about 1.8 KiB of RAM for the
//! [`device::Device`], a transmit buffer of [`protocol::MAX_ENCODED`] (288) bytes, and about as
//! much stack again while a frame is encoded. A Cortex-M sketch with
//! the `cortex-m-rt` and a HAL's UART (the HAL calls are the part to adapt):
//!
//! ```rust,ignore
//! use core::cell::RefCell;
//! use critical_section::Mutex;
//! use firmware_bridge::device::{Device, DeviceConfig, Target};
//! use firmware_bridge::protocol::{JointFeedback, MAX_ENCODED};
//! use heapless::spsc::Queue;
//!
//! // Bytes from the UART interrupt to the main loop; a full queue drops bytes, which the
//! // decoder then counts as a bad frame (and the host sees in the device's heartbeats).
//! static RX: Mutex<RefCell<Queue<u8, 512>>> = Mutex::new(RefCell::new(Queue::new()));
//!
//! #[interrupt]
//! fn USART2() {
//!     let byte = uart_read_byte(); // the HAL's RXNE read
//!     critical_section::with(|cs| {
//!         let _ = RX.borrow_ref_mut(cs).enqueue(byte);
//!     });
//! }
//!
//! #[entry]
//! fn main() -> ! {
//!     let mut device = Device::new(DeviceConfig { joints: 6, watchdog_ms: 100, feedback_period_ms: 10 });
//!     let mut tx = [0u8; MAX_ENCODED];
//!     let mut chunk = [0u8; 64];
//!     loop {
//!         let now_us = timer_us(); // a free-running µs counter; wrapping is fine
//!         let n = critical_section::with(|cs| {
//!             let mut q = RX.borrow_ref_mut(cs);
//!             let mut n = 0;
//!             while n < chunk.len() {
//!                 match q.dequeue() {
//!                     Some(b) => { chunk[n] = b; n += 1 }
//!                     None => break,
//!                 }
//!             }
//!             n
//!         });
//!         device.receive(&chunk[..n], now_us);
//!         match device.tick(now_us) {
//!             Target::Follow(cmd) => drives_follow(cmd), // cmd.mode, cmd.joints[i].velocity, ...
//!             Target::Safe => drives_brake(),
//!         }
//!         let joints: [JointFeedback; 6] = read_encoders();
//!         while let Some(Ok(len)) = device.transmit(now_us, &joints, &mut tx) {
//!             uart_write_all(&tx[..len]); // or start a DMA transfer and wait for it next loop
//!         }
//!     }
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

pub mod device;
#[cfg(feature = "std")]
pub mod link;
pub mod protocol;
#[cfg(feature = "std")]
pub mod serial;
#[cfg(feature = "std")]
pub mod sim;
