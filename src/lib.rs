//! # surely: reliable messaging over UDP with explicit guarantees
//!
//! `surely` moves messages between two programs over UDP and tells the sender, for every
//! message, how it ended. Each message is sent with one of three guarantees:
//!
//! | guarantee | retransmitted | receiver deduplicates | the application may see it |
//! |-----------|---------------|-----------------------|----------------------------|
//! | [`AtMostOnce`](Guarantee::AtMostOnce)   | no  | yes | 0 or 1 times; losses are counted and reported |
//! | [`AtLeastOnce`](Guarantee::AtLeastOnce) | yes | no  | 1 or more times (unless Undeliverable) |
//! | [`ExactlyOnce`](Guarantee::ExactlyOnce) | yes | yes | exactly once (unless Undeliverable: then 0 or 1) |
//!
//! Exactly-once *delivery* over a lossy network is impossible: a sender without an
//! acknowledgement cannot tell a lost message from a lost acknowledgement or a slow peer.
//! Exactly-once *processing* is possible, and is what `ExactlyOnce` gives: retransmission
//! until confirmed, plus a dedup window at the receiver.
//!
//! ## Nothing is lost silently
//! Every message accepted by [`Connection::send`] ends in exactly one outcome event:
//! [`Event::Delivered`] once the peer confirms it, or [`Event::Undeliverable`] with a reason
//! (retries exhausted, deadline passed, connection closed or lost, or, for at-most-once, a lost
//! packet). Undeliverable means *not confirmed*: the peer may or may not have processed the
//! message. For an exactly-once message it will never process it twice, and if it has not
//! yet, it never will: the sender tells the receiver to stop waiting for it.
//!
//! The receiver confirms a message only once it was handed to the application
//! ([`AckMode::OnReceipt`]) or, in [`AckMode::AfterProcessing`], once the application
//! acknowledged it with [`Connection::ack`]; a rejected message is sent again.
//!
//! ## Sans-IO
//! [`Connection`] is a pure state machine: datagrams and the current time go in, datagrams,
//! events and the next timer deadline come out. It never reads a clock, opens a socket or
//! starts a thread, which makes it deterministic and testable; the `sim` feature provides a
//! seeded network simulator to drive it. The `net` feature (default) adds a UDP driver.
//!
//! ## The run loop
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Instant;
//! use surely::{Config, Connection, Event, Guarantee};
//!
//! # fn recv_datagram() -> Option<Vec<u8>> { None }
//! # fn send_datagram(_: &[u8]) {}
//! # #[allow(clippy::disallowed_methods)]
//! # fn clock() -> Instant { Instant::now() }
//! let mut conn = Connection::new(Arc::new(Config::default()), 1, 2, clock()).unwrap();
//! conn.send(clock(), b"order #1", Guarantee::ExactlyOnce).unwrap();
//! let mut buf = vec![0u8; conn.config().max_datagram_size];
//! loop {
//!     // 1. input: datagrams that arrived, then expired timers
//!     while let Some(d) = recv_datagram() {
//!         let _ = conn.handle_datagram(clock(), &d); // errors are counted drops
//!     }
//!     conn.handle_timeout(clock());
//!     // 2. output: datagrams to send, then events
//!     while let Some(n) = conn.poll_transmit(clock(), &mut buf) {
//!         send_datagram(&buf[..n]);
//!     }
//!     while let Some(event) = conn.poll_event() {
//!         match event {
//!             Event::Message(m) => println!("got {} bytes", m.payload.len()),
//!             Event::Delivered { id, .. } => println!("{id} confirmed"),
//!             Event::Undeliverable { id, reason, .. } => println!("{id} dead letter: {reason}"),
//!             _ => {}
//!         }
//!     }
//!     if conn.is_closed() {
//!         break;
//!     }
//!     // 3. wait for a datagram or until conn.poll_timeout()
//! }
//! ```
//!
//! ## Panic policy
//! Errors come from bad input or limits and are returned or counted; the library never
//! panics on anything a peer sends. A panic is a bug.
#![deny(unsafe_code)]

pub mod config;
pub mod congestion;
pub mod connection;
pub mod dedup;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod histogram;
mod limits;
pub mod message;
#[cfg(feature = "net")]
pub mod net;
pub mod rangeset;
pub mod rng;
pub mod rtt;
pub mod seq;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
mod timer;
pub mod wire;

pub use config::{AckMode, Config, ConfigError};
pub use congestion::CongestionControl;
pub use connection::{Connection, State};
pub use endpoint::{ConnectionHandle, Endpoint, EndpointConfig, EndpointEvent};
pub use error::{DatagramError, SendError, TokenError};
pub use event::{AckToken, CloseReason, Event, Received, UndeliverableReason};
pub use message::{ChannelId, Guarantee, SendOptions};
pub use rng::Rng;
pub use seq::{MessageId, PacketNumber};
pub use stats::Stats;

/// The README's code blocks, compiled and run as doc-tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
