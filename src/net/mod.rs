//! The UDP driver: the only part of the crate with sockets, system calls and the real clock.
#![allow(clippy::disallowed_methods)] // the driver is where `Instant::now` belongs

mod driver;
#[cfg(feature = "sim")]
pub mod relay;
mod socket;

pub use driver::{Driver, DriverStats};
pub use socket::{RecvBatch, SendBatch, SocketOptions, UdpSocket};
