//! Reliable messaging over UDP with explicit guarantees.
#![forbid(unsafe_code)]

pub mod message;
pub mod rng;
pub mod seq;
pub mod wire;

pub use message::{ChannelId, Guarantee, SendOptions};
pub use rng::Rng;
pub use seq::{MessageId, PacketNumber};
